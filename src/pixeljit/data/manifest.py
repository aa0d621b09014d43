"""Reading a packed set's manifest.json without trusting it (see `shards.py` for the format).

A manifest is read only if it is small (MAX_MANIFEST_BYTES), valid JSON, an object of our
format name and a known version, with every field of the right type and within bounds. The file
names it lists must be plain names inside the pack folder: no separators, no "..", no absolute
paths, and no link that leads outside the folder; and each must be the very name `prepare` gives
that file (shard k: SHARD_PATTERN.format(k), then LABELS_FILE). A manifest naming any other file
(a user's "thesis.txt") is not one pixeljit wrote: nothing is ever read, written or deleted at a
path taken from inside a manifest otherwise.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .shards import FORMAT_NAME, FORMAT_VERSION, LABELS_FILE, MANIFEST, SHARD_PATTERN

KNOWN_VERSIONS = (FORMAT_VERSION,)
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists shards, classes and skipped files: never this big
MAX_IMAGE_SIDE = 1 << 16  # pixels per side a manifest may declare
MAX_CHANNELS = 4
MAX_COUNT = 1 << 40  # images a manifest may declare (the shard files must really hold them)
PREPARE_HINT = (
    "pack the source again into a new folder, `pixeljit prepare SOURCE --size S "
    "--out NEW_DIR` (--overwrite replaces only a pack whose manifest is intact)"
)


class ManifestError(ValueError):
    """A manifest that is not ours, not readable, or not consistent."""


class ForeignNameError(ManifestError):
    """A manifest listing a plain file name that `prepare` never writes (`name`)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


def _fail(path: Path, what: str) -> ManifestError:
    return ManifestError(f"{path}: {what}; {PREPARE_HINT}")


def read_manifest_json(folder: Path) -> dict:
    """The parsed manifest of `folder`, checked for size, JSON, format name and version only."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {folder} is not a packed set; create one with "
            "`pixeljit prepare SOURCE --size S --out DIR`"
        )
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise _fail(path, f"{size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit of a manifest")
    try:
        with open(path, "rb") as fh:
            manifest = json.loads(fh.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSON, UTF-8, 5000-digit integers, nesting
        raise _fail(path, f"not valid JSON ({type(err).__name__}: {err})") from err
    if not isinstance(manifest, dict):
        raise _fail(path, f"a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT_NAME or version not in KNOWN_VERSIONS:
        raise _fail(
            path,
            f"format {manifest.get('format')!r} v{version!r} is not "
            f"{FORMAT_NAME!r} v{FORMAT_VERSION}",
        )
    return manifest


def member(folder: Path, name: object, manifest_path: Path) -> Path:
    """`folder / name` for a file name read from a manifest, refused unless it stays inside."""
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and os.sep not in name
        and "\0" not in name
        and (os.altsep is None or os.altsep not in name)
    )
    if not plain:
        raise _fail(manifest_path, f"file name {name!r} is not a plain name inside {folder}")
    path = folder / name
    if path.is_symlink():
        try:
            inside = path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
        except (OSError, RuntimeError):  # dangling link or link loop
            inside = False
        if not inside:
            raise _fail(manifest_path, f"{name} is a link that leads outside {folder}")
    return path


def pack_file_names(shard_count: int) -> list[str]:
    """The data files `prepare` writes for a pack of `shard_count` shards, in manifest order:
    the shards (shards.py's SHARD_PATTERN numbered from 0), then the labels (LABELS_FILE)."""
    return [*(SHARD_PATTERN.format(k) for k in range(shard_count)), LABELS_FILE]


OWN_FILES_TEXT = (
    f"{SHARD_PATTERN.format(0)}, {SHARD_PATTERN.format(1)}, …, {LABELS_FILE}, {MANIFEST}"
)


def listed_names(manifest: dict, manifest_path: Path) -> list[str]:
    """Every file name the manifest lists (shards and labels), each checked to be plain and to be
    the name `prepare` gives that file: ForeignNameError for any other (a user's file, say)."""
    entries = manifest.get("shards")
    labels = manifest.get("labels")
    if not isinstance(entries, list) or not isinstance(labels, dict):
        raise _fail(manifest_path, "'shards' must be a list and 'labels' an object")
    names = []
    folder = manifest_path.parent
    for entry, expected in zip([*entries, labels], pack_file_names(len(entries)), strict=True):
        if not isinstance(entry, dict):
            raise _fail(manifest_path, f"file entry {entry!r} is not an object")
        name = member(folder, entry.get("file"), manifest_path).name
        if name != expected:
            raise ForeignNameError(
                f"{manifest_path}: file name {name!r} is not one pixeljit writes (prepare names "
                f"that file {expected}, and a pack holds only {OWN_FILES_TEXT}); {PREPARE_HINT}",
                name,
            )
        names.append(name)
    return names


def _int(manifest_path: Path, what: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(manifest_path, f"{what} is {value!r}, expected an integer in [{low}, {high}]")
    return value


def check_entry(manifest_path: Path, entry: dict) -> tuple[str, int, int, str]:
    """(file, count, bytes, sha256) of one file entry, types and bounds checked."""
    digest = entry.get("sha256")
    if not isinstance(digest, str):
        raise _fail(manifest_path, f"entry {entry.get('file')!r} has no sha256 string")
    return (
        entry["file"],
        _int(manifest_path, f"{entry['file']} count", entry.get("count"), 0, MAX_COUNT),
        _int(manifest_path, f"{entry['file']} bytes", entry.get("bytes"), 0, 1 << 62),
        digest,
    )


def check_layout(manifest_path: Path, manifest: dict) -> tuple[tuple[int, int, int], int, int]:
    """((C, H, W), count, images per shard) of a manifest, types and bounds checked."""
    shape = manifest.get("shape")
    if not isinstance(shape, list) or len(shape) != 3:  # noqa: PLR2004 (C, H, W)
        raise _fail(manifest_path, f"shape {shape!r} is not [C, H, W]")
    channels = _int(manifest_path, "shape[0] (channels)", shape[0], 1, MAX_CHANNELS)
    height = _int(manifest_path, "shape[1] (height)", shape[1], 1, MAX_IMAGE_SIDE)
    width = _int(manifest_path, "shape[2] (width)", shape[2], 1, MAX_IMAGE_SIDE)
    count = _int(manifest_path, "count", manifest.get("count"), 0, MAX_COUNT)
    per_shard = _int(
        manifest_path, "images_per_shard", manifest.get("images_per_shard"), 1, MAX_COUNT
    )
    if math.prod((channels, height, width)) * per_shard > 1 << 62:
        raise _fail(manifest_path, "images_per_shard x image size is out of range")
    return (channels, height, width), count, per_shard
