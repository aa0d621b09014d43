"""Cheap stand-ins for the feature extractors (average-pooled pixels instead of EffNet), and a
train function that records the cells it trains: what the evidence, NFE and interruption
tests use to run real grids within seconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixeljit.metrics.extractor import Extracted, FeatureExtractor
from pixeljit.training.loop import train

POOL = 4  # the test extractor's features: 4×4 average-pooled colours (48-d)


class PoolExtractor(FeatureExtractor):
    """A cheap stand-in for EffNet: any image size maps to the same 48-d features."""

    name = "pool4"
    fd_label = "FD-pool4"
    dim = 3 * POOL * POOL

    def extract(self, images: torch.Tensor) -> Extracted:
        x = images.float() / 255.0
        return Extracted(features=F.adaptive_avg_pool2d(x, POOL).flatten(1))


class CountingExtractor(PoolExtractor):
    def __init__(self):
        self.images = 0

    def extract(self, images: torch.Tensor) -> Extracted:
        self.images += len(images)
        return super().extract(images)


class GreyPoolExtractor(FeatureExtractor):
    """The pooling stand-in for one-channel images (16-d), counting its calls."""

    name, fd_label, dim = "pool4", "FD-pool4", POOL * POOL

    def __init__(self):
        self.calls = 0

    def extract(self, images: torch.Tensor) -> Extracted:
        self.calls += 1
        return Extracted(features=F.adaptive_avg_pool2d(images.float() / 255, POOL).flatten(1))


class Recorder:
    """A train function that records its calls and runs the real engine (or refuses)."""

    def __init__(self, allowed: bool = True):
        self.calls: list[tuple[str, str | None]] = []
        self.allowed = allowed

    def __call__(self, cfg, resume=None, progress=False):
        self.calls.append((cfg.run.out, resume))
        if not self.allowed:
            raise AssertionError(f"cell {cfg.run.out} was trained again")
        return train(cfg, resume=resume, progress=progress)


def bottleneck_reusing_nothing(config, out, reuse) -> str:
    """Run the one-cell bottleneck grid `config` into `out` with `reuse` folders that must give
    it nothing: the cell is trained here, not taken. Returns the progress lines said."""
    from pixeljit.experiments import bottleneck

    recorder, lines = Recorder(), []
    report = bottleneck.run_bottleneck(config, out, reuse=reuse, extractor=PoolExtractor(),
                                       train_fn=recorder, progress=lines.append)  # fmt: skip
    assert len(recorder.calls) == 1 and "reused_from" not in report["cells"][0]
    said = "\n".join(lines)
    assert "taken from --reuse: 0 of the 1 unfinished cell(s)" in said, said
    return said


def one_cell_noise_grid(out, config):
    """The one-cell `noise` grid `config` trained into `out` (one torch thread): (out, the
    cell's folder)."""
    import torch

    from pixeljit.experiments import noise
    from pixeljit.experiments.grid import CELLS_FOLDER

    torch.set_num_threads(1)
    report = noise.run_noise(config, out, extractor=PoolExtractor(), train_fn=Recorder())
    (cell,) = report["cells"]
    return out, out / CELLS_FOLDER / cell["name"]
