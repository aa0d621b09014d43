"""Shared machinery of the image reproductions (`pixeljit reproduce table2`, `resolution`,
`bottleneck`, `noise`; the grid around it is `experiments.grid`): a grid of *cells*, each one
ordinary training run.

A cell is a `TrainConfig` (built from a preset plus overrides) with its own run folder under the
results folder. `run_cell` makes it resumable at two levels:
- a cell whose `result.json` exists is finished: it is read back, never re-run;
- a cell folder holding a checkpoint continues with `train(cfg, resume=folder)` (the training
  engine checks that the config did not change); a folder without one starts fresh.
After training, the cell's network (`checkpoints.load.load_trained`) is sampled with the
project's sampler (`diffusion.sampler.sample`, per-sample seeds) and scored:
- FD of extractor features (EffNet-Lite0 by default; the extractor resizes every image to its
  own input size, so every setting is scored at that one common resolution) against a
  `RealReference` of real images;
- the high-frequency energy ratio: mean squared difference between an image and its 2×
  down-then-up-sampled copy, samples over real images at the same size (1 = as sharp / as noisy
  as the data; far above 1 = residual noise, the failure mode of ε / v-prediction with large
  patches; far below = blur).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixeljit.checkpoints.run import find_checkpoint, load_checkpoint
from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.sampler import SamplerConfig, sample
from pixeljit.files.atomic import atomic_write, atomic_write_text
from pixeljit.files.images import save_grid, to_uint8
from pixeljit.metrics.distances import frechet_distance, sqrt_psd
from pixeljit.metrics.extractor import FeatureExtractor
from pixeljit.metrics.stats import FeatureStats
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import load_yaml, plain_json
from pixeljit.training.revisions import REVISION_KEY, checkpoint_revision
from pixeljit.training.rundir import run_files
from pixeljit.training.stopsignal import StoppedBySignal

RESULT_NAME = "result.json"  # its presence marks a finished cell
TRAINED_FILE = "trained.json"  # a cell's training seconds so far, over its runs, and step
RERUN = "re-run the same command"  # how an interrupted grid continues (its messages say it)
GRID_NAME = "grid.png"
REUSED_KEY = "reused_from"  # a result taken from another grid's cell (--reuse) names it
GRID_COLUMNS = 4  # 16 samples → a 4×4 panel in the figure
HF_FACTOR = 2  # the high-frequency residual: image − up(down(image, 2))
EXTRACT_BATCH = 64
REAL_SEED_TAG = 0x7265616C  # 'real': the seed of the real images' random subset


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: a name (its folder), the training config (whose run.out is
    the folder) and labels for the tables (e.g. setting, prediction, loss, seed)."""

    name: str
    config: TrainConfig
    labels: dict


@dataclass(frozen=True)
class Measure:
    """How a cell is sampled and scored (the same for every cell of a grid)."""

    num_samples: int = 128
    sampler: SamplerConfig = dataclasses.field(
        default_factory=lambda: SamplerConfig(steps=25, method="heun")
    )
    weights: str = "ema"  # 'ema' (the run's sampling EMA) or 'model' (for very short runs)
    grid_samples: int = 16  # samples shown in the cell's grid (≤ num_samples)
    score_size: int | None = None  # FD of samples resized to this size (None: as sampled)

    def record(self) -> dict:
        """What a cell's result records of how it was sampled and scored."""
        return {"num_samples": self.num_samples, "sampler": dataclasses.asdict(self.sampler),
                "weights": self.weights, "score_size": self.score_size}  # fmt: skip

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be ≥ 2 (a covariance), got {self.num_samples}")
        if not 1 <= self.grid_samples <= self.num_samples:
            raise ValueError(f"grid_samples must lie in [1, num_samples], got {self.grid_samples}")
        if self.score_size is not None and self.score_size < 1:
            raise ValueError(f"score_size must be ≥ 1 or None, got {self.score_size}")


# ----------------------------------------------------------------------------- measures


def hf_energy(images: torch.Tensor) -> float:
    """Mean squared residual of uint8 images (N, C, H, W) in [0, 1] against their 2× average-
    pooled then bilinearly enlarged copies: the energy above half the Nyquist frequency."""
    x = images.float() / 255.0
    h, w = x.shape[-2:]
    if h % HF_FACTOR or w % HF_FACTOR:
        raise ValueError(f"images must have even sides for the HF measure, got {h}×{w}")
    low = F.avg_pool2d(x, HF_FACTOR)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return float(((x - up) ** 2).mean())


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to size × size (bilinear, antialiased when shrinking);
    unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return x.round().clamp(0, 255).to(torch.uint8)


def feature_stats(extractor: FeatureExtractor, images: torch.Tensor) -> FeatureStats:
    """Streaming feature moments of uint8 images (N, C, H, W), in batches."""
    stats = FeatureStats(extractor.dim)
    for start in range(0, len(images), EXTRACT_BATCH):
        stats.update(extractor.features(images[start : start + EXTRACT_BATCH]).double().cpu())
    return stats


