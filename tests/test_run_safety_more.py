"""Red-team findings on training runs: a resume never overwrites the folder's later history,
--out never overlaps the data or another run, the data a run resumes on is the data it
started on, and bad flags name the flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import tiny_run
from pixeljit.checkpoints.run import LATEST, load_checkpoint
from pixeljit.training.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def packed(fmnist16) -> Path:
    return fmnist16(64)


def tiny(data: Path, out: Path, **overrides):
    return tiny_run(data, out, **{"optim.global_batch": 8, "optim.warmup_epochs": 0.0, **overrides})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------------------------- A1


def test_resuming_from_an_early_milestone_keeps_every_later_file(packed, tmp_path):
    every2 = {"run.milestone_every": 2, "sample.every": 2}
    train(tiny(packed, tmp_path, **{"optim.steps": 6, **every2}), progress=False)
    old = files(tmp_path)
    later = ["step-000000004.pt", "step-000000006.pt", "samples-0000004.png",
             "samples-0000006.png", LATEST, "loss.png"]  # fmt: skip
    cfg = tiny(packed, tmp_path, **{"optim.steps": 6, "run.seed": 0, **every2})
    train(cfg, resume=str(tmp_path / "step-000000002.pt"), progress=False)
    now = files(tmp_path)
    for name in later:
        (kept,) = [k for k in now if k.startswith(name + ".before-resume-")]
        assert now[kept] == old[name], name
    (metrics,) = [k for k in now if k.startswith("metrics.jsonl.before-resume-")]
    assert now[metrics] == old["metrics.jsonl"]  # the old branch's records, all of them
    steps = [json.loads(line)["step"] for line in now["metrics.jsonl"].decode().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6
    assert load_checkpoint(tmp_path / "step-000000006.pt")["step"] == 6


def test_resuming_from_latest_sets_nothing_aside(packed, tmp_path):
    train(tiny(packed, tmp_path, **{"optim.steps": 2}), progress=False)
    train(tiny(packed, tmp_path, **{"optim.steps": 4}), resume=str(tmp_path), progress=False)
    assert not list(tmp_path.glob("*.before-resume-*"))


# ------------------------------------------------------------------------------ A3, A4, A5


def write_images(folder: Path, n: int = 4) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("L", (16, 16), color=i * 40).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_an_out_overlapping_an_image_folder_is_refused(tmp_path, where):
    images = write_images(tmp_path / "top" / "imgs")
    out = {"same": images, "inside": images / "run", "contains": tmp_path / "top"}[where]
    before = sorted(p.name for p in images.rglob("*"))
    with pytest.raises(ValueError, match="training data folder"):
        train(tiny(images, out), progress=False)
    assert sorted(p.name for p in images.rglob("*")) == before  # no .lock, no run/ left behind


def test_an_out_that_is_a_packed_folder_or_a_link_to_it_is_refused(packed, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(packed)
    for out in (packed, link / "sub"):
        with pytest.raises(ValueError, match="training data folder"):
            train(tiny(packed, out), progress=False)
    assert not (packed / ".lock").exists() and not (packed / "sub").exists()


def test_an_out_inside_another_run_is_refused(packed, tmp_path):
    train(tiny(packed, tmp_path / "run1"), progress=False)
    before = files(tmp_path / "run1")
    with pytest.raises(ValueError, match="inside the run folder"):
        train(tiny(packed, tmp_path / "run1" / "tensorboard" / "x"), progress=False)
    assert files(tmp_path / "run1") == before and not (tmp_path / "run1" / "tensorboard").exists()


def test_an_out_inside_a_folder_with_only_common_names_is_accepted(packed, tmp_path):
    """config.yaml and .lock are names other tools use (pytest locks its temp folders): only a
    checkpoint marks a run folder."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: 1\n")
    (project / ".lock").write_text("")
    train(tiny(packed, project / "runs" / "a"), progress=False)
    assert (project / "runs" / "a" / "latest.pt").is_file()
    assert (project / "config.yaml").read_text() == "mine: 1\n"


# ------------------------------------------------------------------------------------- A6


def test_resuming_on_changed_data_is_refused_unless_allowed(tmp_path, capsys):
    from PIL import Image

    images = write_images(tmp_path / "imgs", n=8)
    run = tmp_path / "run"
    train(tiny(images, run, **{"data.conditional": False}), progress=False)
    assert load_checkpoint(run)["data_fingerprint"]
    Image.new("L", (16, 16), color=255).save(images / "0.png")  # one image changed
    longer = tiny(images, run, **{"data.conditional": False, "optim.steps": 4})
    with pytest.raises(ValueError, match=r"training data \(--data .*imgs\) changed"):
        train(longer, resume=str(run), progress=False)
    assert load_checkpoint(run)["step"] == 2
    assert train(longer, resume=str(run), progress=False, allow_inexact_resume=True).step == 4
    assert "changed since the checkpoint" in capsys.readouterr().out


