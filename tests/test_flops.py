"""`pixeljit.model.forward_flops`: the paper's Gflops (Tab. 5/7/8, GMACs of one forward pass) and
an independent count by torch's own FLOP counter over a real forward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pixeljit
from pixeljit.model import JiTConfig, forward_flops, model_config

FLOPS_PER_MAC = 2
# paper_facts.md §1a: "Gflops" per size at /16 (256 px) and /32 (512 px), one forward pass
PAPER_GMACS = {"JiT-B/16": 25, "JiT-L/16": 88, "JiT-H/16": 182, "JiT-G/16": 383,
               "JiT-B/32": 26, "JiT-L/32": 89, "JiT-H/32": 183, "JiT-G/32": 384}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_forward_macs_match_the_papers_gflops(name):
    """The paper prints whole numbers (G/16's 383.7 as 383, L/16's 87.9 as 88): within 1."""
    gmacs = forward_flops(model_config(name)) / FLOPS_PER_MAC / 1e9
    assert abs(gmacs - PAPER_GMACS[name]) < 1


def test_b16_forward_is_50_5_gflop():
    """Issue 12's figure: JiT-B/16 ≈ 50.5 GFLOP per image forward, 2 FLOPs per multiply-add."""
    assert forward_flops(model_config("JiT-B/16")) / 1e9 == pytest.approx(50.5, abs=0.1)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mlp": "gelu", "bottleneck_dim": None, "in_context_len": 0},
        {"in_context_start": 0, "mlp_ratio": 2.5},
    ],
)
def test_forward_flops_equal_torch_flop_counter(overrides):
    """An independent count: torch's FlopCounterMode over a real forward (matrix products,
    convolutions, 2 FLOPs per multiply-add) of a small JiT. Attention runs as explicit products
    (`attention='fp32'`, the same FLOPs as SDPA), which the counter sees on a CPU."""
    fields = dict(image_size=32, patch_size=4, hidden_size=48, depth=3, num_heads=3,
                  num_classes=5, bottleneck_dim=12, in_context_len=3, in_context_start=1,
                  attention="fp32")  # fmt: skip
    cfg = JiTConfig(**{**fields, **overrides})
    net = pixeljit.JiT(cfg).eval()
    batch = 2
    z = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(z, torch.rand(batch), torch.zeros(batch, dtype=torch.long))
    assert counter.get_total_flops() == batch * forward_flops(cfg)
