"""Folders of image files, as `pixeljit eval --images DIR`, `load_images` and
`iter_folder_images` read them, by `pixeljit prepare`'s rules where they apply:

- the files: the image suffixes prepare reads (any case), hidden names skipped, the folder's top
  level only; sub-folders that hold images are warned of by name (`SubfolderImagesWarning`);
- a pipe, socket or device (or a link to one) named like an image is refused before anything
  is opened: reading a named pipe waits for a writer, forever;
- the channel count is the folder's: RGB when any image is colour (its grey ones are then read
  as RGB, as prepare converts them), grey only when all are; told from each file's header (its
  mode, and a palette's colours), without decoding pixels;
- Pillow's warnings while decoding a file ('Truncated File Read', 'Metadata Warning, tag …')
  are said once per file read, naming it;
- an image declaring more than MAX_IMAGE_PIXELS is refused in one message naming it, whether
  our limit (checked from the header) or Pillow's own higher one caught it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pixeljit.data.decode import open_image, pillow_too_large, refuse_special, warn_notes
from pixeljit.data.folders import IMAGE_EXTENSIONS, is_image_file, is_visible_name
from pixeljit.data.transforms import (
    CHANNEL_NAMES,
    COLOUR,
    GREY,
    to_channels,
)
from pixeljit.files.image_set import finish_interrupted_set

IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))  # `pixeljit prepare`'s, so both read one set
DEFAULT_BATCH = 100
MAX_NAMED = 3  # sub-folders named in a warning; the rest counted
# Pillow modes of colour images; every other mode is one channel (1, L, LA, 16- and 32-bit
# grey) or has no 8-bit meaning (float 'F', refused when read). Palettes are looked into.
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})
_PALETTE_MODES = ("P", "PA")
# raw palette layouts Pillow keeps as read from the header: bytes per entry, whose first three
# are its colour (in some order); a grey entry has the three equal in any order
_PACKED_PALETTES = {"RGB": 3, "BGR": 3, "RGBX": 4, "BGRX": 4, "RGBA": 4}


class SubfolderImagesWarning(UserWarning):
    """Sub-folders of an image folder hold images, which are not read (only its top level is)."""


def is_read_image(path: Path) -> bool:
    """Whether a folder entry is one `eval --images` reads, by `pixeljit prepare`'s rule: an
    image suffix (any case), not hidden (macOS' ._x.png, .DS_Store are skipped) and not a
    folder (a subfolder named x.png is a subfolder, and only the top level is read)."""
    return is_visible_name(path.name) and is_image_file(path) and not path.is_dir()


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; a set a killed `pixeljit sample`
    was moving in is finished first (`finish_interrupted_set`: warned, never read half). A pipe,
    socket or device among them is refused by name (opening one may wait forever)."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"image folder {folder} is a file: pass the folder holding "
                                 "the images (an .npz: iter_npz_images)")  # fmt: skip
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    finish_interrupted_set(folder)
    files = sorted(p for p in folder.iterdir() if is_read_image(p))
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
                         + _subfolder_hint(folder))  # fmt: skip
    for path in files:  # listed, not opened: a named pipe would wait forever
        try:
            refuse_special(path)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return files


def subfolders_with_images(folder: str | os.PathLike) -> list[Path]:
    """The visible sub-folders of `folder` holding an image file at any depth, sorted: what
    reading only the top level leaves out. Names alone are looked at (nothing is opened);
    hidden and unreadable folders are not entered, nor links to folders below the first level."""
    folder = Path(folder)
    subs = sorted(p for p in folder.iterdir() if is_visible_name(p.name) and p.is_dir())
    return [sub for sub in subs if _holds_images(sub)]


def _holds_images(folder: Path) -> bool:
    for _, dirs, names in os.walk(folder):  # unreadable folders are skipped (onerror=None)
        dirs[:] = [d for d in dirs if is_visible_name(d)]
        if any(is_visible_name(name) and is_image_file(Path(name)) for name in names):
            return True
    return False


def _subfolder_hint(folder: Path) -> str:
    """When the images sit in subfolders (only the top level is read), one of them, named."""
    subs = subfolders_with_images(folder)
    if not subs:
        return ""
    return (f"; only its top level is read, and its subfolder {subs[0]} holds images: point at "
            "the folder that holds the images themselves")  # fmt: skip


def warn_unread_subfolders(folder: str | os.PathLike, stacklevel: int = 1) -> None:
    """A `SubfolderImagesWarning` naming the sub-folders of `folder` that hold images, which are
    not read with its top level; nothing when there are none. `stacklevel` as `warnings.warn`
    takes it, from the caller."""
    subs = subfolders_with_images(folder)
    if not subs:
        return
    names = ", ".join(str(s) for s in subs[:MAX_NAMED])
    more = f" (and {len(subs) - MAX_NAMED} more)" if len(subs) > MAX_NAMED else ""
    which = f"sub-folder {names}" if len(subs) == 1 else f"sub-folders {names}{more}"
    warnings.warn(f"{folder}: only its top level is read, so the images in its {which} are "
                  f"left out (not scored): move them up into {folder} to include them, or pass "
                  "each folder on its own", SubfolderImagesWarning,
                  stacklevel=stacklevel + 1)  # fmt: skip


def _pillow_too_large(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: {pillow_too_large(err)}")


def _unreadable(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable image ({err}); remove or replace it")


def _open(path: Path) -> Image.Image:
    """`path` opened by Pillow (its header read, nothing decoded), refused in one line naming
    it when it is a pipe, socket or device, not an image, or over MAX_IMAGE_PIXELS
    (`data.decode.open_image`, prepare's rules and words)."""
    try:
        return open_image(path)
    except ValueError as err:  # a pipe / socket / device, or too large: said by open_image
        raise ValueError(f"{path}: {err}") from None
    except (OSError, SyntaxError) as err:
        raise _unreadable(path, err) from None


def _is_colour(img: Image.Image) -> bool:
    """Whether an opened image is colour: a colour mode, or a palette holding a colour that is
    not grey (a palette of greys is grey). Told from the header; only a palette Pillow keeps
    in another layout (TIFF's planar one) is decoded to be looked at."""
    if img.mode not in _PALETTE_MODES:
        return img.mode in _COLOUR_MODES
    palette = img.palette
    layout = (palette.rawmode or palette.mode) if palette is not None else None
    step = _PACKED_PALETTES.get(layout)
    data = bytes(palette.palette) if step else b""
    data = data[: len(data) - len(data) % step] if step else data
    if data:
        return not data[0::step] == data[1::step] == data[2::step]
    colours = img.getpalette("RGB")  # loads the image
    return not (colours and colours[0::3] == colours[1::3] == colours[2::3])


def folder_channels(files: list[Path]) -> tuple[int, Path | None]:
    """(COLOUR, the first colour file) when any of `files` is colour, else (GREY, None); from
    the files' headers, each refused as `_open` refuses it. Pillow's warnings are left to the
    read that decodes the file (said once, there)."""
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = _open(path)
            with img:
                try:
                    colour = _is_colour(img)
                except Image.DecompressionBombError as err:
                    raise _pillow_too_large(path, err) from None
                except (OSError, SyntaxError, ValueError) as err:
                    raise _unreadable(path, err) from None
        if colour:
            return COLOUR, path
    return GREY, None


def folder_image_shape(folder: str | os.PathLike) -> tuple[tuple[int, int, int], Path | None]:
    """((C, H, W), the first colour file or None) of the images of `folder`, as
    `iter_folder_images` reads them, from headers alone (no pixel decoded, no warning said):
    the folder's channel count, and the first image's size as stored (an EXIF orientation,
    applied when read, swaps H and W of a non-square image)."""
    files = list_image_files(folder)
    channels, colour = folder_channels(files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _open(files[0]) as img:
            width, height = img.size
    return (channels, height, width), colour


def _read_image(path: Path, channels: int) -> np.ndarray:
    """One image as (C, H, W) uint8 with `channels` (1 or 3); the pixels are `pixeljit
    prepare`'s (`to_channels`): 16 bits keep their top 8 (exact for 8-bit values stored as
    v·257), transparency goes over white, grey becomes RGB with three equal channels."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _open refuses them
        with _open(path) as img:
            try:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # upright, as prepare packs it
            except Image.DecompressionBombError as err:
                raise _pillow_too_large(path, err) from None
            except (OSError, ValueError, SyntaxError) as err:
                raise _unreadable(path, err) from None
            try:  # a mode without an 8-bit meaning (32-bit 'I', float 'F'), as prepare refuses
                arr = np.asarray(to_channels(img, channels))
            except ValueError as err:
                raise ValueError(f"{path}: {err}; remove it or save it with 8 or 16 bits per "
                                 "channel") from None  # fmt: skip
    warn_notes(path, list(dict.fromkeys(str(w.message).strip() for w in caught)))  # as prepare
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def iter_folder_images(
    folder: str | os.PathLike, batch_size: int = DEFAULT_BATCH
) -> Iterator[torch.Tensor]:
    """Batches (n, C, H, W) uint8 of the images in `folder` (sorted, its top level; sub-folders
    holding images are warned of): C is 3 when any image is colour, its grey ones then read as
    RGB, and 1 when all are grey; all must share one size."""
    files = list_image_files(folder)
    warn_unread_subfolders(folder, stacklevel=2)
    channels, _ = folder_channels(files)
    first: tuple[Path, tuple[int, ...]] | None = None
    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start : start + batch_size]:
            arr = _read_image(path, channels)
            first = first or (path, arr.shape)
            if arr.shape != first[1]:
                (_, h, w), (_, fh, fw) = arr.shape, first[1]
                raise ValueError(f"{path} is {h}×{w} px, but the first image, {first[0]}, is "
                                 f"{fh}×{fw}: bring them to one size first (crop or resize "
                                 "them)")  # fmt: skip
            arrays.append(arr)
        yield torch.from_numpy(np.stack(arrays))


def channels_text(channels: int) -> str:
    """'grey (1 channel)', 'RGB (3 channels)'."""
    return f"{CHANNEL_NAMES[channels]} ({channels} channel{'s' if channels > 1 else ''})"
