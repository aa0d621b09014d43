"""`pixeljit reproduce resolution | bottleneck | noise`: the one-axis image grids of
`pixeljit.experiments` (resolution transfer, Fig. 4, Tab. 3), with the flags they share
(`--out --quick --seeds --steps --device --threads --jobs --reuse`) and one axis flag each.
Registered in `reproduce.EXPERIMENTS` through GRID_EXPERIMENTS; see docs/evidence.md.

`reproduce table2` (cli/reproduce.py) is a grid too and uses the same pieces: `add_grid_flags`,
`check_grid_flags`, `grid_config`, `run_and_report`; `print_outputs` ends every reproduction.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import time
from pathlib import Path

from pixeljit.cli.checks import (
    check_device,
    check_float,
    check_int,
    check_output,
    check_seed,
    counted,
    repeated,
)
from pixeljit.training.stopsignal import StoppedBySignal

MAX_STEPS = 10_000_000
MAX_JOBS = 256  # worker processes of a grid
MAX_GRID_SIZE = 1024  # image sizes of the resolution grid (the paper's largest)
MAX_BASE_SIZE = 4096
MAX_BOTTLENECK = 65_536
MAX_ABS_MU = 5.0  # logit-normal means beyond ±5 put every t at 0 or 1
DEVICE_HELP = "training and sampling device: auto | cpu | cuda | cuda:N | mps (default auto)"
GPU_DEVICE_HELP = (
    "auto | cpu | cuda | cuda:N | mps (default auto); cuda also selects the larger GPU settings "
    "(docs/evidence.md) unless --quick"
)
THREADS_HELP = "torch CPU threads (default 1: fastest for these small models on a shared CPU)"
JOBS_HELP = (
    "cells trained at once, each in its own process with --threads threads (default 1; on a "
    "CPU, jobs × threads ≤ the cores)"
)


def add_grid_flags(p, name: str, gpu: bool = True) -> None:
    """The flags every image grid shares (checked by `check_grid_flags`); `gpu`: the grid has
    GPU settings, which --device cuda selects (see `grid_config`)."""
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
    on_gpu = f", --device cuda {GPU_VALUES['steps']}" if gpu else ""
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per cell (default {GridConfig().steps}, --quick {QUICK_STEPS}"
        f"{on_gpu})",
    )
    p.add_argument("--device", default="auto", help=GPU_DEVICE_HELP if gpu else DEVICE_HELP)
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    p.add_argument(
        "--reuse",
        nargs="+",
        default=(),
        metavar="DIR",
        help="results folders of other reproductions (any grid, e.g. runs/table2): cells they "
        "finished with the same recipe, images, sampler and reference are taken, not trained "
        "again (table2's bottlenecked v-loss cells are noise's μ = −0.8 row, for one)",
    )


def check_reuse(folders, out) -> list[Path]:
    """--reuse: existing results folders of some reproduction, not --out itself."""
    found = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise FileNotFoundError(f"--reuse {folder} does not exist: give the --out folder of "
                                    "an earlier pixeljit reproduce run")  # fmt: skip
        if not folder.is_dir() or not any(folder.glob("*-config.json")):
            raise ValueError(
                f"--reuse {folder}: not the results folder of a reproduction (no *-config.json "
                "in it); give the --out folder of an earlier pixeljit reproduce run"
            )
        if out is not None and folder.resolve() == Path(out).resolve():
            raise ValueError(f"--reuse {folder} is --out itself: its cells are kept anyway")
        found.append(folder)
    return found


def check_grid_flags(args) -> None:
    """The values of `add_grid_flags`' flags (--out is checked where it is used)."""
    args.reuse = check_reuse(args.reuse, args.out)
    for seed in args.seeds or ():
        check_seed("--seeds", seed)
    if repeated(args.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))}: give each seed once")
    check_int("--steps", args.steps, 1, MAX_STEPS + 1)
    check_int("--threads", args.threads, 1, (os.cpu_count() or 1) + 1)
    check_int("--jobs", args.jobs, 1, MAX_JOBS + 1)
    check_device("--device", args.device)
    if args.device not in ("cpu", "auto"):  # before the results folder is written
        from pixeljit.devices import as_device

        as_device(args.device, what="--device")
    crowded = oversubscription(args.device, args.jobs, args.threads, os.cpu_count() or 1)
    if crowded:  # before the results folder is written
        raise ValueError(crowded)


