"""`run.matmul_precision`: float32 matrix products at torch's precision levels (highest: full
float32, the default and the authors' numerics; high: TF32 on CUDA; medium: bf16 inputs with
float32 sums, on CUDA and on CPUs with AMX-BF16). It holds for the run and is restored after; it
is an execution fact, so a resume that changes it is inexact; and a run at reduced precision
trains to the same losses within bf16 rounding."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_run
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.cli import main
from pixeljit.training import loop
from pixeljit.training.config import RunConfig
from pixeljit.training.loop import train
from test_sampling_matmul_precision import medium_acts_here


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"run.matmul_precision must be highest, high or medium, "
                       r"got 'low'"):  # fmt: skip
        RunConfig(matmul_precision="low")


def test_the_run_holds_its_precision_and_restores_the_callers(fmnist16, tmp_path, monkeypatch):
    seen, real = [], loop.flow_matching_loss

    def loss(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "flow_matching_loss", loss)
    before = torch.get_float32_matmul_precision()
    assert before == "highest"
    train(tiny_run(fmnist16(64), tmp_path / "run", **{"run.matmul_precision": "medium"}),
          progress=False)  # fmt: skip
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == before
    execution = load_checkpoint(tmp_path / "run")["execution"]
    assert execution["matmul_precision"] == "medium"


def test_a_resume_that_changes_it_is_inexact(fmnist16, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run), progress=False)
    capsys.readouterr()
    args = ["train", "--resume", str(run), "--steps", "3", "--no-progress",
            "--set", "run.matmul_precision=medium"]  # fmt: skip
    assert main(args) == 2
    assert (
        "execution.matmul_precision: checkpoint 'highest' vs now 'medium'"
        in capsys.readouterr().err
    )
    assert main([*args, "--allow-inexact-resume"]) == 0
    assert load_checkpoint(run)["execution"]["matmul_precision"] == "medium"
    assert "float32 matmuls at medium precision" in capsys.readouterr().out


def test_reduced_precision_trains_to_the_same_losses_within_rounding(fmnist16, tmp_path):
    losses = {}
    for precision in ("highest", "medium"):
        out = tmp_path / precision
        settings = {"run.matmul_precision": precision, "optim.steps": 4, "run.log_every": 1}
        train(tiny_run(fmnist16(64), out, **settings), progress=False)
        rows = (out / "metrics.jsonl").read_text().splitlines()
        losses[precision] = torch.tensor([json.loads(r)["loss"] for r in rows])
    assert len(losses["highest"]) == 4
    torch.testing.assert_close(losses["medium"], losses["highest"], rtol=2e-2, atol=0)
    if medium_acts_here():  # (elsewhere medium computes as highest): the run trained at medium
        assert not torch.equal(losses["medium"], losses["highest"])
