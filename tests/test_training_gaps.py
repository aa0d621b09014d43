"""Training properties no other test pins down: gradient clipping is applied, AdamW gets the
configured hyperparameters, the finiteness check covers the optimizer state, an EMA refuses the
averages of other parameters, and metrics.jsonl reports interval means, epochs and the first
non-finite step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pixeljit
from conftest import TINY_NET, tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.training.distributed import DistInfo
from pixeljit.training.ema import EMA
from pixeljit.training.loop import train
from pixeljit.training.optimizer import build_adamw
from pixeljit.training.state import all_finite

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMALL_DATA = 32  # images: 2 steps an epoch at the tiny runs' global batch of 16
STEPS_PER_EPOCH = SMALL_DATA // 16


@pytest.fixture(scope="module")
def data(fmnist16) -> Path:
    return fmnist16(SMALL_DATA)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


# --------------------------------------------------------------------------- the optimizer


def test_a_run_clips_every_step_gradient_to_optim_grad_clip(data, tmp_path):
    """`optim.grad_clip` was silently ignored (the clipping call skipped) and no test noticed:
    the gradients AdamW steps with must have total norm `grad_clip` (the raw ones are larger)."""
    clip, norms = 1e-3, []

    def before_step(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        cfg = tiny_run(data, tmp_path / "run", **{"optim.steps": 3, "optim.grad_clip": clip})
        assert train(cfg, progress=False).step == 3
    finally:
        handle.remove()
    assert norms == pytest.approx([clip] * 3, rel=1e-3)


def test_build_adamw_steps_as_reference_adamw_with_its_betas_and_weight_decay():
    """`build_adamw` dropped the weight decay or swapped the betas, unseen because a straight and a
    resumed run share the mistake: three steps must match torch's plain AdamW loop with the
    hyperparameters asked for (the fused kernel differs by rounding only)."""
    lr, betas, weight_decay = 1e-2, (0.8, 0.99), 0.1
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    ours = [nn.Parameter(p.clone()) for p in start]
    theirs = [nn.Parameter(p.clone()) for p in start]
    opt = build_adamw(ours, lr, betas, weight_decay, decay_1d=True)  # torch's: every tensor
    ref = torch.optim.AdamW(theirs, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False)
    group = opt.param_groups[0]
    assert (tuple(group["betas"]), group["weight_decay"], group["lr"]) == (betas, weight_decay, lr)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in start]  # a different gradient each step
        for params, o in ((ours, opt), (theirs, ref)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            o.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_runs_optimizer_holds_the_configured_betas_and_weight_decay(data, tmp_path):
    """The run's AdamW (as its checkpoint records it) uses `optim.betas` and `optim.weight_decay`,
    not the defaults or each other's."""
    settings = {"optim.betas": [0.8, 0.9], "optim.weight_decay": 0.05}
    cfg = tiny_run(data, tmp_path / "run", **settings)
    train(cfg, progress=False)
    groups = load_checkpoint(tmp_path / "run")["optimizer"]["param_groups"]
    assert groups and all(tuple(g["betas"]) == (0.8, 0.9) for g in groups)
    # matrices decay, 1-D parameters (biases, norm scales) are exempt (tests/test_weight_decay.py)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


# ------------------------------------------------------------------------ finiteness check


def one_step_state():
    """A tiny JiT after one AdamW step, its EMAs, and a one-process CPU `DistInfo`."""
    torch.manual_seed(0)
    raw = pixeljit.JiT(TINY_NET)
    ema = EMA(raw, (0.9, 0.99))
    opt = build_adamw(list(raw.parameters()), 1e-3, (0.9, 0.95), 0.0)
    size, channels = TINY_NET.image_size, TINY_NET.in_channels
    x = torch.randn(2, channels, size, size)
    raw(x, torch.rand(2), torch.tensor([0, 2])).square().mean().backward()
    opt.step()
    ema.update(raw)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return raw, ema, opt, info


