"""A resume's branches: what a run folder holds past the resumed step is kept, not overwritten.

- `set_aside_newer`: resuming from a checkpoint at step s would overwrite (or mix with) what the
  folder holds past s: a newer (or unreadable) `latest.pt`, `step-N.pt` / `samples-N.png` with
  N > s, and `metrics.jsonl` records past s (with `loss.png`). Each is renamed
  `NAME.before-resume-<time>` first (metrics.jsonl is copied, since the resumed run cuts it).
- `revive_branch`: resuming from a checkpoint set aside that way brings its branch back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import time
from pathlib import Path

from pixeljit.checkpoints.run import same_file
from pixeljit.files.atomic import atomic_write, atomic_write_text
from pixeljit.training.rundir import (
    ASIDE_TIME_FORMAT,
    LATEST,
    MAX_ASIDE_ATTEMPTS,
    STEP_FILE_RE,
)
from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE

ASIDE_SUFFIX = ".before-resume-"
ASIDE_RE = re.compile(r"^(?P<name>.+)(?P<suffix>\.before-resume-[\d-]+)$")
# BRANCH_NOTE + suffix: the step the resume that set those files aside continued from, i.e.
# where their branch and the folder's later history part
BRANCH_NOTE = "branch.json"


def set_aside_newer(folder: str | os.PathLike, resumed: str | os.PathLike, step: int) -> list[Path]:
    """Before resuming `folder` from `resumed` (a checkpoint at `step`), keep everything of the
    folder's later history under `NAME.before-resume-<time>` (one stamp for all; returned): a
    latest.pt other than `resumed`, milestones and sample grids past `step`, and (copied)
    metrics.jsonl with loss.png when metrics.jsonl holds records past `step`. Nothing is lost."""
    folder, resumed = Path(folder), Path(resumed)
    moves: list[Path] = []
    latest = folder / LATEST
    if latest.exists() and not same_file(latest, resumed):  # a milestone at latest's step
        moves.append(latest)
    for path in sorted(folder.iterdir()):
        match = STEP_FILE_RE.match(path.name)
        if match and int(match.group(1) or match.group(2)) > step:
            moves.append(path)
    metrics = folder / METRICS_FILE
    copies = [metrics] if _has_records_after(metrics, step) else []
    if copies and (folder / LOSS_PLOT).is_file():
        moves.append(folder / LOSS_PLOT)
    if not moves and not copies:
        return []
    suffix = _free_suffix(folder, [p.name for p in moves + copies] + [BRANCH_NOTE])
    note = {"branched_at": step, "resumed_from": resumed.name}
    atomic_write_text(folder / (BRANCH_NOTE + suffix), json.dumps(note) + "\n")
    kept = []
    for path in copies:
        target = folder / (path.name + suffix)
        atomic_write(target, lambda tmp, src=path: shutil.copyfile(src, tmp))
        kept.append(target)
    for path in moves:
        target = folder / (path.name + suffix)
        os.rename(path, target)
        kept.append(target)
    return kept


def aside_suffix(path: str | os.PathLike) -> str | None:
    """'.before-resume-<time>' of a file an earlier resume set aside; None for any other."""
    match = ASIDE_RE.match(Path(path).name)
    return match.group("suffix") if match else None


def revive_branch(folder: str | os.PathLike, resumed: str | os.PathLike, step: int):
    """Resume from `resumed`, a checkpoint (at `step`) that an earlier resume set aside: its
    branch parted from the folder's history at the step its branch note records. The folder's
    own files past that step are set aside in turn (`set_aside_newer`), and the branch's grids,
    milestones and metrics records up to `step` come back into place, so the folder holds one
    history. Returns (branch step, what was set aside). A branch without its note (set aside by
    an older pixeljit) is refused before anything moves: where it parts is unknown."""
    folder, resumed = Path(folder), Path(resumed)
    suffix = aside_suffix(resumed)
    note = folder / (BRANCH_NOTE + str(suffix))
    try:
        start = json.loads(note.read_text())["branched_at"]
    except (OSError, ValueError, KeyError, TypeError):
        start = None
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= step:
        fresh = shlex.quote(str(folder.with_name(folder.name + "-branch")))
        raise ValueError(
            f"{resumed.name} was set aside by an earlier resume, and {note.name} does not say "
            f"where its branch parted from this folder's history (an older pixeljit did not "
            f"write it), so resuming it here would mix the two: continue it in a folder of its "
            f"own: `mkdir {fresh} && cp {shlex.quote(str(resumed))} {fresh}/{LATEST} && "
            f"pixeljit train --resume {fresh}`"
        )
    kept = set_aside_newer(folder, resumed, start)
    for path in sorted(folder.iterdir()):  # the branch's grids and milestones up to `step`
        match = ASIDE_RE.match(path.name)
        if not match or match.group("suffix") != suffix or path.resolve() == resumed.resolve():
            continue
        name = STEP_FILE_RE.match(match.group("name"))
        if name and int(name.group(1) or name.group(2)) <= step:
            if not (folder / match.group("name")).exists():
                os.rename(path, folder / match.group("name"))
    branch_metrics = folder / (METRICS_FILE + suffix)
    if branch_metrics.is_file():
        ours = [line for line in _lines(folder / METRICS_FILE) if _step_of(line) <= start]
        theirs = [line for line in _lines(branch_metrics) if start < _step_of(line) <= step]
        atomic_write_text(folder / METRICS_FILE, "".join(line + "\n" for line in ours + theirs))
    return start, kept


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _step_of(line: str) -> float:
    """A metrics record's step (0 when it has none); a line that is not a record with a numeric
    step counts as past every step."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    step = record.get("step", 0) if isinstance(record, dict) else None
    numeric = isinstance(step, (int, float)) and not isinstance(step, bool)
    return step if numeric else math.inf


def _has_records_after(metrics: Path, step: int) -> bool:
    """Records past `step`, or a line that cannot be read (the file is then kept as it was)."""
    return any(_step_of(line) > step for line in _lines(metrics))


def _free_suffix(folder: Path, names: list[str]) -> str:
    stamp = time.strftime(ASIDE_TIME_FORMAT)
    for k in range(MAX_ASIDE_ATTEMPTS):
        suffix = f"{ASIDE_SUFFIX}{stamp}" + (f"-{k}" if k else "")
        if not any((folder / (name + suffix)).exists() for name in names):
            return suffix
    raise RuntimeError(f"could not find a free name to keep {names[0]} under in {folder}")
