"""DPM-Solver++(3M), the time grids and the evaluation accounting, against closed forms.

Gaussian data (test_sampling.Gaussian) has a closed-form optimal denoiser E[x | z_t] and an
exact flow map, so the solvers' errors and their order of accuracy are measured, not assumed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analytic import NUM_CLASSES, AnalyticNet, D, Gaussian, error, noise
from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.sampler import MAX_STEPS, SamplerConfig, sample
from pixeljit.diffusion.solvers import (
    METHODS,
    dpmpp_2m,
    dpmpp_3m,
    euler,
    evaluation_times,
    evaluations,
    heun,
    solve,
    steps_for,
)
from pixeljit.diffusion.timegrids import (
    EDM_RHO,
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    GRIDS,
    time_grid,
)

F64 = torch.float64


def _transport(gauss: Gaussian, z: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """The exact flow from (z, t0) to t1 for the unconditional Gaussian (noise scale 1)."""
    mu = gauss.means[NUM_CLASSES]
    w = (z.reshape(-1, D) - t0 * mu) @ gauss.q
    sig = lambda t: (t**2 * gauss.lam + (1 - t) ** 2).sqrt()  # noqa: E731
    return (t1 * mu + (w * sig(t1) / sig(t0)) @ gauss.q.T).reshape(z.shape)


def _order_grid(n: int, ta: float, tb: float) -> torch.Tensor:
    """n uniform steps on [ta, tb] plus a first and a last step of size h²/4: the lower-order
    start (no history) and finish (lower order final) then err by O(h⁴) locally, so the
    global error shows the order of the steps in between."""
    h = (tb - ta) / n
    inner = torch.linspace(ta + h * h / 2, tb - h * h / 2, n + 1, dtype=F64)
    return torch.cat([torch.tensor([ta, ta + h * h / 4], dtype=F64), inner, torch.tensor([tb])])


def _slope(steps, errs) -> float:
    return float(np.polyfit(np.log(steps), np.log(errs), 1)[0])


# ------------------------------------------------------------------------------ accuracy


def test_dpmpp_3m_is_third_order_and_2m_second():
    gauss = Gaussian()
    za = gauss.flow_map(noise(64, seed=1))  # any state at t = 0.1 works: the exact flow is known
    field = GuidedField(gauss.x_hat, None, t_eps=1e-12)  # no clamp: the exact ODE
    ta, tb = 0.1, 0.9
    steps = np.array([16, 32, 64])
    errs = {"dpm++3m": [], "dpm++2m": []}
    for n in steps:
        grid = _order_grid(int(n), ta, tb)
        exact = _transport(gauss, za, ta, tb)
        errs["dpm++3m"].append(error(dpmpp_3m(field.denoised, za, grid), exact))
        errs["dpm++2m"].append(error(dpmpp_2m(field.denoised, za, grid), exact))
    assert -3.5 < _slope(steps, errs["dpm++3m"]) < -2.8, errs
    assert -2.2 < _slope(steps, errs["dpm++2m"]) < -1.8, errs


def _dpmpp_2m_by_the_paper(x_hat, z: torch.Tensor, times: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) as Lu et al. (arXiv 2211.01095, Alg. 2) write it, in α = t, σ = 1 − t,
    λ = log(α/σ): r_i = h_{i−1}/h_i, D_i = (1 + 1/(2r_i))·x̂_i − 1/(2r_i)·x̂_{i−1}, and
    z_{i+1} = (σ_{i+1}/σ_i)·z_i − α_{i+1}·(e^{−h_i} − 1)·D_i; the first step uses D_0 = x̂_0."""
    lam = [math.log(t / (1 - t)) for t in times]
    prev = None
    for i in range(len(times) - 1):
        x = x_hat(z, torch.tensor(times[i], dtype=F64))
        h = lam[i + 1] - lam[i]
        if prev is None:
            d = x
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x - 1 / (2 * r) * prev
        z = (1 - times[i + 1]) / (1 - times[i]) * z - times[i + 1] * math.expm1(-h) * d
        prev = x
    return z


