"""What `pixeljit train` tells a user who resumes: the recipe refusal names the way out (and,
with --preset, that the preset replaced the run's saved config), under torchrun the hints name
the user's torchrun launch and each rank's error says whose it is, and a resume with nothing
to train says how long the run is rather than what was "asked for"."""

from __future__ import annotations

import pytest

from cli_errors import cli_error
from pixeljit.checkpoints.run import resume_hint
from pixeljit.cli import main
from pixeljit.training.rundir import prepare_fresh


def train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--no-progress",
            "--set", "run.device=cpu", "--set", "run.tensorboard=false",
            "--set", "sample.steps=1", "--set", "sample.per_class=1", *extra]  # fmt: skip


@pytest.fixture
def run8(fmnist16, tmp_path, capsys):
    """A 1-step fmnist-tiny run at batch 8 (the preset's batch is larger)."""
    out = tmp_path / "run"
    assert main(train_args(fmnist16(64), out, "--preset", "fmnist-tiny", "--steps", "1",
                           "--batch-size", "8")) == 0  # fmt: skip
    capsys.readouterr()
    return out


def test_resuming_with_the_preset_names_the_preset_as_the_cause(run8, capsys):
    err = cli_error(capsys, ["train", "--preset", "fmnist-tiny", "--resume", str(run8),
                             "--steps", "2", "--no-progress"])  # fmt: skip
    assert "optim.global_batch: checkpoint 8 vs now" in err
    assert "without --resume, into another --out or with --restart" in err
    assert "--preset fmnist-tiny starts from the preset's config" in err
    assert "drop --preset" in err
    assert main(["train", "--resume", str(run8), "--steps", "2", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_a_recipe_change_without_preset_gets_no_preset_hint(run8, capsys):
    err = cli_error(capsys, ["train", "--resume", str(run8), "--set", "optim.lr=0.5",
                             "--no-progress"])  # fmt: skip
    assert "optim.lr" in err and "--preset" not in err


def test_nothing_to_train_says_how_long_the_run_is(run8, capsys):
    assert main(["train", "--resume", str(run8), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the checkpoint is at step 1 and the run is 1 step long" in out
    assert "asked for" not in out


def test_under_torchrun_the_hints_name_the_torchrun_launch(tmp_path, monkeypatch):
    assert resume_hint(tmp_path / "a b") == f"`pixeljit train --resume '{tmp_path / 'a b'}'`"
    (tmp_path / "latest.pt").write_bytes(b"")  # a folder that holds a run
    monkeypatch.setenv("WORLD_SIZE", "2")
    hint = resume_hint(tmp_path)
    assert hint == f"the same `torchrun …` launch of `pixeljit train --resume {tmp_path}`"
    with pytest.raises(ValueError, match="continue it with the same `torchrun …` launch"):
        prepare_fresh(tmp_path, restart=False)


def test_each_rank_error_line_names_its_rank(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    err = cli_error(capsys, ["train", "--preset", "no-such-preset"])
    assert err.startswith("pixeljit train (rank 3 of 4): error: unknown preset")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli_error(capsys, ["train", "--preset", "no-such-preset"]).startswith(
        "pixeljit train: error: unknown preset"
    )
