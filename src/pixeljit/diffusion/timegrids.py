"""Time grids t_0 = 0 < t_1 < … < t_n = 1 for the ODE solvers (noise at t = 0, data at t = 1).

- 'uniform': the authors' torch.linspace(0, 1, n + 1) (float32, bit for bit).
- 'shifted': t = u / (u + shift·(1 − u)) for uniform u, the SD3 time shift written for
  t = 1 − σ; it lowers λ = log(t/(1−t)) by log(shift), so shift > 1 puts more steps at high noise.
- 'edm': the EDM ρ-spacing (Karras et al. 2022, arXiv 2206.00364, Eq. 5) of the noise-to-signal
  ratio σ = (1 − t)/t (z_t / t = x + σ·ε at noise scale 1): σ(u) = (σ_max^{1/ρ} +
  u·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ at u = i/n, σ_max = 80, σ_min = 0.002, ρ = 7, then
  t = 1/(1 + σ). Its two ends are snapped to t = 0 (pure noise, where sampling starts) and
  t = 1 (data), so every grid spans the whole path and its interior follows EDM.
- 'logsnr': λ = log(t/(1−t)) (half the log-SNR, DPM-Solver's λ) uniform between the same
  σ_max and σ_min (λ = −log σ), ends snapped the same way: the spacing DPM-Solver recommends.

All grids are computed in float64 and returned as float32 host tensors; they increase strictly
for every n ≤ sampler.MAX_STEPS (tested).
"""

from __future__ import annotations

import math

import torch

from pixeljit.values import is_integer

Tensor = torch.Tensor

GRIDS = ("uniform", "shifted", "edm", "logsnr")
DEFAULT_SHIFT = 3.0  # SD3's shift; only used by grid='shifted'
EDM_SIGMA_MAX = 80.0  # EDM's σ range (data in [−1, 1]), as the noise-to-signal ratio (1 − t)/t
EDM_SIGMA_MIN = 0.002
EDM_RHO = 7.0


def _sigma_to_t(sigma: Tensor) -> Tensor:
    """t with (1 − t)/t = σ."""
    return 1.0 / (1.0 + sigma)


def _snap_ends(t: Tensor) -> Tensor:
    t = t.clone()
    t[0], t[-1] = 0.0, 1.0
    return t


def edm_grid(steps: int, rho: float = EDM_RHO) -> Tensor:
    """(steps + 1,) float64: EDM's ρ-spacing of σ = (1 − t)/t, ends snapped to 0 and 1."""
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    hi, lo = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    return _snap_ends(_sigma_to_t((hi + u * (lo - hi)) ** rho))


def logsnr_grid(steps: int) -> Tensor:
    """(steps + 1,) float64: λ = log(t/(1−t)) uniform in [−log σ_max, −log σ_min], ends snapped."""
    lam = torch.linspace(-math.log(EDM_SIGMA_MAX), -math.log(EDM_SIGMA_MIN), steps + 1,
                         dtype=torch.float64)  # fmt: skip
    return _snap_ends(torch.sigmoid(lam))


def time_grid(steps: int, kind: str = "uniform", shift: float = DEFAULT_SHIFT) -> Tensor:
    """Times (steps + 1,) float32 on the host, from 0 to 1, of grid `kind` (one of GRIDS)."""
    if not is_integer(steps) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    steps = int(steps)
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)
    if kind == "uniform":
        return u
    if kind == "shifted":
        if not 0 < shift < math.inf:
            raise ValueError(f"shift must be a finite number > 0, got {shift}")
        u64 = u.double()
        return (u64 / (u64 + shift * (1 - u64))).to(torch.float32)
    if kind == "edm":
        return edm_grid(steps).to(torch.float32)
    return logsnr_grid(steps).to(torch.float32)


def check_grid(grid: Tensor) -> None:
    """A 1-D host tensor of ≥ 2 strictly increasing times in [0, 1], or ValueError."""
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"time grid must be 1-D with ≥ 2 points, got shape {tuple(grid.shape)}")
    if grid.device.type != "cpu":
        raise ValueError("time grid must live on the host (CPU); it is read without device sync")
    if not bool((grid[1:] > grid[:-1]).all()) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError("time grid must increase strictly within [0, 1]")
