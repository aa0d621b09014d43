"""The files a finished run ends with, drawn again when a failed write left them out.

A run writes its last sample grid (`samples-<step>.png`) and `loss.png` as it ends; a full disk
at that moment, or a stop just after the last checkpoint, leaves the checkpoint without them.
A resume with nothing left to train (`pixeljit train --resume`, `pixeljit demo --resume`) then
draws what is missing from that checkpoint, as the training previews would have: nothing that
exists is rewritten.
"""

from __future__ import annotations

from pathlib import Path

from pixeljit.checkpoints.run import find_checkpoint, same_file
from pixeljit.training.config import TrainConfig
from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE, plot_loss, read_metrics

GRID_PATTERN = "samples-{step:07d}.png"  # the loop's preview grids, by step


def final_grid(cfg: TrainConfig, checkpoint: str | Path, path: Path, device) -> Path:
    """The checkpoint's sample grid at `path` (its sampling EMA, `cfg`'s sample settings), as its
    training previews draw it; drawn only when `path` does not exist yet."""
    if path.is_file():
        return path
    from pixeljit.checkpoints.load import load_trained
    from pixeljit.training.previews import draw_grid

    model = load_trained(checkpoint, None, device)
    return draw_grid(cfg, model.net, model.class_names, path)


def draw_missing_finals(cfg: TrainConfig, checkpoint: Path, step: int, device) -> list[Path]:
    """In the run folder `cfg.run.out`, the final grid of `checkpoint` (at `step`) and the loss
    plot of its metrics when they are missing; returns what was drawn. Only for the folder's own
    newest checkpoint: an older one (a milestone, a set-aside branch) is not where the folder's
    run ended."""
    out = Path(cfg.run.out)
    try:
        newest = find_checkpoint(out, None)
    except (OSError, ValueError):
        return []
    if not same_file(newest, Path(checkpoint)):
        return []
    drawn = []
    grid = out / GRID_PATTERN.format(step=step)
    if not grid.exists():
        drawn.append(final_grid(cfg, checkpoint, grid, device))
    metrics, plot = out / METRICS_FILE, out / LOSS_PLOT
    if not plot.exists() and metrics.is_file() and any("loss" in r for r in read_metrics(metrics)):
        drawn.append(plot_loss(metrics, plot))
    return drawn
