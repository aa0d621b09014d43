"""Files written into a hidden staging folder inside their destination folder, then moved in by
renames that a kill cannot leave half done (an image set: `image_set`; a hub export written over
an earlier one: `checkpoints.hub_write`).

A commit first writes a journal into the staging folder (atomically: whole or absent) listing its
steps in order (files to move in, files of the folder to remove); then does them, SIGINT and
SIGTERM held (`held_signals`); then removes the journal and the staging folder. A process killed
(SIGKILL, a power cut) after the journal was written leaves a staging folder of a
dead process holding it: the rest of a whole new set, which `finish_interrupted` moves in (rolls
forward), wherever the folder is next written or read. One killed before leaves no journal:
nothing was moved, and its staging folder is only removed (`sweep_unfinished`). A live process's
staging folder is never touched.

Whether a staging folder's writer is gone is judged by its PID, which means something only on
the machine (and in the PID namespace) that wrote it: a folder on a shared file system written
from another host, or from a container, holds a PID that looks dead here while its writer runs
on. So a staging folder's name ends in `@MACHINE` (`machine_tag`: the host name and the PID
namespace), and one of another machine is never swept nor finished here (a reader is told a
write may be in progress); names without it (older pixeljit, or a pattern with no `host`
group) are judged by their PID, as before. Torch-free: the command line imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pixeljit.files.atomic import (
    atomic_write_text,
    process_alive,
    sweep_dead_staging,
    sync_file,
    temp_sibling,
)

try:
    import fcntl
except ImportError:  # Windows: finishers in several processes at once are not serialised
    fcntl = None

JOURNAL = ".commit-journal"  # hidden, and a name no writer stages
JOURNAL_FORMAT = "pixeljit.commit/1"
# the journal's own atomic-write temporary, left if a kill came while it was written
_JOURNAL_TEMP = rf"{re.escape(JOURNAL)}\.tmp-\d+-[0-9a-f]+"
MAX_JOURNAL_BYTES = 1 << 26  # a name a line: millions of files fit
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # held while the staged files are renamed in
MOVE, REMOVE = "move", "remove"  # a commit's steps: (MOVE, name), (REMOVE, name)
Step = tuple[str, str]
MACHINE_SEP = "@"  # NAME.staging-PID-TOKEN@MACHINE
# ends a staging folder's name pattern: the `host` group `writer` reads (absent in older names)
MACHINE_GROUP = rf"(?:{MACHINE_SEP}(?P<host>[A-Za-z0-9._+-]+))?"
_MAX_HOST_CHARS = 64


def machine_tag() -> str:
    """This machine as a staging folder's name gives it: the host name (other characters made
    '_', at most 64 of them) and, where Linux says it, the PID namespace ('+4026531836'),
    since a container's PIDs are not the host's."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:_MAX_HOST_CHARS] or "host"
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:  # not Linux, or /proc not mounted
        namespace = ""
    return f"{host}+{namespace}" if namespace else host


def staging_path(path: Path, tag: str) -> Path:
    """A new staging folder's name beside `path`: `.NAME.TAG-PID-TOKEN@MACHINE`."""
    return Path(f"{temp_sibling(path, tag)}{MACHINE_SEP}{machine_tag()}")


def writer(match: re.Match) -> tuple[int, str | None]:
    """(PID, machine) of a staging folder's writer from its name's match: the machine is None
    for this one (or a name that gives none), the tag of another."""
    host = match.groupdict().get("host")
    return int(match.group(1)), None if host in (None, machine_tag()) else host


def writer_gone(match: re.Match) -> bool:
    """Whether a staging folder's writer has provably ended: a process of this machine whose PID
    runs no more. One of another machine is never known to be gone (its PID means nothing
    here)."""
    pid, host = writer(match)
    return host is None and not process_alive(pid)


class MoveFailed(OSError):
    """Step `step` of the commit failed after `done` of `total` files were moved in (`cause`:
    the operating system's error): the folder holds a mix of the new files and the earlier ones
    (unless `step` is 0: nothing was changed)."""

    def __init__(self, cause: OSError, done: int, total: int, step: int):
        super().__init__(cause.errno, cause.strerror or str(cause), cause.filename)
        self.cause, self.done, self.total, self.step = cause, done, total, step


class WrittenThenStopped(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM: `signum`) held while staged files were renamed into place, raised
    once they were: the folders hold the whole new set."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class Interrupted:
    """A commit a killed process left: its staging folder `staging` (inside `folder`), the
    `moved` files (of `total`) still there when it was finished."""

    folder: Path
    staging: Path
    moved: int
    total: int