def oversubscription(device: str, jobs: int, threads: int, cores: int) -> str | None:
    """The error for more CPU threads than cores (None: they fit), as the help of --jobs says:
    the cells would compete for the cores, each slower, together no faster than at jobs ×
    threads = cores. Cells on a GPU share the card instead, so only a CPU device (or `auto`
    without CUDA) is checked."""
    from pixeljit.experiments.evidence import resolve_device

    if jobs * threads <= cores or resolve_device(device).type == "cuda":
        return None
    return (
        f"--jobs {jobs} × --threads {threads} = {jobs * threads} CPU threads, more than the "
        f"{cores} cores: use --jobs {max(cores // threads, 1)} or fewer at --threads {threads} "
        "(jobs × threads ≤ the cores on a CPU)"
    )


def _checked(values: list | None, flag: str, check, low, high) -> tuple | None:
    """An axis flag's values (None: not given), each passed to `check(flag, value, low, high)`,
    each given once."""
    for value in values or ():
        if value is not None:  # --dims none
            check(flag, value, low, high)
    twice = repeated(values)
    if twice:
        raise ValueError(f"{flag} lists {', '.join(twice)} more than once: give each value once")
    return None if values is None else tuple(values)


def _add_grid(name: str, experiments) -> None:
    """The sub-command of grid `name` (see GRIDS): the shared flags, then its axis flags."""
    summary, what, add_axes, run = GRIDS[name]
    p = experiments.add_parser(
        name,
        help=summary,
        description=(
            f"{what} Every cell trains through the training engine, samples with Heun and "
            f"scores FD-EffNetLite0 and HF energy; writes {name}.json, {name}.md, "
            f"{name}_plot.png and {name}_samples.png. Re-running with the same flags and --out "
            "resumes: finished cells are kept, unfinished ones continue from their checkpoint."
        ),
    )
    add_grid_flags(p, name)
    add_axes(p)
    p.set_defaults(experiment=run)


def _resolution_flags(p) -> None:
    from pixeljit.experiments.resolution import ResolutionConfig

    defaults = ResolutionConfig()
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="PX",
                   help=f"image sizes, increasing, multiples of the {defaults.tokens}-token "
                   f"grid side (default {' '.join(map(str, defaults.sizes))})")  # fmt: skip
    p.add_argument(
        "--base-size",
        type=int,
        default=None,
        help=f"s = size / base (default {defaults.base_size}: the project's rule)",
    )


def _run_resolution(args) -> int:
    from pixeljit.experiments import resolution

    sizes = _checked(args.sizes, "--sizes", check_int, 2, MAX_GRID_SIZE + 1)
    if sizes is not None and (len(sizes) < 2 or list(sizes) != sorted(sizes)):
        raise ValueError(f"--sizes {' '.join(map(str, sizes))}: give at least two sizes, "
                         "increasing (the study transfers one network between them)")  # fmt: skip
    check_int("--base-size", args.base_size, 1, MAX_BASE_SIZE + 1)
    return _run_grid(args, resolution, resolution.ResolutionConfig, resolution.run_resolution,
                     {"sizes": sizes, "base_size": args.base_size})  # fmt: skip


def _bottleneck_dim(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a bottleneck dim: pass integers ≥ 1 or 'none'"
        ) from None


def _bottleneck_flags(p) -> None:
    from pixeljit.experiments.bottleneck import BottleneckConfig, dim_text

    defaults = BottleneckConfig()
    p.add_argument("--dims", type=_bottleneck_dim, nargs="+", default=None, metavar="D",
                   help="bottleneck dims, 'none' = the plain embedding (default "
                   f"{' '.join(dim_text(d) for d in defaults.dims)})")  # fmt: skip


def _run_bottleneck(args) -> int:
    from pixeljit.experiments import bottleneck

    dims = _checked(args.dims, "--dims", check_int, 1, MAX_BOTTLENECK + 1)  # None: 'none'
    return _run_grid(args, bottleneck, bottleneck.BottleneckConfig, bottleneck.run_bottleneck,
                     {"dims": dims})  # fmt: skip


def _noise_flags(p) -> None:
    from pixeljit.experiments.noise import PAPER_MUS

    p.add_argument(
        "--mus",
        type=float,
        nargs="+",
        default=None,
        metavar="MU",
        help=f"logit-normal means (default {' '.join(f'{m:g}' for m in PAPER_MUS)})",
    )


def _run_noise(args) -> int:
    from pixeljit.experiments import noise

    mus = _checked(args.mus, "--mus", check_float, -MAX_ABS_MU, MAX_ABS_MU)
    return _run_grid(args, noise, noise.NoiseConfig, noise.run_noise, {"p_means": mus})