def real_subset(dataset: PackedDataset, count: int, seed: int) -> torch.Tensor:
    """`count` real images (uint8, N, C, H, W), a seeded random subset (the same indices for
    every size of the same data, so settings are compared with the same images)."""
    if count > len(dataset):
        raise ValueError(f"asked for {count} real images, the data set has {len(dataset)}")
    rng = np.random.default_rng([seed, REAL_SEED_TAG])
    indices = np.sort(rng.choice(len(dataset), size=count, replace=False))
    return torch.from_numpy(dataset.gather(indices))


@dataclass
class RealReference:
    """Real images' feature statistics at the common resolution (with Σ's square root, so each
    FD costs one eigenvalue solve), and their HF energy at each model size."""

    mu: np.ndarray
    sigma: np.ndarray
    root: np.ndarray  # sqrt_psd(sigma)
    hf_by_size: dict[int, float]
    count: int

    @classmethod
    def from_stats(cls, stats: FeatureStats, hf_by_size: dict[int, float]) -> RealReference:
        mu, sigma = stats.mu_sigma()
        return cls(mu, sigma, sqrt_psd(sigma), dict(hf_by_size), int(stats.count))

    def fd(self, stats: FeatureStats) -> float:
        mu, sigma = stats.mu_sigma()
        return frechet_distance(mu, sigma, self.mu, self.sigma, self.root)

    def save(self, path: Path, extractor: str, extra: dict) -> Path:
        """Kept in the results folder so a resumed run does not extract the real images again
        (`extra`: JSON-able facts stored beside, e.g. the floors)."""
        meta = json.dumps({"extractor": extractor, "hf_by_size": self.hf_by_size,
                           "count": self.count, "extra": extra})  # fmt: skip

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, mu=self.mu, sigma=self.sigma, meta=np.array(meta))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, extractor: str) -> tuple[RealReference, dict]:
        try:
            with np.load(path, allow_pickle=False) as f:
                mu, sigma, meta = f["mu"], f["sigma"], json.loads(str(f["meta"]))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path} is unreadable ({err}); move it away to recompute") from None
        if meta.get("extractor") != extractor:
            raise ValueError(
                f"{path} holds statistics of extractor {meta.get('extractor')!r}, not "
                f"{extractor!r}: use another results folder"
            )
        hf = {int(k): float(v) for k, v in meta["hf_by_size"].items()}
        return cls(mu, sigma, sqrt_psd(sigma), hf, int(meta["count"])), meta["extra"]


# ------------------------------------------------------------------------------- cells


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is unreadable ({err}); move it away to re-run that cell"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; move it away to re-run that cell")
    return data


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def has_checkpoint(folder: Path) -> bool:
    try:
        find_checkpoint(folder)
    except (FileNotFoundError, ValueError):
        return False
    return True


def train_cell(cell: Cell, train_fn: Callable | None = None) -> dict:
    """Train (or continue) the cell's run; returns what happened. `train_s` counts the earlier
    runs of a continued cell too (each run records its total in TRAINED_FILE); a cell whose
    training had ended (stopped while sampling or scoring) is not handed to the engine, which
    would only say that there is nothing to train."""
    from pixeljit.training.loop import train

    train_fn = train_fn or train
    folder = Path(cell.config.run.out)
    resumed = has_checkpoint(folder)
    before = _trained_before(folder) if resumed else 0.0
    if resumed:
        finished = _finished_training(folder, cell.config)
        if finished is not None:
            return {"train_s": before, "resumed": True, **finished}
    # a cell stopped before its first checkpoint left only config.yaml (and a log): nothing to
    # resume, so it starts again, those files moved aside by the engine (nothing is deleted)
    again = {} if resumed or not run_files(folder) else {"restart": True}
    start = time.perf_counter()
    result = train_fn(cell.config, resume=str(folder) if resumed else None, progress=False, **again)
    train_s = before + time.perf_counter() - start
    if result.checkpoint is not None:  # kept for a re-run continuing from that checkpoint
        write_json(folder / TRAINED_FILE, {"train_s": train_s, "step": result.step})
    if result.stopped_by_signal is not None:  # Ctrl-C / SIGTERM: the checkpoint is kept
        raise StoppedBySignal(
            f"cell {cell.name} stopped after step {result.step}; {RERUN} to continue it from "
            "its checkpoint",
            result.stopped_by_signal,
        )
    if result.stopped_on_nan:
        raise RuntimeError(
            f"cell {cell.name}: non-finite loss or weights at step {result.nan_step} (see "
            f"{folder}); lower the learning rate or move the cell folder away to re-run it"
        )
    return {
        "train_s": train_s,
        "resumed": resumed,
        "steps": result.step,
        "final_loss": result.final_loss,
    }


def _trained_before(folder: Path) -> float:
    """Seconds the cell trained in its earlier runs (0 without a record)."""
    path = folder / TRAINED_FILE
    return float(read_json(path)["train_s"]) if path.is_file() else 0.0


