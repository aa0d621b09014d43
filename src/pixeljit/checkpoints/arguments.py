"""The loaders' arguments (`load_trained`, `load_reference`, `load_safetensors`), checked the same
way before any file is read, so a bad argument is never reported as a damaged checkpoint nor
read as another path: a path is a str or os.PathLike and never empty (an empty path never means
the current folder), a weights choice is a name or None (the default), a device None is the
CPU."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pixeljit.devices import as_device

# the flag and the keyword that choose the weights, as messages name them
WEIGHTS_CHOICE = "--weights on the command line, weights= in Python"


def check_path(value, name: str, expected: str) -> Path:
    """`value` as a Path: TypeError for anything but a str or os.PathLike of text (None, a
    number, bytes), ValueError for an empty one. `expected`: what to pass, for the message."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str):
        bytes_fix = " (bytes: pass path.decode())" if isinstance(text or value, bytes) else ""
        raise TypeError(f"{name} must be a path to {expected} (a str or pathlib.Path), got "
                        f"{type(value).__name__}{bytes_fix}")  # fmt: skip
    if not text:
        raise ValueError(f"{name} is empty: pass {expected} (an empty path never means the "
                         "current folder)")  # fmt: skip
    return Path(text)


def check_weights(weights, names: str) -> str | None:
    """A weights choice: None (the default) or a non-empty name; `names` lists the names, e.g.
    "'ema', 'ema:<decay>' or 'model'"."""
    if weights is None:
        return None
    if not isinstance(weights, str):
        raise TypeError(f"weights must be a name such as {names} (or None for the default), "
                        f"got {type(weights).__name__}")  # fmt: skip
    if not weights:
        raise ValueError(f"weights is empty ({WEIGHTS_CHOICE}): pass {names}, or leave it "
                         "out (None) for the default")  # fmt: skip
    return weights


def device_or_cpu(device) -> torch.device:
    """`device` as a device this machine has (`as_device`); None is the CPU, as for
    `create_model`."""
    return as_device("cpu" if device is None else device)
