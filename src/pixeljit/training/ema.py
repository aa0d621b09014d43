"""Exponential moving averages of a model's parameters, several decays in one object.

ema ← decay·ema + (1 − decay)·θ after every optimiser step, for every parameter (the frozen
position table included, as the authors'), with one fused `_foreach_lerp_` per decay and no host
synchronisation. Works on plain tensors and on FSDP2's sharded DTensors alike (each rank keeps
its own shard).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class EMA:
    """Shadow copies of `model`'s parameters for each decay in `decays`."""

    def __init__(self, model: nn.Module, decays: Sequence[float]):
        decays = tuple(float(d) for d in decays)
        if not decays:
            raise ValueError("EMA needs at least one decay")
        if any(not 0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"EMA decays must lie in [0, 1), got {decays}")
        if len(set(decays)) != len(decays):
            raise ValueError(f"EMA decays must be distinct, got {decays}")
        self.decays = decays
        self.names = [name for name, _ in model.named_parameters()]
        params = [p.detach() for p in model.parameters()]
        self.shadows: list[list[torch.Tensor]] = [[p.clone() for p in params] for _ in decays]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        for decay, shadow in zip(self.decays, self.shadows, strict=True):
            torch._foreach_lerp_(shadow, params, 1.0 - decay)

    def index(self, decay: float) -> int:
        try:
            return self.decays.index(float(decay))
        except ValueError:
            raise ValueError(f"no EMA with decay {decay}; have {self.decays}") from None

    @torch.no_grad()
    def copy_to(self, model: nn.Module, decay: float) -> None:
        for p, s in zip(model.parameters(), self.shadows[self.index(decay)], strict=True):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {
            "decays": list(self.decays),
            "names": list(self.names),
            "shadows": [[s.clone() for s in shadow] for shadow in self.shadows],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if tuple(state["decays"]) != self.decays:
            raise ValueError(
                f"checkpoint EMA decays {tuple(state['decays'])} differ from {self.decays}"
            )
        if list(state["names"]) != self.names:
            raise ValueError("checkpoint EMA parameters do not match the model's parameters")
        for shadow, saved in zip(self.shadows, state["shadows"], strict=True):
            for s, v in zip(shadow, saved, strict=True):
                s.copy_(v)
