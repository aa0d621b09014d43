"""Classifier-free guidance with the CFG interval, as a wrapper around a denoiser.

The guided velocity is v_u + w·(v_c − v_u) (guidance in v-space, §5c), applied only to rows with
low < t < high, with `low == 0` meaning no lower bound: exactly the authors' mask
`(t < high) & ((low == 0) | (t > low))`, evaluated in float32 like theirs. Conditional and
unconditional rows go through the network in ONE batched forward (concatenated along the batch),
and the network only ever sees two batch shapes, N and 2N (so a compiled network or a captured
CUDA graph is built at most twice per run):
- one time for the batch (what the solvers pass) outside the interval, or w == 1: N conditional
  rows, no unconditional pass at all; the velocity is v_c, which the formula gives for w = 1;
- one time for the batch inside the interval: 2N rows, [conditional; unconditional];
- per-row times with some rows inside: 2N rows as well (a fixed shape rather than N + #inside),
  and the rows outside the interval take v_c, selected with `torch.where`.

Times reach the field as host (CPU) tensors, so deciding which rows need the unconditional pass
costs no device synchronisation; a batch-wide time becomes a device fill, not a copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch

from pixeljit.diffusion.objective import (
    DEFAULT_T_MIN,
    PREDICTIONS,
    Denoiser,
    finite_number,
    to_velocity,
)

Tensor = torch.Tensor


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """Validate a CFG interval (low, high) ⊂ [0, 1] with low < high (open: an interval with
    low = high holds no t, so guidance would never apply)."""
    if isinstance(interval, (str, bytes)) or not isinstance(interval, Iterable):
        raise ValueError(f"interval must be two numbers (low, high), got {interval!r}")
    bounds = list(itertools.islice(interval, 3))
    if len(bounds) != 2:
        raise ValueError(f"interval must be two numbers (low, high), got {interval!r}")
    low, high = finite_number("interval low", bounds[0]), finite_number("interval high", bounds[1])
    if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
        raise ValueError(f"interval (of CFG) must lie in [0, 1], got ({low}, {high})")
    if low >= high:
        raise ValueError(f"interval (of CFG) needs low < high, got ({low}, {high})"
                         + (": it is open, so it would hold no t (cfg 1 turns guidance off)"
                            if low == high else ""))  # fmt: skip
    return low, high


def guidance_mask(t: Tensor, interval: tuple[float, float]) -> Tensor:
    """Boolean mask of the rows that get guidance: (t < high) & ((low == 0) | (t > low)).

    t is compared in float32 (as the authors' float32 time grid is), so e.g. t = float32(0.1)
    is not inside an interval starting at 0.1.
    """
    low, high = interval
    t32 = t.to(torch.float32)
    return (t32 < high) & ((low == 0) | (t32 > low))


class GuidedField:
    """The ODE right-hand side of a (guided) denoiser: `velocity(z, t)` and `denoised(z, t)`.

    denoiser(z, t, y) returns a quantity of kind `prediction` (x, eps or v); y (N,) int64 labels
    (None for unconditional models); `null_label` is the class index of the unconditional
    branch. t passed to `velocity` is a host tensor, 0-d (one time for the batch) or (N,).
    `calls` counts the denoiser's forward passes and `rows` the rows they processed.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        y: Tensor | None,
        *,
        prediction: str = "x",
        cfg: float = 1.0,
        interval: tuple[float, float] = (0.0, 1.0),
        null_label: int | None = None,
        t_eps: float = 0.05,
        t_min: float = DEFAULT_T_MIN,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        cfg = finite_number("cfg scale", cfg)  # NaN passed `cfg < 0` and made NaN velocities
        if cfg < 0:
            raise ValueError(f"cfg scale must be ≥ 0, got {cfg}")
        if cfg != 1.0 and (y is None or null_label is None):
            raise ValueError(
                "classifier-free guidance (cfg ≠ 1) needs class labels and a null label; "
                "use cfg=1.0 for an unconditional model"
            )
        t_eps = finite_number("t_eps", t_eps)
        if not 0.0 < t_eps <= 1.0:
            raise ValueError(f"t_eps must lie in (0, 1], got {t_eps}")
        self.denoiser = denoiser
        self.y = y
        self.prediction = prediction
        self.cfg = float(cfg)
        self.interval = check_interval(interval)
        self.null_label = null_label
        self.t_eps = t_eps
        self.t_min = t_min
        self.calls = 0
        self.rows = 0
        self._y_pair: Tensor | None = None

    def _forward(self, z: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        self.calls += 1
        self.rows += z.shape[0]
        out = self.denoiser(z, t, y)  # (M, C, H, W), kind `prediction`
        return to_velocity(out.to(z.dtype), self.prediction, z, t, self.t_eps, self.t_min)

    def velocity(self, z: Tensor, t: Tensor) -> Tensor:
        """Guided v̂ (N, C, H, W) at state z (N, C, H, W) and host time t (0-d or (N,))."""
        n = z.shape[0]
        t_host = t.detach().cpu().expand(n) if t.ndim == 0 else t.detach().cpu()  # (N,)
        if t.ndim == 0:  # a fill on the device: no host-to-device copy, no stream sync
            t_dev = torch.full((n,), float(t_host[0]), device=z.device, dtype=z.dtype)
        else:
            t_dev = t_host.to(device=z.device, dtype=z.dtype, non_blocking=True)  # (N,)
        if self.cfg == 1.0:
            return self._forward(z, t_dev, self.y)
        on = guidance_mask(t_host, self.interval)  # (N,) bool, host
        if not bool(on.any()):  # a host tensor: no device sync
            return self._forward(z, t_dev, self.y)
        if self._y_pair is None:  # [labels; null labels], built once per field
            self._y_pair = torch.cat([self.y, torch.full_like(self.y, self.null_label)])
        v = self._forward(torch.cat([z, z]), torch.cat([t_dev, t_dev]), self._y_pair)
        v_c, v_u = v[:n], v[n:]
        guided = v_u + self.cfg * (v_c - v_u)
        if bool(on.all()):  # the common case: one time for the batch, inside the interval
            return guided
        mask = on.to(z.device, non_blocking=True).view(-1, *([1] * (z.ndim - 1)))  # (N, 1, …)
        return torch.where(mask, guided, v_c)

    def data_scale(self, t: Tensor, like: Tensor) -> Tensor:
        """d(t) with x̂ = z + d·v̂ the inverse of how v̂ is formed: max(1−t, t_eps) for
        x-prediction (its v̂ divides by the clamp), 1−t for ε- and v-prediction."""
        t_host = t.detach().cpu()
        d = (1 - t_host).clamp_min(self.t_eps) if self.prediction == "x" else 1 - t_host
        if d.ndim == 0:  # a host scalar multiplies device tensors without a copy
            return d
        d = d.to(device=like.device, dtype=like.dtype, non_blocking=True)
        return d.reshape(-1, *([1] * (like.ndim - 1)))

    def denoised(self, z: Tensor, t: Tensor) -> Tensor:
        """Guided x̂ (N, C, H, W) = z + d(t)·v̂: guidance in v-space seen as a data prediction."""
        return z + self.data_scale(t, z) * self.velocity(z, t)
