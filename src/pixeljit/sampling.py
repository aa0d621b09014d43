"""ODE samplers of the flow z_t = t·x + (1−t)·ε, from noise (t = 0) to data (t = 1).

Samplers are plain functions over an explicit time grid (a 1-D host tensor t_0 = 0 < … < t_n):
- `euler`: z ← z + (t' − t)·v̂(z, t).
- `heun`: the authors' sampler: Heun's method (explicit trapezoid) on every interval but the
  last, a plain Euler step on the last one (so v̂ is never evaluated at t = 1, where the
  velocity divides by 1 − t). 2(n − 1) + 1 evaluations for n steps.
- `dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022), a multistep solver in data-prediction form.
  Chosen because JiT's network predicts data x̂, which is the smooth quantity along the ODE
  (this is the paper's point), and the exponential integrator in λ = log(t/(1−t)) treats the
  linear part of the ODE exactly, so one evaluation per step reaches second order. It is the
  simplest widely validated few-step solver of that class; UniPC adds a corrector on the same
  evaluations for a small gain. First order on the first step (λ_0 = −∞) and on a final step
  that reaches t = 1 (λ = +∞, where the update is z_1 = x̂).

`sample()` runs a network end to end: noise, labels, CFG interval (`pixeljit.guidance`), grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pixeljit.flow import (
    DEFAULT_T_MIN,
    PRECONDITIONERS,
    PREDICTIONS,
    default_noise_scale,
    precondition,
)
from pixeljit.guidance import GuidedField, check_interval

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]  # (z (N, C, H, W), t host tensor) -> (N, C, H, W)

GRIDS = ("uniform", "shifted")
DEFAULT_SHIFT = 3.0  # SD3's shift; only used by grid='shifted'
DEFAULT_STEPS = 50  # the paper's Heun-50
SAMPLE_T_EPS = 0.05  # the authors' clamp of 1−t at sampling (issue #59 suggests 1e-3)


# ------------------------------------------------------------------------------------ grids


def time_grid(steps: int, kind: str = "uniform", shift: float = DEFAULT_SHIFT) -> Tensor:
    """Times (steps + 1,) float32 on the host, from 0 to 1.

    'uniform' is the authors' torch.linspace(0, 1, steps + 1) (float32, bit for bit).
    'shifted' maps each uniform u to t = u / (u + shift·(1 − u)), the SD3 time shift written for
    t = 1 − σ: it lowers log(t/(1−t)) by log(shift), so shift > 1 puts more steps at high noise.
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)
    if kind == "uniform":
        return u
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u64 = u.double()
    return (u64 / (u64 + shift * (1 - u64))).to(torch.float32)


def _check_grid(grid: Tensor) -> None:
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"time grid must be 1-D with ≥ 2 points, got shape {tuple(grid.shape)}")
    if grid.device.type != "cpu":
        raise ValueError("time grid must live on the host (CPU); it is read without device sync")
    if not bool((grid[1:] > grid[:-1]).all()) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError("time grid must increase strictly within [0, 1]")


# ---------------------------------------------------------------------------------- solvers


def euler(velocity: Field, z: Tensor, grid: Tensor) -> Tensor:
    """Explicit Euler over the grid; one evaluation per interval."""
    _check_grid(grid)
    for i in range(grid.numel() - 1):
        t, t_next = grid[i], grid[i + 1]
        z = z + (t_next - t) * velocity(z, t)
    return z


def heun(velocity: Field, z: Tensor, grid: Tensor, final_euler: bool = True) -> Tensor:
    """Heun on each interval, Euler on the last one when `final_euler` (the authors' sampler)."""
    _check_grid(grid)
    n = grid.numel() - 1
    for i in range(n - 1 if final_euler else n):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t
        v = velocity(z, t)
        v_next = velocity(z + dt * v, t_next)
        z = z + dt * (0.5 * (v + v_next))
    if final_euler:
        z = z + (grid[n] - grid[n - 1]) * velocity(z, grid[n - 1])
    return z


