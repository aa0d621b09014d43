"""Training configuration inputs: `--config`, `--set`, the flags and `apply_overrides` follow the
same rules, read numbers in decimal, refuse a repeated key, a setting without effect and a flag
contradicted by a section's mapping, and name what the user typed."""

from __future__ import annotations

import pytest

from pixeljit.cli import build_parser, main
from pixeljit.cli.train import build_config
from pixeljit.training.config_io import (
    apply_overrides,
    load_yaml,
    parse_set,
    to_dict,
    yaml_text,
)
from pixeljit.training.presets import get_preset, presets


def built(*argv: str, preset: str = "fmnist-tiny"):
    args = ["train", "--preset", preset, "--data", "fashion-mnist", "--out", "runs/t", *argv]
    return build_config(build_parser().parse_args(args))


def refused(match: str, *argv: str, preset: str = "fmnist-tiny") -> str:
    with pytest.raises(ValueError, match=match) as caught:
        built(*argv, preset=preset)
    message = str(caught.value)
    assert "\n" not in message
    return message


def api(overrides: dict, preset: str = "fmnist-tiny"):
    return apply_overrides(get_preset(preset), overrides)


def api_refused(match: str, overrides: dict, preset: str = "fmnist-tiny") -> str:
    with pytest.raises(ValueError, match=match) as caught:
        api(overrides, preset)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ------------------------------------------------------------- 1: the API follows --set's rules


def test_api_epochs_clear_the_presets_steps_as_set_does():
    cfg = api({"optim.epochs": 0.0005})
    assert (cfg.optim.steps, cfg.optim.epochs) == (None, 0.0005)
    cfg = api({"optim.steps": 5}, "jit-b-16")  # steps alone clear the preset's 600 epochs
    assert (cfg.optim.steps, cfg.optim.epochs) == (5, None)
    api_refused(r"sets both optim.steps \(5\) and optim.epochs \(2\)",
                {"optim": {"steps": 5, "epochs": 2}})  # fmt: skip


def test_api_num_classes_asks_the_data_as_set_does():
    assert not api({"model.num_classes": 0}).data.conditional  # an unconditional model
    cfg = api({"model.num_classes": 5}, "emoji-cpu")  # an unconditional recipe made conditional
    assert cfg.data.num_classes == 5 and cfg.data.conditional


@pytest.mark.parametrize(
    "items",
    [
        ["optim.epochs=0.5"],
        ["model.num_classes=0"],
        ["model.num_classes=4", "optim={lr: 2e-3, global_batch: 32}"],
    ],
)
def test_api_trains_what_set_would(items):
    expected = built(*[a for item in items for a in ("--set", item)])
    flags = {"data.source": "fashion-mnist", "run.out": "runs/t"}
    assert api({**flags, **parse_set(items)}) == expected


@pytest.mark.parametrize("bad", [None, [("optim.lr", 1e-3)], "optim.lr=1e-3", 3])
def test_api_overrides_that_are_no_mapping_are_a_type_error(bad):
    with pytest.raises(TypeError, match="takes a mapping of overrides") as caught:
        apply_overrides(get_preset("fmnist-tiny"), bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(TypeError, match="takes a TrainConfig"):
        apply_overrides({"optim": {}}, {})


# ------------------------------------------------------------------ 2: numbers read in decimal


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("run.seed=0042", "run.seed", 42),
        ("optim.steps=010", "optim.steps", 10),
        ("optim.steps=09", "optim.steps", 9),
        ("optim.lr=1e-3", "optim.lr", 1e-3),
        ("optim.lr=1E-3", "optim.lr", 1e-3),
        ("optim.lr=.5", "optim.lr", 0.5),
    ],
)
def test_set_numbers_are_decimal(item, key, value):
    got = parse_set([item])[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "item", ["optim.steps=0b101", "optim.steps=0o17", "optim.steps=0x10", "sample.cfg=1:30"]
)
def test_other_yaml_1_1_number_forms_are_refused_not_converted(item):
    key, _, raw = item.partition("=")
    message = api_refused(f"{key} must be a.*got '{raw}'", parse_set([item]))
    assert message.startswith(key)  # the field named, read as the text it was given


def test_a_config_file_reads_numbers_as_set_does(tmp_path):
    (tmp_path / "a.yaml").write_text("run: {seed: 0042}\noptim: {lr: 1e-3}\n")
    cfg = built("--config", str(tmp_path / "a.yaml"))
    assert cfg.run.seed == 42 and cfg.optim.lr == 1e-3
    (tmp_path / "b.yaml").write_text("sample: {cfg: 1:30}\n")
    refused("sample.cfg must be a number, got '1:30'", "--config", str(tmp_path / "b.yaml"))
    cfg = api({"run.out": "1e3", "data.split": "010"})  # text that reads as a number: quoted
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text(to_dict(cfg)))
    assert api(load_yaml(path)) == cfg


# --------------------------------------------- 3: a flag against a section's mapping in --set


