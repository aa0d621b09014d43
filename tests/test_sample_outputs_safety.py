"""`pixeljit sample` never writes a result where it silently spoils another: a grid or .npz
inside a folder --out (the folder is one image set), a --labels number that is also another
class's name, and --overwrite over a folder holding images or a labels.csv it did not write."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import pixeljit
from cli_errors import _parsers, check_flags, cli_error
from conftest import TINY_NET
from pixeljit.cli import main
from pixeljit.cli.checks import check_no_stale_pngs

FAST = ["--steps", "1", "--method", "euler", "--device", "cpu"]
TEXT_SORTED = sorted(str(k) for k in range(1, 11))  # an image folder's classes 1..10: '1', '10', …


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a checkpoint fails the test: the refusals must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the outputs were checked")

    monkeypatch.setattr("pixeljit.cli.sample.load_trained", refuse)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(numbered: 10 classes named as an image folder of 1..10 sorts them, padded: TINY_NET's 3
    classes named 01, 02, 03)."""
    import dataclasses

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    numbered, padded = folder / "numbered.safetensors", folder / "padded.safetensors"
    ten = pixeljit.JiT(dataclasses.replace(TINY_NET, num_classes=10))
    pixeljit.save_safetensors(ten, numbered, class_names=TEXT_SORTED)
    pixeljit.save_safetensors(pixeljit.JiT(TINY_NET), padded, class_names=["01", "02", "03"])
    return numbered, padded


def _help(verb: str, dest: str) -> str:
    return next(a.help for a in _parsers()[verb]._actions if a.dest == dest)


# ------------------------------------------------------------ 1: a file --out in a folder --out


