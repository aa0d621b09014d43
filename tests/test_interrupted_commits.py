"""A process killed (SIGKILL) while it moves a finished set of files into a folder: an image set
(`sample --out DIR --overwrite`, `eval --save-images`) or a hub export over an earlier one
(`convert --hub OUT --overwrite`). The kill is real: a child process renames the staged files
and kills itself after k of them, leaving the folder a mix of the new and the earlier files and
the rest of the new set in its hidden staging folder. The next writer, and a reader of the
folder, move that rest in (saying so) instead of deleting it or reading the mix; a Ctrl-C during
a hub export's renames is held until they are done; a killed new export's staging folder beside
OUT is swept."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import pixeljit
from conftest import TINY_NET, dead_pid
from killed_writes import kill_while_writing_set, killed_after, png, stage_set, write_set
from pixeljit.checkpoints.hub import GRID_NAME
from pixeljit.checkpoints.hub_card import CardExtras
from pixeljit.checkpoints.hub_write import check_hub_output, write_hub_folder
from pixeljit.checkpoints.load import load_trained
from pixeljit.files.image_set import ImageSetNotWritten, staged_image_set
from pixeljit.metrics.image_sources import folder_labels, iter_folder_images, list_image_files

JOURNAL = ".commit-journal"

WRITE_HUB = """
from pixeljit.checkpoints.hub_write import write_hub_folder
from pixeljit.checkpoints.load import load_trained
write_hub_folder(load_trained(sys.argv[3]), sys.argv[2], overwrite=True)
"""


def pixel_values(folder) -> list[int]:
    """The value of each numbered PNG in `folder`, read as a reader of image sets does."""
    return [int(b[0, 0, 0]) for batch in iter_folder_images(folder) for b in batch]


def on_disk(folder) -> list[int]:
    """The same, straight from the files (no reader's finishing)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == ".png")
    return [np.asarray(Image.open(p))[0, 0].item() for p in files]


def hidden(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@pytest.fixture
def live_pid():
    """A process that runs for the whole test: a live writer's."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    child.kill()
    child.wait()


A, B, C = [10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]


# ------------------------------------------------------------------------ image sets (D2)


def test_the_next_writer_finishes_a_killed_set_before_anything_else(tmp_path, live_pid):
    out = tmp_path / "pngs"
    write_set(out, A, [0] * 4)
    kill_while_writing_set(out, B, [1] * 4, after=2)
    assert on_disk(out) == [20, 21, 12, 13]  # the mix a kill leaves: the rest is staged
    assert "file,label,class\n000000.png,0,class 0" in (out / "labels.csv").read_text()
    live = out / f".new-set.staging-{live_pid}-fedcba98"  # a live writer's, journal and all
    live.mkdir()
    (live / "000000.png").write_bytes(png(99))
    (live / JOURNAL).write_text(
        '{"format": "pixeljit.commit/1", "steps": [["move", "000000.png"]]}'
    )
    said = r"finished a write of its image set that a killed process left half done \(3 of its 5"
    with pytest.warns(UserWarning, match=said + r" files .*before writing the new one"):
        with staged_image_set(out) as staging:
            assert live.is_dir() and sorted(os.listdir(live)) == [JOURNAL, "000000.png"]  # alive
            assert on_disk(out) == B  # the whole set, before the new one is even written
            stage_set(staging, C, [2] * 4)
    assert on_disk(out) == C
    with pytest.warns(UserWarning, match=f"process {live_pid} is moving a new image set into it "
                      "right now"):  # fmt: skip
        assert folder_labels(out)[0].tolist() == [2] * 4  # a reader is told, nothing moved
    assert hidden(out) == [live.name] and (live / "000000.png").read_bytes() == png(99)


def test_a_reader_finishes_a_killed_set_and_never_reads_the_mix(tmp_path):
    out = tmp_path / "pngs"
    write_set(out, A, [0] * 4)
    kill_while_writing_set(out, B, [1] * 4, after=3)
    with pytest.warns(UserWarning, match=rf"{out}: finished a write .* before reading it; it "
                      "now holds that whole set"):  # fmt: skip
        labels, _ = folder_labels(out)  # labels.csv first: it is moved in last
    assert labels.tolist() == [1] * 4 and pixel_values(out) == B and hidden(out) == []
    # killed right after the journal was written: nothing moved yet, all of it moved in now
    kill_while_writing_set(out, C, [2] * 4, after=0)
    assert on_disk(out) == B
    with pytest.warns(UserWarning, match=r"\(5 of its 5 files"):
        assert [p.name for p in list_image_files(out)] == [f"00000{i}.png" for i in range(4)]
    assert pixel_values(out) == C and folder_labels(out)[0].tolist() == [2] * 4
    # killed before any rename (no journal): nothing moved, and none of it read or moved in
    unstarted = out / f".new-set.staging-{dead_pid()}-0123abcd"
    unstarted.mkdir()
    stage_set(unstarted, A, [0] * 4)
    assert pixel_values(out) == C and unstarted.is_dir()
    write_set(out, B, [1] * 4)  # and swept by the next writer, as before
    assert hidden(out) == [] and on_disk(out) == B


def test_a_killed_set_in_a_folder_that_cannot_take_it_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "pngs"
    write_set(out, A, [0] * 4)
    staging = kill_while_writing_set(out, B, [1] * 4, after=1)
    real = os.replace

    def read_only(src, dst):
        if Path(dst).parent == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OSError) as caught:
        list_image_files(out)
    text = caught.value.strerror
    said = f"{out} holds a write that a killed process left half done (4 of its 5 files still in"
    assert f"{said} {staging.name}), and finishing it failed (Permission denied" in text, text
    assert f"make {out} writable (or run as its owner) and run again" in text
    with pytest.raises(OSError, match="finishing it failed"):
        folder_labels(out)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="finished a write"):
        assert pixel_values(out) == B


def test_a_finished_bigger_set_is_never_mixed_with_a_smaller_new_one(tmp_path):
    """The command's checks of stale PNGs saw the half-moved folder: the commit checks again."""
    out = tmp_path / "pngs"
    write_set(out, A[:2], [0] * 2)
    bigger = [40, 41, 42, 43, 44, 45]
    kill_while_writing_set(out, bigger, [1] * 6, after=1)  # 6 images over 2
    assert on_disk(out) == [40, 11]  # 000001.png … 000005.png still staged
    with pytest.warns(UserWarning, match="finished a write"):
        with pytest.raises(ImageSetNotWritten) as caught:
            write_set(out, C[:2], [2] * 2)
    text = str(caught.value)
    assert "holds 000002.png and 3 more files, which the new set of 3 files would not replace: " \
           "the two would be mixed; remove them first" in text, text  # fmt: skip
    assert on_disk(out) == bigger and folder_labels(out)[0].tolist() == [1] * 6
    assert hidden(out) == []


def test_the_commands_checks_finish_a_killed_set_and_refuse_a_smaller_one_up_front(tmp_path):
    """`sample --out DIR --overwrite --num 3` over a killed 6-image set: refused before any
    image is made (the check saw 2 PNGs, the commit 6, after the sampling)."""
    from pixeljit.cli.checks import check_no_stale_pngs, check_only_our_set

    out = tmp_path / "pngs"
    write_set(out, A[:2], [0] * 2)
    kill_while_writing_set(out, [40, 41, 42, 43, 44, 45], [1] * 6, after=1)
    with pytest.warns(UserWarning, match="finished a write .*before writing the new one"):
        check_only_our_set("--out", out)
    assert on_disk(out) == [40, 41, 42, 43, 44, 45] and hidden(out) == []
    with pytest.raises(ValueError, match="holds 3 numbered PNGs beyond the 3 new ones"):
        check_no_stale_pngs("--out", out, 3)


def test_a_journal_pixeljit_did_not_write_is_refused_and_nothing_moved(tmp_path):
    out = tmp_path / "pngs"
    write_set(out, A, [0] * 4)
    odd = out / f".new-set.staging-{dead_pid()}-0123abcd"
    odd.mkdir()
    (odd / "000000.png").write_bytes(png(99))
    (odd / JOURNAL).write_text('{"format": "pixeljit.commit/1", "steps": [["move", "../x"]]}')
    with pytest.raises(ValueError, match=f"{odd / JOURNAL} is not a pixeljit commit journal: it "
                       f"was not written by pixeljit, so what its folder holds is not moved into "
                       f"{out}; look through {odd} and move or remove it by hand"):  # fmt: skip
        list_image_files(out)
    with pytest.raises(ValueError, match="is not a pixeljit commit journal"):
        write_set(out, B, [1] * 4)  # nor deleted by a writer
    assert on_disk(out) == A and (odd / "000000.png").read_bytes() == png(99)


# --------------------------------------------------------------------------- hub (D3, D4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two exports of `TINY_NET` with other weights (.safetensors), and a grid PNG."""
    folder = tmp_path_factory.mktemp("weights")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = pixeljit.JiT(TINY_NET)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        paths.append(folder / f"m{seed}.safetensors")
        pixeljit.save_safetensors(net, paths[-1])
    grid = folder / "grid.png"
    grid.write_bytes(png(50))
    return paths[0], paths[1], grid


def contents(folder) -> dict:
    """Each file's bytes; the weights' as their metadata and tensors (safetensors writes the
    metadata's keys in no fixed order)."""
    found = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    if "model.safetensors" in found:
        with safe_open(Path(folder) / "model.safetensors", "np") as f:
            tensors = {k: f.get_tensor(k).tobytes() for k in f.keys()}  # noqa: SIM118
            found["model.safetensors"] = (f.metadata(), tensors)
    return found


def earlier_and_new(weights, tmp_path) -> tuple[Path, dict]:
    """An earlier export with a grid at `out`, and what the new one (no grid) writes alone."""
    first, second, grid = weights
    out = write_hub_folder(load_trained(first), tmp_path / "hub", CardExtras(grid=grid))
    clean = write_hub_folder(load_trained(second), tmp_path / "clean")
    assert GRID_NAME in contents(out) and contents(out) != contents(clean)
    return out, contents(clean)


def test_a_killed_hub_overwrite_is_finished_by_the_next_export(weights, tmp_path):
    out, new = earlier_and_new(weights, tmp_path)
    killed_after(1, WRITE_HUB, out, weights[1])
    mixed = contents(out)  # new weights, the earlier card and grid: never the earlier config
    assert mixed["model.safetensors"] == new["model.safetensors"] and GRID_NAME in mixed
    assert "config.json" not in mixed  # so no reader can load the mix
    assert len([p for p in out.iterdir() if p.name.startswith(".hub-export.staging-")]) == 1
    said = rf"{out}: finished an export that a killed process left half done \(2 of its 3 "
    with pytest.warns(UserWarning, match=said + "files .*before writing the new one"):
        check_hub_output(out, overwrite=True)  # `convert --hub OUT` checks first
    assert contents(out) == new  # the earlier grid, of other weights, removed as it would be
    loaded, written = load_trained(out).net.state_dict(), load_trained(weights[1]).net.state_dict()
    assert all(torch.equal(loaded[k], written[k]) for k in written)


def test_loading_a_killed_hub_overwrite_finishes_it_first(weights, tmp_path):
    out, new = earlier_and_new(weights, tmp_path)
    killed_after(1, WRITE_HUB, out, weights[1])
    with pytest.warns(UserWarning, match=r"finished an export .*before loading it"):
        loaded = load_trained(out).net.state_dict()  # refused before: no config.json
    assert contents(out) == new and hidden(out) == []
    written = load_trained(weights[1]).net.state_dict()
    assert all(torch.equal(loaded[k], written[k]) for k in written)


def test_a_hub_overwrite_killed_at_the_earlier_grid_is_finished(weights, tmp_path):
    out, new = earlier_and_new(weights, tmp_path)
    killed_after(2, WRITE_HUB, out, weights[1])  # weights and card in, the earlier grid not gone
    assert GRID_NAME in contents(out) and "config.json" not in contents(out)
    with pytest.warns(UserWarning, match=r"\(1 of its 3 files"):
        write_hub_folder(load_trained(weights[1]), out, overwrite=True)
    assert contents(out) == new and hidden(out) == []


def test_a_ctrl_c_during_a_hub_overwrite_is_held_until_it_is_whole(weights, tmp_path, monkeypatch):
    out, new = earlier_and_new(weights, tmp_path)
    real, sent = os.replace, []

    def replace(src, dst):
        if Path(src).parent != Path(dst).parent and Path(dst).parent == out and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt, match=f"stopped once the export was in place: {out}/ "
                       "holds all of it"):  # fmt: skip
        write_hub_folder(load_trained(weights[1]), out, overwrite=True)
    assert sent and contents(out) == new and hidden(out) == []


def test_a_failed_rename_keeps_the_rest_of_the_export_for_the_next_one(
    weights, tmp_path, monkeypatch
):
    """A rename that fails (EIO) mid-commit: the new files not yet moved are kept, and the next
    export into the folder (once this process has ended) moves them in."""
    out, new = earlier_and_new(weights, tmp_path)
    real, moved = os.replace, []

    def replace(src, dst):
        if Path(src).parent != Path(dst).parent and Path(dst).parent == out:
            if len(moved) == 1:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as caught:
        write_hub_folder(load_trained(weights[1]), out, overwrite=True)
    monkeypatch.undo()
    (staging,) = [p for p in out.iterdir() if p.name.startswith(".hub-export.staging-")]
    text = str(caught.value)
    assert f"moving the new export into {out} failed after 1 of 3 files (Input/output error: " \
           f"{out / 'README.md'}): the rest is kept in {staging.name} inside it, moved in by " \
           f"the next export into {out} once this process has ended" in text, text  # fmt: skip
    ended = staging.with_name(f".hub-export.staging-{dead_pid()}-{staging.name[-8:]}")
    staging.rename(ended)  # as this process would leave it, once ended
    with pytest.warns(UserWarning, match=r"\(2 of its 3 files"):
        check_hub_output(out, overwrite=True)
    assert contents(out) == new and hidden(out) == []


def test_a_killed_new_exports_staging_beside_it_is_swept(weights, tmp_path):
    out = tmp_path / "hub"
    stale = tmp_path / f".hub.staging-{dead_pid()}-0123abcd"  # `convert --hub hub` killed
    live = tmp_path / f".hub.staging-{os.getpid()}-fedcba98"
    foreign = tmp_path / f".hub.staging-{dead_pid()}-4567cdef"
    other = tmp_path / f".hubs.staging-{dead_pid()}-0123abcd"  # another export's
    for folder in (stale, live, foreign, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    (stale / f".config.json.tmp-{dead_pid()}-89abcdef").write_text("{")
    (foreign / "notes.txt").write_text("mine")
    write_hub_folder(load_trained(weights[0]), out)
    assert not stale.exists()
    assert live.is_dir() and (foreign / "notes.txt").is_file() and other.is_dir()
    again = tmp_path / f".hub.staging-{dead_pid()}-0a0b0c0d"  # swept by an overwrite too
    again.mkdir()
    (again / "README.md").write_text("half")
    write_hub_folder(load_trained(weights[1]), out, overwrite=True)
    assert not again.exists() and live.is_dir()
