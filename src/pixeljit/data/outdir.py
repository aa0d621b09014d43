"""Where a packed set goes: checks on the output folder, the staging folder, and publishing.

Rules (checked before any long work, and again when publishing):
- the output is never the input: an output folder that is, contains, or lies inside a source
  folder (symbolic links resolved) is refused, with or without overwrite;
- a non-empty output folder is replaced only with `overwrite`, and only if it is a packed set
  written by pixeljit: a manifest of our format naming every file in the folder (anything else,
  sub-folders included, is foreign and makes the folder refused), and naming only files
  `prepare` writes (see manifest.listed_names): a manifest listing a user's file makes the folder
  refused, never that file deleted;
- replacing deletes exactly the files the old manifest lists, then the emptied folder; a file
  that appears there meanwhile is kept (the old folder is left under a hidden name, reported).
The new set is written into a hidden sibling folder, renamed into place at the end.

Replacing is two renames: the old pack to `.NAME.old-<pid>-<hex>`, then the new one to NAME. A
process killed between them leaves NAME missing and the user's pack hidden; killed after them,
a dead old pack beside the new one. `recover_replaced` (run before NAME is checked, packed or
opened) moves the old pack back in the first case, and removes it in the second.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from pixeljit.files.atomic import process_alive, sweep_dead_staging, sync_file, temp_sibling
from pixeljit.files.cache import CACHE_ENV, cache_root

from .manifest import (
    OWN_FILES_TEXT,
    ForeignNameError,
    ManifestError,
    listed_names,
    read_manifest_json,
)
from .shards import MANIFEST

_SHOWN_FOREIGN = 5


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _overlap(out_dir: Path, source: Path) -> str | None:
    out, src = _resolved(out_dir), _resolved(source)
    if out == src:
        return "is"
    if out.is_relative_to(src):
        return "lies inside"
    if src.is_relative_to(out):
        return "contains"
    return None


def _in_cache(folder: Path) -> bool:
    """Whether `folder` is in pixeljit's cache (where `open_dataset` packs a source), not a
    folder the user chose with `prepare --out`."""
    return _resolved(folder).is_relative_to(_resolved(cache_root()))


def _name(folder: Path) -> str:
    """The folder as a message names it: the user's output folder, or the data cache's."""
    return f"{'data cache' if _in_cache(folder) else 'output'} folder {folder}"


def _another(folder: Path) -> str:
    """The fix of a folder whose files are not a pack of ours."""
    if _in_cache(folder):
        return f"delete {folder} (the data is packed again) or set {CACHE_ENV} to another folder"
    return "choose another output folder"


def _choose(folder: Path, which: str) -> str:
    """The fix 'choose an output folder {which}', or for the data cache the variable that
    moves the cache."""
    if _in_cache(folder):
        return f"set {CACHE_ENV} to a folder {which}"
    return f"choose an output folder {which}"


def own_pack_files(folder: Path) -> list[str]:
    """The files of a packed set pixeljit wrote in `folder`; ValueError naming what is not."""
    refusal = f"only a packed set written by pixeljit is ever replaced: {_another(folder)}"
    if not (folder / MANIFEST).is_file():
        raise ValueError(f"{_name(folder)} is not empty and has no {MANIFEST}; {refusal}")
    try:
        manifest = read_manifest_json(folder)
        names = {MANIFEST, *listed_names(manifest, folder / MANIFEST)}
    except ForeignNameError as err:  # a manifest edited to list a user's file: never deleted
        raise ValueError(
            f"{_name(folder)}: its {MANIFEST} lists {err.name!r}, a file pixeljit never "
            f"writes (a pack holds only {OWN_FILES_TEXT}), so the folder is not a packed set "
            f"written by pixeljit and nothing in it is replaced: {_another(folder)}, "
            f"or move {err.name!r} and your other files out of {folder}"
        ) from err
    except ManifestError as err:
        reason = str(err).split("; ", 1)[0]
        raise ValueError(f"{_name(folder)}: {reason}; {refusal}") from err
    present = sorted(entry.name for entry in os.scandir(folder))
    foreign = [name for name in present if name not in names or not (folder / name).is_file()]
    if foreign:
        more = " …" if len(foreign) > _SHOWN_FOREIGN else ""
        shown = ", ".join(foreign[:_SHOWN_FOREIGN]) + more
        raise ValueError(
            f"{_name(folder)} holds {len(foreign)} file(s) its manifest does not list "
            f"({shown}); only a packed set written by pixeljit is ever replaced: move them out "
            f"or {_another(folder)}"
        )
    return [name for name in present if name in names]


def check_output(
    out_dir: str | os.PathLike, overwrite: bool, sources: Iterable[str | os.PathLike] = ()
) -> Path:
    """Check `out_dir` against the rules above before any work; returns it as a Path."""
    out_dir = Path(out_dir)
    try:
        _check_output(out_dir, overwrite, sources)
    except OSError as err:  # an unreadable folder on the way
        raise ValueError(
            f"cannot inspect the {_name(out_dir)}: {err.strerror or err} "
            f"({err.filename}); {_choose(out_dir, 'you can read and write')}"
        ) from err
    return out_dir


def _check_output(out_dir: Path, overwrite: bool, sources: Iterable) -> None:
    for source in sources:
        relation = _overlap(out_dir, Path(source))
        if relation is not None:
            raise ValueError(
                f"{_name(out_dir)} {relation} the source folder {source}: "
                f"{_choose(out_dir, 'outside the source')}"
            )
    if out_dir.is_symlink():
        raise ValueError(
            f"output {out_dir} is a symbolic link: pass the folder it leads to "
            f"({os.path.realpath(out_dir)}) instead"
        )
    recover_replaced(out_dir)  # a replace killed midway is undone, or finished, first
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a folder: choose another output")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out_dir} is not empty: choose another folder or pass "
                "--overwrite (Python: overwrite=True) to replace a packed set written by pixeljit"
            )
        own_pack_files(out_dir)


# what a staging folder may hold: shards, labels, the manifest, atomic-write temporaries
STAGED_FILE_RE = re.compile(
    r"^(images-\d+\.npy|labels\.npy|manifest\.json|\..+\.tmp-\d+-[0-9a-f]+)$"
)


def sweep_stale_staging(out_dir: Path, every_entry: bool = False) -> list[Path]:
    """Remove the staging folders of `out_dir` (`.NAME.partial-<pid>-<hex>`) left by packing
    processes that were killed: each may hold gigabytes. With `every_entry` (a folder only
    pixeljit writes, such as the cache's), those of every sibling of `out_dir` go too. A live
    process's folder, or one holding any file a pack does not write, is left alone. Returns
    what was removed."""
    name = r".+" if every_entry else re.escape(out_dir.name)
    pattern = re.compile(rf"^\.{name}\.partial-(\d+)-[0-9a-f]+$")
    return sweep_dead_staging(out_dir.parent, pattern, STAGED_FILE_RE)


def open_staging(out_dir: Path) -> Path:
    """A fresh hidden folder beside `out_dir` (same file system, for the final rename): made
    first, so an unwritable output fails in a second, not after hours of packing. Staging
    folders of killed earlier packs into `out_dir` are removed first."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(out_dir)
        staging = temp_sibling(out_dir, "partial")
        staging.mkdir()
    except OSError as err:
        raise ValueError(
            f"cannot write the {_name(out_dir)}: creating a folder in {out_dir.parent} "
            f"failed ({err.strerror or err}); {_choose(out_dir, 'you can write')}"
        ) from err
    return staging


def _remove_old(old: Path, names: list[str]) -> None:
    """Delete the listed files of a replaced pack, then its folder if nothing else is there.
    The new set is already in place: a failure here only leaves the old folder behind."""
    try:
        for name in names:
            (old / name).unlink(missing_ok=True)
        old.rmdir()
    except OSError as err:
        warnings.warn(
            f"the new packed set is in place, but the replaced one could not be removed "
            f"entirely ({err.strerror or err}); what is left of it is in {old}",
            stacklevel=3,
        )


def publish(staging: Path, out_dir: Path, overwrite: bool, sources: Iterable = ()) -> None:
    """Move the finished staging folder onto `out_dir`, replacing our own old pack if allowed.
    The new pack is synced to the disk first, and the renames after (a power cut leaves the old
    pack or the new one whole, never a new name over unwritten shards)."""
    check_output(out_dir, overwrite, sources)
    for entry in staging.iterdir():
        sync_file(entry)
    sync_file(staging)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists() and not out_dir.is_symlink():
        os.replace(staging, out_dir)
        sync_file(out_dir.parent)
        return
    names = own_pack_files(out_dir)
    old = temp_sibling(out_dir, "old")
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)  # put the previous set back
        raise
    sync_file(out_dir.parent)
    _remove_old(old, names)