def test_dpmpp_2m_is_the_papers_update_on_unequal_steps():
    """Each 2M step against the paper's update written out, on a grid whose steps in λ differ
    (r ≠ 1): the coefficient of the history term was h_{i−1}/(2h_i) = r/2 instead of 1/(2r),
    which kept the method second order (r → 1 on smooth grids) and so passed the order test."""
    gauss = Gaussian()
    z = noise(16, seed=3)  # any state at t = 0.05: both updates must agree on it
    field = GuidedField(gauss.x_hat, None, t_eps=1e-12)
    times = [0.05, 0.1, 0.3, 0.35, 0.6, 0.9]
    got = dpmpp_2m(field.denoised, z, torch.tensor(times, dtype=F64))
    want = _dpmpp_2m_by_the_paper(field.denoised, z, times)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_dpmpp_3m_beats_2m_per_evaluation_on_the_uniform_grid():
    gauss = Gaussian()
    z0 = noise(128, seed=2)
    exact = gauss.flow_map(z0)
    field = GuidedField(gauss.x_hat, None, t_eps=1e-12)
    # equal evaluations: one per step for both; the margin grows with n (third order against
    # second): measured 0.79, 0.92, 0.80 and 0.53 of 2M's error at 6, 10, 20 and 40 steps
    for n, margin in ((6, 0.95), (10, 0.95), (20, 0.9), (40, 0.6)):
        e3 = error(dpmpp_3m(field.denoised, z0, time_grid(n)), exact)
        e2 = error(dpmpp_2m(field.denoised, z0, time_grid(n)), exact)
        assert e3 < margin * e2, (n, e3, e2)


