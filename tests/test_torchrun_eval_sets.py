"""`eval` under torchrun: one image set, every rank's share of it moved in at once; a rank with
no images; launch variables; an error said once.

Each rank staged and moved in its own share of `--save-images DIR`, so a rank stopped between
two ranks' moves left DIR holding part of the new set and part of the earlier one, and a rank
judged another host's live staging folder dead by its PID and deleted it. A rank whose share of
the images was empty (fewer images than ranks) failed on its empty feature bank. A broken
WORLD_SIZE / RANK gave a traceback or a misleading error, and every rank printed the same
refusal."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY_NET, dead_pid, run_group, torchrun, varied_model_and_ref
from pixeljit.cli import main
from pixeljit.files.image_set import StagedImageSet, finish_interrupted_set, sweep_stale_staging

FAST = ["--steps", "1", "--method", "euler", "--device", "cpu", "--batch-size", "4"]
TIMEOUT_S = 240  # three ranks start, generate and score in seconds; a hang waits minutes

# rank 1 is killed (SIGKILL: no handler runs) once its images are written and scored, a moment
# before the set would be moved in: the others' shares must not be moved in without it
KILLED_RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    import pixeljit.evaluation as evaluation
    from pixeljit.cli import main

    real = evaluation.score_labelled

    def score(*args, **kwargs):
        out = real(*args, **kwargs)
        if os.environ["RANK"] == "1":
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    evaluation.score_labelled = score
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny class-conditional model (8 px RGB) whose images differ with the seed, and
    reference statistics at its size."""
    return varied_model_and_ref(tmp_path_factory.mktemp("torchrun-sets"), TINY_NET, 8)


def eval_argv(setup: Path, num: int, out: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(setup / "tiny.safetensors"), "--num-images", str(num),
            "--ref", str(setup / "ref.npz"), "--metrics", "fd", "kid", "--save-images", str(out),
            *FAST, *extra]  # fmt: skip


def ranks(nproc: int, target: list[str], timeout: float = TIMEOUT_S):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *target]  # fmt: skip
    return run_group(cmd, timeout, env=env)


def contents(folder: Path) -> dict[str, bytes]:
    """Every entry of `folder`, hidden ones too, with its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()}


def visible(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in contents(folder).items() if not k.startswith(".")}


@pytest.mark.slow
def test_three_ranks_one_without_images_write_one_set_and_score_like_one(setup, tmp_path):
    """2 images on 3 ranks: rank 2 has none (it failed: 'the feature bank is empty'); the set
    replaces an earlier one whole; rank 0's bar says it counts rank 0's share."""
    one, three = tmp_path / "one", tmp_path / "three"
    assert main([*eval_argv(setup, 2, one), "--out", str(tmp_path / "one.json")]) == 0
    assert main(eval_argv(setup, 2, three, "--seed", "1")) == 0  # an earlier set
    assert visible(three) != visible(one)
    argv = [*eval_argv(setup, 2, three, "--overwrite"), "--out", str(tmp_path / "three.json")]
    done = ranks(3, ["-m", "pixeljit", *argv])
    assert done.returncode == 0, done.stderr[-3000:]
    assert contents(three) == contents(one)  # the whole new set, labels.csv, nothing hidden
    assert sorted(contents(one)) == ["000000.png", "000001.png", "labels.csv"]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["scores"] for n in ("one", "three"))
    assert sorted(a) == sorted(b) and a["count"] == b["count"] == 2
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert "generating (rank 0's 1 of 2)" in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_a_rank_stopped_before_the_set_is_moved_in_leaves_the_earlier_set(setup, tmp_path):
    out, fresh = tmp_path / "pngs", tmp_path / "fresh"
    assert main(eval_argv(setup, 8, out, "--seed", "1")) == 0
    earlier = contents(out)
    assert main(eval_argv(setup, 8, fresh)) == 0
    script = tmp_path / "killed_rank.py"
    script.write_text(KILLED_RANK)
    done = ranks(2, [str(script), *eval_argv(setup, 8, out, "--overwrite")])
    assert done.returncode != 0
    assert visible(out) == earlier, "rank 0 moved its share in without rank 1's"
    # what rank 0 staged (it was stopped) goes with the next set: it ran on this machine
    assert main(eval_argv(setup, 8, out, "--overwrite")) == 0
    assert contents(out) == contents(fresh)


def test_another_machines_staging_folder_is_never_swept(tmp_path, monkeypatch):
    """On a shared file system a staging folder of another host (or PID namespace) holds a PID
    that means nothing here: it looked dead, and a live rank's folder was deleted under it."""
    folder = tmp_path / "pngs"
    monkeypatch.setattr("socket.gethostname", lambda: "node-a")
    staged = StagedImageSet.open(folder)  # a writer on node-a, whose PID is not one of ours
    (staged.path / "000000.png").write_bytes(b"png")
    monkeypatch.undo()
    there = staged.path.with_name(re.sub(r"-\d+-", f"-{dead_pid()}-", staged.path.name, count=1))
    staged.path.rename(there)
    local = folder / f".new-set.staging-{dead_pid()}-0123abcd"  # older name: judged by its PID
    local.mkdir()
    (local / "000001.png").write_bytes(b"png")
    assert sweep_stale_staging(folder) == [local]
    assert (there / "000000.png").read_bytes() == b"png"
    (there / ".commit-journal").write_text('{"format": "pixeljit.commit/1", "steps": []}')
    with pytest.warns(UserWarning, match=r"of machine node-a\S* is moving a new image set"):
        assert finish_interrupted_set(folder) == 0  # never finished from here either
    assert (there / "000000.png").is_file()


