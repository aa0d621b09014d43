"""Image folders: ImageNet layout (class-conditional) or a flat folder (unconditional).

Layouts, after an optional split folder (`root/<split>/...`):
- classes: `root/<class>/**/<image>`; classes are the sub-folder names, sorted, label = rank.
- flat: every image under `root` (recursively), one class, label 0.
`layout="auto"` picks classes when `root` holds only sub-folders and flat when it holds only
images; a mix is an error (say which you mean). Split-named sub-folders alone (train, test, …)
need a split, unless layout="classes" says they are the classes. Files are sorted by relative
path, so the packed order does not depend on the file system. Images are recognised by extension
(image_types.py); other files, hidden entries (".*", not entered) and, beside class folders,
pipes, sockets and devices are listed as ignored (`ignored_summary` says them in one line). A
class-level link to nothing (an unmounted disk) is refused: dropping it would shift every later
class's label. An image name that is a pipe, socket or device is never opened (reading a FIFO
waits forever): it is a bad image (refused, or skipped with skip_bad). A folder a killed
`pixeljit sample --out` / `eval --save-images` was moving an image set into gets that set
finished first (`finish_interrupted_set`, as `eval --images` does): never read half moved.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixeljit.files.image_set import finish_interrupted_set

from .decode import DECODE_ERRORS, decode_image, decode_task, warn_notes  # noqa: F401
from .fingerprint import FINGERPRINT_KEY, files_fingerprint
from .image_types import IMAGE_EXTENSIONS, is_image_file, is_visible_name
from .source import BadImage, BadImageError, SourceStream, batch_images
from .text import utf8_text
from .transforms import COLOUR, CROP_RULE, check_channels, check_size

LAYOUTS = ("auto", "classes", "flat")
FOLDER_KIND = "image-folder"  # the `kind` of an image folder's packed-set description
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
_BATCH = 256
_WORKER_CHUNK = 64


@dataclass
class FolderScan:
    """The listing of an image folder: files with their labels, in packing order."""

    root: Path  # the folder the classes (or images) live in
    layout: str  # "classes" or "flat"
    class_names: list[str]
    files: list[tuple[Path, int]]
    ignored: list[str] = field(default_factory=list)  # other files, hidden entries


def _enter(folder: Path, seen: dict[tuple[int, int], Path], top: Path) -> None:
    """Register a folder about to be walked; refuse a link loop or a folder reached twice."""
    if folder.is_symlink():
        target = Path(os.path.realpath(folder))
        if top.is_relative_to(target):
            raise ValueError(
                f"symbolic link loop: {folder} leads to {target}, which holds the image folder "
                f"{top} itself; remove the link"
            )
    _register(folder, seen)


def _register(folder: Path, seen: dict[tuple[int, int], Path]) -> None:
    try:
        st = os.stat(folder)
    except OSError as err:
        raise ValueError(f"cannot read folder {folder}: {err.strerror}") from err
    key = (st.st_dev, st.st_ino)
    first = seen.get(key)
    if first is not None:
        kind = "a link loop" if folder.is_relative_to(first) else "linked twice"
        raise ValueError(
            f"{folder} and {first} are the same folder ({kind}): its images would be packed "
            "again; remove one of the links"
        )
    seen[key] = folder


def _walk_files(
    folder: Path, seen: dict[tuple[int, int], Path], top: Path, hidden: list[str]
) -> list[Path]:
    """Every visible file under `folder`, sorted by relative path; hidden entries (not entered)
    are added to `hidden`. Linked folders are followed once: a folder reached twice (a loop, or
    two links to it) is an error, as is an unreadable folder (its images would silently go
    missing)."""
    found: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
            hidden.extend(str(current / e.name) for e in entries if not is_visible_name(e.name))
            entries = [e for e in entries if is_visible_name(e.name)]
        except OSError as err:
            raise ValueError(
                f"cannot list folder {current}: {err.strerror}; fix its permissions or move it "
                "out of the image folder"
            ) from err
        for entry in entries:
            path = current / entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:  # a link to itself (ELOOP): a bad file, which decoding reports
                is_dir = False
            if is_dir:
                _enter(path, seen, top)
                pending.append(path)
            else:
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _split_root(root: Path, split: str | None, layout: str = "auto") -> Path:
    """The folder the layout applies to: `root`, or its `split` sub-folder. Without a split, a
    root holding only split-named folders (train, test, …) is refused unless `layout` is
    "classes": then they are the classes, as asked."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if split is not None:
        if split in ("", ".", "..") or "/" in split or "\\" in split or os.sep in split:
            raise ValueError(
                f"split {split!r} is not a folder name: pass the name of a sub-folder of {root} "
                "(e.g. --split train), without '/' or '..'"
            )
        base = root / split
        if not base.is_dir():
            subs = sorted(p.name for p in root.iterdir() if p.is_dir() and is_visible_name(p.name))
            raise FileNotFoundError(
                f"split folder {base} not found (sub-folders of {root}: {subs}); pass the "
                "split that exists, or no split to use the folder itself"
            )
        return base
    subs = {p.name for p in root.iterdir() if p.is_dir() and is_visible_name(p.name)}
    if subs and subs <= SPLIT_NAMES and layout != "classes":
        raise ValueError(
            f"{root} holds split folders {sorted(subs)}: pass split=NAME (prepare --split NAME, "
            "train --set data.split=NAME) "
            "to pick one, rather than packing the splits as classes (if they are classes, "
            "pack it with `pixeljit prepare SRC --layout classes`; Python: layout='classes')"
        )
    return root