@pytest.mark.parametrize("grid", GRIDS)
def test_data_prediction_solvers_exact_for_a_point_mass(grid):
    """One data point x₀: x̂ ≡ x₀, the ODE's solution is z_t = t·x₀ + (1 − t)·z₀, and the
    exponential integrators reproduce it exactly at every grid point (the ends included)."""
    x0 = torch.tensor([0.3, -0.7, 0.2, 0.9], dtype=F64).reshape(1, 1, 2, 2)
    z0 = noise(8, seed=3)
    point = lambda z, t: x0.expand_as(z)  # noqa: E731
    for n in (1, 2, 3, 7):
        for solver in (dpmpp_2m, dpmpp_3m):
            out = solver(point, z0, time_grid(n, grid).double())
            torch.testing.assert_close(out, x0.expand_as(z0), rtol=0, atol=1e-12)
        part = time_grid(n + 2, grid).double()[:-1]  # stop before t = 1
        t_end = float(part[-1])
        out = dpmpp_3m(point, z0, part)
        torch.testing.assert_close(out, t_end * x0 + (1 - t_end) * z0, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------- evaluations


class _Recorder:
    def __init__(self, gauss: Gaussian):
        self.gauss, self.times = gauss, []

    def __call__(self, z, t, y):
        self.times.append(float(t.reshape(-1)[0]))
        return self.gauss.x_hat(z, t, y)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grid", ["uniform", "edm"])
def test_evaluation_times_and_counts_match_the_solver(method, grid):
    rec = _Recorder(Gaussian())
    field = GuidedField(rec, None, t_eps=1e-12)
    for n in (1, 2, 5):
        rec.times.clear()
        g = time_grid(n, grid)
        solve(field, noise(4).to(torch.float32), g, method)
        assert rec.times == pytest.approx(evaluation_times(method, g), abs=0), (method, n)
        assert len(rec.times) == evaluations(method, n)


@pytest.mark.parametrize("method", METHODS)
def test_steps_for_is_the_largest_step_count_within_a_budget(method):
    for nfe in range(1, 60):
        n = steps_for(method, nfe)
        assert evaluations(method, n) <= nfe < evaluations(method, n + 1)
    with pytest.raises(ValueError, match="nfe"):
        steps_for(method, 0)


def test_sample_runs_the_new_solver_and_grids():
    gauss = Gaussian()
    net = AnalyticNet(gauss)
    z0 = noise(6, seed=4).to(torch.float32)
    labels = [0, 1, 2, 0, 1, 2]
    exact = gauss.flow_map(z0.double(), torch.tensor(labels)).to(torch.float32)
    for grid in GRIDS:
        out = sample(net, labels, noise=z0, steps=40, method="dpm++3m", grid=grid, t_eps=1e-6)
        assert error(out.double(), exact.double()) < 0.02, grid
    assert SamplerConfig(steps=12, method="dpm++3m", grid="logsnr").nfe() == 12


# -------------------------------------------------------------------------------- grids


@pytest.mark.parametrize("kind", GRIDS)
def test_grids_span_zero_to_one_and_increase(kind):
    for n in (1, 2, 3, 10, 100, MAX_STEPS):
        g = time_grid(n, kind)
        assert g.dtype == torch.float32 and g.shape == (n + 1,)
        assert float(g[0]) == 0.0 and float(g[-1]) == 1.0
        assert bool((g[1:] > g[:-1]).all()), (kind, n)


def test_edm_grid_formula():
    n = 4
    g = time_grid(n, "edm").double()
    hi, lo = EDM_SIGMA_MAX ** (1 / EDM_RHO), EDM_SIGMA_MIN ** (1 / EDM_RHO)
    for i in range(1, n):
        sigma = (hi + i / n * (lo - hi)) ** EDM_RHO
        assert float(g[i]) == pytest.approx(1 / (1 + sigma), rel=1e-6)
    # the noise-to-signal ratio (1 − t)/t of the interior points, spaced by ρ as in EDM
    inner = g[1:-1]
    roots = ((1 - inner) / inner) ** (1 / EDM_RHO)
    torch.testing.assert_close(roots.diff(), torch.full((n - 2,), (lo - hi) / n, dtype=F64),
                               rtol=1e-5, atol=0)  # fmt: skip


def test_logsnr_grid_formula():
    n = 8
    g = time_grid(n, "logsnr").double()
    lam = torch.log(g[1:-1] / (1 - g[1:-1]))
    step = math.log(EDM_SIGMA_MAX / EDM_SIGMA_MIN) / n
    torch.testing.assert_close(lam.diff(), torch.full((n - 2,), step, dtype=F64), rtol=0,
                               atol=1e-5)  # fmt: skip
    assert float(lam[0]) == pytest.approx(-math.log(EDM_SIGMA_MAX) + step, abs=1e-5)


def test_grid_and_method_names_are_checked():
    with pytest.raises(ValueError, match="grid"):
        time_grid(10, "cosine")
    with pytest.raises(ValueError, match="method"):
        evaluation_times("rk4", time_grid(3))
    with pytest.raises(ValueError, match="method"):
        SamplerConfig(method="dpm++4m")
    for solver in (euler, heun):  # the velocity solvers keep their contract
        with pytest.raises(ValueError, match="increase"):
            solver(lambda z, t: z, torch.zeros(1, 1), torch.tensor([0.0, 0.5, 0.4]))
        # strictly increasing (a repeated time is a zero step) and within [0, 1] at both ends
        for bad in ([0.0, 0.5, 0.5, 1.0], [-0.1, 0.5, 1.0], [0.0, 0.5, 1.1]):
            with pytest.raises(ValueError, match=r"increase strictly within \[0, 1\]"):
                solver(lambda z, t: z, torch.zeros(1, 1), torch.tensor(bad))


def test_solve_names_what_it_takes_for_a_plain_function():
    """solve(lambda z, t: ..., z, grid) failed with "'function' object has no attribute
    'velocity'"; the message now names the GuidedField and the solvers that take a function."""
    z, grid = torch.zeros(1, 1, 2, 2), time_grid(3)
    with pytest.raises(ValueError, match="takes a GuidedField.*got function.*call euler or heun"):
        solve(lambda z, t: z, z, grid)
    assert torch.equal(heun(lambda z, t: torch.ones_like(z), z, grid), torch.ones_like(z))
