"""The tensors of a checkpoint state: their bytes, the non-finite ones, and the SHA-256 per
tensor (name, dtype, shape, bytes) plus one over every other leaf that every checkpoint file
carries (`run.save_checkpoint`) and `.safetensors` exports carry too, checked on load."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

CHECKSUM_KEY = "checksum"
CHECKSUM_ALGORITHM = "sha256"
OTHER_FIELDS = "<non-tensor fields>"  # the checksum entry covering everything but tensors


def _leaves(obj, path: str = "") -> Iterator[tuple[str, object]]:
    """(dotted path, leaf) over nested dicts / lists / tuples, in a deterministic order."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{path}/{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{path}/{i}")
    else:
        yield path, obj


def tensor_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for _, v in _leaves(state) if torch.is_tensor(v))


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf."""
    return [
        name
        for name, v in _leaves(state)
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def checksums(state: dict, tensors: bool = True) -> dict[str, str]:
    """SHA-256 per tensor (name, dtype, shape, bytes) and one over every other leaf's repr;
    `tensors=False`: only the latter (the tensors' bytes are not read)."""
    out, other = {}, hashlib.new(CHECKSUM_ALGORITHM)
    for name, value in _leaves({k: v for k, v in state.items() if k != CHECKSUM_KEY}):
        if torch.is_tensor(value):
            if not tensors:
                continue
            h = hashlib.new(CHECKSUM_ALGORITHM)
            h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy())
            out[name] = h.hexdigest()
        else:
            other.update(f"{name}={value!r};".encode())
    out[OTHER_FIELDS] = other.hexdigest()
    return out


def checksum_mismatches(saved: dict, now: dict) -> list[str]:
    """The names whose recorded and recomputed SHA-256 differ (or that one side lacks), sorted."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
