"""`pixeljit demo`: train a small class-conditional JiT on Fashion-MNIST, then show the result.

No arguments needed. On a CPU it trains the `fmnist-small` preset (x-prediction, v-loss) for
2200 steps (measured: 9 min 29 s – 10 min 22 s end to end on 2 cores, empty cache); on a GPU a
wider model for longer. Writes a labelled sample grid (one row per class), the loss curve and the
final checkpoint, then scores 1000 samples (class accuracy, FD-FMNIST) beside as many real test
images.
Like `pixeljit train`, it never trains over an earlier run: an --out folder that holds one is
refused, with the choice of --resume (continue that demo from its checkpoint, then score it),
--restart (move the old run aside to DIR.old-<time>, train again) or another --out. Ctrl-C stops
the training at a step boundary with a checkpoint, and prints the --resume command.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE

CPU_PRESET, CPU_STEPS = "fmnist-small", 2200  # ≈ 9–10 min of training on 2 cores (measured)
SCORE_NUM, SCORE_SEED = 1000, 1  # the demo scores 1000 samples (100 a class) against the data
SCORE_FILE = "score.json"
GPU_PRESET_OVERRIDES = {"model.hidden_size": 384, "model.depth": 8, "optim.global_batch": 256}
GPU_STEPS = 4000


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small JiT on Fashion-MNIST and write a sample grid")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="override the step budget")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true",
                   help="--out holds an interrupted demo: continue its training from the "
                        "checkpoint up to --steps (default: the steps it was started with), "
                        "draw its grid and score it")  # fmt: skip
    p.add_argument("--restart", action="store_true",
                   help="--out holds an earlier run: move it aside to a new sibling "
                        "DIR.old-<time> (nothing is deleted) and train again")  # fmt: skip
    p.set_defaults(run=run)


def demo_config(out: str, steps: int | None, device: str):
    import torch

    from pixeljit.training.config import MAX_OPTIM_STEPS
    from pixeljit.training.config_io import apply_overrides
    from pixeljit.training.presets import get_preset

    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    overrides = {"run.out": out, "run.device": device, "sample.per_class": 8,
                 "sample.max_classes": 10, "run.ckpt_every": 200}  # fmt: skip
    if gpu:
        overrides.update(GPU_PRESET_OVERRIDES)
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps} (omit it for the default budget)")
    if steps is not None and steps > MAX_OPTIM_STEPS:
        raise ValueError(f"--steps must be ≤ {MAX_OPTIM_STEPS:,}, got {steps} (omit it for the "
                         "default budget)")  # fmt: skip
    overrides["optim.steps"] = steps if steps is not None else (GPU_STEPS if gpu else CPU_STEPS)
    return apply_overrides(get_preset(CPU_PRESET), overrides)


def resume_command(args, flag: str = "--resume") -> str:
    """The command that continues this demo: its --out, and --steps / --device if given."""
    flags = [flag, "--out", shlex.quote(args.out)]
    if args.steps is not None:
        flags += ["--steps", str(args.steps)]
    if args.device != "auto":
        flags += ["--device", args.device]
    return "pixeljit demo " + " ".join(flags)


def restart_command(args) -> str:
    """The command that starts this demo again in its --out, moving the old run aside."""
    return resume_command(args, "--restart")


def other_model(out: Path, model: dict | None) -> list[str]:
    """The fields where the run in `out` (its config.yaml) differs from the demo's `model`
    ([] when they match, or when there is nothing readable to compare)."""
    from pixeljit.files.yaml_file import read_yaml

    if model is None:
        return []
    try:
        saved = (read_yaml(out / "config.yaml", "run config") or {}).get("model")
    except (ValueError, OSError, AttributeError):
        return []
    if not isinstance(saved, dict):
        return []
    return [f"model.{k} {saved[k]!r} (the demo's: {v!r})" for k, v in model.items()
            if k in saved and saved[k] != v]  # fmt: skip


def check_demo_folder(
    out: Path, resume: bool, restart: bool, command: str, model: dict | None = None
) -> None:
    """Refuse, before anything is printed: --resume with --restart, --resume of a folder with
    no checkpoint, a fresh demo into a folder that holds a run (naming --resume when it is a
    demo run, --restart or another --out when its model is not the demo's). Whether `out` can
    be made and written at all is `check_out_folder`'s, which `run` calls first."""
    from pixeljit.training.rundir import holds_checkpoint, run_files

    differs = other_model(out, model) if holds_checkpoint(out) else []
    if differs and not restart:
        raise ValueError(
            f"{out} holds another training run, not this demo (its {', '.join(differs[:3])}): "
            f"pass --restart to move it aside to a new sibling {out.name}.old-<time> and train "
            "the demo there (nothing is deleted), or choose another --out"
        )
    if resume and restart:
        raise ValueError("--restart starts a fresh demo; it cannot be combined with --resume")
    if resume and not holds_checkpoint(out) and run_files(out):  # stopped before its first
        raise ValueError(
            f"--resume: {out} holds files of a demo that saved no checkpoint, so there is "
            f"nothing to continue: pass --restart instead of --resume to move them aside to a "
            f"new sibling {out.name}.old-<time> and train again (nothing is deleted)"
        )
    if resume and not holds_checkpoint(out):
        raise ValueError(f"--resume: {out} holds no demo checkpoint to continue; drop --resume "
                         "to start a fresh demo there")  # fmt: skip
    if not resume and not restart and holds_checkpoint(out):
        raise ValueError(
            f"{out} already holds a demo run; continue it with `{command}`, or pass --restart "
            f"to move it aside to a new sibling {out.name}.old-<time> and train again (nothing "
            "is deleted), or choose another --out"
        )


def run(args) -> int:
    from pixeljit.checkpoints.run import CheckpointSpaceError
    from pixeljit.cli.checks import check_device, interrupted_detail
    from pixeljit.data.fashion_mnist import find_fashion_mnist
    from pixeljit.data.prepare import FASHION_MNIST
    from pixeljit.training.diskfull import is_disk_full, no_space_message
    from pixeljit.training.loop import train
    from pixeljit.training.rundir import check_out_folder
    from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE

    check_device("--device", args.device)  # before the first line is printed
    if args.device != "auto":  # one this machine has, before the folder is judged by it
        from pixeljit.devices import as_device

        as_device(args.device, what="--device")
    cfg = demo_config(args.out, args.steps, args.device)
    # a file, a link leading nowhere, a place that cannot be written: refused before any line
    check_out_folder(args.out, cfg.data.source)
    model = dataclasses.asdict(cfg.model)
    check_demo_folder(Path(args.out), args.resume, args.restart, resume_command(args), model)
    if args.resume and args.steps is None:  # the length the interrupted demo was started with
        from pixeljit.checkpoints.run import load_checkpoint

        started = load_checkpoint(args.out, tensors=False)["config"]["optim"]["steps"]
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=started))
    if cfg.data.source == FASHION_MNIST:  # scored against at the end: missing → say so now
        find_fashion_mnist("test")
    m = cfg.model
    verb = "continuing" if args.resume else "training"
    print(
        f"pixeljit demo: {verb} a depth-{m.depth}, width-{m.hidden_size} JiT on Fashion-MNIST "
        f"({m.image_size}px, patch {m.patch_size}) to step {cfg.optim.steps} → {cfg.run.out}"
    )
    again = f"`{resume_command(args)}`"
    commands = {"resume": resume_command(args), "restart": restart_command(args)}
    try:
        result = train(cfg, resume=args.out if args.resume else None, restart=args.restart)
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the run listens for it)
        raise KeyboardInterrupt(interrupted_detail(cfg.run.out, again)) from None
    except CheckpointSpaceError as err:  # worded for this verb, not for `pixeljit train`
        raise RuntimeError(err.advice(**commands)) from None
    except OSError as err:  # a full disk while writing the log, a grid or the plot
        if not is_disk_full(err):
            raise
        raise RuntimeError(no_space_message(err, cfg.run.out, **commands)) from err
    if result.stopped_by_signal is not None:  # Ctrl-C / SIGTERM, after a checkpoint
        print(f"continue the demo with {again}")
        return SIGNAL_EXIT_BASE + result.stopped_by_signal
    if result.stopped_on_nan:
        return 1
    out = Path(cfg.run.out)
    print(f"\nscoring {SCORE_NUM} samples (the previews' sampler) against the training set ...",
          flush=True)  # fmt: skip
    try:
        score = score_demo(cfg, result.checkpoint)
        grid = demo_grid(cfg, result.checkpoint, out / f"samples-{result.step:07d}.png")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"the training is done (checkpoint {result.checkpoint}); {again} draws its grid "
            "and scores it without training again"
        ) from None
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise RuntimeError(
            f"no space left on the device writing {err.filename or out}; the training is done "
            f"(checkpoint {result.checkpoint}): free some space and run {again} to draw its "
            "grid and score it without training again"
        ) from err
    print("\nthe demo's files:")  # a resume with nothing to train rewrote only the score
    listed = [("samples", grid, "   (one row per class)"), ("loss curve", out / LOSS_PLOT, ""),
              ("checkpoint", Path(result.checkpoint), ""), ("metrics", out / METRICS_FILE, ""),
              ("score", out / SCORE_FILE, "")]  # fmt: skip
    for name, path, note in listed:
        if path.is_file():  # a loss plot the run could not write is not listed
            print(f"  {name:<11} {path}{note}")
    print("\n" + score_lines(score))
    return 0