def grid_config(
    config_cls, quick: bool, device: str, seeds, steps, overrides: dict, gpu: bool = True
):
    """The experiment's config of the shared flags: --quick (CI-sized), else --device cuda
    (the GPU settings, where `gpu`), else the CPU default; explicit flags override all three."""
    values = dict(overrides, device=device)
    if seeds is not None:
        values["seeds"] = tuple(seeds)
    if steps is not None:
        values["steps"] = steps
    if quick:
        return config_cls.quick(**values)
    if gpu and device.startswith("cuda"):
        return config_cls.gpu(**values)
    return config_cls(**values)


def run_and_report(threads: int, header: str, run, write, out: Path) -> int:
    """Print `header`, run the grid in `out` (`run(progress=...)`, the report dict) on
    `threads` torch threads, write its outputs (`write(report)`: the paths written and the
    table) and print them. A missing EffNet package (the `eval` extra) is a one-line error; an
    interruption says what of the grid is kept."""
    import torch

    torch.set_num_threads(threads)
    print(header, flush=True)
    start = time.perf_counter()
    try:
        report = run(progress=lambda line: print("  " + line, flush=True))
    except ImportError as err:  # the EffNet packages (the `eval` extra)
        raise RuntimeError(str(err)) from None
    except KeyboardInterrupt as err:
        from pixeljit.experiments.evidence import RERUN

        said = str(err)
        way_on = "" if RERUN in said else f": {RERUN} to continue the grid"
        message = "; ".join(filter(None, [said, grid_kept(out) + way_on]))
        signum = getattr(err, "signum", signal.SIGINT)  # SIGTERM exits 143, as train does
        raise StoppedBySignal(message, signum) from None
    paths, table = write(report)
    return print_outputs(table, start, paths)


def grid_kept(out: Path) -> str:
    """What an interrupted grid leaves in `out`: its finished cells, each with its result."""
    from pixeljit.experiments.evidence import RESULT_NAME
    from pixeljit.experiments.reuse import CELLS_FOLDER

    finished = len(list((out / CELLS_FOLDER).glob(f"*/{RESULT_NAME}")))
    if not finished:
        return f"no cell of {out} was finished yet"
    return f"{counted(finished, 'finished cell')} in {out / CELLS_FOLDER} kept"


def print_outputs(table: str, start: float, paths: dict) -> int:
    """The end of every reproduction: its table, the time since `start`, the files written."""
    print()
    print(table, end="")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; wrote:")
    for key, path in paths.items():
        print(f"  {key:<7s} {path}")
    return 0


def _run_grid(args, module, config_cls, run_fn, axes: dict) -> int:
    """A one-axis grid from its flags (`axes`: config field → the axis flag's value, None: not
    given), its report written as NAME.json, NAME.md and the figures."""
    from pixeljit.experiments.grid import check_results_folder
    from pixeljit.experiments.sweep_report import table_markdown, write_outputs

    check_grid_flags(args)
    name = module.EXPERIMENT
    overrides = {key: value for key, value in axes.items() if value is not None}
    config = grid_config(config_cls, args.quick, args.device, args.seeds, args.steps, overrides)
    out = check_output("--out", args.out, folder=True, overwrite=True)
    check_results_folder(config, out, name)  # a foreign folder or another config: refused

    def write(report: dict) -> tuple[dict, str]:
        layout = module.layout(report)
        return write_outputs(report, layout, out), table_markdown(report, layout)

    return run_and_report(
        args.threads,
        f"pixeljit reproduce {name}: {config.steps} steps per cell, seeds {list(config.seeds)} → "
        f"{out}",
        lambda progress: run_fn(
            config, out, progress=progress, jobs=args.jobs, reuse=args.reuse
        ),  # fmt: skip
        write,
        out,
    )


# name → (the sub-command's help, the start of its description, its axis flags, its runner)
GRIDS = {
    "resolution": (
        "resolution transfer: one network at 3 sizes, x- vs v-pred, noise scaled vs fixed",
        "The same network (one token grid) at several resolutions of the emoji images, x- and "
        "v-prediction, with the noise scale s = size/base and with the smallest size's s kept.",
        _resolution_flags,
        _run_resolution,
    ),
    "bottleneck": (
        "Fig. 4: x-pred at the bottlenecked setting, bottleneck patch-embedding width swept",
        "x-prediction (v-loss) with large patches and the bottleneck patch embedding "
        "p²·C → d′ → width, for several d′ and none.",
        _bottleneck_flags,
        _run_bottleneck,
    ),
    "noise": (
        "Tab. 3: logit-normal μ × {x, ε, v}-pred (v-loss) at the bottlenecked setting",
        "The t-sampler's mean μ (lower: more noise) × x-, ε- and v-prediction with the v-loss, "
        "large patches.",
        _noise_flags,
        _run_noise,
    ),
}
GRID_EXPERIMENTS = {name: functools.partial(_add_grid, name) for name in GRIDS}
