"""`pixeljit convert`: any checkpoint (a pixeljit run, a .safetensors export, a Hub folder or
hf://org/name[@rev], or an authors' checkpoint-last.pth) → one .safetensors file with the weights,
the JiT config, the objective and the class names; or, with `--hub DIR`, a folder in the Hugging
Face Hub layout (model.safetensors, config.json, a model card README.md and the run's sample grid)
that `sample`, `eval` and `load_trained` read back."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pixeljit.checkpoints.load import checkpoint_kind, export_safetensors, load_trained
from pixeljit.checkpoints.safetensors_io import SAFETENSORS_SUFFIX, safetensors_name_problem
from pixeljit.cli.checks import check_checkpoint_exists, check_int, check_output


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="export a run, a .safetensors export, a Hub folder or an authors' "
        "checkpoint-last.pth (or its folder) to .safetensors or to a Hugging Face Hub folder "
        "(--hub)",
        description=__doc__,
    )
    p.add_argument(
        "source",
        help="a pixeljit run folder / .pt, a .safetensors export, a Hub folder (from `convert "
        "--hub`) or hf://org/name[@rev], or an authors' checkpoint-last.pth / its folder",
    )
    p.add_argument(
        "out", nargs="?", default=None, help="destination .safetensors file (omit with --hub)"
    )
    p.add_argument(
        "--hub",
        metavar="DIR",
        default=None,
        help="write a Hugging Face Hub folder instead: model.safetensors, config.json, "
        "README.md (model card) and samples.png (the source's grid, copied only when it is a "
        "plain PNG file, never through a symbolic link)",
    )
    p.add_argument(
        "--scores",
        metavar="JSON",
        default=None,
        help="--hub: eval scores for the model card (a `pixeljit eval --out` file of these "
        "weights; default: the run folder's eval.json, else the demo's score.json, when it "
        "scored these weights)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="runs: ema (default), ema:<decay>, model; authors': model_ema1 (default), "
        "model_ema2, model",
    )
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="authors' checkpoints of non-standard depth: in-context start block",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT file; with --hub, replace the files of an earlier "
        "export in DIR (one whose config.json is a pixeljit hub config; other files there are "
        "left): its model.safetensors, config.json and README.md, and its samples.png, which is "
        "removed when the new source has no grid (the new card shows none). A folder that is "
        "not an export is never written over: only added to, when it holds none of those names",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if (args.out is None) == (args.hub is None):
        raise ValueError(
            "give either OUT (a .safetensors file) or --hub DIR, not "
            + ("both" if args.out else "neither")
        )
    check_int("--in-context-start", args.in_context_start, 0)
    check_checkpoint_exists("SOURCE", args.source)  # a missing input first: the likelier slip
    if args.hub is not None:
        return _run_hub(args)
    if args.scores is not None:
        raise ValueError("--scores has no effect without --hub: drop it or add --hub DIR")
    check_safetensors_name(args.out)
    check_output("OUT", args.out, False, args.overwrite, "--overwrite")  # before loading
    model = load_trained(args.source, args.weights, in_context_start=args.in_context_start)
    path = export_safetensors(model, args.out, overwrite=args.overwrite)
    print(f"wrote {path}: {_summary(model)}")
    return 0


def check_safetensors_name(out: str) -> None:
    """OUT a file name ending in .safetensors (any case, as `sample` takes .PNG), with a name
    before the suffix: a bare '.safetensors' would be a hidden file of that name."""
    problem = safetensors_name_problem(out)
    if problem:
        raise ValueError(f"output {out!r} {problem}: write e.g. model{SAFETENSORS_SUFFIX}, or a "
                         "Hugging Face folder with --hub DIR")  # fmt: skip


def _classes(num: int) -> str:
    return f"{num} classes" if num else "unconditional"


def _summary(model) -> str:
    cfg = model.net.config
    text = (
        f"{model.description}; depth {cfg.depth}, width {cfg.hidden_size}, {cfg.image_size}px, "
        f"patch {cfg.patch_size}, {_classes(cfg.num_classes)}, {model.prediction}-prediction, "
        f"noise scale {model.noise_scale}"
    )
    if model.preconditioner != "none":  # what the export records beside them
        text += f", {model.preconditioner} pre-conditioner"
        if model.preconditioner == "edm":
            text += f" (sigma_data {model.sigma_data:g})"
    return text


def _run_hub(args) -> int:
    from pixeljit.checkpoints.hub import GRID_NAME
    from pixeljit.checkpoints.hub_card import GRID_SKIPPED, RUN_SCORES_FILES, CardExtras, run_grid
    from pixeljit.checkpoints.hub_write import check_hub_output, write_hub_folder
    from pixeljit.checkpoints.provenance import read_scores, scores_for, weights_digest
    from pixeljit.checkpoints.run import find_checkpoint, run_folder
    from pixeljit.files.images import png_file_problem

    out = Path(args.hub)
    check_hub_output(out, args.overwrite, flags=True)
    check_output("--hub", out, True, True)  # writable (emptiness checked above)
    source = Path(args.source)
    if source.exists() and out.resolve() in (source.resolve(), source.resolve().parent):
        raise ValueError(f"--hub {out} is the checkpoint's own folder: choose another folder")
    if args.scores is not None:
        read_scores(args.scores)  # a bad scores file is refused before the model is loaded
    kind = checkpoint_kind(args.source)
    model = load_trained(args.source, args.weights, in_context_start=args.in_context_start)
    earlier_grid = (out / GRID_NAME).is_file()  # of an earlier export (checked above)
    scores_path, candidates = args.scores, []
    # an authors' dict names its weights; a bare state dict (one's own export) loads unnamed
    released = kind == "authors" and bool(model.weights)
    if kind == "run":
        folder = run_folder(find_checkpoint(args.source, None))
        extras = run_grid(folder, model, _preview_weights(folder))
        if scores_path is None:
            candidates = [folder / name for name in RUN_SCORES_FILES if (folder / name).is_file()]
        sampler_source = "the training run's sample settings (its previews used them)"
    elif kind == "hub" and os.path.lexists(Path(args.source) / GRID_NAME):  # a local folder's
        grid = Path(args.source) / GRID_NAME  # grid, of its one set of weights
        problem = png_file_problem(grid)  # as a run's: a link is never followed into the export
        extras = CardExtras(grid=grid)
        if problem:
            extras = CardExtras(grid_missing=f"the source's {GRID_NAME} {problem}, {GRID_SKIPPED}")
        sampler_source = ""
    else:
        extras = CardExtras(grid_missing="the source holds no sample grid")
        sampler_source = (
            "the authors' README (Heun-50, their CFG scale for this model, interval [0.1, 1])"
            if released and model.sampler is not None
            else ""
        )
    digest = weights_digest(model.net)
    found, notes = None, []
    for path in [scores_path] if scores_path is not None else candidates:
        found, note = scores_for(path, model, digest, named=args.scores is not None)
        if found is not None:  # the first file of these weights (`note`: unverified or '')
            scores_path, notes = path, [note] if note else []
            break
        notes.append(note)
    if found is None:
        for note in notes:
            print(f"note: {note}")
        if notes:
            print("note: the model card says the scores are unknown")
    elif notes:  # published, marked unverified on the card: said here too
        print(f"note: {scores_path}: {notes[0]}; the model card marks them unverified")
    extras = dataclasses.replace(
        extras,
        scores=found.scores if found else None,
        scores_source=str(scores_path) if found else "",
        scores_about=found.about if found else "",
        scores_note="; ".join(notes),
        source=args.source,
        authors=released,
        bare=kind == "authors" and not released,
        sampler_source=sampler_source,
    )
    if extras.grid is None and extras.grid_missing.endswith(GRID_SKIPPED):
        print(f"note: {extras.grid_missing}; the model card shows no sample grid")
    path = write_hub_folder(model, out, extras, args.overwrite)
    if extras.grid is None and earlier_grid:
        print(f"note: removed the earlier export's {path / GRID_NAME}: the new card shows no grid")
    shown = "grid" if extras.grid is not None else "no grid"
    scored = "scores" if extras.scores else "no scores"
    print(
        f"wrote {path}/ (model.safetensors, config.json, README.md; {shown}, {scored}): "
        f"{_summary(model)}. Fill in `license:` in README.md before publishing."
    )
    return 0


def _preview_weights(folder: Path) -> str | None:
    """The weights a run's preview grids are drawn from ('ema:<decay>': sample.ema_decay, else
    the first of optim.ema_decays), from its config.yaml; None when that is missing or unread."""
    from pixeljit.training.config_io import from_dict, load_yaml

    try:
        cfg = from_dict(load_yaml(folder / "config.yaml"))
    except (OSError, ValueError):
        return None
    return f"ema:{cfg.sampling_decay}"
