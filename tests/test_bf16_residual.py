"""`run.bf16_residual` (`JiT.bf16_residual`): under bf16 autocast the residual stream between
blocks becomes bf16 instead of the fp32 that the fp32 position embedding makes it (the authors'
numerics, kept by default); without autocast nothing changes (issue 12)."""

from __future__ import annotations

import pytest
import torch

from conftest import rel_err, tiny_run
from pixeljit.model import JiT, JiTConfig
from pixeljit.training.config_io import apply_overrides, parse_set, to_dict
from pixeljit.training.presets import get_preset
from pixeljit.training.resume import check_resume

TINY = dict(image_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=3, num_heads=4,
            num_classes=10, bottleneck_dim=8, in_context_len=4, in_context_start=1)  # fmt: skip
BF16_REL_ERR = 3e-2  # a bf16 network against the float32 one


def _run(bf16_residual: bool, autocast: bool) -> tuple[list[torch.dtype], torch.Tensor]:
    """(dtype of the stream entering each block, the output) for one fixed input."""
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.bf16_residual = bf16_residual
    seen = []
    for block in net.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    gen = torch.Generator().manual_seed(1)
    z, t = torch.randn(4, 3, 16, 16, generator=gen), torch.rand(4, generator=gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(z, t, torch.arange(4))
    return seen, out.float()


def test_the_stream_is_fp32_under_autocast_unless_asked_for_bf16():
    depth = TINY["depth"]
    fp32_stream, reference = _run(False, autocast=True)
    bf16_stream, out = _run(True, autocast=True)
    assert fp32_stream == [torch.float32] * depth  # the authors' numerics
    assert bf16_stream == [torch.bfloat16] * depth
    _, exact = _run(False, autocast=False)
    assert rel_err(reference, exact) < BF16_REL_ERR and rel_err(out, exact) < BF16_REL_ERR
    assert not torch.equal(out, reference)  # it does change the numbers


def test_without_autocast_it_changes_nothing():
    (stream_a, a), (stream_b, b) = _run(False, autocast=False), _run(True, autocast=False)
    assert stream_a == stream_b == [torch.float32] * TINY["depth"]
    assert torch.equal(a, b)


def test_it_is_refused_with_fp32_precision(fmnist16, tmp_path):
    with pytest.raises(ValueError, match="run.bf16_residual needs bf16 autocast"):
        apply_overrides(get_preset("fmnist-tiny"),
                        parse_set(["run.bf16_residual=true", "run.precision=fp32"]))  # fmt: skip
    from pixeljit.training.loop import train

    cfg = tiny_run(fmnist16(64), tmp_path / "run", **{"run.bf16_residual": True})
    with pytest.raises(ValueError, match="run.bf16_residual computes in bf16.*fp32 on cpu"):
        train(cfg, progress=False)  # precision auto: fp32 on a CPU
    assert not (tmp_path / "run").exists()


def test_switching_it_resumes_only_inexactly(fmnist16, tmp_path):
    cfg = to_dict(tiny_run(fmnist16(64), tmp_path))
    facts = {"device_type": "cuda", "precision": "bf16", "compiled": True, "adamw": "fused",
             "world_size": 1, "micro_batch": 16, "strategy": "single"}  # fmt: skip
    old = {"config": cfg, "execution": facts}  # written before the fact existed: fp32 stream
    assert check_resume(old, cfg, {**facts, "bf16_residual": False}, "ckpt", False) == []
    with pytest.raises(ValueError, match="execution.bf16_residual.*--allow-inexact-resume"):
        check_resume(old, cfg, {**facts, "bf16_residual": True}, "ckpt", allow_inexact=False)
    inexact = check_resume(old, cfg, {**facts, "bf16_residual": True}, "ckpt", allow_inexact=True)
    assert len(inexact) == 1 and inexact[0].startswith("execution.bf16_residual"), inexact
