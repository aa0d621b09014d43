"""The frame every image reproduction shares (`reproduce table2 / resolution / bottleneck /
noise`): one results folder per grid, the small Tab. 2-baseline JiT each cell trains, and the
loop over the cells (the images and the real reference they are scored against: `grid_data`).

- `GridConfig`: the fields every grid has (seeds, network width / depth / heads, training steps,
  batch, learning rate, EMA, samples, sampler, real images, data, device); each experiment's
  config subclasses it and adds its axes.
- `baseline_config`: one cell's `TrainConfig`, the preset `emoji-cpu` plus the Tab. 2 baseline
  network (plain linear patch embedding unless a bottleneck is asked for, no RoPE / qk-norm /
  in-context tokens, SwiGLU + RMSNorm) and the cell's prediction, loss, noise scale, μ.
- `check_results_folder`: a folder holds one grid; the same config resumes, the same with more
  seeds (the earlier ones first) adds their cells, another is refused, and a non-empty folder
  without the grid's config file is not taken over.
- `make_cell` / `one_setting_cells`: a grid's cells, each labelled with what every report shows.
- `run_grid`: extractor first (a missing package fails before anything is written), then the
  folder check, the data, the real reference (computed once, kept as real-reference.npz), and
  every cell through `workers.run_cells` (finished cells kept, unfinished ones resume; N at once).
- `GridExperiment`: an experiment as `run_grid` needs it (sizes, cells, reference, scoring
  size, each a function of its config); its `run` is the experiment's `run_<name>`.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.experiments.evidence import (
    Cell,
    Measure,
    RealReference,
    read_json,
    write_json,
)
from pixeljit.experiments.grid_data import (
    CHANNELS,
    ReferenceFn,
    default_extractor,
    one_size_reference,
    packed_data,
)
from pixeljit.experiments.reuse import (
    CELLS_FOLDER,
    REFERENCE_NAME,
    REUSED_KEY,
    find_donors,
    reuse_report,
    take_finished,
)
from pixeljit.experiments.workers import run_cells
from pixeljit.metrics.extractor import FeatureExtractor
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import apply_overrides
from pixeljit.training.distributed import device_kind
from pixeljit.training.presets import get_preset

PRESET = "emoji-cpu"
GRID_PANEL = 16  # samples in each cell's grid (4×4)
MAX_LOG_EVERY = 50
# the quick variant (CI-sized): 30 steps, few samples, a 512-image subset of the emoji set
QUICK_STEPS = 30
QUICK_BATCH = 16
QUICK_SAMPLES = 32
QUICK_REAL = 128
QUICK_SAMPLER_STEPS = 5
QUICK_DATA_LIMIT = 512
# the GPU variant (`--device cuda`): a wider, deeper network, longer training, more samples
GPU_VALUES = dict(
    width=256, depth=6, heads=4, steps=4000, batch=128, num_samples=1024, real_count=2048,
    sampler_steps=50, ckpt_every=500,
)  # fmt: skip


def config_name(experiment: str) -> str:
    """The grid's config file, written first: a re-run must match it."""
    return f"{experiment}-config.json"


