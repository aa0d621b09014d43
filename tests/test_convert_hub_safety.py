"""`pixeljit convert --hub` never writes over what is not its own: --overwrite replaces the files
of an earlier export only, every target is checked before anything is written and the new files
move in only once all are written, and a source's sample grid is published only as a plain PNG
(never through a symbolic link)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from cli_errors import cli_error
from pixeljit.checkpoints import hub_write
from pixeljit.checkpoints.hub import GRID_NAME
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main

SECRET = b"api-token: do not publish"


def snapshot(folder) -> dict:
    """Every entry of `folder` (hidden ones included): a file's bytes, or what else it is."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_symlink():
            out[p.name] = ("link", os.readlink(p))
        elif p.is_dir():
            out[p.name] = ("folder", sorted(q.name for q in p.iterdir()))
        else:
            out[p.name] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def plain(hub_run, tmp_path_factory):
    """The run's raw weights (not the hub folder's EMA) as a .safetensors: a source holding no
    sample grid, whose weights differ from `hub`'s."""
    path = tmp_path_factory.mktemp("plain") / "m1.safetensors"
    assert main(["convert", str(hub_run), str(path), "--weights", "model"]) == 0
    return path


def export_copy(hub, tmp_path, name="export"):
    """A copy of the session's hub folder (never written itself) with a file of the user's."""
    folder = tmp_path / name
    shutil.copytree(hub, folder)
    (folder / "notes.txt").write_text("mine")
    return folder


# --------------------------------------------------------------------------- A: --overwrite


def test_overwrite_never_replaces_files_of_a_folder_that_is_not_an_export(plain, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "README.md").write_text("# My project\n")
    (project / GRID_NAME).write_bytes(b"\x89PNG\r\n\x1a\nmy own figure")
    before = snapshot(project)
    for extra in (["--overwrite"], []):
        err = cli_error(capsys, ["convert", str(plain), "--hub", str(project), *extra])
        assert "is not a pixeljit hub export (it holds no config.json)" in err, err
        assert "holds README.md, samples.png, which the export would replace" in err, err
        assert "choose a new or empty folder" in err
        assert snapshot(project) == before
    # a config.json of something else is no export either
    (project / "config.json").write_text('{"model_type": "bert"}')
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(project), "--overwrite"])
    assert "its config.json is not a pixeljit hub config" in err
    assert "config.json, README.md, samples.png" in err
    # a folder holding none of the export's names is only added to (nothing is replaced)
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.py").write_text("print()")
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(other)])
    assert "is not empty" in err and "--overwrite to add" in err
    assert main(["convert", str(plain), "--hub", str(other), "--overwrite"]) == 0
    assert (other / "train.py").read_text() == "print()"
    assert load_trained(other).weights == "model"


def test_refusal_names_the_files_an_earlier_export_holds(hub, plain, tmp_path, capsys):
    gridless = tmp_path / "gridless"
    assert main(["convert", str(plain), "--hub", str(gridless)]) == 0
    capsys.readouterr()
    err = cli_error(capsys, ["convert", str(hub), "--hub", str(gridless)])
    assert "it holds an earlier export (model.safetensors, config.json, README.md)" in err, err
    assert GRID_NAME not in err and "pass --overwrite to replace it" in err


