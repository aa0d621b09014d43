"""Ctrl-C (SIGINT) and SIGTERM during training: the run stops at the end of the step it is in,
with a checkpoint there, and resuming from it ends bit-identical to a run never stopped; a second
signal acts at once; `pixeljit train`, `pixeljit reproduce` grids and the handlers they leave."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import alive, children_of, end_processes, states_equal, tiny_run, wait_gone
from extractors import PoolExtractor, Recorder
from pixeljit.checkpoints.run import find_checkpoint, load_checkpoint
from pixeljit.cli import demo, main
from pixeljit.experiments import bottleneck
from pixeljit.experiments.evidence import RESULT_NAME, TRAINED_FILE
from pixeljit.training import loop
from pixeljit.training.loop import train
from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE, StopRequest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# 6 steps, checkpoints every 3: a signal during step 2 falls between two periodic checkpoints
RUN = {"run.ckpt_every": 3, "optim.steps": 6, "run.log_every": 3}
SIGNAL_STEP = 1  # 0-based: the signal arrives while step 2 of 6 runs


@pytest.fixture(scope="module")
def packed(fmnist16) -> Path:
    return fmnist16(64)


def signal_during(monkeypatch, signum: int, times: int = 1) -> None:
    """Deliver `signum` (`times` times) to this process in the middle of step SIGNAL_STEP + 1,
    after its backward pass and before the loop's bookkeeping."""
    real_step = loop._optimizer_step

    def step_then_signal(parts, run, info, step, lr, tally):
        loss = real_step(parts, run, info, step, lr, tally)
        if step == SIGNAL_STEP:
            for _ in range(times):
                signal.raise_signal(signum)
        return loss

    monkeypatch.setattr(loop, "_optimizer_step", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_step_boundary_and_resume_is_bit_exact(
    packed, tmp_path, monkeypatch, capsys, signum
):
    before = signal.getsignal(signum)
    straight = train(tiny_run(packed, tmp_path / "a", **RUN), progress=False)
    assert straight.step == 6 and straight.stopped_by_signal is None

    signal_during(monkeypatch, signum)
    stopped = train(tiny_run(packed, tmp_path / "b", **RUN), progress=False)
    assert stopped.stopped_by_signal == signum and stopped.step == SIGNAL_STEP + 1
    assert signal.getsignal(signum) is before  # the handler is given back
    ckpt = load_checkpoint(tmp_path / "b")  # not a periodic one: written because of the signal
    assert ckpt["step"] == SIGNAL_STEP + 1 and stopped.checkpoint is not None
    assert f"stopped after step {SIGNAL_STEP + 1} of 6" in capsys.readouterr().out

    monkeypatch.undo()
    resumed = train(tiny_run(packed, tmp_path / "b", **RUN), resume=str(tmp_path / "b"),
                    progress=False)  # fmt: skip
    assert resumed.step == 6 and resumed.stopped_by_signal is None
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert states_equal(a["model"], b["model"])
    for sa, sb in zip(a["ema"]["shadows"], b["ema"]["shadows"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(sa, sb, strict=True))
    assert a["loader"] == b["loader"] and a["images_seen"] == b["images_seen"]


def test_a_second_ctrl_c_stops_at_once(packed, tmp_path, monkeypatch, capsys):
    signal_during(monkeypatch, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(packed, tmp_path / "a", **RUN), progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(FileNotFoundError):  # at once: no checkpoint before the periodic one
        find_checkpoint(tmp_path / "a")
    # the CLI: one line, no traceback, the shell's status for SIGINT
    argv = ["train", "--preset", "fmnist-tiny", "--data", str(packed), "--out",
            str(tmp_path / "b"), "--steps", "6", "--no-progress", "--set", "run.device=cpu",
            "--set", "run.ckpt_every=3"]  # fmt: skip
    assert main(argv) == SIGNAL_EXIT_BASE + signal.SIGINT
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixeljit train: interrupted: stopped before the run's first checkpoint")
    # later, past a periodic checkpoint: the way on is named
    monkeypatch.setitem(globals(), "SIGNAL_STEP", 4)
    assert main([*argv[:6], str(tmp_path / "c"), *argv[7:]]) == SIGNAL_EXIT_BASE + signal.SIGINT
    err = capsys.readouterr().err.strip()
    assert "the last checkpoint in" in err and f"pixeljit train --resume {tmp_path / 'c'}" in err
    assert load_checkpoint(tmp_path / "c")["step"] == 3


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """The verbs' imports (torch) take seconds; a Ctrl-C there printed a traceback."""
    import pixeljit.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(pixeljit.cli, "build_parser", interrupted)
    assert main(["train", "--help"]) == SIGNAL_EXIT_BASE + signal.SIGINT
    assert capsys.readouterr().err == "pixeljit: interrupted\n"


def test_cli_train_exits_with_the_signal_status_and_the_resume_command(
    packed, tmp_path, monkeypatch, capsys
):
    signal_during(monkeypatch, signal.SIGINT)
    out = tmp_path / "run"
    argv = ["train", "--preset", "fmnist-tiny", "--data", str(packed), "--out", str(out),
            "--steps", "6", "--batch-size", "16", "--no-progress", "--set", "run.device=cpu",
            "--set", "run.ckpt_every=3", "--set", "sample.steps=1",
            "--set", "sample.max_classes=1"]  # fmt: skip
    assert main(argv) == SIGNAL_EXIT_BASE + signal.SIGINT
    assert f"pixeljit train --resume {out}" in capsys.readouterr().out
    assert load_checkpoint(out)["step"] == SIGNAL_STEP + 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert load_checkpoint(out)["step"] == 6


def test_a_grid_cell_stopped_by_a_signal_is_not_scored_and_continues_on_re_run(
    tmp_path, monkeypatch
):
    torch.set_num_threads(1)
    config = bottleneck.BottleneckConfig(
        size=16, patch=4, dims=(4,), width=32, depth=1, heads=2, steps=4, batch=8,
        num_samples=8, sampler_steps=2, weights="model", real_count=16, data_limit=32,
        device="cpu", ckpt_every=10,
    )  # fmt: skip
    signal_during(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="re-run the same command"):
        bottleneck.run_bottleneck(config, tmp_path, extractor=PoolExtractor())
    assert not list(tmp_path.rglob("result.json"))  # a stopped cell is not scored
    (trained,) = tmp_path.rglob(TRAINED_FILE)
    first = json.loads(trained.read_text())
    assert first["step"] == SIGNAL_STEP + 1 and first["train_s"] > 0
    monkeypatch.undo()
    report = bottleneck.run_bottleneck(config, tmp_path, extractor=PoolExtractor())
    (cell,) = report["cells"]
    assert cell["resumed"] and cell["steps"] == 4
    assert cell["train_s"] > first["train_s"]  # both runs' training, not the last one's alone
    # stopped after training, while scoring: the re-run scores it without the engine (which
    # would only print "nothing to train … pass a larger --steps"), with the same loss and time
    (trained.parent / RESULT_NAME).unlink()
    again = bottleneck.run_bottleneck(config, tmp_path, extractor=PoolExtractor(),
                                      train_fn=Recorder(allowed=False))  # fmt: skip
    (same,) = again["cells"]
    assert same["final_loss"] == cell["final_loss"] is not None
    assert same["train_s"] == cell["train_s"] and same["fd"] == cell["fd"]


def test_stop_request_listens_only_where_asked():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(enabled=False) as stop:
        assert signal.getsignal(signal.SIGINT) is before and stop.signal is None
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_the_process_ignores_stays_ignored():
    """A script's background job (`pixeljit train … &`) starts with SIGINT ignored, so the
    Ctrl-C meant for the script does not reach it; training took it over and stopped."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler runs between bytecodes: give it its chance
            assert stop.signal is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


GRID_SCRIPT = """
import sys, torch
from pixeljit.experiments import bottleneck
from extractors import PoolExtractor
torch.set_num_threads(1)
config = bottleneck.BottleneckConfig(
    size=16, patch=4, dims=(4, None), width=32, depth=1, heads=2, steps=10**6, batch=8,
    num_samples=8, sampler_steps=2, weights="model", real_count=16, data_limit=32,
    device="cpu", ckpt_every=10**6)
bottleneck.run_bottleneck(config, sys.argv[1], extractor=PoolExtractor(), jobs=2)
"""


def _grid_training(folder: Path) -> tuple[subprocess.Popen, list[Path]]:
    """GRID_SCRIPT's two cells started in a session of their own, once both train: the grid's
    process and the cells' metrics logs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", GRID_SCRIPT, str(folder)], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    logs: list[Path] = []
    while len(logs) < 2 or not all(log.stat().st_size for log in logs):  # both are training
        if proc.poll() is not None or time.monotonic() > deadline:
            end_processes(proc, set())
            raise AssertionError(f"the grid did not start both cells: {proc.stderr.read()}")
        time.sleep(0.5)
        logs = list(folder.glob("cells/*/metrics.jsonl"))
    return proc, logs


@pytest.mark.slow
@pytest.mark.parametrize("whom", ["group", "parent"])
def test_a_signal_to_a_grid_with_jobs_leaves_each_running_cell_a_checkpoint(tmp_path, whom):
    """Ctrl-C in a terminal signals the whole process group: the grid's parent and both workers;
    `kill PID` or `timeout` signals the parent alone, which passes SIGTERM on to its workers.
    Each worker ends its step and saves (no periodic checkpoint could have been written)."""
    proc, logs = _grid_training(tmp_path)
    try:
        if whom == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:  # nothing of the group outlives the test, whatever happened
        end_processes(proc, set())
    # the grid's interruption (a KeyboardInterrupt) names the signal, for the CLI's exit status
    assert proc.returncode != 0 and "StoppedBySignal: the grid's cells were stopped" in err, err
    for log in logs:
        assert 0 < load_checkpoint(log.parent)["step"] < 10**6
    assert not list(tmp_path.rglob("result.json"))


def test_an_interrupted_demo_continues_with_demo_resume_and_is_scored(
    fmnist16, tmp_path, monkeypatch, capsys
):
    """The demo's own flow (folder checks, the hint, --resume, the score) on the tiny run: the
    demo's real recipe trains for minutes."""
    data = fmnist16(64)
    monkeypatch.setattr(demo, "demo_config", lambda out, steps, device: tiny_run(data, out, **RUN))
    monkeypatch.setattr(demo, "score_demo", functools.partial(
        demo.score_demo, num=20, held_out=(str(data), None)))  # fmt: skip
    real_step = loop._optimizer_step
    signal_during(monkeypatch, signal.SIGINT)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--device", "cpu"]
    assert main(argv) == SIGNAL_EXIT_BASE + signal.SIGINT
    command = f"pixeljit demo --resume --out {out} --device cpu"
    assert command in capsys.readouterr().out
    assert not (out / demo.SCORE_FILE).exists()
    monkeypatch.setattr(loop, "_optimizer_step", real_step)

    assert main(argv) == 2  # a fresh demo over it: refused, naming the way on
    err = capsys.readouterr().err
    assert command in err and "--restart" in err
    assert main(["demo", "--resume", "--restart", *argv[1:]]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["demo", "--resume", "--out", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "holds no demo checkpoint" in capsys.readouterr().err

    assert main(["demo", "--resume", *argv[1:]]) == 0
    assert load_checkpoint(out)["step"] == 6 and (out / demo.SCORE_FILE).is_file()

    # stopped after its last checkpoint but before its grid: a resume with nothing left to train
    # draws the grid as the training preview did, byte for byte
    grid = out / "samples-0000006.png"
    drawn = grid.read_bytes()
    grid.unlink()
    assert main(["demo", "--resume", *argv[1:]]) == 0
    printed = capsys.readouterr().out
    assert "nothing to train" in printed and f"samples     {grid}" in printed
    assert grid.read_bytes() == drawn


def test_a_resumed_demo_keeps_its_length_and_ctrl_c_always_names_the_way_on(
    fmnist16, tmp_path, monkeypatch, capsys
):
    """`demo --steps 4`, interrupted, then `demo --resume` trained to the demo's budget instead
    of 4; a second Ctrl-C, or one while scoring, said only "interrupted"."""
    data = fmnist16(64)
    monkeypatch.setattr(demo, "demo_config", lambda out, steps, device: tiny_run(
        data, out, **{**RUN, "optim.steps": steps or 6}))  # fmt: skip
    monkeypatch.setattr(demo, "score_demo", functools.partial(
        demo.score_demo, num=20, held_out=(str(data), None)))  # fmt: skip
    real_step = loop._optimizer_step
    signal_during(monkeypatch, signal.SIGINT, times=2)
    monkeypatch.setitem(globals(), "SIGNAL_STEP", 3)  # during step 4 of 5: after the one at 3
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--steps", "5"]) == SIGNAL_EXIT_BASE + signal.SIGINT
    err = capsys.readouterr().err
    assert f"continue with `pixeljit demo --resume --out {out} --steps 5 --device cpu`" in err
    assert load_checkpoint(out)["step"] == 3
    monkeypatch.setattr(loop, "_optimizer_step", real_step)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(demo, "score_demo", interrupted)
        assert main(["demo", "--resume", *argv[1:]]) == SIGNAL_EXIT_BASE + signal.SIGINT
    err = capsys.readouterr().err
    assert load_checkpoint(out)["step"] == 5  # the started length, not the default budget
    assert "the training is done" in err and "draws its grid and scores it" in err
    assert main(["demo", "--resume", *argv[1:]]) == 0
    assert "nothing to train" in capsys.readouterr().out and (out / demo.SCORE_FILE).is_file()


@pytest.mark.slow
def test_workers_of_a_killed_grid_checkpoint_their_cells_and_exit(tmp_path):
    """`kill -9` of the grid process left its workers (their own process groups) training the
    cells queued to them, then idle for good; each now stops its cell at a step boundary with a
    checkpoint, starts no other, and exits."""
    proc, logs = _grid_training(tmp_path)
    workers: set[int] = set()
    try:
        workers = {pid for pid in children_of(proc.pid) if alive(pid)}
        assert len(workers) >= 2, workers  # the two cells' workers (and a resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        left = wait_gone(workers, 120)
    finally:  # nothing outlives the test, whatever happened
        end_processes(proc, workers)
    assert not left, f"workers still running after their grid was killed: {left}"
    for log in logs:  # no periodic checkpoint could have been written: the stop saved these
        assert 0 < load_checkpoint(log.parent)["step"] < 10**6
    assert not list(tmp_path.rglob("result.json"))
