"""`pixeljit reproduce EXPERIMENT`: re-run one of the paper's experiments, write its figure/table.

Each experiment is one sub-command, registered in EXPERIMENTS as a function that adds its
sub-parser and sets `experiment=<runner>`; the runner turns the Namespace into typed library calls.
Add a reproduction by writing `_add_<name>` / `_run_<name>` and listing it in EXPERIMENTS.

- `toy`: §3.3 / Fig. 2 (x- vs ε- vs v-prediction on 2-D data buried in ℝ^D), see docs/toy.md.
- `table2`: Tab. 2 in miniature on the emoji set (nine prediction × loss pairs, bottlenecked vs
  not), see docs/evidence.md.
- `resolution`, `bottleneck`, `noise`: resolution transfer, Fig. 4 and Tab. 3 on the emoji set,
  one grid each through `experiments.grid`; their sub-commands live in `cli/reproduce_grid.py`
  (shared flags), see docs/evidence.md.
- `nfe`: quality vs network evaluations for every solver × time grid on one checkpoint
  (`cli/reproduce_nfe.py`), see docs/sampling.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixeljit.experiments.toy import ToyConfig

from pixeljit.cli.checks import check_int, check_output, check_seed, repeated
from pixeljit.cli.reproduce_grid import (
    GRID_EXPERIMENTS,
    add_grid_flags,
    check_grid_flags,
    grid_config,
    print_outputs,
    run_and_report,
)
from pixeljit.cli.reproduce_nfe import _add_nfe

DEFAULT_TOY_OUT = "runs/toy"
MAX_TOY_DIM = 65_536  # the paper's toy goes to D = 512; 10⁸ tried to allocate 100 GB
MAX_TOY_STEPS = 10_000_000


def _add_toy(experiments) -> None:
    from pixeljit.experiments.toy import PAPER_DIMS, QUICK_DIMS, QUICK_STEPS, ToyConfig

    defaults = ToyConfig()
    quick_dims = ", ".join(map(str, QUICK_DIMS))
    p = experiments.add_parser(
        "toy",
        help="Fig. 2: x-, ε-, v-prediction on 2-D data buried in ℝ^D (CPU, minutes)",
        description=(
            "Train a 5-layer ReLU MLP per (prediction, D) with the v-loss, sample with Heun-50, "
            "project back to 2-D; writes toy_fig2.png, toy_table.md and toy_table.json. The runs "
            "are kept in memory until all are done: an interrupted toy keeps none of them and "
            "is re-run from the start."
        ),
    )
    p.add_argument(
        "--out", default=DEFAULT_TOY_OUT, help=f"output folder (default {DEFAULT_TOY_OUT})"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="base seed (default 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller run: D ∈ {{{quick_dims}}}, {QUICK_STEPS} steps, fewer samples",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run (default {defaults.steps}, --quick {QUICK_STEPS})",
    )
    p.add_argument(
        "--dims",
        type=int,
        nargs="+",
        default=None,
        metavar="D",
        help=f"ambient dimensions (default {' '.join(map(str, PAPER_DIMS))})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch threads (default 1: fastest for these tiny MLPs on a shared CPU)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace the figure and tables of an earlier run in --out")  # fmt: skip
    p.set_defaults(experiment=_run_toy)


def toy_config(
    quick: bool, seed: int, steps: int | None, dims: list[int] | None, threads: int
) -> ToyConfig:
    """The ToyConfig of the command-line flags (explicit --steps / --dims override --quick)."""
    from pixeljit.experiments.toy import ToyConfig

    overrides: dict = {"threads": threads}
    if steps is not None:
        overrides["steps"] = steps
    if dims is not None:
        overrides["dims"] = tuple(dims)
    if quick:
        return ToyConfig.quick(seed=seed, **overrides)
    return ToyConfig(seed=seed, **overrides)


def check_toy_flags(args) -> None:
    """The toy's flags, each error naming its flag, before ToyConfig sees them (so none of the
    config's own field errors, e.g. `dims must not repeat`, reaches the command line)."""
    from pixeljit.experiments.toy import DATA_DIM

    check_seed("--seed", args.seed)
    check_int("--steps", args.steps, 1, MAX_TOY_STEPS + 1)
    check_int("--threads", args.threads, 1, (os.cpu_count() or 1) + 1)  # more only oversubscribe
    for d in args.dims or ():
        check_int("--dims", d, DATA_DIM, MAX_TOY_DIM + 1)  # the data's own 2 dimensions at least
    twice = repeated(args.dims)
    if twice:  # the grid verbs' wording
        raise ValueError(f"--dims lists {', '.join(twice)} more than once: give each value once")


def check_toy_outputs(out: Path, overwrite: bool) -> None:
    """Every file the toy writes into `out`, before any training: a folder (or a link to one),
    a symbolic link leading nowhere or anything but a plain file at one of its names is refused
    even with --overwrite (the toy never wrote it); the files of an earlier run are refused
    without --overwrite; a non-empty folder without them (another experiment's results, a
    user's files) is refused, as the grids and the NFE study refuse theirs."""
    from pixeljit.experiments.toy_report import toy_output_names

    earlier = []
    for name in toy_output_names():
        path = out / name
        if path.is_symlink() and not path.exists():
            problem = f"a symbolic link to {os.readlink(path)}, which does not exist"
        elif path.is_dir():
            problem = "a folder"
        elif path.exists() and not path.is_file():
            problem = "not a plain file"
        else:
            problem = None
        if problem:
            raise ValueError(
                f"--out {out} holds {name}, {problem}, where the toy writes its file of that "
                "name: remove or rename it, or choose another --out"
            )
        if path.exists():
            earlier.append(name)
    if earlier and not overwrite:
        raise ValueError(
            f"--out {out} already holds {', '.join(earlier)} from an earlier run: "
            "choose another --out or pass --overwrite to replace them"
        )
    if not earlier and out.is_dir() and any(out.iterdir()):  # another experiment's results?
        raise ValueError(
            f"--out {out} is not empty and holds no file of an earlier toy run: choose a new or "
            "empty folder"
        )


