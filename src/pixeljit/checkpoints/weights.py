"""Putting a state dict into a JiT: checked key by key, built on `meta` first (no double memory)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pixeljit.model import JiT, JiTConfig


def load_state_checked(net: JiT, state: Mapping[str, torch.Tensor]) -> None:
    """load_state_dict with an error that names missing / unexpected keys and shape mismatches."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:5]}")
        raise ValueError("checkpoint does not fit the model: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def build_loaded(
    config: JiTConfig, state: Mapping[str, torch.Tensor], device: torch.device | str | None = None
) -> JiT:
    """A JiT of `config` in eval mode holding `state`: built on `meta`, materialised on `device`
    (default CPU), then loaded with `load_state_checked`."""
    with torch.device("meta"):
        net = JiT(config)
    net = net.to_empty(device=device or "cpu")
    load_state_checked(net, state)
    return net.eval()
