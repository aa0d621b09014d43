"""The JiT network: registry sizes, forward contract, ablation switches, numerics."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pixeljit
from pixeljit.model import JiTConfig, model_names
from pixeljit.model.layers import apply_rope, rope_2d_tables, rope_pair_formula

TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    depth=4,
    num_heads=4,
    num_classes=10,
    bottleneck_dim=16,
    in_context_len=4,
    in_context_start=2,
)


def tiny(**overrides) -> pixeljit.JiT:
    torch.manual_seed(0)
    net = pixeljit.JiT(JiTConfig(**{**TINY, **overrides}))
    # randomise the zero-initialised adaLN / output layers so every path matters
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return net


def inputs(net: pixeljit.JiT, n: int = 3):
    cfg = net.config
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.rand(n, generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (n,), generator=g) if cfg.num_classes else None
    return z, t, y


def test_registry_matches_authors_parameter_counts(reference):
    for name, count in reference["param_counts"].items():
        assert pixeljit.count_parameters(pixeljit.create_model(name, device="meta")) == count


@pytest.mark.parametrize("name", ["JiT-G/16", "JiT-G/32", "JiT-B/64", "JiT-L/64"])
def test_g_and_64_sizes_build_on_meta(name):
    """Built without memory, 16 × 16 tokens; exact counts are in test_presets.py."""
    net = pixeljit.create_model(name, device="meta")
    assert all(p.device.type == "meta" for p in net.parameters())  # nothing allocated
    assert net.config.grid_size == 16 and net.config.image_size == 16 * net.config.patch_size


def test_registry_configs_follow_table_9():
    h = pixeljit.model_config("JiT-H/32")
    assert (h.depth, h.hidden_size, h.num_heads, h.bottleneck_dim, h.in_context_start) == (
        32,
        1280,
        16,
        256,
        10,
    )
    assert h.dropout == 0.2 and h.dropout_range == (8, 24) and h.image_size == 512
    g = pixeljit.model_config("JiT-G/16")
    assert (g.depth, g.hidden_size, g.bottleneck_dim, g.in_context_len) == (40, 1664, 256, 32)
    assert len(model_names()) == 12
    net = pixeljit.create_model("JiT-H/16", device="meta")
    dropped = [i for i, b in enumerate(net.blocks) if b.mlp.drop.p > 0]
    assert dropped == list(range(8, 24))
    assert all(b.attn.proj_drop.p == 0.2 for b in net.blocks[8:24])


def test_registry_rejects_unknown():
    with pytest.raises(ValueError, match="unknown model"):
        pixeljit.create_model("JiT-X/16", device="meta")
    with pytest.raises(ValueError, match="unknown JiT config fields"):
        pixeljit.create_model("JiT-B/16", device="meta", widht=3)


def test_fresh_model_outputs_zero_and_uses_declared_init():
    net = pixeljit.JiT(JiTConfig(**TINY))
    z, t, y = inputs(net)
    assert torch.equal(net(z, t, y), torch.zeros_like(z))  # adaLN-Zero + zero output layer
    w = net.blocks[0].attn.qkv.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # Xavier-uniform
    assert net.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("depth, blocks", [(12, (3, 9)), (6, (1, 3)), (7, (1, 3)), (3, ())])
def test_dropout_of_both_kinds_acts_in_the_authors_middle_blocks_only(depth, blocks):
    """The authors' range, depth//4 ≤ i < depth//4·3, for the projection / MLP dropout and the
    attention-weight dropout alike (depth 6: blocks 1 and 2, where 3·depth//4 would add 3)."""
    net = pixeljit.JiT(JiTConfig(**{**TINY, "depth": depth, "dropout": 0.2, "attn_dropout": 0.1}))
    middle = range(*blocks) if blocks else range(0)
    for i, block in enumerate(net.blocks):
        assert block.attn.attn_dropout == (0.1 if i in middle else 0.0), i
        dropouts = [m.p for m in block.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts == ([0.2] * len(dropouts) if i in middle else []), i
        assert (len(dropouts) > 0) == (i in middle)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bottleneck_dim": None},
        {"in_context_len": 0},
        {"rope": False},
        {"qk_norm": False},
        {"mlp": "gelu"},
        {"norm": "layer"},
        {"dropout": 0.2, "dropout_blocks": (1, 3)},
        {"in_channels": 1},
        {"image_size": 48},
        {"num_classes": 0},
        {"num_classes": 0, "in_context_len": 0},
        {"attention": "fp32"},
    ],
)
def test_forward_contract_under_every_switch(overrides):
    net = tiny(**overrides).eval()
    z, t, y = inputs(net)
    out = net(z, t, y)
    assert out.shape == z.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_switches_change_structure():
    assert not hasattr(tiny(bottleneck_dim=None).x_embedder, "proj1")
    assert tiny(num_classes=0).y_embedder is None
    assert "in_context_posemb" not in dict(tiny(in_context_len=0).named_parameters())
    assert isinstance(tiny(mlp="gelu").blocks[0].mlp, pixeljit.model.layers.GeluMLP)


