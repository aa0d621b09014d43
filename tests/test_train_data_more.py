"""Training data at the edges: a data root whose name is not valid UTF-8 (Linux names are bytes)
is packed, cached and trained on like any other; and a resume on an image folder of other
classes than the run's is refused before the folder is packed (minutes for a large set)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cli_errors import cli_error
from conftest import noise_pngs
from pixeljit.cli import main
from pixeljit.data.open import cache_entry, open_dataset
from pixeljit.data.prepare import prepare
from pixeljit.files.cache import CACHE_ENV

SIDE = 16  # the fmnist-tiny preset's image size (grey)


def bytes_path(parent: Path, name: bytes) -> Path:
    """`parent / name` for a name of raw bytes, as Python holds it (`os.fsdecode`)."""
    return Path(os.fsdecode(bytes(parent) + b"/" + name))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def class_folder(root: Path, classes: list[str], per_class: int = 4) -> Path:
    for name in classes:
        noise_pngs(root / name, per_class, SIDE)
    return root


# --- a data root whose name is not valid UTF-8 -----------------------------------------------


def test_a_non_utf8_data_root_is_packed_once_into_its_own_cache_entry(tmp_path, cache):
    """Naming the cache entry hashed the path's text, which such a name cannot encode: every
    open failed with UnicodeEncodeError."""
    root = class_folder(bytes_path(tmp_path, b"caf\xe9"), ["a", "b"], per_class=2)
    data = open_dataset(str(root), 8, 1)
    assert (len(data), data.class_names) == (4, ["a", "b"])
    entry = data.folder
    assert entry == cache_entry(str(root), 8, 1, None) and entry.parent.parent == cache
    entry.name.encode("utf-8")  # the cache's folder names stay text
    assert data.manifest["source"]["root"] == str(tmp_path / "caf\\xe9")  # its bytes, escaped
    stamp = (entry / "manifest.json").stat().st_mtime_ns
    assert len(open_dataset(str(root), 8, 1)) == 4
    assert (entry / "manifest.json").stat().st_mtime_ns == stamp  # unchanged: reused
    other = bytes_path(tmp_path, b"caf\xe8")  # the same text once escaped: its own entry
    assert cache_entry(str(other), 8, 1, None) != entry


def test_a_flat_folder_named_in_non_utf8_bytes_is_packed(tmp_path):
    """`prepare` refused a root whose name is not valid UTF-8 ("rename it"): the manifest
    records it escaped, and a flat folder's one class is named so."""
    root = bytes_path(tmp_path, b"\xffotos")
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (6, 6), (40 * k, 0, 0)).save(root / f"{k}.png")
    result = prepare(str(root), 4, tmp_path / "out")
    assert (result.count, result.num_classes) == (3, 1)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text("utf-8"))
    assert manifest["class_names"] == ["\\xffotos"]
    assert manifest["source"]["root"] == str(tmp_path / "\\xffotos")


def test_a_split_folder_named_in_non_utf8_bytes_is_packed_and_read_back(tmp_path, cache):
    """The manifest's JSON could not hold the split's name: the pack failed at its end."""
    split = os.fsdecode(b"tr\xe9")
    root = tmp_path / "root"
    class_folder(root / split, ["a", "b"], per_class=1)
    data = open_dataset(str(root), 8, 1, split=split)
    assert len(data) == 2 and data.manifest["source"]["split"] == "tr\\xe9"
    assert len(open_dataset(str(data.folder), 8, 1, split=split)) == 2  # the split it holds
    with pytest.raises(ValueError, match=r"split 'train' was asked for"):
        open_dataset(str(data.folder), 8, 1, split="train")


def train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--no-progress",
            "--preset", "fmnist-tiny", "--batch-size", "8",
            "--set", "run.device=cpu", "--set", "run.tensorboard=false",
            "--set", "sample.steps=1", "--set", "sample.per_class=1", *extra]  # fmt: skip


def test_train_on_a_non_utf8_data_root(tmp_path, cache, capsys):
    root = class_folder(bytes_path(tmp_path, b"caf\xe9"), ["a", "b"])
    assert main(train_args(root, tmp_path / "run", "--steps", "1")) == 0
    out = capsys.readouterr().out
    assert f"data: {tmp_path / 'caf'}\\xe9 — 8 images" in out and "2 classes" in out


# --- a resume on an image folder of other classes --------------------------------------------


@pytest.fixture
def run_ab(tmp_path, cache, capsys) -> Path:
    """A 1-step fmnist-tiny run on an image folder of classes a and b (packed into `cache`)."""
    data = class_folder(tmp_path / "one", ["a", "b"])
    assert main(train_args(data, tmp_path / "run", "--steps", "1")) == 0
    capsys.readouterr()
    return tmp_path / "run"


def cache_listing(cache: Path) -> list[str]:
    """Every entry of the cache's packs, hidden ones (staging folders) included."""
    return sorted(os.listdir(cache / "packed"))


@pytest.mark.parametrize(
    ("classes", "refusal"),
    [
        (["a", "b", "c"], "model.num_classes: checkpoint 2 vs now 3"),  # a recipe change
        (["a", "c"], "has classes ['a', 'c'], but the run was trained on classes ['a', 'b']"),
    ],
)
def test_resume_on_other_classes_is_refused_before_packing(
    run_ab, tmp_path, cache, capsys, classes, refusal
):
    """The new folder was packed whole (into the cache) before the refusal of its classes."""
    before = cache_listing(cache)
    assert len(before) == 1  # the run's own data
    other = class_folder(tmp_path / "two", classes)
    err = cli_error(capsys, ["train", "--resume", str(run_ab), "--data", str(other),
                             "--steps", "2", "--no-progress"])  # fmt: skip
    assert cache_listing(cache) == before  # no pack, no staging folder
    assert not cache_entry(str(other), SIDE, 1, None).exists()
    assert "packing" not in capsys.readouterr().out
    assert refusal in err


def test_renamed_classes_resume_with_allow_inexact_resume(run_ab, tmp_path, cache, capsys):
    """Renamed classes are a change of data, which --allow-inexact-resume lets through: the early
    check refuses only what the checks after packing would."""
    other = class_folder(tmp_path / "two", ["a", "c"])
    argv = ["train", "--resume", str(run_ab), "--data", str(other), "--steps", "2",
            "--no-progress", "--allow-inexact-resume"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming inexactly" in out and "the training data" in out
    assert cache_entry(str(other), SIDE, 1, None).is_dir()


def test_folder_class_names_are_those_of_the_scan(tmp_path):
    from pixeljit.data.folders import folder_class_names, scan_image_folder

    classes = class_folder(tmp_path / "classes", ["b", "a", "c"], per_class=1)
    flat = noise_pngs(bytes_path(tmp_path, b"fl\xe4t"), 2, 4)
    split = class_folder(tmp_path / "split" / "train", ["x", "y"], per_class=1).parent
    for root, which in ((classes, None), (flat, None), (split, "train")):
        names = folder_class_names(root, which)
        assert names == scan_image_folder(root, which).class_names
    assert folder_class_names(classes) == ["a", "b", "c"]
    assert folder_class_names(flat) == ["fl\\xe4t"]
    with pytest.raises(ValueError, match="holds split folders"):
        folder_class_names(split)  # the scan's own refusal, without walking the images
