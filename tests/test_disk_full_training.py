"""A disk that fills up during `pixeljit train` / `pixeljit demo`: each write that can fail (a
checkpoint, a sample grid, TensorBoard's events, the run lock) gives one line naming the file,
the fix and the command that really goes on, worded for the verb that was run; following that
advice works; a resume with nothing left to train draws the final grid and loss plot the full
disk left out. The full disk is simulated: the write raises ENOSPC."""

from __future__ import annotations

import errno
import functools
import os
import re
import threading
import weakref
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from conftest import TINY_PRESET, TINY_RUN, tiny_run
from pixeljit.checkpoints.run import LATEST, load_checkpoint, save_checkpoint
from pixeljit.cli import demo, main
from pixeljit.files import images
from pixeljit.training import runlog
from pixeljit.training.loop import train
from pixeljit.training.rundir import LOCK_FILE
from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE, RunLog

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS = 4  # checkpoints at steps 2 and 4 (TINY_RUN's run.ckpt_every 2)
DEMO_RUN = {"run.ckpt_every": 3, "optim.steps": 6, "run.log_every": 3}  # checkpoints at 3 and 6
NO_SPACE = "No space left on device"


@pytest.fixture(scope="module")
def data(fmnist16) -> Path:
    return fmnist16(64)


def train_argv(data: Path, out: Path, *extra: str, progress: bool = False) -> list[str]:
    """`pixeljit train` of the tests' tiny run (conftest's TINY_RUN) for STEPS steps."""
    given = {e.partition("=")[0] for e in extra if "=" in e}  # a key given twice is refused
    sets = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_RUN.items()
            if k != "optim.steps" and k not in given]  # fmt: skip
    argv = ["train", "--preset", TINY_PRESET, "--data", str(data), "--out", str(out),
            "--steps", str(STEPS), *[a for s in sets for a in ("--set", s)], *extra]  # fmt: skip
    return argv if progress else [*argv, "--no-progress"]


def fail_checkpoint(monkeypatch, from_call: int = 1) -> None:
    """torch.save runs out of space from its `from_call`-th call on (1: the first)."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) >= from_call:
            Path(f).write_bytes(b"partial")  # some bytes made it, then the disk was full
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def fail_grid(monkeypatch, name: str) -> None:
    """The sample grid `name` cannot be written (others can)."""
    real = images.save_grid

    def save_grid(grid, path, *args, **kwargs):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, NO_SPACE, str(path))
        return real(grid, path, *args, **kwargs)

    monkeypatch.setattr(images, "save_grid", save_grid)


def error_of(capsys) -> str:
    """The CLI's error line (checked to be one line)."""
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------- pixeljit train


def test_a_first_checkpoint_that_does_not_fit_says_the_run_starts_again(
    data, tmp_path, monkeypatch, capsys
):
    """It said "the previous latest.pt is intact" and named `train --resume`, which then found
    no checkpoint: the steps were lost and the advice led nowhere."""
    out = tmp_path / "run"
    argv = train_argv(data, out)
    with monkeypatch.context() as patch:
        fail_checkpoint(patch)
        assert main(argv) == 2
    err = error_of(capsys)
    assert f"no space left to write the step-2 checkpoint {LATEST} in {out}" in err
    assert "no checkpoint of this run was written, so it cannot be resumed" in err
    assert "the same `pixeljit train …` command plus --restart" in err
    assert "--resume" not in err and "intact" not in err
    assert not list(out.glob("*.pt")) and (out / METRICS_FILE).is_file()
    assert main([*argv, "--restart"]) == 0  # the advice, followed
    assert load_checkpoint(out)["step"] == STEPS


