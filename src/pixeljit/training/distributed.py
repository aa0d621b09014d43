"""Process-group set-up for torchrun (DDP / FSDP2) and the single-process case.

Run plainly (`pixeljit train ...`) it is one process on one device; under `torchrun` it reads
RANK / WORLD_SIZE / LOCAL_RANK, picks NCCL on CUDA and gloo on CPU, and wraps the model with
PyTorch's own DistributedDataParallel or FSDP2 `fully_shard`. Nothing home-made.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from pixeljit.devices import as_device
from pixeljit.launch import check_started_together, launch_local_rank, launch_rank

STRATEGIES = ("ddp", "fsdp")
# How long the other ranks wait at `barrier` while rank 0 alone does slow work: packing a raw
# ImageNet folder, reference statistics over 50k images, writing a multi-GB checkpoint. The
# process group's own timeout (NCCL's 10 minutes) would kill such a run; a rank 0 that fails
# exits, and torchrun then stops the waiting ranks, so a long wait hides no crash.
RANK0_WAIT = timedelta(hours=24)
_rank0_wait: list = [None, None]  # [the default group, its gloo group for `barrier`]
# gloo's own errors open with its source location, "[…/gloo/transport/tcp/pair.cc:537]", and
# reach Python as a plain RuntimeError (from a collective's wait, or DDP's reducer in backward)
GLOO_ERROR_RE = re.compile(r"\[[^\]\s]*\bgloo/[^\]\s]*:\d+\]")
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' → cuda:<local_rank> when available, else cpu; 'cuda' gets the local rank index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = as_device(name, "auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def device_kind(name: str) -> str:
    """The device type a `run.device` / `--device` name stands for on this machine ('auto' is
    cuda where there is one, else cpu; 'cuda:1' is cuda): what decides the numbers a run
    computes, so two names of one kind describe the same run."""
    kind = str(name).split(":")[0]
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return kind


def setup(device_name: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by torchrun; a no-op otherwise."""
    world = check_started_together()  # each variable checked: one line naming a broken one
    rank, local_rank = launch_rank(), launch_local_rank()
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        _rank0_wait_group()  # now, while every rank is here, not when rank 0 is busy
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def rank0_first(info: DistInfo, fn: Callable[[], T], doing: str) -> T | None:
    """Run `fn` on rank 0 while the other ranks wait for it, as long as RANK0_WAIT (packing a raw
    data set takes hours), on `barrier`'s gloo group. If it raised, every rank learns so: rank 0
    raises its error, the others a RuntimeError saying rank 0 stopped the run while `doing`
    (not gloo's "Connection closed by peer" once rank 0 is gone). Returns what `fn` returned on
    rank 0, None on the others."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as err:
            error = err
    if info.enabled:
        failed = torch.tensor(int(error is not None))  # on the CPU: the group is gloo
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=_rank0_wait_group())
        if int(failed.item()) and error is None:
            raise RuntimeError(f"rank 0 stopped the run while {doing} (rank 0's error says why)")
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def process_group(device_name: str = "auto"):
    """`setup` for the body, `teardown` after it, but only when it succeeded: a rank that
    failed must exit at once, not wait at teardown's barrier for ranks that are themselves
    waiting for it in a collective (both would hang). Once it exits, torchrun stops the other
    ranks, and its error names the failed one."""
    info = setup(device_name)
    yield info
    teardown()


def collective_failed(err: BaseException) -> bool:
    """Whether `err` is a collective of this run's process group failing (another rank gone,
    its connection reset or closed), not an error of this rank's own: the group is initialised
    with more than one rank, and `err` is one of torch.distributed's DistError types (NCCL's) or
    a RuntimeError carrying gloo's source location (gloo raises no DistError)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and GLOO_ERROR_RE.search(str(err)) is not None


def teardown() -> None:
    """Leave the process group once every rank is done (call it only on success: see
    `process_group`)."""
    if dist.is_initialized():
        dist.barrier(group=_rank0_wait_group())  # rank 0 may still be writing its last files
        _rank0_wait[:] = [None, None]
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, info: DistInfo, strategy: str, bf16_params: bool = False
) -> nn.Module:
    """DDP or FSDP2 around `model` (already on info.device); the bare model when single-process.

    DDP: gradients are views into its all-reduce buckets (`gradient_as_bucket_view`: no second
    copy of every gradient), buffers are not broadcast (the RoPE tables are the same constants on
    every rank). `static_graph` is left off: every parameter takes part in every step, so DDP has
    no unused parameters to search for, which is all it would save here.
    FSDP2: one communication unit per block, then the rest; with `bf16_params`
    (`run.fsdp_bf16_params`) parameters are all-gathered in bf16 and gradients reduce-scattered
    in fp32, the sharded master weights and AdamW state staying fp32."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16_params
            else MixedPrecisionPolicy()  # parameters as they are (fp32): the authors' numerics
        )
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    # torch ≥ 2.13 names the per-forward buffer broadcast `forward_sync_buffers` and warns on the
    # old name (its one sync at construction copies rank 0's RoPE tables: the same values)
    takes = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in takes else "broadcast_buffers"
    return DistributedDataParallel(
        model, device_ids=ids, gradient_as_bucket_view=True, **{no_sync: False}
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The JiT inside a DDP wrapper (FSDP2 shards in place, so it is already the JiT)."""
    return getattr(model, "module", model)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (in place; returns it). Identity when single-process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def barrier(info: DistInfo) -> None:
    """Wait until every rank is here, for as long as RANK0_WAIT: the ranks wait for rank 0's
    slow work on a gloo group of their own (CPU-side, beside NCCL), not on the default group,
    whose timeout is minutes. `setup` makes the group; a group made elsewhere gets one on the
    first call, which every rank makes at the same point, as `new_group` requires."""
    if not info.enabled:
        return
    dist.barrier(group=_rank0_wait_group())


def share_from_rank0(value: T) -> T:
    """Rank 0's `value` (any picklable object; the others pass None) on every rank, each waiting
    for it as long as RANK0_WAIT (rank 0 may be moving 50,000 files into place) on `barrier`'s
    gloo group. Every rank calls it at the same point."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_rank0_wait_group())
    return box[0]


def wait_for_every_rank() -> None:
    """`barrier` for code that holds no DistInfo (torch.distributed initialised, > 1 rank)."""
    dist.barrier(group=_rank0_wait_group())


def _rank0_wait_group():
    """The gloo group of `barrier` for the current default group (made on the first call)."""
    if _rank0_wait[0] is not dist.group.WORLD:  # a new process group since the last call
        _rank0_wait[:] = [dist.group.WORLD, dist.new_group(backend="gloo", timeout=RANK0_WAIT)]
    return _rank0_wait[1]
