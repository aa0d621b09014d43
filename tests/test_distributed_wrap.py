"""The wrappers torchrun's ranks train through (`training.distributed.wrap_model`), checked in a
one-process gloo group: DDP's gradients live in its all-reduce buckets; FSDP2 computes with fp32
parameters by default and with bf16 ones under `run.fsdp_bf16_params`, its master weights staying
fp32 either way; and the config refuses the switch where it would do nothing (issue 12)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from conftest import tiny_run, torchrun
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.model import JiT, JiTConfig
from pixeljit.training.config_io import apply_overrides, parse_set
from pixeljit.training.distributed import DistInfo, wrap_model
from pixeljit.training.presets import get_preset

TINY = dict(image_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2,
            num_classes=10, bottleneck_dim=8, in_context_len=4, in_context_start=1)  # fmt: skip
# what wrap_model sees under torchrun; the group itself has this one process
TWO_RANKS = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0,
                            world_size=1)  # fmt: skip
    yield
    dist.destroy_process_group()


def _model() -> JiT:
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def _step(model) -> None:
    gen = torch.Generator().manual_seed(1)
    z, t = torch.randn(4, 3, 16, 16, generator=gen), torch.rand(4, generator=gen)
    model(z, t, torch.arange(4)).square().mean().backward()


def test_ddp_gradients_are_views_of_its_buckets(group):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated argument
        ddp = wrap_model(_model(), TWO_RANKS, "ddp")
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    _step(ddp)
    grads = [p.grad for p in ddp.module.parameters() if p.requires_grad]
    storages = {g.untyped_storage().data_ptr() for g in grads}
    assert len(storages) < len(grads) / 4  # many gradients share one bucket's storage
    plain = _model()
    _step(plain)
    for p, q in zip(ddp.module.parameters(), plain.parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8)


def _weight_dtype_in_forward(bf16_params: bool) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of a block's MLP weight while the block computes, dtype of the sharded weight)."""
    net = wrap_model(_model(), TWO_RANKS, "fsdp", bf16_params=bf16_params)
    seen = []
    linear = net.blocks[0].mlp.w12  # SwiGLU's first matrix
    handle = linear.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_params):
        _step(net)
    handle.remove()
    return seen[0], linear.weight.dtype


def test_fsdp2_gathers_fp32_parameters_unless_asked_for_bf16(group):
    assert _weight_dtype_in_forward(False) == (torch.float32, torch.float32)
    assert _weight_dtype_in_forward(True) == (torch.bfloat16, torch.float32)  # master: fp32


def test_the_bf16_switch_is_refused_where_it_does_nothing(tmp_path):
    cfg = get_preset("fmnist-tiny")
    with pytest.raises(ValueError, match="FSDP2 only: add run.distributed=fsdp"):
        apply_overrides(cfg, parse_set(["run.fsdp_bf16_params=true"]))
    with pytest.raises(ValueError, match="set run.precision=bf16"):
        apply_overrides(cfg, parse_set(["run.distributed=fsdp", "run.fsdp_bf16_params=true",
                                        "run.precision=fp32"]))  # fmt: skip


def test_a_cpu_run_whose_precision_resolves_to_fp32_is_refused(fmnist16, tmp_path):
    from pixeljit.training.loop import train

    cfg = tiny_run(fmnist16(64), tmp_path / "run", **{"run.distributed": "fsdp",
                   "run.fsdp_bf16_params": True, "run.precision": "auto"})  # fmt: skip
    with pytest.raises(ValueError, match="fp32 on cpu: set run.precision=bf16"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before the folder was made


@pytest.mark.slow
def test_fsdp2_with_every_memory_switch_trains_under_torchrun(fmnist16, tmp_path):
    """Two ranks, FSDP2 gathering bf16 parameters, checkpointed blocks and a bf16 residual stream
    (gloo on the CPU): the run finishes, records how it ran, and keeps fp32 master weights that
    moved from the initial ones."""
    # no warm-up, whose first step moves nothing (the authors' schedule): both steps train
    sets = ["run.distributed=fsdp", "run.fsdp_bf16_params=true", "run.precision=bf16",
            "run.activation_checkpointing=true", "run.bf16_residual=true", "run.device=cpu",
            "run.tensorboard=false", "sample.steps=2", "sample.max_classes=2",
            "optim.warmup_epochs=0"]  # fmt: skip
    flags = ["train", "--preset", "fmnist-tiny", "--data", str(fmnist16(64)), "--steps", "2",
             "--out", str(tmp_path / "run"), "--batch-size", "16", "--no-progress"]  # fmt: skip
    for s in sets:
        flags += ["--set", s]
    done = torchrun(flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = load_checkpoint(tmp_path / "run")
    assert saved["step"] == 2
    facts = saved["execution"]
    assert facts["strategy"] == "fsdp" and facts["world_size"] == 2
    assert facts["fsdp_bf16_params"] and facts["bf16_residual"] and facts["precision"] == "bf16"
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = JiT(JiTConfig(**saved["config"]["model"])).state_dict()
    assert all(v.dtype == torch.float32 for v in saved["model"].values())
    moved = [k for k, v in saved["model"].items() if not torch.equal(v, initial[k])]
    # (adaLN-Zero: the MLPs get gradients only once the gates have moved)
    for key in ("x_embedder.proj.weight", "blocks.1.adaLN_modulation.1.weight",
                "final_layer.linear.weight"):  # fmt: skip
        assert key in moved, key


def _slow_rank0_worker(rank: int, port: int, out: str) -> None:
    import os
    import time
    from datetime import timedelta
    from pathlib import Path

    from pixeljit.training.distributed import barrier

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # the default group's timeout stands in for NCCL's 10 minutes, shortened
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=1))
    try:
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        if rank == 0:
            time.sleep(3)  # packing a raw folder, writing a large checkpoint, …
        barrier(info)
        Path(out, f"rank{rank}").write_text("passed")
    finally:
        dist.destroy_process_group()


def test_ranks_wait_for_a_slow_rank_0_longer_than_the_group_timeout(tmp_path):
    """Rank 0 alone packs a raw ImageNet folder (hours) while the others wait at `barrier`: on
    the default group they would die at NCCL's timeout; `barrier` waits RANK0_WAIT."""
    import torch.multiprocessing as mp

    from conftest import free_port

    mp.spawn(_slow_rank0_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
