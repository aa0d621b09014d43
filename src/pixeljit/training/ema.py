"""Exponential moving averages of a model's parameters, several decays in one object.

ema ← decay·ema + (1 − decay)·θ after every optimiser step, for every parameter (the frozen
position table included, as the authors'), evaluated as `lerp(ema, θ, 1 − decay)`, with no host
synchronisation.

One pass updates every decay: the shadows of one parameter for all K decays live in one
(K, *shape) tensor. On a CPU a single `_foreach_lerp_` over these stacks, whose weight is the
column of the K rates, runs one kernel per parameter instead of one per parameter and decay: on a
loaded 2-core CPU each multi-threaded kernel can wait for a descheduled thread, and K = 3
separate `_foreach_lerp_` calls took ~1.3 s a step for JiT-B/16 against ~0.8 s stacked (see
docs/benchmarks.md). On CUDA, whose foreach kernels batch many same-shaped tensors a launch, one
`_foreach_lerp_` takes all K·P (shadow view, parameter) pairs with a list of scalar rates.
`shadows[k][i]` is the view of decay k of parameter i, so the checkpoint format (`state_dict`) is
unchanged, and the values equal a plain per-decay `lerp_` bit for bit.

Works on plain tensors and on FSDP2's sharded DTensors alike: each rank stacks its own local
shards, and `shadows` hands out DTensors wrapping views of them.

With `warmup`, the decay used at update n (n updates came before it) is min(decay, (1 + n) /
(c + n)), c = `warmup_offset` (10: the `num_updates` rule of TensorFlow's
`tf.train.ExponentialMovingAverage`): early updates follow the weights closely, so a slow average
(0.999) is usable after a few thousand steps instead of holding e^(−1) of the random initial
weights after 1000. While the cap binds, update k carries a weight ∝ (k+2)(k+3)…(k+c−1), about
k^(c−2), so a smaller c averages a longer tail (EDM2's power-function EMA, γ = c − 2). Once
every decay is below its cap (n ≥ (c − 1)/(1 − decay) − 1) the update is the plain one, bit for
bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MULTI_TENSOR_DEVICE_TYPES = ("cuda",)  # devices whose foreach kernels batch many tensors a launch
WARMUP_OFFSET = 10.0  # warm-up cap (1 + n) / (WARMUP_OFFSET + n), TensorFlow's constant


def warmup_decay(decay: float, updates: int, offset: float = WARMUP_OFFSET) -> float:
    """The decay of an EMA with warm-up at its update number `updates` (0 for the first)."""
    return min(decay, (1 + updates) / (offset + updates))


def _has_scalar_list_lerp() -> bool:
    """Whether this torch has `_foreach_lerp_` with a list of scalar weights (newer than the
    oldest torch we support); without it the CUDA form runs one call per decay (same values)."""
    try:
        torch._foreach_lerp_([torch.zeros(1)], [torch.ones(1)], [0.5])
    except (RuntimeError, TypeError):
        return False
    return True


SCALAR_LIST_LERP = _has_scalar_list_lerp()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _like(view: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`view` (a local shard) as the parameter's kind of tensor: a DTensor with its sharding for
    a DTensor parameter (sharing the view's memory), else `view` itself."""
    if not hasattr(param, "device_mesh"):
        return view
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        view, param.device_mesh, param.placements, run_check=False, shape=param.shape,
        stride=param.stride(),
    )  # fmt: skip


