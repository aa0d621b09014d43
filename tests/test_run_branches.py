"""Resuming from a checkpoint an earlier resume set aside (`latest.pt.before-resume-<time>`)
continues that branch, and the folder then holds that branch's history alone: a probe found the
later branch's metrics records and grids left in place, mixed with the revived one's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_run
from pixeljit.checkpoints.run import LATEST, load_checkpoint
from pixeljit.training.branches import BRANCH_NOTE
from pixeljit.training.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# branch A logs, draws and keeps milestones every 2 steps; branch B every step: each file
# says which branch wrote it
EVERY = {
    "A": {"run.log_every": 2, "sample.every": 2, "run.milestone_every": 2},
    "B": {"run.log_every": 1, "sample.every": 1, "run.milestone_every": 1},
}


def tiny(data: Path, out: Path, branch: str, steps: int):
    settings = {"optim.global_batch": 8, "optim.warmup_epochs": 0.0, "optim.steps": steps}
    return tiny_run(data, out, **settings, **EVERY[branch])


def steps_in(folder: Path) -> list[int]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def names(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.glob(pattern))


def test_reviving_a_set_aside_branch_leaves_one_history(fmnist16, tmp_path, capsys):
    data, run = fmnist16(64), tmp_path / "run"
    train(tiny(data, run, "A", 6), progress=False)  # A: records, grids, milestones 2, 4, 6
    a_grid6 = (run / "samples-0000006.png").read_bytes()
    train(tiny(data, run, "B", 4), resume=str(run / "step-000000002.pt"), progress=False)
    assert steps_in(run) == [2, 3, 4]  # B: A's record 2, then its own 3, 4
    (a_latest,) = run.glob(f"{LATEST}.before-resume-*")
    assert load_checkpoint(a_latest)["step"] == 6
    note = json.loads((run / (BRANCH_NOTE + a_latest.name[len(LATEST) :])).read_text())
    assert note == {"branched_at": 2, "resumed_from": "step-000000002.pt"}
    capsys.readouterr()

    train(tiny(data, run, "A", 8), resume=str(a_latest), progress=False)
    printed = capsys.readouterr().out
    assert "this folder's own files past step 2, where that branch parts from it," in printed
    assert steps_in(run) == [2, 4, 6, 8]  # A's records alone, continued
    assert names(run, "samples-*.png") == [f"samples-000000{s}.png" for s in (2, 4, 6, 8)]
    assert (run / "samples-0000006.png").read_bytes() == a_grid6  # A's own grid, back in place
    assert names(run, "step-*.pt") == [f"step-00000000{s}.pt" for s in (2, 4, 6, 8)]
    assert load_checkpoint(run / LATEST)["step"] == 8
    # B's history past step 2 is kept aside, nothing lost: its latest, grids 3-4, milestones 3-4
    b_files = [p.name for p in run.iterdir() if ".before-resume-" in p.name]
    for name in (LATEST, "samples-0000003.png", "samples-0000004.png", "step-000000003.pt",
                 "step-000000004.pt", "metrics.jsonl"):  # fmt: skip
        assert sum(f.startswith(name + ".before-resume-") for f in b_files) >= 1, name
    b_latest = [f for f in b_files if f.startswith(LATEST) and run / f != a_latest]
    assert [load_checkpoint(run / f)["step"] for f in b_latest] == [4]


def test_a_set_aside_branch_without_its_note_is_refused_before_anything_moves(fmnist16, tmp_path):
    data, run = fmnist16(64), tmp_path / "run"
    train(tiny(data, run, "A", 4), progress=False)
    train(tiny(data, run, "B", 3), resume=str(run / "step-000000002.pt"), progress=False)
    (a_latest,) = run.glob(f"{LATEST}.before-resume-*")
    (run / (BRANCH_NOTE + a_latest.name[len(LATEST) :])).unlink()  # as an older pixeljit left it
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(ValueError, match=r"does not say where its branch parted.*cp .*latest\.pt"):
        train(tiny(data, run, "A", 6), resume=str(a_latest), progress=False)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_a_metrics_line_without_a_numeric_step_keeps_the_file(tmp_path):
    """One reader of metrics lines serves both set-aside paths: a line that is not a record with
    a numeric step (a hand edit, a torn write) counts as past every step, so the file is copied
    aside before a resume cuts it (such a line used to raise a TypeError mid-resume)."""
    from pixeljit.training.branches import set_aside_newer

    (tmp_path / LATEST).write_bytes(b"")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"loss": 0.5}\n')  # no step: step 0, not past 1
    assert set_aside_newer(tmp_path, tmp_path / LATEST, 1) == []
    metrics.write_text('{"step": 1}\n{"step": "x"}\n')
    (kept,) = set_aside_newer(tmp_path, tmp_path / LATEST, 1)
    assert kept.name.startswith("metrics.jsonl.before-resume-")
    assert kept.read_text() == metrics.read_text()
