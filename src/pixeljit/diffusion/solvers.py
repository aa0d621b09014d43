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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pixeljit.diffusion.guidance import GuidedField

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]  # (z (N, C, H, W), t host tensor) -> (N, C, H, W)

GRIDS = ("uniform", "shifted")
DEFAULT_SHIFT = 3.0  # SD3's shift; only used by grid='shifted'


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
