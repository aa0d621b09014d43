"""The toy experiment of §3.3 / Fig. 2: 2-D data buried in ℝ^D, x- vs ε- vs v-prediction.

A 2-D distribution x̂ (a Swiss-roll spiral, per-coordinate standard deviation ≈ 1) is embedded as
x = P·x̂ by a fixed random column-orthogonal P ∈ ℝ^{D×2} (PᵀP = I). For every D and every
prediction kind a fresh 5-layer ReLU MLP (256 hidden units) is trained with the project's own
objective (`pixeljit.diffusion.objective.flow_matching_loss`, always the v-loss) and sampled with
the project's own solver (`pixeljit.diffusion.solvers.heun` over `time_grid`, through
`pixeljit.diffusion.guidance.GuidedField`).
Samples are mapped back to 2-D with Pᵀ and compared with the true distribution.

Details the paper leaves open (our choices, see docs/toy.md):
- t ~ U[0, 1) (uniform), ε ~ N(0, I) (noise scale 1), both clamps 0.05: 1 − t for x-prediction
  (the paper's t_eps) and t for ε-prediction (`t_min`), so that neither kind gets a larger loss
  weight or sampling amplification than the other (max 1/0.05² = 400 in the v-loss).
- t is fed to the MLP by concatenation: input [z_t, t] ∈ ℝ^{D+1}.
- Adam, lr 3e-3 with cosine decay to 0, 1500 steps of batch 512, fresh data every step.
- Heun, 50 uniform steps (the paper's sampler), last interval Euler; 2 000 samples.
- Within one D the three predictions share every seed: the same initial weights (the
  architecture is identical), data, t and ε; only the prediction kind differs.
- One torch thread: on 2 shared cores a 256-wide MLP step took 13–18 ms with 1 thread and
  47–160 ms with 2 (measured), so `threads` = 1 by default.

Tensors are (N, D) vectors: the flow code broadcasts t over `x.ndim − 1` trailing dims and means
the loss over dims 1.., so no reshape to (N, C, H, W) is needed. The noise scale must be given
explicitly (its default is derived from an image width).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.objective import PREDICTIONS, ObjectiveConfig, flow_matching_loss
from pixeljit.diffusion.solvers import heun, time_grid

Tensor = torch.Tensor

DATA_DIM = 2  # d: the intrinsic dimension of the toy data
PAPER_DIMS = (2, 8, 16, 512)  # the ambient dimensions D of Fig. 2
QUICK_DIMS = (2, 512)
QUICK_STEPS = 200
QUICK_SAMPLES = 1000
PAPER_HIDDEN = 256  # "5-layer ReLU MLP with 256-dim hidden units"
PAPER_LAYERS = 5
CLAMP = 0.05  # t_eps (1 − t, x-prediction) and t_min (t, ε-prediction)

# Swiss roll: angle θ ∈ [ROLL_START, ROLL_END]·π, radius ∝ θ (max 1), then ×ROLL_SCALE and a
# small Gaussian jitter. ROLL_SCALE = 2 gives a per-coordinate standard deviation of ≈ 0.98.
ROLL_START, ROLL_END = 1.5, 4.5
ROLL_SCALE = 2.0
ROLL_JITTER = 0.05

# Seeds of the different random streams of one run are hashed from (seed, D, STREAM_*).
STREAM_EMBED, STREAM_INIT, STREAM_TRAIN, STREAM_SAMPLE, STREAM_TRUTH = range(5)


@dataclass(frozen=True)
class ToyConfig:
    """One Fig. 2 grid: every prediction kind × every ambient dimension D."""

    dims: tuple[int, ...] = PAPER_DIMS
    predictions: tuple[str, ...] = PREDICTIONS
    steps: int = 1500  # training steps per (prediction, D)
    batch_size: int = 512
    lr: float = 3e-3
    hidden: int = PAPER_HIDDEN
    layers: int = PAPER_LAYERS  # linear layers; layers − 1 hidden ReLU layers of width `hidden`
    t_sampler: str = "uniform"
    noise_scale: float = 1.0
    clamp: float = CLAMP
    sample_steps: int = 50
    num_samples: int = 2000
    seed: int = 0
    threads: int | None = 1  # torch intra-op threads during the run (None: leave as is)

    def __post_init__(self) -> None:
        if not self.dims or any(d < DATA_DIM for d in self.dims):
            raise ValueError(f"dims must be a non-empty list of D ≥ {DATA_DIM}, got {self.dims}")
        if len(set(self.dims)) != len(self.dims):
            raise ValueError(f"dims must not repeat, got {self.dims}")
        if not self.predictions or any(p not in PREDICTIONS for p in self.predictions):
            raise ValueError(
                f"predictions must be drawn from {PREDICTIONS}, got {self.predictions}"
            )
        if len(set(self.predictions)) != len(self.predictions):
            raise ValueError(f"predictions must not repeat, got {self.predictions}")
        for name in ("steps", "batch_size", "hidden", "sample_steps", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.layers < 2:
            raise ValueError(f"layers must be ≥ 2 (input and output layer), got {self.layers}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be ≥ 1 or None, got {self.threads}")
        self.objective("x")  # validates t_sampler, noise_scale and clamp

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> ToyConfig:
        """The smaller run behind `--quick`: D ∈ {2, 512}, fewer steps and samples."""
        fields = {"dims": QUICK_DIMS, "steps": QUICK_STEPS, "num_samples": QUICK_SAMPLES}
        return cls(seed=seed, **{**fields, **overrides})

    def objective(self, prediction: str) -> ObjectiveConfig:
        """The training objective of one prediction kind: always the v-loss, no labels."""
        return ObjectiveConfig(
            prediction=prediction,
            loss="v",
            t_sampler=self.t_sampler,
            t_eps=self.clamp,
            t_min=self.clamp,
            noise_scale=self.noise_scale,
            label_drop=0.0,
        )


@dataclass
class ToyRun:
    """One cell of the grid: samples (num_samples, D) and their 2-D view Pᵀx (num_samples, 2)."""

    dim: int
    prediction: str
    samples: Tensor
    projected: Tensor
    final_loss: float  # mean training loss over the last LOSS_WINDOW steps
    seconds: float  # training + sampling wall time


@dataclass
class ToyResult:
    """All cells of one grid, the true data they are measured against, and the P of each D."""

    config: ToyConfig
    truth: Tensor  # (num_samples, 2) fresh draws of the true 2-D distribution
    truth_check: Tensor  # (num_samples, 2) a second, independent draw (the measures' noise floor)
    embeddings: dict[int, Tensor]  # D -> P (D, 2)
    runs: list[ToyRun] = field(default_factory=list)
    seconds: float = 0.0

    def run(self, dim: int, prediction: str) -> ToyRun:
        for r in self.runs:
            if r.dim == dim and r.prediction == prediction:
                return r
        raise KeyError(f"no run for D={dim}, prediction={prediction!r}")


LOSS_WINDOW = 100


# ------------------------------------------------------------------------------------ data


def stream_seed(seed: int, dim: int, stream: int) -> int:
    """A seed for one random stream of the D-dimensional runs (distinct for distinct inputs)."""
    return (seed * 1_000_003 + dim * 101 + stream) % (2**63 - 1)


def swiss_roll(n: int, generator: torch.Generator) -> Tensor:
    """n points (n, 2) of the 2-D Swiss roll, per-coordinate std ≈ 1."""
    u = torch.rand(n, generator=generator)  # (n,)
    theta = math.pi * (ROLL_START + (ROLL_END - ROLL_START) * u)
    radius = ROLL_SCALE * theta / (math.pi * ROLL_END)  # ∈ [ROLL_SCALE/3, ROLL_SCALE]
    points = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)
    return points + ROLL_JITTER * torch.randn(n, DATA_DIM, generator=generator)


def random_embedding(dim: int, generator: torch.Generator) -> Tensor:
    """A random column-orthogonal P (dim, 2), PᵀP = I: Q of the QR of a Gaussian matrix."""
    gauss = torch.randn(dim, DATA_DIM, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)  # q (dim, 2)
    q = q * torch.sign(torch.diagonal(r))  # fix the sign ambiguity: a unique Haar draw
    return q.to(torch.float32)


def off_manifold(samples: Tensor, embed: Tensor) -> Tensor:
    """‖(I − PPᵀ)x‖ per sample (N,), for samples (N, D) and P (D, 2)."""
    residual = samples - (samples @ embed) @ embed.T  # (N, D)
    return residual.norm(dim=1)


# ----------------------------------------------------------------------------------- model


class ToyMLP(nn.Module):
    """The Fig. 2 generator: input [z_t, t] ∈ ℝ^{D+1}, `layers` linear layers, ReLU between,
    output ℝ^D read as x, ε or v. A denoiser(z (N, D), t (N,), y) for the flow code."""

    def __init__(self, dim: int, hidden: int = PAPER_HIDDEN, layers: int = PAPER_LAYERS):
        super().__init__()
        widths = [dim + 1] + [hidden] * (layers - 1) + [dim]
        modules: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i > 0:
                modules.append(nn.ReLU())
            modules.append(nn.Linear(w_in, w_out))
        self.net = nn.Sequential(*modules)

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([z, t.to(z.dtype).unsqueeze(1)], dim=1))  # (N, D)


# -------------------------------------------------------------------------------- training


def train_model(
    config: ToyConfig, prediction: str, embed: Tensor, seed: int, init_seed: int
) -> tuple[ToyMLP, float]:
    """Train one MLP on x = P·x̂ with the project's objective; returns (model, final loss)."""
    dim = embed.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = ToyMLP(dim, config.hidden, config.layers)
    objective = config.objective(prediction)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    gen = torch.Generator().manual_seed(seed)
    recent = torch.zeros(())
    model.train()
    for step in range(config.steps):
        x = swiss_roll(config.batch_size, gen) @ embed.T  # (B, D)
        losses, _ = flow_matching_loss(model, x, None, objective, num_classes=0, generator=gen)
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= config.steps - LOSS_WINDOW:
            recent = recent + loss.detach()
    return model, float(recent) / min(LOSS_WINDOW, config.steps)


