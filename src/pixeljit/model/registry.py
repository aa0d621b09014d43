"""The size registry: the paper's JiT-B/L/H/G at patch 16, 32 and 64, and `create_model`."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pixeljit.model.jit import JiT, JiTConfig

# Tab. 9: depth, width, heads, bottleneck, in-context start block, dropout (middle half)
MODEL_SIZES: dict[str, dict] = {
    "B": dict(depth=12, hidden_size=768, num_heads=12, bottleneck_dim=128, in_context_start=4),
    "L": dict(depth=24, hidden_size=1024, num_heads=16, bottleneck_dim=128, in_context_start=8),
    "H": dict(
        depth=32,
        hidden_size=1280,
        num_heads=16,
        bottleneck_dim=256,
        in_context_start=10,
        dropout=0.2,
    ),
    "G": dict(
        depth=40,
        hidden_size=1664,
        num_heads=16,
        bottleneck_dim=256,
        in_context_start=10,
        dropout=0.2,
    ),
}
PATCH_SIZES = (16, 32, 64)
TOKENS_PER_SIDE = 16  # every registry model sees 16 × 16 = 256 patch tokens


def model_names() -> list[str]:
    return [f"JiT-{size}/{patch}" for size in MODEL_SIZES for patch in PATCH_SIZES]


def model_config(name: str, **overrides) -> JiTConfig:
    """The config of a registry model ('JiT-B/16', 'JiT-H/32', ...) with field overrides."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string such as 'JiT-B/16', got {name!r}; "
                         f"choose one of {model_names()}")  # fmt: skip
    try:
        size, patch = name.removeprefix("JiT-").split("/")
        base = dict(MODEL_SIZES[size])
        patch = int(patch)
    except (ValueError, KeyError):
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()}") from None
    base.update(patch_size=patch, image_size=patch * TOKENS_PER_SIDE)
    fields = {f.name for f in dataclasses.fields(JiTConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown JiT config fields {sorted(unknown)}; known: {sorted(fields)}")
    base.update(overrides)
    return JiTConfig(**base)


def create_model(name: str, device: torch.device | str | None = None, **overrides) -> JiT:
    """Build a registry model, e.g. `create_model('JiT-L/32', num_classes=10)`.

    `device='meta'` builds without allocating memory (to count parameters of JiT-G).
    """
    config = model_config(name, **overrides)
    with torch.device(device if device is not None else "cpu"):
        return JiT(config)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
