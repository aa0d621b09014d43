"""Generated images at the edges: float [−1, 1] → uint8, labelled grids, atomic PNG / npz files.

Shared by `pixeljit sample`, the training loop's preview grids and the demo.
"""

from __future__ import annotations

import csv
import io
import math
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pixeljit.files.atomic import atomic_write_stream, atomic_write_text
from pixeljit.files.image_set import LABELS_CSV  # noqa: F401  (defined where torch is not needed)

PIXEL_MAX = 255
GRID_PADDING = 2  # pixels between grid cells
GRID_BACKGROUND = 255  # white
LABEL_FONT_SIZE = 12
LABEL_MARGIN = 4  # pixels around a row label
LABEL_COLOUR = 0  # black
NPZ_IMAGES_KEY = "arr_0"  # the ADM / torch-fidelity convention: (N, H, W, C) uint8
NPZ_LABELS_KEY = "labels"  # (N,) int64: the class of each image
NPZ_CLASS_NAMES_KEY = "class_names"  # (K,) str: label k's class, as `sample --out X.npz` writes
LABELS_CSV_HEADER = ("file", "label", "class")
MAX_GRID_PIXELS = 2**30  # a grid beyond a gigapixel cannot sensibly be built in memory
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
_MODES = {1: "L", 3: "RGB"}
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp", "Cs")  # controls, line breaks, lone surrogates


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [−1, 1] → uint8 on the CPU, as the authors' evaluation writes them:
    round(clip((x + 1) / 2 · 255, 0, 255))."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.cpu()
    scaled = ((images.detach().float() + 1) / 2 * PIXEL_MAX).clamp(0, PIXEL_MAX).round()
    return scaled.to(torch.uint8).cpu()


def _check_uint8(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) tensor → (N, H, W, C) numpy array."""
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}; "
            "convert with to_uint8 first"
        )
    if images.shape[1] not in _MODES:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _pil(array: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 → PIL image ('L' or 'RGB')."""
    return Image.fromarray(
        array[..., 0] if array.shape[-1] == 1 else array, _MODES[array.shape[-1]]
    )


def class_label(names: Sequence[str] | None, c: int) -> str:
    """What a grid row of class `c` is labelled: its name, else "class c" (a model may have
    more classes than its data set named: `model.num_classes` set above the data's)."""
    return str(names[c]) if names and c < len(names) else f"class {c}"


LABEL_FONT_FILE = "fonts/ttf/DejaVuSans.ttf"  # in matplotlib's data folder (a dependency)