def _finished_training(folder: Path, config: TrainConfig) -> dict | None:
    """{steps, final_loss} of a cell whose checkpoint is at its run's end, else None."""
    from pixeljit.checkpoints.run import load_checkpoint
    from pixeljit.training.runlog import METRICS_FILE, read_metrics

    steps = config.optim.steps
    step = load_checkpoint(folder, tensors=False)["step"]  # the engine loads it whole
    if steps is None or step < steps:
        return None
    metrics = folder / METRICS_FILE
    records = read_metrics(metrics) if metrics.is_file() else []
    losses = [r["loss"] for r in records if r.get("step") == step and "loss" in r]
    return {"steps": step, "final_loss": losses[-1] if losses else None}


@torch.no_grad()
def sample_cell(folder: Path, measure: Measure, seed: int, device: str) -> torch.Tensor:
    """`measure.num_samples` uint8 samples (N, C, H, W) of the cell's trained network."""
    from pixeljit.checkpoints.load import load_trained

    trained = load_trained(folder, weights=measure.weights, device=resolve_device(device))
    net = trained.net.eval()
    images = sample(
        net, None, **measure.sampler.kwargs(), noise_scale=trained.noise_scale,
        prediction=trained.prediction, preconditioner=trained.preconditioner,
        sigma_data=trained.sigma_data, num=measure.num_samples, seed=seed,
    )  # fmt: skip
    return to_uint8(images).cpu()


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else the CPU; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def score_samples(
    samples: torch.Tensor,
    extractor: FeatureExtractor,
    real: RealReference,
    score_size: int | None = None,
) -> dict[str, float]:
    """FD against the real statistics (of the samples resized to `score_size` when given) and
    the HF energy ratio of uint8 samples (at their own size)."""
    size = int(samples.shape[-1])
    if size not in real.hf_by_size:
        raise ValueError(f"no real HF energy at {size} px (have {sorted(real.hf_by_size)})")
    hf = hf_energy(samples)
    scored = samples if score_size is None else resize_uint8(samples, score_size)
    return {
        "fd": real.fd(feature_stats(extractor, scored)),
        "hf": hf,
        "hf_ratio": hf / real.hf_by_size[size],
    }


def grid_readable(path: Path) -> bool:
    """Whether `path` is an image file PIL can read (a cell's sample grid)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError):  # missing, a folder, not an image, truncated
        return False
    return True


def redraw_grid(folder: Path, cell: Cell, measure: Measure, result: dict) -> None:
    """A finished cell's sample grid drawn again from its checkpoint, the same images (samples
    have seeds of their own) where it is missing or unreadable: the reports show it."""
    path = folder / GRID_NAME
    donor = result.get(REUSED_KEY)
    if donor:  # a checkpoint here is an earlier, unfinished run of the cell: not the result's
        raise FileNotFoundError(
            f"{path} is missing or not an image, and the finished cell was taken from {donor}, "
            f"whose checkpoint it does not hold: copy {GRID_NAME} from there, or move {folder} "
            "away to train the cell again"
        )
    if not has_checkpoint(folder):
        raise FileNotFoundError(
            f"{path} is missing or not an image, and the finished cell holds no checkpoint to "
            f"draw it again: restore the file, or move {folder} away to train the cell again"
        )
    if path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} is not a file: move it away and {RERUN}")
    count = measure.grid_samples
    shown = dataclasses.replace(measure, num_samples=max(count, 2))  # a Measure needs two
    samples = sample_cell(folder, shown, cell.config.run.seed, cell.config.run.device)
    save_grid(samples[:count], path, ncols=GRID_COLUMNS)


def run_cell(
    cell: Cell,
    measure: Measure,
    extractor: FeatureExtractor,
    real: RealReference,
    train_fn: Callable | None = None,
) -> tuple[dict, bool]:
    """The cell's result (a JSON-able dict) and whether it was already finished (read back)."""
    folder = Path(cell.config.run.out)
    done = folder / RESULT_NAME
    if done.is_file():
        result = read_json(done)
        if not grid_readable(folder / GRID_NAME):
            redraw_grid(folder, cell, measure, result)
        return result, True
    folder.mkdir(parents=True, exist_ok=True)
    trained = train_cell(cell, train_fn)
    start = time.perf_counter()
    samples = sample_cell(folder, measure, cell.config.run.seed, cell.config.run.device)
    sample_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_samples(samples, extractor, real, measure.score_size)
    save_grid(samples[: measure.grid_samples], folder / GRID_NAME, ncols=GRID_COLUMNS)
    result = {
        "name": cell.name,
        "labels": cell.labels,
        "config": load_yaml(folder / "config.yaml"),  # as the engine resolved it
        "measure": measure.record(),
        **scores,
        **trained,
        "sample_s": sample_s,
        "score_s": time.perf_counter() - start,
        "grid": GRID_NAME,  # and the code that trained it (--reuse compares it)
        REVISION_KEY: checkpoint_revision(load_checkpoint(folder, None, tensors=False)),
    }
    result = plain_json(result)
    write_json(done, result)
    return result, False
