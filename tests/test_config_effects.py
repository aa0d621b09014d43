"""A training setting that has no effect in the resolved config is refused (the clamps of an
objective or a preview sampler that never divide), and a paper preset's noise scale follows a
new image size (it stayed at the preset's 256-px value: a probe of the 9 prediction × loss
cells and the recipe's fields)."""

from __future__ import annotations

import pytest

import pixeljit
from pixeljit.cli import build_parser
from pixeljit.cli.train import build_config

ACCEPTED = [  # (preset, overrides): each field acts here
    ("jit-b-16", {"objective.t_eps": 0.1}),  # x-prediction, v-loss: x̂ → v divides by 1 − t
    ("jit-b-16", {"objective.loss": "eps", "objective.t_eps": 0.1}),
    ("jit-b-16", {"objective.prediction": "eps", "objective.t_min": 0.01}),
    ("jit-b-16", {"sample.t_eps": 0.01}),  # heun on an x-prediction
    ("fmnist-tiny", {"sample.method": "euler", "sample.t_eps": 0.01}),
    ("jit-b-16", {"objective.prediction": "eps", "objective.loss": "v", "sample.t_min": 0.01}),
]
REFUSED = [  # (preset, overrides, the field named, why)
    ("jit-b-16", {"objective.t_min": 0.01}, "objective.t_min 0.01 has no effect with "
     "objective.prediction x and objective.loss v"),
    ("jit-b-16", {"objective.loss": "x", "objective.t_eps": 0.1}, "objective.t_eps 0.1 has no "
     "effect with objective.prediction x and objective.loss x"),
    ("jit-b-16", {"objective.prediction": "v", "objective.t_eps": 0.1}, "objective.t_eps 0.1 "
     "has no effect with objective.prediction v"),
    ("jit-b-16", {"objective.prediction": "eps", "objective.loss": "eps",
                  "objective.t_min": 0.01}, "objective.t_min 0.01 has no effect"),
    ("fmnist-tiny", {"sample.t_eps": 0.01}, "sample.t_eps 0.01 has no effect for the previews "
     "with sample.method dpm++3m"),
    ("jit-b-16", {"objective.prediction": "v", "sample.t_eps": 0.01}, "sample.t_eps 0.01 has "
     "no effect for the previews with a v-prediction"),
    ("jit-b-16", {"sample.t_min": 0.01}, "sample.t_min 0.01 has no effect for the previews of "
     "an x-prediction"),
]  # fmt: skip


@pytest.mark.parametrize("preset, overrides", ACCEPTED)
def test_a_clamp_that_acts_is_taken(preset, overrides):
    cfg = pixeljit.apply_overrides(pixeljit.get_preset(preset), overrides)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        assert getattr(getattr(cfg, section), name) == value


@pytest.mark.parametrize("preset, overrides, said", REFUSED)
def test_a_clamp_that_never_acts_is_refused(preset, overrides, said):
    with pytest.raises(ValueError, match="drop ") as err:
        pixeljit.apply_overrides(pixeljit.get_preset(preset), overrides)
    assert said in str(err.value)


def test_the_command_line_refuses_it_by_its_flag():
    argv = ["train", "--preset", "jit-b-16", "--data", "d", "--out", "r", "--set",
            "objective.t_min=0.01"]  # fmt: skip
    with pytest.raises(ValueError, match=r"^--set: objective.t_min 0.01 has no effect"):
        build_config(build_parser().parse_args(argv))


@pytest.mark.parametrize("size, patch, scale", [(512, 32, 2.0), (1024, 64, 4.0), (128, 8, 0.5)])
def test_a_paper_presets_noise_scale_follows_a_new_image_size(size, patch, scale):
    base = pixeljit.get_preset("jit-b-16")
    assert base.objective.noise_scale == 1.0
    cfg = pixeljit.apply_overrides(base, {"model.image_size": size, "model.patch_size": patch})
    assert cfg.objective.noise_scale == scale == size / 256
    argv = ["train", "--preset", "jit-b-16", "--data", "d", "--out", "r", "--set",
            f"model.image_size={size}", "--set", f"model.patch_size={patch}"]  # fmt: skip
    assert build_config(build_parser().parse_args(argv)).objective.noise_scale == scale


def test_a_noise_scale_set_or_not_the_papers_is_kept():
    base = pixeljit.get_preset("jit-b-16")
    given = {"model.image_size": 512, "model.patch_size": 32, "objective.noise_scale": 1.5}
    assert pixeljit.apply_overrides(base, given).objective.noise_scale == 1.5
    fmnist = pixeljit.get_preset("fmnist-tiny")  # s = 1 at 16 px: its own choice, kept
    assert fmnist.objective.noise_scale == 1.0
    cfg = pixeljit.apply_overrides(fmnist, {"model.image_size": 32})
    assert cfg.objective.noise_scale == 1.0