def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The row labels' font: DejaVu Sans, which matplotlib ships (Latin with accents, Greek,
    Cyrillic: class names from folder names such as "Crème brûlée"); Pillow's built-in font
    drew every non-ASCII letter as the same box. That one only if DejaVu cannot be read."""
    import matplotlib

    try:
        return ImageFont.truetype(Path(matplotlib.get_data_path()) / LABEL_FONT_FILE,
                                  LABEL_FONT_SIZE)  # fmt: skip
    except OSError:
        return ImageFont.load_default(size=LABEL_FONT_SIZE)


def label_text(label: object) -> str:
    """A row label as one line of text: control and line-separator characters (a newline in a
    class folder's name) shown escaped as Python writes them (`\\n`, `\\x07`, `\\u2028`), not
    drawn as line breaks or boxes over the next row."""
    return "".join(
        repr(ch)[1:-1] if unicodedata.category(ch) in _CONTROL_CATEGORIES else ch
        for ch in str(label)
    )


def make_grid(
    images: torch.Tensor,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    scale: int = 1,
    padding: int = GRID_PADDING,
) -> Image.Image:
    """A grid PIL image of uint8 images (N, C, H, W), filled row by row.

    `ncols` defaults to ⌈√N⌉. `row_labels` (one string per row) are drawn in a left margin.
    `scale` enlarges each image by pixel repetition (nearest), useful for 28–32 px images.
    """
    array = _check_uint8(images)  # (N, H, W, C)
    n, h, w, c = array.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    if scale < 1:
        raise ValueError(f"scale must be ≥ 1, got {scale}")
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"ncols must be ≥ 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    if ncols * nrows * h * w * scale * scale > MAX_GRID_PIXELS:
        raise ValueError(
            f"a grid of {nrows} × {ncols} images of {h * scale} × {w * scale} px is over "
            f"{MAX_GRID_PIXELS:,} pixels: use fewer columns or a smaller scale"
        )
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"got {len(row_labels)} row labels for {nrows} rows")
    if scale > 1:
        array = array.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    font = label_font() if row_labels else None
    margin = 0
    if row_labels:
        row_labels = [label_text(s) for s in row_labels]  # one line each, control chars shown
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        widths = [probe.textbbox((0, 0), s, font=font)[2] for s in row_labels]
        margin = max(widths) + 2 * LABEL_MARGIN
    width = margin + ncols * w + (ncols + 1) * padding
    height = nrows * h + (nrows + 1) * padding
    fill = GRID_BACKGROUND if c == 1 else (GRID_BACKGROUND,) * 3
    grid = Image.new(_MODES[c], (width, height), fill)
    for k in range(n):
        row, col = divmod(k, ncols)
        grid.paste(
            _pil(array[k]), (margin + padding + col * (w + padding), padding + row * (h + padding))
        )
    if row_labels:
        draw = ImageDraw.Draw(grid)
        ink = LABEL_COLOUR if c == 1 else (LABEL_COLOUR,) * 3
        for row, text in enumerate(row_labels):
            top = padding + row * (h + padding)
            box = draw.textbbox((0, 0), text, font=font)
            draw.text((LABEL_MARGIN, top + (h - box[3]) // 2), text, fill=ink, font=font)
    return grid


def save_png(image: Image.Image, path: str | os.PathLike, durable: bool = True) -> Path:
    """Save a PIL image as PNG, atomically (`durable`: synced to the disk, `atomic_write`)."""
    return atomic_write_stream(path, lambda f: image.save(f, format="PNG"), durable)


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    scale: int = 1,
) -> Path:
    """Float [−1, 1] or uint8 images (N, C, H, W) → one grid PNG (atomic)."""
    return save_png(make_grid(to_uint8(images), ncols, row_labels, scale), path)


def save_pngs(
    images: torch.Tensor, folder: str | os.PathLike, start: int = 0, prefix: str = ""
) -> list[Path]:
    """One PNG per image, named {prefix}{index:06d}.png from `start` (each write atomic, not
    synced one by one: a staged set's commit syncs them all, `files.staged_commit`)."""
    array = _check_uint8(to_uint8(images))
    folder = Path(folder)
    out = []
    for k, img in enumerate(array):
        out.append(save_png(_pil(img), folder / png_name(start + k, prefix), durable=False))
    return out


def png_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a plain PNG file fit to publish, None when it is: a symbolic link (never
    followed: it may lead anywhere, a secret file included), missing, not a regular file, or not
    PNG content (its first bytes)."""
    path = Path(path)
    if path.is_symlink():
        return "is a symbolic link"
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a regular file"
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_MAGIC))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None if head == PNG_MAGIC else "is not a PNG image"


def png_name(index: int, prefix: str = "") -> str:
    """The file `save_pngs` writes image `index` to."""
    return f"{prefix}{index:06d}.png"


def save_labels_csv(
    folder: str | os.PathLike, labels: Sequence[int], class_names: Sequence[str] | None = None
) -> Path:
    """`labels.csv` in a folder of numbered PNGs: one row (file, label, class name) per image,
    image k being labels[k] (atomic; written once every PNG is)."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(LABELS_CSV_HEADER)
    for k, c in enumerate(labels):
        table.writerow((png_name(k), int(c), class_label(class_names, int(c))))
    return atomic_write_text(Path(folder) / LABELS_CSV, text.getvalue())


def save_npz(
    images: torch.Tensor,
    path: str | os.PathLike,
    labels: torch.Tensor | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Images as uint8 (N, H, W, C) under 'arr_0' (the ADM evaluation layout), with 'labels'
    (N,) int64 when given and the names of the label space under 'class_names' (a str array,
    loaded without pickle), so a reader maps labels to a classifier's classes by name; written
    atomically."""
    array = _check_uint8(to_uint8(images))
    arrays = {NPZ_IMAGES_KEY: array}
    if labels is not None:
        arrays[NPZ_LABELS_KEY] = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if arrays[NPZ_LABELS_KEY].shape != (array.shape[0],):
            raise ValueError(f"labels must have shape ({array.shape[0]},)")
        if class_names:
            arrays[NPZ_CLASS_NAMES_KEY] = np.asarray([str(n) for n in class_names], dtype=np.str_)
    return atomic_write_stream(path, lambda f: np.savez(f, **arrays))
