"""EMA in one pass: every decay of a parameter updated by one stacked lerp, bit-equal to a plain
per-decay loop, equal to the definition to float32 rounding, views that keep the checkpoint
format, and FSDP2 DTensor parameters (a one-process gloo group)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixeljit.training.ema import EMA

DECAYS = (0.9, 0.99, 0.9996)
STEPS = 6


class Shapes(nn.Module):
    """Parameters of every rank a JiT has (1-D norms, 2-D linears, 3-D tables, 4-D convs)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.randn(7))
        self.lin = nn.Linear(5, 3)
        self.table = nn.Parameter(torch.randn(1, 4, 6), requires_grad=False)
        self.conv = nn.Conv2d(2, 3, 2)


def _perturb(net: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in net.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard
            local.add_(torch.randn(local.shape, generator=gen))


def test_one_pass_equals_a_plain_loop_bit_for_bit_and_the_definition_to_rounding():
    torch.manual_seed(0)
    net, gen = Shapes(), torch.Generator().manual_seed(1)
    ema = EMA(net, DECAYS)
    plain = [[p.detach().clone() for p in net.parameters()] for _ in DECAYS]
    exact = [[p.detach().double() for p in net.parameters()] for _ in DECAYS]
    for _ in range(STEPS):
        _perturb(net, gen)
        ema.update(net)
        for decay, shadow, ref in zip(DECAYS, plain, exact, strict=True):
            for k, p in enumerate(net.parameters()):
                shadow[k].lerp_(p.detach(), 1.0 - decay)  # the formulation, one tensor at a time
                ref[k] = decay * ref[k] + (1.0 - decay) * p.detach().double()  # the definition
    for j in range(len(DECAYS)):
        for s, p_loop, p_exact in zip(ema.shadows[j], plain[j], exact[j], strict=True):
            assert torch.equal(s, p_loop)
            # a few float32 roundings per step: well inside 1e-6 of the values' size (~3)
            assert torch.allclose(s.double(), p_exact, rtol=0, atol=1e-5)


def test_shadows_are_views_of_the_stacks_and_state_round_trips():
    torch.manual_seed(0)
    net, gen = Shapes(), torch.Generator().manual_seed(2)
    ema = EMA(net, DECAYS)
    _perturb(net, gen)
    ema.update(net)
    state = ema.state_dict()
    assert [len(s) for s in state["shadows"]] == [len(list(net.parameters()))] * len(DECAYS)
    assert all(type(s) is torch.Tensor for shadow in state["shadows"] for s in shadow)
    # the state holds copies: updating the EMA leaves it as it was
    before = [s.clone() for s in state["shadows"][1]]
    _perturb(net, gen)
    ema.update(net)
    assert all(torch.equal(a, b) for a, b in zip(before, state["shadows"][1], strict=True))
    # loading writes through the views: the next update starts from the loaded values
    other = EMA(Shapes(), DECAYS)
    other.load_state_dict(state)
    for j in range(len(DECAYS)):
        assert all(torch.equal(a, b) for a, b in zip(other.shadows[j], state["shadows"][j],
                                                     strict=True))  # fmt: skip
    ema.load_state_dict(state)
    ema.update(net)
    other.update(net)
    for j in range(len(DECAYS)):
        assert all(torch.equal(a, b) for a, b in zip(ema.shadows[j], other.shadows[j],
                                                     strict=True))  # fmt: skip
    target = Shapes()
    ema.copy_to(target, DECAYS[2])
    assert all(torch.equal(p, s) for p, s in zip(target.parameters(), ema.shadows[2],
                                                 strict=True))  # fmt: skip


def test_fsdp2_dtensor_parameters(tmp_path):
    """Parameters sharded by `fully_shard` (one rank): shadows are DTensors with the parameter's
    sharding, updated in one pass like plain tensors, and a checkpoint round trip works."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        torch.manual_seed(0)
        net, gen = Shapes(), torch.Generator().manual_seed(3)
        plain = EMA(net, DECAYS)
        fully_shard(net)
        ema = EMA(net, DECAYS)
        assert all(isinstance(s, DTensor) for shadow in ema.shadows for s in shadow)
        for s, p in zip(ema.shadows[0], net.parameters(), strict=True):
            assert s.placements == p.placements and s.shape == p.shape
        for _ in range(3):
            _perturb(net, gen)
            ema.update(net)
            plain.update(nn.ParameterList(p.full_tensor() for p in net.parameters()))
        for j in range(len(DECAYS)):
            for s, ref in zip(ema.shadows[j], plain.shadows[j], strict=True):
                assert torch.equal(s.full_tensor(), ref)
        state = ema.state_dict()
        fresh = EMA(net, DECAYS)
        fresh.load_state_dict(state)
        for a, b in zip(fresh.shadows[1], ema.shadows[1], strict=True):
            assert torch.equal(a.full_tensor(), b.full_tensor())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("scalar_list", [True, False])
def test_the_multi_tensor_form_used_on_cuda_gives_the_same_bits(monkeypatch, scalar_list):
    """The CUDA form (one `_foreach_lerp_` over K·P views with scalar rates, or one call per
    decay on a torch without that overload), run on the CPU."""
    import pixeljit.training.ema as ema_module

    if scalar_list:
        assert ema_module.SCALAR_LIST_LERP  # the torch pinned for development has it
    monkeypatch.setattr(ema_module, "SCALAR_LIST_LERP", scalar_list)
    torch.manual_seed(0)
    net, gen = Shapes(), torch.Generator().manual_seed(4)
    stacked, multi = EMA(net, DECAYS), EMA(net, DECAYS)
    assert not stacked._multi_tensor  # a CPU model takes the stacked form
    multi._multi_tensor = True
    for _ in range(3):
        _perturb(net, gen)
        stacked.update(net)
        multi.update(net)
    for j in range(len(DECAYS)):
        assert all(torch.equal(a, b) for a, b in zip(stacked.shadows[j], multi.shadows[j],
                                                     strict=True))  # fmt: skip
