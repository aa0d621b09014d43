"""A resume says which settings it changed, and never ignores (then overwrites) an edited
config.yaml in the run folder."""

from __future__ import annotations

import pytest

from conftest import tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.cli import main
from pixeljit.training.loop import train


@pytest.fixture
def run(fmnist16, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_run(fmnist16(64), out, **{"optim.global_batch": 8, "optim.warmup_epochs": 0.0})
    train(cfg, progress=False)
    return out


def test_a_resume_names_the_settings_it_changed(run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--set", "sample.every=7",
                 "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("resumed with changed settings"))
    assert line == "resumed with changed settings: optim.steps 2 → 3, sample.every 0 → 7"
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert "sample.every" not in capsys.readouterr().out  # kept from the checkpoint: no change


def test_an_edited_config_file_is_refused_not_ignored(run, capsys):
    config = run / "config.yaml"
    text = config.read_text()
    assert "  every: 0\n" in text
    config.write_text(text.replace("  every: 0\n", "  every: 5\n"))
    edited = config.read_text()
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sample.every 0 in the checkpoint, 5 in the file" in err
    assert f"--config {config}" in err
    assert config.read_text() == edited and load_checkpoint(run)["step"] == 2  # nothing touched
    argv = ["train", "--resume", str(run), "--steps", "3", "--config", str(config)]
    assert main([*argv, "--no-progress"]) == 0  # the file applied (its length overridden)
    assert load_checkpoint(run)["config"]["sample"]["every"] == 5
    assert load_checkpoint(run)["step"] == 3


def test_an_unreadable_config_file_is_refused(run, capsys):
    (run / "config.yaml").write_text("optim: [unclosed\n")
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 2
    assert "config.yaml cannot be read" in capsys.readouterr().err
    assert load_checkpoint(run)["step"] == 2


def test_a_milestone_of_another_config_is_not_judged_by_the_file(fmnist16, tmp_path):
    """config.yaml is the latest run's: resuming an older milestone, trained with other
    settings, is no edit of it."""
    out = tmp_path / "run"
    base = {"optim.global_batch": 8, "optim.warmup_epochs": 0.0, "run.milestone_every": 2}
    train(tiny_run(fmnist16(64), out, **base), progress=False)
    longer = tiny_run(fmnist16(64), out, **{**base, "optim.steps": 4, "sample.every": 3})
    train(longer, resume=str(out), progress=False)
    assert main(["train", "--resume", str(out / "step-000000002.pt"), "--steps", "3",
                 "--no-progress"]) == 0  # fmt: skip
    assert load_checkpoint(out)["step"] == 3


def test_a_config_files_run_out_is_refused_on_resume_not_replaced(run, tmp_path, capsys):
    """--out and --set run.out elsewhere are refused on --resume (the run continues in its own
    folder); a --config file's run.out was replaced by the run's folder without a word."""
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  out: {elsewhere}\n")
    argv = ["train", "--resume", str(run), "--steps", "3", "--config", str(config), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"--config {config} sets run.out {elsewhere}, but --resume {run} continues in its own "
        f"folder {run}: drop run.out from the file or set it to {run}" in err
    )
    assert load_checkpoint(run)["step"] == 2 and not elsewhere.exists()
    config.write_text(f"run:\n  out: {run}\n")  # the run's own folder, as its config.yaml says
    assert main(argv) == 0 and load_checkpoint(run)["step"] == 3


def test_a_runs_config_yaml_alone_trains_the_same_run_again(run, tmp_path, capsys):
    """A run's config.yaml is a whole config: `train --config` replays it without a preset (one
    was demanded, and a preset under it could change what the file did not say)."""
    import torch

    again = tmp_path / "again"
    argv = ["train", "--config", str(run / "config.yaml"), "--out", str(again), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    first, second = (load_checkpoint(folder) for folder in (run, again))
    assert second["step"] == first["step"] == 2
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    lines = (run / "config.yaml").read_text().splitlines()
    replayed = (again / "config.yaml").read_text().splitlines()
    assert [a for a, b in zip(lines, replayed, strict=True) if a != b] == [f"  out: {run}"]


def test_a_partial_config_file_without_a_preset_names_what_it_lacks(tmp_path, capsys):
    (tmp_path / "part.yaml").write_text("optim:\n  lr: 0.1\n")
    argv = ["train", "--config", str(tmp_path / "part.yaml"), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sets some fields of the config, not all (it lacks model.image_size" in err, err
    assert "pass --preset P to fill the rest" in err and not (tmp_path / "r").exists()


def test_an_older_versions_config_yaml_alone_trains_with_the_fields_added_since(run, tmp_path,
                                                                               capsys):  # fmt: skip
    """A config.yaml written before a field existed stands alone too: the field takes the value
    that does what that version did (`resume.ADDED_FIELDS`), not a refusal naming it, nor its
    default where the two differ (optim.decay_1d: AdamW decayed every parameter before)."""
    from pixeljit.training.resume import ADDED_FIELDS

    text = (run / "config.yaml").read_text()
    assert text.count("  weight_decay: 0.0\n") == 1
    text = text.replace("  weight_decay: 0.0\n", "  weight_decay: 0.05\n")
    gone = ("ema_warmup_offset", "decay_1d")
    lines = [line for line in text.splitlines() if line.strip().split(":")[0] not in gone]
    assert len(lines) == len(text.splitlines()) - len(gone)
    old = tmp_path / "old.yaml"
    old.write_text("\n".join(lines) + "\n")
    again = tmp_path / "again"
    argv = ["train", "--config", str(old), "--out", str(again), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    saved = load_checkpoint(again)["config"]
    assert saved["optim"]["ema_warmup_offset"] == ADDED_FIELDS[("optim", "ema_warmup_offset")]
    assert saved["optim"]["weight_decay"] == 0.05
    assert saved["optim"]["decay_1d"] is True  # its default (false) would exempt 1-D parameters
