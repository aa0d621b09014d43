"""The test suite's own subprocess helper: a launcher that fails never leaves its children
running (torchrun's DDP workers used to outlive a failed or timed-out test)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import run_group

GONE_WAIT_S = 30.0  # how long an orphan may take to be reaped once killed (not a timing claim)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed but not yet reaped, counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(x for x in status.read_text().splitlines() if x.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_failed_launcher_takes_its_children_with_it(tmp_path):
    pid_file = tmp_path / "child.pid"
    launcher = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
        "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "sys.exit(3)  # the launcher fails; its worker is still running\n"
    )
    done = run_group([sys.executable, "-c", launcher], timeout=120)
    assert done.returncode == 3
    child = int(pid_file.read_text())
    deadline = time.monotonic() + GONE_WAIT_S
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), f"the launcher's child {child} outlived it"