@pytest.mark.parametrize(
    "flags, item",
    [
        (["--steps", "4"], "optim={steps: 9}"),
        (["--data", "x"], "data={source: emoji}"),
        (["--seed", "3"], "run={seed: 7}"),
        (["--batch-size", "8"], "optim={global_batch: 32}"),
        (["--out", "o1"], "run={out: o2}"),
    ],
)
def test_a_flag_and_a_sections_mapping_setting_its_field_are_refused(flags, item):
    argv = ["train", "--preset", "fmnist-tiny", *flags, "--set", item]
    with pytest.raises(ValueError, match=f"and {flags[0]} {flags[1]} both set"):
        build_config(build_parser().parse_args(argv))


# ------------------------------------------------------------------- 4: a key given twice


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    refused(r"optim\.lr is given twice", "--set", "optim.lr=1e-3", "--set", "optim.lr=2e-3")
    refused(r"optim\.lr is given twice", "--set", "optim.lr=1e-3", "--set", "optim={lr: 2e-3}")
    (tmp_path / "c.yaml").write_text("optim: {lr: 2e-3}\noptim.lr: 5e-3\n")
    message = refused(r"optim\.lr is given twice", "--config", str(tmp_path / "c.yaml"))
    assert message.startswith(f"--config {tmp_path / 'c.yaml'}: ")
    api_refused(r"optim\.lr is given twice", {"optim": {"lr": 2e-3}, "optim.lr": 5e-3})


# ------------------------------------------------------------- 5: settings without effect


@pytest.mark.parametrize(
    "overrides, preset, named",
    [
        ({"sample.shift": 5.0}, "fmnist-tiny", "sample.grid=shifted"),
        ({"sample.grid": "edm", "sample.shift": 5.0}, "fmnist-tiny", "sample.grid=shifted"),
        ({"objective.t_sampler": "uniform", "objective.p_mean": 0.0}, "fmnist-tiny",
         "objective.t_sampler=logit_normal"),
        ({"objective.t_sampler": "uniform", "objective.p_std": 1.0}, "fmnist-tiny",
         "objective.t_sampler=logit_normal"),
        ({"objective.sigma_data": 1.0}, "fmnist-tiny", "objective.preconditioner=edm"),
        ({"model.in_context_len": 0, "model.in_context_start": -5}, "fmnist-tiny", "outside"),
        ({"model.in_context_len": 0, "model.in_context_start": 99}, "fmnist-tiny", "outside"),
        ({"model.dropout_blocks": [0, 1]}, "fmnist-tiny", "model.dropout"),
        ({"sample.cfg": 1.0, "sample.interval": [0.2, 0.9]}, "fmnist-tiny", "sample.cfg"),
        ({"sample.interval": [0.2, 0.9]}, "emoji-cpu", "unconditional model"),
    ],
)  # fmt: skip
def test_a_setting_without_effect_is_refused(overrides, preset, named):
    key = list(overrides)[-1]  # the setting without effect (after what takes its effect)
    message = api_refused(f"{key}.* has no effect", overrides, preset)
    assert named in message
    items = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    assert "has no effect" in refused(key, *items, preset=preset)


def test_blr_over_a_presets_lr_is_the_rate_and_both_at_once_are_refused():
    cfg = api({"optim.blr": 1e-4})  # fmnist-tiny sets optim.lr 1e-3
    assert cfg.optim.lr is None and cfg.optim.learning_rate == 1e-4 * 16 / 256
    assert built("--set", "optim.blr=1e-4") == api(
        {"optim.blr": 1e-4, "data.source": "fashion-mnist", "run.out": "runs/t"}
    )
    api_refused(
        r"sets both optim.lr \(0.002\) and optim.blr", {"optim.lr": 2e-3, "optim.blr": 1e-4}
    )
    assert built("--set", "optim.lr=2e-3").optim.lr == 2e-3  # the rate alone: fine


def test_only_what_the_user_set_without_effect_is_refused():
    """emoji-cpu has no guidance (cfg 1) with the paper's interval, fmnist-tiny an lr and the
    default blr, dropout 0 and its own in-context start: changing another field is fine."""
    api_refused("sample.interval", {"sample.interval": [0.2, 0.9]}, "emoji-cpu")
    assert api({"sample.steps": 3}, "emoji-cpu").sample.steps == 3
    assert api({"model.in_context_len": 0}).model.in_context_len == 0
    assert api({"model.dropout": 0.1, "model.dropout_blocks": [0, 1]}).model.dropout == 0.1
    assert api({"sample.grid": "shifted", "sample.shift": 2.0}).sample.shift == 2.0


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_builds_and_replays_its_own_config(name, tmp_path):
    cfg = get_preset(name)
    assert api({}, name) == cfg
    assert api(to_dict(cfg), name) == cfg  # a saved config.yaml as overrides: no request
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text(to_dict(cfg)))
    argv = ["train", "--preset", name, "--config", str(path)]
    assert build_config(build_parser().parse_args(argv)) == cfg


