"""`pixeljit reproduce resolution | bottleneck | noise`: the one-axis image grids of
`pixeljit.experiments` (resolution transfer, Fig. 4, Tab. 3), with the flags they share
(`--out --quick --seeds --steps --device --threads`) and one axis flag each. Registered in
`reproduce.EXPERIMENTS` through GRID_EXPERIMENTS; see docs/evidence.md.
"""

from __future__ import annotations

import argparse
import os
import time

from pixeljit.cli.checks import check_device, check_float, check_int, check_output, check_seed

MAX_STEPS = 10_000_000
MAX_GRID_SIZE = 1024  # image sizes of the resolution grid (the paper's largest)
MAX_BASE_SIZE = 4096
MAX_BOTTLENECK = 65_536
MAX_ABS_MU = 5.0  # logit-normal means beyond ±5 put every t at 0 or 1


def _add_grid_flags(p, name: str) -> None:
    """The flags every grid experiment shares (see `_run_grid`)."""
    from pixeljit.experiments.grid import GPU_VALUES, QUICK_STEPS, GridConfig

    p.add_argument("--out", default=f"runs/{name}", help=f"results folder (default runs/{name})")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"CI-sized: {QUICK_STEPS} steps, few samples, a subset of the images",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="training / sampling seeds (default 0)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per cell (default {GridConfig().steps}, --quick "
        f"{QUICK_STEPS}, --device cuda {GPU_VALUES['steps']})",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (default auto); cuda also selects the larger "
        "GPU settings (docs/evidence.md) unless --quick",
    )
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for these small models on a "
                   "shared CPU)")  # fmt: skip


def _grid_parser(experiments, name: str, help: str, what: str):
    p = experiments.add_parser(
        name,
        help=help,
        description=(
            f"{what} Every cell trains through the training engine, samples with Heun and "
            f"scores FD-EffNetLite0 and HF energy; writes {name}.json, {name}.md, "
            f"{name}_plot.png and {name}_samples.png. Re-running with the same flags and --out "
            "resumes: finished cells are kept, unfinished ones continue from their checkpoint."
        ),
    )
    _add_grid_flags(p, name)
    return p


def _add_resolution(experiments) -> None:
    from pixeljit.experiments.resolution import ResolutionConfig

    defaults = ResolutionConfig()
    p = _grid_parser(
        experiments, "resolution",
        "resolution transfer: one network at 3 sizes, x- vs v-pred, noise scaled vs fixed",
        "The same network (one token grid) at several resolutions of the emoji images, x- and "
        "v-prediction, with the noise scale s = size/base and with the smallest size's s kept.",
    )  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="PX",
                   help=f"image sizes, increasing, multiples of the {defaults.tokens}-token "
                   f"grid side (default {' '.join(map(str, defaults.sizes))})")  # fmt: skip
    p.add_argument(
        "--base-size",
        type=int,
        default=None,
        help=f"s = size / base (default {defaults.base_size}: the project's rule)",
    )
    p.set_defaults(experiment=_run_resolution)


def _run_resolution(args) -> int:
    from pixeljit.experiments import resolution

    overrides: dict = {}
    if args.sizes is not None:
        for size in args.sizes:
            check_int("--sizes", size, 2, MAX_GRID_SIZE + 1)
        overrides["sizes"] = tuple(args.sizes)
    if args.base_size is not None:
        check_int("--base-size", args.base_size, 1, MAX_BASE_SIZE + 1)
        overrides["base_size"] = args.base_size
    return _run_grid(args, resolution, resolution.ResolutionConfig,
                     resolution.run_resolution, overrides)  # fmt: skip


def _bottleneck_dim(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a bottleneck dim: pass integers ≥ 1 or 'none'"
        ) from None


