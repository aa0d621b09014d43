"""Gaussian data with a closed-form optimal denoiser and exact flow map, and a parameter-free
"network" that predicts it exactly: the analytic ground truth the sampler and solver tests
(test_sampling, test_solvers, test_nfe) measure against."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from pixeljit.diffusion.objective import convert

F64 = torch.float64
D = 4  # data dimension, laid out as (1, 2, 2) images
SHAPE = (1, 2, 2)
NUM_CLASSES = 3


class Gaussian:
    """x ~ N(μ_y, Σ) with Σ = Q diag(λ) Qᵀ and ε ~ N(0, s²I): closed-form E[x | z_t] and the
    exact flow map z_0 → z_1 (per eigen-direction w_t = z_t − tμ scales with σ_t, where
    σ_t² = t²λ + (1 − t)²s²)."""

    def __init__(self, noise_scale: float = 1.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.lam = torch.tensor([0.02, 0.1, 0.3, 1.0], dtype=F64)
        self.q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
        base = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64)
        # class means; row NUM_CLASSES (the null label) is the "unconditional" mean
        self.means = torch.stack(
            [base + 0.5 * torch.eye(D, dtype=F64)[k] for k in range(3)] + [base]
        )
        self.s = noise_scale

    def x_hat(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        mu = self.means[y if y is not None else torch.full((z.shape[0],), NUM_CLASSES)]
        tt = t.to(F64).view(-1, 1)
        w = (z.reshape(-1, D).to(F64) - tt * mu) @ self.q
        gain = tt * self.lam / (tt**2 * self.lam + (1 - tt) ** 2 * self.s**2)
        return (mu + (w * gain) @ self.q.T).reshape(z.shape).to(z.dtype)

    def flow_map(self, z0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mu = self.means[y if y is not None else torch.full((z0.shape[0],), NUM_CLASSES)]
        w = z0.reshape(-1, D).to(F64) @ self.q
        return (mu + (w * self.lam.sqrt() / self.s) @ self.q.T).reshape(z0.shape)


class AnalyticNet(nn.Module):
    """A parameter-free 'network' with the JiT contract, outputting the exact prediction."""

    def __init__(self, gauss: Gaussian, prediction: str = "x", num_classes: int = NUM_CLASSES):
        super().__init__()
        self.gauss, self.prediction = gauss, prediction
        self.config = SimpleNamespace(num_classes=num_classes, in_channels=1, image_size=2)
        self.calls: list[int] = []

    def forward(self, z, t, y):
        self.calls.append(z.shape[0])
        x = self.gauss.x_hat(z, t, y)
        return convert(x, "x", self.prediction, z, t, t_eps=1e-12)  # exact, unclamped


def noise(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=F64)


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
