"""What a torchrun run says when a rank is lost, when its command line is wrong, and when it asks
FSDP of a single process.

A rank killed mid-run (kill -9, the out-of-memory killer) left the others to print gloo's own
"[…/gloo/transport/tcp/pair.cc:537] Read error …: Connection reset by peer" as their error, naming
no checkpoint and no way to continue. A usage error (`--steps abc`, a missing argument) was
printed once per rank, untagged, where every other error every rank meets is said once, by rank
0. A SIGTERM, which torchrun sends every rank once one has ended (a rank killed, so the others
stop before their collective fails), ended rank 0 without a word. And run.distributed=fsdp in
a one-process run trained an unsharded model without a word."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_RUN, children_of, end_processes, tiny_run, torchrun

LOST_RANK_S = 60  # the whole run: two ranks start, checkpoint, one is killed, the other says so
USAGE_RUN_S = 120
MONITOR_S = 5  # torchrun's polling: the surviving rank has this long to say its line


def _rank_of(pid: int) -> int | None:
    """The RANK torchrun gave worker `pid` (None if it has gone or is no worker)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [item[5:] for item in env if item.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun (pid `launcher`) started."""
    found = {}
    for pid in children_of(launcher):
        rank = _rank_of(pid)
        if rank is not None:
            found[rank] = pid
    return found


def _stop_a_rank(fmnist16, tmp_path, rank: int, signum: int) -> tuple[str, Path, int]:
    """Train under torchrun with two ranks until the first checkpoint, then send `signum` to
    `rank`; (stderr, run folder, the checkpoint's step) once torchrun has ended."""
    from pixeljit.checkpoints.run import checkpoint_step

    out = tmp_path / "run"
    settings = [f"--set={k}={v}" for k, v in TINY_RUN.items() if k != "optim.steps"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--monitor-interval={MONITOR_S}", "-m", "pixeljit", "train", "--preset", "fmnist-tiny",
           "--data", str(fmnist16(64)), "--out", str(out), "--steps", "100000", "--no-progress",
           *settings]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)  # fmt: skip
    workers: dict[int, int] = {}
    try:
        deadline = time.monotonic() + LOST_RANK_S
        while not (out / "latest.pt").is_file():  # a checkpoint the message must name
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint came"
            time.sleep(0.1)
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[rank], signum)
        _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        end_processes(proc, set(workers.values()))
    assert proc.returncode != 0
    step = checkpoint_step(out / "latest.pt")  # rank 0 wrote it, and no one wrote after
    assert step is not None and step >= 2
    return stderr, out, step


def _said_by(rank: int, stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(f"pixeljit train (rank {rank} of 2)")
    ]


def _kept(out: Path, step: int) -> str:
    return (
        f"the last checkpoint {out / 'latest.pt'} (step {step:,}) is kept: continue with the "
        f"same `torchrun …` launch of `pixeljit train --resume {out}`"
    )


def test_a_killed_rank_makes_the_other_say_so_with_the_checkpoint_and_resume(fmnist16, tmp_path):
    stderr, out, step = _stop_a_rank(fmnist16, tmp_path, rank=0, signum=signal.SIGKILL)
    said = _said_by(1, stderr)
    assert len(said) == 1, stderr[-3000:]
    line = said[0]
    assert line.startswith("pixeljit train (rank 1 of 2): error: another rank stopped"), line
    assert "a collective failed on this rank" in line
    assert _kept(out, step) in line
    # the backend's own words stay, after the explanation: a failure of another kind shows
    assert re.search(r"\(the collective's error: \[[^\]]*gloo/[^\]]*\] .*Connection", line), line


def test_a_sigterm_to_rank_0_is_said_with_the_checkpoint_and_resume(fmnist16, tmp_path):
    # a scheduler's stop, or torchrun's once another rank has ended (killed, out of memory):
    # rank 0 ended without a word when torchrun stopped it before its collective failed
    stderr, out, step = _stop_a_rank(fmnist16, tmp_path, rank=0, signum=signal.SIGTERM)
    said = _said_by(0, stderr)
    assert said == [
        "pixeljit train (rank 0 of 2): stopped by SIGTERM (torchrun stops every rank once one has "
        "ended: its report names it; a scheduler's stop comes the same way); "
        f"{_kept(out, step)}; the steps after it are lost"
    ], stderr[-3000:]


