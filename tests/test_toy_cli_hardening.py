"""`pixeljit reproduce toy` refuses what it could not write before it trains, names its own
flags in every error, and says on Ctrl-C what it kept and that it does not resume."""

from __future__ import annotations

import os
import signal

import pytest

import pixeljit.experiments.toy as toy
import pixeljit.experiments.toy_report as toy_report
from pixeljit.cli import main
from pixeljit.experiments.toy import ToyConfig, run_toy
from pixeljit.experiments.toy_report import toy_output_names, write_outputs

NAMES = toy_output_names()  # toy_fig2.png, toy_table.md, toy_table.json
QUICK = ["reproduce", "toy", "--quick", "--steps", "3", "--dims", "2"]
INTERRUPTED = 128 + signal.SIGINT


@pytest.fixture(scope="module")
def tiny_result():
    """A real (tiny) toy result, for runs whose training is stood in for."""
    cfg = ToyConfig(dims=(2,), steps=3, batch_size=32, num_samples=64, sample_steps=3)
    return run_toy(cfg)


@pytest.fixture
def no_training(monkeypatch):
    """run_toy replaced by one that fails the test: the checks must come before any training."""

    def trained(*args, **kwargs):
        raise AssertionError("trained before refusing the outputs")

    monkeypatch.setattr(toy, "run_toy", trained)


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def _contents(folder) -> dict:
    return {p.name: (p.is_dir(), os.path.lexists(p)) for p in folder.iterdir()}


# ------------------------------------------------------------------ a: every output name


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("name", NAMES)
def test_folder_at_an_output_name_is_refused_before_training(
    tmp_path, capsys, no_training, name, overwrite
):
    out = tmp_path / "t"
    (out / name).mkdir(parents=True)
    assert main([*QUICK, "--out", str(out), *overwrite]) == 2
    err = _err(capsys)
    assert f"--out {out} holds {name}, a folder" in err and "remove or rename it" in err
    assert [p.name for p in out.iterdir()] == [name]  # nothing written beside it
    assert (out / name).is_dir()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("name", NAMES)
def test_dangling_link_at_an_output_name_is_refused_and_kept(
    tmp_path, capsys, no_training, name, overwrite
):
    out = tmp_path / "t"
    out.mkdir()
    (out / name).symlink_to(tmp_path / "gone")
    assert main([*QUICK, "--out", str(out), *overwrite]) == 2
    err = _err(capsys)
    assert name in err and "symbolic link" in err and "does not exist" in err
    assert (out / name).is_symlink() and os.readlink(out / name) == str(tmp_path / "gone")
    assert [p.name for p in out.iterdir()] == [name]


def test_fifo_at_an_output_name_is_refused(tmp_path, capsys, no_training):
    out = tmp_path / "t"
    out.mkdir()
    os.mkfifo(out / "toy_table.json")
    assert main([*QUICK, "--out", str(out), "--overwrite"]) == 2
    assert "toy_table.json, not a plain file" in _err(capsys)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("held", ["noise-config.json", "nfe.json", "notes.txt"])
def test_a_folder_of_other_results_is_refused(tmp_path, capsys, no_training, held, overwrite):
    out = tmp_path / "results"
    out.mkdir()
    (out / held).write_text("{}")
    assert main([*QUICK, "--out", str(out), *overwrite]) == 2
    err = _err(capsys)
    assert f"--out {out} is not empty and holds no file of an earlier toy run" in err
    assert [p.name for p in out.iterdir()] == [held]  # nothing written beside it


def test_library_write_outputs_refuses_a_folder_before_writing_any_file(tmp_path, tiny_result):
    (tmp_path / "toy_table.md").mkdir()
    with pytest.raises(ValueError, match="toy_table.md is a folder"):
        write_outputs(tiny_result, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["toy_table.md"]  # no json written first


# --------------------------------------------------------------------- c: flags named


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dims", "2", "2"], "--dims lists 2 more than once: give each value once"),
        (["--dims", "3", "2", "3", "2"], "--dims lists 2, 3 more than once"),
        (["--dims", "1"], "--dims must be ≥ 2"),
        (["--steps", "0"], "--steps must be ≥ 1"),
        (["--threads", "0"], "--threads must be ≥ 1"),
        (["--seed", "-1"], "--seed must be ≥ 0"),
    ],
)
def test_every_config_error_names_the_flag(tmp_path, capsys, no_training, args, expected):
    out = tmp_path / "t"
    assert main(["reproduce", "toy", "--out", str(out), *args]) == 2
    err = _err(capsys)
    assert expected in err
    assert "must not repeat" not in err and "error: dims" not in err  # not the config's field
    assert not out.exists()


def test_library_keeps_its_own_field_error():
    with pytest.raises(ValueError, match="dims must not repeat"):
        ToyConfig(dims=(2, 2))


# ---------------------------------------------------------------------- b: Ctrl-C


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_training_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(toy, "run_toy", _interrupt)
    out = tmp_path / "t"
    assert main([*QUICK, "--out", str(out)]) == INTERRUPTED
    err = _err(capsys)
    assert f"no file written to --out {out}" in err
    assert "does not resume" in err and "re-run the same command" in err
    assert not out.exists() or not any(out.iterdir())


def test_ctrl_c_while_training_keeps_an_earlier_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "t"
    out.mkdir()
    earlier = {name: f"earlier {name}".encode() for name in NAMES}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    monkeypatch.setattr(toy, "run_toy", _interrupt)
    assert main([*QUICK, "--out", str(out), "--overwrite"]) == INTERRUPTED
    err = _err(capsys)
    assert "no file written" in err and "earlier run's" in err
    assert all(name in err for name in NAMES) and "does not resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


def test_ctrl_c_while_writing_names_what_was_written(tmp_path, capsys, monkeypatch, tiny_result):
    """The tables are written, the figure is not: the message says which, and that only a
    re-run (with --overwrite, since files now exist) writes them all."""
    monkeypatch.setattr(toy, "run_toy", lambda *a, **k: tiny_result)
    monkeypatch.setattr(toy_report, "write_figure", _interrupt)
    out = tmp_path / "t"
    assert main([*QUICK, "--out", str(out)]) == INTERRUPTED
    err = _err(capsys)
    assert "this run's toy_table.md, toy_table.json but not its toy_fig2.png" in err
    assert "does not resume" in err and "with --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["toy_table.json", "toy_table.md"]


def test_ctrl_c_while_writing_over_an_earlier_run_says_what_is_mixed(
    tmp_path, capsys, monkeypatch, tiny_result
):
    out = tmp_path / "t"
    out.mkdir()
    for name in NAMES:
        (out / name).write_bytes(b"earlier")
    monkeypatch.setattr(toy, "run_toy", lambda *a, **k: tiny_result)
    monkeypatch.setattr(toy_report, "write_figure", _interrupt)
    assert main([*QUICK, "--out", str(out), "--overwrite"]) == INTERRUPTED
    err = _err(capsys)
    assert "but not its toy_fig2.png (the toy_fig2.png there is the earlier run's" in err
    assert "re-run the same command to train" in err
    assert (out / "toy_fig2.png").read_bytes() == b"earlier"
    assert (out / "toy_table.json").read_bytes() != b"earlier"
