"""What `pixeljit sample` tells a new user: its help texts, the wording of its range and path
errors, class names as --labels, the grid's columns and which error comes first."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
from PIL import Image

import pixeljit
from cli_errors import _parsers, check_flags, cli_error
from conftest import REPO_ROOT, TINY_NET
from pixeljit.checkpoints.run import MILESTONE_PATTERN
from pixeljit.cli import build_parser, main
from pixeljit.cli.checks import MAX_IMAGES, MAX_SEED, check_int, check_no_stale_pngs, check_seed
from pixeljit.cli.sample import grid_layout

NAMES = ("Sneaker", "Bag", "Ankle boot")  # TINY_NET has 3 classes
FAST = ["--steps", "1", "--method", "euler", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """TINY_NET saved with class names and without."""
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET)
    folder = tmp_path_factory.mktemp("models")
    named, plain = folder / "named.safetensors", folder / "plain.safetensors"
    pixeljit.save_safetensors(net, named, class_names=list(NAMES))
    pixeljit.save_safetensors(net, plain)
    return named, plain


def _verb_help(verb: str) -> str:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return next(a.help for a in sub._choices_actions if a.dest == verb)


def _arg_help(verb: str, dest: str) -> str:
    return next(a.help for a in _parsers()[verb]._actions if a.dest == dest)


# ------------------------------------------------------------------ 1: help texts


def test_sample_help_lists_every_checkpoint_kind_it_loads():
    for text in (_verb_help("sample"), _arg_help("sample", "checkpoint")):
        assert "Hub folder" in text and "hf://org/name[@rev]" in text, text
        assert ".safetensors" in text and "authors'" in text, text


def test_sample_out_help_says_an_unconditional_npz_has_no_labels():
    text = _arg_help("sample", "out")
    assert "unconditional" in text and "only 'arr_0'" in text, text


# ------------------------------------------------------------------ 2: inclusive upper bounds


def test_integer_bounds_are_worded_inclusively(models, capsys):
    err = cli_error(capsys, ["sample", str(models[0]), "--num", str(MAX_IMAGES + 1)])
    assert f"--num must be ≥ 1 and ≤ {MAX_IMAGES:,}, got {MAX_IMAGES + 1}" in err
    assert "<" not in err
    check_int("--num", MAX_IMAGES, 1, MAX_IMAGES + 1)  # the bound named is allowed: unchanged
    with pytest.raises(ValueError, match=f"≤ {MAX_SEED - 1:,}, got {MAX_SEED}$"):
        check_seed("--seed", MAX_SEED)  # an exclusive `high` from a caller, worded inclusively
    check_seed("--seed", MAX_SEED - 1)


# ------------------------------------------------------------------ 3: singular and plural


def test_stale_png_count_is_singular_for_one(tmp_path):
    (tmp_path / "000001.png").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        check_no_stale_pngs("--out", tmp_path, 1)
    assert "holds 1 numbered PNG beyond the 1 new one (e.g. 000001.png)" in str(err.value)


# ------------------------------------------------------------------ 4: --ncols beyond --num


def test_ncols_is_capped_at_the_number_of_images(models, tmp_path, capsys):
    wide, square = tmp_path / "wide.png", tmp_path / "square.png"
    base = ["sample", str(models[0]), *FAST, "--num", "2"]
    assert main([*base, "--ncols", "100", "--out", str(wide)]) == 0
    assert main([*base, "--ncols", "2", "--out", str(square)]) == 0
    capsys.readouterr()
    with Image.open(wide) as a, Image.open(square) as b:
        assert a.size == b.size  # one row of 2 cells, not 100 mostly empty ones
    assert grid_layout([0, 1], 2, 100) == (2, None)
    assert grid_layout([0, 0], 2, 100) == (2, ["class 0"])
    assert "at most the number of images" in _arg_help("sample", "ncols")


# ------------------------------------------------------------------ 6: dotted folder names


def test_dotted_folder_name_message_and_trailing_slash(models, tmp_path, capsys):
    folder = tmp_path / "run.v1"
    err = cli_error(capsys, ["sample", str(models[0]), *FAST, "--out", str(folder)])
    assert f"write {folder}/ (or create it first)" in err
    check_flags("sample", err)
    assert not folder.exists()
    assert main(["sample", str(models[0]), *FAST, "--num", "2", "--out", f"{folder}/"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "labels.csv"]


# ------------------------------------------------------------------ 7: the input first


def test_missing_checkpoint_is_reported_before_an_existing_output(tmp_path, capsys):
    out = tmp_path / "samples.png"
    out.write_bytes(b"not mine to replace")
    err = cli_error(capsys, ["sample", str(tmp_path / "nonexist"), "--out", str(out)])
    assert "checkpoint" in err and "nonexist does not exist" in err
    assert "already exists" not in err
    assert out.read_bytes() == b"not mine to replace"


# ------------------------------------------------------------------ 8: class names as --labels


def test_labels_take_class_names_in_any_case(models, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    argv = ["sample", str(models[0]), *FAST, "--labels", "sneaker", "ANKLE BOOT", "1",
            "--num", "3", "--out", str(npz)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert np.load(npz)["labels"].tolist() == [0, 2, 1]


def test_unknown_class_name_lists_the_models_names(models, tmp_path, capsys):
    out = ["--out", str(tmp_path / "g.png")]
    err = cli_error(capsys, ["sample", str(models[0]), *FAST, "--labels", "Sandal", *out])
    assert "'Sandal' is not a class name" in err
    assert all(repr(name) in err for name in NAMES), err
    check_flags("sample", err)
    err = cli_error(capsys, ["sample", str(models[1]), *FAST, "--labels", "Sneaker", *out])
    assert "records no class names" in err and "class numbers" in err
    err = cli_error(capsys, ["sample", str(models[0]), *FAST, "--labels", "3", *out])
    assert "outside [0, 3)" in err  # the range check of numbers is kept
    err = cli_error(capsys, ["sample", str(models[0]), *FAST, "--labels", "-1", *out])
    assert "--labels must be ≥ 0, got -1" in err
    assert not (tmp_path / "g.png").exists()


# ------------------------------------------------------------------ 10: README milestone names


def test_readme_names_milestones_as_they_are_written():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "step-N.pt" not in readme
    example = MILESTONE_PATTERN.format(step=20)
    assert example in readme and re.fullmatch(r"step-0{7}20\.pt", example)


# ------------------------------------------------------------------ 7: labels.csv of a folder


def test_an_unconditional_set_never_leaves_an_earlier_sets_labels_csv(models, tmp_path, capsys):
    """A folder of PNGs from a class-conditional model holds labels.csv; an unconditional set
    written over it with --overwrite writes none, so the old file would describe new images:
    refused before any sampling, the folder left as it was."""
    import dataclasses

    folder = tmp_path / "pngs"
    argv = ["sample", str(models[0]), *FAST, "--labels", "0", "1", "--num", "2"]
    assert main([*argv, "--out", str(folder)]) == 0
    listing = (folder / "labels.csv").read_text()
    assert listing.splitlines()[1:] == [f"000000.png,0,{NAMES[0]}", f"000001.png,1,{NAMES[1]}"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    uncond = tmp_path / "uncond.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(dataclasses.replace(TINY_NET, num_classes=0)), uncond)
    argv = ["sample", str(uncond), *FAST, "--num", "2", "--cfg", "1", "--out", str(folder)]
    capsys.readouterr()
    err = cli_error(capsys, [*argv, "--overwrite"])
    assert "holds labels.csv from an earlier class-conditional set" in err
    assert f"remove {folder / 'labels.csv'} first" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (folder / "labels.csv").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]
