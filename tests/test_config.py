"""Typed configs: overrides from YAML and --set, validation, round trips, the CLI contract."""

from __future__ import annotations

import pytest

from pixeljit.cli import build_parser
from pixeljit.cli.train import build_config
from pixeljit.training.config_io import (
    apply_overrides,
    from_dict,
    load_yaml,
    parse_set,
    save_yaml,
    to_dict,
)
from pixeljit.training.presets import get_preset


def test_set_values_are_typed():
    cfg = apply_overrides(
        get_preset("jit-b-16"),
        parse_set(
            [
                "optim.lr=1e-4",
                "model.depth=6",
                "sample.interval=[0.2, 0.9]",
                "model.bottleneck_dim=null",
                "run.compile=true",
            ]
        ),  # fmt: skip
    )
    assert cfg.optim.lr == 1e-4 and cfg.optim.learning_rate == 1e-4
    assert cfg.model.depth == 6 and cfg.model.bottleneck_dim is None
    assert cfg.sample.interval == (0.2, 0.9) and cfg.run.compile is True


@pytest.mark.parametrize(
    "item, message",
    [
        ("optim.lr=abc", "optim.lr must be a number"),
        ("model.depht=3", "unknown field model.depht"),
        ("foo.x=1", "unknown config section 'foo'"),
        ("model.depth=1.5", "model.depth must be an integer"),
        ("model.attention=xyz", "attention must be one of"),
        ("run.compile=3", "run.compile must be true, false or auto, got 3$"),
        ("optim.steps=0", "optim.steps must be ≥ 1"),
        ("depth=3", "section.field"),
    ],
)
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(get_preset("fmnist-cpu"), parse_set([item]))


def test_yaml_and_dict_round_trips(tmp_path):
    cfg = apply_overrides(get_preset("jit-h-32"), {"optim": {"grad_clip": 1.0}})
    assert from_dict(to_dict(cfg)) == cfg
    path = save_yaml(cfg, tmp_path / "c.yaml")
    assert from_dict(load_yaml(path)) == cfg
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping of sections"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("jit-x-16")


def test_cli_flags_then_file_then_set(tmp_path):
    (tmp_path / "o.yaml").write_text("optim:\n  lr: 0.002\n  global_batch: 64\nrun:\n  seed: 5\n")
    args = build_parser().parse_args([
        "train", "--preset", "fmnist-cpu", "--data", "fashion-mnist", "--out", "runs/x",
        "--epochs", "3", "--batch-size", "32", "--config", str(tmp_path / "o.yaml"),
        "--set", "optim.lr=0.003",
    ])  # fmt: skip
    cfg = build_config(args)
    assert cfg.optim.epochs == 3.0 and cfg.optim.steps is None
    assert cfg.optim.global_batch == 32  # the flag beats the file
    assert cfg.optim.lr == 0.003 and cfg.run.seed == 5  # --set beats both; the file applies
    assert cfg.data.source == "fashion-mnist" and cfg.run.out == "runs/x"
    with pytest.raises(SystemExit):  # --steps and --epochs exclude each other
        build_parser().parse_args(["train", "--preset", "p", "--steps", "1", "--epochs", "1"])
    with pytest.raises(ValueError, match="pass --preset"):
        build_config(build_parser().parse_args(["train"]))
