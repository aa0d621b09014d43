"""`pixeljit reproduce GRID --jobs 2` stopped by a SIGINT to its own process only (`kill -INT PID`,
`timeout -s INT`): as on SIGTERM, the running cells stop at a step boundary with a checkpoint,
the cells not started are cancelled, no worker outlives the command, which exits at once with
the one "interrupted" line; running the same command again finishes the grid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import children_of, end_processes, wait_gone
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE

STEPS = 400  # a few seconds per cell here: long enough to be stopped, short enough to re-run
# the CLI's bottleneck grid, 3 cells (2 at a time) of a tiny network on 32 images, scored with
# the pooling extractor; the grid's own flags, checks, results folder and report
GRID_CLI = """
import dataclasses, sys
from extractors import PoolExtractor
from pixeljit.cli import main, reproduce_grid
from pixeljit.experiments import grid
tiny = dict(size=16, patch=4, width=32, depth=1, heads=2, steps=int(sys.argv[2]), batch=8,
            num_samples=8, sampler_steps=2, weights="model", real_count=16, data_limit=32,
            ckpt_every=100)
config = reproduce_grid.grid_config
reproduce_grid.grid_config = lambda *a, **k: dataclasses.replace(config(*a, **k), **tiny)
reproduce_grid.oversubscription = lambda *a: None  # --jobs 2 on a 1-core machine too
grid.default_extractor = lambda device: PoolExtractor()
sys.exit(main(["reproduce", "bottleneck", "--quick", "--out", sys.argv[1], "--device", "cpu",
               "--threads", "1", "--jobs", sys.argv[3], "--dims", "4", "8", "none"]))
"""
CELLS = ("bottleneck4-seed0", "bottleneck8-seed0", "bottlenecknone-seed0")


def _start(out: Path, jobs: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", GRID_CLI, str(out), str(STEPS), str(jobs)], env=env,
        start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_sigint_to_the_grid_alone_stops_its_cells_and_workers_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "grid"
    proc = _start(out)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:  # two cells training, the third waiting
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            logs = [out / "cells" / name / "metrics.jsonl" for name in CELLS[:2]]
            if all(log.is_file() and log.stat().st_size for log in logs):
                break
            time.sleep(0.05)
        children = children_of(proc.pid)  # the two workers (and multiprocessing's tracker)
        assert len(children) >= 2, children
        os.kill(proc.pid, signal.SIGINT)  # the parent alone, as `timeout -s INT` does
        _, err = proc.communicate(timeout=60)  # a grid that ran its cells to the end: a hang
        left = wait_gone(children, 60)
    finally:  # nothing outlives the test, whatever happened
        end_processes(proc, children)
    assert not left, f"processes of the grid still running after it exited: {left}"
    assert proc.returncode == SIGNAL_EXIT_BASE + signal.SIGINT, err
    assert "pixeljit reproduce: interrupted" in err and "Traceback" not in err, err
    assert not list(out.rglob("result.json"))  # no cell went on to its end
    assert (
        f"re-run the same command to continue them from their checkpoints; no cell of {out} "
        "was finished yet" in err
    ), err
    for name in CELLS[:2]:  # stopped at a step boundary, each with its checkpoint
        assert 0 < load_checkpoint(out / "cells" / name)["step"] < STEPS
    assert not (out / "cells" / CELLS[2] / "metrics.jsonl").exists()  # cancelled, not started

    again = _start(out)
    try:
        rerun_out, rerun_err = again.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(again.pid, signal.SIGKILL)
        if again.poll() is None:
            again.communicate()
    assert again.returncode == 0, rerun_err
    assert all((out / "cells" / name / "result.json").is_file() for name in CELLS)
    assert (out / "bottleneck.json").is_file() and "[3/3]" in rerun_out


def test_ctrl_c_to_the_terminal_group_while_workers_start_is_one_line(tmp_path):
    """Ctrl-C reaches the terminal's whole process group: a worker still importing torch (not
    yet in its own group) ended with a KeyboardInterrupt traceback. Workers start with SIGINT
    blocked and drop that one; the grid stops with its one line and leaves no process."""
    out = tmp_path / "grid"
    proc = _start(out)  # its own session: proc.pid is the group a terminal would signal
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(children_of(proc.pid)) < 2:  # the workers exist, still starting
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.2)
        children = children_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        left = wait_gone(children, 60)
    finally:
        end_processes(proc, children)
    assert not left, f"processes of the grid still running after it exited: {left}"
    assert proc.returncode == SIGNAL_EXIT_BASE + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("pixeljit reproduce: interrupted"), err


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_to_a_grid_exits_143_with_its_cells_checkpointed(jobs, tmp_path):
    """A grid stopped by SIGTERM (a scheduler's) exited 130, Ctrl-C's status; `pixeljit train`
    exits 128 + the signal, as the README says of every command. With --jobs 2 the first worker
    to stop raised an exception its parent could not unpickle: the pool broke and killed the
    other worker mid-step (steps after its last periodic checkpoint lost, its lock left)."""
    out = tmp_path / "grid"
    proc = _start(out, jobs=jobs)
    running = CELLS[:jobs]
    try:
        deadline = time.monotonic() + 120
        logs = [out / "cells" / name / "metrics.jsonl" for name in running]
        while not all(log.is_file() and log.stat().st_size for log in logs):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        end_processes(proc, set())
    assert proc.returncode == SIGNAL_EXIT_BASE + signal.SIGTERM, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err, err
    if jobs == 1:
        assert f"cell {CELLS[0]} stopped after step" in err, err
    for name in running:  # each stopped at a step boundary with a checkpoint there
        step = load_checkpoint(out / "cells" / name)["step"]
        assert 0 < step < STEPS
        logged = (out / "cells" / name / "metrics.jsonl").read_text().splitlines()
        assert json.loads(logged[-1])["step"] <= step  # no step trained past the checkpoint
        assert not (out / "cells" / name / ".lock").exists()


def test_a_stopped_cell_crosses_from_a_worker_to_the_grid():
    """A worker's StoppedBySignal reaches the parent pickled: it could not be rebuilt (its
    `signum` argument was lost), which broke the process pool and killed the other workers."""
    import pickle

    from pixeljit.training.stopsignal import StoppedBySignal

    again = pickle.loads(pickle.dumps(StoppedBySignal("cell stopped", signal.SIGTERM)))
    assert isinstance(again, StoppedBySignal) and again.signum == signal.SIGTERM
    assert str(again) == "cell stopped"