def test_the_message_of_a_lost_rank_without_a_checkpoint(tmp_path):
    from torch.distributed import DistBackendError

    from pixeljit.cli.train import rank_lost_message

    err = DistBackendError("NCCL communicator was aborted on rank 1")
    line = rank_lost_message(str(tmp_path), err)
    assert line.startswith("another rank stopped")
    assert f"{tmp_path} holds nothing to resume" in line
    assert "--resume" not in line
    assert line.endswith("(the collective's error: NCCL communicator was aborted on rank 1)")


def test_only_a_collective_of_a_group_of_several_is_a_lost_rank():
    import torch.distributed as dist

    from pixeljit.training.distributed import GLOO_ERROR_RE, collective_failed

    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset"
    assert GLOO_ERROR_RE.search(gloo)
    for text in ("rank 0 stopped the run while locking its folder", "CUDA out of memory",
                 "mat1 and mat2 shapes cannot be multiplied (gloo/x.cc)"):  # fmt: skip
        assert not GLOO_ERROR_RE.search(text), text
    assert not dist.is_initialized()
    # no process group (a single-process run): nothing is another rank's failure
    assert not collective_failed(RuntimeError(gloo))
    assert not collective_failed(dist.DistBackendError("NCCL error"))
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:  # a group of one: no other rank to lose
        assert not collective_failed(dist.DistBackendError("NCCL error"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist", "--out", "{tmp}/zz",
          "--steps", "abc"],
         "pixeljit train (rank 0 of 2): error: argument --steps: invalid int value: 'abc' "
         "(see pixeljit train --help)"),
        (["prepare"],
         "pixeljit prepare (rank 0 of 2): error: the following arguments are required: SOURCE, "
         "--size, --out (see pixeljit prepare --help)"),
    ],
    ids=["bad-value", "missing-arguments"],
)  # fmt: skip
def test_a_usage_error_under_torchrun_is_said_once_by_rank_0(argv, said, tmp_path):
    done = torchrun([a.format(tmp=tmp_path) for a in argv], timeout=USAGE_RUN_S,
                    monitor_s=MONITOR_S)  # fmt: skip
    assert done.returncode != 0
    assert said in done.stderr.splitlines(), done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert errors == [said], errors  # not once per rank
    assert not (tmp_path / "zz").exists()


def test_a_usage_error_in_one_process_is_unchanged(capsys):
    from pixeljit.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--steps", "abc"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "pixeljit train: error: argument --steps: invalid int value: 'abc' "
        "(see pixeljit train --help)\n"
    )


@pytest.mark.parametrize("bf16_params", [False, True])
def test_fsdp_in_one_process_warns_that_it_trains_unsharded(bf16_params, fmnist16, tmp_path,
                                                            capsys):  # fmt: skip
    from pixeljit.training.loop import train
    from pixeljit.training.summary import unsharded_warning

    extra = {"run.fsdp_bf16_params": True, "run.precision": "bf16"} if bf16_params else {}
    cfg = tiny_run(fmnist16(32), tmp_path / "run", **{"run.distributed": "fsdp"}, **extra)
    result = train(cfg, progress=False)
    assert result.step == 2  # trained all the same: not refused
    warned = [line for line in capsys.readouterr().out.splitlines() if "one-process run" in line]
    fields = "run.distributed=fsdp and run.fsdp_bf16_params have" if bf16_params else (
        "run.distributed=fsdp has")  # fmt: skip
    assert warned == [
        f"warning: {fields} no effect in a one-process run: the model trains unsharded"
        + (", with fp32 parameters" if bf16_params else "")
        + "; launch with `torchrun --nproc_per_node N` (N > 1) to shard it"
    ]
    assert unsharded_warning(cfg, world_size=2) is None  # sharded there: nothing to say
    plain = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, distributed="ddp",
                                                             fsdp_bf16_params=False))  # fmt: skip
    assert unsharded_warning(plain, world_size=1) is None


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["train", "--bogus"], "pixeljit train: error: unrecognized arguments: --bogus "
         "(see pixeljit train --help)"),
        (["reproduce", "toy", "--bogus", "x"], "pixeljit reproduce toy: error: unrecognized "
         "arguments: --bogus x (see pixeljit reproduce toy --help)"),
    ],
    ids=["verb", "sub-command"],
)  # fmt: skip
def test_an_unknown_flag_is_said_by_the_command_it_was_given_to(argv, said, capsys):
    # argparse said it as the top parser's: `pixeljit: error: …`, sending to `pixeljit --help`
    from pixeljit.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == said + "\n"
