"""Tab. 2 in miniature on the emoji set: nine prediction × loss pairs, bottlenecked vs not.

One small JiT — the Tab. 2 baseline: plain linear patch embedding (no bottleneck), no RoPE, no
qk-norm, no in-context tokens; SwiGLU + RMSNorm — with the same depth, width, heads and token
grid in two settings of the same images:
- `bottlenecked`: large images with large patches, patch dimension p²·3 ≥ width
  (default 64 px, patch 8: 192-d patches into width 128);
- `plain`: the same images small, the same token grid, patch dimension far below the width
  (default 16 px, patch 2: 12-d).
Every cell trains through `pixeljit.training.loop.train` (preset `emoji-cpu` + overrides) with
the same seed and steps; the noise scale of each setting is the project's rule image_size/256
(`ObjectiveConfig.noise_scale=None`). The grid runs through `grid.GridExperiment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.objective import LOSS_SPACES, PREDICTIONS
from pixeljit.experiments import grid, grid_data
from pixeljit.experiments.evidence import Cell, RealReference
from pixeljit.experiments.grid import (  # noqa: F401  (re-exported: the CLI and tests use them)
    CELLS_FOLDER,
    QUICK_STEPS,
    GridConfig,
    baseline_config,
    check_distinct,
)
from pixeljit.metrics.extractor import FeatureExtractor

EXPERIMENT = "table2"
SETTINGS = ("bottlenecked", "plain")
CONFIG_NAME = grid.config_name(EXPERIMENT)  # the grid's config, written first


@dataclass(frozen=True)
class Table2Config(GridConfig):
    """The grid (predictions × losses × seeds × settings) and the two settings' sizes; the
    network, training and measures are `GridConfig`'s."""

    predictions: tuple[str, ...] = PREDICTIONS
    losses: tuple[str, ...] = LOSS_SPACES
    settings: tuple[str, ...] = SETTINGS
    big_size: int = 64  # bottlenecked: image size and patch
    big_patch: int = 8
    small_size: int = 16  # plain: the same token grid (big_size / big_patch)
    small_patch: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distinct("predictions", self.predictions, PREDICTIONS)
        check_distinct("losses", self.losses, LOSS_SPACES)
        check_distinct("settings", self.settings, SETTINGS)
        if self.big_size % self.big_patch or self.small_size % self.small_patch:
            raise ValueError("each image size must be a multiple of its patch size")
        if self.big_size // self.big_patch != self.small_size // self.small_patch:
            raise ValueError(
                f"both settings need the same token grid: {self.big_size}/{self.big_patch} vs "
                f"{self.small_size}/{self.small_patch}"
            )

    def size_patch(self, setting: str) -> tuple[int, int]:
        if setting == "bottlenecked":
            return self.big_size, self.big_patch
        return self.small_size, self.small_patch


def cell_name(setting: str, prediction: str, loss: str, seed: int) -> str:
    return f"{setting}-{prediction}pred-{loss}loss-seed{seed}"


def build_cells(config: Table2Config, out: Path, data: dict[str, str]) -> list[Cell]:
    """Every cell's TrainConfig: the preset + the grid's overrides (`data`: setting → source)."""
    cells = []
    for setting in config.settings:
        size, patch = config.size_patch(setting)
        for seed in config.seeds:
            for loss in config.losses:
                for prediction in config.predictions:
                    name = cell_name(setting, prediction, loss, seed)
                    cells.append(grid.make_cell(
                        config, out, name, size=size, patch=patch, prediction=prediction,
                        loss=loss, seed=seed, source=data[setting], labels={"setting": setting},
                    ))  # fmt: skip
    return cells


def setting_sizes(config: Table2Config) -> list[int]:
    """Both settings' image sizes (each packed, whichever settings the grid runs)."""
    return [config.size_patch(s)[0] for s in SETTINGS]


def setting_data(config: Table2Config, out: Path) -> dict[int, PackedDataset]:
    """The packed images of both settings' sizes (see `grid_data.packed_data`)."""
    return grid_data.packed_data(config, setting_sizes(config), out)


def real_reference(
    config: Table2Config, data: dict[int, PackedDataset], extractor: FeatureExtractor
) -> tuple[RealReference, dict[str, float]]:
    """Real statistics at the common resolution (the big images, enlarged by the extractor) and
    the HF energy of real images at each size. Also the *floor* of each setting: the FD of the
    real images at that setting's size against the reference (the best a perfect model of the
    small images can score at the common resolution)."""
    sizes = {s: config.size_patch(s)[0] for s in config.settings}
    real, floor = grid_data.real_reference(config, data, extractor, config.big_size, sizes.values())
    return real, {s: floor[str(size)] for s, size in sizes.items()}


def build_sized_cells(config: Table2Config, out: Path, sources: dict[int, str]) -> list[Cell]:
    """`build_cells` given each size's packed images (`sources`: size → source)."""
    return build_cells(config, out, {s: sources[config.size_patch(s)[0]] for s in SETTINGS})


# (config, out, extractor=None, progress=None, train_fn=None) → table2.json's dict
run_table2 = grid.GridExperiment(
    EXPERIMENT, build_sized_cells, sizes=setting_sizes, reference=real_reference
).run