SAMPLE, TRAIN, EVAL = "sample", "train", "eval"
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT")  # fmt: skip
BROKEN_LAUNCHES = [
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' is not a process count; unset it, or launch with "
     "torchrun", (SAMPLE, TRAIN, EVAL)),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a process count", (SAMPLE, TRAIN)),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a process count (1 or more)", (TRAIN, EVAL)),
    ({"RANK": "1"}, "RANK='1' but WORLD_SIZE is not set: without torchrun there is one "
     "process, rank 0; unset RANK", (TRAIN, EVAL)),
    ({"RANK": ""}, "RANK='' is not a rank", (TRAIN,)),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE='2' says this is one of 2 processes, but RANK is not "
     "set: torchrun did not start it; unset WORLD_SIZE", (SAMPLE, TRAIN)),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE='2' says this is one of 2 processes, but "
     "MASTER_ADDR is not set", (SAMPLE,)),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK='2' is not a rank of WORLD_SIZE='2' (0 to 1)",
     (EVAL,)),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK='1' does not fit rank 0", (SAMPLE,)),
    ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE='0' is not a process count (1 or more)",
     (SAMPLE, TRAIN)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "said", "verb"),
    [pytest.param(env, said, verb, id=" ".join([*(f"{k}={v}" for k, v in env.items()), verb]))
     for env, said, verbs in BROKEN_LAUNCHES for verb in verbs],
)  # fmt: skip
def test_broken_launch_variables_are_one_line_naming_them(env, said, verb, tmp_path, capsys,
                                                          monkeypatch):  # fmt: skip
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def never(*args, **kwargs):  # a process group would wait for processes that never come
        raise AssertionError("a process group was started")

    monkeypatch.setattr(torch.distributed, "init_process_group", never)
    argv = {SAMPLE: ["sample", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")],
            TRAIN: ["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist", "--out",
                    str(tmp_path / "z"), "--steps", "3", "--no-progress"],
            EVAL: ["eval", "--checkpoint", str(tmp_path / "run"), "--num-images", "10",
                   "--metrics", "is"]}[verb]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(rf"pixeljit {verb}( \(rank 0 of 2\))?: error: {re.escape(said)}", err), err
    assert list(tmp_path.iterdir()) == []


def test_an_error_every_rank_meets_is_said_once(tmp_path):
    done = torchrun(["prepare", "fashion-mnist", "--size", "16", "--out", str(tmp_path / "p")],
                    timeout=120)  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "error: pixeljit prepare runs" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("pixeljit prepare (rank 0 of 2): error: pixeljit prepare runs in "
                               "one process"), lines  # fmt: skip