def _refuse_dangling_links(entries: list[Path]) -> None:
    """Refuse a link among the class folders that leads nowhere: it is neither a folder nor a
    file, so skipping it would drop a class and shift every later class's label by one."""
    for path in entries:
        if path.is_symlink() and not path.exists():  # a dangling link, or a link to itself
            raise ValueError(
                f"class folder {path} is a symbolic link to {os.readlink(path)}, which does not "
                "exist (an unmounted disk, a moved folder?): mount or restore its target, or "
                "remove the link; skipping it would shift the labels of the later classes"
            )


def _refuse_non_utf8(text: str, what: str) -> None:
    """Refuse a name that is not valid UTF-8: the manifest (JSON, UTF-8) cannot record it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{what} {text!r} is not valid UTF-8, so the pack's manifest cannot record it: "
            "rename it with a UTF-8 name"
        ) from None


def _top_level(
    root: str | os.PathLike, split: str | None, layout: str
) -> tuple[Path, str, list[Path], list[Path], list[Path]]:
    """(base, layout, visible entries, sub-folders, images) of the folder's top level, the
    layout resolved; the errors of a missing folder or split, a mix, or no classes."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    base = _split_root(Path(root), split, layout)
    finish_interrupted_set(base)  # a set a killed `sample --out` was moving in: never read half
    entries = sorted(p for p in base.iterdir() if is_visible_name(p.name))
    subdirs = [p for p in entries if p.is_dir()]
    top_images = [p for p in entries if p.is_file() and is_image_file(p)]
    if layout == "auto":
        if subdirs and top_images:
            raise ValueError(
                f"{base} mixes {len(top_images)} images with {len(subdirs)} sub-folders: pack it "
                "with `pixeljit prepare SRC --layout flat` (every image, unconditional) or "
                "`--layout classes` (sub-folders are classes; top-level files ignored) and use "
                "the packed folder (Python: layout='flat' / 'classes')"
            )
        layout = "classes" if subdirs else "flat"
    if layout == "classes" and top_images and not subdirs:
        raise ValueError(
            f"{base} holds {len(top_images)} images directly but no class sub-folders, so "
            "layout 'classes' finds no classes: pack it with `--layout flat` (every image, one "
            "unconditional class) or `--layout auto` (the default, which picks flat here), or "
            "sort the images into one sub-folder per class (Python: layout='flat' / 'auto')"
        )
    if layout == "classes":
        _refuse_dangling_links(entries)
    return base, layout, entries, subdirs, top_images


def folder_class_names(
    root: str | os.PathLike, split: str | None = None, layout: str = "auto"
) -> list[str] | None:
    """The class names `scan_image_folder` gives, read from the folder's top level alone (no
    walk of its images; its errors there are raised as the scan raises them): the sub-folder
    names of a layout of classes, the folder's own name for a flat folder holding images
    directly; None where only the walk can tell (a flat folder whose images lie deeper)."""
    base, layout, _, subdirs, top_images = _top_level(root, split, layout)
    if layout == "classes":
        return [d.name for d in subdirs]
    return [utf8_text(base.name)] if top_images else None