def test_bf16_autocast_close_to_fp32():
    net = tiny().eval()
    z, t, y = inputs(net)
    ref = net(z, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(z, t, y)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_fp32_attention_matches_sdpa():
    net = tiny().eval()
    z, t, y = inputs(net)
    ref = net(z, t, y)
    fp32 = tiny(attention="fp32").eval()
    assert ((fp32(z, t, y) - ref).norm() / ref.norm()).item() < 1e-5


class _OpDtypes(TorchDispatchMode):
    """Records (op name, dtypes of its tensor inputs) of every op run below autocast."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((func.overloadpacket.__name__, dtypes))
        return func(*args, **(kwargs or {}))


def test_fp32_attention_keeps_scores_and_softmax_in_float32_under_bf16_autocast():
    """attention="fp32" is the authors' numerics: under bf16 autocast QKᵀ and the softmax run in
    float32 and the product with V in bf16 (theirs leaves it to autocast), where the default
    attention is one bf16 SDPA kernel. (In float32 the two agree, so only autocast can tell
    them apart.)"""
    for mode in ("fp32", "sdpa"):
        net = tiny(attention=mode).eval()
        z, t, y = inputs(net)
        with torch.autocast("cpu", dtype=torch.bfloat16), _OpDtypes() as seen:
            net(z, t, y)
        attention = [(name, d) for name, d in seen.ops if "attention" in name]
        products = [(name, d) for name, d in seen.ops if name in ("bmm", "_softmax")]
        if mode == "fp32":
            assert not attention
            assert len(products) == 3 * net.config.depth  # QKᵀ, softmax, ·V in every block
            for qk, softmax, pv in zip(*[iter(products)] * 3, strict=True):
                assert qk == ("bmm", [torch.float32] * 2) and softmax == (
                    "_softmax",
                    [torch.float32],
                )
                assert pv == ("bmm", [torch.bfloat16] * 2)
        else:
            assert len(attention) == net.config.depth and not products
            assert all(d == [torch.bfloat16] * 3 for _, d in attention)


def test_labels_condition_the_output():
    net = tiny().eval()
    z, t, _ = inputs(net, 2)
    a = net(z, t, torch.tensor([0, 0]))
    b = net(z, t, torch.tensor([1, 10]))  # another class, and the null label
    assert (a - b).abs().max() > 1e-3


def test_rope_scores_depend_only_on_relative_position():
    d, side = 16, 6
    cos, sin = rope_2d_tables(d, side, prefix=0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)

    def score(qi: int, ki: int) -> float:
        qs = apply_rope(q.expand(side * side, d), cos, sin)[qi]
        ks = apply_rope(k.expand(side * side, d), cos, sin)[ki]
        return float(qs @ ks)

    idx = lambda r, c: r * side + c  # noqa: E731
    # same (Δrow, Δcol) = (1, 2) at two absolute places
    assert score(idx(0, 0), idx(1, 2)) == pytest.approx(score(idx(3, 1), idx(4, 3)), abs=1e-5)
    assert score(idx(0, 0), idx(1, 2)) != pytest.approx(score(idx(0, 0), idx(2, 1)), abs=1e-3)
    cos_p, sin_p = rope_2d_tables(d, side, prefix=3)
    assert torch.equal(cos_p[:3], torch.ones(3, d)) and torch.equal(sin_p[:3], torch.zeros(3, d))


@pytest.mark.parametrize("layout", ["contiguous", "qkv view"])
def test_rope_fp32_complex_path_is_the_pair_formula_bit_for_bit(layout):
    # float32 rotates by one complex multiply; the pair formula (bf16, compiled graphs) must give
    # the very same values and gradients, also on the strided q view a model without qk-norm uses
    n, heads, side, prefix, d = 2, 3, 4, 2, 16
    cos, sin = rope_2d_tables(d, side, prefix)
    length = prefix + side * side
    g = torch.Generator().manual_seed(0)
    if layout == "contiguous":
        u = torch.randn(n, heads, length, d, generator=g)
    else:  # (N, L, 3, H, d) → the k of (3, N, H, L, d), storage offset H·d
        u = torch.randn(n, length, 3, heads, d, generator=g).permute(2, 0, 3, 1, 4)[1]
    grad_out = torch.randn(n, heads, length, d, generator=g)
    outs, grads = [], []
    for rotate in (apply_rope, rope_pair_formula):
        src = u.detach().requires_grad_(True)  # a leaf with u's strides
        out = rotate(src, cos, sin)
        out.backward(grad_out)
        outs.append(out.detach())
        grads.append(src.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert not torch.equal(outs[0], u)  # the rotation did something


def test_bad_inputs_are_named():
    net = tiny()
    z, t, y = inputs(net)
    with pytest.raises(ValueError, match="z must have shape"):
        net(z[:, :1], t, y)
    with pytest.raises(ValueError, match="t must have shape"):
        net(z, t[:2], y)
    with pytest.raises(ValueError, match="y must have shape"):
        net(z, t, None)
    classes = net.config.num_classes  # the null label is allowed; past it or below 0, named
    net(z, t, torch.full_like(y, classes))
    for bad in (classes + 1, -1):
        with pytest.raises(
            ValueError, match=rf"label outside \[0, {classes}\] \(labels from {bad}"
        ):
            net(z, t, torch.full_like(y, bad))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        JiTConfig(**{**TINY, "image_size": 30})
    with pytest.raises(ValueError, match="in_context_start"):
        JiTConfig(**{**TINY, "in_context_start": 4})


def test_config_round_trips_through_dict():
    cfg = JiTConfig(**{**TINY, "dropout_blocks": (1, 2)})
    assert JiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown JiT config fields"):
        JiTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "field, value",
    [("patch_size", 0), ("num_heads", 0), ("depth", 0), ("hidden_size", -8), ("image_size", 0),
     ("in_channels", 0), ("mlp_ratio", 0.0), ("mlp_ratio", float("nan")), ("mlp_ratio", "4"),
     ("dropout", float("nan")), ("attn_dropout", 1.0), ("depth", 2.5), ("depth", True),
     ("mlp", "relu"), ("norm", "batch"), ("rope", 1), ("dropout_blocks", (3, 1)),
     ("dropout_blocks", (0, 99)), ("bottleneck_dim", 1.5)],
)  # fmt: skip
def test_config_rejects_bad_fields_by_name(field, value):
    """Zero / negative sizes used to surface as ZeroDivisionError or a half-built network."""
    with pytest.raises(ValueError, match=field):
        pixeljit.JiTConfig(**{field: value})


@pytest.mark.parametrize("field", ["p_mean", "p_std", "noise_scale", "sigma_data", "t_eps"])
def test_objective_config_rejects_non_finite_values(field):
    from pixeljit.diffusion.objective import ObjectiveConfig

    with pytest.raises(ValueError, match=field):
        ObjectiveConfig(**{field: float("nan")})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
def test_a_device_this_machine_lacks_is_named():
    """create_model(device='cuda') without CUDA raised torch's bare AssertionError, and a
    misspelt device torch's device list; sample() likewise."""
    for device, message in (("cuda", "CUDA is not available here"), ("bogus", "not a device")):
        with pytest.raises(ValueError, match=message):
            pixeljit.create_model("JiT-B/16", device=device)
    net = pixeljit.JiT(JiTConfig(image_size=8, patch_size=4, hidden_size=16, depth=2,
                                 num_heads=2, num_classes=2, in_context_start=1))  # fmt: skip
    for device, message in (("cuda", "CUDA is not available here"), ("bogus", "not a device")):
        with pytest.raises(ValueError, match=message):
            pixeljit.sample(net, [0], steps=1, device=device)
