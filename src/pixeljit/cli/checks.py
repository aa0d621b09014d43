"""Checks of command-line values shared by the verbs: numbers (finite, in range) and output
paths (writable, not clobbering a user's file), all before any long work starts.

Every error names the flag, the value and what to pass instead, in one line.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
from pathlib import Path

from pixeljit.checkpoints.hub_remote import is_hf_uri
from pixeljit.files.atomic import write_problem
from pixeljit.files.image_set import (  # NUMBERED_PNG: `save_pngs` names
    NUMBERED_PNG,
    finish_interrupted_set,
)

CHECKPOINT_HELP = ("a pixeljit run folder / .pt, a .safetensors export, a Hub folder (from "
                   "`pixeljit convert --hub`) or hf://org/name[@rev], or an authors' "
                   "checkpoint-last.pth / its folder")  # fmt: skip


def check_checkpoint_exists(flag: str, checkpoint: str) -> None:
    """A local checkpoint path that is missing, reported before the output checks (a missing
    input is the more useful error); `hf://` names are fetched later."""
    if not is_hf_uri(checkpoint) and not Path(checkpoint).exists():
        raise FileNotFoundError(f"{flag} {checkpoint} does not exist: pass {CHECKPOINT_HELP}")


FOLDER_CLOBBER_GLOB = "*.png"  # an output folder holding these would have them replaced
MAX_SEED = 2**63  # seeds are 64-bit: numpy's SeedSequence and torch.manual_seed take [0, 2**63)
MAX_IMAGES = 10_000_000  # images one command may generate (50k is the FID standard)
DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(flag: str, name: str) -> None:
    """A device the verbs can run on (not meta, xla, ...), before torch sees it."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"{flag} {name!r} is not a device this command runs on: pass {DEVICES}")


