"""The training engine on CPU: learning, bit-exact resume, DDP equivalence, errors (the
presets are checked against the paper in test_presets.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

import pixeljit
from conftest import states_equal, tiny_run, torchrun
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss
from pixeljit.training.config_io import apply_overrides
from pixeljit.training.loop import learning_rate, train
from pixeljit.training.presets import get_preset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed(fmnist16) -> Path:
    return fmnist16(256)


# longer than the shared tiny run: two checkpoints, previews of two classes, dropout on (its
# masks must replay exactly too)
TRAIN_RUN = {
    "run.log_every": 2, "run.ckpt_every": 3, "optim.steps": 6, "sample.steps": 2,
    "sample.max_classes": 2, "model.dropout": 0.1,
}  # fmt: skip


def tiny_config(data: Path, out: Path, **overrides):
    return tiny_run(data, out, **{**TRAIN_RUN, **overrides})


def test_tiny_model_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    net = pixeljit.JiT(get_preset("fmnist-tiny").model)
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    y = torch.arange(16) % 10
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    cfg = ObjectiveConfig(noise_scale=1.0, label_drop=0.0)
    losses = []
    for step in range(120):
        gen = torch.Generator().manual_seed(step % 4)  # four fixed noise draws
        loss = flow_matching_loss(net, x, y, cfg, 10, gen)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_learning_rate_schedule_is_the_authors_per_iteration_warm_up():
    """Theirs (MAE's adjust_learning_rate, called before each step with the epoch's fraction):
    step k of a W-step warm-up at base·k/W, the first at 0, the full rate from step W."""
    assert [learning_rate(k, 1.0, 4) for k in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert learning_rate(100, 1.0, 4) == 1.0 and learning_rate(0, 2.0, 0) == 2.0
    assert get_preset("jit-b-16").optim.learning_rate == pytest.approx(2e-4)


def test_resume_is_bit_exact(packed, tmp_path):
    straight = train(tiny_config(packed, tmp_path / "a"), progress=False)
    assert straight.step == 6 and (tmp_path / "a" / "loss.png").is_file()
    assert list((tmp_path / "a").glob("samples-*.png"))
    first = train(tiny_config(packed, tmp_path / "b", **{"optim.steps": 3}), progress=False)
    assert first.step == 3
    resumed = train(tiny_config(packed, tmp_path / "b"), resume=str(tmp_path / "b"), progress=False)
    assert resumed.step == 6
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert states_equal(a["model"], b["model"])
    for sa, sb in zip(a["ema"]["shadows"], b["ema"]["shadows"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert a["loader"] == b["loader"] and a["images_seen"] == b["images_seen"] == 96
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a and opt_a.keys() == opt_b.keys()  # every parameter's moments, in both
    assert all(states_equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_checkpoint_holds_everything(packed, tmp_path):
    train(tiny_config(packed, tmp_path, **{"run.milestone_every": 3}), progress=False)
    ckpt = load_checkpoint(tmp_path)
    for key in ("model", "ema", "optimizer", "loader", "rng", "config", "step", "images_seen"):
        assert key in ckpt
    assert ckpt["ema"]["decays"] == [0.995, 0.999]
    assert ckpt["config"]["model"]["num_classes"] == 10
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == [
        "step-000000003.pt", "step-000000006.pt",
    ]  # fmt: skip
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_resume_errors(packed, tmp_path):
    cfg = tiny_config(packed, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        train(cfg, resume=str(tmp_path / "missing"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train(cfg, resume=str(tmp_path / "empty"), progress=False)
    train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=3)), progress=False)
    other = apply_overrides(cfg, {"optim.lr": 5e-3, "model.depth": 3})
    with pytest.raises(ValueError, match=r"model.depth: checkpoint 2 vs now 3.*optim.lr"):
        train(other, resume=str(tmp_path / "run"), progress=False)


def test_labels_out_of_range_name_the_sample(packed, tmp_path):
    cfg = tiny_config(packed, tmp_path, **{"data.num_classes": 3})
    with pytest.raises(ValueError, match=r"sample \d+ has label \d+, outside \[0, 3\)"):
        train(cfg, progress=False)


def test_unconditional_training(packed, tmp_path):
    result = train(tiny_config(packed, tmp_path, **{"data.conditional": False}), progress=False)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"]["model"]["num_classes"] == 0
    assert "y_embedder.embedding_table.weight" not in ckpt["model"]


@pytest.mark.parametrize("bad_step", [4, 5])  # 5: that step's loss is finite, the weights after not
def test_nan_stops_and_keeps_last_good_checkpoint(packed, tmp_path, monkeypatch, capsys, bad_step):
    """A good checkpoint at step 3, then an infinite learning rate at step index `bad_step`: the
    run stops at the step-6 check and latest.pt stays the step-3 one, loadable and all finite."""
    from pixeljit.training import loop

    def learning_rate(step, base, *schedule):
        return float("inf") if step == bad_step else base

    monkeypatch.setattr(loop, "learning_rate", learning_rate)
    result = train(tiny_config(packed, tmp_path, **{"optim.steps": 9}), progress=False)
    # the run stays at its last good checkpoint; step 6 is the first found not finite (its
    # loss after the inf update of step 5, or the weights after its own)
    assert result.stopped_on_nan and result.step == 3 and result.nan_step == 6
    assert "non-finite" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path)  # loads: its checksum holds
    assert ckpt["step"] == 3 and result.checkpoint == tmp_path / "latest.pt"
    tensors = list(ckpt["model"].values())
    tensors += [s for shadow in ckpt["ema"]["shadows"] for s in shadow]
    tensors += [v for st in ckpt["optimizer"]["state"].values() for v in st.values()]
    assert len(tensors) > 3 * len(ckpt["model"])
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert not list(tmp_path.glob("step-*.pt"))


def common_flags(packed: Path, out: Path, steps: int) -> list[str]:
    sets = ["run.log_every=2", "run.ckpt_every=3", "run.tensorboard=false", "run.device=cpu",
            "sample.steps=2", "sample.per_class=1", "sample.max_classes=2",
            "optim.warmup_epochs=0.1", "model.dropout=0.1"]  # fmt: skip
    flags = ["--preset", "fmnist-tiny", "--data", str(packed), "--out", str(out),
             "--steps", str(steps), "--batch-size", "16", "--no-progress"]  # fmt: skip
    for s in sets:
        flags += ["--set", s]
    return flags


def test_a_refusal_of_rank_0_stops_every_rank_cleanly(packed, tmp_path):
    """A check only rank 0 runs (an edited config.yaml on resume) made rank 1 fail with gloo's
    "Connection closed by peer" instead of a line saying rank 0 stopped the run."""
    run = tmp_path / "run"
    train(tiny_config(packed, run), progress=False)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 7"))
    done = torchrun(["train", "--resume", str(run), "--steps", "8", "--no-progress",
                     "--allow-inexact-resume"], cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    err = done.stderr
    assert f"pixeljit train (rank 0 of 2): error: {config} differs from the checkpoint's" in err
    assert ("pixeljit train (rank 1 of 2): error: rank 0 stopped the run while setting up its "
            "folder") in err, err[-3000:]  # fmt: skip
    assert "Connection closed" not in err, err[-3000:]  # (torchrun adds its own traceback)


def test_ddp_matches_one_process_resumes_exactly_and_continues_closely_under_fsdp(packed, tmp_path):
    """Two DDP ranks match one process accumulating the same batch (to float tolerance: the
    gradients are summed in another order); a DDP resume is bit-exact; the same checkpoint
    resumed under FSDP2 (an inexact resume: another reduction order) ends close to it, every
    weight, EMA and AdamW moment."""
    # one process, micro-batch 8 × 2 accumulation steps = the same global batch of 16, and the
    # same warm-up as common_flags'
    single = tiny_config(packed, tmp_path / "single",
                         **{"optim.micro_batch": 8, "optim.warmup_epochs": 0.1})  # fmt: skip
    train(single, progress=False)
    done = torchrun(["train", *common_flags(packed, tmp_path / "ddp", 6)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], rtol=1e-4, atol=1e-6), key
    # 3 steps, stop, resume 3 more under DDP with activation checkpointing (the same values
    # recomputed): bit-identical to 6 straight under DDP
    part = torchrun(["train", *common_flags(packed, tmp_path / "ddp2", 3)], cwd=tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    shutil.copytree(tmp_path / "ddp2", tmp_path / "fsdp")
    flags = ["--resume", str(tmp_path / "ddp2"), "--steps", "6", "--no-progress",
             "--set", "run.activation_checkpointing=true"]  # fmt: skip
    rest = torchrun(["train", *flags], cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    three = load_checkpoint(tmp_path / "ddp2")
    assert three["config"]["run"]["activation_checkpointing"] is True  # the switch reached it
    assert states_equal(two["model"], three["model"])
    # the same 3-step checkpoint resumed under FSDP2 (sharded model, EMA and optimizer)
    flags = [
        "--resume", str(tmp_path / "fsdp"), "--steps", "6", "--no-progress",
        "--set", "run.distributed=fsdp",
        "--set", "run.activation_checkpointing=true",  # checkpointed FSDP2 blocks
        "--allow-inexact-resume",  # FSDP2 reduces gradients in another order than DDP
    ]  # fmt: skip
    sharded = torchrun(["train", *flags], cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    four = load_checkpoint(tmp_path / "fsdp")
    for key, value in two["model"].items():
        assert torch.allclose(value, four["model"][key], rtol=1e-5, atol=1e-7), key
    assert len(two["ema"]["shadows"]) == len(four["ema"]["shadows"]) > 1
    for shadow_two, shadow_four in zip(two["ema"]["shadows"], four["ema"]["shadows"], strict=True):
        for a, b in zip(shadow_two, shadow_four, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    moments = [(k, s) for k, s in two["optimizer"]["state"].items() if "exp_avg" in s]
    assert moments and len(moments) == len(four["optimizer"]["state"])
    for key, state in moments:
        for name in ("exp_avg", "exp_avg_sq"):
            a, b = state[name], four["optimizer"]["state"][key][name]
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-9), (key, name)


@pytest.mark.slow
def test_compiled_training_with_clipping_matches_eager(packed, tmp_path):
    """`run.compile` (torch.compile, minutes to build on a CPU) and `optim.grad_clip`."""
    extra = {"optim.grad_clip": 0.5, "model.dropout": 0.0}
    train(tiny_config(packed, tmp_path / "eager", **extra), progress=False)
    compiled = {**extra, "run.compile": True}
    train(tiny_config(packed, tmp_path / "compiled", **compiled), progress=False)
    a, b = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "compiled")
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=1e-4, atol=1e-5), key