def demo_grid(cfg, checkpoint, path: Path) -> Path:
    """The checkpoint's sample grid at `path`, as its training previews draw it; drawn here when
    training did not (a resumed demo with nothing left to train, stopped before its last grid)."""
    from pixeljit.training.distributed import resolve_device
    from pixeljit.training.finals import final_grid

    return final_grid(cfg, checkpoint, path, resolve_device(cfg.run.device))


def score_demo(cfg, checkpoint, num: int = SCORE_NUM, held_out=None) -> dict:
    """Class accuracy and FD-FMNIST of `num` samples (the run's preview sampler and EMA, seed
    `SCORE_SEED`) against the training set, beside the same scores of as many real held-out
    images (the floor; `held_out` = (source, split), default the training source's test split);
    written to the run folder as `score.json`."""
    import json

    from pixeljit.checkpoints.load import load_trained
    from pixeljit.data.open import open_dataset
    from pixeljit.diffusion.execution import default_amp_dtype
    from pixeljit.evaluation import (
        GenerationSpec,
        dataset_stats_for,
        evaluate,
        generation_record,
        score_real_images,
    )
    from pixeljit.files.atomic import atomic_write_text
    from pixeljit.metrics import create_extractor
    from pixeljit.training.distributed import resolve_device

    device = resolve_device(cfg.run.device)
    model = load_trained(checkpoint, None, device)
    size, channels = cfg.model.image_size, cfg.model.in_channels
    extractor = create_extractor("fmnist-cnn", device=device)
    ref = dataset_stats_for(cfg.data.source, extractor, size, channels, progress=True)
    sampler = model.sampler  # the run's preview settings, read back with the weights
    amp = default_amp_dtype(device)
    spec = GenerationSpec(num, sampler, seed=SCORE_SEED, batch_size=250, amp_dtype=amp)
    model_scores = evaluate(model, spec, extractor, ref, ("fd",))
    source, split = held_out or (cfg.data.source, "test")
    floor = score_real_images(open_dataset(source, size, channels, split), num, extractor, ref)
    label = extractor.fd_label
    reference = f"{cfg.data.source} (train)"
    score = {
        "scores": {"class_accuracy": model_scores["class_accuracy"], label: model_scores[label]},
        "real_test_images": {"class_accuracy": floor["class_accuracy"], label: floor[label]},
        "held_out": f"{source} ({split or 'all'})",
        "fd_label": label,
        **generation_record(model, checkpoint, spec, reference, extractor.name),
    }
    atomic_write_text(Path(cfg.run.out) / SCORE_FILE, json.dumps(score, indent=2) + "\n")
    return score


def score_lines(score: dict) -> str:
    m, f, label = score["scores"], score["real_test_images"], score["fd_label"]
    return (
        f"score ({score['num']} samples against the training set):\n"
        f"  class accuracy  {m['class_accuracy']:6.1%}   (real test images: "
        f"{f['class_accuracy']:.1%})\n"
        f"  {label:<15} {m[label]:6.2f}   (real test images: {f[label]:.2f}; lower is "
        "better)"
    )
