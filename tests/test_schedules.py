"""The two short-run recipe switches: the learning-rate cool-down (`optim.cooldown`) and the EMA
warm-up (`optim.ema_warmup`): their formulas, their off state equal to the authors' schedule bit
for bit, bit-exact resume with them on, and resumes of checkpoints written before they existed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from conftest import tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.training.config_io import apply_overrides, to_dict
from pixeljit.training.ema import EMA, warmup_decay
from pixeljit.training.loop import learning_rate, train
from pixeljit.training.presets import get_preset
from pixeljit.training.resume import check_resume

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DECAYS = (0.9, 0.995, 0.999)


def test_cooldown_falls_linearly_to_the_last_step_and_is_off_by_default():
    # 10 steps, warm-up 2, cool-down over the last 4: 0, .5, 1, 1, 1, 1, 1, .75, .5, .25
    rates = [learning_rate(s, 1.0, 2, total_steps=10, cooldown_steps=4) for s in range(10)]
    assert rates == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    # a cool-down that reaches into the warm-up takes the smaller factor
    assert learning_rate(1, 1.0, 4, total_steps=3, cooldown_steps=3) == 0.25
    assert learning_rate(2, 1.0, 8, total_steps=3, cooldown_steps=2) == 0.25
    assert learning_rate(2, 1.0, 4, total_steps=3, cooldown_steps=3) == 1 / 3
    # off: the authors' constant rate after warm-up, whatever the length
    assert [learning_rate(s, 2.0, 2, total_steps=10) for s in (0, 1, 9)] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"optim.cooldown must be < 1"):
        apply_overrides(get_preset("fmnist-tiny"), {"optim.cooldown": 1.0})
    with pytest.raises(ValueError, match=r"optim.ema_warmup must be true or false"):
        apply_overrides(get_preset("fmnist-tiny"), {"optim.ema_warmup": 1})


def test_warmup_decay_is_tensorflows_num_updates_rule():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.9, 90) == 0.9  # capped by the decay itself once (1+n)/(10+n) > decay
    assert warmup_decay(0.995, 10**6) == 0.995


@pytest.mark.parametrize("offset", [4.0, 5.0, 10.0])
def test_warmup_weighs_update_k_as_a_power_of_k(offset):
    # the parameter is the one-hot e_k at update k, so the shadow holds the weight of every update:
    # while the cap binds, w_k = (c − 1)·(k+2)…(k+c−1)/((n+1)…(n+c−1)) after n updates: γ = c − 2
    updates, c = 60, int(offset)
    net = nn.Linear(updates, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    ema = EMA(net, (0.9999,), warmup=True, warmup_offset=offset)
    for k in range(updates):
        with torch.no_grad():
            net.weight.zero_()
            net.weight[0, k] = 1.0
        ema.update(net, updates=k)
    got = ema.shadows[0][0][0].double()

    def rising(k: int) -> float:  # (k+2)(k+3)…(k+c−1)
        return float(torch.arange(k + 2, k + c, dtype=torch.float64).prod())

    scale = (c - 1) / float(torch.arange(updates + 1, updates + c, dtype=torch.float64).prod())
    want = torch.tensor([scale * rising(k) for k in range(updates)], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-9)
    warm = {"optim.ema_warmup": True}
    with pytest.raises(ValueError, match=r"optim.ema_warmup_offset must be > 1"):
        apply_overrides(get_preset("fmnist-tiny"), {**warm, "optim.ema_warmup_offset": 1.0})
    with pytest.raises(ValueError, match=r"no effect without the warm-up: add optim.ema_warmup"):
        apply_overrides(
            get_preset("fmnist-tiny"),
            {"optim.ema_warmup": False, "optim.ema_warmup_offset": offset + 0.5},
        )
    cfg = apply_overrides(get_preset("fmnist-tiny"), {**warm, "optim.ema_warmup_offset": offset})
    assert cfg.optim.ema_warmup_offset == offset


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3))


def _perturb(net: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("multi_tensor", [False, True])  # the CPU (stacked) and the CUDA form
def test_warmup_ema_equals_the_per_update_definition(multi_tensor):
    net, gen = _net(), torch.Generator().manual_seed(1)
    ema = EMA(net, DECAYS, warmup=True)
    ema._multi_tensor = multi_tensor
    plain = [[p.detach().clone() for p in net.parameters()] for _ in DECAYS]
    for n in range(40):
        _perturb(net, gen)
        ema.update(net, updates=n)
        for decay, shadow in zip(DECAYS, plain, strict=True):
            rate = 1.0 - min(decay, (1 + n) / (10 + n))
            for s, p in zip(shadow, net.parameters(), strict=True):
                s.lerp_(p.detach(), rate)
    for j in range(len(DECAYS)):
        assert all(torch.equal(a, b) for a, b in zip(ema.shadows[j], plain[j], strict=True))
    # the first update (decay 0.1) leaves only a tenth of the initial weights
    fresh, start = _net(), [p.detach().clone() for p in _net().parameters()]
    ema = EMA(fresh, (0.999,), warmup=True)
    _perturb(fresh, gen)
    ema.update(fresh, updates=0)
    for s, p, p0 in zip(ema.shadows[0], fresh.parameters(), start, strict=True):
        assert torch.allclose(s, 0.1 * p0 + 0.9 * p.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="needs the update number"):
        ema.update(fresh)


def test_warmup_past_its_cap_is_the_plain_update_bit_for_bit():
    net, gen = _net(), torch.Generator().manual_seed(2)
    warm, plain = EMA(net, DECAYS, warmup=True), EMA(net, DECAYS)
    late = 9 / (1 - max(DECAYS))  # every cap (1+n)/(10+n) ≥ its decay from here on
    for n in range(int(late), int(late) + 3):
        _perturb(net, gen)
        warm.update(net, updates=n)
        plain.update(net)
    for j in range(len(DECAYS)):
        assert all(torch.equal(a, b) for a, b in zip(warm.shadows[j], plain.shadows[j],
                                                     strict=True))  # fmt: skip


RUN = {"run.log_every": 2, "run.ckpt_every": 3, "run.milestone_every": 3, "optim.steps": 6,
       "sample.steps": 2, "sample.max_classes": 2, "optim.cooldown": 0.5,
       "optim.ema_warmup": True}  # fmt: skip


def test_resume_with_cooldown_and_ema_warmup_is_bit_exact(fmnist16, tmp_path):
    packed = fmnist16(256)
    straight = train(tiny_run(packed, tmp_path / "a", **RUN), progress=False)
    assert straight.step == 6
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "a" / "metrics.jsonl").open()]
    assert lrs[-1] < lrs[0]  # logged at steps 2, 4, 6: the cool-down ran
    # a run interrupted after its step-3 checkpoint, resumed at the same length
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "step-000000003.pt", tmp_path / "b" / "latest.pt")
    resumed = train(tiny_run(packed, tmp_path / "b", **RUN), resume=str(tmp_path / "b"),
                    progress=False)  # fmt: skip
    assert resumed.step == 6
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["ema"]["shadows"], b["ema"]["shadows"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    # a new length would move the cool-down: inexact, refused unless allowed
    longer = tiny_run(packed, tmp_path / "b", **{**RUN, "optim.steps": 8})
    with pytest.raises(ValueError, match=r"optim.steps 6 → 8.*moves the learning-rate cool-down"):
        train(longer, resume=str(tmp_path / "b"), progress=False)
    assert (
        train(longer, resume=str(tmp_path / "b"), progress=False, allow_inexact_resume=True).step
        == 8
    )


def test_checkpoints_from_before_the_switches_resume_as_if_they_were_off():
    cfg = get_preset("fmnist-tiny")
    config = to_dict(cfg)
    added = ("cooldown", "ema_warmup", "ema_warmup_offset")
    old = {**config, "optim": {k: v for k, v in config["optim"].items() if k not in added}}
    saved = {"config": old, "step": 3}
    assert check_resume(saved, config, {}, "old.pt", allow_inexact=False) == []
    warm = to_dict(apply_overrides(cfg, {"optim.ema_warmup": True}))
    with pytest.raises(ValueError, match=r"optim.ema_warmup: checkpoint False vs now True"):
        check_resume(saved, warm, {}, "old.pt", allow_inexact=False)


def test_a_run_logs_the_scheduled_rates_and_warms_its_ema_up_from_update_zero(fmnist16, tmp_path):
    """A 6-step run, 16 steps an epoch, warm-up 0.125 epochs = 2 steps, cool-down 0.5 = the last
    3 steps: the rate of step s (from 0, logged after it) is base·min(s/2, 1, (6−s)/3), written
    out as 0, 1/2, 1, 1, 2/3, 1/3. The EMA of checkpoint n+1 is the warm-up update number n of
    checkpoint n's: ema ← c·ema + (1−c)·θ with c = min(decay, (1+n)/(10+n)) (n = 0 first)."""
    overrides = {"optim.steps": 6, "optim.cooldown": 0.5, "optim.warmup_epochs": 0.125,
                 "optim.ema_warmup": True, "run.log_every": 1, "run.ckpt_every": 1,
                 "run.milestone_every": 1}  # fmt: skip
    cfg = tiny_run(fmnist16(256), tmp_path / "run", **overrides)
    assert train(cfg, progress=False).step == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    base = cfg.optim.learning_rate
    want = [base * f for f in (0, 1 / 2, 1, 1, 2 / 3, 1 / 3)]
    assert [r["lr"] for r in records] == pytest.approx(want, rel=1e-12)
    ckpts = [load_checkpoint(tmp_path / "run" / f"step-{n:09d}.pt") for n in range(1, 7)]
    names = ckpts[0]["ema"]["names"]
    decays = ckpts[0]["ema"]["decays"]
    for n in range(1, 6):  # checkpoint n holds n updates; the next is update number n
        before, after = ckpts[n - 1]["ema"]["shadows"], ckpts[n]["ema"]["shadows"]
        for j, decay in enumerate(decays):
            c = min(decay, (1 + n) / (10 + n))
            for i, name in enumerate(names):
                theta = ckpts[n]["model"][name].double()
                expected = c * before[j][i].double() + (1 - c) * theta
                torch.testing.assert_close(after[j][i].double(), expected, rtol=0, atol=1e-6)
