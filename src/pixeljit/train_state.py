"""Training set-up and state that the loop in train.py delegates: resolving the config against
the data and the world size, opening the data, gathering / restoring checkpoint state (DDP and
FSDP2), RNG capture, and the periodic sample grid."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixeljit import distributed as dist_utils
from pixeljit.config import TrainConfig
from pixeljit.data.open import open_dataset
from pixeljit.data.packed import PackedDataset


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int  # per device and forward
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    bf16: bool


def open_training_data(cfg: TrainConfig, info: dist_utils.DistInfo) -> PackedDataset:
    """The packed training set at the model's size (rank 0 packs a raw source once)."""
    m = cfg.model
    return open_dataset(
        cfg.data.source, m.image_size, m.in_channels, cfg.data.split, info.is_main,
        lambda: dist_utils.barrier(info),
    )  # fmt: skip


def resolve_config(cfg: TrainConfig, dataset, info: dist_utils.DistInfo):
    """Fill what depends on the data and the world: classes, noise scale, batch plan."""
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    if tuple(dataset.image_shape) != shape:
        raise ValueError(
            f"data images are {tuple(dataset.image_shape)} but the model expects {shape}; set "
            "model.image_size / model.in_channels to match, or repack the data"
        )
    conditional = cfg.data.conditional and dataset.num_classes > 1
    classes = 0
    if conditional:
        classes = cfg.data.num_classes if cfg.data.num_classes is not None else dataset.num_classes
        labels = np.asarray(dataset.labels)
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"sample {i} has label {int(labels[i])}, outside [0, {classes}) "
                f"({bad.size} such samples); fix the labels or data.num_classes"
            )
    model = dataclasses.replace(m, num_classes=classes)
    objective = cfg.objective
    if objective.noise_scale is None:
        objective = dataclasses.replace(objective, noise_scale=m.image_size / 256)
    cfg = dataclasses.replace(cfg, model=model, objective=objective)

    world, global_batch = info.world_size, cfg.optim.global_batch
    micro = cfg.optim.micro_batch or global_batch // world
    if micro < 1 or global_batch % (micro * world):
        raise ValueError(
            f"optim.global_batch {global_batch} must be a multiple of micro_batch {micro} × "
            f"world size {world}"
        )
    accumulation = global_batch // (micro * world)
    per_loader = micro * world
    if len(dataset) < per_loader:
        raise ValueError(f"the data set has {len(dataset)} images, fewer than one batch")
    steps_per_epoch = max(1, (len(dataset) // per_loader) // accumulation)
    if cfg.optim.steps is not None:
        total = cfg.optim.steps
    else:
        total = max(1, int(np.ceil(cfg.optim.epochs * steps_per_epoch)))
    precision = cfg.run.precision
    bf16 = precision == "bf16" or (precision == "auto" and info.device.type == "cuda")
    plan = BatchPlan(
        global_batch=global_batch,
        micro_batch=micro,
        accumulation=accumulation,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=int(round(cfg.optim.warmup_epochs * steps_per_epoch)),
        bf16=bf16,
    )
    return cfg, plan


# ------------------------------------------------------------------------- checkpoint state


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of a tensor or of an FSDP2 DTensor shard (a collective for DTensors)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def _dcp_options(strategy_sharded: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=strategy_sharded)


def gather_state(raw, ema, opt, loader, info, strategy: str) -> dict:
    """Model, EMA, optimizer and loader state as full CPU tensors, in one layout whatever the
    strategy (parameter names as optimizer keys), so a run may resume on a different world size
    or strategy. All ranks call (gathering FSDP2 shards is a collective); rank 0 keeps it."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _dcp_options(strategy == "fsdp" and info.enabled)
    model_state = {k: _full(v) for k, v in get_model_state_dict(raw, options=options).items()}
    opt_state = get_optimizer_state_dict(raw, opt, options=options)
    opt_state = _map_tensors(opt_state, _full)
    ema_state = ema.state_dict()
    ema_state["shadows"] = [[_full(s) for s in shadow] for shadow in ema_state["shadows"]]
    return {"model": model_state, "ema": ema_state, "optimizer": opt_state,
            "loader": loader.state_dict()}  # fmt: skip


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def load_training_state(saved: dict, raw, ema, opt, loader, info, strategy: str) -> int:
    """Restore everything `gather_state` saved; returns the step to continue from."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(raw, saved["model"], options=options)
    set_optimizer_state_dict(raw, opt, saved["optimizer"], options=options)
    ema_state = dict(saved["ema"])
    ema_state["shadows"] = [
        [_shard_like(s, v) for s, v in zip(shadow, saved_shadow, strict=True)]
        for shadow, saved_shadow in zip(ema.shadows, saved["ema"]["shadows"], strict=True)
    ]
    ema.load_state_dict(ema_state)
    loader.load_state_dict(saved["loader"])
    restore_rng(saved.get("rng"))
    return int(saved["step"])


def _shard_like(local, full: torch.Tensor):
    """Cut a full tensor into the same DTensor sharding as `local`."""
    if hasattr(local, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(local.device), local.device_mesh, local.placements)
    return full


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict | None) -> None:
    """Put back the global RNGs (the loop also reseeds per step, so resume is exact anyway)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> torch.Tensor:
    keys = np.random.get_state()[1]
    return torch.from_numpy(np.asarray(keys, dtype=np.int64))


# ------------------------------------------------------------------------------ samples


@torch.no_grad()
def ema_network(cfg: TrainConfig, ema, decay: float, info, device) -> torch.nn.Module | None:
    """A plain (unsharded) JiT holding one EMA's weights, on rank 0; None on other ranks.
    All ranks must call it: under FSDP2 gathering the shards is a collective."""
    from pixeljit.model import JiT

    full = [_full(s) for s in ema.shadows[ema.index(decay)]]
    if not info.is_main:
        return None
    with torch.device("meta"):
        net = JiT(cfg.model)
    net = net.to_empty(device=device)
    for p, value in zip(net.parameters(), full, strict=True):
        p.copy_(value)
    return net.eval()


@torch.no_grad()
def sample_grid(cfg: TrainConfig, ema, dataset, path: Path, info, device) -> Path | None:
    """A grid from an EMA: one row per class (up to sample.max_classes), sample.per_class columns,
    fixed seed, so grids of successive steps are comparable. All ranks call; rank 0 samples."""
    from pixeljit.images import save_grid
    from pixeljit.sampling import sample

    s = cfg.sample
    decay = s.ema_decay if s.ema_decay is not None else cfg.optim.ema_decays[0]
    net = ema_network(cfg, ema, decay, info, device)
    if net is None:
        return None
    classes = min(cfg.model.num_classes, s.max_classes)
    rows = max(classes, 1)
    labels = [c for c in range(classes) for _ in range(s.per_class)] if classes else None
    names = list(dataset.class_names[:classes]) if classes else None
    amp = torch.bfloat16 if device.type == "cuda" else None
    images = sample(
        net, labels, steps=s.steps, method=s.method, cfg=s.cfg if classes else 1.0,
        interval=s.interval, t_eps=s.t_eps, noise_scale=cfg.objective.noise_scale,
        prediction=cfg.objective.prediction, preconditioner=cfg.objective.preconditioner,
        num=None if classes else rows * s.per_class, seed=cfg.run.seed, amp_dtype=amp,
    )  # fmt: skip
    return save_grid(images, path, ncols=s.per_class, row_labels=names)
