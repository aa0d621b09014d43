"""What an images `.npz` given to `eval` must hold, each refusal naming the file and the array:
some array at all, an images array with at least one image, and labels that are class indices
an int64 holds (a uint64 label ≥ 2**63 would wrap to a negative one when read as int64)."""

from __future__ import annotations

import numpy as np

from pixeljit.files.images import NPZ_IMAGES_KEY, NPZ_LABELS_KEY

MAX_LABEL = int(np.iinfo(np.int64).max)  # labels are held as int64
LABEL_RANGE = f"0 … {MAX_LABEL} (2**63 − 1, the largest int64)"
IMAGES_LAYOUT = "NHWC uint8 images"


def check_holds_images(path, headers: dict, key: str = NPZ_IMAGES_KEY) -> None:
    """An images `.npz` with these headers holds `key`, and at least one image under it: an
    empty file, or an empty array, is refused naming what is missing."""
    if not headers:
        save = f"np.savez(path, {key}=images)"
        raise ValueError(f"{path} holds no arrays (an empty .npz): an images .npz holds its "
                         f"{IMAGES_LAYOUT} under {key!r} ({save})")  # fmt: skip
    if key not in headers:
        raise ValueError(f"{path} has no array {key!r} (keys: {sorted(headers)}): an images .npz "
                         f"holds its {IMAGES_LAYOUT} under {key!r}")  # fmt: skip
    shape = headers[key].shape
    if shape and shape[0] == 0:
        raise ValueError(f"{path}: array {key!r} holds 0 images (shape {shape}): write at least "
                         "one image into it")  # fmt: skip


def checked_labels(path, labels: np.ndarray, key: str = NPZ_LABELS_KEY) -> np.ndarray:
    """Integer `labels` as int64, refused (naming the file, the array and the allowed range)
    when one lies outside 0 … MAX_LABEL: a uint64 one past it would wrap to a negative label."""
    if labels.size:
        # compared as Python integers: exact for every int and uint dtype (a uint64 against an
        # int compares as float64 under NumPy 1, where 2**63 + 5 equals 2**63 − 1)
        low, high = int(labels.min()), int(labels.max())
        bad = low if low < 0 else high if high > MAX_LABEL else None
        if bad is not None:
            raise ValueError(f"{path}: array {key!r} holds the label {bad}, outside the allowed "
                             f"range {LABEL_RANGE}: write each image's class index "
                             "(0, 1, …)")  # fmt: skip
    return labels.astype(np.int64)