def _add_bottleneck(experiments) -> None:
    from pixeljit.experiments.bottleneck import BottleneckConfig, dim_text

    defaults = BottleneckConfig()
    p = _grid_parser(
        experiments, "bottleneck",
        "Fig. 4: x-pred at the bottlenecked setting, bottleneck patch-embedding width swept",
        "x-prediction (v-loss) with large patches and the bottleneck patch embedding "
        "p²·C → d′ → width, for several d′ and none.",
    )  # fmt: skip
    p.add_argument("--dims", type=_bottleneck_dim, nargs="+", default=None, metavar="D",
                   help="bottleneck dims, 'none' = the plain embedding (default "
                   f"{' '.join(dim_text(d) for d in defaults.dims)})")  # fmt: skip
    p.set_defaults(experiment=_run_bottleneck)


def _run_bottleneck(args) -> int:
    from pixeljit.experiments import bottleneck

    overrides: dict = {}
    if args.dims is not None:
        for dim in args.dims:
            check_int("--dims", dim, 1, MAX_BOTTLENECK + 1)
        overrides["dims"] = tuple(args.dims)
    return _run_grid(args, bottleneck, bottleneck.BottleneckConfig,
                     bottleneck.run_bottleneck, overrides)  # fmt: skip


def _add_noise(experiments) -> None:
    from pixeljit.experiments.noise import PAPER_MUS

    p = _grid_parser(
        experiments, "noise",
        "Tab. 3: logit-normal μ × {x, ε, v}-pred (v-loss) at the bottlenecked setting",
        "The t-sampler's mean μ (lower: more noise) × x-, ε- and v-prediction with the v-loss, "
        "large patches.",
    )  # fmt: skip
    p.add_argument(
        "--mus",
        type=float,
        nargs="+",
        default=None,
        metavar="MU",
        help=f"logit-normal means (default {' '.join(f'{m:g}' for m in PAPER_MUS)})",
    )
    p.set_defaults(experiment=_run_noise)


def _run_noise(args) -> int:
    from pixeljit.experiments import noise

    overrides: dict = {}
    if args.mus is not None:
        for mu in args.mus:
            check_float("--mus", mu, -MAX_ABS_MU, MAX_ABS_MU)
        overrides["p_means"] = tuple(args.mus)
    return _run_grid(args, noise, noise.NoiseConfig, noise.run_noise, overrides)


def grid_config(config_cls, quick: bool, device: str, seeds, steps, overrides: dict):
    """The experiment's config of the shared flags: --quick (CI-sized), else --device cuda
    (the GPU settings), else the CPU default; explicit flags override all three."""
    values = dict(overrides, device=device)
    if seeds is not None:
        values["seeds"] = tuple(seeds)
    if steps is not None:
        values["steps"] = steps
    if quick:
        return config_cls.quick(**values)
    if device.startswith("cuda"):
        return config_cls.gpu(**values)
    return config_cls(**values)


def _run_grid(args, module, config_cls, run_fn, overrides: dict) -> int:
    import torch

    from pixeljit.experiments.grid import check_results_folder
    from pixeljit.experiments.sweep_report import table_markdown, write_outputs

    for seed in args.seeds or ():
        check_seed("--seeds", seed)
    check_int("--steps", args.steps, 1, MAX_STEPS + 1)
    check_int("--threads", args.threads, 1, (os.cpu_count() or 1) + 1)
    check_device("--device", args.device)
    name = module.EXPERIMENT
    config = grid_config(config_cls, args.quick, args.device, args.seeds, args.steps, overrides)
    out = check_output("--out", args.out, folder=True, overwrite=True)
    check_results_folder(config, out, name)  # a foreign folder or another config: refused
    torch.set_num_threads(args.threads)
    print(f"pixeljit reproduce {name}: {config.steps} steps per cell, seeds "
          f"{list(config.seeds)} → {out}", flush=True)  # fmt: skip
    start = time.perf_counter()
    try:
        report = run_fn(config, out, progress=lambda line: print("  " + line, flush=True))
    except ImportError as err:  # the EffNet packages (the `eval` extra)
        raise RuntimeError(str(err)) from None
    layout = module.layout(report)
    paths = write_outputs(report, layout, out)
    print()
    print(table_markdown(report, layout), end="")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; wrote:")
    for key, path in paths.items():
        print(f"  {key:<7s} {path}")
    return 0


GRID_EXPERIMENTS = {"resolution": _add_resolution, "bottleneck": _add_bottleneck,
                    "noise": _add_noise}  # fmt: skip
