"""Fig. 4: the bottleneck patch embedding's width, at the bottlenecked setting.

x-prediction with the v-loss (JiT's choice), large patches whose dimension exceeds the width
(default 64 px, patch 8: 192-d patches into width 128), and the linear patch embedding replaced
by two linear layers p²·C → d′ → width for d′ from very small up to none (the plain embedding,
Tab. 2's baseline). The paper: no catastrophic failure even at d′ = 16; a middle range improves
on none. Everything else is `table2`'s bottlenecked cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixeljit.diffusion.objective import LOSS_SPACES, PREDICTIONS
from pixeljit.experiments import grid, grid_data
from pixeljit.experiments.evidence import Cell
from pixeljit.experiments.grid import GridConfig, check_distinct
from pixeljit.experiments.sweep_report import Layout
from pixeljit.values import is_integer

EXPERIMENT = "bottleneck"
NAMES = {"x": "x", "eps": "ε", "v": "v"}
NONE_GAP = 2  # 'none' is drawn this factor right of the largest bottleneck (log axis)


@dataclass(frozen=True)
class BottleneckConfig(GridConfig):
    """The bottleneck dims (None: the plain linear embedding) at one bottlenecked setting."""

    size: int = 64
    patch: int = 8
    dims: tuple[int | None, ...] = (8, 16, 32, 64, 128, None)
    prediction: str = "x"
    loss: str = "v"
    GPU_AXES = {"size": 128, "patch": 16, "dims": (16, 32, 64, 128, 256, None)}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distinct("dims", self.dims)
        bad = [d for d in self.dims if d is not None and (not is_integer(d) or d < 1)]
        if bad:
            raise ValueError(f"bottleneck dims must be integers ≥ 1 or None (none), got {bad}")
        if self.prediction not in PREDICTIONS or self.loss not in LOSS_SPACES:
            raise ValueError(f"prediction / loss must be in {PREDICTIONS} / {LOSS_SPACES}")
        if self.size % self.patch:
            raise ValueError(f"size {self.size} must be a multiple of patch {self.patch}")
        patch_values = patch_dim(self.patch)
        wide = [d for d in self.dims if d is not None and d >= patch_values]
        if wide:
            raise ValueError(
                f"bottleneck dims (--dims) {' '.join(map(str, wide))} are not below the "
                f"{patch_values}-d patches (patch {self.patch}, {grid_data.CHANNELS} channels), "
                f"so they bottleneck nothing: give dims < {patch_values}, and 'none' for the "
                "plain embedding"
            )


def patch_dim(patch: int) -> int:
    """The values in one patch of the grids' colour images: what a bottleneck narrows."""
    return patch**2 * grid_data.CHANNELS


def dim_text(dim: int | None) -> str:
    return "none" if dim is None else str(dim)


def build_cells(config: BottleneckConfig, out: Path, sources: dict[int, str]) -> list[Cell]:
    points = [
        (f"bottleneck{dim_text(d)}", config.prediction, {"bottleneck_dim": d}) for d in config.dims
    ]
    return grid.one_setting_cells(config, out, sources, points)


# (config, out, extractor=None, progress=None, train_fn=None) → bottleneck.json's dict
run_bottleneck = grid.GridExperiment(EXPERIMENT, build_cells).run


def layout(report: dict) -> Layout:
    config = report["config"]
    dims = [d for d in config["dims"] if d is not None]
    patch_values = patch_dim(config["patch"])
    none_at = NONE_GAP * max(dims + [patch_values // NONE_GAP])
    name = f"{NAMES[config['prediction']]}-pred, {NAMES[config['loss']]}-loss"
    return Layout(
        experiment=EXPERIMENT,
        x_label="bottleneck dim",
        xs=tuple(sorted(config["dims"], key=lambda d: (d is None, d or 0))),  # none last
        series=(name,),
        points=lambda labels: [(name, labels["bottleneck_dim"])],
        x_text=dim_text,
        x_pos=lambda d: float(none_at if d is None else d),
        log_x=True,
        rows_are_x=True,
        note=(
            f"{config['size']} px, patch {config['patch']}: {patch_values}-d patches into width "
            f"{config['width']}; 'none' is the plain linear patch embedding. FD against real "
            f"{config['size']}-px images."
        ),
    )
