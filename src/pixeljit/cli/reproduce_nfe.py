"""`pixeljit reproduce nfe`: FD, class accuracy, precision and recall against NFE for every
solver × time grid on one checkpoint (see pixeljit.experiments.nfe and docs/sampling.md).

pixeljit reproduce nfe --checkpoint RUN --ref DATASET|STATS.npz [--num 1000] [--out runs/nfe]
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from pixeljit.cli.checks import (
    CHECKPOINT_HELP,
    MAX_IMAGES,
    check_checkpoint_exists,
    check_device,
    check_float,
    check_int,
    check_output,
    check_seed,
)

DEFAULT_NFE_OUT = "runs/nfe"
MAX_BUDGET = 10_000  # NFE per image (the sampler's MAX_STEPS)


def _add_nfe(experiments) -> None:
    from pixeljit.diffusion.sampler import SamplerConfig
    from pixeljit.diffusion.solvers import GRIDS, METHODS
    from pixeljit.experiments.nfe import (
        DEFAULT_CFG,
        DEFAULT_NUM,
        PAPER_BUDGETS,
        QUICK_BUDGETS,
        QUICK_NUM,
    )

    defaults = SamplerConfig()
    p = experiments.add_parser(
        "nfe",
        help="FD / accuracy / precision / recall vs NFE for every solver × time grid",
        description=(
            "Sample one checkpoint with every solver on every time grid at several NFE budgets "
            "(matched seeds, with guidance) and score each row like `pixeljit eval`; writes "
            "nfe.json (after every row: re-running with the same flags resumes), nfe.md and "
            "nfe.png (FD vs NFE, log x)."
        ),
    )
    p.add_argument("--checkpoint", required=True,
                   help=CHECKPOINT_HELP)  # fmt: skip
    p.add_argument("--weights", default=None, help="ema | ema:<decay> | model | model_ema1 …")
    p.add_argument("--ref", required=True, help="reference: statistics .npz with features, "
                   "or a data set (packed folder, fashion-mnist, …)")  # fmt: skip
    p.add_argument("--ref-split", default=None, help="split of a data-set reference")
    p.add_argument("--extractor", default="auto",
                   help="fmnist-cnn | effnet-lite0 | inception-v3-fid | auto")  # fmt: skip
    p.add_argument("--out", default=DEFAULT_NFE_OUT,
                   help=f"results folder (default {DEFAULT_NFE_OUT})")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="solvers (default all)")  # fmt: skip
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=GRIDS,
                   help="time grids (default all)")  # fmt: skip
    p.add_argument("--budgets", nargs="+", type=int, default=None, metavar="NFE",
                   help=f"NFE budgets (default {' '.join(map(str, PAPER_BUDGETS))}; "
                   "a solver takes the most steps within each)")  # fmt: skip
    p.add_argument("--num", type=int, default=None,
                   help=f"images per row (default {DEFAULT_NUM}, --quick {QUICK_NUM})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same in every row)")
    rec = "the model's recommended setting, else"
    p.add_argument("--cfg", type=float, default=None,
                   help=f"guidance scale (default: {rec} {DEFAULT_CFG}; 1 if "
                   "unconditional)")  # fmt: skip
    low, high = defaults.interval
    p.add_argument("--interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help=f"CFG interval in t (default: {rec} {low} {high})")  # fmt: skip
    p.add_argument("--shift", type=float, default=None,
                   help=f"shift of grid shifted (default: {rec} {defaults.shift})")  # fmt: skip
    p.add_argument("--t-eps", type=float, default=None,
                   help=f"clamp of 1 − t (default: {rec} {defaults.t_eps})")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help=f"CI-sized: budgets {' '.join(map(str, QUICK_BUDGETS))}, "
                   f"{QUICK_NUM} images per row")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier study with other settings in --out")  # fmt: skip
    p.set_defaults(experiment=_run_nfe)


def nfe_config(args, conditional: bool, recommended=None):
    """The NfeConfig of the flags (explicit --budgets / --num override --quick). Guidance, its
    interval, the shift and t_eps left out come from the model's `recommended` SamplerConfig
    (else SamplerConfig's defaults, and CFG DEFAULT_CFG for a conditional model)."""
    from pixeljit.diffusion.sampler import SamplerConfig
    from pixeljit.experiments.nfe import DEFAULT_CFG, NfeConfig

    base = (
        recommended
        if recommended is not None
        else SamplerConfig(cfg=DEFAULT_CFG if conditional else 1.0)
    )
    if not conditional:
        base = dataclasses.replace(base, cfg=1.0)  # nothing to guide

    def flag(name):
        value = getattr(args, name)
        return getattr(base, name) if value is None else value

    overrides = {"methods": tuple(dict.fromkeys(args.methods)),
                 "grids": tuple(dict.fromkeys(args.grids)), "seed": args.seed,
                 "cfg": flag("cfg"), "interval": tuple(flag("interval")), "shift": flag("shift"),
                 "t_eps": flag("t_eps"), "batch_size": args.batch_size}  # fmt: skip
    if args.budgets is not None:
        overrides["budgets"] = tuple(sorted(set(args.budgets)))
    if args.num is not None:
        overrides["num"] = args.num
    return NfeConfig.quick(**overrides) if args.quick else NfeConfig(**overrides)


def _check_flags(args) -> Path:
    from pixeljit.cli.evaluate_args import check_extractor_flag
    from pixeljit.experiments.nfe import METRICS
    from pixeljit.metrics.score import ScoreConfig

    check_int("--num", args.num, 1, MAX_IMAGES + 1)
    check_extractor_flag(args.extractor)  # before the model loads
    if args.num is not None:  # each row scores FD and precision / recall
        fix = "raise --num to {least} or more"
        ScoreConfig().check_count(METRICS, args.num, fix)
    check_int("--batch-size", args.batch_size, 1, MAX_IMAGES + 1)
    for budget in args.budgets or ():
        check_int("--budgets", budget, 1, MAX_BUDGET + 1)
    check_seed("--seed", args.seed)
    check_float("--cfg", args.cfg, 0.0)
    check_float("--shift", args.shift, 0.0, low_open=True)
    if args.shift is not None and "shifted" not in args.grids:
        raise ValueError("--shift has no effect without the shifted grid (it shapes --grids "
                         "shifted only): add shifted to --grids or drop --shift")  # fmt: skip
    check_device("--device", args.device)
    check_int("--threads", args.threads, 1, (os.cpu_count() or 1) + 1)
    if args.ref_split and args.ref.endswith(".npz"):
        raise ValueError(f"--ref-split has no effect with the statistics file --ref {args.ref}: "
                         "drop it (it picks a split of a data-set reference)")  # fmt: skip
    check_checkpoint_exists("--checkpoint", args.checkpoint)
    _check_ref_features(args.ref)
    return check_output("--out", args.out, folder=True, overwrite=True)


def _check_ref_features(ref: str) -> None:
    """A statistics file --ref without the data set's features is refused before the model is
    loaded: every row scores precision / recall (METRICS), which compare against real features,
    and this verb has no flag to leave them out. Read from the .npz's headers only; a file
    that is missing or unreadable is left to the load, which says why."""
    from pixeljit.metrics.image_sources import npz_headers

    path = Path(ref)
    if not (ref.endswith(".npz") and path.is_file()):
        return
    try:
        headers = npz_headers(path)
    except (ValueError, OSError):
        return
    if "features" not in headers and {"mu", "sigma"} <= set(headers):
        raise ValueError(
            f"--ref {ref} holds only mu/sigma (as ADM / JiT .npz files do), but every row of "
            "reproduce nfe scores precision / recall, which needs the data set's features: "
            "pass the data set itself as --ref (a packed folder, fashion-mnist, …), or make "
            "statistics that keep the features with `pixeljit eval --make-ref DATASET --size S "
            "--channels C --out STATS.npz`"
        )


def _run_nfe(args) -> int:
    import torch

    from pixeljit.checkpoints.load import load_trained
    from pixeljit.cli.evaluate import _extractor
    from pixeljit.cli.evaluate_ref import dataset_stats
    from pixeljit.cli.sampler_args import check_flags_take_effect
    from pixeljit.experiments.nfe import (
        HEUN_FEWEST_NFE,
        open_results,
        run_nfe,
        sorted_rows,
        study_header,
    )
    from pixeljit.experiments.nfe_report import table_markdown, write_outputs
    from pixeljit.training import distributed as dist_utils

    out = _check_flags(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = dist_utils.resolve_device(args.device)
    model = load_trained(args.checkpoint, args.weights, device)
    net_cfg = model.net.config
    config = nfe_config(args, net_cfg.num_classes > 0, model.sampler)  # validated
    check_flags_take_effect(args, args.checkpoint, conditional=net_cfg.num_classes > 0,
                            prediction=model.prediction, cfgs=[config.cfg],
                            methods=config.methods)  # fmt: skip
    _check_guided_rows(args, config, net_cfg.num_classes > 0)
    skipped = config.skipped()
    if skipped:
        shown = ", ".join(str(b) for b in skipped)
        print(f"note: no heun row at --budgets {shown}: Heun's fewest evaluations are "
              f"{HEUN_FEWEST_NFE} (2 steps; one Heun step is an Euler step)")  # fmt: skip
    extractor = _extractor(args.extractor, net_cfg.in_channels, net_cfg.num_classes, None, device)
    describe = {"checkpoint": str(args.checkpoint), "weights": model.weights or "default",
                "ref": str(args.ref)}  # fmt: skip
    if args.ref_split is not None:  # recorded (and compared) only when given: older studies
        describe["ref_split"] = args.ref_split
    # a folder with another study is refused before the reference statistics are computed
    open_results(out, study_header(config, model, extractor, describe), args.overwrite)
    info = dist_utils.DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    # one process: no rank waits for the reference to be packed (first=None)
    ref = dataset_stats("--ref", args.ref, extractor, net_cfg.image_size, net_cfg.in_channels,
                         args.ref_split, info, None)  # fmt: skip
    ref.check_image_shape(
        (net_cfg.in_channels, net_cfg.image_size, net_cfg.image_size),
        f"--ref {args.ref}",
        "the model's images",
    )
    low, high = config.interval
    guidance = f"CFG {config.cfg:g} on ({low:g}, {high:g})" if config.cfg != 1 else "no guidance"
    print(f"pixeljit reproduce nfe: {model.description}, {config.num} images per row, "
          f"{guidance} → {out}", flush=True)  # fmt: skip
    start = time.perf_counter()
    try:
        results = run_nfe(config, model, extractor, ref, out, describe, args.overwrite,
                          progress=lambda line: print("  " + line, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        from pixeljit.experiments.evidence import RERUN

        raise KeyboardInterrupt(f"the finished rows are kept in {out}; {RERUN} to continue the "
                                "study") from None  # fmt: skip
    rows = sorted_rows(results)
    paths = write_outputs(rows, extractor.fd_label, results["header"], out)
    print()
    print(table_markdown(rows, extractor.fd_label, results["header"]), end="")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; wrote:")
    for name, path in paths.items():
        print(f"  {name:<8s} {path}")
    return 0


def _check_guided_rows(args, config, conditional: bool) -> None:
    """Rows whose evaluation times all lie outside the CFG interval are unguided: said in a
    note; when every row would be and --cfg / --interval was given, refused (as sample and eval
    refuse guidance no evaluation would see)."""
    from pixeljit.cli.sampler_args import check_guidance_applies
    from pixeljit.experiments.nfe import plan

    if not conditional or config.cfg == 1:
        return
    cells = plan(config)
    samplers = [config.sampler(c.method, c.grid, c.steps) for c in cells]
    unguided = [c.key for c, s in zip(cells, samplers, strict=True) if not s.guided_evaluations()]
    if len(unguided) == len(cells) and (args.cfg is not None or args.interval is not None):
        check_guidance_applies(samplers[-1], [config.cfg])
    if unguided:
        low, high = config.interval
        print(f"note: rows {', '.join(unguided)} are unguided: none of their evaluation times "
              f"lies inside the CFG interval ({low:g}, {high:g})")  # fmt: skip
