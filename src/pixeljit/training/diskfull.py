"""What a run stopped by a full disk tells its user: the file it could not write, the fix, and the
command that goes on (the run's last checkpoint resumed, or the run started again), worded for
the verb that was run (`pixeljit train`, `pixeljit demo`).

A checkpoint that did not fit raises `checkpoints.run.CheckpointSpaceError` (its own message);
every other write of a run (the metrics log, a sample grid, the loss plot, TensorBoard's events
file, the run lock, config.yaml) raises an OSError with ENOSPC, turned into one line here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pixeljit.checkpoints.run import way_on
from pixeljit.files.atomic import NO_SPACE
from pixeljit.training.rundir import run_files
from pixeljit.training.runlog import TENSORBOARD_FOLDER


def is_disk_full(err: BaseException) -> bool:
    """An OSError of a full disk or an exceeded quota."""
    return isinstance(err, OSError) and err.errno in NO_SPACE


def no_space_message(
    err: OSError,
    out: str | os.PathLike,
    resume: str | None = None,
    restart: str | None = None,
    tensorboard_off: str | None = None,
) -> str:
    """One line for `err` (a full disk) while a run wrote into `out`: the file, the fix (with
    `tensorboard_off`, how this verb turns TensorBoard off, when it was TensorBoard's events
    file), then `checkpoints.run.way_on` with the verb's `resume` / `restart` commands; or, when
    `out` holds no file of the run yet, that the same command is run again."""
    where = Path(err.filename) if err.filename else Path(out)
    fix = "free some space"
    if tensorboard_off and Path(out) / TENSORBOARD_FOLDER in (where, where.parent):
        fix += f" or turn TensorBoard's log off ({tensorboard_off})"
    head = f"no space left on the device writing {where}; {fix}"
    if not run_files(out):  # stopped before the run wrote anything: a fresh start again
        return f"{head}, then run the same command again (no file of the run is left in {out})"
    return f"{head}; {way_on(out, resume, restart)}"
