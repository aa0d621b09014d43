"""Resolution transfer: the same network at several resolutions of the same images.

JiT's thought experiment: a model at one resolution with p-pixel patches generates at k× the
resolution with kp-pixel patches, for about the same compute (the token grid, depth, width and
heads are unchanged; only the patch embedding and the output layer grow). The paper keeps the
signal-to-noise ratio by scaling the noise with the image, s = image_size/256 (§5b).

The grid: the sizes (default 16/2, 32/4, 64/8: an 8×8 token grid, 12-, 48- and 192-d patches
into width 128) × x- and v-prediction (both with the v-loss) × two noise variants:
- `scaled`: s = size / base_size (base_size 256: the project's rule, as `table2` uses);
- `fixed`: every size keeps the smallest size's s (the SNR ablation: the paper's s = 1 with the
  smallest size as the base). At the smallest size both variants are the same run, trained once.
Every sample set (and the real images of each size, for the floors) is resized to the largest
size before the FD, so all sizes are scored at one common resolution; the HF energy ratio is
measured at each model's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.objective import LOSS_SPACES, PREDICTIONS
from pixeljit.experiments import grid, grid_data
from pixeljit.experiments.evidence import Cell, RealReference
from pixeljit.experiments.grid import GridConfig, check_distinct
from pixeljit.experiments.sweep_report import Layout
from pixeljit.metrics.extractor import FeatureExtractor

EXPERIMENT = "resolution"
NOISE_VARIANTS = ("scaled", "fixed")
NAMES = {"x": "x", "eps": "ε", "v": "v"}
PAPER_BASE_SIZE = 256  # s = image_size / 256


@dataclass(frozen=True)
class ResolutionConfig(GridConfig):
    """The sizes (one token grid: patch = size / tokens), predictions and noise variants."""

    sizes: tuple[int, ...] = (16, 32, 64)
    tokens: int = 8  # token grid side, the same at every size
    predictions: tuple[str, ...] = ("x", "v")
    loss: str = "v"
    base_size: int = PAPER_BASE_SIZE  # scaled variant: s = size / base_size
    noise: tuple[str, ...] = NOISE_VARIANTS
    GPU_AXES = {"sizes": (32, 64, 128)}  # 48-, 192- and 768-d patches into width 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distinct("sizes", self.sizes)
        check_distinct("predictions", self.predictions, PREDICTIONS)
        check_distinct("noise", self.noise, NOISE_VARIANTS)
        if self.loss not in LOSS_SPACES:
            raise ValueError(f"loss must be one of {LOSS_SPACES}, got {self.loss!r}")
        if self.tokens < 1 or self.base_size < 1:
            raise ValueError("tokens and base_size must be ≥ 1")
        bad = [s for s in self.sizes if s % self.tokens or (s // self.tokens) < 1]
        if bad:
            raise ValueError(
                f"every size must be a multiple of the token grid {self.tokens} (the same "
                f"token count at every size), got {bad}"
            )
        if list(self.sizes) != sorted(self.sizes):
            raise ValueError(f"sizes must be increasing, got {self.sizes}")

    def patch(self, size: int) -> int:
        return size // self.tokens

    def noise_scale(self, size: int, variant: str) -> float:
        """The scaled variant follows the size; the fixed one keeps the smallest size's s."""
        return (size if variant == "scaled" else min(self.sizes)) / self.base_size


def series_name(prediction: str, variant: str, config: dict) -> str:
    base = config["base_size"]
    if variant == "scaled":
        return f"{NAMES[prediction]}-pred, s = size/{base}"
    return f"{NAMES[prediction]}-pred, s = {min(config['sizes'])}/{base} fixed"


def build_cells(config: ResolutionConfig, out: Path, sources: dict[int, str]) -> list[Cell]:
    """One cell per (seed, size, prediction, distinct noise scale): the variants that give the
    same s at a size share one run (labels['variants'] lists them)."""
    cells = []
    for seed in config.seeds:
        for size in config.sizes:
            patch = config.patch(size)
            for prediction in config.predictions:
                by_scale: dict[float, list[str]] = {}
                for variant in config.noise:
                    by_scale.setdefault(config.noise_scale(size, variant), []).append(variant)
                for scale, variants in by_scale.items():
                    name = f"{size}px-{prediction}pred-s{scale:g}-seed{seed}"
                    cells.append(grid.make_cell(
                        config, out, name, size=size, patch=patch, prediction=prediction,
                        loss=config.loss, seed=seed, source=sources[size], noise_scale=scale,
                        labels={"noise_scale": scale, "variants": variants},
                    ))  # fmt: skip
    return cells


def common_size(config: ResolutionConfig) -> int:
    """Every sample set, and the real images of every size, are scored at the largest size."""
    return max(config.sizes)


def real_reference(
    config: ResolutionConfig, data: dict[int, PackedDataset], extractor: FeatureExtractor
) -> tuple[RealReference, dict[str, float]]:
    """The real images of the largest size as the reference, and each size's floor."""
    common = common_size(config)
    return grid_data.real_reference(config, data, extractor, common, config.sizes, common)


# (config, out, extractor=None, progress=None, train_fn=None) → resolution.json's dict
run_resolution = grid.GridExperiment(
    EXPERIMENT,
    build_cells,
    sizes=lambda config: config.sizes,
    reference=real_reference,
    score_size=common_size,
).run


def layout(report: dict) -> Layout:
    config = report["config"]
    series = tuple(
        series_name(p, v, config) for p in config["predictions"] for v in config["noise"]
    )
    tokens = config["tokens"]

    def points(labels: dict) -> list[tuple[str, object]]:
        return [
            (series_name(labels["prediction"], v, config), labels["image_size"])
            for v in labels["variants"]
        ]

    floor = {int(k): v for k, v in report.get("fd_floor", {}).items()}
    return Layout(
        experiment=EXPERIMENT,
        x_label="image size / patch",
        xs=tuple(config["sizes"]),
        series=series,
        points=points,
        x_text=lambda size: f"{size}/{size // tokens}",
        log_x=True,
        floor=floor,
        note=(
            f"Every size has the same {tokens}×{tokens} token grid and network (width "
            f"{config['width']}, depth {config['depth']}), {NAMES[config['loss']]}-loss. FD of "
            f"samples resized to {max(config['sizes'])} px; the floor row is the FD of the real "
            "images of that size, resized the same way. HF ratio at each model's own size."
        ),
    )