def moves(names: Sequence[str]) -> list[Step]:
    """The steps moving `names` in, in order."""
    return [(MOVE, name) for name in names]


def commit(staging: Path, folder: Path, steps: Sequence[Step]) -> None:
    """Do `steps` in order: (MOVE, name) renames `staging`/name into `folder` (replacing a file of
    that name), (REMOVE, name) removes `folder`/name (a missing one is fine); then remove the
    staging folder. Recoverable (`finish_interrupted`) from a kill at any point once the journal
    is written. An OSError writing the journal: nothing was done; `MoveFailed`: some steps were.
    Signals are the caller's to hold (`held_signals`), around all of its folders' commits."""
    for op, name in steps:  # staged without a sync each: on disk before the journal relies on them
        if op == MOVE:
            sync_file(staging / name)
    journal = {"format": JOURNAL_FORMAT, "steps": [list(step) for step in steps]}
    atomic_write_text(staging / JOURNAL, json.dumps(journal))  # synced before the first step
    _apply(staging, folder, steps, 0)
    sync_file(folder)  # the renames reach the disk before the staging folder goes
    close(staging)


def _apply(staging: Path, folder: Path, steps: Sequence[Step], start: int) -> None:
    """`steps` from `start` on (see `commit`)."""
    total = sum(op == MOVE for op, _ in steps)
    done = sum(op == MOVE for op, _ in steps[:start])
    for step, (op, name) in enumerate(steps[start:], start):
        try:
            if op == MOVE:
                os.replace(staging / name, folder / name)
                done += 1
            else:
                (folder / name).unlink(missing_ok=True)
        except OSError as err:
            raise MoveFailed(err, done, total, step) from err


def _resume_from(staging: Path, steps: Sequence[Step]) -> int:
    """Where a killed commit stopped: after its last move whose file has left `staging` (the
    steps run in order, so every one before it was done)."""
    moved = [i for i, (op, name) in enumerate(steps)
             if op == MOVE and not os.path.lexists(staging / name)]  # fmt: skip
    return moved[-1] + 1 if moved else 0


def close(staging: Path) -> None:
    """Remove the journal (the commit is done), then the staging folder."""
    with contextlib.suppress(FileNotFoundError):
        (staging / JOURNAL).unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _journaled(folder: Path, staging_name: re.Pattern, alive: bool) -> list[Path]:
    """The staging folders in `folder` (real folders, named as `staging_name` says: group 1 the
    writer's PID, an optional group `host` its machine) holding a journal, of dead processes
    (or, `alive`, of other live ones, and of other machines': `writer_gone`)."""
    found = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # no folder, or unreadable: the reader says so itself
        return found
    for path in entries:
        match = staging_name.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        pid, host = writer(match)
        if writer_gone(match) == alive or (alive and host is None and pid == os.getpid()):
            continue
        if os.path.lexists(path / JOURNAL):
            found.append(path)
    return found


def commits_in_progress(folder: Path, staging_name: re.Pattern) -> list[Path]:
    """Staging folders of other live processes moving files into `folder` right now (or of a
    killed one whose PID was taken since, or of another machine's process, which may have
    been killed: only that machine can tell): a read now may see some of their files."""
    return _journaled(folder, staging_name, alive=True)


