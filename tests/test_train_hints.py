"""What `pixeljit train` tells a user who resumes: the recipe refusal names the way out (and,
with --preset, that the preset replaced the run's saved config), under torchrun the hints name
the user's torchrun launch and each rank's error says whose it is, and a resume with nothing
to train says how long the run is rather than what was "asked for"."""

from __future__ import annotations

import pytest
import torch

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
    """With another recipe (batch 8 here) this was a recipe change; with the same recipe the
    preset's logistics and data source silently replaced the run's (milestones stopped)."""
    for batch in ("8", "64"):
        argv = ["train", "--preset", "fmnist-tiny", "--resume", str(run8), "--steps", "2",
                "--batch-size", batch, "--no-progress"]  # fmt: skip
        err = cli_error(capsys, argv)
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
    monkeypatch.delenv("RANK")  # RANK 3 of one process is refused (`launch`)
    assert cli_error(capsys, ["train", "--preset", "no-such-preset"]).startswith(
        "pixeljit train: error: unknown preset"
    )


def test_restart_moves_the_runs_scores_aside_with_it(tmp_path):
    """`demo --restart` moved the run aside but left its score.json, which the new run then
    overwrote (and a stopped new run would have paired with the old score)."""
    folder = tmp_path / "demo"
    folder.mkdir()
    for name in ("latest.pt", "score.json", "eval.json", "notes.txt"):
        (folder / name).write_text(name)
    aside = prepare_fresh(folder, restart=True)
    assert sorted(p.name for p in aside.iterdir()) == ["eval.json", "latest.pt", "score.json"]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # not the run's: left alone


def test_flags_and_settings_refused_before_any_training(run8, fmnist16, tmp_path, capsys):
    """A sample.ema_decay none of the EMAs was refused after training (the steps were lost);
    --allow-inexact-resume without --resume did nothing."""
    data = fmnist16(64)
    argv = train_args(data, tmp_path / "a", "--preset", "fmnist-tiny", "--steps", "1",
                      "--set", "sample.ema_decay=0.5")  # fmt: skip
    err = cli_error(capsys, argv)
    assert "sample.ema_decay 0.5 is none of the run's EMAs" in err
    assert not (tmp_path / "a").exists()
    err = cli_error(capsys, train_args(data, tmp_path / "b", "--preset", "fmnist-tiny",
                                       "--steps", "1", "--allow-inexact-resume"))  # fmt: skip
    assert "--allow-inexact-resume has no effect without --resume" in err
    err = cli_error(capsys, ["train", "--resume", str(run8 / "latest.pt" / "x.pt")])
    assert "no such file or folder" in err
    (tmp_path / "c" / "latest.pt").mkdir(parents=True)
    err = cli_error(capsys, ["train", "--resume", str(tmp_path / "c" / "latest.pt")])
    assert "is a folder, not a checkpoint file" in err
    err = cli_error(capsys, train_args(data, tmp_path / "d", "--preset", "fmnist-tiny",
                                       "--config", "/dev/null"))  # fmt: skip
    assert "/dev/null is not a regular file" in err
    err = cli_error(capsys, train_args(data, tmp_path / "e", "--preset", "fmnist-tiny",
                                       "--steps", "2", "--set", "optim.epochs=1"))  # fmt: skip
    assert "both set the run's length" in err


def test_a_damaged_latest_names_no_milestone_that_is_the_same_file(tmp_path):
    """Milestones are hard links to the latest.pt they were: the advice named one, damaged with
    it."""
    import os

    from pixeljit.checkpoints.run import _alternatives

    folder = tmp_path / "linked"
    folder.mkdir()
    latest = folder / "latest.pt"
    latest.write_bytes(b"x")
    os.link(latest, folder / "step-000000020.pt")
    assert _alternatives(latest) == (
        "; no other step-*.pt milestone beside it to load instead (step-000000020.pt is this "
        "file, hard-linked)"
    )
    (folder / "step-000000010.pt").write_bytes(b"y")
    assert "e.g. --resume " + str(folder / "step-000000010.pt") in _alternatives(latest)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_demo_names_a_missing_device_before_judging_the_folder(run8, capsys):
    """The folder was judged against the GPU demo's model, and the message blamed it."""
    err = cli_error(capsys, ["demo", "--out", str(run8), "--device", "cuda"])
    assert "CUDA is not available here" in err and "holds another training run" not in err
