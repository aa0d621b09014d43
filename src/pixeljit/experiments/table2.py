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
(`ObjectiveConfig.noise_scale=None`). Cells are sampled and scored by `evidence.run_cell`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pixeljit.data.open import open_dataset
from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.objective import LOSS_SPACES, PREDICTIONS
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.experiments.evidence import (
    Cell,
    Measure,
    RealReference,
    feature_stats,
    hf_energy,
    read_json,
    real_subset,
    resolve_device,
    run_cell,
    write_json,
)
from pixeljit.metrics.extractor import FeatureExtractor
from pixeljit.training.config import apply_overrides, get_preset

PRESET = "emoji-cpu"
SETTINGS = ("bottlenecked", "plain")
CELLS_FOLDER = "cells"
DATA_FOLDER = "data"
REFERENCE_NAME = "real-reference.npz"  # the real images' statistics, computed once per folder
CONFIG_NAME = "table2-config.json"  # the grid's config, written first: a re-run must match it
# the quick variant (CI-sized): 30 steps, few samples, a 512-image subset of the emoji set
QUICK_STEPS = 30
QUICK_BATCH = 16
QUICK_SAMPLES = 32
QUICK_REAL = 128
QUICK_SAMPLER_STEPS = 5
QUICK_DATA_LIMIT = 512


@dataclass(frozen=True)
class Table2Config:
    """The grid (predictions × losses × seeds × settings), the network, training and measures."""

    predictions: tuple[str, ...] = PREDICTIONS
    losses: tuple[str, ...] = LOSS_SPACES
    seeds: tuple[int, ...] = (0,)
    settings: tuple[str, ...] = SETTINGS
    big_size: int = 64  # bottlenecked: image size and patch
    big_patch: int = 8
    small_size: int = 16  # plain: the same token grid (big_size / big_patch)
    small_patch: int = 2
    width: int = 128
    depth: int = 4
    heads: int = 4
    steps: int = 400
    batch: int = 32
    lr: float = 1e-3
    ema_decays: tuple[float, ...] = (0.99,)
    num_samples: int = 128
    sampler_steps: int = 25  # Heun steps (2 × steps − 1 network evaluations)
    weights: str = "ema"
    real_count: int = 512
    data: str = "emoji"
    data_limit: int | None = None  # None: every image (the packed cache); else the first N
    device: str = "auto"
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        for name, values, allowed in (
            ("predictions", self.predictions, PREDICTIONS),
            ("losses", self.losses, LOSS_SPACES),
            ("settings", self.settings, SETTINGS),
        ):
            bad = [v for v in values if v not in allowed]
            if not values or bad or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct values from {allowed}, got {values}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.big_size % self.big_patch or self.small_size % self.small_patch:
            raise ValueError("each image size must be a multiple of its patch size")
        if self.big_size // self.big_patch != self.small_size // self.small_patch:
            raise ValueError(
                f"both settings need the same token grid: {self.big_size}/{self.big_patch} vs "
                f"{self.small_size}/{self.small_patch}"
            )

    @classmethod
    def quick(cls, **overrides) -> Table2Config:
        """CI-sized: few steps and samples on a subset of the images (machinery, not claims)."""
        values = dict(
            steps=QUICK_STEPS, batch=QUICK_BATCH, num_samples=QUICK_SAMPLES,
            sampler_steps=QUICK_SAMPLER_STEPS, weights="model", real_count=QUICK_REAL,
            data_limit=QUICK_DATA_LIMIT, ckpt_every=QUICK_STEPS,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)

    def size_patch(self, setting: str) -> tuple[int, int]:
        if setting == "bottlenecked":
            return self.big_size, self.big_patch
        return self.small_size, self.small_patch

    def patch_dim(self, setting: str) -> int:
        size, patch = self.size_patch(setting)
        return patch * patch * 3

    def measure(self) -> Measure:
        return Measure(
            num_samples=self.num_samples,
            sampler=SamplerConfig(steps=self.sampler_steps, method="heun"),
            weights=self.weights,
            grid_samples=min(16, self.num_samples),
        )

    def as_dict(self) -> dict:
        plain = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}


def cell_name(setting: str, prediction: str, loss: str, seed: int) -> str:
    return f"{setting}-{prediction}pred-{loss}loss-seed{seed}"


def build_cells(config: Table2Config, out: Path, data: dict[str, str]) -> list[Cell]:
    """Every cell's TrainConfig: the preset + the grid's overrides (`data`: setting → source)."""
    base = get_preset(PRESET)
    cells = []
    for setting in config.settings:
        size, patch = config.size_patch(setting)
        for seed in config.seeds:
            for loss in config.losses:
                for prediction in config.predictions:
                    name = cell_name(setting, prediction, loss, seed)
                    cfg = apply_overrides(base, {
                        "model": {
                            "image_size": size, "patch_size": patch, "in_channels": 3,
                            "hidden_size": config.width, "depth": config.depth,
                            "num_heads": config.heads, "num_classes": 0, "bottleneck_dim": None,
                            "in_context_len": 0, "in_context_start": 0, "rope": False,
                            "qk_norm": False, "mlp": "swiglu", "norm": "rms",
                        },
                        "objective": {"prediction": prediction, "loss": loss,
                                      "noise_scale": None},
                        "optim": {"steps": config.steps, "epochs": None,
                                  "global_batch": config.batch, "lr": config.lr,
                                  "ema_decays": list(config.ema_decays)},
                        "data": {"source": data[setting], "conditional": False},
                        "sample": {"steps": 2, "per_class": 4, "every": 0},
                        "run": {"out": str(out / CELLS_FOLDER / name), "seed": seed,
                                "device": config.device, "ckpt_every": config.ckpt_every,
                                "log_every": max(1, min(50, config.steps)),
                                "tensorboard": False},
                    })  # fmt: skip
                    labels = {"setting": setting, "prediction": prediction, "loss": loss,
                              "seed": seed, "image_size": size, "patch_size": patch,
                              "patch_dim": config.patch_dim(setting)}  # fmt: skip
                    cells.append(Cell(name, cfg, labels))
    return cells


