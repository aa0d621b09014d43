"""A training run is never lost or mixed: refusal to train over a run (or --restart moving it
aside), one writer per folder, resume in the folder named, temp sweeping, and which config
changes a resume accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from conftest import dead_pid, tiny_run
from pixeljit.checkpoints.run import LATEST, load_checkpoint
from pixeljit.cli import main
from pixeljit.training import rundir
from pixeljit.training.config import RunConfig
from pixeljit.training.loop import train
from pixeljit.training.resume import INEXACT, LOGISTICAL, RECIPE_RUN, RESOLVED, field_class
from pixeljit.training.rundir import RunLock, run_files, sweep_temporaries

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed(fmnist16) -> Path:
    return fmnist16(64)


def tiny(data: Path, out: Path, **overrides):
    """The shared tiny run at batch 8 (8 steps an epoch), no warm-up."""
    return tiny_run(data, out, **{"optim.global_batch": 8, "optim.warmup_epochs": 0.0, **overrides})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock's (it holds the last holder's PID)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


# ----------------------------------------------------------------- a fresh run over an old one


@pytest.mark.parametrize(
    "existing", ["latest.pt", "metrics.jsonl", "config.yaml", "step-000000004.pt"]
)
def test_a_fresh_run_refuses_a_folder_holding_a_run(packed, tmp_path, existing):
    (tmp_path / existing).write_text("an earlier run's file")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        train(tiny(packed, tmp_path), progress=False)
    message = str(err.value)
    assert "--restart" in message and existing in message
    if existing.endswith(".pt"):  # a checkpoint: the run can be continued
        assert f"--resume {tmp_path}" in message
    else:  # nothing to resume: --resume would only fail with "holds no checkpoint"
        assert "saved no checkpoint" in message and "--resume" not in message
    assert snapshot(tmp_path) == before  # nothing written, nothing appended


def test_restart_moves_the_old_run_aside_and_keeps_foreign_files(packed, tmp_path):
    run = tmp_path / "run"
    train(tiny(packed, run), progress=False)
    (run / "notes.txt").write_text("mine")
    old = snapshot(run)
    result = train(tiny(packed, run, **{"run.seed": 1}), progress=False, restart=True)
    assert result.step == 2 and (run / "notes.txt").read_text() == "mine"
    (aside,) = tmp_path.glob("run.old-*")
    moved = snapshot(aside)
    assert moved == {k: v for k, v in old.items() if k != "notes.txt"}
    assert load_checkpoint(run)["config"]["run"]["seed"] == 1
    assert load_checkpoint(aside)["config"]["run"]["seed"] == 0


def test_a_folder_of_foreign_files_is_used_and_they_are_kept(packed, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    train(tiny(packed, tmp_path), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "data").is_dir()
    assert (tmp_path / LATEST).is_file()


def test_restart_and_resume_together_are_refused(packed, tmp_path):
    train(tiny(packed, tmp_path), progress=False)
    with pytest.raises(ValueError, match="cannot be combined with --resume"):
        train(tiny(packed, tmp_path), resume=str(tmp_path), restart=True, progress=False)


def test_demo_into_an_earlier_demo_says_what_to_do(tmp_path, capsys):
    (tmp_path / LATEST).write_text("an earlier demo")
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "already holds a demo run" in err and "--restart" in err
    assert f"pixeljit demo --resume --out {tmp_path} --device cpu" in err
    assert len(err.strip().splitlines()) == 1


def test_demo_into_another_training_run_says_so(packed, tmp_path, capsys):
    """A folder holding a non-demo run was called 'a demo run', with advice (--resume) that then
    failed on the changed model."""
    train(tiny(packed, tmp_path), progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--resume"]):
        assert main(["demo", "--out", str(tmp_path), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err
        assert "holds another training run, not this demo" in err and "model.depth" in err
        assert "--restart" in err and "--resume" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------- one writer per folder


def test_a_second_writer_is_refused_with_the_holders_pid(packed, tmp_path):
    with RunLock(tmp_path):  # another open file description, as a second process would hold
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is in use .*PID {os.getpid()}"):
            train(tiny(packed, tmp_path), progress=False)
    assert not run_files(tmp_path)
    train(tiny(packed, tmp_path), progress=False)  # released: the folder is usable again


def test_the_lock_names_another_process_and_dies_with_it(tmp_path):
    # the holder loads rundir.py alone (standard library only), so no torch import to wait for
    script = (
        "import importlib.util as u, sys\n"
        f"spec = u.spec_from_file_location('rundir', {rundir.__file__!r})\n"
        "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"m.RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by another process \(PID {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # a crash: no clean-up runs in the holder
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the OS released the dead holder's lock


# ------------------------------------------------------------------- resume where the user says


def test_resume_continues_in_the_folder_named_not_the_saved_one(packed, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny(packed, first), progress=False)
    shutil.copytree(first, second)
    before = snapshot(first)
    assert main(["train", "--resume", str(second), "--steps", "4", "--no-progress"]) == 0
    assert snapshot(first) == before  # the checkpoint's run.out is never written
    assert load_checkpoint(second)["step"] == 4
    assert load_checkpoint(second)["config"]["run"]["out"] == str(second)
    with pytest.raises(ValueError, match=rf"continues in its own folder {second}"):
        train(tiny(packed, first, **{"optim.steps": 6}), resume=str(second), progress=False)


def test_resuming_from_a_milestone_keeps_the_newer_latest(packed, tmp_path, capsys):
    train(tiny(packed, tmp_path, **{"optim.steps": 4, "run.milestone_every": 2}), progress=False)
    newer = (tmp_path / LATEST).read_bytes()
    milestone = tmp_path / "step-000000002.pt"
    cfg = tiny(packed, tmp_path, **{"optim.steps": 3, "run.milestone_every": 2})
    assert train(cfg, resume=str(milestone), progress=False).step == 3
    (kept,) = tmp_path.glob("latest.pt.before-resume-*")
    assert kept.read_bytes() == newer and "kept as" in capsys.readouterr().out
    assert load_checkpoint(tmp_path)["step"] == 3


def test_a_refused_resume_or_restart_leaves_the_folder_as_it_was(packed, tmp_path):
    train(tiny(packed, tmp_path, **{"optim.steps": 4, "run.milestone_every": 2}), progress=False)
    before = snapshot(tmp_path)
    other = tiny(packed, tmp_path, **{"optim.steps": 6, "model.depth": 3})
    with pytest.raises(ValueError, match="model.depth"):
        train(other, resume=str(tmp_path / "step-000000002.pt"), progress=False)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(tiny(packed, tmp_path, **{"optim.global_batch": 128}), restart=True, progress=False)
    assert snapshot(tmp_path) == before and not list(tmp_path.parent.glob("*.old-*"))


def test_leftover_temporaries_of_killed_writes_are_swept(packed, tmp_path):
    pid = dead_pid()
    stale = [
        tmp_path / f".latest.pt.tmp-{pid}-0123abcd",
        tmp_path / f".metrics.jsonl.tmp-{pid}-89abcdef",
    ]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    live = tmp_path / f".loss.png.tmp-{os.getppid()}-0123abcd"  # a live writer's: kept
    foreign = [tmp_path / ".latest.pt.tmp", tmp_path / f"x.tmp-{pid}-0123abcd", live]
    for path in foreign:
        path.write_bytes(b"not ours to remove")
    train(tiny(packed, tmp_path), progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"not ours to remove" for p in foreign)
    assert sweep_temporaries(tmp_path) == []


# ------------------------------------------------------------------- config changes on resume


def test_every_run_field_is_classified_explicitly():
    explicit = LOGISTICAL | RESOLVED | INEXACT | RECIPE_RUN
    for name in typing.get_type_hints(RunConfig):  # a new run field must be classified
        assert f"run.{name}" in explicit, f"run.{name} is not classified in training/resume.py"
    assert field_class("model.depth") == field_class("optim.lr") == "recipe"
    assert field_class("run.seed") == "recipe" and field_class("run.compile") == "resolved"
    assert {"run.out", "run.log_every", "run.ckpt_every", "run.tensorboard"} <= LOGISTICAL


@pytest.mark.parametrize(
    ("override", "named"),
    [({"optim.micro_batch": 4}, "execution.micro_batch"),
     ({"run.precision": "bf16"}, "execution.precision")],
)  # fmt: skip
def test_a_resume_that_would_change_the_trajectory_is_refused(packed, tmp_path, override, named):
    train(tiny(packed, tmp_path), progress=False)
    changed = tiny(packed, tmp_path, **{"optim.steps": 4, **override})
    with pytest.raises(ValueError, match=rf"not continue the run bit-exactly: {named}.*"
                                         r"--allow-inexact-resume"):  # fmt: skip
        train(changed, resume=str(tmp_path), progress=False)
    assert load_checkpoint(tmp_path)["step"] == 2


def test_allowed_resume_changes(packed, tmp_path, capsys):
    train(tiny(packed, tmp_path), progress=False)
    logistics = {
        "optim.steps": 3,
        "run.log_every": 3,
        "run.ckpt_every": 1,
        "sample.steps": 2,
        "run.precision": "fp32",
        "run.distributed": "fsdp",
    }  # same resolved: fp32, 1 proc
    assert (
        train(tiny(packed, tmp_path, **logistics), resume=str(tmp_path), progress=False).step == 3
    )
    assert "inexact" not in capsys.readouterr().out
    micro = tiny(packed, tmp_path, **{"optim.steps": 4, "optim.micro_batch": 4})
    result = train(micro, resume=str(tmp_path), progress=False, allow_inexact_resume=True)
    out = capsys.readouterr().out
    assert result.step == 4 and "resuming inexactly" in out and "micro_batch" in out
    assert load_checkpoint(tmp_path)["execution"]["micro_batch"] == 4


def test_the_seed_is_part_of_the_recipe(packed, tmp_path):
    train(tiny(packed, tmp_path), progress=False)
    seed = tiny(packed, tmp_path, **{"optim.steps": 4, "run.seed": 1})
    for allow in (False, True):
        with pytest.raises(ValueError, match=r"differs from the checkpoint .* in: run\.seed"):
            train(seed, resume=str(tmp_path), progress=False, allow_inexact_resume=allow)
