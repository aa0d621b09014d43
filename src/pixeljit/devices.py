"""`as_device`: a device name read as a `torch.device` this machine has, or a ValueError naming
why not (shared by `create_model` and `sample()`)."""

from __future__ import annotations

import torch


def as_device(name, kinds: str = "cpu, cuda, cuda:N") -> torch.device:
    """`name` (a string or a torch.device) as a torch.device; a misspelt name or CUDA on a machine
    without it is refused, `kinds` listing what to pass instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device ({kinds})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        others = ", ".join(repr(k) for k in kinds.split(", ") if not k.startswith("cuda"))
        raise ValueError(f"device {str(device)!r}: CUDA is not available here; use {others}")
    return device
