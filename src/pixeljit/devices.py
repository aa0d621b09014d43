"""`as_device`: a device name read as a `torch.device` this machine has, or a ValueError naming
why not (shared by `create_model`, `sample()`, `load_trained` and training)."""

from __future__ import annotations

import torch

# accelerator types: the name a message gives them, and how torch says whether one is here
ACCELERATORS = {
    "cuda": ("CUDA", lambda: torch.cuda.is_available(), lambda: torch.cuda.device_count()),
    "mps": ("MPS (Apple GPU)", lambda: torch.backends.mps.is_available(), lambda: 1),
}


def as_device(name, kinds: str = "cpu, cuda, cuda:N, mps", what: str = "device") -> torch.device:
    """`name` (a string or a torch.device) as a torch.device this machine has: a misspelt name,
    'meta' unless `kinds` names it (weights there hold no values), an accelerator this machine
    lacks or an index past its count is refused, the message (led by `what`, e.g. a flag)
    listing `kinds` to pass instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {name!r} is not a device ({kinds})") from None
    shown = str(device)
    if device.type == "meta" and "meta" not in kinds.split(", "):
        raise ValueError(f"{what} 'meta' holds no values, so it cannot be used here: pass {kinds}")
    if device.type in ("cpu", "meta"):
        return device
    label, available, count = _accelerator(device.type)
    if not available():
        here = [k for k in kinds.split(", ") if _usable(k.split(":")[0])]
        raise ValueError(
            f"{what} {shown!r}: {label} is not available here; use {', '.join(map(repr, here))}"
        )
    if device.index is not None and device.index >= count():
        raise ValueError(
            f"{what} {shown!r}: this machine has {count()} {label} device(s), numbered from 0"
        )
    return device


def _accelerator(kind: str):
    """(label, is_available, device_count) of an accelerator type."""
    return ACCELERATORS.get(kind) or _other(kind)


def _other(kind: str):
    """An accelerator type torch knows by a module of that name (xpu, ...), or none."""
    module = getattr(torch, kind, None)
    is_available = getattr(module, "is_available", lambda: False)
    device_count = getattr(module, "device_count", lambda: 1)
    return kind.upper(), is_available, device_count


def _usable(kind: str) -> bool:
    if kind in ("cpu", "meta"):
        return True
    return _accelerator(kind)[1]()