def test_an_inexact_resume_on_data_of_another_size_continues_the_epoch(fmnist16, tmp_path):
    """--allow-inexact-resume accepted more (or fewer) images, then the loader refused its own
    state ("num_samples=64 but this loader has 48") after the run folder was settled."""
    run = tmp_path / "run"
    train(tiny(fmnist16(64), run, **{"optim.steps": 3}), progress=False)
    assert load_checkpoint(run)["loader"]["position"] == 24  # 3 batches of 8 into 64 images
    longer = tiny(fmnist16(48), run, **{"optim.steps": 5})
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        train(longer, resume=str(run), progress=False)
    assert train(longer, resume=str(run), progress=False, allow_inexact_resume=True).step == 5
    loader = load_checkpoint(run)["loader"]
    assert (loader["num_samples"], loader["epoch"], loader["position"]) == (48, 0, 18 + 2 * 8)


def test_the_same_data_under_another_path_or_folder_resumes(packed, tmp_path, monkeypatch, capsys):
    """A run trained on `--data data` (relative, as typed) could not be resumed from another
    working folder, nor with the path spelled otherwise (`../copy/`): data.source was compared
    as text. The fingerprint identifies the data; the path is saved absolute."""
    import shutil

    from pixeljit.cli import main

    shutil.copytree(packed, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train(tiny(Path("data"), run), progress=False)
    assert load_checkpoint(run)["config"]["data"]["source"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    argv = ["train", "--resume", str(run), "--steps", "4", "--data", "../copy/", "--no-progress"]
    assert main(argv) == 0
    assert "inexact" not in capsys.readouterr().out and load_checkpoint(run)["step"] == 4


def test_data_num_classes_zero_trains_an_unconditional_model(packed, tmp_path):
    """README: 0 classes trains an unconditional model; data.num_classes=0 failed on labels. The
    run records no guidance (a preset's sample.cfg, kept, read as guiding a model with nothing
    to guide), in its checkpoint and in config.yaml; a sample.cfg asked for is refused."""
    from pixeljit.training.presets import get_preset

    with pytest.raises(ValueError, match="sample.cfg 2.5 has no effect for an unconditional"):
        tiny(packed, tmp_path, **{"data.num_classes": 0, "sample.cfg": 2.5})
    cfg = tiny(packed, tmp_path, **{"data.num_classes": 0})  # the preset's sample.cfg is 2
    assert get_preset("fmnist-tiny").sample.cfg == 2.0
    train(cfg, progress=False)
    saved = load_checkpoint(tmp_path)["config"]
    assert saved["model"]["num_classes"] == 0 and saved["sample"]["cfg"] == 1.0
    assert "cfg: 1.0" in (tmp_path / "config.yaml").read_text()


# ------------------------------------------------------------------------- B13, B14, D26


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"optim.steps": None, "optim.epochs": 1e308}, "--epochs / optim.epochs"),
        ({"optim.warmup_epochs": 1e308}, "optim.warmup_epochs"),
        ({"sample.per_class": 10**9}, "sample.per_class"),
        ({"optim.global_batch": 128}, "--batch-size"),
    ],
)
def test_oversized_settings_are_refused_up_front_naming_them(packed, tmp_path, override, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        train(tiny(packed, tmp_path / "run", **override), progress=False)
    assert not list((tmp_path / "run").glob("*.pt"))  # refused before any training


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--preset", "fmnist-tiny", "--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["train", "--preset", "fmnist-tiny", "--steps", "-1"], "--steps must be ≥ 1, got -1"),
        (["train", "--preset", "fmnist-tiny", "--batch-size", "0"], "--batch-size must be ≥ 1"),
        (["train", "--preset", "fmnist-tiny", "--epochs", "inf"], "--epochs must be a finite"),
        (["demo", "--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["demo", "--steps", str(10**20)], "--steps must be ≤ 1,000,000,000"),
        (["train", "--preset", "fmnist-tiny", "--steps", str(10**10)], "must be ≤ 1000000000"),
    ],
)
def test_bad_length_flags_name_the_flag(tmp_path, capsys, argv, named):
    from pixeljit.cli import main

    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) != 0
    assert named in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------------ D28


def test_a_failed_run_into_a_new_folder_leaves_no_trace(packed, tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(tiny(packed, out, **{"optim.global_batch": 128}), progress=False)
    assert not out.exists()  # no folder holding a .lock that later refuses `prepare --out`


def test_a_finished_run_leaves_no_lock_file_and_an_existing_lock_file_stays(packed, tmp_path):
    train(tiny(packed, tmp_path / "a"), progress=False)
    assert (tmp_path / "a" / LATEST).is_file() and not (tmp_path / "a" / ".lock").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".lock").write_text("")
    train(tiny(packed, tmp_path / "b"), progress=False)
    assert (tmp_path / "b" / ".lock").exists()  # not ours to remove


