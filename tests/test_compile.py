"""Hot paths without waste, checked on a CPU: RoPE tables built at construction, a compiled model
that never recompiles (steps, batch sizes seen, train/eval), a training step without graph
breaks, `run.compile` true/false/auto, a fused AdamW, and no host sync per training step.

Compiles use dynamo's `eager` / `aot_eager` backends (no C++ build), so these stay fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from conftest import tiny_run
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss_at
from pixeljit.model import JiT, JiTConfig
from pixeljit.model.layers import rope_2d_tables
from pixeljit.training.config import COMPILE_AUTO, RunConfig, resolve_compile
from pixeljit.training.config_io import apply_overrides, parse_set, to_dict
from pixeljit.training.optimizer import adamw_kind, build_adamw, use_fused
from pixeljit.training.presets import get_preset
from pixeljit.training.resume import check_resume

TINY = dict(image_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=3, num_heads=2,
            num_classes=10, bottleneck_dim=8, in_context_len=4, in_context_start=1)  # fmt: skip


def _inputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 16, 16, generator=gen), torch.rand(n, generator=gen),
            torch.randint(0, 10, (n,), generator=gen))  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------- RoPE tables


def test_rope_tables_are_buffers_built_at_construction_outside_the_state_dict():
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY))
    buffers = dict(net.named_buffers())
    cos, sin = rope_2d_tables(net.config.head_dim, net.config.grid_size, net.config.in_context_len)
    assert torch.equal(buffers["rope_cos"], cos) and torch.equal(buffers["rope_sin"], sin)
    assert not any(k.startswith("rope_") for k in net.state_dict())  # checkpoints unchanged
    # the patch-only table (blocks before the in-context tokens) is the same table's tail
    grid_cos, _ = rope_2d_tables(net.config.head_dim, net.config.grid_size, 0)
    assert torch.equal(net._rope(0)[0], grid_cos)
    # a model built on `meta` and materialised (the checkpoint loaders' path) gets them back
    with torch.device("meta"):
        lazy = JiT(JiTConfig(**TINY))
    lazy = lazy.to_empty(device="cpu")
    lazy.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(lazy.rope_cos, cos) and torch.equal(lazy.rope_sin, sin)
    z, t, y = _inputs(2)
    assert torch.equal(lazy(z, t, y), net(z, t, y))
    assert "rope_cos" not in dict(JiT(JiTConfig(**{**TINY, "rope": False})).named_buffers())


# ------------------------------------------------------------------------------ recompiles


def test_compiled_model_never_recompiles_across_steps_seen_batch_sizes_or_train_eval():
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, dynamic=False)
    z2, t2, y2 = _inputs(2)
    z3, t3, y3 = _inputs(3, seed=1)
    for _ in range(3):
        out = compiled(z2, t2, y2)
    assert counter.frame_count == 1  # one graph, no graph break, reused every step
    assert torch.allclose(out, net(z2, t2, y2), rtol=1e-5, atol=1e-6)
    compiled(z3, t3, y3)
    assert counter.frame_count == 2  # a new batch size: one more graph (static shapes)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for mode in (False, True, False, True):
            net.train(mode)
            compiled(z2, t2, y2)
            compiled(z3, t3, y3)
    assert counter.frame_count == 2


def test_a_model_with_dropout_compiles_once_per_mode():
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY, dropout=0.1, attn_dropout=0.1, dropout_blocks=(0, 3)))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, dynamic=False)
    z, t, y = _inputs(2)
    compiled(z, t, y)
    net.eval()
    compiled(z, t, y)
    assert counter.frame_count == 2  # dropout makes train and eval two programs
    with torch._dynamo.config.patch(error_on_recompile=True):
        for mode in (True, False, True):
            net.train(mode)
            compiled(z, t, y)
    assert counter.frame_count == 2


def test_training_step_compiles_without_graph_breaks_and_matches_eager():
    """Forward and loss in one graph (explain: no break), then backward through it."""
    torch.manual_seed(0)
    net = JiT(JiTConfig(**TINY))
    with torch.no_grad():  # adaLN-Zero would leave most gradients at exactly zero
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    objective = ObjectiveConfig()
    x, t, y = _inputs(2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))

    def loss_fn(x, noise, t, y):
        return flow_matching_loss_at(net, x, noise, t, y, objective).mean()

    explained = torch._dynamo.explain(loss_fn)(x, noise, t, y)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    eager = loss_fn(x, noise, t, y)
    eager.backward()
    grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True, dynamic=False)
    loss = compiled(x, noise, t, y)
    loss.backward()
    assert torch.allclose(loss, eager, rtol=1e-5)
    for g, p in zip(grads, (p for p in net.parameters() if p.requires_grad), strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ run.compile


@pytest.mark.parametrize(("raw", "value"), [("auto", "auto"), ("true", True), ("false", False)])
def test_run_compile_accepts_true_false_auto(raw, value):
    assert RunConfig().compile == COMPILE_AUTO
    cfg = apply_overrides(get_preset("fmnist-tiny"), parse_set([f"run.compile={raw}"]))
    assert cfg.run.compile == value
    assert apply_overrides(get_preset("fmnist-tiny"), {"run": {"compile": value}}) == cfg
    with pytest.raises(ValueError, match="run.compile must be true, false or auto"):
        apply_overrides(cfg, parse_set(["run.compile=sometimes"]))


def test_auto_compiles_on_cuda_only():
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile(True, "cpu") and not resolve_compile(False, "cuda")


def _facts(compiled: bool | None, adamw: str | None = "fused") -> dict:
    facts = {"device_type": "cpu", "precision": "fp32", "world_size": 1, "micro_batch": 16,
             "strategy": "single"}  # fmt: skip
    if compiled is not None:
        facts["compiled"] = compiled
    if adamw is not None:
        facts["adamw"] = adamw
    return facts


def test_checkpoints_holding_a_bool_resume_against_auto():
    cfg = get_preset("fmnist-tiny")
    old = apply_overrides(cfg, {"run.compile": False})
    now = apply_overrides(cfg, {"run.compile": "auto"})
    # a checkpoint from before `compiled` was an execution fact: compile false, on a CPU
    saved = {"config": to_dict(old), "execution": _facts(None)}
    assert check_resume(saved, to_dict(now), _facts(False), "ckpt", allow_inexact=False) == []
    # one that compiled is not continued eagerly without --allow-inexact-resume
    saved = {"config": to_dict(apply_overrides(cfg, {"run.compile": True})),
             "execution": _facts(None)}  # fmt: skip
    with pytest.raises(ValueError, match="execution.compiled.*--allow-inexact-resume"):
        check_resume(saved, to_dict(now), _facts(False), "ckpt", allow_inexact=False)


def test_a_checkpoint_from_before_fused_adamw_resumes_only_inexactly():
    """Fused and foreach AdamW round differently: a checkpoint written before the choice was
    recorded (foreach) does not continue bit-exactly under fused AdamW, and says so."""
    cfg = to_dict(get_preset("fmnist-tiny"))
    saved = {"config": cfg, "execution": _facts(False, adamw=None)}
    with pytest.raises(ValueError, match="execution.adamw: checkpoint 'foreach' vs now 'fused'"):
        check_resume(saved, cfg, _facts(False), "ckpt", allow_inexact=False)
    inexact = check_resume(saved, cfg, _facts(False), "ckpt", allow_inexact=True)
    assert inexact == ["execution.adamw: checkpoint 'foreach' vs now 'fused'"]
    assert adamw_kind("cpu") == "fused" and adamw_kind("mps") == "foreach"


# ------------------------------------------------------------------------------- optimiser


def test_adamw_is_fused_on_cpu_and_equals_foreach_to_rounding():
    torch.manual_seed(0)
    a = JiT(JiTConfig(**TINY))
    b = JiT(JiTConfig(**TINY))
    b.load_state_dict(a.state_dict())
    pa = [p for p in a.parameters() if p.requires_grad]
    pb = [p for p in b.parameters() if p.requires_grad]
    fused = build_adamw(pa, 1e-3, (0.9, 0.95), 0.01, decay_1d=True)  # as the foreach one
    foreach = torch.optim.AdamW(pb, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, foreach=True)
    assert use_fused(pa) and fused.defaults["fused"] and not fused.defaults["foreach"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(pa, pb, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        foreach.step()
    for p, q in zip(pa, pb, strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
    assert not use_fused([torch.zeros(2, device="meta")])


# ------------------------------------------------------------------------------ host syncs

# (not `numpy`: the loader turns its host-side permutation into indices with it every step, on
# the host by design; a device tensor must pass through `cpu` first, which is counted)
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu")


def _count_syncs(monkeypatch) -> list[str]:
    """Record every tensor → Python value conversion (each a host sync on a GPU)."""
    calls: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_no_host_sync_per_training_step(fmnist16, tmp_path: Path, monkeypatch):
    """Logging once at the end, 2 and 6 steps convert the same number of tensors to Python
    values: the steps themselves (loss, backward, AdamW, EMA) never wait for the device."""
    from pixeljit.training.loop import train

    counts = []
    for steps in (2, 6):
        cfg = tiny_run(fmnist16(64), tmp_path / f"run{steps}", **{"optim.steps": steps,
                       "run.log_every": 100, "run.ckpt_every": 100})  # fmt: skip
        with monkeypatch.context() as patch:
            calls = _count_syncs(patch)
            train(cfg, progress=False)
        counts.append(len(calls))
    assert counts[0] == counts[1] and counts[0] > 0  # > 0: the counter sees the final log


def test_a_meta_model_computes_no_rope_table():
    """Checkpoint loaders size a network on `meta` before trusting its config: the tables are
    shapes only there (a hostile config could otherwise ask for terabytes)."""
    huge = JiTConfig(image_size=4096, patch_size=1, hidden_size=8192, depth=1, num_heads=1,
                     num_classes=0, in_context_len=0)  # fmt: skip
    with torch.device("meta"):
        net = JiT(huge)
    assert net.rope_cos.device.type == "meta" and net.rope_cos.shape == (4096**2, 8192)