@torch.no_grad()
def sample_model(model: ToyMLP, config: ToyConfig, prediction: str, seed: int) -> Tensor:
    """num_samples draws (num_samples, D) with the project's Heun sampler from z_0 ~ N(0, s²I)."""
    model.eval()
    dim = model.net[-1].out_features
    gen = torch.Generator().manual_seed(seed)
    z = config.noise_scale * torch.randn(config.num_samples, dim, generator=gen)  # (N, D)
    field = GuidedField(model, None, prediction=prediction, t_eps=config.clamp, t_min=config.clamp)
    return heun(field.velocity, z, time_grid(config.sample_steps))


def run_toy(
    config: ToyConfig = ToyConfig(),  # noqa: B008 (frozen dataclass)
    progress: Callable[[str], None] | None = None,
) -> ToyResult:
    """Train and sample every (D, prediction) cell; deterministic for a given config (and seed).

    `progress` receives one line per finished cell.
    """
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        truth_gen = torch.Generator().manual_seed(stream_seed(config.seed, 0, STREAM_TRUTH))
        truth = swiss_roll(config.num_samples, truth_gen)  # (N, 2)
        result = ToyResult(config, truth, swiss_roll(config.num_samples, truth_gen), {})
        for dim in config.dims:
            embed_gen = torch.Generator().manual_seed(stream_seed(config.seed, dim, STREAM_EMBED))
            embed = random_embedding(dim, embed_gen)  # (D, 2)
            result.embeddings[dim] = embed
            for prediction in config.predictions:
                cell_start = time.perf_counter()
                model, final_loss = train_model(
                    config,
                    prediction,
                    embed,
                    seed=stream_seed(config.seed, dim, STREAM_TRAIN),
                    init_seed=stream_seed(config.seed, dim, STREAM_INIT),
                )
                samples = sample_model(
                    model, config, prediction, stream_seed(config.seed, dim, STREAM_SAMPLE)
                )
                seconds = time.perf_counter() - cell_start
                run = ToyRun(dim, prediction, samples, samples @ embed, final_loss, seconds)
                result.runs.append(run)
                if progress is not None:
                    progress(
                        f"D={dim:<4d} {prediction:>3s}-pred  loss {final_loss:.4f}  "
                        f"({seconds:.1f} s)"
                    )
        result.seconds = time.perf_counter() - start
        return result
    finally:
        torch.set_num_threads(old_threads)