def check_int(flag: str, value: int | None, low: int = 1, high: int | None = None) -> None:
    """`value` (None = not given) an integer in [low, high): `high` is exclusive, as in range(),
    but the message names the largest value allowed (high - 1), e.g. '≥ 1 and ≤ 10,000,000'."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag} must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        upper = f" and ≤ {high - 1:,}" if high is not None else ""
        raise ValueError(f"{flag} must be ≥ {low:,}{upper}, got {value}")


def repeated(values) -> list[str]:
    """The values a list flag holds more than once, as text ('none' for None), sorted."""
    values = list(values or ())
    return sorted({"none" if v is None else str(v) for v in values if values.count(v) > 1})


def check_seed(flag: str, value: int | None) -> None:
    check_int(flag, value, 0, MAX_SEED)


def check_float(
    flag: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` (None = not given) a finite number within the bounds (open or closed)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if low is not None and high is not None:
        span = f"lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        span = f"be {'>' if low_open else '≥'} {low}"
    else:
        span = f"be {'<' if high_open else '≤'} {high}"
    raise ValueError(f"{flag} must {span}, got {value}")


NAME_MAX_FALLBACK = 255  # bytes in one file name on Linux's common file systems


def path_problem(path: str) -> str | None:
    """Why the operating system could never open `path`, whatever exists there: a NUL
    character, a symbolic link on the way that leads back to itself, a name (one part, or the
    whole) longer than the file system takes. None if it can be looked up. Any other problem
    (missing, unreadable) is judged by the command that uses the path."""
    if "\0" in path:
        return "contains a NUL character"
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link on the way leads back to itself (a loop)"
        if err.errno == errno.ENAMETOOLONG:
            return "the name is longer than the file system allows"
    anchor = _first_existing(Path(path))
    try:
        limit = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX_FALLBACK
    for part in Path(path).parts:
        if len(os.fsencode(part)) > limit:
            return (
                f"a name in it is {len(os.fsencode(part))} bytes long, over the {limit} the "
                "file system allows"
            )
    return None


def _first_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output(flag: str, path: str | os.PathLike, folder: bool = False,
                 overwrite: bool = False, overwrite_flag: str | None = None) -> Path:  # fmt: skip
    """Refuse an output that cannot be written, before any work: a folder where a file goes (or
    a file where a folder goes), a parent that is a file, a parent without write permission, or
    (unless `overwrite`) an existing file or symbolic link (one leading nowhere included), or a
    folder already holding PNGs or a labels.csv (which the new ones would replace; a folder for a
    set of numbered PNGs is first checked for files pixeljit did not write by the caller:
    `check_only_our_set`). Nothing is created."""
    from pixeljit.files.images import LABELS_CSV

    path = Path(path)
    hint = f"pass {overwrite_flag} to replace it" if overwrite_flag else "remove it first"
    if path.is_symlink() and not path.exists():
        if not overwrite:
            raise ValueError(f"{flag} {path} is a symbolic link to {os.readlink(path)}, which "
                             f"does not exist: choose a new name or {hint}")  # fmt: skip
        if folder:
            raise ValueError(f"{flag} {path} is a symbolic link leading nowhere, not a folder: "
                             "pass a folder")  # fmt: skip
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{flag} {path} is a file, not a folder: pass a folder")
        if not folder and path.is_dir():
            raise ValueError(f"{flag} {path} is a folder: pass a file name")
        if not overwrite and not folder:
            raise ValueError(f"{flag} {path} already exists: choose a new name or {hint}")
        if not overwrite:  # a folder: refused only for what the new set would replace
            held = [what for what, there in (
                ("PNG images", any(path.glob(FOLDER_CLOBBER_GLOB))),
                (LABELS_CSV, os.path.lexists(path / LABELS_CSV))) if there]  # fmt: skip
            if held:
                raise ValueError(f"{flag} {path} already holds {' and '.join(held)}: choose a "
                                 f"new name or {hint}")  # fmt: skip
    anchor = _first_existing(path if path.exists() and folder else path.parent)
    if not anchor.is_dir():
        raise ValueError(f"{flag} {path}: {anchor} is a file, not a folder")
    problem = write_problem(anchor)
    if problem:
        raise ValueError(f"{flag} {path}: cannot write in {anchor} ({problem})")
    return path


def check_outputs_apart(files, folders, inside_ok: bool = False) -> None:
    """Refuse a file output (FLAG, path) that is a folder output (FLAG, path) of the same
    command, lies inside one (unless `inside_ok`) or on the way to one, compared as resolved
    paths (symbolic links followed): a grid or .npz inside a folder of numbered PNGs would
    replace an image of the set or be scored with it by `pixeljit eval --images`."""
    for file_flag, file in files:
        real_file = Path(os.path.realpath(file))
        for folder_flag, folder in folders:
            real_folder = Path(os.path.realpath(folder))
            linked = f" ({file} resolves to {real_file})" if (
                str(real_file) != os.path.abspath(file)) else ""  # fmt: skip
            if real_file == real_folder:
                raise ValueError(f"{file_flag} {file} and the folder {folder_flag} {folder} are "
                                 f"the same path{linked}: name each output once")  # fmt: skip
            if real_file in real_folder.parents:
                raise ValueError(f"{folder_flag} {folder} lies inside {file_flag} {file}, where "
                                 "a file goes: write the folder elsewhere")  # fmt: skip
            if real_folder in real_file.parents and not inside_ok:
                outside = Path(folder).parent / Path(file).name
                raise ValueError(
                    f"{file_flag} {file} lies inside the folder {folder_flag} {folder}{linked}: "
                    "it would replace or join the folder's images (`pixeljit eval --images` "
                    f"reads them all); write it outside the folder, e.g. {file_flag} {outside}"
                )


def check_not_an_input(flag: str, path: str | os.PathLike, inputs: list[Path]) -> None:
    """Refuse an output that is one of the command's own input files (even with --overwrite:
    the results would replace what they were computed from)."""
    path = Path(path)
    if not path.is_file():
        return
    for source in inputs:
        if source.is_file() and path.samefile(source):
            raise ValueError(f"{flag} {path} is an input of this command ({source}): write the "
                             "results to another file")  # fmt: skip


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 numbered PNG', '2 numbered PNGs' ('2 classes' with plural='classes')."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


OUR_SET = "numbered PNGs (000000.png, …) and the labels.csv of an earlier set"
MAX_NAMES_SHOWN = 3  # foreign files named in an error; the rest counted


def foreign_files(folder: Path) -> tuple[bool, list[str]]:
    """What a folder for numbered PNGs holds that pixeljit did not write there and that matters:
    (a labels.csv whose first row is not pixeljit's header, the image files `pixeljit eval
    --images` would read (`is_read_image`: any suffix it reads, in any case, not hidden) that
    are not numbered PNGs)."""
    from pixeljit.files.images import LABELS_CSV
    from pixeljit.metrics.image_sources import is_read_image

    read = (p.name for p in folder.iterdir() if is_read_image(p))
    labels = folder / LABELS_CSV
    theirs = os.path.lexists(labels) and not _our_labels_csv(labels)
    return theirs, sorted(name for name in read if not NUMBERED_PNG.fullmatch(name))


def _our_labels_csv(path: Path) -> bool:
    """Whether `path` is a file whose first row is the header `save_labels_csv` writes."""
    import csv

    from pixeljit.files.images import LABELS_CSV_HEADER

    if not path.is_file():  # (a FIFO would block the read)
        return False
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # Excel's BOM
            first = f.readline(200)
    except OSError:
        return False
    return next(csv.reader([first]), None) == list(LABELS_CSV_HEADER)


def check_only_our_set(flag: str, folder: str | os.PathLike) -> None:
    """Refuse a folder for a new set of numbered PNGs that holds images pixeljit did not write
    (`eval --images` would score them with the new set, --overwrite or not) or a labels.csv it
    did not write (--overwrite would replace it), naming a few and the fix. A set a killed
    process left half moved in is finished first: the checks see the folder it meant to leave."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    finish_interrupted_set(folder, reading=False)
    try:
        theirs, images = foreign_files(folder)
    except OSError as err:
        raise ValueError(f"{flag} {folder}: cannot list what it holds ({err.strerror}): choose "
                         "a folder you can read, or a new one") from None  # fmt: skip
    if not (theirs or images):
        return
    from pixeljit.files.images import LABELS_CSV

    held = [f"{LABELS_CSV}, which pixeljit did not write (the new one would replace it)"] * theirs
    if images:
        more = ", …" if len(images) > MAX_NAMES_SHOWN else ""
        held.append(f"{counted(len(images), 'image')} pixeljit did not write "
                    f"({', '.join(images[:MAX_NAMES_SHOWN])}{more}), which `pixeljit eval "
                    "--images` would score with the new set")  # fmt: skip
    one = theirs + len(images) == 1
    raise ValueError(
        f"{flag} {folder} already holds {'; and '.join(held)}: choose an empty or new folder, or "
        f"move {'it' if one else 'them'} out (--overwrite replaces only {OUR_SET})"
    )