def _log_snr(t: float) -> float:
    """λ = log(t / (1 − t)) (the noise scale only shifts it by a constant, which cancels)."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def dpmpp_2m(denoised: Field, z: Tensor, grid: Tensor) -> Tensor:
    """DPM-Solver++(2M) on the grid with a data predictor x̂(z, t); one evaluation per step.

    With α = t, σ = 1 − t (up to the noise scale) and h = λ' − λ, each step is
    z' = (σ'/σ)·z + α'·(1 − e^{−h})·D, with e^{−h} = t(1−t') / (t'(1−t)) (finite at both ends),
    D = x̂_i for first-order steps, else D = (1 + 1/(2r))·x̂_i − 1/(2r)·x̂_{i−1},
    r = h_{i−1}/h_i.
    """
    _check_grid(grid)
    times = [float(v) for v in grid]  # host floats: coefficients cost no device sync
    prev_x, prev_h = None, math.nan
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x_hat = denoised(z, grid[i])  # (N, C, H, W)
        h = _log_snr(t_next) - _log_snr(t)
        exp_neg_h = t * (1 - t_next) / (t_next * (1 - t))
        second_order = prev_x is not None and math.isfinite(h) and math.isfinite(prev_h)
        if second_order:
            half_inv_r = prev_h / (2 * h)  # 1 / (2r)
            d = (1 + half_inv_r) * x_hat - half_inv_r * prev_x
        else:
            d = x_hat
        z = ((1 - t_next) / (1 - t)) * z + (t_next * (1 - exp_neg_h)) * d
        prev_x, prev_h = x_hat, h
    return z


METHODS = ("euler", "heun", "dpm++2m")


def evaluations(method: str, steps: int) -> int:
    """Network evaluations (per guidance branch) of `method` over `steps` intervals."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return 2 * steps - 1 if method == "heun" else steps


def solve(field: GuidedField, z: Tensor, grid: Tensor, method: str = "heun") -> Tensor:
    """Run `method` on a guided field from z at grid[0] to grid[-1]."""
    if method == "euler":
        return euler(field.velocity, z, grid)
    if method == "heun":
        return heun(field.velocity, z, grid)
    if method == "dpm++2m":
        return dpmpp_2m(field.denoised, z, grid)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ------------------------------------------------------------------------------------ noise


def sample_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """Per-sample seeds for samples start … start + count − 1 of a run with base `seed`
    (hashed with numpy's SeedSequence, so nearby seeds and indices don't collide)."""
    out = []
    for index in range(start, start + count):
        hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
        out.append(((int(hi) << 32) | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF)
    return out


def noise_from_seeds(
    seeds: Sequence[int],
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(len(seeds), *shape) standard normal noise, row i drawn on the CPU from seeds[i]:
    the same seed gives the same noise whatever the batch split and the device."""
    rows = [
        torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
        for s in seeds
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------- sample


class _NetDenoiser:
    """net(z, t, y) with the pre-conditioner and optional autocast; float output in z's dtype."""

    def __init__(self, net, preconditioner: str, noise_scale: float, amp_dtype):
        self.net, self.preconditioner = net, preconditioner
        self.noise_scale, self.amp_dtype = noise_scale, amp_dtype

    def __call__(self, z: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if self.amp_dtype is None:
            out = self.net(z, t, y)
        else:
            with torch.autocast(device_type=z.device.type, dtype=self.amp_dtype):
                out = self.net(z, t, y)
        out = out.to(z.dtype)
        return precondition(out, z, t, self.preconditioner, self.noise_scale)


def _device_of(net, labels, noise, device) -> torch.device:
    if noise is not None:
        return noise.device
    if device is not None:
        return torch.device(device)
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        if param is not None:
            return param.device
    if isinstance(labels, Tensor):
        return labels.device
    return torch.device("cpu")


def _labels_tensor(labels, num_classes: int, device) -> Tensor | None:
    if labels is None:
        if num_classes > 0:
            raise ValueError(
                "this model is class-conditional: pass labels (ints in "
                f"[0, {num_classes})), e.g. labels=list(range({min(num_classes, 8)}))"
            )
        return None
    if num_classes == 0:
        raise ValueError("this model is unconditional: pass labels=None and num=N")
    y = torch.as_tensor(labels).reshape(-1)
    if y.numel() == 0:
        raise ValueError("labels is empty; pass at least one label")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    lo, hi = int(y.min()), int(y.max())  # once per call (a sync only for device labels)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the model has {num_classes} classes; "
            f"{num_classes} is the null label used by guidance), got min {lo}, max {hi}"
        )
    return y.to(device=device, dtype=torch.int64)


def check_sampling_args(
    steps: int,
    method: str,
    cfg: float,
    interval: tuple[float, float],
    t_eps: float,
    noise_scale: float | None,
    prediction: str = "x",
    grid: str = "uniform",
    shift: float = DEFAULT_SHIFT,
    preconditioner: str = "none",
) -> tuple[float, float]:
    """Validate sampling settings (before any model is loaded); returns the interval as floats."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
    if preconditioner != "none" and prediction != "x":
        raise ValueError("a preconditioner builds an x-prediction: use prediction='x'")
    if cfg < 0:
        raise ValueError(f"cfg must be ≥ 0 (1 = no guidance), got {cfg}")
    if not 0.0 < t_eps <= 1.0:
        raise ValueError(f"t_eps must lie in (0, 1], got {t_eps}")
    if noise_scale is not None and not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0 (or None for image_size/256), got {noise_scale}")
    return check_interval(interval)


@torch.no_grad()
def sample(
    net,
    labels: Sequence[int] | Tensor | None = None,
    noise: Tensor | None = None,
    steps: int = DEFAULT_STEPS,
    method: str = "heun",
    cfg: float = 1.0,
    interval: tuple[float, float] = (0.0, 1.0),
    t_eps: float = SAMPLE_T_EPS,
    noise_scale: float | None = 1.0,
    generator: torch.Generator | None = None,
    prediction: str = "x",
    grid: str = "uniform",
    *,
    shift: float = DEFAULT_SHIFT,
    num: int | None = None,
    seed: int | None = None,
    first_index: int = 0,
    t_min: float = DEFAULT_T_MIN,
    preconditioner: str = "none",
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Generate images (N, C, H, W) (float, nominally [−1, 1], not clipped) with a JiT network.

    net(z, t, y) with `net.config` (num_classes, in_channels, image_size); labels (N,) in
    [0, num_classes), or None with `num=N` for unconditional models. `noise` is the state at
    t = 0 (already multiplied by noise_scale); otherwise it is drawn as noise_scale·N(0, I):
    with `seed`, sample k of the call uses per-sample seed (seed, first_index + k), so the same
    seed gives the same images whatever the batch split; else from `generator` (or the global
    RNG) in one draw, which depends on the batch size. `noise_scale` must match training
    (None: the paper's image_size/256, like ObjectiveConfig's default). Guidance: `cfg` w on
    rows with t in the open `interval` (the paper's main results use (0.1, 1.0)). `method` ∈
    {euler, heun, dpm++2m}; `grid` ∈ {uniform, shifted}. The network runs in eval mode (its
    training mode is restored afterwards); `amp_dtype` (e.g. torch.bfloat16) runs it under
    autocast.
    """
    config = getattr(net, "config", None)
    if config is None:
        raise ValueError("net must carry a `config` with num_classes, in_channels and image_size")
    interval = check_sampling_args(
        steps, method, cfg, interval, t_eps, noise_scale, prediction, grid, shift, preconditioner
    )
    if noise_scale is None:
        noise_scale = default_noise_scale(config.image_size)
    classes = int(config.num_classes)
    if cfg != 1.0 and classes == 0:
        raise ValueError("an unconditional model cannot be guided: use cfg=1.0")
    dev = _device_of(net, labels, noise, device)
    y = _labels_tensor(labels, classes, dev)
    if y is not None and num is not None and num != y.numel():
        raise ValueError(f"num={num} disagrees with {y.numel()} labels; pass one of them")
    n = y.numel() if y is not None else (num if num is not None else None)
    if noise is not None and n is None:
        n = noise.shape[0]
    if n is None or n < 1:
        raise ValueError("pass labels, or num=N (≥ 1) for an unconditional model")
    shape = (config.in_channels, config.image_size, config.image_size)
    if noise is not None:
        if tuple(noise.shape) != (n, *shape):
            raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")
        z = noise
    elif seed is not None:
        z = noise_scale * noise_from_seeds(sample_seeds(seed, n, first_index), shape, dev)
    else:
        gen_device = generator.device if generator is not None else dev
        z = noise_scale * torch.randn((n, *shape), generator=generator, device=gen_device)
        z = z.to(dev)

    denoiser = _NetDenoiser(net, preconditioner, noise_scale, amp_dtype)
    field = GuidedField(
        denoiser,
        y,
        prediction=prediction,
        cfg=cfg,
        interval=interval,
        null_label=classes if classes > 0 else None,
        t_eps=t_eps,
        t_min=t_min,
    )
    was_training = isinstance(net, nn.Module) and net.training
    if was_training:
        net.eval()
    try:
        return solve(field, z, time_grid(steps, grid, shift), method)
    finally:
        if was_training:
            net.train()
