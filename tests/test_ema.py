"""EMA: the closed form of repeated updates, several decays at once, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixeljit.training.ema import EMA


def test_updates_follow_the_closed_form():
    net = nn.Linear(3, 2)
    start = [p.detach().clone() for p in net.parameters()]
    ema = EMA(net, (0.9, 0.5))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)  # a constant target θ = 1 from now on
    for _ in range(5):
        ema.update(net)
    for k, decay in enumerate(ema.decays):
        for s, p0 in zip(ema.shadows[k], start, strict=True):
            # ema_n = decay^n · ema_0 + (1 − decay^n) · θ
            expected = decay**5 * p0 + (1 - decay**5) * torch.ones_like(p0)
            assert torch.allclose(s, expected, atol=1e-6)


def test_copy_and_state_round_trip():
    net = nn.Linear(3, 2)
    ema = EMA(net, (0.99,))
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    other = EMA(nn.Linear(3, 2), (0.99,))
    other.load_state_dict(ema.state_dict())
    target = nn.Linear(3, 2)
    other.copy_to(target, 0.99)
    assert torch.equal(target.weight, ema.shadows[0][0])
    with pytest.raises(ValueError, match="differ"):
        EMA(nn.Linear(3, 2), (0.9,)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="no EMA with decay"):
        ema.copy_to(target, 0.5)


def test_bad_decays():
    for decays, problem in [((), "at least one decay"), ((1.0,), r"lie in \[0, 1\)"),
                            ((0.9, 0.9), "distinct"), ((-0.1,), r"lie in \[0, 1\)")]:  # fmt: skip
        with pytest.raises(ValueError, match=problem):
            EMA(nn.Linear(2, 2), decays)
