"""torchrun and the verbs: a rank that fails stops the run (the others are not left waiting for
it), and a verb made for one process refuses to run once per rank.

An error on one rank of `pixeljit eval` (a disk error, an out-of-memory on one card) left that
rank at teardown's 24-hour barrier while the other waited in a collective for it: both hung,
silently. And `prepare`, `sample`, `demo`, `reproduce` and `convert` ran once per rank, each
rank doing all the work and writing the same files (two `prepare`s raced on one folder)."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from conftest import noise_pngs, run_group, torchrun

# a rank whose scoring fails after the other rank entered the gather of features
FAILING_RANK = textwrap.dedent(
    """
    import os, sys
    import pixeljit.evaluation as evaluation
    from pixeljit.cli import main

    real = evaluation.score_image_source

    def score(*args, **kwargs):
        if os.environ["RANK"] == "1":
            raise OSError(5, "Input/output error", "the images of rank 1")
        return real(*args, **kwargs)

    evaluation.score_image_source = score
    sys.exit(main(sys.argv[1:]))
    """
)
STOPPED_WITHIN_S = 90  # the hang lasted gloo's 30-minute timeout, then the 24-hour barrier
EVERY_RANK_S = 5  # seconds torchrun waits before stopping ranks after one fails


@pytest.mark.slow
def test_a_failing_rank_stops_eval_instead_of_hanging(tmp_path):
    images = noise_pngs(tmp_path / "images", 8)
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "eval", "--images", str(images), "--ref", "fashion-mnist", "--extractor",
           "fmnist-cnn", "--metrics", "fd", "--out", str(tmp_path / "s.json")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    done = run_group(cmd, timeout=STOPPED_WITHIN_S * 3, env=env)
    took = time.monotonic() - start
    assert done.returncode != 0
    assert "rank 1 of 2): error: Input/output error: the images of rank 1" in done.stderr
    assert took < STOPPED_WITHIN_S, f"the ranks waited {took:.0f} s for the failed one"
    assert not (tmp_path / "s.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "fashion-mnist", "--size", "16", "--limit", "20", "--out", "{tmp}/packed"],
        ["sample", "{tmp}/missing.pt", "--out", "{tmp}/grid.png"],
        ["demo", "--out", "{tmp}/demo"],
    ],
    ids=["prepare", "sample", "demo"],
)
def test_single_process_verbs_refuse_torchrun_before_doing_anything(argv, tmp_path):
    # each rank refuses at once; torchrun stopped a rank still importing when the other's
    # refusal came first (seen on a loaded machine): it looks again only after EVERY_RANK_S
    done = torchrun([a.format(tmp=tmp_path) for a in argv], timeout=120, monitor_s=EVERY_RANK_S)
    assert done.returncode != 0
    verb = argv[0]  # both ranks refuse alike: rank 0 alone says it (cli.say_once)
    line = f"pixeljit {verb} (rank 0 of 2): error: pixeljit {verb} runs in one process"
    assert line in done.stderr, done.stderr[-2000:]
    assert done.stderr.count(f"error: pixeljit {verb} runs in one process") == 1
    assert "without torchrun" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, by either rank
