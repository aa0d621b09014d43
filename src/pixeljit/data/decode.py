"""One image file -> (C, size, size) uint8, for `prepare` (in this process or a decoding worker).

Pillow's warnings while it reads a file (a damaged TIFF tag, a truncated read, corrupt EXIF) name
no file: they are caught per file and said again naming it (`in/x.tif: Truncated File Read`).
An image over MAX_IMAGE_PIXELS gets one message naming the limit and the fix, whether Pillow
refuses it on opening (over its own, higher limit) or our header check (`check_pixels`' rule)
does.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pixeljit.files.kinds import special_file_kind

from .text import utf8_text
from .transforms import MAX_IMAGE_PIXELS, image_to_chw

DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)
_SIDE = math.isqrt(MAX_IMAGE_PIXELS)  # 8192
SHRINK_HINT = f"shrink it to at most {_SIDE} x {_SIDE} pixels, or remove it"
_PILLOW_SIZE = re.compile(r"Image size \((\d+) pixels\)")  # Pillow's DecompressionBombError


def too_large(declared: str) -> ValueError:
    """The one message for an image whose header declares more than MAX_IMAGE_PIXELS (whether
    Pillow refused it on opening, over its own higher limit, or our check did)."""
    return ValueError(
        f"image of {declared} is over the limit of {MAX_IMAGE_PIXELS:,} pixels (a decompression "
        f"bomb, or far larger than any training image): {SHRINK_HINT}"
    )


def pillow_too_large(err: Exception) -> ValueError:
    """Pillow's DecompressionBombError in the words of `too_large`."""
    found = _PILLOW_SIZE.search(str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow opens"
    return too_large(f"{pixels} (as its header declares)")


def refuse_special(path: str | os.PathLike) -> None:
    """A pipe, socket or device (or a link to one) refused, before it is opened."""
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(
            f"not a regular file but {kind}; pipes, sockets and devices are never opened "
            "(reading one may wait forever): remove it or replace it with the image file"
        )


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` (header only) and refuse, before any pixel is decoded, a pipe / socket /
    device (never opened: reading one may wait forever) or an image over MAX_IMAGE_PIXELS."""
    refuse_special(path)
    with warnings.catch_warnings():  # `too_large` says it in one line, with a lower cap
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as err:  # over Pillow's limit, named in its words
            raise pillow_too_large(err) from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:  # from the header, before anything is decoded
        img.close()
        raise too_large(f"{width}x{height} = {width * height:,} pixels")
    return img


def _decode(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    with open_image(path) as img:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # upright, as viewers show it (phone photos)
        return image_to_chw(img, size, channels)


def decode_image(
    path: str | os.PathLike, size: int, channels: int, notes: list[str] | None = None
) -> np.ndarray:
    """Open, fully decode, convert and ADM-crop one file -> (C, size, size) uint8.

    Raises one of DECODE_ERRORS for a corrupt, truncated or unsupported file, or one whose
    header declares more than MAX_IMAGE_PIXELS (a decompression bomb). Pillow's warnings while
    reading it are appended to `notes` (each once, in order), or, without `notes`, warned again
    naming the file (`path: message`).
    """
    said: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `too_large` says it
            try:
                return _decode(path, size, channels)
            finally:
                said.extend(dict.fromkeys(str(w.message).strip() for w in caught))
    finally:  # once the caught warnings' handlers are back
        if notes is not None:
            notes.extend(said)
        else:
            warn_notes(path, said)


def warn_notes(path: str | os.PathLike, notes: list[str]) -> None:
    """Say again each of Pillow's warnings about one file, naming the file."""
    for note in notes:
        warnings.warn(f"{utf8_text(os.fspath(path))}: {note}", UserWarning, stacklevel=2)


def decode_task(task: tuple[str, int, int]) -> tuple[np.ndarray | None, str, list[str]]:
    """Worker entry point: (array, "", notes) or (None, reason, notes), `notes` Pillow's
    warnings about the file; never raises for a bad image."""
    path, size, channels = task
    notes: list[str] = []
    try:
        return decode_image(path, size, channels, notes), "", notes
    except DECODE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}", notes
