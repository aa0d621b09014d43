"""Image sources for scoring: tensors, folders of PNG/JPEG files (read by `image_folder`), and
ADM-style `.npz` files.

Everything is yielded as uint8 batches (N, C, H, W), lazily, so 50k-image sets never need to
sit in memory at once. `.npz` files hold NHWC uint8 under `arr_0` (the ADM convention) and are
streamed straight out of the zip member.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from pixeljit.data.folders import is_visible_name
from pixeljit.files.image_set import finish_interrupted_set
from pixeljit.files.images import (  # as `sample` writes them
    LABELS_CSV,
    LABELS_CSV_HEADER,
    NPZ_CLASS_NAMES_KEY,
    NPZ_LABELS_KEY,
    class_label,
)
from pixeljit.files.images import NPZ_IMAGES_KEY as NPZ_IMAGE_KEY
from pixeljit.metrics.image_folder import (  # folders of image files are read there
    DEFAULT_BATCH,
    IMAGE_SUFFIXES,  # noqa: F401 (re-exported)
    is_read_image,  # noqa: F401 (re-exported)
    iter_folder_images,
    list_image_files,
)
from pixeljit.metrics.npz_archive import NpyHeader, npz_headers, read_npy_header
from pixeljit.metrics.npz_inputs import MAX_LABEL, check_holds_images, checked_labels
from pixeljit.values import is_integer

NPZ_SUFFIX = ".npz"  # in any case: X.NPZ is an .npz too
MAX_NPZ_CLASS_NAMES = 100_000


def has_npz_suffix(path: str | os.PathLike) -> bool:
    """Whether `path` names an `.npz` file, in any case (X.npz, X.NPZ)."""
    return os.fspath(path).lower().endswith(NPZ_SUFFIX)


def names_npz_file(path: str | os.PathLike) -> bool:
    """Whether `path` names an `.npz` file: the suffix, in any case, and not a folder (a folder
    named x.npz is a folder of images, read as every folder is)."""
    return has_npz_suffix(path) and not Path(path).is_dir()


ImageSource = torch.Tensor | np.ndarray | Iterable[torch.Tensor] | str | os.PathLike


def _to_nchw(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A batch as a tensor, refused unless it is 4-d (N, C, H, W) with C in {1, 3}: a 3-d array
    is ambiguous (one RGB image (3, H, W), or three grey ones (N, H, W)?) and NHWC would be read
    with its rows as channels, either way scoring other images than meant."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        return t  # the extractor names what it got
    shape = tuple(t.shape)
    if t.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W) batches with C = 1 or 3, got shape "
                         f"{shape}: stack single images (C, H, W) into a batch "
                         "(torch.stack(list)), give one image as x[None], and grey (N, H, W) as "
                         "x[:, None]")  # fmt: skip
    if shape[1] not in (1, 3) and shape[3] in (1, 3):
        raise ValueError(f"images must be (N, C, H, W), got shape {shape}, which looks like "
                         "NHWC (channels last): pass x.permute(0, 3, 1, 2) (numpy: "
                         "x.transpose(0, 3, 1, 2))")  # fmt: skip
    return t


def check_batch_size(batch_size: int, name: str = "batch_size") -> int:
    """`batch_size` as a whole number ≥ 1, or a ValueError naming `name`."""
    if not is_integer(batch_size):
        raise TypeError(f"{name} must be a whole number ≥ 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name} must be ≥ 1 (images per batch), got {batch_size}")
    return int(batch_size)


def iter_batches(source: ImageSource, batch_size: int = DEFAULT_BATCH) -> Iterator[torch.Tensor]:
    """uint8 batches (n ≤ batch_size, C, H, W) from a tensor/array (N, C, H, W), an iterable of
    such batches (passed through as they come), a folder of images or an `.npz` path."""
    batch_size = check_batch_size(batch_size)
    if isinstance(source, (str, os.PathLike)):
        yield from iter_path_images(source, batch_size)
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        yield from _to_nchw(source).split(batch_size)
    else:
        for batch in source:
            yield _to_nchw(batch)


def _not_images(path: Path) -> Exception:
    """The error for a path that is neither a folder nor an `.npz` file."""
    if not path.exists():
        return FileNotFoundError(f"{path} does not exist: give a folder of images or an .npz file")
    return ValueError(f"{path} is neither a folder of images nor an .npz file")


def iter_path_images(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH):
    """Batches from a folder of images or an `.npz` file of NHWC uint8 images."""
    path = Path(path)
    if path.is_dir():
        return iter_folder_images(path, batch_size)
    if has_npz_suffix(path) and path.is_file():
        return iter_npz_images(path, batch_size=batch_size)
    raise _not_images(path)


def count_path_images(path: str | os.PathLike) -> int:
    """How many images a folder or an `.npz` holds, from the listing or the array's header alone
    (nothing is decoded)."""
    path = Path(path)
    if path.is_dir():
        return len(list_image_files(path))
    if has_npz_suffix(path) and path.is_file():
        headers = npz_headers(path)
        header = headers[npz_image_key(path, headers)]
        return int(header.shape[0]) if header.shape else 0
    raise _not_images(path)


def npz_image_key(path: str | os.PathLike, headers: dict, key: str = NPZ_IMAGE_KEY) -> str:
    """`key`, checked to be the one image array (4-d, NHWC) of an `.npz` with these headers: a
    file holding several would have only one of them scored, silently; and to hold at least one
    image (an empty file, or an empty array, is refused naming what is missing)."""
    images = sorted(name for name, header in headers.items() if len(header.shape) == 4)
    if len(images) > 1:
        raise ValueError(f"{path} holds {len(images)} image arrays ({', '.join(images)}), so "
                         "which are the images is ambiguous: save one file per image array, "
                         f"each under {NPZ_IMAGE_KEY!r}")  # fmt: skip
    check_holds_images(path, headers, key)
    return key


def check_image_header(path, key: str, header: NpyHeader) -> None:
    """C-ordered NHWC uint8 with 1 or 3 channels and at least one pixel."""
    shape = header.shape
    if (
        header.dtype != np.uint8
        or len(shape) != 4
        or shape[3] not in (1, 3)
        or header.fortran
        or 0 in shape[1:3]
    ):
        raise ValueError(
            f"{path}:{key} must be C-ordered NHWC uint8 with 1 or 3 channels, got "
            f"{header.dtype} {shape}{' (Fortran order)' if header.fortran else ''}"
        )


def iter_npz_images(
    path: str | os.PathLike, key: str = NPZ_IMAGE_KEY, batch_size: int = DEFAULT_BATCH
) -> Iterator[torch.Tensor]:
    """Stream NHWC uint8 images stored under `key` in an `.npz` as (n, C, H, W) batches."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image file {path} is a folder, not an .npz: pass the .npz "
                                "itself (a folder of images: iter_folder_images)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    headers = npz_headers(path)
    header = headers[npz_image_key(path, headers, key)]
    check_image_header(path, key, header)
    shape = header.shape
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        read_npy_header(f)
        n, per_image = shape[0], math.prod(shape[1:])
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            buf = f.read(count * per_image)
            if len(buf) != count * per_image:
                raise ValueError(f"{path}:{key} is truncated at image {start}")
            arr = np.frombuffer(buf, dtype=np.uint8).reshape(count, *shape[1:])
            yield torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())  # (n, C, H, W)


