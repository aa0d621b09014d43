"""What a run says when it starts: the data, the model and the length it trains (so nothing it
decided from the data — classes or none, grey or colour — goes unsaid), then its warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixeljit.checkpoints.config_diff import config_changes
from pixeljit.data.folders import FOLDER_KIND
from pixeljit.data.packed import PackedDataset
from pixeljit.data.text import utf8_text
from pixeljit.data.transforms import CHANNEL_NAMES
from pixeljit.launch import launch_world_size
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import to_dict
from pixeljit.training.resume import PLACE_FIELDS, with_added_fields
from pixeljit.training.setup import (
    BatchPlan,
    ema_horizon_warning,
    flip_warning,
    nothing_to_train,
    parameter_count,
    unused_classes_warning,
)


def _classes(cfg: TrainConfig) -> str:
    classes = cfg.model.num_classes
    if classes:
        return f"{classes} class{'es' if classes > 1 else ''}"
    if not cfg.data.conditional:
        return "unconditional (as asked: data.conditional=false, or model.num_classes=0)"
    if cfg.data.num_classes == 0:
        return "unconditional (data.num_classes=0)"
    return "unconditional: the data has no class labels (a flat folder, or one class)"


def data_line(cfg: TrainConfig, dataset: PackedDataset) -> str:
    """`data: SOURCE — N images, H×W grey|RGB, K classes | unconditional …`; an image folder
    packed here at one channel says it was made grey (model.in_channels)."""
    channels, height, width = dataset.image_shape
    colour = CHANNEL_NAMES.get(channels, f"{channels} channels")
    source = dataset.manifest.get("source")
    kind = source.get("kind") if isinstance(source, dict) else None
    packed_here = Path(cfg.data.source).resolve() != Path(dataset.folder).resolve()
    if kind == FOLDER_KIND and packed_here and channels == 1:
        colour += " (packed grey for model.in_channels=1; model.in_channels=3 keeps colour)"
    return (
        f"data: {utf8_text(cfg.data.source)} — {len(dataset):,} images, {height}×{width} {colour}, "
        f"{_classes(cfg)}"
    )


def run_line(cfg: TrainConfig, plan: BatchPlan, start: int, resume_file: Path | None) -> str:
    """`train: P parameters, S steps at batch B (E epochs)` and, resuming, where it starts."""
    total = plan.total_steps
    epochs = total / plan.steps_per_epoch
    line = (
        f"train: {parameter_count(cfg.model):,} parameters, {total:,} step"
        f"{'s' if total != 1 else ''} at batch {plan.global_batch} ({epochs:.3g} epoch"
        f"{'s' if epochs != 1 else ''}), "
        f"{'bf16' if plan.bf16 else 'fp32'}"
    )
    if cfg.run.matmul_precision != "highest":  # float32 products at reduced precision
        line += f" (float32 matmuls at {cfg.run.matmul_precision} precision)"
    if resume_file is not None:
        line += f"; resuming {resume_file} at step {start:,} ({total - start:,} to go)"
    return line


MAX_NAMED_CHANGES = 12  # settings named in the resume's line


def changed_settings_line(config: dict, saved: dict | None) -> str | None:
    """`resumed with changed settings: sample.every 500 → 100, …` (the config's fields that
    differ from the checkpoint's, where the run and its data are excepted): a resume takes
    flags, --set and --config over the saved config, and said nothing of what they changed."""
    if saved is None:
        return None
    changes = [f"{name} {a!r} → {b!r}"
               for name, a, b in config_changes(with_added_fields(saved["config"]), config)
               if name not in PLACE_FIELDS]  # fmt: skip
    if not changes:
        return None
    more = len(changes) - MAX_NAMED_CHANGES
    shown = ", ".join(changes[:MAX_NAMED_CHANGES]) + (f" and {more} more" if more > 0 else "")
    return f"resumed with changed settings: {shown}"


MAX_NAMED_CLASSES = 10  # empty classes named in the warning


def empty_classes_warning(cfg: TrainConfig, dataset: PackedDataset) -> str | None:
    """Classes the model conditions on that no training image has (a pack cut short by
    `prepare --limit`, or an empty class folder): they are never trained."""
    classes = min(cfg.model.num_classes, dataset.num_classes)  # more: unused_classes_warning
    if not classes:
        return None
    counts = np.bincount(np.asarray(dataset.labels), minlength=classes)[:classes]
    empty = np.flatnonzero(counts == 0)
    if not empty.size:
        return None
    names = getattr(dataset, "class_names", None) or []
    shown = [names[i] if i < len(names) else str(i) for i in empty[:MAX_NAMED_CLASSES].tolist()]
    more = f" and {empty.size - MAX_NAMED_CLASSES} more" if empty.size > MAX_NAMED_CLASSES else ""
    return (
        f"{empty.size} of the data's {classes} classes have no training image "
        f"({', '.join(shown)}{more}): the model never learns them and samples them from "
        "untrained embeddings. Pack the data without `prepare --limit`, or give those classes "
        "images"
    )


def unsharded_warning(cfg: TrainConfig, world_size: int) -> str | None:
    """run.distributed=fsdp (and run.fsdp_bf16_params) in a one-process run, where nothing is
    sharded (`distributed.wrap_model` returns the bare model): the run trains as a plain one.
    Said, not refused: the same config is run on one device to debug it."""
    if cfg.run.distributed != "fsdp" or world_size > 1:
        return None
    bf16 = cfg.run.fsdp_bf16_params
    fields = "run.distributed=fsdp" + (" and run.fsdp_bf16_params have" if bf16 else " has")
    params = ", with fp32 parameters" if bf16 else ""
    return (
        f"{fields} no effect in a one-process run: the model trains unsharded{params}; launch "
        "with `torchrun --nproc_per_node N` (N > 1) to shard it"
    )


def start_report(
    cfg: TrainConfig,
    plan: BatchPlan,
    dataset: PackedDataset,
    saved: dict | None,
    resume_file: Path | None,
) -> list[str]:
    """The lines rank 0 prints once the run is settled; for a resume with nothing to train,
    only that."""
    start, total = (saved["step"] if saved is not None else 0), plan.total_steps
    if nothing_to_train(saved, plan):
        return [
            f"nothing to train: the checkpoint is at step {start} and the run is {total} "
            f"step{'s' if total != 1 else ''} long; pass a larger --steps / --epochs to continue "
            "(no checkpoint is written; only a final grid or loss plot it lacks is drawn)"
        ]
    lines = [data_line(cfg, dataset), run_line(cfg, plan, start, resume_file)]
    changed = changed_settings_line(to_dict(cfg), saved)
    lines += [changed] if changed is not None else []
    warnings = (
        flip_warning(cfg, dataset),
        unused_classes_warning(cfg, dataset),
        empty_classes_warning(cfg, dataset),
        ema_horizon_warning(cfg, plan.total_steps),
        unsharded_warning(cfg, launch_world_size()),
    )
    return lines + [f"warning: {w}" for w in warnings if w is not None]


def progress_bar(enabled: bool, start: int, total: int):
    """The training loop's progress bar (tqdm), from step `start` of `total`; None if off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train")
