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
- `dpmpp_3m`: DPM-Solver++(3M) (Lu et al. 2022, arXiv 2211.01095), the third-order member of
  the same family: still one evaluation per step, the few-step solver of this module.

Time grids live in `timegrids` (re-exported here: `time_grid`, `GRIDS`, `DEFAULT_SHIFT`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.timegrids import DEFAULT_SHIFT, GRIDS, time_grid  # noqa: F401 (re-export)
from pixeljit.diffusion.timegrids import check_grid as _check_grid

Tensor = torch.Tensor
Field = Callable[[Tensor, Tensor], Tensor]  # (z (N, C, H, W), t host tensor) -> (N, C, H, W)

# ---------------------------------------------------------------------------------- solvers


def euler(velocity: Field, z: Tensor, grid: Tensor) -> Tensor:
    """Explicit Euler over the grid; one evaluation per interval."""
    _check_grid(grid)
    for i in range(grid.numel() - 1):
        t, t_next = grid[i], grid[i + 1]
        z = z + (t_next - t) * velocity(z, t)
    return z


def heun(velocity: Field, z: Tensor, grid: Tensor) -> Tensor:
    """Heun on each interval, Euler on the last one (the authors' sampler: no evaluation at
    t = 1, where x-prediction's velocity divides by the clamp)."""
    _check_grid(grid)
    n = grid.numel() - 1
    for i in range(n - 1):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t
        v = velocity(z, t)
        v_next = velocity(z + dt * v, t_next)
        z = z + dt * (0.5 * (v + v_next))
    return z + (grid[n] - grid[n - 1]) * velocity(z, grid[n - 1])


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
            half_inv_r = h / (2 * prev_h)  # 1 / (2r), r = h_{i−1} / h_i
            d = (1 + half_inv_r) * x_hat - half_inv_r * prev_x
        else:
            d = x_hat
        z = ((1 - t_next) / (1 - t)) * z + (t_next * (1 - exp_neg_h)) * d
        prev_x, prev_h = x_hat, h
    return z


def dpmpp_3m(denoised: Field, z: Tensor, grid: Tensor) -> Tensor:
    """DPM-Solver++(3M) on the grid with a data predictor x̂(z, t); one evaluation per step.

    The exact solution over one step in λ = log(t/(1−t)) (α = t, σ = 1 − t, h = λ' − λ) is
    z' = (σ'/σ)·z + α'·∫₀ʰ e^{−(h−s)} x̂(λ + s) ds. Expanding x̂ to second order about λ gives
    z' = (σ'/σ)·z + α'(1 − e^{−h})·x̂ + α'·φ₂·D₁ − 2α'·φ₃·D₂ with φ₂ = 1 − (1 − e^{−h})/h,
    φ₃ = φ₂/h − 1/2, where D₁ ≈ h·x̂' and D₂ ≈ h²·x̂''/2 come from the two previous x̂ by divided
    differences over unequal steps (r₀ = h₋₁/h, r₁ = h₋₂/h):
    D₁⁰ = (x̂ − x̂₋₁)/r₀, D₁¹ = (x̂₋₁ − x̂₋₂)/r₁, D₁ = D₁⁰ + r₀/(r₀+r₁)·(D₁⁰ − D₁¹),
    D₂ = (D₁⁰ − D₁¹)/(r₀+r₁). Local error O(h⁴), so third order on smooth x̂ (tested).

    This is the multistep third-order update of DPM-Solver++ (Lu et al. 2022, arXiv
    2211.01095, §4 / App. B), written from that derivation. Note the factor 2 on the D₂ term:
    the series term of x̂'' is α'·h²·x̂''·(−φ₃) and D₂ estimates h²x̂''/2; with a factor 1
    the method drops to second order (checked in tests/test_solvers.py).

    Why this solver: the network predicts x̂, the smooth quantity along JiT's ODE, and the
    exponential integrator treats the linear part exactly, so higher order costs no extra
    evaluations (one per step, like DPM-Solver++(2M), Euler). Steps whose history is short
    (the first steps: λ₀ = −∞ at t = 0 has no usable λ) use the lower orders, and a final step
    that reaches t = 1 (λ = +∞) is first order, z₁ = x̂, like Heun's final Euler step. As in
    DPM-Solver's "lower order final", step i of n uses at most order n − i (the second-to-last
    step is second order): measured on Gaussian data, this halves the error of 10–50 uniform
    steps. Like every high-order multistep method it extrapolates x̂ in λ, so it needs steps
    that are small in λ where x̂ changes: on grids with large λ-steps there (few 'edm' or
    'logsnr' steps) it can be worse than DPM-Solver++(2M) (docs/sampling.md).
    """
    _check_grid(grid)
    times = [float(v) for v in grid]  # host floats: coefficients cost no device sync
    lams = [_log_snr(t) for t in times]
    history: list[tuple[Tensor, float]] = []  # (x̂, λ) at finite λ, newest first (≤ 2 kept)
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        x_hat = denoised(z, grid[i])  # (N, C, H, W)
        h = lams[i + 1] - lams[i]
        exp_neg_h = t * (1 - t_next) / (t_next * (1 - t))  # e^{−h}, finite at both ends
        z_next = ((1 - t_next) / (1 - t)) * z + (t_next * (1 - exp_neg_h)) * x_hat
        order = 1 + len(history) if math.isfinite(h) and math.isfinite(lams[i]) else 1
        order = min(order, len(times) - 1 - i)  # lower order on the final steps
        if order >= 2:
            phi2 = 1 - (1 - exp_neg_h) / h
            r0 = (lams[i] - history[0][1]) / h
            d1_0 = (x_hat - history[0][0]) / r0
            if order == 2:
                d1 = d1_0
            else:
                r1 = (history[0][1] - history[1][1]) / h
                d1_1 = (history[0][0] - history[1][0]) / r1
                d2 = (d1_0 - d1_1) / (r0 + r1)
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                phi3 = phi2 / h - 0.5
                z_next = z_next - (2 * t_next * phi3) * d2
            z_next = z_next + (t_next * phi2) * d1
        z = z_next
        if math.isfinite(lams[i]):
            history = [(x_hat, lams[i]), *history[:1]]
    return z


METHODS = ("euler", "heun", "dpm++2m", "dpm++3m")
SINGLE_EVALUATION = ("euler", "dpm++2m", "dpm++3m")  # one evaluation per step
# step on the velocity, where an x- (ε-) prediction is divided by max(1 − t, t_eps) (max(t,
# t_min)); the multistep solvers step on x̂, where an x-prediction's clamp cancels
VELOCITY_SOLVERS = ("euler", "heun")


def evaluation_times(method: str, grid: Tensor) -> list[float]:
    """The times (host floats) at which `method` evaluates the network over `grid`, in order:
    one per step at its start (Euler, the multistep solvers); Heun also at each step's end,
    except on its final Euler step. len() is the number of evaluations."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    times = [float(v) for v in grid]
    if method in SINGLE_EVALUATION:
        return times[:-1]
    out = []
    for i in range(len(times) - 2):
        out += [times[i], times[i + 1]]
    return out + [times[-2]]


def evaluations(method: str, steps: int) -> int:
    """Network evaluations (per guidance branch) of `method` over `steps` intervals."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return 2 * steps - 1 if method == "heun" else steps


def steps_for(method: str, nfe: int) -> int:
    """The most steps of `method` whose evaluations do not exceed `nfe` (≥ 1)."""
    if nfe < 1:
        raise ValueError(f"nfe must be ≥ 1, got {nfe}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return (nfe + 1) // 2 if method == "heun" else nfe


def solve(field: GuidedField, z: Tensor, grid: Tensor, method: str = "heun") -> Tensor:
    """Run `method` on a guided field from z at grid[0] to grid[-1]."""
    if not isinstance(field, GuidedField):
        raise ValueError(
            f"solve takes a GuidedField (GuidedField(denoiser, y, prediction=...)), got "
            f"{type(field).__name__}; for a velocity function of (z, t) call euler or heun "
            "directly, for a data prediction of (z, t) dpmpp_2m or dpmpp_3m"
        )
    if method == "euler":
        return euler(field.velocity, z, grid)
    if method == "heun":
        return heun(field.velocity, z, grid)
    if method == "dpm++2m":
        return dpmpp_2m(field.denoised, z, grid)
    if method == "dpm++3m":
        return dpmpp_3m(field.denoised, z, grid)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