def scan_image_folder(
    root: str | os.PathLike, split: str | None = None, layout: str = "auto"
) -> FolderScan:
    """List an image folder (see the module doc); clear errors for empty folders and classes."""
    base, layout, entries, subdirs, _ = _top_level(root, split, layout)
    ignored: list[str] = []  # other files and hidden entries (`ignored_summary`)
    files: list[tuple[Path, int]] = []
    top = Path(os.path.realpath(base))
    seen: dict[tuple[int, int], Path] = {}
    _register(base, seen)
    if layout == "flat":
        for path in _walk_files(base, seen, top, ignored):
            (files.append((path, 0)) if is_image_file(path) else ignored.append(str(path)))
        class_names = [utf8_text(base.name)]  # the folder's name, whatever its bytes
    else:
        ignored.extend(str(p) for p in entries if not p.is_dir())  # files, pipes, sockets
        ignored.extend(str(p) for p in sorted(base.iterdir()) if not is_visible_name(p.name))
        class_names = [d.name for d in subdirs]
        for label, folder in enumerate(subdirs):
            _enter(folder, seen, top)
            images = []
            for path in _walk_files(folder, seen, top, ignored):
                (images.append((path, label)) if is_image_file(path) else ignored.append(str(path)))
            if not images:
                raise ValueError(
                    f"class folder {folder} holds no images (extensions "
                    f"{sorted(IMAGE_EXTENSIONS)}): if {base} is meant as a data set of class "
                    "folders, add images there or move that folder out; otherwise it is not "
                    "one: give the path of an image data set"
                )
            files.extend(images)
    if not files:
        raise ValueError(f"no images found in {base} (extensions {sorted(IMAGE_EXTENSIONS)})")
    return FolderScan(base, layout, class_names, files, ignored)


def folder_fingerprint(scan: FolderScan) -> str:
    """The fingerprint (see fingerprint.py) of a scanned folder: its images, labels, classes."""
    named = [
        (f"{label}:{path.relative_to(scan.root).as_posix()}", path) for path, label in scan.files
    ]
    return files_fingerprint(named, {"layout": scan.layout, "classes": scan.class_names})


def folder_stream(
    root: str | os.PathLike,
    size: int,
    channels: int = COLOUR,
    split: str | None = None,
    layout: str = "auto",
    skip_bad: bool = False,
    limit: int | None = None,
    num_workers: int = 0,
) -> SourceStream:
    """An image folder at `size` x `size`, for `prepare`. `num_workers` > 0 decodes in that
    many processes (order is kept); `limit` keeps the first N files in packing order."""
    check_size(size)
    check_channels(channels)
    scan = scan_image_folder(root, split, layout)
    for name in scan.class_names:  # a label's name must be recorded as it is
        _refuse_non_utf8(name, f"class folder in {utf8_text(str(scan.root))}:")
    files = scan.files[:limit] if limit is not None else scan.files
    skipped: list[BadImage] = []

    def decoded() -> Iterator[tuple[np.ndarray | None, str, list[str]]]:
        tasks = ((str(path), size, channels) for path, _ in files)
        if num_workers <= 0:
            yield from map(decode_task, tasks)
            return
        # fork where it exists (the workers only touch PIL and numpy); spawn elsewhere
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(num_workers) as pool:
            yield from pool.imap(decode_task, tasks, chunksize=_WORKER_CHUNK)

    per_batch = batch_images(_BATCH, channels, size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images: list[np.ndarray] = []
        labels: list[int] = []
        for (path, label), (arr, reason, notes) in zip(files, decoded(), strict=True):
            warn_notes(path, notes)  # Pillow's warnings about it, naming it
            if arr is None:
                bad = BadImage(str(path), reason)
                if not skip_bad:
                    raise BadImageError(bad)
                skipped.append(bad)
                continue
            images.append(arr)
            labels.append(label)
            if len(images) == per_batch:
                yield np.stack(images), np.asarray(labels, dtype=np.int64)
                images, labels = [], []
        if images:
            yield np.stack(images), np.asarray(labels, dtype=np.int64)

    description = {
        "kind": FOLDER_KIND,
        "root": utf8_text(str(Path(root).resolve())),  # any path the OS accepts
        "split": utf8_text(split) if split is not None else None,
        "layout": scan.layout,
        "files": len(files),
        "crop": CROP_RULE,
        FINGERPRINT_KEY: folder_fingerprint(scan),
    }
    conditional = scan.layout == "classes"
    return SourceStream(
        scan.class_names, conditional, description, batches(), len(files), skipped, scan.ignored
    )