def setting_data(config: Table2Config, out: Path) -> dict[str, PackedDataset]:
    """The packed images of each model size: the whole set from the cache, or the first
    `data_limit` images packed once into the results folder."""
    from pixeljit.data.prepare import prepare
    from pixeljit.data.shards import MANIFEST

    sizes = {config.size_patch(s)[0] for s in SETTINGS}
    found = {}
    for size in sorted(sizes):
        if config.data_limit is None:
            found[size] = open_dataset(config.data, size, 3, progress=False)
            continue
        folder = out / DATA_FOLDER / f"{Path(config.data).name}-{size}px-{config.data_limit}"
        if not (folder / MANIFEST).is_file():
            prepare(config.data, size, folder, channels=3, limit=config.data_limit,
                    progress=False, overwrite=True)  # fmt: skip
        found[size] = PackedDataset(folder)
    return found


def real_reference(
    config: Table2Config, data: dict[int, PackedDataset], extractor: FeatureExtractor
) -> tuple[RealReference, dict[str, float]]:
    """Real statistics at the common resolution (the big images, enlarged by the extractor) and
    the HF energy of real images at each size. Also the *floor* of each setting: the FD of the
    real images at that setting's size against the reference (the best a perfect model of the
    small images can score at the common resolution)."""
    seed = config.seeds[0]
    big = real_subset(data[config.big_size], config.real_count, seed)
    hf_by_size = {
        size: hf_energy(real_subset(data[size], config.real_count, seed)) for size in data
    }
    real = RealReference.from_stats(feature_stats(extractor, big), hf_by_size)
    floor = {}
    for setting in config.settings:
        size = config.size_patch(setting)[0]
        images = big if size == config.big_size else real_subset(data[size], real.count, seed)
        floor[setting] = real.fd(feature_stats(extractor, images))
    return real, floor


def check_results_folder(config: Table2Config, out: Path) -> None:
    """A results folder belongs to one grid: a re-run with another config is refused (its cells
    would mix), the same config resumes."""
    path = out / CONFIG_NAME
    if path.is_file():
        saved = read_json(path)
        if saved != config.as_dict():
            changed = sorted(k for k in config.as_dict() if saved.get(k) != config.as_dict()[k])
            raise ValueError(
                f"--out {out} holds a table2 run with another config (differs in "
                f"{', '.join(changed) or 'its fields'}; see {path}): rerun with the same flags "
                "to resume it, or choose another --out"
            )
    else:
        write_json(path, config.as_dict())


def run_table2(
    config: Table2Config,
    out: str | Path,
    extractor: FeatureExtractor | None = None,
    progress: Callable[[str], None] | None = None,
    train_fn: Callable | None = None,
) -> dict:
    """Run (or resume) every cell; returns the report dict written as table2.json."""
    out = Path(out)
    start = time.perf_counter()
    if extractor is None:  # first: a missing package fails before anything is written
        from pixeljit.metrics import EffNetLite0Extractor

        extractor = EffNetLite0Extractor(device=resolve_device(config.device))
    out.mkdir(parents=True, exist_ok=True)
    check_results_folder(config, out)
    say = progress or (lambda line: None)
    data = setting_data(config, out)
    sources = {s: str(data[config.size_patch(s)[0]].folder) for s in SETTINGS}
    cells = build_cells(config, out, sources)
    cached = out / REFERENCE_NAME
    if cached.is_file():
        real, floor = RealReference.load(cached, extractor.name)
    else:
        real, floor = real_reference(config, data, extractor)
        real.save(cached, extractor.name, floor)
    say(f"real reference: {real.count} images; FD floor of each setting {floor}")
    measure = config.measure()
    results = []
    for k, cell in enumerate(cells, 1):
        result, skipped = run_cell(cell, measure, extractor, real, train_fn)
        results.append(result)
        state = (
            "finished earlier, kept"
            if skipped
            else (
                f"{result['train_s']:.0f} s train + {result['sample_s'] + result['score_s']:.0f} s "
                "sample/score"
            )
        )
        say(f"[{k}/{len(cells)}] {cell.name}: FD {result['fd']:.1f}, HF ratio "
            f"{result['hf_ratio']:.2f} ({state})")  # fmt: skip
    return {
        "experiment": "table2",
        "config": config.as_dict(),
        "extractor": extractor.name,
        "fd_label": getattr(extractor, "fd_label", "FD"),
        "real_count": real.count,
        "real_hf": {str(k): v for k, v in real.hf_by_size.items()},
        "fd_floor": floor,
        "cells": results,
        "this_run_s": time.perf_counter() - start,
        "total_cell_s": sum(r["train_s"] + r["sample_s"] + r["score_s"] for r in results),
    }
