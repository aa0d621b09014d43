"""A finished grid cell's sample grid (grid.png) is the cell's own file: a missing or broken one
is drawn again from the cell's checkpoint (the same images), never a file that a result.json
names (`--reuse` copied whatever path a donor's "grid" field held), and a donor without a
readable grid is not taken. Before, a finished cell without its grid.png failed every re-run
of the grid at the report, and the message said nothing of what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from extractors import PoolExtractor, Recorder, bottleneck_reusing_nothing, one_cell_noise_grid
from pixeljit.experiments import bottleneck, noise
from pixeljit.experiments.evidence import GRID_NAME, RESULT_NAME
from pixeljit.experiments.grid import CELLS_FOLDER

TINY = dict(
    width=32, depth=1, heads=2, steps=2, batch=8, num_samples=8, sampler_steps=2,
    weights="model", real_count=16, data_limit=32, device="cpu", ckpt_every=1,
)  # fmt: skip
NOISE = noise.NoiseConfig(size=16, patch=4, p_means=(-0.8,), predictions=("x",), **TINY)
PLAIN = bottleneck.BottleneckConfig(size=16, patch=4, dims=(None,), **TINY)  # NOISE's one cell


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """NOISE run once: (results folder, its one cell folder, that cell's grid pixels)."""
    out, folder = one_cell_noise_grid(tmp_path_factory.mktemp("noise"), NOISE)
    return out, folder, pixels(folder / GRID_NAME)


def copy_of(donor, tmp_path):
    import shutil

    out, folder, _ = donor
    shutil.copytree(out, tmp_path / "copy")
    return tmp_path / "copy", tmp_path / "copy" / CELLS_FOLDER / folder.name


@pytest.mark.parametrize("damage", ["missing", "not an image", "truncated"])
def test_a_finished_cells_lost_grid_is_drawn_again_the_same(donor, tmp_path, damage):
    out, folder = copy_of(donor, tmp_path)
    grid, result = folder / GRID_NAME, (folder / RESULT_NAME).read_text()
    if damage == "missing":
        grid.unlink()
    elif damage == "not an image":
        grid.write_text("my notes")
    else:
        grid.write_bytes(grid.read_bytes()[:100])
    again = noise.run_noise(NOISE, out, extractor=PoolExtractor(),
                            train_fn=Recorder(allowed=False))  # fmt: skip
    assert np.array_equal(pixels(grid), donor[2])  # the same samples, from the checkpoint
    assert (folder / RESULT_NAME).read_text() == result  # the cell is not scored again
    assert again["cells"][0]["fd"] == json.loads(result)["fd"]


def test_a_lost_grid_of_a_cell_without_checkpoint_says_what_to_do(donor, tmp_path):
    out, folder = copy_of(donor, tmp_path)
    (folder / GRID_NAME).unlink()
    for checkpoint in folder.glob("*.pt"):
        checkpoint.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{GRID_NAME} is missing or not an image, and "
                       rf"the finished cell holds no checkpoint .*move {folder} away"):  # fmt: skip
        noise.run_noise(NOISE, out, extractor=PoolExtractor(), train_fn=Recorder(allowed=False))


def test_reuse_copies_the_donors_own_grid_never_a_path_its_result_names(donor, tmp_path):
    out, folder = copy_of(donor, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for copying")
    result = json.loads((folder / RESULT_NAME).read_text())
    (folder / RESULT_NAME).write_text(json.dumps({**result, "grid": str(secret)}))
    report = bottleneck.run_bottleneck(PLAIN, tmp_path / "b", reuse=[out],
                                       extractor=PoolExtractor(),
                                       train_fn=Recorder(allowed=False))  # fmt: skip
    (taken,) = report["cells"]
    assert taken["reused_from"] == str(folder) and taken["grid"] == GRID_NAME
    assert np.array_equal(pixels(tmp_path / "b" / CELLS_FOLDER / taken["name"] / GRID_NAME),
                          donor[2])  # fmt: skip


def test_a_taken_cells_lost_grid_is_never_drawn_from_a_checkpoint_of_its_own(donor, tmp_path):
    """A taken cell's folder may hold a checkpoint of an earlier, unfinished run of that cell:
    its images are not the result's, so a lost grid.png is not drawn from it."""
    out, folder = copy_of(donor, tmp_path)
    report = bottleneck.run_bottleneck(PLAIN, tmp_path / "b", reuse=[out],
                                       extractor=PoolExtractor(),
                                       train_fn=Recorder(allowed=False))  # fmt: skip
    taken = tmp_path / "b" / CELLS_FOLDER / report["cells"][0]["name"]
    (checkpoint,) = folder.glob("latest.pt")
    (taken / "latest.pt").write_bytes(checkpoint.read_bytes())  # the cell's own earlier run
    (taken / GRID_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=rf"taken from {folder}, whose checkpoint it does "
                       rf"not hold: copy {GRID_NAME} from there"):  # fmt: skip
        bottleneck.run_bottleneck(PLAIN, tmp_path / "b", extractor=PoolExtractor(),
                                  train_fn=Recorder(allowed=False))  # fmt: skip
    assert not (taken / GRID_NAME).exists()


def test_a_grid_copy_cut_short_by_a_full_disk_leaves_no_part_of_a_grid(
    donor, tmp_path, monkeypatch
):
    import errno
    import shutil

    from pixeljit.experiments import reuse

    out, folder = copy_of(donor, tmp_path)
    copy = shutil.copyfile

    def copy_half(src, dst):
        data = open(src, "rb").read()
        open(dst, "wb").write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(reuse.shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match="No space left"):
        bottleneck.run_bottleneck(PLAIN, tmp_path / "b", reuse=[out], extractor=PoolExtractor(),
                                  train_fn=Recorder(allowed=False))  # fmt: skip
    cells = list((tmp_path / "b" / CELLS_FOLDER).iterdir())
    assert [sorted(p.name for p in cell.iterdir()) for cell in cells] == [[]]  # nothing half
    monkeypatch.setattr(reuse.shutil, "copyfile", copy)  # space again: the cell is taken whole
    report = bottleneck.run_bottleneck(PLAIN, tmp_path / "b", reuse=[out],
                                       extractor=PoolExtractor(),
                                       train_fn=Recorder(allowed=False))  # fmt: skip
    assert np.array_equal(pixels(cells[0] / GRID_NAME), donor[2])
    assert report["cells"][0]["reused_from"] == str(folder)


def test_a_donor_without_a_readable_grid_is_not_taken(donor, tmp_path):
    out, folder = copy_of(donor, tmp_path)
    (folder / GRID_NAME).unlink()
    said = bottleneck_reusing_nothing(PLAIN, tmp_path / "b", [out])
    assert f"its sample grid ({GRID_NAME}: missing or not an image)" in said, said


def test_a_grid_name_taken_by_a_folder_is_refused_before_sampling(donor, tmp_path):
    out, folder = copy_of(donor, tmp_path)
    (folder / GRID_NAME).unlink()
    (folder / GRID_NAME).mkdir()
    with pytest.raises(FileExistsError, match=f"{GRID_NAME} is not a file: move it away"):
        noise.run_noise(NOISE, out, extractor=PoolExtractor(), train_fn=Recorder(allowed=False))