def _identity(path: Path) -> tuple | None:
    """What tells a file just written (atomically: a new inode) from the one that was there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def toy_interrupted(out: Path, before: dict[str, tuple | None], overwrite: bool) -> str:
    """What a Ctrl-C of the toy leaves in `out` (`before`: `_identity` of each output name at the
    start): the toy keeps its runs in memory only and does not resume, so either no file was
    written, or some of this run's files were (atomically, each whole) before the stop."""
    written = [name for name, was in before.items() if _identity(out / name) != was]
    missing = [name for name in before if name not in written]
    stale = [name for name in missing if before[name] is not None]
    if not written:
        kept = f" (it still holds the earlier run's {', '.join(stale)}, untouched)" if stale else ""
        return (
            f"no file written to --out {out}{kept}: the toy keeps its runs in memory only and "
            "does not resume; re-run the same command to start again from the first run"
        )
    lacks = f" but not its {', '.join(missing)}" if missing else ""
    mixed = (
        f" (the {', '.join(stale)} there is the earlier run's and does not match)" if stale else ""
    )
    again = "the same command" if overwrite else "the same command with --overwrite"
    return (
        f"stopped while writing: --out {out} holds this run's {', '.join(written)}{lacks}"
        f"{mixed}; the toy does not resume: re-run {again} to train and write them all again"
    )


def _run_toy(args) -> int:
    from pixeljit.experiments.toy import run_toy
    from pixeljit.experiments.toy_report import (
        measure,
        table_markdown,
        toy_output_names,
        write_outputs,
    )

    check_toy_flags(args)
    config = toy_config(args.quick, args.seed, args.steps, args.dims, args.threads)
    out = check_output("--out", args.out, folder=True, overwrite=True)  # a folder of results
    check_toy_outputs(out, args.overwrite)
    cells = len(config.dims) * len(config.predictions)
    print(
        f"pixeljit reproduce toy: {cells} runs (D ∈ {list(config.dims)} × "
        f"{list(config.predictions)}), {config.steps} steps each, seed {config.seed} → {out}"
    )
    start = time.perf_counter()
    before = {name: _identity(out / name) for name in toy_output_names()}
    try:
        result = run_toy(config, progress=lambda line: print("  " + line, flush=True))
        rows = measure(result)
        paths = write_outputs(result, out, rows)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(toy_interrupted(out, before, args.overwrite)) from None
    return print_outputs(table_markdown(rows), start, paths)


def _add_table2(experiments) -> None:
    p = experiments.add_parser(
        "table2",
        help="Tab. 2: nine prediction × loss pairs on emoji, bottlenecked vs not (CPU, ~1 h)",
        description=(
            "Train one small JiT per (setting, prediction, loss, seed) through the training "
            "engine, sample with Heun, score FD-EffNetLite0 and HF energy; writes table2.json, "
            "table2.md and table2_samples.png. Re-running with the same flags and --out resumes: "
            "finished cells are kept, unfinished ones continue from their checkpoint."
        ),
    )
    add_grid_flags(p, "table2", gpu=False)  # no GPU settings: --device cuda runs the CPU grid
    p.set_defaults(experiment=_run_table2)


def _run_table2(args) -> int:
    from pixeljit.experiments.table2 import CONFIG_NAME, Table2Config, run_table2
    from pixeljit.experiments.table2_report import table_markdown, write_outputs

    check_grid_flags(args)
    config = grid_config(
        Table2Config, args.quick, args.device, args.seeds, args.steps, {}, gpu=False
    )
    out = check_output("--out", args.out, folder=True, overwrite=True)
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        raise ValueError(
            f"--out {out} is not empty and holds no {CONFIG_NAME} of an earlier table2 run: "
            "choose a new or empty folder"
        )
    cells = len(config.settings) * len(config.seeds) * len(config.predictions) * len(config.losses)
    return run_and_report(
        args.threads,
        f"pixeljit reproduce table2: {cells} cells, {config.steps} steps each, seeds "
        f"{list(config.seeds)} → {out}",
        lambda progress: run_table2(
            config, out, progress=progress, jobs=args.jobs, reuse=args.reuse
        ),  # fmt: skip
        lambda report: (write_outputs(report, out), table_markdown(report)),
        out,
    )


EXPERIMENTS = {"toy": _add_toy, "table2": _add_table2, "nfe": _add_nfe}
EXPERIMENTS.update(GRID_EXPERIMENTS)  # resolution, bottleneck, noise (cli/reproduce_grid.py)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="re-run an experiment of the paper and write its figure and table"
    )
    experiments = p.add_subparsers(dest="experiment_name", metavar="EXPERIMENT")
    experiments.required = True
    for add in EXPERIMENTS.values():
        add(experiments)
    p.set_defaults(run=run)


def run(args) -> int:
    return int(args.experiment(args) or 0)