def finish_interrupted(
    folder: Path, staging_name: re.Pattern, staged: re.Pattern, fix: str
) -> list[Interrupted]:
    """Finish the commits into `folder` that killed processes left (the rest of their journals'
    steps done, then the staging folders removed); returns them. Safe in several processes at
    once (each journal is locked while it is finished). OSError when a step fails (`fix`: how
    to go on), ValueError for a journal that is not one (never written so by pixeljit)."""
    finished = []
    for staging in _journaled(folder, staging_name, alive=False):
        try:
            fd = os.open(staging / JOURNAL, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:  # finished by another process since it was listed
            continue
        except OSError as err:
            raise _not_a_journal(staging, f"unreadable ({err.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            if os.fstat(fd).st_nlink == 0:  # finished by the process that held the lock
                continue
            steps = _read_journal(f, staging, staged)
            start = _resume_from(staging, steps)
            total = sum(op == MOVE for op, _ in steps)
            left = sum(op == MOVE for op, _ in steps[start:])
            try:
                _apply(staging, folder, steps, start)
            except MoveFailed as err:
                raise OSError(err.errno, f"{folder} holds a write that a killed process left "
                              f"half done ({left} of its {total} files still in "
                              f"{staging.name}), and finishing it failed ({err.strerror}: "
                              f"{err.filename}): {fix}") from err  # fmt: skip
            _close_finished(staging, staged)
        finished.append(Interrupted(folder, staging, left, total))
    return finished


def finish_with_warning(
    folder: Path,
    staging_name: re.Pattern,
    staged: re.Pattern,
    what: tuple[str, str, str],
    then: str,
) -> int:
    """`finish_interrupted`, each finished commit said in a warning to the caller's caller;
    returns how many. `what`: (the commit as a warning names it, e.g. 'an export'; the whole
    thing, e.g. 'export'; how to write it again, e.g. 'export again'); `then`: what the caller
    was about to do (e.g. 'before loading it')."""
    finished, whole, redo = what
    fix = (f"make {folder} writable (or run as its owner) and run again, which finishes the "
           f"{whole}; or {redo} with --overwrite")  # fmt: skip
    done = finish_interrupted(folder, staging_name, staged, fix)
    for d in done:
        warnings.warn(f"{folder}: finished {finished} that a killed process left half done "
                      f"({d.moved} of its {d.total} files were still in {d.staging.name}) "
                      f"{then}; it now holds that whole {whole}", stacklevel=3)  # fmt: skip
    return len(done)


def _read_journal(f, staging: Path, staged: re.Pattern) -> list[Step]:
    """A journal's steps, each checked to name a file the writer stages."""
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise _not_a_journal(staging, "not a file")
    if info.st_size > MAX_JOURNAL_BYTES:
        raise _not_a_journal(staging, f"over {MAX_JOURNAL_BYTES >> 20} MiB")
    try:
        journal = json.loads(f.read(MAX_JOURNAL_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError) as err:
        raise _not_a_journal(staging, f"unreadable ({err})") from None
    steps = journal.get("steps") if isinstance(journal, dict) else None
    if not isinstance(steps, list) or journal.get("format") != JOURNAL_FORMAT or not all(
        isinstance(step, list) and len(step) == 2 and step[0] in (MOVE, REMOVE)
        and isinstance(step[1], str) and staged.fullmatch(step[1]) and step[1][:1] != "."
        for step in steps
    ):  # fmt: skip
        raise _not_a_journal(staging, "not a pixeljit commit journal")
    return [(op, name) for op, name in steps]


def _not_a_journal(staging: Path, problem: str) -> ValueError:
    return ValueError(f"{staging / JOURNAL} is {problem}: it was not written by pixeljit, so "
                      f"what its folder holds is not moved into {staging.parent}; look through "
                      f"{staging} and move or remove it by hand")  # fmt: skip


def _close_finished(staging: Path, staged: re.Pattern) -> None:
    """The journal removed, then the staging folder, unless it holds a file its writer never
    stages (left, as a sweep leaves it)."""
    with contextlib.suppress(FileNotFoundError):
        (staging / JOURNAL).unlink()
    with contextlib.suppress(OSError):
        if all(staged.fullmatch(p.name) and p.is_file() for p in staging.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)


def sweep_unfinished(folder: Path, staging_name: re.Pattern, staged: re.Pattern) -> list[Path]:
    """Remove the staging folders in `folder` of killed processes that hold no journal (nothing
    of them was moved in): only staged files (`staged`) and a half-written journal's temporary.
    A journaled one, a live process's, another machine's (`writer_gone`), or one holding
    anything else is left. Returns them."""
    sweepable = re.compile(rf"(?:{staged.pattern})|{_JOURNAL_TEMP}")
    with contextlib.suppress(OSError):
        return sweep_dead_staging(folder, staging_name, sweepable, gone=writer_gone)
    return []


@contextlib.contextmanager
def held_signals():
    """HELD_SIGNALS recorded (in the list yielded), not acted on, while the body runs; outside
    the main thread (where handlers cannot be set) nothing is held."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    hold = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, hold) for s in HELD_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        received[:] = [s for s in received if previous[s] != signal.SIG_IGN]


def deliver(signum: int, message: str, stopped: type[WrittenThenStopped] = WrittenThenStopped):
    """The held signal acted on as it would have been; a Ctrl-C's KeyboardInterrupt raised as
    `stopped(message)` (`message`: what is in place)."""
    handler = signal.getsignal(signum)
    try:
        if callable(handler):
            handler(signum, None)
        else:  # SIG_DFL (SIGTERM under torchrun): end the process as the signal would
            signal.raise_signal(signum)
    except KeyboardInterrupt as err:
        raise stopped(message, signum) from err