@dataclass(frozen=True)
class GridConfig:
    """What every grid shares: seeds, the network, training, sampling and measures."""

    seeds: tuple[int, ...] = (0,)
    width: int = 128
    depth: int = 4
    heads: int = 4
    steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    ema_decays: tuple[float, ...] = (0.995,)
    num_samples: int = 256
    sampler_steps: int = 25  # Heun steps (2 × steps − 1 network evaluations)
    weights: str = "ema"
    real_count: int = 512
    data: str = "emoji"
    data_limit: int | None = None  # None: every image (the packed cache); else the first N
    device: str = "auto"
    ckpt_every: int = 100
    GPU_AXES: typing.ClassVar[dict] = {}  # an experiment's larger axes in its GPU variant

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")

    @classmethod
    def quick(cls, **overrides):
        """CI-sized: few steps and samples on a subset of the images (machinery, not claims)."""
        values = dict(
            steps=QUICK_STEPS, batch=QUICK_BATCH, num_samples=QUICK_SAMPLES,
            sampler_steps=QUICK_SAMPLER_STEPS, weights="model", real_count=QUICK_REAL,
            data_limit=QUICK_DATA_LIMIT, ckpt_every=QUICK_STEPS,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)

    @classmethod
    def gpu(cls, **overrides):
        """Paper-like on a GPU: `GPU_VALUES` plus the experiment's own `GPU_AXES`."""
        values = {**GPU_VALUES, **cls.GPU_AXES, **overrides}
        return cls(**values)

    def measure(self, score_size: int | None = None) -> Measure:
        return Measure(
            num_samples=self.num_samples,
            sampler=SamplerConfig(steps=self.sampler_steps, method="heun"),
            weights=self.weights,
            grid_samples=min(GRID_PANEL, self.num_samples),
            score_size=score_size,
        )

    def as_dict(self) -> dict:
        plain = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}


