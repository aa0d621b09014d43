"""The size registry: the paper's JiT-B/L/H/G at patch 16, 32 and 64, `create_model`, and what a
config costs (`count_parameters`, `forward_flops`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pixeljit.devices import as_device
from pixeljit.model.jit import JiT, JiTConfig
from pixeljit.model.layers import TIME_FREQ_DIM, swiglu_hidden

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
    if name not in model_names():  # exactly as written: 'JiT-B/016' or 'B/16' is not a name
        raise ValueError(
            f"unknown model {name!r}; choose one of {model_names()} (for another patch or image "
            "size, override the fields: create_model('JiT-B/16', patch_size=8, image_size=128))"
        )
    size, patch = name.removeprefix("JiT-").split("/")
    base, patch = dict(MODEL_SIZES[size]), int(patch)
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
    device = as_device(device if device is not None else "cpu", "cpu, cuda, cuda:N, mps, meta")
    with device:
        return JiT(config)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def forward_flops(cfg: JiTConfig) -> int:
    """FLOPs of one image's forward pass, 2 per multiply-add, attention included (QKᵀ and AV);
    norms, activations and RoPE are left out (elementwise). Half of it is the paper's "Gflops"
    (GMACs, in-context tokens included): JiT-B/16 at 256 px ≈ 50.5 GFLOP, the paper's 25."""
    d, tokens = cfg.hidden_size, cfg.grid_size**2
    patch_values = cfg.patch_size**2 * cfg.in_channels
    if cfg.bottleneck_dim is None:
        macs = tokens * patch_values * d
    else:
        macs = tokens * (patch_values * cfg.bottleneck_dim + cfg.bottleneck_dim * d)
    macs += TIME_FREQ_DIM * d + d * d  # time embedding MLP
    mlp_hidden = swiglu_hidden(d, cfg.mlp_ratio) if cfg.mlp == "swiglu" else int(d * cfg.mlp_ratio)
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2
    for block in range(cfg.depth):
        n = tokens + (
            cfg.in_context_len if cfg.in_context_len and block >= cfg.in_context_start else 0
        )
        macs += d * 6 * d  # adaLN modulation (one row per image)
        macs += n * d * 4 * d  # qkv and the output projection
        macs += 2 * n * n * d  # QKᵀ and attention × V over all heads
        macs += n * d * mlp_hidden * mlp_matrices
    macs += d * 2 * d + tokens * d * patch_values  # final adaLN and linear
    return 2 * macs