def test_overwrite_removes_the_earlier_exports_grid_and_says_so(hub, plain, tmp_path, capsys):
    folder = export_copy(hub, tmp_path)
    assert main(["convert", str(plain), "--hub", str(folder), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"note: removed the earlier export's {folder / GRID_NAME}: the new card shows" in out
    assert not (folder / GRID_NAME).exists()
    assert "None: the source holds no sample grid" in (folder / "README.md").read_text()
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "notes.txt",
    ]  # fmt: skip


# ------------------------------------------------------------------------ B: a source's grid


def test_a_hub_sources_grid_is_published_only_as_a_plain_png(hub, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    png = tmp_path / "elsewhere.png"
    png.write_bytes((hub / GRID_NAME).read_bytes())
    for name, make, problem in (
        ("to-secret", lambda p: p.symlink_to(secret), "is a symbolic link"),
        ("to-png", lambda p: p.symlink_to(png), "is a symbolic link"),
        ("text", lambda p: p.write_bytes(SECRET), "is not a PNG image"),
    ):
        source = tmp_path / f"src-{name}"
        shutil.copytree(hub, source)
        (source / GRID_NAME).unlink()
        make(source / GRID_NAME)
        out = tmp_path / f"out-{name}"
        assert main(["convert", str(source), "--hub", str(out)]) == 0
        assert all(SECRET not in p.read_bytes() for p in out.iterdir())
        assert not (out / GRID_NAME).exists()
        said = f"the source's samples.png {problem}, so it was not exported"
        assert f"note: {said}" in capsys.readouterr().out
        assert f"None: {said}." in (out / "README.md").read_text()


def test_a_runs_symlinked_preview_grid_is_not_published(hub_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(hub_run, run)
    preview = run / "samples-0000002.png"
    elsewhere = tmp_path / "elsewhere.png"
    preview.rename(elsewhere)
    preview.symlink_to(elsewhere)
    out = tmp_path / "out"
    assert main(["convert", str(run), "--hub", str(out)]) == 0
    assert not (out / GRID_NAME).exists()
    said = "the run's preview grid samples-0000002.png is a symbolic link, so it was not exported"
    assert f"note: {said}" in capsys.readouterr().out
    assert f"None: {said}." in (out / "README.md").read_text()


# ------------------------------------------------------------ C: checked first, staged writes


@pytest.mark.parametrize("odd", ["config.json", "README.md", GRID_NAME])
def test_every_target_is_checked_before_anything_is_written(hub, plain, tmp_path, capsys, odd):
    folder = export_copy(hub, tmp_path)
    (folder / odd).unlink()
    (folder / odd / "inner").mkdir(parents=True)
    before = snapshot(folder)
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(folder), "--overwrite"])
    assert f"--hub {folder} holds a folder {odd}, where the export writes a file" in err, err
    assert f"move it out of {folder}, or choose another folder" in err
    assert snapshot(folder) == before  # model.safetensors was replaced before the failure


def test_a_symlink_where_the_export_writes_is_refused(hub, plain, tmp_path, capsys):
    folder = export_copy(hub, tmp_path)
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    (folder / GRID_NAME).unlink()
    (folder / GRID_NAME).symlink_to(outside)
    before = snapshot(folder)
    err = cli_error(capsys, ["convert", str(hub), "--hub", str(folder), "--overwrite"])
    assert f"holds a symbolic link {GRID_NAME}, where the export writes a file" in err, err
    assert snapshot(folder) == before and outside.read_bytes() == SECRET


def test_a_failure_while_writing_leaves_the_earlier_export_intact(
    hub, hub_run, tmp_path, monkeypatch
):
    folder = export_copy(hub, tmp_path)
    before = snapshot(folder)
    real = hub_write.atomic_write_text

    def disk_full(path, text):
        if path.name == "config.json":  # the last file written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(hub_write, "atomic_write_text", disk_full)
    model = load_trained(hub_run, "model")  # other weights than the export's
    with pytest.raises(OSError, match="No space left on device"):
        hub_write.write_hub_folder(model, folder, overwrite=True)
    assert snapshot(folder) == before  # no file replaced, no staging left behind


def test_a_killed_writes_staging_folder_is_swept(hub, plain, tmp_path):
    folder = export_copy(hub, tmp_path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = folder / f".hub-export.staging-{done.stdout.strip()}-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    mine = folder / ".hub-export.staging-notes"  # not the pattern: the user's, left alone
    mine.mkdir()
    assert main(["convert", str(plain), "--hub", str(folder), "--overwrite"]) == 0
    assert not stale.exists() and mine.is_dir()
    assert load_trained(folder).weights == "model"


# ------------------------------------------------------------------------------ D: messages


def test_a_symlinked_hub_folder_is_refused_clearly(hub, plain, tmp_path, capsys):
    empty = tmp_path / "emptyd"
    empty.mkdir()
    link = tmp_path / "linkempty"
    link.symlink_to(empty)
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(link)])
    assert f"--hub {link} is a symbolic link (to {empty}): name the folder itself" in err, err
    assert "Not a directory" not in err and list(empty.iterdir()) == []
    # to an earlier export, with --overwrite: still refused, the export left as it was
    folder = export_copy(hub, tmp_path)
    before = snapshot(folder)
    link.unlink()
    link.symlink_to(folder)
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(link), "--overwrite"])
    assert "is a symbolic link" in err and snapshot(folder) == before
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(dangling)])
    assert "is a symbolic link to" in err and "which does not exist" in err


def test_a_folder_where_the_weights_go_is_named_as_such(plain, tmp_path, capsys):
    odd = tmp_path / "odd3"
    (odd / "model.safetensors").mkdir(parents=True)
    err = cli_error(capsys, ["convert", str(plain), "--hub", str(odd), "--overwrite"])
    assert f"--hub {odd} holds a folder model.safetensors, where the export writes a file" in err
    assert "name a file NAME.safetensors" not in err