def check_distinct(name: str, values: tuple, allowed: tuple | None = None) -> None:
    """A grid axis: non-empty, distinct values (from `allowed` when given)."""
    bad = [v for v in values if allowed is not None and v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        wanted = f" from {allowed}" if allowed is not None else ""
        raise ValueError(f"{name} must be distinct values{wanted}, got {values}")


def baseline_config(
    config: GridConfig,
    folder: Path,
    *,
    size: int,
    patch: int,
    prediction: str,
    loss: str,
    seed: int,
    source: str,
    noise_scale: float | None = None,
    p_mean: float | None = None,
    bottleneck_dim: int | None = None,
) -> TrainConfig:
    """One cell's training config: the preset + the Tab. 2 baseline network of `config`'s size
    (`noise_scale` None: the project's image_size/256; `p_mean` None: the preset's μ)."""
    objective = {"prediction": prediction, "loss": loss, "noise_scale": noise_scale}
    optim = {"steps": config.steps, "epochs": None, "global_batch": config.batch,
             "lr": config.lr, "ema_decays": list(config.ema_decays)}  # fmt: skip
    if config.weights == "model":  # scored raw: the EMA warm-up only keeps each cell's EMA from
        optim["ema_warmup"] = True  # being mostly its initial weights (the engine warns of it)
    if p_mean is not None:
        objective["p_mean"] = p_mean
    return apply_overrides(get_preset(PRESET), {
        "model": {
            "image_size": size, "patch_size": patch, "in_channels": CHANNELS,
            "hidden_size": config.width, "depth": config.depth, "num_heads": config.heads,
            "num_classes": 0, "bottleneck_dim": bottleneck_dim, "in_context_len": 0,
            "in_context_start": 0, "rope": False, "qk_norm": False, "mlp": "swiglu",
            "norm": "rms",
        },
        "objective": objective,
        "optim": optim,
        "data": {"source": source, "conditional": False},
        "sample": {"steps": 2, "per_class": 4, "every": 0},
        "run": {"out": str(folder), "seed": seed, "device": config.device,
                "ckpt_every": config.ckpt_every,
                "log_every": max(1, min(MAX_LOG_EVERY, config.steps)), "tensorboard": False},
    })  # fmt: skip


def make_cell(
    config: GridConfig, out: Path, name: str, *, labels: dict | None = None, **training
) -> Cell:
    """One cell `name` of a grid in `out`: its `baseline_config` (`training`: that function's
    keywords: size, patch, prediction, loss, seed, source and any of noise_scale / p_mean /
    bottleneck_dim) and the labels every grid reports (size, patch, patch dimension,
    prediction, loss, seed, as that config holds them), plus the grid's own `labels`."""
    cfg = baseline_config(config, out / CELLS_FOLDER / name, **training)
    size, patch = cfg.model.image_size, cfg.model.patch_size
    common = {"image_size": size, "patch_size": patch, "patch_dim": patch * patch * CHANNELS,
              "prediction": cfg.objective.prediction, "loss": cfg.objective.loss,
              "seed": cfg.run.seed}  # fmt: skip
    return Cell(name, cfg, (labels or {}) | common)


def one_setting_cells(
    config: GridConfig, out: Path, sources: dict[int, str], points: list[tuple[str, str, dict]]
) -> list[Cell]:
    """The cells of a grid at one setting (`config.size` px, patch `config.patch`, `config.loss`):
    for every seed, one cell per point (name, prediction, axis), named NAME-seedSEED, the axis
    (e.g. {"p_mean": -0.8}) being both `baseline_config` keywords and the cell's own labels."""
    setting = {"size": config.size, "patch": config.patch, "loss": config.loss,
               "source": sources[config.size]}  # fmt: skip
    cells = []
    for seed in config.seeds:
        for name, prediction, axis in points:
            cells.append(make_cell(config, out, f"{name}-seed{seed}", prediction=prediction,
                                   seed=seed, labels=axis, **setting, **axis))  # fmt: skip
    return cells


def same_kind_of_device(config: dict) -> dict:
    """A grid's config with its device as the kind it stands for here (`--device auto` and
    `--device cpu` on a machine without CUDA ran the same grid, and resume it alike)."""
    if isinstance(config, dict) and isinstance(config.get("device"), str):
        return {**config, "device": device_kind(config["device"])}
    return config


def added_seeds(saved: dict, wanted: dict) -> list[int]:
    """The seeds `wanted` adds to the grid `saved` when it is that grid with more seeds listed
    after the earlier ones (whose cells, and the real reference drawn with the first seed, stay
    valid), else []."""
    old, new = list(saved.get("seeds") or []), list(wanted.get("seeds") or [])
    rest = {k: v for k, v in saved.items() if k != "seeds"}
    if rest != {k: v for k, v in wanted.items() if k != "seeds"} or new[: len(old)] != old:
        return []
    return new[len(old) :]


def check_results_folder(config: GridConfig, out: Path, experiment: str) -> list[int]:
    """A results folder belongs to one grid: a re-run with another config is refused (its cells
    would mix), the same config resumes, the same config with more seeds listed after the
    earlier ones extends it; a non-empty folder holding no such grid is refused. Returns the
    seeds added (`run_grid` then rewrites the config file; this writes nothing)."""
    out = Path(out)
    path = out / config_name(experiment)
    wanted = same_kind_of_device(config.as_dict())
    if path.is_file():
        saved = same_kind_of_device(read_json(path))
        if saved == wanted:
            return []
        extra = added_seeds(saved, wanted)
        if extra:
            return extra
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        hint = ""
        if changed == ["seeds"]:
            earlier = " ".join(str(seed) for seed in saved.get("seeds") or [])
            hint = f" (to add seeds, list the earlier ones first: --seeds {earlier} …)"
        raise ValueError(
            f"--out {out} holds a {experiment} run with another config (differs in "
            f"{', '.join(changed) or 'its fields'}; see {path}){hint}: rerun with the same "
            "flags to resume it, or choose another --out"
        )
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"--out {out} is not empty and holds no {path.name} of an earlier {experiment} run: "
            "choose a new or empty folder"
        )
    return []


