"""`prepare`'s output folder: never the source, overwrite replaces only our own packs, an
unwritable output fails before any work, every `pixeljit prepare` argument is validated."""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import dead_pid
from pixeljit.cli import build_parser, main
from pixeljit.data import PackedDataset, prepare, write_stream
from pixeljit.data.shards import MANIFEST
from pixeljit.data.source import SourceStream


def make_flat(folder, n: int = 3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 10), (30 * i, 5, 9)).save(folder / f"{i}.png")
    return folder


def snapshot(folder):
    """{relative path: bytes} of every file below `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


# --- the output is never the source ------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside", "contains", "via-link"])
def test_output_overlapping_the_source_is_refused(tmp_path, where):
    src = make_flat(tmp_path / "data" / "src")
    (tmp_path / "link").symlink_to(src)
    source, out = {
        "same": (src, src),
        "inside": (src, src / "packed"),
        "contains": (src, tmp_path / "data"),
        "via-link": (tmp_path / "link", src / "packed"),
    }[where]
    before = snapshot(tmp_path / "data")
    with pytest.raises(ValueError, match="source folder"):
        prepare(source, 4, out, overwrite=True)
    assert snapshot(tmp_path / "data") == before  # the old code replaced the source by a pack


def test_fashion_mnist_data_dir_is_a_source_too(tmp_path):
    with pytest.raises(ValueError, match="source folder"):
        prepare("fashion-mnist", 8, tmp_path / "idx" / "out", data_dir=tmp_path / "idx")


# --- overwrite replaces only a pack pixeljit wrote -----------------------------------------------
def test_overwrite_refuses_a_folder_of_user_files(tmp_path):
    make_flat(tmp_path / "src")
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "sub" / "data.csv").write_text("1,2")
    before = snapshot(out)
    with pytest.raises(ValueError, match=f"no {MANIFEST}"):
        prepare(tmp_path / "src", 4, out, overwrite=True)
    assert snapshot(out) == before
    (out / MANIFEST).write_text(json.dumps({"format": "someone-else", "format_version": 1}))
    with pytest.raises(ValueError, match="someone-else"):
        prepare(tmp_path / "src", 4, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "src"]  # no staging left


def test_overwrite_replaces_only_our_own_pack(tmp_path):
    make_flat(tmp_path / "src")
    out = prepare(tmp_path / "src", 4, tmp_path / "out", images_per_shard=1).out_dir
    (out / "notes.txt").write_text("keep me")
    (out / "extra").mkdir()
    with pytest.raises(ValueError, match=r"2 file\(s\) its manifest does not list \(extra, notes"):
        prepare(tmp_path / "src", 8, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "extra").is_dir()
    assert PackedDataset(out).image_shape == (3, 4, 4)  # the old pack is untouched too
    (out / "notes.txt").unlink()
    (out / "extra").rmdir()
    prepare(tmp_path / "src", 8, out, overwrite=True)  # 3 shards, labels, manifest -> 1 shard
    assert PackedDataset(out, verify=True).image_shape == (3, 8, 8)
    assert sorted(p.name for p in out.iterdir()) == ["images-00000.npy", "labels.npy", MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_a_file_written_into_the_output_while_packing_is_never_deleted(tmp_path):
    """The old code re-checked only 'non-empty' at publish time, then deleted the whole folder."""
    make_flat(tmp_path / "src")
    out = prepare(tmp_path / "src", 4, tmp_path / "out").out_dir

    def batches():
        (out / "written-meanwhile.txt").write_text("a user's file")
        yield np.zeros((2, 1, 4, 4), np.uint8), np.zeros(2, np.int64)

    stream = SourceStream(["all"], False, {"kind": "test"}, batches())
    with pytest.raises(ValueError, match="written-meanwhile.txt"):
        write_stream(stream, out, overwrite=True)
    assert (out / "written-meanwhile.txt").read_text() == "a user's file"
    assert PackedDataset(out).image_shape == (3, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_overwrite_never_follows_a_manifest_out_of_the_folder(tmp_path):
    make_flat(tmp_path / "src")
    out = prepare(tmp_path / "src", 4, tmp_path / "out").out_dir
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"precious")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["labels"]["file"] = "../victim.npy"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain name"):
        prepare(tmp_path / "src", 4, out, overwrite=True)
    assert victim.read_bytes() == b"precious"


def test_output_that_is_a_symlink_is_refused(tmp_path):
    make_flat(tmp_path / "src")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("x")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        prepare(tmp_path / "src", 4, tmp_path / "out", overwrite=True)
    assert (tmp_path / "real" / "keep.txt").read_text() == "x"


# --- the CLI, run as a user would ----------------------------------------------------------------
def prepare_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return {opt for action in sub.choices["prepare"]._actions for opt in action.option_strings}


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["prepare", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_naming_real_flags(err: str) -> None:
    assert err.startswith("pixeljit prepare: error:") and "\n" not in err, err
    named = set(re.findall(r"--[a-z][a-z-]*", err))
    assert named <= prepare_flags(), f"{named - prepare_flags()} are not flags of prepare: {err}"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--size", "9000"], "(--size)"),  # the old code resized to 9000 x 9000 without a word
        (["--size", "8", "--limit", "0"], "--limit"),
        (["--size", "8", "--limit", "-5"], "--limit"),
        (["--size", "8", "--workers", "-3"], "--workers"),  # the old code ran it as 0
        (["--size", "8", "--workers", "100000"], "--workers"),
        (["--size", "8", "--images-per-shard", "0"], "--images-per-shard"),
        (["--size", "8", "--images-per-shard", "100000000000"], "--images-per-shard"),  # old: OOM
    ],
)
def test_cli_numeric_arguments_are_validated(tmp_path, capsys, args, problem):
    make_flat(tmp_path / "src")
    code, err = run_cli(capsys, tmp_path / "src", "--out", tmp_path / "out", *args)
    assert code == 2 and problem in err
    assert_one_line_naming_real_flags(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_bad_paths_give_one_line(tmp_path, capsys):
    make_flat(tmp_path / "src")
    (tmp_path / "a-file").write_text("x")
    cases = [
        ([tmp_path / "absent", "--out", tmp_path / "o"], "neither"),
        ([tmp_path / "src" / "0.png", "--out", tmp_path / "o"], "is a file, not a folder"),
        ([tmp_path / "src", "--out", tmp_path / "a-file" / "out"], "cannot write the output"),
        ([tmp_path / "src", "--out", tmp_path / "a-file"], "not a folder"),
    ]
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        cases.append(([tmp_path / "src", "--out", "/proc/pixeljit-test/out"], "cannot write"))
    for argv, problem in cases:
        code, err = run_cli(capsys, *argv, "--size", "8")
        assert code == 2 and problem in err, err
        assert_one_line_naming_real_flags(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "src"]


def test_unwritable_output_fails_before_the_source_is_read(tmp_path, monkeypatch):
    make_flat(tmp_path / "src")
    (tmp_path / "a-file").write_text("x")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the source was opened before the output was checked")

    prepare_module = importlib.import_module("pixeljit.data.prepare")
    monkeypatch.setattr(prepare_module, "folder_stream", must_not_run)
    with pytest.raises(ValueError, match="cannot write the output folder"):
        prepare(tmp_path / "src", 8, tmp_path / "a-file" / "out")


def test_staging_folders_of_killed_packs_are_swept_on_the_next_pack(tmp_path):
    """`kill -9` during `prepare` left `.out.partial-<pid>-<hex>` (up to the whole data set's
    size) beside the output, and the next pack into it left it there for good."""
    import os

    make_flat(tmp_path / "src")
    dead = dead_pid()
    stale = tmp_path / f".out.partial-{dead}-0123abcd"
    stale.mkdir()
    (stale / "images-00000.npy").write_bytes(b"half a shard")
    (stale / f".labels.npy.tmp-{dead}-89abcdef").write_bytes(b"half")
    foreign = tmp_path / f".out.partial-{dead}-4567cdef"  # holds a file a pack never writes
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    live = tmp_path / f".out.partial-{os.getpid()}-fedcba98"  # a packing process still running
    live.mkdir()
    other = tmp_path / f".other.partial-{dead}-01234567"  # another output's
    other.mkdir()
    prepare(tmp_path / "src", 4, tmp_path / "out")
    assert not stale.exists()
    assert (foreign / "notes.txt").read_text() == "mine" and live.is_dir() and other.is_dir()
    assert PackedDataset(tmp_path / "out", verify=True).image_shape == (3, 4, 4)


def test_a_failed_publish_puts_the_old_pack_back(tmp_path, monkeypatch):
    """Replacing a pack moves the old one aside, then renames the new set into place; when that
    rename fails the old pack must be moved back, byte for byte, and the new set left staged."""
    from pixeljit.data import outdir as outdir_module
    from pixeljit.data import pack_arrays

    old = np.random.default_rng(0).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    out = pack_arrays(old, tmp_path / "out", images_per_shard=2).out_dir
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    staging = outdir_module.open_staging(out)
    (staging / "images-00000.npy").write_bytes(b"new")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src) == staging:
            raise OSError("simulated failure of the final rename")
        return real_replace(src, dst)

    monkeypatch.setattr(outdir_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        outdir_module.publish(staging, out, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    np.testing.assert_array_equal(PackedDataset(out, verify=True).slice(0, 5), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", staging.name])