def recover_replaced(out_dir: Path, every_entry: bool = False) -> None:
    """Settle what a `publish` killed while replacing `out_dir` left: `.NAME.old-<pid>-<hex>`
    folders (the old pack it moved aside) whose process is gone. With NAME missing (killed
    between the two renames) the newest such pack is moved back to NAME, in a warning; with NAME
    a pack of ours (the new one was published) the old packs are removed, as the killed run would
    have. A NAME with a live process's old folder (a replace under way) is left alone, and an old
    folder holding files a pack never writes is kept, in a warning. With `every_entry` (a folder
    only pixeljit writes, such as the cache's), every sibling NAME of `out_dir` is settled."""
    name = r".+" if every_entry else re.escape(out_dir.name)
    pattern = re.compile(rf"^\.({name})\.old-(\d+)-[0-9a-f]+$")
    try:
        entries = sorted(out_dir.parent.iterdir())
    except OSError:  # no folder yet, or unreadable: nothing of ours to settle
        return
    dead: dict[str, list[Path]] = {}
    busy = set()
    for path in entries:
        found = pattern.fullmatch(path.name)
        if found is None or path.is_symlink() or not path.is_dir():
            continue
        if process_alive(int(found.group(2))):
            busy.add(found.group(1))
        else:
            dead.setdefault(found.group(1), []).append(path)
    for entry, olds in dead.items():
        if entry not in busy:
            _settle(out_dir.parent / entry, olds)