def npz_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The 'labels' (N,) integers ≥ 0 an images `.npz` carries beside its N images, None when
    it has none (a folder, even one named x.npz, or an .npz without them); checked against the
    images' count and refused outside 0 … MAX_LABEL (a uint64 past int64 would wrap)."""
    path = Path(path)
    if not names_npz_file(path):
        return None
    headers = npz_headers(path)
    if NPZ_LABELS_KEY not in headers:
        return None
    header, images = headers[NPZ_LABELS_KEY], headers.get(NPZ_IMAGE_KEY)
    count = images.shape[0] if images is not None and images.shape else None
    if header.dtype.kind not in "iu" or header.shape != (count,):
        raise ValueError(f"{path}: 'labels' must be {count} integers, one per image, got "
                         f"{header.dtype} {header.shape}: drop it or write one per "
                         "image")  # fmt: skip
    with np.load(path, allow_pickle=False) as data:
        return checked_labels(path, data[NPZ_LABELS_KEY])


MAX_LABELS_CSV_BYTES = 64 * 2**20  # one short row per image: millions of rows fit


def folder_labels(path: str | os.PathLike) -> tuple[np.ndarray, dict[int, str]] | None:
    """The labels a folder's `labels.csv` (as `pixeljit sample --out DIR/` and `eval
    --save-images` write it: file, label, class) gives its images, in the folder's image order,
    and the class names it gives them ({label: name}, without the "class c" stand-ins); None for
    a folder without one (or an `.npz`). ValueError says why a labels.csv cannot be used: another
    layout, a row for a missing image, an image without a row, an image listed twice, a label
    past int64, or one label named two ways."""
    folder = Path(path)
    if folder.is_dir():  # its labels.csv is moved in last: a half-moved set has the earlier one
        finish_interrupted_set(folder)
    table = folder / LABELS_CSV
    if not folder.is_dir() or not table.is_file():
        return None
    if table.stat().st_size > MAX_LABELS_CSV_BYTES:
        raise ValueError(f"{table} is over {MAX_LABELS_CSV_BYTES >> 20} MiB")
    # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark
    with open(table, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][:2]) != LABELS_CSV_HEADER[:2]:
        raise ValueError(f"{table} does not start with the header {','.join(LABELS_CSV_HEADER)}")
    by_file: dict[str, tuple[int, int]] = {}  # file: (label, line)
    names: dict[int, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not (row[1].strip().isascii() and row[1].strip().isdigit()):
            raise ValueError(f"{table} line {line}: {','.join(row)!r} is not 'file,label[,class]' "
                             "with a label ≥ 0")  # fmt: skip
        label = int(row[1])
        if label > MAX_LABEL:
            raise ValueError(f"{table} line {line}: label {row[1].strip()} is over {MAX_LABEL} "
                             "(the largest int64): give class indices 0, 1, …")  # fmt: skip
        if row[0] in by_file:
            first, at = by_file[row[0]]
            raise ValueError(f"{table} lists {row[0]} twice: line {at} (label {first}) and line "
                             f"{line} (label {label}); keep one row per image")  # fmt: skip
        by_file[row[0]] = label, line
        name = row[2] if len(row) > 2 else ""
        if name and name != class_label(None, label):
            if names.setdefault(label, name) != name:
                raise ValueError(f"{table} names label {label} both {names[label]!r} and {name!r}")
    files = [p.name for p in list_image_files(folder)]
    missing = [name for name in files if name not in by_file]
    if missing:
        more = f" (nor for {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{table} has no row for {missing[0]}{more}")
    extra = sorted(set(by_file) - set(files))
    if extra:
        entry = folder / extra[0]
        hidden = not is_visible_name(extra[0]) and entry.exists()
        why = "is hidden ('.*'), so not read as an image" if hidden else f"{folder} does not hold"
        if entry.is_dir():  # x.png/ is a subfolder, and only the top level's images are read
            why = "is a folder, not an image file (only the top level's image files are read)"
        raise ValueError(f"{table} lists {extra[0]}, which {why}")
    return np.array([by_file[name][0] for name in files], dtype=np.int64), names


