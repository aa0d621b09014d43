"""Typed configs: overrides from YAML and --set, validation, round trips, the CLI contract."""

from __future__ import annotations

import numpy as np
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


def _built(tmp_path, yaml_text: str | None = None, *sets: str):
    argv = ["train", "--preset", "fmnist-small", "--out", str(tmp_path / "r")]
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        argv += ["--config", str(tmp_path / "c.yaml")]
    for item in sets:
        argv += ["--set", item]
    return build_config(build_parser().parse_args(argv))


def test_epochs_in_a_file_or_set_replace_the_presets_steps(tmp_path):
    """fmnist-small fixes optim.steps; a user's optim.epochs alone used to lose to it silently."""
    assert _built(tmp_path).optim.steps is not None  # the preset's length
    built = _built(tmp_path, "optim:\n  epochs: 2\n"), _built(tmp_path, None, "optim.epochs=2")
    for cfg in built:
        assert (cfg.optim.epochs, cfg.optim.steps) == (2.0, None)
    with pytest.raises(ValueError, match=r"sets both optim.steps \(5\) and optim.epochs \(2\)"):
        _built(tmp_path, "optim:\n  steps: 5\n  epochs: 2\n")
    with pytest.raises(ValueError, match="--set sets both optim.steps"):
        _built(tmp_path, None, "optim.steps=5", "optim.epochs=2")
    cfg = _built(tmp_path, "optim:\n  steps: 7\n  epochs: null\n")  # the way to say one of them
    assert (cfg.optim.steps, cfg.optim.epochs) == (7, None)


def test_model_num_classes_asks_the_data_for_that_many(tmp_path, fmnist16, capsys):
    """model.num_classes is filled in from the data; set by the user it is the number of classes
    asked for (data.num_classes), so labels beyond it are refused instead of the value ignored."""
    from pixeljit.training.loop import train

    cfg = _built(tmp_path, None, "model.num_classes=5")
    assert cfg.data.num_classes == 5 and cfg.data.conditional
    assert not _built(tmp_path, "model:\n  num_classes: 0\n").data.conditional
    with pytest.raises(ValueError, match="the model's classes are the data's"):
        _built(tmp_path, None, "model.num_classes=5", "data.num_classes=10")
    from conftest import tiny_run

    data = fmnist16(64)  # ten classes
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        train(tiny_run(data, tmp_path / "five", **{"data.num_classes": 5}), progress=False)
    # one preview row per class asked for: the two the data does not name are "class 10, 11"
    # (the preview failed on 12 rows for 10 names, after the checkpoint or before the first)
    rows = {"data.num_classes": 12, "sample.max_classes": 12}
    wide = train(tiny_run(data, tmp_path / "wide", **rows), progress=False)
    warned = capsys.readouterr().out  # allowed, but never silently
    assert "warning: 12 classes asked" in warned and "classes 10…11 are never trained" in warned
    assert list((tmp_path / "wide").glob("samples-*.png"))
    from pixeljit.checkpoints.load import load_trained

    assert load_trained(wide.checkpoint).net.config.num_classes == 12
    # its model card does not claim a name for every class
    from pixeljit.cli import main

    assert main(["convert", str(tmp_path / "wide"), "--hub", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| classes | 12: T-shirt/top," in card and "10 of the 12 classes named" in card
    # the folder loads back, and a class without a name is labelled by its number
    assert load_trained(tmp_path / "hub").class_names[9] == "Ankle boot"
    grid = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "hub"), "--labels", "9", "11", "--steps", "1",
                 "--out", str(grid)]) == 0  # fmt: skip
    from pixeljit.cli.sample import grid_layout

    names = load_trained(tmp_path / "hub").class_names
    assert grid_layout([9, 9, 11, 11], 4, None, names) == (2, ["Ankle boot", "class 11"])


def test_classes_asked_of_unlabelled_data_are_refused(tmp_path):
    from conftest import tiny_run
    from pixeljit.data import pack_arrays
    from pixeljit.training.loop import train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 1, 16, 16), dtype=np.uint8)
    pack_arrays(images, tmp_path / "one", np.zeros(32, np.int64))  # a single class
    with pytest.raises(ValueError, match="10 classes were asked .* but the data has 1 class"):
        train(tiny_run(tmp_path / "one", tmp_path / "r", **{"data.num_classes": 10}))
    run = train(tiny_run(tmp_path / "one", tmp_path / "u"), progress=False)  # unconditional
    from pixeljit.checkpoints.load import load_trained

    assert load_trained(run.checkpoint).net.config.num_classes == 0


def test_a_length_flag_and_a_length_setting_are_refused_together(tmp_path):
    """--steps with --set optim.epochs silently trained for the epochs (and the reverse was
    already refused); --steps over a file's epochs keeps no stale epochs in the config."""
    small = ["train", "--preset", "fmnist-small"]
    with pytest.raises(ValueError, match="--set optim.epochs=0.5 and --steps 3 both set"):
        argv = [*small, "--steps", "3", "--set", "optim.epochs=0.5"]
        build_config(build_parser().parse_args(argv))
    (tmp_path / "e.yaml").write_text("optim:\n  epochs: 0.25\n")
    argv = [*small, "--config", str(tmp_path / "e.yaml"), "--steps", "2"]
    cfg = build_config(build_parser().parse_args(argv))
    assert (cfg.optim.steps, cfg.optim.epochs) == (2, None)


def test_contradictory_class_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model.num_classes 5 and data.conditional false"):
        _built(tmp_path, None, "model.num_classes=5", "data.conditional=false")
    # a saved config replayed: model.num_classes as the preset has it is no request
    cfg = _built(tmp_path, "model:\n  num_classes: 10\ndata:\n  conditional: true\n")
    assert cfg.data.num_classes is None