class EMA:
    """Shadow copies of `model`'s parameters for each decay in `decays`."""

    def __init__(self, model: nn.Module, decays: Sequence[float], warmup: bool = False,
                 warmup_offset: float = WARMUP_OFFSET):  # fmt: skip
        decays = tuple(float(d) for d in decays)
        if not decays:
            raise ValueError("EMA needs at least one decay")
        if any(not 0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"EMA decays must lie in [0, 1), got {decays}")
        if len(set(decays)) != len(decays):
            raise ValueError(f"EMA decays must be distinct, got {decays}")
        self.decays = decays
        if not warmup_offset > 1.0:
            raise ValueError(f"the EMA warm-up offset must exceed 1, got {warmup_offset}")
        self.warmup = warmup
        self.warmup_offset = float(warmup_offset)
        self.names = [name for name, _ in model.named_parameters()]
        params = [p.detach() for p in model.parameters()]
        k = len(decays)
        # (K, *shape) per parameter: every decay's shadow of it, in one tensor
        self._stacks = [_local(p).unsqueeze(0).repeat(k, *([1] * p.ndim)) for p in params]
        # the rates 1 − decay as a (K, 1, …, 1) column per parameter rank and dtype/device,
        # made here so that `update` never copies from the host
        made: dict[tuple, torch.Tensor] = {}
        self._weights = [self._rate(s, decays, made) for s in self._stacks]
        # on CUDA one multi-tensor launch covers many tensors, but only same-shaped pairs: there
        # the K·P views go to one `_foreach_lerp_` with a list of scalar rates (CPU kernels are
        # per tensor, where the stacked form's P kernels beat K·P)
        self._multi_tensor = bool(params) and all(
            s.device.type in MULTI_TENSOR_DEVICE_TYPES for s in self._stacks
        )
        self._views = [stack[j] for j in range(k) for stack in self._stacks]
        self._scalar_rates = [1.0 - d for d in decays for _ in self._stacks]
        self.shadows: list[list[torch.Tensor]] = [
            [_like(stack[j], p) for stack, p in zip(self._stacks, params, strict=True)]
            for j in range(k)
        ]

    @staticmethod
    def _rate(stack: torch.Tensor, decays: tuple[float, ...], made: dict) -> torch.Tensor:
        """The (K, 1, …, 1) column of rates 1 − decay for `stack`'s rank, dtype and device, kept
        in `made` (the configured decays' columns are made once, warm-up decays' each update)."""
        key = (stack.ndim, stack.dtype, stack.device)
        if key not in made:
            rates = torch.tensor([1.0 - d for d in decays], dtype=torch.float64)
            shape = (len(decays),) + (1,) * (stack.ndim - 1)
            made[key] = rates.to(dtype=stack.dtype, device=stack.device).view(shape)
        return made[key]

    def decays_at(self, updates: int | None) -> tuple[float, ...]:
        """The decays that update number `updates` uses (the configured ones without warm-up)."""
        if not self.warmup:
            return self.decays
        if updates is None or updates < 0:
            raise ValueError("an EMA with warm-up needs the update number (updates ≥ 0)")
        return tuple(warmup_decay(d, updates, self.warmup_offset) for d in self.decays)

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int | None = None) -> None:
        """ema ← lerp(ema, θ, 1 − decay) for every decay and parameter, one kernel a parameter;
        `updates` (the number of earlier updates) sets the warm-up decays."""
        params = [_local(p.detach()) for p in model.parameters()]
        if len(params) != len(self._stacks):
            raise ValueError(f"the model has {len(params)} parameters, the EMA {len(self._stacks)}")
        decays = self.decays_at(updates)
        plain = decays == self.decays
        if self._multi_tensor and SCALAR_LIST_LERP:
            rates = self._scalar_rates if plain else [1.0 - d for d in decays for _ in params]
            torch._foreach_lerp_(self._views, params * len(decays), rates)
            return
        if self._multi_tensor:
            for j, decay in enumerate(decays):
                torch._foreach_lerp_(self._views[j * len(params) : (j + 1) * len(params)], params,
                                     1.0 - decay)  # fmt: skip
            return
        ends = [p.unsqueeze(0).expand_as(s) for p, s in zip(params, self._stacks, strict=True)]
        made: dict = {}
        weights = self._weights if plain else [self._rate(s, decays, made) for s in self._stacks]
        torch._foreach_lerp_(self._stacks, ends, weights)

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