def _changed(path: Path) -> int:
    """When `path` was last renamed or changed (its ctime): the last pack moved aside is newest."""
    try:
        return os.lstat(path).st_ctime_ns
    except OSError:
        return 0


def _vacant(folder: Path) -> bool:
    """Whether nothing is at `folder`, or only an empty folder (a rename replaces it)."""
    try:
        if not os.path.lexists(folder):
            return True
        return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())
    except OSError:
        return False


def _settle(out: Path, olds: list[Path]) -> None:
    """Move the newest dead old pack of `out` back when `out` is vacant; then remove the others
    if `out` is a pack of ours (see `recover_replaced`), keep and name them if not."""
    olds.sort(key=_changed)
    packs = [old for old in olds if (old / MANIFEST).is_file()]
    if packs and _vacant(out):
        newest = packs[-1]
        olds.remove(newest)
        try:
            os.rename(newest, out)  # onto an empty folder too
        except OSError as err:
            if os.path.lexists(newest):  # not another process that moved it back first
                warnings.warn(
                    f"the {_name(out)} is missing: a replace of it was killed after moving its "
                    f"packed set aside to {newest}, which could not be moved back "
                    f"({err.strerror or err}): move it to {out} yourself",
                    stacklevel=3,
                )
                return
        else:
            warnings.warn(
                f"the {_name(out)} was missing: a replace of it was killed after moving its "
                f"packed set aside to {newest.name}; that set is moved back to {out}",
                stacklevel=3,
            )
    if not olds:
        return
    try:
        own_pack_files(out)
    except (ValueError, OSError):  # missing, or not a pack of ours: the old ones are kept
        now = "is missing" if not os.path.lexists(out) else "is not a packed set of pixeljit's"
        for old in olds:
            warnings.warn(
                f"{old} holds what a killed replace of the {_name(out)} moved aside, and that "
                f"folder {now}, so it is kept: move it back to {out}, or delete it if you do "
                "not need it",
                stacklevel=3,
            )
        return
    for old in olds:
        _remove_replaced(old, out)


def _pack_written(entry: os.DirEntry) -> bool:
    """Whether `entry` is a plain file named as the files a pack is written with."""
    return bool(STAGED_FILE_RE.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False)


def _remove_replaced(old: Path, out: Path) -> None:
    """Delete an old pack a killed replace left beside the new `out`, if it holds only files a
    pack writes; another process removing it at the same time is no error."""
    try:
        entries = sorted(os.scandir(old), key=lambda entry: entry.name)
        foreign = [e.name for e in entries if not _pack_written(e)]
        if foreign:
            more = " …" if len(foreign) > _SHOWN_FOREIGN else ""
            shown = ", ".join(foreign[:_SHOWN_FOREIGN]) + more
            warnings.warn(
                f"{old}, left by a killed replace of the {_name(out)}, holds files a pack never "
                f"writes ({shown}), so it is kept: move them out, then delete it",
                stacklevel=4,
            )
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        old.rmdir()
    except FileNotFoundError:  # removed meanwhile by another process
        return
    except OSError as err:
        warnings.warn(
            f"{old}, the packed set a killed replace of the {_name(out)} left, could not be "
            f"removed ({err.strerror or err}): delete it yourself",
            stacklevel=4,
        )