def test_a_later_checkpoint_that_does_not_fit_names_the_kept_one_and_its_step(
    data, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_checkpoint(patch, from_call=2)  # step 2 is written, step 4 is not
        assert main(train_argv(data, out)) == 2
    err = error_of(capsys)
    assert f"no space left to write the step-{STEPS} checkpoint {LATEST}" in err
    assert f"continue with `pixeljit train --resume {out}` from its step 2 ({LATEST})" in err
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert load_checkpoint(out)["step"] == STEPS


def test_the_free_space_is_measured_once_the_failed_write_is_released(tmp_path, monkeypatch):
    """torch's writer holds its (unlinked) temporary open while the exception lives: measured
    then, the space it took counted as used, and the message said 0.0 MB were free."""
    open_files: weakref.WeakSet = weakref.WeakSet()
    usage = namedtuple("usage", "total used free")

    def save(obj, f, *args, **kwargs):
        handle = open(f, "wb")  # noqa: SIM115 - held by this frame, as torch's writer holds it
        open_files.add(handle)
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 681472")

    def disk_usage(path):  # the failed file's space comes back once it is closed
        return usage(10**9, 10**9, 0 if len(open_files) else 3 * 10**6)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr("shutil.disk_usage", disk_usage)
    state = {"model": {"w": torch.zeros(2 * 10**6)}, "step": 3}  # 8 MB: more than is free
    with pytest.raises(RuntimeError, match=r"and 3\.0 MB are free") as err:
        save_checkpoint(state, tmp_path, 3, milestone=False)
    assert "no checkpoint of this run was written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_final_grid_that_does_not_fit_is_drawn_by_the_idle_resume(
    data, tmp_path, monkeypatch, capsys
):
    """The last checkpoint was written, then the final grid failed (so loss.png was never
    drawn); the resume it names had "nothing to train" and left both missing."""
    out = tmp_path / "run"
    grid = out / f"samples-{STEPS:07d}.png"
    with monkeypatch.context() as patch:
        fail_grid(patch, grid.name)
        assert main(train_argv(data, out)) == 2
    err = error_of(capsys)
    assert f"no space left on the device writing {grid}; free some space" in err
    assert f"continue with `pixeljit train --resume {out}` from its step {STEPS}" in err
    assert not grid.exists() and not (out / LOSS_PLOT).exists()
    assert load_checkpoint(out)["step"] == STEPS
    argv = ["train", "--resume", str(out), "--steps", str(STEPS), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "nothing to train" in printed and f"{grid.name}, {LOSS_PLOT}" in printed
    assert grid.is_file() and (out / LOSS_PLOT).is_file()
    drawn = grid.read_bytes(), (out / LOSS_PLOT).read_bytes()
    assert main(argv) == 0  # present: nothing drawn again
    assert "drew" not in capsys.readouterr().out
    assert (grid.read_bytes(), (out / LOSS_PLOT).read_bytes()) == drawn


def test_the_progress_bar_ends_its_line_before_the_error(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_checkpoint(patch)
        assert main(train_argv(data, out, progress=True)) == 2
    err = capsys.readouterr().err
    assert "train:" in err and "\npixeljit train: error: no space left" in err


# ---------------------------------------------------------------------------- TensorBoard


def fail_events(monkeypatch, from_call: int = 1) -> None:
    """TensorBoard's writer thread runs out of space from its `from_call`-th write to its events
    file on (the file is made, as on a full disk, then nothing fits)."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    real, calls = gfile.LocalFileSystem._write, []

    def write(self, filename, content, mode):
        calls.append(filename)
        if len(calls) >= from_call:
            open(filename, mode).close()
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(self, filename, content, mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write)


def join_writer_threads() -> None:
    for thread in threading.enumerate():
        if type(thread).__module__.startswith("tensorboard"):
            thread.join(10)


def test_a_tensorboard_writer_on_a_full_disk_is_one_line_naming_its_events_file(
    data, tmp_path, monkeypatch, capsys
):
    """Its thread printed "Exception in thread Thread-1: Traceback …" beside an error line that
    named the run folder."""
    printed = []  # what the hook would print, as a traceback, for a failed thread
    monkeypatch.setattr(threading, "excepthook", printed.append)
    out = tmp_path / "run"
    fail_events(monkeypatch)
    assert main(train_argv(data, out, "--set", "run.tensorboard=true")) == 2
    join_writer_threads()
    err = error_of(capsys)
    assert printed == []
    events = re.search(r"writing (\S+);", err).group(1)
    assert Path(events).parent == out / "tensorboard" and "events.out.tfevents." in events
    assert "free some space or turn TensorBoard's log off (--set run.tensorboard=false)" in err
    assert "no checkpoint of this run was written" in err


def test_a_tensorboard_failure_after_it_opened_is_raised_naming_the_events_file(
    tmp_path, monkeypatch
):
    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)
    fail_events(monkeypatch, from_call=3)  # opens (its first records), then the disk is full
    log = RunLog(tmp_path, enabled=True, tensorboard=True)
    with pytest.raises(OSError) as err:
        for step in range(1, 4):
            log.write({"step": step, "loss": 1.0, "lr": 0.1})
        log.close()  # its flush raises what the thread met, if no write did
    join_writer_threads()
    assert printed == [] and err.value.errno == errno.ENOSPC
    assert Path(err.value.filename).parent == tmp_path / "tensorboard"
    assert Path(err.value.filename).name.startswith("events.out.tfevents.")
    assert "set run.tensorboard=false" in err.value.strerror


def test_other_threads_failures_still_reach_the_hook(tmp_path, monkeypatch):
    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)
    runlog.quiet_writer_threads()

    def fail():
        raise ValueError("not TensorBoard's")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()
    assert [str(args.exc_value) for args in printed] == ["not TensorBoard's"]


# ------------------------------------------------------------------------------- run lock


def fail_lock(monkeypatch) -> None:
    """Writing the PID into a run's `.lock` runs out of space (other writes go through)."""
    real = os.write

    def write(fd, payload):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{LOCK_FILE}"):
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(fd, payload)

    monkeypatch.setattr(os, "write", write)


def test_a_lock_that_cannot_be_written_names_it_and_leaves_nothing_behind(
    data, tiny_demo, tmp_path, monkeypatch, capsys
):
    """A bare "No space left on device" (no file, no fix), and the folder and .lock it had
    just made were left behind."""
    fresh, run = tmp_path / "fresh", tmp_path / "run"
    train(tiny_run(data, run), progress=False)
    mine = run / "notes.txt"
    mine.write_text("the user's")
    before = sorted(p.name for p in run.iterdir())
    with monkeypatch.context() as patch:
        fail_lock(patch)
        assert main(train_argv(data, fresh)) == 2
        err = error_of(capsys)
        assert f"{fresh / LOCK_FILE}" in err and "free some space" in err
        assert not fresh.exists()  # the folder it made is gone
        assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 2
        err = error_of(capsys)
        assert f"{run / LOCK_FILE}" in err and "free some space and run the command again" in err
        assert main(["demo", "--out", str(fresh), "--device", "cpu"]) == 2
        assert f"{fresh / LOCK_FILE}" in error_of(capsys) and not fresh.exists()
    assert sorted(p.name for p in run.iterdir()) == before  # the run and the user's file stay
    assert mine.read_text() == "the user's"


# ---------------------------------------------------------------------------- pixeljit demo


@pytest.fixture
def tiny_demo(data, monkeypatch):
    """`pixeljit demo` on the tiny run (the demo's real recipe trains for minutes)."""
    monkeypatch.setattr(demo, "demo_config", lambda out, steps, device: tiny_run(
        data, out, **{**DEMO_RUN, "optim.steps": steps or DEMO_RUN["optim.steps"]}))  # fmt: skip
    monkeypatch.setattr(demo, "score_demo", functools.partial(
        demo.score_demo, num=20, held_out=(str(data), None)))  # fmt: skip


def listed_files(printed: str) -> list[Path]:
    """The paths under "the demo's files:" (tmp_path is absolute: the word starting with /)."""
    block = printed.split("the demo's files:\n")[1].split("\n\n")[0]
    return [Path(next(w for w in line.split() if w.startswith("/"))) for line in block.splitlines()]


def test_a_demo_whose_first_checkpoint_does_not_fit_names_demo_commands_that_work(
    tiny_demo, tmp_path, monkeypatch, capsys
):
    """It told a demo user to run `pixeljit train --resume`; `demo --resume` then said to drop
    --resume, and without it the demo refused the folder: a dead end."""
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--device", "cpu"]
    with monkeypatch.context() as patch:
        fail_checkpoint(patch)
        assert main(argv) == 2
    err = error_of(capsys)
    assert "no checkpoint of this run was written, so it cannot be resumed" in err
    assert f"start it again with `pixeljit demo --restart --out {out} --device cpu`" in err
    assert "pixeljit train" not in err
    assert main(["demo", "--resume", *argv[1:]]) == 2  # a resume is told the same way on
    assert "pass --restart instead of --resume" in error_of(capsys)
    assert main(["demo", "--restart", *argv[1:]]) == 0
    assert load_checkpoint(out)["step"] == 6 and (out / demo.SCORE_FILE).is_file()


def test_a_demo_whose_later_checkpoint_does_not_fit_resumes_with_demo_resume(
    tiny_demo, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "6", "--device", "cpu"]
    with monkeypatch.context() as patch:
        fail_checkpoint(patch, from_call=2)
        assert main(argv) == 2
    err = error_of(capsys)
    command = f"pixeljit demo --resume --out {out} --steps 6 --device cpu"
    assert f"continue with `{command}` from its step 3 ({LATEST})" in err
    assert main(command.split()[1:]) == 0
    assert load_checkpoint(out)["step"] == 6 and (out / demo.SCORE_FILE).is_file()


def test_a_demo_grid_that_does_not_fit_names_the_file_and_the_demo_resume(
    tiny_demo, tmp_path, monkeypatch, capsys
):
    """ "No space left on device: M/demo/samples-0000006.png", no way on; and the resume then
    listed a loss.png that was never written."""
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--device", "cpu"]
    grid = out / "samples-0000006.png"
    with monkeypatch.context() as patch:
        fail_grid(patch, grid.name)
        assert main(argv) == 2
    err = error_of(capsys)
    command = f"pixeljit demo --resume --out {out} --device cpu"
    assert f"no space left on the device writing {grid}; free some space" in err
    assert f"continue with `{command}` from its step 6" in err
    assert main(command.split()[1:]) == 0
    printed = capsys.readouterr().out
    listed = listed_files(printed)
    assert grid in listed and out / LOSS_PLOT in listed and all(p.is_file() for p in listed)


def test_a_demo_lists_only_the_files_that_exist(tiny_demo, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert len(listed_files(capsys.readouterr().out)) == 5
    (out / LOSS_PLOT).unlink()
    (out / METRICS_FILE).unlink()  # no log left to plot it from
    assert main(["demo", "--resume", *argv[1:]]) == 0
    listed = listed_files(capsys.readouterr().out)
    assert len(listed) == 3 and all(p.is_file() for p in listed)
    assert out / LOSS_PLOT not in listed and out / METRICS_FILE not in listed