@pytest.mark.parametrize(
    "folder, file",
    [("f1", "f1/000000.png"), ("f1/", "f1/grid.png"), ("f1", "f1/deep/s.npz"),
     ("real", "link/grid.png")],
)  # fmt: skip
def test_a_grid_or_npz_inside_a_folder_out_is_refused(
    tiny_file, tmp_path, no_loading, capsys, folder, file
):
    """`--out f1 --out f1/000000.png` wrote the grid as image 0 of the set (labels.csv still
    listing it as a sample): refused before anything is loaded or written, naming both."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    folder, file = str(tmp_path / folder), str(tmp_path / file)
    for order in ([folder, file], [file, folder]):
        err = cli_error(capsys, ["sample", str(tiny_file), *FAST, "--num", "4",
                                 *[a for path in order for a in ("--out", path)]])  # fmt: skip
        assert f"--out {file} lies inside the folder --out {folder.rstrip('/')}" in err, err
        assert "write it outside the folder" in err
    assert "resolves to" in err if "link" in file else "resolves to" not in err
    assert not (tmp_path / "f1").exists() and not any((tmp_path / "real").iterdir())


def test_a_folder_out_inside_a_file_out_is_refused(tiny_file, tmp_path, no_loading, capsys):
    grid = tmp_path / "g.png"
    err = cli_error(capsys, ["sample", str(tiny_file), *FAST, "--out", str(grid), "--out",
                             f"{grid}/pngs/"])  # fmt: skip
    assert f"--out {grid}/pngs lies inside --out {grid}, where a file goes" in err
    assert not grid.exists()


def test_outputs_apart_for_eval(tiny_file, tmp_path, capsys):
    """eval's --out JSON may sit inside --save-images (`inside_ok`: nothing reads or writes a
    .json there), but never be that folder or on the way to it (it failed after generating and
    scoring every image: 'Is a directory')."""
    from pixeljit.cli.checks import check_outputs_apart  # (a name new with this check)

    argv = ["eval", "--checkpoint", str(tiny_file), "--num", "4", "--metrics", "fd",
            "--ref", "fashion-mnist", "--save-images", f"{tmp_path}/r.json/",
            "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 2
    assert "and the folder --save-images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

    pngs = tmp_path / "pngs"
    check_outputs_apart([("--out", pngs / "r.json")], [("--save-images", pngs)], inside_ok=True)
    with pytest.raises(ValueError, match="are the same path"):
        check_outputs_apart([("--out", tmp_path / "r.json")],
                            [("--save-images", tmp_path / "r.json")], inside_ok=True)  # fmt: skip
    with pytest.raises(ValueError, match="lies inside --out"):
        check_outputs_apart([("--out", pngs)], [("--save-images", pngs / "sub")], inside_ok=True)


# ------------------------------------------------------------ 2: numbers that are class names


def test_a_number_that_is_another_class_name_is_refused(models, tmp_path, capsys):
    """Classes 1..10 from an image folder are sorted '1', '10', '2', …: `--labels 1` drew the
    class named '10' (number 1) for a user meaning the class named '1'."""
    numbered, padded = models
    npz = tmp_path / "s.npz"
    base = ["sample", str(numbered), *FAST, "--out", str(npz)]
    err = cli_error(capsys, [*base, "--labels", "1"])
    assert ("--labels 1 is ambiguous: '1' is the name of class number 0, and class number 1 is "
            "named '10': write name:1 for the class named '1', or number:1 for class number 1"
            ) in err  # fmt: skip
    err = cli_error(capsys, [*base, "--labels", "10"])  # no class number 10: only the name
    assert ("--labels 10: class number 10 is outside [0, 10) for this model; '10' is the name "
            "of class number 1: write name:10 for the class named '10'") in err  # fmt: skip
    assert "number:10" not in err and "ambiguous" not in err
    err = cli_error(capsys, ["sample", str(padded), *FAST, "--labels", "01", "--out", str(npz)])
    assert "'01' is the name of class number 0, and class number 1 is named '02'" in err
    assert not npz.exists()
    # each reading picked explicitly; a number naming its own class ('5' is number 5) is fine
    labels = ["name:1", "number:1", "5", "name:10", "0"]
    assert main([*base, "--labels", *labels, "--num", "5"]) == 0
    capsys.readouterr()
    assert np.load(npz)["labels"].tolist() == [0, 1, 5, 1, 0]
    err = cli_error(capsys, [*base, "--labels", "number:x", "--overwrite"])
    assert "--labels number:x: 'x' is not a class number: write number:N" in err
    check_flags("sample", err)
    text = _help("sample", "labels")
    assert "number:N" in text and "name:NAME" in text and "ambiguous" in text


# ------------------------------------------------------------ 3: --overwrite over a user's files


def test_overwrite_refuses_a_folder_of_the_users_images(tiny_file, tmp_path, no_loading, capsys):
    """`--out photos --overwrite` wrote the new set beside the user's holiday.png (which
    `eval --images photos` then scored with it) and replaced their labels.csv."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("holiday.png", "000001.png"):
        (photos / name).write_bytes(b"precious")
    (photos / "labels.csv").write_text("my own labels")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    argv = ["sample", str(tiny_file), *FAST, "--num", "4", "--out", str(photos), "--overwrite"]
    err = cli_error(capsys, argv)
    assert f"--out {photos} already holds labels.csv, which pixeljit did not write" in err
    assert "1 image pixeljit did not write (holiday.png)" in err
    assert "choose an empty or new folder" in err
    check_flags("sample", err)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    text = _help("sample", "overwrite")
    assert "numbered PNGs" in text and "labels.csv" in text and "other images" in text


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_other_image_files_are_refused_with_or_without_overwrite(
    tiny_file, tmp_path, no_loading, capsys, overwrite
):
    """Every suffix the eval folder reader reads counts, in any case (the old check looked for
    *.png only, so a folder of JPEGs took a new set without --overwrite)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["a.JPG", "b.webp", "c.PNG", "d.jpeg", "e.bmp"]
    for name in names:
        (photos / name).write_bytes(b"precious")
    (photos / "notes.txt").write_text("not an image: left alone")
    argv = ["sample", str(tiny_file), *FAST, "--num", "2", "--out", str(photos), *overwrite]
    err = cli_error(capsys, argv)
    assert "5 images pixeljit did not write (a.JPG, b.webp, c.PNG, …)" in err, err
    err = cli_error(capsys, ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--num",
                             "10", "--save-images", str(photos), *overwrite])  # fmt: skip
    assert f"--save-images {photos} already holds 5 images pixeljit did not write" in err
    assert sorted(p.name for p in photos.iterdir()) == sorted([*names, "notes.txt"])


def test_overwrite_still_replaces_an_earlier_set(tiny_file, tmp_path, capsys):
    """What --overwrite is for is kept: a set pixeljit wrote (numbered PNGs and its labels.csv,
    a 7-digit number past 999999.png included) is replaced; a user's file beside it is not."""
    pngs = tmp_path / "pngs"
    argv = ["sample", str(tiny_file), *FAST, "--num", "3", "--out", str(pngs)]
    assert main(argv) == 0
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(pngs)) == ["000000.png", "000001.png", "000002.png", "labels.csv"]
    (pngs / "1000000.png").write_bytes(b"")  # image 1,000,000 of a larger set: ours, but stale
    with pytest.raises(ValueError, match="holds 1 numbered PNG beyond the 3 new ones"):
        check_no_stale_pngs("--out", pngs, 3)
