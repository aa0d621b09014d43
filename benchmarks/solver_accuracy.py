"""Solver error against NFE on Gaussian data, where the optimal denoiser and the flow are exact.

x ~ N(μ, Q diag(λ) Qᵀ) in 4-D, ε ~ N(0, I): E[x | z_t] is closed-form, and the ODE maps z_0
to z_1 = μ + Q diag(√λ) Qᵀ z_0. Prints the relative error ‖ẑ_1 − z_1‖ / ‖z_1‖ of every solver ×
time grid at a few NFE budgets (a Markdown table, as in docs/sampling.md). Seconds on one core.

    PYTHONPATH=src python benchmarks/solver_accuracy.py
"""

from __future__ import annotations

import torch

from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.solvers import GRIDS, METHODS, solve, steps_for, time_grid

F64 = torch.float64
EIGENVALUES = (0.02, 0.1, 0.3, 1.0)  # data variances along Q's columns (std 0.14 … 1)
MEAN = (0.3, -0.2, 0.5, 0.1)
BUDGETS = (5, 10, 20, 50)
SAMPLES = 512


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lam, mu = torch.tensor(EIGENVALUES, dtype=F64), torch.tensor(MEAN, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))

    def x_hat(z, t, y):  # (N, 1, 2, 2), t (N,)
        tt = t.to(F64).view(-1, 1)
        w = (z.reshape(-1, 4) - tt * mu) @ q
        gain = tt * lam / (tt**2 * lam + (1 - tt) ** 2)
        return (mu + (w * gain) @ q.T).reshape(z.shape)

    z0 = torch.randn(SAMPLES, 1, 2, 2, generator=g, dtype=F64)
    exact = (mu + (z0.reshape(-1, 4) @ q * lam.sqrt()) @ q.T).reshape(z0.shape)
    field = GuidedField(x_hat, None, t_eps=1e-12)  # no clamp: the exact ODE
    print("| solver | grid | " + " | ".join(f"NFE ≤ {b}" for b in BUDGETS) + " |")
    print("| --- | --- |" + " ---: |" * len(BUDGETS))
    for method in METHODS:
        for grid in GRIDS:
            errs = []
            for budget in BUDGETS:
                out = solve(field, z0, time_grid(steps_for(method, budget), grid), method)
                errs.append(float((out - exact).norm() / exact.norm()))
            print(f"| {method} | {grid} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")


if __name__ == "__main__":
    main()
