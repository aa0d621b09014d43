"""Activation checkpointing (`run.activation_checkpointing`, `JiT.checkpoint_blocks`): the same
gradients bit for bit, a fraction of the activation memory, one graph under the compiler, and
resumes that may switch it on or off (issue 12)."""

from __future__ import annotations

import pytest
import torch

from conftest import LiveStorages, tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss_at
from pixeljit.model import JiT, JiTConfig
from pixeljit.training.config_io import to_dict
from pixeljit.training.loop import train
from pixeljit.training.resume import check_resume

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# deep enough that the per-block intermediates dominate; dropout on, so masks must replay
SMALL = dict(image_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=6, num_heads=4,
             num_classes=10, bottleneck_dim=8, in_context_len=4, in_context_start=2,
             dropout=0.1, dropout_blocks=(0, 6), attn_dropout=0.1)  # fmt: skip


def _model(checkpoint_blocks: bool) -> JiT:
    torch.manual_seed(0)
    net = JiT(JiTConfig(**SMALL))
    with torch.no_grad():  # adaLN-Zero would leave most gradients at exactly zero
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    net.checkpoint_blocks = checkpoint_blocks
    return net.train()


def _batch(n: int = 8):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, 16, 16, generator=gen), torch.randn(n, 3, 16, 16, generator=gen),
            torch.rand(n, generator=gen), torch.randint(0, 10, (n,), generator=gen))  # fmt: skip


def _loss(net: JiT, batch) -> torch.Tensor:
    x, noise, t, y = batch
    torch.manual_seed(7)  # the dropout masks
    return flow_matching_loss_at(net, x, noise, t, y, ObjectiveConfig()).mean()


def test_checkpointed_blocks_give_the_same_loss_and_gradients_bit_for_bit():
    batch = _batch()
    results = []
    for flag in (False, True):
        net = _model(flag)
        loss = _loss(net, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in net.parameters() if p.requires_grad]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(g.abs().sum() > 0 for g in grads_a)  # every parameter learns: a real comparison
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def _bytes_kept_for_backward(checkpoint_blocks: bool) -> int:
    net, batch = _model(checkpoint_blocks), _batch(32)
    with LiveStorages() as mode:
        loss = _loss(net, batch)
    # what the graph holds between forward and backward
    kept = mode.live_bytes([*net.parameters(), *net.buffers(), *batch])
    loss.backward()
    return kept


def test_checkpointing_keeps_a_fraction_of_the_activations():
    """What a forward pass leaves alive for backward, counted storage by storage: every block's
    intermediates (norms, q/k/v, attention, the SwiGLU hidden layer, masks) without
    checkpointing; each block's input with it. Measured on this 6-block model at batch 32:
    35.2 MB against 1.76 MB (20×), of which the six block inputs are 1.0 MB."""
    full, checkpointed = _bytes_kept_for_backward(False), _bytes_kept_for_backward(True)
    n, tokens, width = 32, SMALL["in_context_len"] + (16 // 4) ** 2, SMALL["hidden_size"]
    one_block_input = n * tokens * width * 4  # float32
    assert checkpointed < full / 10
    assert checkpointed > SMALL["depth"] * one_block_input  # it does keep every block's input


def test_a_checkpointed_training_step_compiles_without_graph_breaks():
    net, batch = _model(True), _batch(2)
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(_loss)(net, batch)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
    finally:
        torch._dynamo.reset()


@pytest.fixture(scope="module")
def packed(fmnist16):
    return fmnist16(64)


def test_resuming_with_checkpointing_switched_on_continues_bit_exactly(
    packed, tmp_path, monkeypatch
):
    """6 steps straight against 3 steps, then 3 more with checkpointed blocks (and dropout):
    the same weights, EMA and optimizer state, and no --allow-inexact-resume needed."""
    import pixeljit.model.jit as jit_module

    extra = {"optim.steps": 6, "run.ckpt_every": 3, "model.dropout": 0.1,
             "run.tensorboard": False}  # fmt: skip
    train(tiny_run(packed, tmp_path / "straight", **extra), progress=False)
    train(tiny_run(packed, tmp_path / "split", **{**extra, "optim.steps": 3}), progress=False)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(jit_module, "checkpoint", counted)
    on = {**extra, "run.activation_checkpointing": True}
    train(tiny_run(packed, tmp_path / "split", **on), resume=tmp_path / "split", progress=False)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    # the resumed steps really ran checkpointed: every block of every training forward
    assert b["config"]["run"]["activation_checkpointing"] is True
    assert len(calls) >= 3 * b["config"]["model"]["depth"]
    for key in ("model", "ema", "optimizer"):
        assert _equal(a[key], b[key]), key


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_compiled_run_switching_checkpointing_resumes_only_inexactly(packed, tmp_path):
    cfg = to_dict(tiny_run(packed, tmp_path))
    facts = {"device_type": "cuda", "precision": "bf16", "compiled": True, "adamw": "fused",
             "world_size": 1, "micro_batch": 16, "strategy": "single"}  # fmt: skip
    old = {"config": cfg, "execution": facts}  # written before the fact existed
    eager = {**facts, "compiled": False}
    assert check_resume({**old, "execution": eager}, cfg, {**eager, "checkpointed_graph": False},
                        "ckpt", allow_inexact=False) == []  # fmt: skip
    with pytest.raises(ValueError, match="execution.checkpointed_graph.*--allow-inexact-resume"):
        check_resume(old, cfg, {**facts, "checkpointed_graph": True}, "ckpt", allow_inexact=False)
    inexact = check_resume(old, cfg, {**facts, "checkpointed_graph": True}, "ckpt", True)
    assert len(inexact) == 1 and inexact[0].startswith("execution.checkpointed_graph"), inexact
    assert check_resume(old, cfg, {**facts, "checkpointed_graph": False}, "ckpt", False) == []
