"""Run-folder safety: one writer per run folder, a fresh run never lands on an old one, and
leftovers of killed writes are swept.

- `RunLock`: `fcntl.flock` on `DIR/.lock`, held by rank 0 for the whole run. The OS drops the
  lock when the process ends however it ends, so a crash never leaves a folder stuck; a second
  `pixeljit train` on the folder gets an error naming the folder and the holder's PID.
- `prepare_fresh`: a fresh run (no `--resume`) refuses a folder that already holds a run's files;
  with `restart` it moves exactly those files into a new sibling `DIR.old-<time>` (nothing is
  deleted) and starts in the emptied folder. Files that are not a run's stay where they are.
- A resume keeps the folder's later history aside: `training.branches`.
- `sweep_temporaries`: removes the hidden siblings our atomic writes leave when killed
  (`.NAME.tmp-PID-TOKEN`, `pixeljit.files.atomic.temp_sibling`) whose writer is no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shlex
import time
from pathlib import Path

from pixeljit.checkpoints.config_diff import config_changes
from pixeljit.checkpoints.hub_card import RUN_SCORES_FILES
from pixeljit.checkpoints.run import resume_hint
from pixeljit.files.atomic import NO_SPACE, process_alive
from pixeljit.training.config_io import load_yaml, yaml_text
from pixeljit.training.outdir import check_out_usable
from pixeljit.training.resume import PLACE_FIELDS, with_added_fields
from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE

LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"  # the run's resolved config, written at every start
MAX_NAMED_EDITS = 6  # edits of config.yaml a refused resume names
# What a run writes into its folder (see README "### Training"); anything else is not ours.
# and the scores of its weights (the demo's score.json, `eval --out RUN/eval.json` as the README
# shows, the files a model card reads): they describe that run, so --restart moves them aside
RUN_FILE_NAMES = ("latest.pt", CONFIG_FILE, METRICS_FILE, LOSS_PLOT, "tensorboard",
                  *RUN_SCORES_FILES)  # fmt: skip
RUN_FILE_RE = re.compile(
    r"^(step-\d{9}\.pt|samples-\d{7}\.png"
    r"|(step-\d{9}\.pt|samples-\d{7}\.png|latest\.pt|metrics\.jsonl|loss\.png|branch\.json)"
    r"\.before-resume-[\d-]+)$"
)
STEP_FILE_RE = re.compile(r"^(?:step-(\d{9})\.pt|samples-(\d{7})\.png)$")
LATEST = "latest.pt"
# `temp_sibling(path)` = f".{path.name}.tmp-{pid}-{8 hex}"
TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
ASIDE_TIME_FORMAT = "%Y%m%d-%H%M%S"
MAX_ASIDE_ATTEMPTS = 100


class RunLock:
    """An exclusive, non-blocking lock on a run folder (create the folder if needed). What the
    lock created it removes on release: its `.lock` file, and the folder if nothing else is in it
    (a run refused or failed before writing leaves no trace)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fd: int | None = None
        self._made_folder = self._made_file = False

    def acquire(self) -> RunLock:
        check_out_usable(self.folder, write=False)  # a file, a link leading nowhere
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        for _ in range(MAX_ASIDE_ATTEMPTS):
            made = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_pid(path)
                raise RuntimeError(
                    f"run folder {self.folder} is in use by another process (PID {holder}); wait "
                    "for it to finish or stop it, or train into another folder"
                ) from None
            if _same_file(fd, path):  # not a lock file its last holder has just removed
                break
            os.close(fd)
        else:
            raise RuntimeError(f"could not lock {path}: it keeps being replaced")
        self._fd, self._made_file = fd, made
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:  # a full disk: what the lock made goes, the file is named
            self.release()
            fix = "free some space and run the command again" if err.errno in NO_SPACE else (
                "run the command again once the folder can be written")  # fmt: skip
            raise OSError(err.errno, f"{err.strerror or err} writing the run lock's PID ({fix})",
                          str(path)) from None  # fmt: skip
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self._made_file:  # removed while still held: no one can lock it in between
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self._made_folder:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def ensure_not_in_use(folder: str | os.PathLike) -> None:
    """Raise the lock's 'in use' error if another process holds an existing `folder`."""
    if Path(folder).is_dir():
        with RunLock(folder):
            pass


def _read_pid(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files (and the TensorBoard folder) of a training run inside `folder`, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name in RUN_FILE_NAMES or RUN_FILE_RE.match(p.name)
    )


