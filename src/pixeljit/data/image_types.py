"""Which files of an image folder are images pixeljit reads, and the one line that says what was
left out (`prepare`, and `train --data DIR` / `eval --make-ref DIR` packing a folder).

Images are recognised by extension: the still-image formats Pillow decodes on its own that data
sets come in. Left out on purpose (named as "not an image type pixeljit reads", never dropped
without a word): icons (.ico, .cur, .icns: several pictures of one icon, mostly tiny, of which
Pillow picks one), documents and vector formats (.pdf, which Pillow only writes; .eps, .ps, .wmf,
.emf, which need Ghostscript or Windows), float or scientific data (.pfm, .fits, .hdf, .grib:
no 8-bit meaning, or stubs Pillow cannot decode), animations and multi-page containers (.fli,
.dcx, .mpo), layered editor files (.psd) and rare niche formats (.qoi, .dds, .blp, .xbm, …).
Converting such a file to PNG packs it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pixeljit.files.kinds import special_file_kind

from .text import utf8_text

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp"}
    | {".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".tga", ".pcx", ".sgi"}
    | {".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx"}  # JPEG 2000
)
# files operating systems and file managers leave in folders (hidden names: any starting '.')
OS_LITTER = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
_SHOWN_TYPES = 6  # extensions named in the line, the most frequent first


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_visible_name(name: str) -> bool:
    return not name.startswith(".")


def is_litter(name: str) -> bool:
    """A hidden name ('.DS_Store', macOS' '._x.png') or a file an OS leaves (Thumbs.db)."""
    return not is_visible_name(name) or name.lower() in OS_LITTER


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _suffix_text(path: Path) -> str:
    return utf8_text(path.suffix.lower()) or "no extension"


def ignored_summary(ignored: list[str]) -> str:
    """One line saying what an image folder's scan left out, by kind, each with an example:
    files of a type pixeljit does not read (by extension, with the fix), images beside class
    folders (layout classes reads only the class sub-folders), hidden or system entries, and
    pipes, sockets or devices."""
    kinds: dict[str, list[Path]] = {"type": [], "beside": [], "litter": [], "special": []}
    for text in ignored:
        path = Path(text)
        if is_litter(path.name):
            kinds["litter"].append(path)
        elif os.path.lexists(path) and special_file_kind(path) is not None:
            kinds["special"].append(path)
        elif is_image_file(path):  # a flat scan takes every image: these lay beside classes
            kinds["beside"].append(path)
        else:
            kinds["type"].append(path)
    first = {kind: utf8_text(str(paths[0])) for kind, paths in kinds.items() if paths}
    count = {kind: len(paths) for kind, paths in kinds.items()}
    parts = []
    if count["type"]:
        found = Counter(_suffix_text(p) for p in kinds["type"]).most_common()
        types = ", ".join(s if n == 1 else f"{s} ×{n}" for s, n in found[:_SHOWN_TYPES])
        types += ", …" if len(found) > _SHOWN_TYPES else ""
        parts.append(f"{count['type']} not an image type pixeljit reads ({types}; e.g. "
                     f"{first['type']}: convert images to PNG or JPEG to pack them)")  # fmt: skip
    if count["beside"]:
        images = _counted(count["beside"], "image", "images")
        parts.append(f"{images} beside the class folders, which only the class sub-folders are "
                     f"read from (e.g. {first['beside']})")  # fmt: skip
    if count["litter"]:
        litter = _counted(count["litter"], "hidden or system entry", "hidden or system entries")
        parts.append(f"{litter} (names starting with '.', Thumbs.db, desktop.ini; e.g. "
                     f"{first['litter']})")  # fmt: skip
    if count["special"]:
        special = _counted(count["special"], "pipe, socket or device", "pipes, sockets or devices")
        parts.append(f"{special} (e.g. {first['special']})")
    return f"ignored {_counted(len(ignored), 'entry', 'entries')}, not packed: {'; '.join(parts)}"
