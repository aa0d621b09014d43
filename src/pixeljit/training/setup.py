"""Training set-up: the config resolved against the data and the world size (the batch plan),
and the training data opened."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch

from pixeljit.data import fashion_mnist
from pixeljit.data.open import BUILTIN_SOURCES, open_dataset
from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.sampler import NO_GUIDANCE
from pixeljit.files import GIB
from pixeljit.launch import launch_local_world_size
from pixeljit.model import JiT, JiTConfig, count_parameters
from pixeljit.training import distributed as dist_utils
from pixeljit.training.config import BF16_ONLY, MAX_OPTIM_STEPS, TrainConfig

MAX_TOTAL_STEPS = MAX_OPTIM_STEPS  # the ceiling optim.steps has: --epochs may not pass it
MAX_PREVIEW_IMAGES = 4096  # images in one training sample grid (rows × sample.per_class)
# float32 bytes each parameter costs in training, activations aside: weights, gradients and
# AdamW's two moments, plus one copy per EMA
TRAIN_BYTES_PER_PARAM = 4 * 4
EMA_BYTES_PER_PARAM = 4


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int  # per device and forward
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    cooldown_steps: int  # the last steps, over which the rate falls linearly to 0
    bf16: bool


def open_training_data(
    cfg: TrainConfig, info: dist_utils.DistInfo, progress: bool = True
) -> PackedDataset:
    """The packed training set at the model's size (rank 0 packs a raw source once). A model
    too large for the device is refused first, before a raw source is packed: its classes, known
    from the data, add little (counted as none here; resolve_config checks again with them)."""
    m = cfg.model
    check_model_fits(dataclasses.replace(cfg, model=dataclasses.replace(m, num_classes=0)), info)
    first = lambda fn: dist_utils.rank0_first(info, fn, "opening the training data")  # noqa: E731
    return open_dataset(cfg.data.source, m.image_size, m.in_channels, cfg.data.split, first,
                        progress=progress)  # fmt: skip


def flip_warning(cfg: TrainConfig, dataset: PackedDataset | None = None) -> str | None:
    """Why `data.flip` is likely a mistake for this data, or None. Fashion-MNIST is the one
    source known here to be asymmetric under mirroring (its shoes all face one way), named as
    `fashion-mnist` or packed from it (the packed folder's manifest records its source); image
    folders (ImageNet, the authors' flips) and the emoji set are left to the user."""
    if not cfg.data.flip:
        return None
    source = dataset.manifest.get("source") if dataset is not None else None
    packed_kind = source.get("kind") if isinstance(source, dict) else None
    if cfg.data.source == "fashion-mnist" or packed_kind == "fashion-mnist":
        return fashion_mnist.MIRROR_WARNING
    return None


def unused_classes_warning(cfg: TrainConfig, dataset) -> str | None:
    """More classes asked (data.num_classes) than the data's labels use: allowed (room for
    classes added later), but the extra ones are never trained, so it is said at the start."""
    asked, have = cfg.data.num_classes, dataset.num_classes
    if not (cfg.data.conditional and have > 1 and asked is not None and asked > have):
        return None
    return (
        f"{asked} classes asked (data.num_classes, or model.num_classes given), but the data has "
        f"{have}: classes {have}…{asked - 1} are never trained, and sampling them draws from "
        f"untrained embeddings. Ask for {have} (or leave it out) unless that is meant"
    )


INITIAL_SHARE_WARNING = 0.5  # warn when the sampled EMA is still mostly the initial weights


def ema_horizon_warning(cfg: TrainConfig, total_steps: int) -> str | None:
    """The EMA the run samples with, without the warm-up, keeps decay^steps of the initial
    weights at the end: more than half, and its samples are mostly the untrained network's."""
    decay = cfg.sampling_decay
    share = decay**total_steps
    if cfg.optim.ema_warmup or share <= INITIAL_SHARE_WARNING:
        return None
    return (
        f"the run samples (previews, `pixeljit sample`) with the EMA of decay {decay:g}, and "
        f"after {total_steps} step{'s' if total_steps != 1 else ''} {share:.0%} of it is still "
        "the initial weights (its "
        f"horizon is 1/(1 − decay) = {1 / (1 - decay):,.0f} steps): its samples will look "
        "untrained. Set optim.ema_warmup=true (the average then follows the early weights), "
        "train longer, or sample with --weights model"
    )


def _absolute_source(data):
    """A data path saved as an absolute path, so the run resumes from any working folder (a
    built-in name, or a path that does not exist here, is kept as given)."""
    source = data.source
    if source in BUILTIN_SOURCES or not os.path.exists(source):
        return data
    return dataclasses.replace(data, source=os.path.abspath(source))


def model_classes(cfg: TrainConfig, data_classes: int) -> int:
    """The model's classes for data of `data_classes` classes: data.num_classes (0 asks for an
    unconditional model, as model.num_classes 0 does), else the data's; 0 for unlabelled data
    (one class) or data.conditional false."""
    asked = cfg.data.num_classes
    if not (cfg.data.conditional and data_classes > 1 and asked != 0):
        return 0
    return asked if asked is not None else data_classes


def _num_classes(cfg: TrainConfig, dataset) -> int:
    """`model_classes` of the data; classes asked of unlabelled data and labels outside the
    classes are refused."""
    asked = cfg.data.num_classes
    classes = model_classes(cfg, dataset.num_classes)
    if cfg.data.conditional and not classes and asked:
        raise ValueError(
            f"{asked} class{'es were' if asked != 1 else ' was'} asked (data.num_classes, or "
            "model.num_classes given), but the "
            f"data has {dataset.num_classes} class: there are no labels to condition on. Drop "
            "that setting (the model is then unconditional) or train on labelled data (an image "
            "folder of class sub-folders)"
        )
    if classes:
        labels = np.asarray(dataset.labels)
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"sample {i} has label {int(labels[i])}, outside [0, {classes}) "
                f"({bad.size} such samples); fix the labels or the classes asked for "
                "(data.num_classes, or model.num_classes given)"
            )
    return classes


def resolve_config(cfg: TrainConfig, dataset, info: dist_utils.DistInfo):
    """Fill what depends on the data and the world: classes, noise scale, batch plan."""
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    if tuple(dataset.image_shape) != shape:
        raise ValueError(
            f"data images are {tuple(dataset.image_shape)} but the model expects {shape}; set "
            "model.image_size / model.in_channels to match, or repack the data"
        )
    classes = _num_classes(cfg, dataset)
    model = dataclasses.replace(m, num_classes=classes)
    objective = cfg.objective
    if objective.noise_scale is None:
        objective = dataclasses.replace(objective, noise_scale=m.image_size / 256)
    sample_cfg = cfg.sample
    if classes == 0 and sample_cfg.cfg != NO_GUIDANCE:  # nothing to guide: the run records it
        sample_cfg = dataclasses.replace(sample_cfg, cfg=NO_GUIDANCE)
    cfg = dataclasses.replace(
        cfg, model=model, objective=objective, data=_absolute_source(cfg.data), sample=sample_cfg
    )

    world, global_batch = info.world_size, cfg.optim.global_batch
    micro = cfg.optim.micro_batch or global_batch // world
    if not cfg.optim.micro_batch and (micro < 1 or global_batch % world):
        raise ValueError(
            f"optim.global_batch (--batch-size) {global_batch} does not split evenly over "
            f"{world} processes: pass a multiple of {world}"
        )
    if global_batch % (micro * world):
        raise ValueError(
            f"optim.global_batch (--batch-size) {global_batch} must be a multiple of "
            f"optim.micro_batch {micro} × world size {world}"
        )
    accumulation = global_batch // (micro * world)
    per_loader = micro * world
    if len(dataset) < per_loader:
        raise ValueError(
            f"the data set has {len(dataset)} images, fewer than one batch of {per_loader} "
            "(--batch-size / optim.global_batch, or optim.micro_batch × world size); pass a "
            "smaller --batch-size"
        )
    steps_per_epoch = epoch_steps(len(dataset), per_loader, accumulation)
    if cfg.optim.steps is not None:
        total = cfg.optim.steps
    else:
        total = _steps("--epochs / optim.epochs", cfg.optim.epochs, steps_per_epoch)
        total = max(1, total)
    warmup = _steps("optim.warmup_epochs", cfg.optim.warmup_epochs, steps_per_epoch, np.round)
    _check_preview(cfg)
    check_model_fits(cfg, info)
    precision = cfg.run.precision
    bf16 = precision == "bf16" or (precision == "auto" and info.device.type == "cuda")
    for name in BF16_ONLY:
        if getattr(cfg.run, name) and not bf16:
            raise ValueError(
                f"run.{name} computes in bf16, but run.precision={precision} is fp32 on "
                f"{info.device.type}: set run.precision=bf16, or drop run.{name}"
            )
    plan = BatchPlan(
        global_batch=global_batch,
        micro_batch=micro,
        accumulation=accumulation,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        cooldown_steps=int(np.round(cfg.optim.cooldown * total)),
        bf16=bf16,
    )
    return cfg, plan


def epoch_steps(num_samples: int, per_loader: int, accumulation: int) -> int:
    """Optimiser steps an epoch: loader batches of `per_loader` (a micro-step of every rank),
    `accumulation` of them a step; at least 1."""
    return max(1, (num_samples // per_loader) // accumulation)


def _steps(name: str, epochs: float, steps_per_epoch: int, to_int=np.ceil) -> int:
    """`epochs` × `steps_per_epoch` as a whole number of steps, refused past MAX_TOTAL_STEPS."""
    steps = float(epochs) * steps_per_epoch
    if not np.isfinite(steps) or steps > MAX_TOTAL_STEPS:
        raise ValueError(
            f"{name} {epochs!r} makes {steps:.3g} steps at {steps_per_epoch} steps an epoch, "
            f"more than {MAX_TOTAL_STEPS:.0e}; pass a smaller {name.split(' ')[0]}"
        )
    return int(to_int(steps))


def _check_preview(cfg: TrainConfig) -> None:
    """The training sample grid must fit (checked before training, not after it)."""
    s = cfg.sample
    rows = max(min(cfg.model.num_classes, s.max_classes), 1)
    if rows * s.per_class > MAX_PREVIEW_IMAGES:
        raise ValueError(
            f"the training sample grid would hold {rows} × {s.per_class} images "
            f"(sample.max_classes rows × sample.per_class), more than {MAX_PREVIEW_IMAGES}; "
            "lower sample.per_class or sample.max_classes"
        )


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory a device has in all (a CUDA device's, else the host's RAM); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def nothing_to_train(saved: dict | None, plan: BatchPlan) -> bool:
    """A resume whose checkpoint is at or past the run's length: nothing is built or written."""
    return saved is not None and saved["step"] >= plan.total_steps


def parameter_count(model: JiTConfig) -> int:
    """The model's parameters, counted without allocating them."""
    with torch.device("meta"):
        return count_parameters(JiT(model), trainable_only=False)


def check_model_fits(cfg: TrainConfig, info: dist_utils.DistInfo) -> None:
    """Refuse, before anything is allocated, a model whose training state alone (weights,
    gradients, AdamW moments, EMAs; FSDP shards them over the ranks) exceeds the device's whole
    memory: the sizes' upper bounds allow models of hundreds of GB, which would otherwise be
    allocated until the allocator or the kernel's OOM killer stops the process. On the CPU the
    memory is the machine's, shared by every rank torchrun started on it (LOCAL_WORLD_SIZE)."""
    params = parameter_count(cfg.model)
    per_param = TRAIN_BYTES_PER_PARAM + EMA_BYTES_PER_PARAM * len(cfg.optim.ema_decays)
    shards = info.world_size if cfg.run.distributed == "fsdp" else 1
    need = params * per_param // shards
    sharing = 1 if info.device.type == "cuda" else launch_local_world_size()
    have = device_memory_bytes(info.device)
    if have is None or need * sharing <= have:
        return
    emas = len(cfg.optim.ema_decays)
    state = f"weights, gradients, AdamW moments and {emas} EMA(s)"
    if sharing > 1:
        where = (
            f"{need / GIB:,.1f} GiB per process for {state}; the {sharing} processes on this "
            f"machine (LOCAL_WORLD_SIZE) need {need * sharing / GIB:,.1f} GiB together, more "
            f"than its {have / GIB:,.1f} GiB of memory: start fewer processes per machine "
            "(torchrun --nproc-per-node), shard the state (run.distributed=fsdp) or choose "
        )
    else:
        where = (
            f"{need / GIB:,.1f} GiB per device for {state}, more than the {have / GIB:,.1f} GiB "
            f"of {info.device}: choose "
        )
    raise ValueError(
        f"the model has {params:,} parameters; training it needs at least {where}a smaller "
        "model (model.hidden_size, model.depth, --preset)"
    )
