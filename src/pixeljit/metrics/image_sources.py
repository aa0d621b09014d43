"""Image sources for scoring: tensors, folders of PNG/JPEG files, and ADM-style `.npz` files.

Everything is yielded as uint8 batches (N, C, H, W), lazily, so 50k-image sets never need to
sit in memory at once. `.npz` files hold NHWC uint8 under `arr_0` (the ADM convention) and are
streamed straight out of the zip member.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NPZ_IMAGE_KEY = "arr_0"
DEFAULT_BATCH = 100

ImageSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor] | str | os.PathLike


def _to_nchw(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim == 3:
        t = t.unsqueeze(1)  # (N, H, W) grey -> (N, 1, H, W)
    return t


def iter_batches(source: ImageSource, batch_size: int = DEFAULT_BATCH) -> Iterator[torch.Tensor]:
    """uint8 batches (n ≤ batch_size, C, H, W) from a tensor/array (N, C, H, W), an iterable of
    such batches (passed through as they come), a folder of images or an `.npz` path."""
    if isinstance(source, (str, os.PathLike)):
        yield from iter_path_images(source, batch_size)
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        yield from _to_nchw(source).split(batch_size)
    else:
        for batch in source:
            yield _to_nchw(batch)


def iter_path_images(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH):
    """Batches from a folder of images or an `.npz` file of NHWC uint8 images."""
    path = Path(path)
    if path.is_dir():
        return iter_folder_images(path, batch_size)
    if path.suffix == ".npz" and path.is_file():
        return iter_npz_images(path, batch_size=batch_size)
    raise FileNotFoundError(f"{path} is neither a folder of images nor an .npz file")


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _read_image(path: Path) -> np.ndarray:
    """One image as (C, H, W) uint8: grey stays one channel, everything else becomes RGB."""
    with Image.open(path) as img:
        mode = "L" if img.mode in ("L", "I;16", "1") else "RGB"
        arr = np.asarray(img.convert(mode))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def iter_folder_images(
    folder: str | os.PathLike, batch_size: int = DEFAULT_BATCH
) -> Iterator[torch.Tensor]:
    """Batches (n, C, H, W) uint8 of the images in `folder` (sorted); all must share one shape."""
    files = list_image_files(folder)
    shape = None
    for start in range(0, len(files), batch_size):
        arrays = [_read_image(p) for p in files[start : start + batch_size]]
        for p, a in zip(files[start : start + batch_size], arrays, strict=True):
            shape = shape or a.shape
            if a.shape != shape:
                raise ValueError(f"{p} has shape {a.shape}, the first image {shape}: resize first")
        yield torch.from_numpy(np.stack(arrays))


def iter_npz_images(
    path: str | os.PathLike, key: str = NPZ_IMAGE_KEY, batch_size: int = DEFAULT_BATCH
) -> Iterator[torch.Tensor]:
    """Stream NHWC uint8 images stored under `key` in an `.npz` as (n, C, H, W) batches."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        member = key + ".npy"
        if member not in zf.namelist():
            keys = [n.removesuffix(".npy") for n in zf.namelist()]
            raise ValueError(f"{path} has no array {key!r} (keys: {keys})")
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3) or fortran:
                raise ValueError(
                    f"{path}:{key} must be C-ordered NHWC uint8 with 1 or 3 channels, got "
                    f"{dtype} {shape}{' (Fortran order)' if fortran else ''}"
                )
            n, per_image = shape[0], int(np.prod(shape[1:]))
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                buf = f.read(count * per_image)
                if len(buf) != count * per_image:
                    raise ValueError(f"{path}:{key} is truncated at image {start}")
                arr = np.frombuffer(buf, dtype=np.uint8).reshape(count, *shape[1:])
                yield torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())  # (n, C, H, W)


def load_images(source: ImageSource, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """All images of a source as one uint8 tensor (N, C, H, W) (for small sets)."""
    return torch.cat(list(iter_batches(source, batch_size)))
