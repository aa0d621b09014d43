"""README claims about training runs that tests/test_train.py leaves open: the run-length and
`run.*` exemption on resume, and the checkpoint kept when a loss turns non-finite."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.training.loop import train
from pixeljit.training.runlog import METRICS_FILE, read_metrics

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data(fmnist16) -> Path:
    return fmnist16(64)


def config(data: Path, out: Path, **overrides):
    """The shared tiny run with a checkpoint every step."""
    return tiny_run(data, out, **{"run.ckpt_every": 1, **overrides})


def test_resume_accepts_new_run_settings_and_length(data, tmp_path):
    """README: a config differing from the checkpoint's is refused "except run.* and the run
    length"; those changes resume the run instead."""
    train(config(data, tmp_path / "run"), progress=False)
    changed = config(data, tmp_path / "run", **{"optim.steps": 3, "run.log_every": 3,
                                                "run.ckpt_every": 3, "run.seed": 0})  # fmt: skip
    result = train(changed, resume=str(tmp_path / "run"), progress=False)
    assert result.step == 3 and load_checkpoint(tmp_path / "run")["step"] == 3
    assert [r["step"] for r in read_metrics(tmp_path / "run" / METRICS_FILE)] == [1, 2, 3]


def test_non_finite_loss_names_the_step_and_keeps_a_finite_checkpoint(data, tmp_path, capsys):
    """README: "A non-finite loss stops the run and names the step; the last checkpoint written
    before it is kept." With a checkpoint every step, one exists before the bad step."""
    cfg = config(data, tmp_path / "run", **{"optim.lr": 1e8, "optim.steps": 40})
    result = train(cfg, progress=False)
    assert result.stopped_on_nan and result.step < 40
    said = re.search(r"non-finite loss at step (\d+)", capsys.readouterr().out)
    assert said is not None
    bad_step = int(said.group(1))
    assert result.checkpoint is not None  # the divergence needs at least one update
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["step"] < bad_step
    assert result.step == ckpt["step"] and result.nan_step == bad_step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(s).all() for shadow in ckpt["ema"]["shadows"] for s in shadow)
    logged = read_metrics(tmp_path / "run" / METRICS_FILE)
    assert all(math.isfinite(r["loss"]) for r in logged) and logged[-1]["step"] < bad_step


def test_milestones_are_kept_every_milestone_every_steps_between_checkpoints(data, tmp_path):
    """run.milestone_every says "keep step-N.pt every this many steps": with run.ckpt_every
    larger (not a multiple of it), the milestones were silently skipped; a milestone step now
    writes a checkpoint."""
    out = tmp_path / "run"
    cfg = tiny_run(data, out, **{"optim.steps": 5, "run.ckpt_every": 100,
                                 "run.milestone_every": 2})  # fmt: skip
    train(cfg, progress=False)
    kept = sorted(p.name for p in out.glob("step-*.pt"))
    assert kept == ["step-000000002.pt", "step-000000004.pt"]
    assert load_checkpoint(out / kept[0])["step"] == 2
    assert load_checkpoint(out)["step"] == 5  # latest.pt: the last step, as always
