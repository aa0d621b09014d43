"""A checkpoint's config, step and EMA decays are read without its tensors (`tensors=False`), and
still verified; `train --resume` and a finished grid cell read their checkpoint whole once."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_run
from tests.test_checkpoints_run import flip_byte_in_entry, small_state, tensor_entry

from pixeljit.checkpoints.run import load_checkpoint, save_checkpoint
from pixeljit.cli import main
from pixeljit.training.loop import train


@pytest.fixture
def full_loads(monkeypatch) -> list[str]:
    """The files `torch.load` reads whole (not mapped), in order."""
    real, seen = torch.load, []

    def counting(f, *args, **kwargs):
        if not kwargs.get("mmap"):
            seen.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return seen


def test_a_light_read_skips_the_tensors_bytes_but_verifies_the_rest(tmp_path):
    state = small_state(3)
    path = save_checkpoint(state, tmp_path, 3, milestone=False)
    flip_byte_in_entry(path, tensor_entry(path, state["model"]["weight"]), at=5)
    light = load_checkpoint(path, tensors=False)  # the tensor is not read: not caught here
    assert light["step"] == 3 and light["config"] == state["config"]
    assert light["ema"]["decays"] == [0.99]
    with pytest.raises(ValueError, match="checksum mismatch in model/weight"):
        load_checkpoint(path)  # a full read catches it


def test_a_light_read_catches_a_changed_config(tmp_path):
    path = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["depth"] = 3  # as if the pickled config were hit
    torch.save(state, path)
    with pytest.raises(ValueError, match="checksum mismatch in <non-tensor fields>"):
        load_checkpoint(path, tensors=False)


def test_train_resume_reads_the_checkpoint_whole_once(tmp_path, fmnist16, full_loads):
    out = tmp_path / "run"
    train(tiny_run(fmnist16(32), out), progress=False)
    full_loads.clear()
    assert main(["train", "--resume", str(out), "--steps", "3", "--no-progress"]) == 0
    assert load_checkpoint(out, tensors=False)["step"] == 3  # it did resume and train
    assert full_loads == [str(out / "latest.pt")]


def test_a_finished_cell_is_told_by_a_light_read(tmp_path, fmnist16, full_loads):
    from pixeljit.experiments.evidence import _finished_training

    config = tiny_run(fmnist16(32), tmp_path / "cell")
    train(config, progress=False)
    full_loads.clear()
    assert _finished_training(tmp_path / "cell", config)["steps"] == 2
    assert full_loads == []
