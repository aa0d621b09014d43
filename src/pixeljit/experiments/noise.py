"""Tab. 3: the noise level of training, μ of the logit-normal t-sampler, at the bottlenecked
setting.

t = sigmoid(N(μ, σ²)) with σ = 0.8; lower μ puts more training at high noise. The grid:
μ ∈ {0, −0.4, −0.8, −1.2} × {x, ε, v}-prediction, all with the v-loss, on large patches whose
dimension exceeds the width (default 64 px, patch 8: 192-d patches into width 128), the
plain linear patch embedding (Tab. 3 uses Tab. 2's baseline). The paper: x-prediction is best
at every μ, ε and v fail at every μ; for x-prediction μ = −0.8 is best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pixeljit.diffusion.objective import LOSS_SPACES, P_STD, PREDICTIONS
from pixeljit.experiments import grid, grid_data
from pixeljit.experiments.evidence import Cell
from pixeljit.experiments.grid import GridConfig, check_distinct
from pixeljit.experiments.sweep_report import Layout
from pixeljit.values import is_real

EXPERIMENT = "noise"
NAMES = {"x": "x", "eps": "ε", "v": "v"}
PAPER_MUS = (0.0, -0.4, -0.8, -1.2)
MU_DIGITS = 6  # of μ in cell names and tables (Python's `g` format)


@dataclass(frozen=True)
class NoiseConfig(GridConfig):
    """The μ values × predictions at one bottlenecked setting."""

    size: int = 64
    patch: int = 8
    p_means: tuple[float, ...] = PAPER_MUS
    predictions: tuple[str, ...] = PREDICTIONS
    loss: str = "v"
    GPU_AXES = {"size": 128, "patch": 16}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distinct("p_means", self.p_means)
        if not all(is_real(m) and math.isfinite(m) for m in self.p_means):
            raise ValueError(f"μ values must be finite numbers, got {self.p_means}")
        texts = [mu_text(m) for m in self.p_means]
        alike = [m for m, text in zip(self.p_means, texts, strict=True) if texts.count(text) > 1]
        if alike:  # one cell folder and one table row would stand for both
            raise ValueError(
                f"μ values {' and '.join(f'{m!r}' for m in alike)} are one value to the "
                f"{MU_DIGITS} significant digits that name the cells and the table rows: give "
                f"values that differ within {MU_DIGITS} digits"
            )
        check_distinct("predictions", self.predictions, PREDICTIONS)
        if self.loss not in LOSS_SPACES:
            raise ValueError(f"loss must be one of {LOSS_SPACES}, got {self.loss!r}")
        if self.size % self.patch:
            raise ValueError(f"size {self.size} must be a multiple of patch {self.patch}")


def mu_text(mu: float) -> str:
    """μ as the cells' folder names show it (`MU_DIGITS` significant digits, with its sign)."""
    return f"{mu:+.{MU_DIGITS}g}"


def build_cells(config: NoiseConfig, out: Path, sources: dict[int, str]) -> list[Cell]:
    points = [
        (f"mu{mu_text(mu)}-{prediction}pred", prediction, {"p_mean": float(mu)})
        for mu in config.p_means
        for prediction in config.predictions
    ]
    return grid.one_setting_cells(config, out, sources, points)


# (config, out, extractor=None, progress=None, train_fn=None) → noise.json's dict
run_noise = grid.GridExperiment(EXPERIMENT, build_cells).run


def layout(report: dict) -> Layout:
    config = report["config"]
    series = tuple(f"{NAMES[p]}-pred" for p in config["predictions"])
    return Layout(
        experiment=EXPERIMENT,
        x_label="μ",
        xs=tuple(float(m) for m in config["p_means"]),
        series=series,
        points=lambda labels: [(f"{NAMES[labels['prediction']]}-pred", labels["p_mean"])],
        x_text=lambda mu: f"{mu:g}",
        rows_are_x=True,
        note=(
            f"{NAMES[config['loss']]}-loss; logit-normal t-sampler with σ = {P_STD:g} and mean μ "
            f"(lower μ: more noise); {config['size']} px, patch {config['patch']}: "
            f"{config['patch'] ** 2 * grid_data.CHANNELS}-d patches into width {config['width']}."
        ),
    )