def holds_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a run's checkpoint (latest.pt or a milestone): the mark of a run
    folder. Names alone that other tools use too (config.yaml, a `.lock` such as pytest's) are
    not enough."""
    if (folder / LATEST).is_file():
        return True
    try:
        return any(STEP_FILE_RE.match(p.name) and p.suffix == ".pt" for p in folder.iterdir())
    except OSError:  # unreadable: not ours to judge
        return False


def prepare_fresh(
    folder: str | os.PathLike, restart: bool, config: dict | None = None
) -> Path | None:
    """Make `folder` ready for a fresh run. Refuses one holding a run's files unless `restart`,
    which moves them into a new sibling folder (returned). Call while holding the `RunLock`.
    A lone config.yaml reading exactly as this run's `config` would (the same run stopped
    before it logged anything: nothing to lose) is started over; with `config` None (not yet
    resolved) a lone config.yaml is left for the call that knows it."""
    folder = Path(folder)
    found = run_files(folder)
    if not found:
        return None
    if not restart:
        shown = ", ".join(p.name for p in found[:4]) + (" …" if len(found) > 4 else "")
        aside = f"to a new sibling {folder.name}.old-<time> and start fresh (nothing is deleted)"
        again = "pass --restart (Python: restart=True)"  # train() is called from Python too
        if found == [folder / CONFIG_FILE]:  # a run stopped before its first log line
            differs = None if config is None else _other_config(found[0], config)
            if differs is None:
                return None
            raise ValueError(f"{folder} holds the {CONFIG_FILE} of a training run that saved "
                             f"no checkpoint (it stopped before it logged a step), with other "
                             f"settings ({differs}): "
                             f"{again} to move it aside {aside}, or train into another folder "
                             f"(the same settings start over)")  # fmt: skip
        if not holds_checkpoint(folder):  # a run that stopped before its first checkpoint
            raise ValueError(f"{folder} holds files of a training run that saved no checkpoint "
                             f"({shown}), so there is nothing to resume: {again} to move them "
                             f"aside {aside}, or train into another folder")  # fmt: skip
        raise ValueError(f"{folder} already holds a training run ({shown}); continue it with "
                         f"{resume_hint(folder)} (Python: resume={str(folder)!r}), or {again} "
                         f"to move it aside {aside}")  # fmt: skip
    aside = _new_sibling(folder)
    for path in found:
        os.rename(path, aside / path.name)
    return aside


def _other_config(path: Path, config: dict) -> str | None:
    """None when `path` reads exactly as `config` would be written; else how it differs."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"it cannot be read: {err}"
    if text == yaml_text(config):
        return None
    try:
        written = load_yaml(path)
    except ValueError as err:
        return f"it cannot be read: {err}"
    changes = config_changes(written, config)
    named = [f"{name} {a!r} there, {b!r} now" for name, a, b in changes[:MAX_NAMED_EDITS]]
    more = len(changes) - len(named)
    return "; ".join(named) + (f" and {more} more" if more else "") or "written otherwise"


def _new_sibling(folder: Path) -> Path:
    """Create and return an unused `DIR.old-<time>[-k]` beside `folder` (mkdir claims it)."""
    stamp = time.strftime(ASIDE_TIME_FORMAT)
    for k in range(MAX_ASIDE_ATTEMPTS):
        candidate = folder.with_name(f"{folder.name}.old-{stamp}" + (f"-{k}" if k else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not find a free name {folder.name}.old-{stamp}-N beside {folder}")


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove our atomic-write temporaries in `folder` whose writing process is gone; returns
    what was removed. Other files, and temporaries of a live process, are left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = TEMP_RE.match(path.name)
        if match is None or not path.is_file() or process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_out_folder(out: str | os.PathLike, data_source: str | None) -> None:
    """Refuse an output folder that is, lies inside, or contains the training data folder, or
    lies inside another run's folder (symbolic links resolved), or cannot be made or written
    (`check_out_usable`). Call before creating `out`."""
    check_out_usable(out)
    out_path = Path(out).resolve()
    if data_source and Path(data_source).exists():
        data = Path(data_source).resolve()
        relation = None
        if out_path == data:
            relation = "is"
        elif data in out_path.parents:
            relation = "lies inside"
        elif out_path in data.parents:
            relation = "contains"
        if relation is not None:
            raise ValueError(
                f"--out {out} {relation} the training data folder {data_source} (--data); a run "
                "writes checkpoints and images there: pass an --out outside the data folder"
            )
    for parent in out_path.parents:
        if holds_checkpoint(parent):
            raise ValueError(
                f"--out {out} lies inside the run folder {parent} (it holds a training run); "
                "pass an --out outside any run folder"
            )


def check_config_file(folder: Path, saved: dict | None, config: dict) -> None:
    """A resume reads the checkpoint's config, not the folder's config.yaml, and rewrites that
    file: one edited since it was written (it differs from both) would be ignored and lost, so
    it is refused, naming the edits and the two ways on. Only a resume of the folder's own
    latest.pt is judged: an older milestone or a set-aside branch had its own config. A field
    a newer pixeljit added (`resume.ADDED_FIELDS`), absent from an older run's file and
    checkpoint alike, is filled in on both sides: no edit."""
    path = folder / CONFIG_FILE
    if saved is None or not path.is_file():
        return
    if Path(saved["path"]).resolve() != (folder / LATEST).resolve():
        return
    try:  # a field added since the file was written is filled in as in the checkpoint
        written = with_added_fields(load_yaml(path))
    except (ValueError, OSError) as err:
        problem = f"cannot be read ({err})"
    else:
        edits = [(name, a, b) for name, a, b in
                 config_changes(with_added_fields(saved["config"]), written)
                 if name not in PLACE_FIELDS]  # fmt: skip
        unapplied = {name for name, _, _ in config_changes(config, written)}
        if not unapplied.intersection(name for name, _, _ in edits):
            return  # the file is as saved, or the resume applies each of its edits (--config)
        named = [f"{name} {a!r} in the checkpoint, {b!r} in the file"
                 for name, a, b in edits[:MAX_NAMED_EDITS]]  # fmt: skip
        more = len(edits) - len(named)
        problem = (f"differs from the checkpoint's config ({'; '.join(named)}"
                   f"{f' and {more} more' if more else ''})")  # fmt: skip
    raise ValueError(
        f"{path} {problem}: --resume continues with the config saved in the checkpoint and "
        f"rewrites that file. Pass --config {shlex.quote(str(path))} to apply the file's "
        "settings (the recipe cannot change on a resume; the length and logistics can), or move "
        "the file away to continue as saved"
    )
