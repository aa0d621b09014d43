"""A run's log damaged by a full disk or a kill mid-append: the append is cut back off, a last
line left unfinished is skipped on resume (it made every `--resume` fail with a bare JSON
error), another bad line is named, and a full disk outside the checkpoint says what to do."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from conftest import tiny_run
from pixeljit.checkpoints.run import LATEST
from pixeljit.cli import main
from pixeljit.training import runlog
from pixeljit.training.branches import set_aside_newer
from pixeljit.training.loop import train
from pixeljit.training.runlog import METRICS_FILE, append_line, read_metrics

TORN = '{"step": 3, "loss": 0.7'  # a record whose append stopped part-way


def test_an_unfinished_last_line_is_left_out_and_a_bad_middle_line_named(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n' + TORN)
    with pytest.warns(UserWarning, match="last line was cut off mid-write"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n' + TORN + '\n{"step": 3}\n')  # finished lines after it
    with pytest.raises(ValueError, match=rf"{METRICS_FILE}, line 2: not a record"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n')  # JSON, but not a record
    with pytest.raises(ValueError, match="line 2: not a record"):
        read_metrics(path)


def test_a_failed_append_is_cut_back_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / METRICS_FILE
    append_line(path, '{"step": 1}')
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):  # the disk fills part-way through the record
        if len(data) > 4:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlog.os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left") as err:
        append_line(path, json.dumps({"step": 2, "loss": 0.5}))
    assert err.value.filename == str(path) and err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # no half record left behind


def test_a_run_resumes_past_a_torn_log_line(fmnist16, tmp_path, capsys):
    data, out = fmnist16(64), tmp_path / "run"
    train(tiny_run(data, out), progress=False)  # 2 steps, a checkpoint at step 2
    with open(out / METRICS_FILE, "a") as fh:
        fh.write(TORN)  # killed while logging step 3
    argv = ["train", "--resume", str(out), "--steps", "4", "--no-progress"]
    with pytest.warns(UserWarning, match="cut off mid-write"):
        assert main(argv) == 0, capsys.readouterr().err
    steps = [r["step"] for r in read_metrics(out / METRICS_FILE)]
    assert steps == [1, 2, 3, 4]
    (kept,) = out.glob(f"{METRICS_FILE}.before-resume-*")  # the torn line is kept aside
    assert kept.read_text().endswith(TORN)


def test_a_full_disk_while_logging_names_the_file_and_the_resume(fmnist16, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    data, out = fmnist16(64), tmp_path / "run"
    train(tiny_run(data, out), progress=False)
    calls = []

    def full(path: Path, line: str) -> None:
        calls.append(line)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runlog, "append_line", full)
    argv = ["train", "--resume", str(out), "--steps", "4", "--no-progress"]
    assert main(argv) == 2 and calls
    err = capsys.readouterr().err
    assert f"no space left on the device writing {out / METRICS_FILE}; free some space" in err
    assert f"the last checkpoint in {out} is kept: continue with `pixeljit train --resume" in err


def test_resuming_the_milestone_that_is_latest_sets_nothing_aside(tmp_path):
    """At a milestone step, step-N.pt is a hard link of latest.pt: the same file, not a later
    one (it was set aside, with a branch note for a branch that does not exist)."""
    latest = tmp_path / LATEST
    latest.write_bytes(b"checkpoint")
    milestone = tmp_path / "step-000000004.pt"
    os.link(latest, milestone)
    (tmp_path / METRICS_FILE).write_text('{"step": 4}\n')
    assert set_aside_newer(tmp_path, milestone, 4) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, METRICS_FILE, milestone.name]
