"""A run says at its start what it decided from the data and where it starts: the classes it
conditions on (or that it is unconditional, and why), grey or colour, its length, and the step a
resume continues from. A probe's `data.conditional=true` on a flat folder trained an
unconditional model without a word, and RGB images became grey for a 1-channel preset silently."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_run
from pixeljit.data.prepare import prepare
from pixeljit.files.cache import CACHE_ENV
from pixeljit.training.loop import train


@pytest.fixture
def images(tmp_path, monkeypatch):
    """`images(layout)`: 16 RGB images, flat or in two class folders; the cache is per test."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)

    def make(layout: str):
        root = tmp_path / layout
        for i in range(16):
            folder = root / (f"class{i % 2}" if layout == "classes" else "")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
        return root

    return make


def start_lines(capsys, cfg, **kwargs) -> list[str]:
    train(cfg, progress=False, **kwargs)
    out = capsys.readouterr().out.splitlines()
    return [line for line in out if line.startswith(("data:", "train:"))]


def test_unlabelled_data_asked_to_be_conditional_says_it_is_not(images, tmp_path, capsys):
    cfg = tiny_run(images("flat"), tmp_path / "run", **{"data.conditional": True})
    data, run = start_lines(capsys, cfg)
    assert "16 images, 16×16 grey" in data
    assert "unconditional: the data has no class labels" in data
    assert run.startswith("train: ") and "2 steps at batch" in run and "resuming" not in run


def test_classes_and_the_reasons_for_none_are_named(images, tmp_path, capsys):
    root = images("classes")
    data, _ = start_lines(capsys, tiny_run(root, tmp_path / "a"))
    assert data.endswith(", 2 classes")
    off = tiny_run(root, tmp_path / "b", **{"data.conditional": False})
    asked = "unconditional (as asked: data.conditional=false, or model.num_classes=0)"
    assert start_lines(capsys, off)[0].endswith(asked)
    none = tiny_run(root, tmp_path / "c", **{"data.num_classes": 0})
    assert start_lines(capsys, none)[0].endswith("unconditional (data.num_classes=0)")


def test_a_colour_folder_packed_grey_says_so_a_packed_set_does_not(images, tmp_path, capsys):
    root = images("flat")
    data, _ = start_lines(capsys, tiny_run(root, tmp_path / "a"))  # fmnist-tiny: 1 channel
    assert "packed grey for model.in_channels=1; model.in_channels=3 keeps colour" in data
    packed = tmp_path / "packed"
    prepare(str(root), 16, packed, channels=1)  # grey on purpose: nothing to say
    data, _ = start_lines(capsys, tiny_run(packed, tmp_path / "b"))
    assert "grey, unconditional" in data and "packed grey" not in data


def test_a_resume_names_the_step_it_continues_from(fmnist16, tmp_path, capsys):
    cfg = tiny_run(fmnist16(64), tmp_path / "run")  # 2 steps
    train(cfg, progress=False)
    capsys.readouterr()
    longer = tiny_run(fmnist16(64), tmp_path / "run", **{"optim.steps": 3})
    data, run = start_lines(capsys, longer, resume=str(tmp_path / "run"))
    assert data.endswith(", 10 classes")
    latest = tmp_path / "run" / "latest.pt"
    assert run.endswith(f"3 steps at batch 16 (0.75 epochs), fp32; resuming {latest} at step 2 "
                        "(1 to go)")  # fmt: skip
    train(longer, progress=False, resume=str(tmp_path / "run"))  # nothing left to train
    assert capsys.readouterr().out.startswith("nothing to train: the checkpoint is at step 3")


def test_classes_without_a_training_image_are_named(tmp_path, capsys, monkeypatch):
    """`prepare --limit` keeps the label space, so a cut-short pack trains classes it has no
    image of: the run names them (as `prepare` does)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    packed = tmp_path / "packed"
    prepare("fashion-mnist", 16, packed, split="test", limit=16)  # classes 0..9, some empty
    labels = set(np.load(packed / "labels.npy").tolist())
    empty = sorted(set(range(10)) - labels)
    assert empty  # the first 16 test images miss some of the 10 classes
    train(tiny_run(packed, tmp_path / "run"), progress=False)
    printed = capsys.readouterr().out
    assert f"warning: {len(empty)} of the data's 10 classes have no training image" in printed
    from pixeljit.data.packed import PackedDataset

    names = PackedDataset(packed).class_names
    assert "(" + ", ".join(names[i] for i in empty) + ")" in printed
