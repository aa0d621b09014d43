"""A run whose sampled EMA would still be mostly the initial weights says so at the start (a new
user's 40-step fmnist-tiny run sampled flat grey images from its EMA, with no hint why)."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import tiny_run
from pixeljit.training.loop import train
from pixeljit.training.presets import get_preset
from pixeljit.training.setup import ema_horizon_warning


def test_the_warning_names_the_share_of_initial_weights_and_the_fixes():
    cfg = get_preset("fmnist-tiny")  # EMA 0.995 sampled, no warm-up
    message = ema_horizon_warning(cfg, 40)
    assert message is not None
    assert "decay 0.995" in message and f"{0.995**40:.0%}" in message and "200 steps" in message
    assert "optim.ema_warmup=true" in message and "--weights model" in message
    assert ema_horizon_warning(cfg, 200) is None  # 0.995^200 ≈ 37 %: mostly trained weights
    warm = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_warmup=True))
    assert ema_horizon_warning(warm, 40) is None


@pytest.mark.parametrize("preset, steps", [("fmnist-small", 2200), ("jit-b-16", 750_000)])
def test_the_shipped_recipes_do_not_warn(preset, steps):
    assert ema_horizon_warning(get_preset(preset), steps) is None  # the demo; ≈ 600 epochs


def test_the_paper_recipe_cut_short_warns():
    # it samples with the EMA the authors evaluate (0.9999), whose horizon is 10,000 steps
    assert "decay 0.9999" in ema_horizon_warning(get_preset("jit-b-16"), 5000)


def test_training_prints_it_at_the_start(fmnist16, tmp_path, capsys):
    train(tiny_run(fmnist16(64), tmp_path / "run"), progress=False)  # 2 steps, EMA 0.995
    assert (
        "warning: the run samples (previews, `pixeljit sample`) with the EMA of decay 0.995"
        in capsys.readouterr().out
    )
