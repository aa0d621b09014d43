"""`pixeljit train`: the training command (its flags are a stable contract for scripts).

pixeljit train --preset P --data D --out DIR [--steps N | --epochs E] [--batch-size B]
               [--seed S] [--resume PATH] [--restart] [--allow-inexact-resume]
               [--config FILE] [--set key=value ...]

Precedence: preset, then the YAML file, then the flags, then --set. With --resume and no
--preset, the run continues with the checkpoint's own saved config. A resumed run continues in
the folder --resume names (never in the `run.out` saved inside the checkpoint).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from pixeljit.training.config_io import (
    apply_layer,
    from_dict,
    load_yaml,
    missing_fields,
    parse_set,
)
from pixeljit.training.config_rules import check_effects, flatten
from pixeljit.training.presets import get_preset, presets
from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a JiT (single process, or under torchrun)")
    p.add_argument("--preset", help=f"one of: {', '.join(sorted(presets()))}")
    p.add_argument("--data", help="packed folder, fashion-mnist, emoji, or an image folder")
    p.add_argument("--out", help="run folder (checkpoints, metrics, samples; default: the "
                   "preset's run.out, e.g. runs/fmnist)")  # fmt: skip
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps to train in total")
    length.add_argument("--epochs", type=float, help="epochs to train in total")
    p.add_argument("--batch-size", type=int, help="global batch size (all devices together)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", help="run folder or checkpoint file to continue from, in its folder")
    p.add_argument("--restart", action="store_true",
                   help="the --out folder holds a run: move its files aside to a new sibling "
                        "DIR.old-<time> (nothing is deleted) and start fresh")  # fmt: skip
    p.add_argument("--allow-inexact-resume", action="store_true",
                   help="resume although run.compile, the precision, device type, world "
                        "size, micro-batch, strategy or the data changed (not bit-exact; a "
                        "changed run.seed or recipe is always refused)")  # fmt: skip
    p.add_argument(
        "--config",
        help="YAML file of overrides {section: {field: value}} over the "
        "preset (a run's whole config.yaml needs no preset); the flags (--steps, "
        "--batch-size, …) and --set override it",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set optim.lr=1e-4 (repeatable)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


# the config field each flag sets (an error about that field names the flag typed)
FLAG_FIELDS = {"--data": "data.source", "--out": "run.out", "--steps": "optim.steps",
               "--epochs": "optim.epochs", "--batch-size": "optim.global_batch",
               "--seed": "run.seed"}  # fmt: skip


def check_length_flags(steps: int | None, batch_size: int | None, epochs: float | None) -> None:
    """Errors name the flag typed (not the config field it sets)."""
    import math

    from pixeljit.training.config import MAX_OPTIM_STEPS

    for flag, value in (("--steps", steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be ≥ 1, got {value}")
    if steps is not None and steps > MAX_OPTIM_STEPS:
        raise ValueError(f"--steps must be ≤ {MAX_OPTIM_STEPS}, got {steps}")
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"--epochs must be a finite number > 0, got {epochs}")
    if epochs is not None and epochs > MAX_OPTIM_STEPS:  # each epoch is at least one step
        raise ValueError(f"--epochs must be ≤ {MAX_OPTIM_STEPS} (each epoch is at least one "
                         f"step), got {epochs:g}")  # fmt: skip


def check_seed_flag(seed: int | None) -> None:
    from pixeljit.training.config import MAX_SEED

    if seed is not None and not 0 <= seed < MAX_SEED:
        raise ValueError(f"--seed must lie in [0, 2**63), got {seed}")


def _set_flags(cfg, flags: dict):
    """The fields the flags set, applied as given; an error about one names the flag."""
    from pixeljit.training.config_io import set_fields

    try:
        return set_fields(cfg, flags)
    except ValueError as err:
        message = str(err)
        for flag, key in FLAG_FIELDS.items():
            if key in flags and message.startswith(f"{key} "):
                message = flag + message[len(key) :]
                break
        raise ValueError(message) from None


def build_config(args):
    """The TrainConfig the flags describe (no Namespace goes further than this)."""
    check_length_flags(args.steps, args.batch_size, args.epochs)
    check_seed_flag(args.seed)
    if args.allow_inexact_resume and not args.resume:
        raise ValueError("--allow-inexact-resume has no effect without --resume: drop it")
    if args.preset and args.resume:
        raise ValueError(
            f"--preset {args.preset} starts from the preset's config, not from the run's saved "
            "one, whose recipe, logistics and data source a resumed run keeps: drop --preset "
            "to continue the run with its own config (change its length with --steps / "
            "--epochs, its logistics with --set)"
        )
    from_file = load_yaml(args.config) if args.config else {}
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.resume:
        from pixeljit.checkpoints.run import load_checkpoint, run_folder
        from pixeljit.launch import launch_rank
        from pixeljit.training.rundir import ensure_not_in_use

        # "in use" before "holds no checkpoint"; rank 0 only: ranks each taking the lock at
        # the same moment refused one another as "in use by another process"
        if launch_rank() == 0:
            ensure_not_in_use(run_folder(args.resume))
        from pixeljit.training.resume import with_added_fields

        saved = load_checkpoint(args.resume, tensors=False)["config"]  # the run loads it again
        cfg = from_dict(with_added_fields(saved))  # a field added since: what that code did
    elif args.config:  # a whole config (a run's config.yaml) stands alone
        cfg = _whole_config(args.config, from_file)
    else:
        raise ValueError(
            "pass --preset (or --resume to continue a run with its saved config, or --config "
            "with a run's whole config.yaml)"
        )
    asked: dict[str, str] = {}  # field → where the user asked for it (checked once all apply)
    if args.config:
        where = f"--config {args.config}"
        cfg, changed = apply_layer(cfg, from_file, where, label=where)
        asked.update(dict.fromkeys(changed, where))
    flags = {}
    if args.data is not None:
        flags["data.source"] = args.data
    if args.out is not None:
        flags["run.out"] = args.out
    elif args.resume:  # continue where the user pointed, not where the checkpoint was written
        from pixeljit.checkpoints.run import find_checkpoint

        flags["run.out"] = str(find_checkpoint(args.resume).parent)
        if "run.out" in flatten(from_file):  # refused as --out and --set run.out are
            _check_file_out(args.config, args.resume, cfg.run.out, flags["run.out"])
    if args.steps is not None:  # the length is steps alone: a preset's or file's epochs go
        flags.update({"optim.steps": args.steps, "optim.epochs": None})
    if args.epochs is not None:
        flags.update({"optim.epochs": args.epochs, "optim.steps": None})
    if args.batch_size is not None:
        flags["optim.global_batch"] = args.batch_size
    if args.seed is not None:
        flags["run.seed"] = args.seed
    cfg = _set_flags(cfg, flags)
    settings = parse_set(args.set)  # dotted fields: 'optim={steps: 9}' is optim.steps
    # the field each flag given sets: a --set of the same field would silently win over it
    given = {"data.source": ("--data", args.data), "run.out": ("--out", args.out),
             "optim.steps": ("--steps", args.steps),
             "optim.global_batch": ("--batch-size", args.batch_size),
             "run.seed": ("--seed", args.seed)}  # fmt: skip
    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs)):
        if value is not None:  # each sets the run's length: both fields are the flag's
            given["optim.epochs"] = given["optim.steps"] = (flag, value)
    for key, (flag, value) in given.items():
        if value is not None and key in settings:
            from pixeljit.training.resume import LENGTH_FIELDS

            length = {f"optim.{name}" for name in LENGTH_FIELDS}  # either sets the length
            sets = "set the run's length" if key in length else f"set {key}"
            raise ValueError(f"--set {key}={settings[key]} and {flag} {value} both {sets}: "
                             "pass one of them")  # fmt: skip
    cfg, changed = apply_layer(cfg, settings, "--set")
    asked.update(dict.fromkeys(changed, "--set"))
    check_effects(asked, cfg)
    return cfg


def _whole_config(path: str, data: dict):
    """The config a --config file given without --preset holds: it must be whole (every field
    of every section, as a run's config.yaml is), or a preset must fill the rest. A field added
    since an older pixeljit wrote the file takes the value that does what that version did."""
    from pixeljit.training.resume import with_added_fields

    data = with_added_fields(data)
    lacking = missing_fields(data)
    if lacking:
        shown_ = ", ".join(lacking[:4]) + (
            f" and {len(lacking) - 4} more" if len(lacking) > 4 else ""
        )
        raise ValueError(
            f"--config {path} sets some fields of the config, not all (it lacks {shown_}): "
            "pass --preset P to fill the rest (a run's config.yaml, whole, needs none)"
        )
    try:
        return from_dict(data)
    except ValueError as err:
        raise ValueError(f"--config {path}: {err}") from None


def _check_file_out(config: str, resume: str, out: str, folder: str) -> None:
    """A --config file's run.out (`out`) is refused on --resume unless it is the run's own
    `folder`, where the run continues, instead of being replaced by that folder without a word."""
    if Path(out).resolve() != Path(folder).resolve():
        raise ValueError(
            f"--config {config} sets run.out {out}, but --resume {resume} continues in its own "
            f"folder {folder}: drop run.out from the file or set it to {folder} (to branch a "
            "run, copy its folder and resume the copy)"
        )


def _kept(out: str) -> str:
    """What a stopped multi-rank run keeps in `out`: its last checkpoint and the command that
    continues it, or that there is nothing to resume."""
    from pixeljit.checkpoints.run import checkpoint_step, find_checkpoint, resume_hint
    from pixeljit.training.rundir import holds_checkpoint

    if not holds_checkpoint(Path(out)):
        return f"{out} holds nothing to resume (the run stopped before its first checkpoint)"
    try:
        file = find_checkpoint(out)
    except (OSError, ValueError):  # no file to name: the folder is resumed all the same
        file, step = Path(out), None
    else:
        step = checkpoint_step(file)
    at = f" (step {step:,})" if step is not None else ""
    return f"the last checkpoint {file}{at} is kept: continue with {resume_hint(out)}"


def rank_lost_message(out: str, err: BaseException) -> str:
    """What a rank says when a collective failed because another rank stopped: the checkpoint
    the run keeps and the command that continues it (as a Ctrl-C's message says), then the
    collective's own error `err`, so a failure of another kind is not hidden."""
    from pixeljit.cli import error_line

    return (
        "another rank stopped (torchrun's report names it), so a collective failed on this "
        f"rank; {_kept(out)} (the collective's error: {error_line(err)})"
    )


def terminated_message(out: str) -> str:
    """What rank 0 of a torchrun run says as a SIGTERM ends it: torchrun sends one to every
    rank once any rank has ended (killed, out of memory), and a scheduler's stop comes the same
    way. No step boundary is waited for under torchrun (`stopsignal`), so the steps since the
    last checkpoint are lost."""
    return (
        "stopped by SIGTERM (torchrun stops every rank once one has ended: its report names "
        f"it; a scheduler's stop comes the same way); {_kept(out)}; the steps after it are lost"
    )


@contextlib.contextmanager
def _said_on_sigterm(out: str):
    """Under torchrun, rank 0 says `terminated_message` before a SIGTERM ends it (it ended it
    without a word: torchrun stops the survivors of a lost rank before their collective fails,
    so they never said where the run stands). The signal still ends the process, as before."""
    from pixeljit.cli import rank_tag, write_stderr
    from pixeljit.launch import launch_or_none
    from pixeljit.training import stopsignal

    launch = launch_or_none()
    if (
        launch is None
        or launch[1] == 1
        or launch[0] != 0
        or not stopsignal.can_listen()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def last_words(signum: int, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends it at once
        try:
            write_stderr(f"pixeljit train{rank_tag()}: {terminated_message(out)}\n")
        finally:
            signal.raise_signal(signum)

    previous = stopsignal.install(last_words, (signal.SIGTERM,))
    try:
        yield
    finally:
        stopsignal.restore(previous)


def run(args) -> int:
    from pixeljit.checkpoints.run import resume_hint
    from pixeljit.cli.checks import counted, interrupted_detail
    from pixeljit.training.diskfull import is_disk_full, no_space_message
    from pixeljit.training.loop import train
    from pixeljit.training.runlog import TENSORBOARD_OFF

    cfg = build_config(args)
    try:
        with _said_on_sigterm(cfg.run.out):
            result = train(
                cfg,
                resume=args.resume,
                progress=not args.no_progress,
                restart=args.restart,
                allow_inexact_resume=args.allow_inexact_resume,
            )
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the run listens for it)
        raise KeyboardInterrupt(interrupted_detail(cfg.run.out, resume_hint(cfg.run.out))) from None
    except RuntimeError as err:  # another rank gone (killed, out of memory): a collective fails
        from pixeljit.training.distributed import collective_failed

        if not collective_failed(err):
            raise
        raise RuntimeError(rank_lost_message(cfg.run.out, err)) from err
    except OSError as err:  # a full disk while writing the log, a grid or the plot
        if not is_disk_full(err):
            raise
        off = f"--set {TENSORBOARD_OFF}"
        raise RuntimeError(no_space_message(err, cfg.run.out, tensorboard_off=off)) from err
    if result.stopped_by_signal is not None:  # Ctrl-C / SIGTERM, after a checkpoint
        if result.is_main:  # once, not once per rank
            print(f"continue with {resume_hint(result.out)}")
        return SIGNAL_EXIT_BASE + result.stopped_by_signal
    if result.stopped_on_nan:
        return 1
    if result.is_main:
        steps = counted(result.step, "step")
        print(f"done: {steps}; run folder {result.out}; checkpoint {result.checkpoint}")
    return 0
