"""Checkpoint state of a training run: model, EMAs, optimizer and loader gathered into one
strategy-independent layout (DDP and FSDP2) and restored from it, and the RNG states."""

from __future__ import annotations

import torch

from pixeljit.training.revisions import REVISION_KEY, TRAINING_REVISION


def full_tensor(t: torch.Tensor) -> torch.Tensor:
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
    or strategy, and the training revision of this code (`revisions`). All ranks call (gathering
    FSDP2 shards is a collective); rank 0 keeps it."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _dcp_options(strategy == "fsdp" and info.enabled)
    model_state = {k: full_tensor(v) for k, v in get_model_state_dict(raw, options=options).items()}
    opt_state = get_optimizer_state_dict(raw, opt, options=options)
    opt_state = _map_tensors(opt_state, full_tensor)
    ema_state = ema.state_dict()
    ema_state["shadows"] = [[full_tensor(s) for s in shadow] for shadow in ema_state["shadows"]]
    return {"model": model_state, "ema": ema_state, "optimizer": opt_state,
            "loader": loader.state_dict(), REVISION_KEY: TRAINING_REVISION}  # fmt: skip


def all_finite(raw, ema, opt, info) -> bool:
    """Whether every float in the model, the EMAs and the optimizer state is finite, on every rank
    (each checks its own FSDP2 shards; one all-reduce and one host sync)."""
    tensors = [p.detach() for p in raw.parameters()]
    tensors += [s for shadow in ema.shadows for s in shadow]
    tensors += [v for per_param in opt.state.values() for v in per_param.values()
                if isinstance(v, torch.Tensor)]  # fmt: skip
    local = [_local(t) for t in tensors if t.is_floating_point() and t.numel()]
    flags = [(~torch.isfinite(t)).any().to(info.device) for t in local]
    bad = torch.stack(flags).any().long() if flags else torch.zeros((), dtype=torch.long)
    bad = bad.to(info.device)
    if info.enabled:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return int(bad.item()) == 0


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def load_training_state(
    saved: dict, raw, ema, opt, loader, info, strategy: str, inexact_ok: bool = False
) -> int:
    """Restore everything `gather_state` saved; returns the step to continue from. With
    `inexact_ok` (--allow-inexact-resume) the data set may have changed size."""
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
    loader.load_state_dict(saved["loader"], other_size_ok=inexact_ok)
    restore_rng(saved.get("rng"))
    return int(saved["step"])


def _shard_like(local, full: torch.Tensor):
    """Cut a full tensor into the same DTensor sharding as `local`."""
    if hasattr(local, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(local.device), local.device_mesh, local.placements)
    return full


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state()}  # training draws no NumPy randomness
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


# ------------------------------------------------------------------------------ samples