# --------------------------------------------------- 6, 7, 9, 10: checked when the config is built


def test_an_unknown_distributed_strategy_is_refused_before_the_data_is_opened(tmp_path, capsys):
    api_refused("run.distributed must be ddp or fsdp, got 'deepspeed'",
                {"run.distributed": "deepspeed"})  # fmt: skip
    argv = ["train", "--preset", "fmnist-tiny", "--data", str(tmp_path / "none"), "--out",
            str(tmp_path / "run"), "--set", "run.distributed=deepspeed"]  # fmt: skip
    assert main(argv) == 2
    assert "run.distributed must be ddp or fsdp" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, values, said",
    [
        ("objective.t_eps", [1.5, 1.0, 0.0], "must lie in (0, 1)"),
        ("objective.p_std", [-0.1, 0.0], "must be > 0"),
        ("objective.label_drop", [-0.1, 1.0, 1.5], "must lie in [0, 1)"),
    ],
)
def test_one_range_per_objective_field(field, values, said):
    for value in values:
        message = api_refused(field, {field: value})
        assert message == f"{field} {said}, got {float(value)}"


def test_an_empty_split_is_refused():
    api_refused("data.split must name a split.*null", {"data.split": ""})
    message = refused("data.split must name a split", "--set", "data.split=")
    assert "got an empty one" in message and "default split" in message


def test_epochs_beyond_the_step_ceiling_are_refused_when_the_config_is_built():
    api_refused("optim.epochs 2e.09 makes more than 1000000000 steps", {"optim.epochs": 2e9})
    message = refused(r"--epochs must be ≤ 1000000000", "--epochs", "1e10")
    assert "optim.epochs" not in message  # the flag the user typed is named, not the field


# ------------------------------------------------------------------------------------ 8: `~`


def test_tilde_is_the_home_folder_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = api({"run.out": "~/tilde_run", "data.source": "~/images"})
    assert cfg.run.out == str(tmp_path / "home" / "tilde_run")
    assert cfg.data.source == str(tmp_path / "home" / "images")
    argv = ["train", "--preset", "fmnist-tiny", "--set", "run.out=~/r", "--set", "data.source=~/d"]
    cfg = build_config(build_parser().parse_args(argv))
    assert (cfg.run.out, cfg.data.source) == (str(tmp_path / "home" / "r"),
                                              str(tmp_path / "home" / "d"))  # fmt: skip
    (tmp_path / "c.yaml").write_text("run: {out: ~/f}\n")
    argv = ["train", "--preset", "fmnist-tiny", "--config", str(tmp_path / "c.yaml")]
    cfg = build_config(build_parser().parse_args(argv))
    assert cfg.run.out == str(tmp_path / "home" / "f")
    assert "~" not in yaml_text(to_dict(cfg))  # config.yaml records the folder used


# ------------------------------------------------------------------ 11: flags named as typed


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--seed", "-1"], "--seed must lie in [0, 2**63), got -1"),
        (["--seed", str(2**63)], "--seed must lie in [0, 2**63)"),
        (["--steps", str(2**40)], "--steps must be ≤ 1000000000, got 1099511627776"),
        (["--out", " "], "--out must name a run folder"),
    ],
)
def test_flag_errors_name_the_flag(flags, said):
    argv = ["train", "--preset", "fmnist-tiny", *flags]
    with pytest.raises(ValueError) as caught:
        build_config(build_parser().parse_args(argv))
    assert str(caught.value).startswith(said)


# ---------------------------------------------------------------------- 12: minor messages


def test_a_list_as_config_file_names_the_flag(tmp_path):
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    message = refused("must hold a mapping of sections", "--config", str(tmp_path / "l.yaml"))
    assert message.startswith(f"--config {tmp_path / 'l.yaml'} must hold")


def test_yaml_errors_leak_no_pyyaml_internals(tmp_path):
    for item in ["optim.lr=[1", "model={<<: {depth: 3}}"]:
        with pytest.raises(ValueError) as caught:
            parse_set([item])
        assert "unicode string" not in str(caught.value) and "tag:yaml.org" not in str(caught.value)
    (tmp_path / "m.yaml").write_text("model:\n  <<: {depth: 3}\n")
    message = refused("merge keys", "--config", str(tmp_path / "m.yaml"))
    assert "tag:yaml.org" not in message and "line 2" in message


def test_list_and_head_dim_errors_say_what_to_change():
    api_refused(r"model.dropout_blocks must be a list \[start, stop\] of block indices, each an "
                r"integer, got \[0.5, 1\]", {"model.dropout_blocks": [0.5, 1]})  # fmt: skip
    message = api_refused("head dim of 15", {"model.hidden_size": 30})
    assert "model.hidden_size" in message and "model.num_heads" in message


def test_a_set_value_is_taken_whole():
    refused("comment", "--set", "data.split=a #b")
    assert built("--set", "data.split='a #b'").data.split == "a #b"  # quoted: kept whole
