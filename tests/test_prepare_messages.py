"""`prepare`'s messages: classes a --limit leaves empty, layouts that do not fit the folder,
flags that do not apply to the source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixeljit.cli import main
from pixeljit.cli.prepare import empty_classes_warning
from pixeljit.data import PackedDataset, prepare
from pixeljit.data import fashion_mnist as fm
from pixeljit.data.prepare import PrepareResult
from pixeljit.data.shards import MANIFEST
from pixeljit.files.idx import write_idx

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 2


def make_classes(root: Path) -> Path:
    """root/{ant,bee,cat}/ with PER_CLASS small solid images each."""
    for label, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 6), (50 * i, 80 * label, 7)).save(path)
    return root


def make_flat(root: Path, count: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (6, 6), (30 * i, 9, 9)).save(root / f"{i}.png")
    return root


FM_LABELS = np.array([3, 1, 4, 1, 5], np.uint8)


def make_fashion_mnist(folder: Path) -> Path:
    """A 5-image Fashion-MNIST test split (labels FM_LABELS) in `folder`."""
    images = np.random.default_rng(1).integers(0, 256, (len(FM_LABELS), 28, 28), dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", FM_LABELS, compress=True)
    return folder


def cli(*argv) -> int:
    return main(["prepare", *map(str, argv)])


# --- 1: a --limit that leaves classes empty ----------------------------------------------------
def test_limit_leaving_classes_empty_keeps_them_declared_and_names_them(tmp_path):
    src = make_classes(tmp_path / "src")
    result = prepare(src, 4, tmp_path / "p", limit=PER_CLASS + 1)  # all of ant, one bee
    assert result.empty_classes == ["cat"] and result.num_classes == len(CLASSES)
    data = PackedDataset(result.out_dir)
    assert data.class_names == list(CLASSES)  # the label space is the full set's
    np.testing.assert_array_equal(data.labels, [0, 0, 1])
    manifest = json.loads((result.out_dir / MANIFEST).read_text())
    assert manifest["class_counts"] == [PER_CLASS, 1, 0]
    enough = prepare(src, 4, tmp_path / "q", limit=2 * PER_CLASS + 1)
    assert enough.empty_classes == []


def test_cli_warns_about_classes_a_limit_left_empty(tmp_path, capsys):
    src = make_classes(tmp_path / "src")
    assert cli(src, "--size", 4, "--out", tmp_path / "p", "--limit", PER_CLASS) == 0
    captured = capsys.readouterr()
    assert "in 3 classes" in captured.out
    assert "warning: 2 of 3 classes got no images: bee, cat." in captured.err
    assert "larger --limit" in captured.err and "--skip-bad" not in captured.err
    assert cli(src, "--size", 4, "--out", tmp_path / "q", "--limit", 2 * PER_CLASS + 1) == 0
    assert "warning:" not in capsys.readouterr().err


def test_cli_warns_for_fashion_mnist_classes_a_limit_left_empty(tmp_path, capsys):
    idx = make_fashion_mnist(tmp_path / "idx")
    argv = ["fashion-mnist", "--size", 8, "--split", "test", "--data-dir", idx]
    assert cli(*argv, "--out", tmp_path / "p", "--limit", 2) == 0  # labels 3 and 1 only
    err = capsys.readouterr().err
    kept = {fm.CLASS_NAMES[3], fm.CLASS_NAMES[1]}
    empty = [name for name in fm.CLASS_NAMES if name not in kept]
    named = f"{len(empty)} of {len(fm.CLASS_NAMES)} classes got no images: {', '.join(empty)}."
    assert named in err
    assert PackedDataset(tmp_path / "p").num_classes == len(fm.CLASS_NAMES)


def test_classes_emptied_by_skip_bad_name_that_cause(tmp_path, capsys):
    src = make_classes(tmp_path / "src")
    for bad in (src / "cat").iterdir():
        bad.write_bytes(b"not an image")
    assert cli(src, "--size", 4, "--out", tmp_path / "p", "--skip-bad") == 0
    err = capsys.readouterr().err
    assert "1 of 3 classes got no images: cat." in err
    assert "--skip-bad may have skipped every image" in err and "--limit" not in err


def test_empty_classes_warning_lists_a_long_tail_by_count(tmp_path):
    names = [f"c{k}" for k in range(13)]
    result = PrepareResult(tmp_path, 1, (3, 4, 4), 14, 0.0, empty_classes=names)
    text = empty_classes_warning(result, limit=1)
    assert text.startswith("13 of 14 classes got no images: c0, c1,")
    assert "c9 and 3 more." in text and "c10" not in text
    assert empty_classes_warning(PrepareResult(tmp_path, 1, (3, 4, 4), 1, 0.0), 1) is None


# --- 2: a layout that does not fit the folder --------------------------------------------------
def test_classes_layout_on_a_flat_folder_names_the_fix(tmp_path, capsys):
    src = make_flat(tmp_path / "src")
    with pytest.raises(ValueError, match="holds 3 images directly but no class sub-folders") as err:
        prepare(src, 4, tmp_path / "p", layout="classes")
    assert "--layout flat" in str(err.value) and "--layout auto" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written
    assert cli(src, "--size", 4, "--out", tmp_path / "p", "--layout", "classes") == 2
    assert "no class sub-folders" in capsys.readouterr().err
    assert prepare(src, 4, tmp_path / "p", layout="auto").count == 3  # the fix works


def test_classes_layout_on_an_empty_folder_still_says_no_images(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        prepare(tmp_path / "src", 4, tmp_path / "p", layout="classes")


def test_flat_layout_on_class_folders_notes_the_lost_labels(tmp_path, capsys):
    src = make_classes(tmp_path / "src")
    assert cli(src, "--size", 4, "--out", tmp_path / "p", "--layout", "flat") == 0
    captured = capsys.readouterr()
    assert f"packed {len(CLASSES) * PER_CLASS} images of 3x4x4 in 1 class" in captured.out
    assert "note: --layout flat packed the images in the 3 sub-folder(s)" in captured.err
    assert "--layout classes" in captured.err
    assert not PackedDataset(tmp_path / "p").conditional
    assert cli(src, "--size", 4, "--out", tmp_path / "q") == 0  # auto: classes, no note
    assert "note:" not in capsys.readouterr().err


# --- 3: flags that do not apply to the source --------------------------------------------------
@pytest.mark.parametrize(
    ("source", "option", "message"),
    [
        ("fashion-mnist", {"num_workers": 4}, r"num_workers \(--workers\) only applies to image"),
        ("emoji", {"num_workers": 2}, r"num_workers \(--workers\) only applies to image folders"),
        (
            "fashion-mnist",
            {"skip_bad": True},
            r"skip_bad \(--skip-bad\) only applies to image folders and emoji, not fashion-mnist",
        ),
    ],
)
def test_flags_for_other_sources_are_refused(tmp_path, source, option, message):
    with pytest.raises(ValueError, match=message):
        prepare(source, 8, tmp_path / "p", limit=1, **option)
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_cli_refuses_workers_and_skip_bad_for_fashion_mnist(tmp_path, capsys):
    idx = make_fashion_mnist(tmp_path / "idx")
    argv = ["fashion-mnist", "--size", 8, "--split", "test", "--data-dir", idx]
    assert cli(*argv, "--out", tmp_path / "p", "--workers", 4) == 2
    assert "--workers) only applies to image folders" in capsys.readouterr().err
    assert cli(*argv, "--out", tmp_path / "p", "--skip-bad") == 2
    assert "--skip-bad) only applies to image folders and emoji" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert cli(*argv, "--out", tmp_path / "p", "--workers", 0) == 0  # the defaults pass


def test_skip_bad_and_workers_still_pass_where_they_apply(tmp_path):
    assert prepare("emoji", 8, tmp_path / "e", limit=1, skip_bad=True).count == 1
    src = make_classes(tmp_path / "src")
    result = prepare(src, 4, tmp_path / "f", skip_bad=True, num_workers=2)
    assert result.count == len(CLASSES) * PER_CLASS and result.empty_classes == []


def test_a_pack_larger_than_the_free_disk_is_refused_before_the_first_shard(tmp_path, monkeypatch):
    """60,000 Fashion-MNIST images at 4096 px (1 TB) were packed until the disk or the memory
    ran out: 1024 of them per batch were 17 GB, and the killed packer left 17 GB behind."""
    import collections
    import importlib

    from pixeljit.data.source import BATCH_BYTES, batch_images

    prepare_module = importlib.import_module("pixeljit.data.prepare")  # the module, not prepare()
    assert batch_images(1024, 1, 28) == 1024
    assert batch_images(1024, 1, 4096) == BATCH_BYTES // 4096**2 == 16
    assert batch_images(256, 3, 8192) == 1  # never none
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare_module.shutil, "disk_usage", lambda path: usage(0, 0, 10_000))
    out = tmp_path / "packed"
    with pytest.raises(ValueError, match=r"packing 100 images of 1×16×16 needs 25\.0 KiB, but "
                       r".* has 9\.8 KiB free: pack at a smaller size"):  # fmt: skip
        prepare_module.prepare("fashion-mnist", 16, out, split="test", limit=100)
    assert not out.exists() and not any(tmp_path.iterdir())  # the staging folder went too
    monkeypatch.undo()
    assert prepare_module.prepare("fashion-mnist", 16, out, split="test", limit=100).count == 100
