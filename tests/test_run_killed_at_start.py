"""A fresh `train` killed before it logged a step leaves only config.yaml (and the lock file):
the same command starts over, where it was refused until --restart; other settings are still
refused, naming what differs, and nothing in the folder changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import dead_pid, tiny_run
from pixeljit.checkpoints.run import LATEST
from pixeljit.training.loop import train
from pixeljit.training.rundir import CONFIG_FILE, LOCK_FILE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed(fmnist16) -> Path:
    return fmnist16(64)


@pytest.fixture(scope="module")
def whole(packed, tmp_path_factory) -> Path:
    """The folder of a finished tiny run (its config.yaml: what a killed start of it leaves)."""
    run = tmp_path_factory.mktemp("whole") / "run"
    train(tiny_run(packed, run), progress=False)
    return run


@pytest.fixture
def written(whole, tmp_path) -> bytes:
    """`whole`'s config.yaml as the same run into tmp_path/run writes it (run.out its own)."""
    text = (whole / CONFIG_FILE).read_text()
    assert text.count(str(whole)) == 1  # run.out
    return text.replace(str(whole), str(tmp_path / "run")).encode()


def killed_start(folder: Path, config: bytes) -> Path:
    """What `kill -9` during the data's opening leaves: config.yaml and a dead holder's lock."""
    folder.mkdir()
    (folder / CONFIG_FILE).write_bytes(config)
    (folder / LOCK_FILE).write_text(f"{dead_pid()}\n")
    return folder


def test_the_same_run_starts_over_in_a_folder_holding_only_its_config(packed, tmp_path, written):
    run = killed_start(tmp_path / "run", written)
    result = train(tiny_run(packed, run), progress=False)
    assert result.step == 2 and (run / LATEST).is_file()
    assert (run / CONFIG_FILE).read_bytes() == written
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing was moved aside


@pytest.mark.parametrize(
    ("setting", "named"),
    [({"run.seed": 1}, "run.seed 0 there, 1 now"), ({"optim.steps": 3}, "optim.steps 2 there")],
)
def test_other_settings_over_a_lone_config_are_refused_by_name(
    packed, tmp_path, written, setting, named
):
    run = killed_start(tmp_path / "run", written)
    with pytest.raises(ValueError, match="saved no checkpoint") as err:
        train(tiny_run(packed, run, **setting), progress=False)
    message = str(err.value)
    assert named in message and "--restart" in message and "--resume" not in message
    assert sorted(p.name for p in run.iterdir()) == sorted([CONFIG_FILE, LOCK_FILE])
    assert (run / CONFIG_FILE).read_bytes() == written


def test_a_hand_edited_lone_config_is_not_overwritten(packed, tmp_path, written):
    """Only a file reading exactly as this run would write it is taken: a comment is a user's."""
    edited = b"# my notes\n" + written
    run = killed_start(tmp_path / "run", edited)
    with pytest.raises(ValueError, match="written otherwise"):
        train(tiny_run(packed, run), progress=False)
    assert (run / CONFIG_FILE).read_bytes() == edited


def test_a_lone_config_beside_other_run_files_is_still_refused(packed, tmp_path, written):
    run = killed_start(tmp_path / "run", written)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    with pytest.raises(ValueError, match="saved no checkpoint"):
        train(tiny_run(packed, run), progress=False)
    shutil.rmtree(run)