def run_grid(
    experiment: str,
    config: GridConfig,
    out: str | Path,
    sizes,
    build: Callable[[dict[int, str]], list[Cell]],
    reference: ReferenceFn,
    extractor: FeatureExtractor | None = None,
    progress: Callable[[str], None] | None = None,
    train_fn: Callable | None = None,
    score_size: int | None = None,
    jobs: int = 1,
    reuse=(),
) -> dict:
    """Run (or resume) every cell `build` returns (given each size's packed data folder), `jobs`
    at a time (`workers.run_cells`), first taking the cells that the results folders `reuse`
    finished with the same recipe, data, measure and reference (`experiments.reuse`); the
    report dict: the config, every cell's config and measures, the floors, the times."""
    out = Path(out)
    start = time.perf_counter()
    extractor = extractor or default_extractor(config.device)
    out.mkdir(parents=True, exist_ok=True)
    extra = check_results_folder(config, out, experiment)
    if extra or not (out / config_name(experiment)).is_file():
        write_json(out / config_name(experiment), config.as_dict())
    say = progress or (lambda line: None)
    if extra:
        say(f"adding seed(s) {', '.join(map(str, extra))} to the grid; the earlier seeds' cells "
            "are kept")  # fmt: skip
    data = packed_data(config, sizes, out, say)
    cells = build({size: str(found.folder) for size, found in data.items()})
    names = [cell.name for cell in cells]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:  # one folder would hold two cells: the second would report the first's results
        raise ValueError(f"two cells of the grid share the folder name {', '.join(shared)}: "
                         "give axis values that differ in their names")  # fmt: skip
    cached = out / REFERENCE_NAME
    if cached.is_file():
        real, floor = RealReference.load(cached, extractor.stats_name)
    else:
        say(f"real reference: measuring the real images with {extractor.stats_name}")
        real, floor = reference(data, extractor)
        real.save(cached, extractor.stats_name, floor)
    floors = ", ".join(f"{k} {v:.1f}" for k, v in floor.items())
    say(f"real reference: {real.count} images" + (f"; FD floor {floors}" if floors else ""))
    measure = config.measure(score_size)
    if reuse:
        donors, empty = find_donors(reuse, extractor.stats_name)
        datasets = {str(found.folder): found for found in data.values()}
        taken = take_finished(cells, measure, real, donors, datasets)
        say(reuse_report(taken, empty))

    def report(k: int, cell: Cell, result: dict, kept: bool) -> None:
        after = result["sample_s"] + result["score_s"]
        if REUSED_KEY in result:
            state = f"taken from {result[REUSED_KEY]}"
        elif kept:
            state = "finished earlier, kept"
        else:
            state = f"{result['train_s']:.0f} s train + {after:.0f} s sample/score"
        say(f"[{k}/{len(cells)}] {cell.name}: FD {result['fd']:.1f}, HF ratio "
            f"{result['hf_ratio']:.2f} ({state})")  # fmt: skip

    results = run_cells(cells, measure, extractor, real, report, train_fn, jobs)
    return {
        "experiment": experiment,
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


def one_size(config) -> tuple[int, ...]:
    """The images of a one-setting grid: `config.size` px."""
    return (config.size,)


@dataclass(frozen=True)
class GridExperiment:
    """One grid for `run_grid`, each part a function of the experiment's config: the image sizes
    it packs, its cells (`build(config, out, sources)`, sources: size → packed folder), its
    real reference and floors, and the size samples are resized to before the FD (None: their
    own). The defaults are those of a grid at one setting (`config.size` px)."""

    name: str
    build: Callable[[GridConfig, Path, dict[int, str]], list[Cell]]
    sizes: Callable[[GridConfig], typing.Sequence[int]] = one_size
    reference: Callable[..., tuple[RealReference, dict[str, float]]] = one_size_reference
    score_size: Callable[[GridConfig], int] | None = None

    def run(
        self,
        config: GridConfig,
        out: str | Path,
        extractor: FeatureExtractor | None = None,
        progress: Callable[[str], None] | None = None,
        train_fn: Callable | None = None,
        jobs: int = 1,
        reuse=(),
    ) -> dict:
        """Run (or resume) every cell, `jobs` at a time in worker processes (each with this
        process's torch threads), taking finished ones from the folders `reuse`; returns the
        report dict written as NAME.json."""
        out = Path(out)
        score_size = None if self.score_size is None else self.score_size(config)
        return run_grid(
            self.name, config, out, self.sizes(config),
            lambda sources: self.build(config, out, sources),
            lambda data, found: self.reference(config, data, found),
            extractor, progress, train_fn, score_size, jobs, reuse,
        )  # fmt: skip
