"""Every numeric field a user can `--set` (or write in a YAML file) is checked for finiteness
and range, with a one-line error naming the field."""

from __future__ import annotations

import pytest

from pixeljit.cli import main
from pixeljit.training.config_io import apply_overrides
from pixeljit.training.presets import get_preset

NAN, INF = float("nan"), float("inf")

# field → values that must be refused (NaN / Inf also reach __post_init__ through the Python API)
BAD = {
    "optim.lr": [0.0, -1e-4, NAN, INF],
    "optim.blr": [0.0, -1.0, INF],
    "optim.betas": [[0.9, 1.0], [-0.1, 0.95], [NAN, 0.95], [0.9]],
    "optim.weight_decay": [-0.1, INF],
    "optim.warmup_epochs": [-1.0, NAN],
    "optim.global_batch": [0, -8],
    "optim.micro_batch": [0, 7],  # 7 does not divide the preset's 16
    "optim.epochs": [0.0, -1.0, INF],
    "optim.steps": [0, -1],
    "optim.grad_clip": [0.0, -1.0, NAN],
    "optim.ema_decays": [[], [1.0], [0.0], [0.999, 0.999], [NAN]],
    "objective.p_mean": [NAN, INF],
    "objective.p_std": [0.0, -0.8, INF],
    "objective.t_eps": [0.0, 1.0, -0.1, NAN],
    "objective.t_min": [0.0, 1.5],
    "objective.noise_scale": [0.0, -1.0, INF],
    "objective.label_drop": [1.0, -0.1, NAN],
    "objective.sigma_data": [0.0, -1.0],
    "model.image_size": [0, -16, 15],
    "model.patch_size": [0, -4],
    "model.in_channels": [0],
    "model.hidden_size": [0, -32],
    "model.depth": [0, -2],
    "model.num_heads": [0, -2],
    "model.mlp_ratio": [0.0, -4.0, INF],
    "model.dropout": [1.0, -0.1, NAN],
    "model.attn_dropout": [1.0, -0.5],
    "model.num_classes": [-1],
    "sample.steps": [0, -1],
    "sample.cfg": [-1.0, NAN, INF],
    "sample.shift": [0.0, NAN],
    "sample.interval": [[0.5, 2.0], [0.9, 0.1], [NAN, 1.0]],
    "sample.t_eps": [0.0, INF],
    "sample.every": [-1],
    "sample.per_class": [0],
    "sample.max_classes": [0],
    "sample.ema_decay": [0.0, 1.0, NAN],
    "data.num_classes": [-1],
    "run.out": ["", "  "],  # never the current folder by accident
    "run.seed": [-1, 2**63],
    "run.log_every": [0],
    "run.ckpt_every": [0],
    "run.milestone_every": [-1],
}
CASES = [(field, value) for field, values in BAD.items() for value in values]


@pytest.mark.parametrize("field, value", CASES, ids=[f"{f}={v}" for f, v in CASES])
def test_bad_values_are_refused_naming_the_field(field, value):
    base = get_preset("fmnist-tiny")
    with pytest.raises(ValueError) as err:
        apply_overrides(base, {field: value})
    message = str(err.value)
    assert field in message and "\n" not in message, message  # section.field, as typed


def test_good_values_pass():
    cfg = apply_overrides(
        get_preset("fmnist-tiny"),
        {"optim.lr": 1e-3, "optim.betas": [0.0, 0.99], "optim.micro_batch": 8,
         "optim.ema_decays": [0.5, 0.9999], "objective.label_drop": 0.0, "run.seed": 2**63 - 1},
    )  # fmt: skip
    assert cfg.optim.micro_batch == 8 and cfg.run.seed == 2**63 - 1


def test_set_from_the_command_line_is_one_line(tmp_path, capsys):
    for item in ("optim.lr=.nan", "optim.lr=-1", "objective.p_std=0", "run.seed=-3"):
        argv = ["train", "--preset", "fmnist-tiny", "--out", str(tmp_path / "r"), "--set", item]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert item.split("=")[0] in err and err.count("\n") == 1  # the dotted key
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text", ["a: 1\n", "optimm:\n  lr: 0.1\n"])
def test_an_unknown_top_level_key_of_a_config_file_names_the_file_and_the_sections(
    tmp_path, capsys, text
):
    """A scalar top-level key got --set's wording ("override 'a' must look like section.field")
    and no file name; a mapping got "unknown config section". Both now read the same."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    argv = ["train", "--preset", "fmnist-tiny", "--out", str(tmp_path / "r"), "--config", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--config {path}: unknown config section" in err and "optim" in err
    assert not (tmp_path / "r").exists()
