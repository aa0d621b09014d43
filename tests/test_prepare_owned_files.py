"""`prepare --overwrite` deletes only files `prepare` itself writes: a manifest edited to list a
user's file (the probe: "thesis.txt" under "shards") makes the folder refused, and nothing in it
is deleted. The old code deleted any plain name the manifest listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pixeljit.cli import main
from pixeljit.data import PackedDataset
from pixeljit.data.shards import LABELS_FILE, MANIFEST, SHARD_PATTERN

SIZE, LIMIT = 16, 10
THESIS = "four years of work\n"


def prepare_cli(out: Path, *extra, size: int = SIZE) -> int:
    argv = ["prepare", "fashion-mnist", "--split", "test", "--size", str(size)]
    return main([*argv, "--limit", str(LIMIT), "--out", str(out), *map(str, extra)])


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A pack `prepare` wrote: 10 images in 3 shards (4, 4, 2), labels, manifest."""
    out = tmp_path_factory.mktemp("genuine") / "pack"
    assert prepare_cli(out, "--images-per-shard", 4) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def hostile_pack(genuine: Path, tmp_path: Path, name: str, where: str = "shards") -> Path:
    """A copy of `genuine` whose manifest also lists the user's file `name` (which is there)."""
    out = tmp_path / "out"
    shutil.copytree(genuine, out)
    (out / name).write_text(THESIS)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = {"file": name, "count": 0, "bytes": len(THESIS), "sha256": "0" * 64}
    if where == "shards":
        manifest["shards"].append(entry)
    else:  # the labels entry names the user's file; the real labels.npy goes unlisted
        (out / LABELS_FILE).unlink()
        manifest["labels"]["file"] = name
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def assert_refused_untouched(out: Path, before: dict, name: str, capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert (out / name).read_text() == THESIS  # the old code deleted it
    assert snapshot(out) == before  # nothing else in the folder changed either
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging left behind
    assert err.count("\n") == 1 and err.startswith("pixeljit prepare: error: ")
    return err


# --- (a) the probe's case ----------------------------------------------------------------------
def test_user_file_listed_in_the_manifest_survives_prepare_overwrite(genuine, tmp_path, capsys):
    out = hostile_pack(genuine, tmp_path, "thesis.txt")
    before = snapshot(out)
    rc = prepare_cli(out, "--overwrite")
    err = assert_refused_untouched(out, before, "thesis.txt", capsys, rc)
    assert f"output folder {out}: its {MANIFEST} lists 'thesis.txt'" in err
    assert "a file pixeljit never writes" in err
    assert "not a packed set written by pixeljit and nothing in it is replaced" in err
    assert (
        f"choose another output folder, or move 'thesis.txt' and your other files out of {out}"
        in err
    )


# --- (b) a genuine pack is still replaced ------------------------------------------------------
def test_overwrite_still_replaces_a_genuine_pack(genuine, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(genuine, out)
    old_names = sorted(p.name for p in out.iterdir())
    assert old_names == [*(SHARD_PATTERN.format(k) for k in range(3)), LABELS_FILE, MANIFEST]
    assert prepare_cli(out, "--overwrite", size=8) == 0, capsys.readouterr().err
    # 3 shards at 16 px -> 1 shard at 8 px: the old shards 1 and 2 are gone, not left over
    assert sorted(p.name for p in out.iterdir()) == [SHARD_PATTERN.format(0), LABELS_FILE, MANIFEST]
    dataset = PackedDataset(out, verify=True)
    assert dataset.image_shape == (1, 8, 8) and len(dataset) == LIMIT
    assert np.array_equal(dataset.labels, PackedDataset(genuine).labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing hidden left behind


# --- (c) other hostile names -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("..thesis.txt", "shards"),  # starts with '..', yet a plain name to the old check
        (".thesis.txt", "shards"),  # a hidden name
        ("notes\\thesis.txt", "shards"),  # a Windows separator: one plain name on POSIX
        ("images-1.npy", "shards"),  # shard-like, but not SHARD_PATTERN's name
        ("thesis.npy", "labels"),  # the labels entry naming a user's file
    ],
)
def test_manifest_names_prepare_never_writes_make_overwrite_refuse(
    genuine, tmp_path, capsys, name, where
):
    out = hostile_pack(genuine, tmp_path, name, where)
    before = snapshot(out)
    rc = prepare_cli(out, "--overwrite")
    err = assert_refused_untouched(out, before, name, capsys, rc)
    assert f"output folder {out}: its {MANIFEST} lists {name!r}" in err
    assert "choose another output folder" in err


def test_a_shard_listed_under_another_shards_number_is_refused(genuine, tmp_path, capsys):
    """Only the very name `prepare` gives shard k is the pack's: the manifest listing shard 2's
    file first is not one pixeljit wrote (its names are not trusted for deletion)."""
    out = tmp_path / "out"
    shutil.copytree(genuine, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"].reverse()
    (out / MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(out)
    assert prepare_cli(out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"its {MANIFEST} lists {SHARD_PATTERN.format(2)!r}" in err
    assert snapshot(out) == before
    with pytest.raises(ValueError, match=r"file name 'images-00002.npy' is not one pixeljit"):
        PackedDataset(out)


def test_manifest_paths_with_separators_stay_refused(genuine, tmp_path, capsys):
    """A name with '/' or '..' was refused already (not a plain name); still, nothing goes."""
    (tmp_path / "sub").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text(THESIS)
    for name in ("sub/thesis.txt", "../victim.txt"):
        out = tmp_path / "sub" / "out"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(genuine, out)
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["shards"].append({"file": name, "count": 0, "bytes": 1, "sha256": "0" * 64})
        (out / MANIFEST).write_text(json.dumps(manifest))
        before = snapshot(out)
        assert prepare_cli(out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"output folder {out}" in err and f"file name {name!r} is not a plain name" in err
        assert "choose another output folder" in err
        assert snapshot(out) == before and victim.read_text() == THESIS