def test_resuming_a_folder_in_use_says_in_use_first(packed, tmp_path, capsys):
    from pixeljit.cli import main
    from pixeljit.training.rundir import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # another run, before its first checkpoint
        with pytest.raises(RuntimeError, match="in use by another process"):
            train(tiny(packed, run), resume=str(run), progress=False)
        assert main(["train", "--resume", str(run), "--no-progress"]) != 0
        assert "in use by another process" in capsys.readouterr().err


def test_only_rank_0_checks_the_lock_before_a_resume(packed, tmp_path, monkeypatch):
    """Under torchrun every rank took and dropped the run's lock at the same moment and could
    refuse its siblings as "in use by another process": rank 0 alone checks (the run itself
    takes the lock on rank 0 only)."""
    from pixeljit.cli import build_parser
    from pixeljit.cli.train import build_config
    from pixeljit.training.rundir import RunLock

    run = tmp_path / "run"
    train(tiny(packed, run), progress=False)
    args = build_parser().parse_args(["train", "--resume", str(run)])
    with RunLock(run):  # a sibling rank holding it at this moment
        monkeypatch.setenv("RANK", "1")
        assert build_config(args).run.out == str(run)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RuntimeError, match="in use"):
            build_config(args)


# ------------------------------------------------------------------------------- redteam


def test_a_model_too_large_for_the_device_is_refused_before_anything_is_built(packed, tmp_path):
    """The sizes' bounds allow a 309-billion-parameter model (6.9 TiB to train): it was allocated
    until the allocator or the OOM killer stopped the process, and left config.yaml behind."""
    huge = {"model.hidden_size": 8192, "model.depth": 256, "model.num_heads": 64}
    out = tmp_path / "run"
    refusal = r"309,\d{3},\d{3},\d{3} parameters.*choose a smaller model"
    with pytest.raises(ValueError, match=refusal):
        train(tiny(packed, out, **huge), progress=False)
    assert not out.exists()


def test_a_model_too_large_is_refused_before_a_raw_source_is_packed(tmp_path, monkeypatch):
    """jit-g-16 on an image folder packed the whole folder at 256 px (minutes, gigabytes in the
    cache) before the memory check refused the model."""
    from PIL import Image

    from pixeljit.files.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    huge = {"model.hidden_size": 8192, "model.depth": 256, "model.num_heads": 64}
    with pytest.raises(ValueError, match="choose a smaller model"):
        train(tiny(tmp_path / "images", tmp_path / "run", **huge), progress=False)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_the_memory_bound_counts_weights_grads_moments_and_each_ema(packed, tmp_path, monkeypatch):
    import torch

    from pixeljit.model import JiT
    from pixeljit.training import setup

    cfg = tiny(packed, tmp_path / "run")
    params = sum(p.numel() for p in JiT(cfg.model).parameters())  # built for real, on the CPU
    need = params * (4 * 4 + 4 * len(cfg.optim.ema_decays))  # fp32 w, grad, 2 moments; EMAs
    monkeypatch.setattr(setup, "device_memory_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=f"{params:,} parameters"):
        train(cfg, progress=False)
    monkeypatch.setattr(setup, "device_memory_bytes", lambda device: need)
    train(cfg, progress=False)
    assert torch.load(tmp_path / "run" / LATEST, weights_only=True)["step"] == 2


def test_a_folder_whose_run_saved_no_checkpoint_is_not_sent_to_resume(packed, tmp_path):
    """A start that failed before its first checkpoint leaves config.yaml; the refusal said
    `continue it with --resume`, which then failed with "holds no checkpoint"."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("mine")
    with pytest.raises(ValueError, match="saved no checkpoint") as err:
        train(tiny(packed, out), progress=False)
    assert "--resume" not in str(err.value) and "--restart" in str(err.value)
    assert files(out) == {"config.yaml": b"mine"}


def test_resuming_past_the_steps_asked_for_says_nothing_was_trained(packed, tmp_path, capsys):
    """`train --steps 200 --resume RUN` of a run at step 1080 trained nothing and said only
    "done: 1080 steps"."""
    train(tiny(packed, tmp_path, **{"optim.steps": 4}), progress=False)
    before = files(tmp_path)
    capsys.readouterr()
    result = train(tiny(packed, tmp_path, **{"optim.steps": 2}), resume=str(tmp_path),
                   progress=False)  # fmt: skip
    printed = capsys.readouterr().out
    assert "nothing to train: the checkpoint is at step 4" in printed
    assert "still the initial weights" not in printed  # no warning about training it won't do
    assert result.step == 4 and result.checkpoint == tmp_path / LATEST
    # nothing renamed (metrics.jsonl, loss.png), config.yaml not rewritten with the shorter run
    assert files(tmp_path) == before


def test_a_resume_with_another_recipe_is_refused_before_the_data_is_opened(
    packed, tmp_path, monkeypatch
):
    """`train --resume RUN --preset other` packed the other preset's data (minutes for a large
    set) before saying the recipe differs."""
    train(tiny(packed, tmp_path), progress=False)
    before = files(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the data was opened before the recipe was compared")

    monkeypatch.setattr("pixeljit.training.loop.open_training_data", never)
    with pytest.raises(ValueError, match="config differs from the checkpoint .* model.depth"):
        train(tiny(packed, tmp_path, **{"model.depth": 3}), resume=str(tmp_path), progress=False)
    assert files(tmp_path) == before


def test_an_out_that_is_or_lies_in_a_file_is_named_as_such(packed, tmp_path):
    """`train --out FILE` said only "File exists: FILE", and `--out FILE/sub` "Not a
    directory"; the file is left as it was."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out, what in ((a_file, "is a file, not a folder"),
                      (a_file / "run", f"is inside {a_file}, a file")):  # fmt: skip
        with pytest.raises(ValueError, match=what):
            train(tiny(packed, out), progress=False)
    assert a_file.read_text() == "mine"


