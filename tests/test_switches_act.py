"""Ablation switches that must change what the network computes, not just its config:
`norm="layer"`, `qk_norm=False` and `attn_dropout`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pixeljit
from pixeljit.model import JiTConfig
from pixeljit.model.layers import NORM_EPS, LayerNorm, RMSNorm
from test_model import TINY as MODEL_TINY
from test_model import inputs

TINY = {**MODEL_TINY, "depth": 3, "in_context_start": 1}


def tiny(**overrides) -> pixeljit.JiT:
    """A tiny JiT with every trainable parameter drawn from N(0, 0.1²) under a fixed seed, so
    no adaLN-Zero gate or zero output layer hides a branch."""
    torch.manual_seed(0)
    net = pixeljit.JiT(JiTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                nn.init.normal_(p, std=0.1)
    return net


def all_norms(net: pixeljit.JiT) -> list[nn.Module]:
    """The token norms: norm1 / norm2 of every block and the final layer's."""
    return [m for b in net.blocks for m in (b.norm1, b.norm2)] + [net.final_layer.norm_final]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------- norm="layer"


def test_norm_layer_builds_layernorm_everywhere():
    norms = all_norms(tiny(norm="layer"))
    assert len(norms) == 2 * TINY["depth"] + 1
    assert all(type(m) is LayerNorm for m in norms)
    assert all(type(m) is RMSNorm for m in all_norms(tiny(norm="rms")))
    # same state-dict layout either way (a weight per norm), so only behaviour tells them apart
    assert tiny(norm="layer").state_dict().keys() == tiny(norm="rms").state_dict().keys()


def test_norm_layer_centres_tokens_and_rms_does_not():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 5, TINY["hidden_size"], generator=g) + 3.0  # a large mean per token
    for m in all_norms(tiny(norm="layer")):
        with torch.no_grad():
            out = m(u)
        ref = F.layer_norm(u, (u.shape[-1],), weight=m.weight, eps=NORM_EPS)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        unit = out / m.weight  # undo the (random) gain: zero mean, unit variance per token
        assert unit.mean(-1).abs().max() < 1e-4
        variance = unit.var(-1, unbiased=False)
        torch.testing.assert_close(variance, torch.ones(2, 5), rtol=1e-3, atol=0)
        with torch.no_grad():  # and invariant to a per-token offset
            torch.testing.assert_close(m(u + 5.0), out, rtol=1e-4, atol=1e-5)
    for m in all_norms(tiny(norm="rms")):  # the control: RMSNorm keeps the mean
        with torch.no_grad():
            unit = m(u) / m.weight
        assert unit.mean(-1).abs().min() > 0.5


def test_norm_switch_changes_the_output():
    a, b = tiny(norm="layer").eval(), tiny(norm="rms").eval()
    b.load_state_dict(a.state_dict())
    z, t, y = inputs(a)
    with torch.no_grad():
        assert rel_diff(a(z, t, y), b(z, t, y)) > 1e-2


# -------------------------------------------------------------------------------- qk_norm


def test_qk_norm_false_has_no_qk_norm_parameters():
    off, on = tiny(qk_norm=False), tiny(qk_norm=True)
    off_keys = [k for k in off.state_dict() if "q_norm" in k or "k_norm" in k]
    on_keys = [k for k in on.state_dict() if "q_norm" in k or "k_norm" in k]
    assert off_keys == []
    assert sorted(on_keys) == sorted(
        f"blocks.{i}.attn.{n}.weight" for i in range(TINY["depth"]) for n in ("q_norm", "k_norm")
    )
    for block in off.blocks:
        assert type(block.attn.q_norm) is nn.Identity and type(block.attn.k_norm) is nn.Identity
    for block in on.blocks:
        assert type(block.attn.q_norm) is RMSNorm and type(block.attn.k_norm) is RMSNorm


def scale_queries(net: pixeljit.JiT, factor: float) -> None:
    """Multiply every block's query projection (rows [0, D) of qkv, weight and bias)."""
    dim = net.config.hidden_size
    with torch.no_grad():
        for block in net.blocks:
            block.attn.qkv.weight[:dim] *= factor
            block.attn.qkv.bias[:dim] *= factor


def attention_input(net: pixeljit.JiT) -> tuple[torch.Tensor, tuple | None]:
    """Tokens for one attention layer (in-context prefix + patch grid) and its RoPE tables."""
    cfg = net.config
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, cfg.in_context_len + cfg.grid_size**2, cfg.hidden_size, generator=g)
    return x, net._rope(cfg.in_context_len)


@pytest.mark.parametrize("attention", ["sdpa", "fp32"])
def test_qk_norm_makes_attention_blind_to_query_scale(attention):
    """qk-norm (RMSNorm per head) divides out the scale of q, so scaling the query projection
    leaves the output as it was; without qk-norm the scale sharpens the softmax."""
    layer, model = {}, {}
    for qk_norm in (True, False):
        net = tiny(qk_norm=qk_norm, attention=attention).eval()
        z, t, y = inputs(net)
        x, rope = attention_input(net)
        attn = net.blocks[0].attn
        with torch.no_grad():
            base_layer, base_model = attn(x, rope), net(z, t, y)
            scale_queries(net, 4.0)
            layer[qk_norm] = rel_diff(attn(x, rope), base_layer)
            model[qk_norm] = rel_diff(net(z, t, y), base_model)
    assert layer[True] < 1e-5 and model[True] < 1e-5  # only eps = 1e-6 sees the scale
    assert layer[False] > 0.3
    assert model[False] > 1e-4  # diluted by the residual stream, but there


# ----------------------------------------------------------------------------- attn_dropout


@pytest.mark.parametrize("attention", ["sdpa", "fp32"])
def test_attn_dropout_acts_in_train_mode_only(attention):
    net = tiny(attn_dropout=0.3, dropout=0.0, attention=attention, dropout_blocks=(0, 3))
    assert net.config.dropout == 0.0  # attention dropout is the only random op
    plain = tiny(attn_dropout=0.0, dropout=0.0, attention=attention)
    plain.load_state_dict(net.state_dict())
    z, t, y = inputs(net)

    def forward(model: pixeljit.JiT, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(z, t, y)

    net.train()
    x, rope = attention_input(net)
    torch.manual_seed(1)
    with torch.no_grad():
        layer_a = net.blocks[0].attn(x, rope)
    torch.manual_seed(2)
    with torch.no_grad():
        layer_b = net.blocks[0].attn(x, rope)
    assert rel_diff(layer_a, layer_b) > 0.1  # one layer: masks drop 30 % of the weights

    first, second, again = forward(net, 1), forward(net, 2), forward(net, 1)
    assert rel_diff(first, second) > 1e-3  # the whole model: diluted by the residual stream
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # the seed fixes the mask

    plain.train()  # without attention dropout, train mode is deterministic ...
    reference = forward(plain, 1)
    torch.testing.assert_close(forward(plain, 2), reference, rtol=0, atol=0)
    assert rel_diff(first, reference) > 1e-3  # ... so the randomness above is the dropout

    net.eval(), plain.eval()
    a, b = forward(net, 1), forward(net, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, forward(plain, 3), rtol=0, atol=0)
    torch.testing.assert_close(a, reference, rtol=0, atol=0)