@pytest.mark.parametrize("moment", ["exp_avg", "exp_avg_sq"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_all_finite_sees_a_non_finite_optimizer_moment(moment, value):
    """`all_finite` skipped the optimizer state: a NaN confined to Adam's moments then passed the
    check and made the checkpoint writer raise instead of the run stopping cleanly."""
    raw, ema, opt, info = one_step_state()
    assert all_finite(raw, ema, opt, info)
    param = list(raw.parameters())[-1]
    opt.state[param][moment].view(-1)[0] = value
    assert not all_finite(raw, ema, opt, info)


def test_all_finite_sees_a_non_finite_ema_shadow():
    """A NaN in one EMA average (not in the model) fails the check too."""
    raw, ema, opt, info = one_step_state()
    assert all_finite(raw, ema, opt, info)
    ema.shadows[1][0].view(-1)[0] = float("nan")
    assert not all_finite(raw, ema, opt, info)


# ---------------------------------------------------------------------------------- the EMA


def two_layers() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))  # same shapes, two sets of names


@pytest.mark.parametrize("change", ["renamed", "reordered"])
def test_ema_load_refuses_averages_of_other_parameter_names(change):
    """Without the name check an EMA loads, by position, averages saved for other parameters
    (a renamed one, or the same ones in another order) when their shapes happen to agree."""
    torch.manual_seed(0)
    ema = EMA(two_layers(), (0.99,))
    state = EMA(two_layers(), (0.99,)).state_dict()
    if change == "renamed":
        state["names"] = ["first." + n for n in state["names"]]
    else:  # layer 1's averages saved first: a model registering its layers the other way round
        state["names"] = state["names"][2:] + state["names"][:2]
        state["shadows"] = [shadow[2:] + shadow[:2] for shadow in state["shadows"]]
    before = [s.clone() for s in ema.shadows[0]]
    with pytest.raises(ValueError, match="do not match the model's parameters"):
        ema.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadows[0], before, strict=True))


# ------------------------------------------------------------------------------ metrics.jsonl


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory) -> dict[int, list[dict]]:
    """metrics.jsonl records of one 4-step run logged every step and every second step."""
    out = {}
    for every in (1, 2):
        run = tmp_path_factory.mktemp(f"every{every}") / "run"
        train(tiny_run(data, run, **{"optim.steps": 4, "run.log_every": every}), progress=False)
        out[every] = records(run)
    return out


def test_a_logged_loss_is_the_mean_over_the_steps_since_the_last_record(logged):
    """With `log_every` > 1 the record held the sum of the interval's step losses: it must be
    their mean (logging does not change the trajectory, so the per-step run gives the losses)."""
    each, pairs = logged[1], logged[2]
    assert [r["step"] for r in each] == [1, 2, 3, 4] and [r["step"] for r in pairs] == [2, 4]
    losses = [r["loss"] for r in each]
    want = [(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2]
    assert [r["loss"] for r in pairs] == pytest.approx(want, rel=1e-5)


def test_logged_epoch_and_images_seen_count_the_steps_done(logged):
    """The record after step s says s / steps-an-epoch epochs and s · batch images, not a step
    behind (2 steps an epoch here)."""
    for rows in logged.values():
        steps = [r["step"] for r in rows]
        assert [r["epoch"] for r in rows] == pytest.approx([s / STEPS_PER_EPOCH for s in steps])
        assert [r["images_seen"] for r in rows] == [16 * s for s in steps]


def test_a_non_finite_loss_is_reported_at_the_first_bad_step_of_the_log_interval(
    data, tmp_path, monkeypatch, capsys
):
    """Steps 2–4 all have a NaN loss and are checked together at step 4: the message named the
    last of them (step 4), not step 2 where training broke."""
    from pixeljit.training import loop

    def learning_rate(step, base, *schedule):
        return float("inf") if step == 0 else base  # the weights are NaN after step 1

    monkeypatch.setattr(loop, "learning_rate", learning_rate)
    overrides = {"optim.steps": 8, "run.log_every": 4, "run.ckpt_every": 4}
    result = train(tiny_run(data, tmp_path / "run", **overrides), progress=False)
    # no checkpoint before the bad step: the run stays at step 0; the bad step is named
    assert result.stopped_on_nan and result.nan_step == 2
    assert result.step == 0 and result.checkpoint is None
    assert "non-finite loss at step 2: training stopped" in capsys.readouterr().out
