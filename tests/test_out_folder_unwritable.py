"""A run folder (`demo --out`, `train --out`) that cannot be made or written is refused with one
line naming --out and the way on, before anything is printed or created: `demo --out /proc/x`
said "No such file or directory: /proc/x" (and `train --out /sys/x` "Operation not permitted")
after the demo had announced its training, and `--out LINK/sub` under a link leading nowhere said
only "File exists". The tests run as root too: chmod does not stop root, /proc and /sys do."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cli_errors import cli_error
from pixeljit.cli import main
from pixeljit.training.rundir import RunLock, check_out_folder


def unwritable(place: str) -> Path:
    """A new path inside `place`, skipping the test where this process can write there."""
    folder = Path(place)
    probe = folder / f".pixeljit-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
    except OSError:
        return folder / "pixeljit-run" / "sub"
    probe.unlink()
    pytest.skip(f"{place} is writable on this machine: it cannot stand for a place that is not")


def odd_outs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Name → (an --out that cannot be a run folder, what its error must say)."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    return {
        "file": (a_file, "is a file, not a folder"),
        "under a file": (a_file / "sub", f"is inside {a_file}, a file"),
        "dangling link": (link, "is a symbolic link to"),
        "under a dangling link": (link / "sub", f"{link} is a symbolic link to"),
    }


def snapshot(tmp_path: Path) -> dict[str, str]:
    return {p.name: (os.readlink(p) if p.is_symlink() else p.read_text())
            for p in tmp_path.iterdir()}  # fmt: skip


CASES = ["file", "under a file", "dangling link", "under a dangling link", "/proc", "/sys"]


def case(name: str, tmp_path: Path) -> tuple[Path, str]:
    if name.startswith("/"):
        return unwritable(name), f"cannot write in {name}"
    return odd_outs(tmp_path)[name]


@pytest.mark.parametrize("name", CASES)
def test_demo_refuses_an_unusable_out_before_printing(name, tmp_path, capsys, monkeypatch):
    out, says = case(name, tmp_path)
    before = snapshot(tmp_path)

    def no_training(*args, **kwargs):
        raise ValueError("the demo reached its training")

    monkeypatch.setattr("pixeljit.training.loop.train", no_training)
    argv = ["demo", "--out", str(out), "--steps", "1", "--device", "cpu"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "", f"printed before the refusal: {captured.out!r}"
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "reached its training" not in err and says in err and "--out" in err, err
    assert "pass" in err or "create that folder" in err, err  # the way on
    assert snapshot(tmp_path) == before  # nothing made, moved or changed


@pytest.mark.parametrize("name", ["/proc", "/sys", "under a dangling link"])
def test_train_refuses_an_unusable_out_naming_it(name, tmp_path, capsys):
    out, says = case(name, tmp_path)
    err = cli_error(capsys, ["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist",
                             "--steps", "1", "--out", str(out)])  # fmt: skip
    assert f"--out {out}" in err and says in err, err
    assert "pass" in err or "create that folder" in err, err
    assert not os.path.lexists(out)


def test_the_library_checks_name_the_folder_and_leave_nothing_behind(tmp_path):
    """check_out_folder (before a run starts) and RunLock (which makes the folder) refuse what
    mkdir would fail on with a bare OS error; a usable folder is left exactly as it was."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    for check in (lambda out: check_out_folder(out, None), lambda out: RunLock(out).acquire()):
        with pytest.raises(ValueError, match=f"--out {link / 'sub'}: {link} is a symbolic link"):
            check(link / "sub")
    assert link.is_symlink() and not link.exists()
    if Path("/proc").is_dir():
        with pytest.raises(ValueError, match="--out /proc/run: cannot write in /proc"):
            check_out_folder("/proc/run", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_out_folder(empty, None)
    check_out_folder(empty / "new" / "run", None)
    assert list(empty.iterdir()) == []