def load_images(source: ImageSource, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """All images of a source as one uint8 tensor (N, C, H, W) (for small sets)."""
    batches = list(iter_batches(source, batch_size))
    if not batches:  # torch.cat would say only "expected a non-empty list of Tensors"
        raise ValueError(f"the image source {_source_text(source)} yielded no images: give at "
                         "least one")  # fmt: skip
    return torch.cat(batches)


def _source_text(source: ImageSource) -> str:
    """A path as itself, anything else by its type (a list of batches is not worth printing)."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def npz_class_names(path: str | os.PathLike) -> list[str] | None:
    """The 'class_names' (K,) strings an images `.npz` names its labels by (`pixeljit sample`
    writes them), None when it has none (or is a folder, even one named x.npz)."""
    path = Path(path)
    if not names_npz_file(path):
        return None
    header = npz_headers(path).get(NPZ_CLASS_NAMES_KEY)
    if header is None:
        return None
    if header.dtype.kind != "U" or len(header.shape) != 1 or header.shape[0] > MAX_NPZ_CLASS_NAMES:
        raise ValueError(f"{path}: 'class_names' must be a 1-D array of at most "
                         f"{MAX_NPZ_CLASS_NAMES:,} strings, got {header.dtype} {header.shape}: "
                         "drop it or write one name per class")  # fmt: skip
    with np.load(path, allow_pickle=False) as data:
        return [str(name) for name in data[NPZ_CLASS_NAMES_KEY]]
