"""bf16 autocast does act where it is asked for, checked on the CPU (where autocast runs too):
the training loop's `run.precision=bf16` and the sampler's `amp_dtype`. Each is told apart from
float32 by what the network computes in, and by results that differ from float32's by bf16's
rounding only. (The GPU tests check the same on CUDA; without these, dropping either autocast
went unnoticed by every CPU test.)"""

from __future__ import annotations

import pytest
import torch

import pixeljit
from conftest import TINY_NET, tiny_run
from pixeljit.diffusion.sampler import sample
from pixeljit.training.loop import train


def _first_linear_dtypes(net) -> tuple[list[torch.dtype], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.dtype] = []
    handle = net.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen, handle


@pytest.fixture(scope="module")
def randomised():
    """TINY_NET with every parameter drawn (adaLN-Zero's zero init would hide the blocks)."""
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net


def test_sampling_with_amp_dtype_runs_the_network_in_bf16_and_keeps_the_state_float32(
    randomised,
):
    labels = [0, 1, 2, 0]
    seen, handle = _first_linear_dtypes(randomised)
    try:
        plain = sample(randomised, labels, steps=4, cfg=2.0, seed=0)
        assert set(seen) == {torch.float32}
        seen.clear()
        bf16 = sample(randomised, labels, steps=4, cfg=2.0, seed=0, amp_dtype=torch.bfloat16)
        assert set(seen) == {torch.bfloat16}
    finally:
        handle.remove()
    assert bf16.dtype == plain.dtype == torch.float32  # the state stays float32
    assert not torch.equal(bf16, plain)
    err = ((bf16 - plain).norm() / plain.norm()).item()
    assert 1e-4 < err < 5e-2, err  # bf16's rounding (8 mantissa bits), nothing more


def test_training_with_precision_bf16_computes_in_bf16(fmnist16, tmp_path):
    """Three-step runs from the same seed, float32 and bf16: the bf16 one's last loss differs by
    bf16's rounding only, and the float32 one's not at all from a repeat. (The first step's
    loss cannot differ: adaLN-Zero's zero-initialised output layer makes it exactly 0.)"""
    data = fmnist16(64)

    def last_loss(name: str, precision: str) -> float:
        cfg = tiny_run(data, tmp_path / name, **{"optim.steps": 3, "run.precision": precision})
        result = train(cfg, progress=False)
        assert result.final_loss is not None
        return result.final_loss

    fp32, again = last_loss("a", "fp32"), last_loss("b", "fp32")
    bf16 = last_loss("c", "bf16")
    assert fp32 == again  # the run is deterministic, so a difference is the precision's
    assert bf16 != fp32
    assert abs(bf16 - fp32) / fp32 < 5e-2