def test_a_grid_cell_stopped_before_its_first_checkpoint_starts_again(packed, tmp_path):
    """A Ctrl-C as a `--jobs 2` cell started left only its config.yaml: every re-run of the
    grid then failed ("holds files of a training run that saved no checkpoint … pass
    --restart"), a flag `reproduce` does not have."""
    from pixeljit.experiments.evidence import Cell, train_cell

    cell = Cell("a", tiny(packed, tmp_path / "cells" / "a"), {})
    folder = tmp_path / "cells" / "a"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("written as the cell started\n")
    done = train_cell(cell)
    assert done["steps"] == 2 and not done["resumed"]
    assert load_checkpoint(folder)["step"] == 2
    (aside,) = (tmp_path / "cells").glob("a.old-*")  # moved aside, not deleted
    assert (aside / "config.yaml").read_text() == "written as the cell started\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({}, "--batch-size) 16 does not split evenly over 3 processes: pass a multiple of 3"),
     ({"optim.micro_batch": 4}, "must be a multiple of optim.micro_batch 4 × world size 3")],
)  # fmt: skip
def test_a_batch_the_processes_cannot_share_names_what_the_user_set(packed, overrides, message):
    """Under torchrun with 3 processes, batch 16 was refused as "not a multiple of micro_batch
    5 × world size 3": a micro-batch the user never set."""
    import torch

    from pixeljit.data import PackedDataset
    from pixeljit.training.distributed import DistInfo
    from pixeljit.training.setup import resolve_config

    cfg = tiny(packed, Path("unused"), **{"optim.global_batch": 16, **overrides})
    three = DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(cfg, PackedDataset(packed), three)
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    resolve_config(cfg, PackedDataset(packed), one)  # one process takes the whole batch


def test_resuming_a_file_of_another_kind_names_it(packed, tmp_path, capsys):
    """`--resume run/config.yaml` was told the file "may be truncated or not a checkpoint" and
    pointed at milestones, as if the checkpoint were damaged."""
    from pixeljit.cli import main

    run = tmp_path / "run"
    train(tiny(packed, run), progress=False)
    assert main(["train", "--resume", str(run / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"--resume {run / 'config.yaml'} is a config, not a training checkpoint: pass its " \
           f"folder {run} (it holds latest.pt)" in err  # fmt: skip
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert main(["train", "--resume", str(weights)]) == 2
    assert "is exported weights (no optimizer" in capsys.readouterr().err


def test_cpu_ranks_on_one_machine_share_its_memory(packed, tmp_path, monkeypatch):
    """torchrun's CPU ranks on one machine each hold the whole training state in the same RAM:
    the bound is the machine's memory over all of them, not each rank's against all of it."""
    import dataclasses

    import torch

    from pixeljit.model import JiT
    from pixeljit.training import setup
    from pixeljit.training.distributed import DistInfo

    cfg = tiny(packed, tmp_path / "run")
    params = sum(p.numel() for p in JiT(cfg.model).parameters())
    need = params * (4 * 4 + 4 * len(cfg.optim.ema_decays))
    monkeypatch.setattr(setup, "device_memory_bytes", lambda device: 2 * need)
    alone = DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    setup.check_model_fits(cfg, alone)  # two copies fit
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"the 3 processes on this machine \(LOCAL_WORLD_SIZE\)"):
        setup.check_model_fits(cfg, alone)
    fsdp = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, distributed="fsdp"))
    setup.check_model_fits(fsdp, alone)  # a third of the state each, three of them: one copy
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE='0' is not a process count"):
        setup.check_model_fits(cfg, alone)