def check_no_stale_pngs(flag: str, folder: str | os.PathLike, count: int) -> None:
    """With --overwrite, a folder whose numbered PNGs go beyond the `count` new ones would end up
    holding two sample sets (the new images replace only their own numbers): refused, before any
    work, naming how many would be left over. `check_only_our_set` runs first on every such
    folder and has finished a set a killed process left in it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    stale = [p.name for p in folder.iterdir()
             if NUMBERED_PNG.fullmatch(p.name) and int(p.name[:-4]) >= count]  # fmt: skip
    if stale:
        raise ValueError(
            f"{flag} {folder} holds {counted(len(stale), 'numbered PNG')} beyond the "
            f"{counted(count, 'new one')} (e.g. "
            f"{sorted(stale)[0]}): they would be mixed with the new set; choose an empty folder "
            "or remove them first"
        )


@contextlib.contextmanager
def naming_partial_images(flag: str, folders, total: int, labelled: bool):
    """Around the writing of `total` numbered PNGs (and, when `labelled`, a labels.csv) into each
    of `folders`, staged and moved in only once whole (`files.image_set`): a Ctrl-C or a failed
    write says the folder is left as it was (an earlier set there kept whole) and how to go on.
    With no folders it passes as it came."""
    from pixeljit.files.image_set import ImageSetNotWritten, SetWrittenThenStopped

    try:
        yield
    except SetWrittenThenStopped:  # the whole set is in place: its message says so
        raise
    except ImageSetNotWritten as err:
        kept = " and its earlier set is kept as it was" if err.earlier else ""
        fix = err.fix(f"pass another {flag}")
        raise ImageSetNotWritten(err.errno, f"{flag} {err.folder}/: writing the {total} images "
                                 f"failed ({err.reason}); nothing was written{kept}: {fix}",
                                 err.folder, err.reason, err.earlier) from err  # fmt: skip
    except KeyboardInterrupt:
        if not folders:
            raise
        held = [f"{flag} {folder}/{_earlier_set(Path(folder))}" for folder in folders]
        raise KeyboardInterrupt(
            f"nothing was written to {'; nor to '.join(held)}: stopped before all {total} images "
            f"were made{' (and their labels.csv)' if labelled else ''}; run the command again to "
            "write the whole set"
        ) from None


def _earlier_set(folder: Path) -> str:
    """' (its earlier set of N numbered PNGs is kept as it was)' for a folder holding one."""
    try:
        found = sum(1 for n in os.listdir(folder) if NUMBERED_PNG.fullmatch(n))
    except OSError:
        return ""
    kept = f" (its earlier set of {counted(found, 'numbered PNG')} is kept as it was)"
    return kept if found else ""


def check_no_stale_labels(flag: str, folder: str | os.PathLike, labelled: bool) -> None:
    """With --overwrite, a folder whose labels.csv (the classes of an earlier, class-conditional
    set) an unconditional set would leave in place, describing images it no longer holds:
    refused, before any work."""
    from pixeljit.files.images import LABELS_CSV

    stale = Path(folder) / LABELS_CSV
    if not labelled and os.path.lexists(stale):
        raise ValueError(
            f"{flag} {folder} holds {LABELS_CSV} from an earlier class-conditional set, and this "
            "unconditional model writes none: it would describe the wrong images; choose an "
            f"empty folder or remove {stale} first"
        )


def checkpoint_left(out: str | os.PathLike, command: str) -> str:
    """What a run stopped outside a checkpoint write (a second Ctrl-C, a full disk) leaves: its
    last checkpoint, continued by `command`, or nothing to resume."""
    from pixeljit.training.rundir import holds_checkpoint

    if holds_checkpoint(Path(out)):
        return f"the last checkpoint in {out} is kept: continue with {command}"
    return f"{out} holds nothing to resume"


def interrupted_detail(out: str | os.PathLike, command: str) -> str:
    """What a second Ctrl-C (which stops a run at once, without a checkpoint at that step)
    leaves: the run's last checkpoint, continued by `command`, or none yet."""
    from pixeljit.training.rundir import holds_checkpoint

    lead = "stopped at once; " if holds_checkpoint(Path(out)) else (
        "stopped before the run's first checkpoint: ")  # fmt: skip
    return lead + checkpoint_left(out, command)
