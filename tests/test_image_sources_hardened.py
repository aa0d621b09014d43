"""How `eval --images FOLDER|X.npz` reads images and labels, hardened: every suffix `prepare`
reads, hidden files skipped as `prepare` skips them, labels.csv with a byte-order mark, a file
listed twice or a label past int64 refused in one line, `np.savez_compressed` files read while
zip bombs stay refused, and X.NPZ taken for an .npz."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from cli_errors import cli_error
from pixeljit.cli import main
from pixeljit.cli.checks import _our_labels_csv, foreign_files
from pixeljit.data.folders import IMAGE_EXTENSIONS
from pixeljit.files.images import LABELS_CSV, save_labels_csv
from pixeljit.metrics import DatasetStats, image_sources, npz_archive, save_dataset_stats
from pixeljit.metrics.image_sources import (
    count_path_images,
    folder_labels,
    load_images,
    npz_headers,
    npz_labels,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 16
PIL_FORMAT = {".jfif": "JPEG", ".pbm": "PPM", ".pgm": "PPM", ".pnm": "PPM", ".ppm": "PPM"}


def _grey(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)


def _pngs(folder, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}.png" for k in range(count)]
    for name, image in zip(names, _grey(count), strict=True):
        Image.fromarray(image).save(folder / name)
    return names


def _labels_csv(folder, text: str, bom: bool = False) -> None:
    (folder / LABELS_CSV).write_bytes(("\ufeff" if bom else "").encode() + text.encode())


# ------------------------------------------------------------------------------ item 1: suffixes


def test_eval_reads_every_image_suffix_that_prepare_reads(tmp_path):
    """A folder of .gif/.tif/.jfif/.ppm/... images was scored on its .png/.jpg/... ones only."""
    assert set(image_sources.IMAGE_SUFFIXES) == IMAGE_EXTENSIONS
    folder = tmp_path / "mixed"
    folder.mkdir()
    suffixes = sorted(IMAGE_EXTENSIONS)
    for k, (suffix, image) in enumerate(zip(suffixes, _grey(len(suffixes)), strict=True)):
        name = f"{k:02d}{suffix.upper() if k % 2 else suffix}"  # any case, as prepare reads it
        Image.fromarray(image).save(folder / name, format=PIL_FORMAT.get(suffix))
    assert count_path_images(folder) == len(suffixes)
    next(folder.glob("*.[wW][eE][bB][pP]")).unlink()  # WebP holds no grey: the rest are grey
    assert load_images(folder).shape == (len(suffixes) - 1, 1, SIZE, SIZE)
    out = tmp_path / "scores.json"
    assert main(["eval", "--images", str(folder), "--metrics", "is", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["scores"]["count"] == len(suffixes) - 1


def test_foreign_files_sees_every_suffix_eval_reads(tmp_path):
    _pngs(tmp_path, 1)
    Image.fromarray(_grey(1)[0]).save(tmp_path / "theirs.tif")
    assert foreign_files(tmp_path) == (False, ["theirs.tif"])


# ---------------------------------------------------------------------------- item 9: hidden files


def test_hidden_files_are_skipped_like_prepare_skips_them(tmp_path):
    """macOS' ._000000.png (AppleDouble) and .DS_Store were read as images and refused."""
    names = _pngs(tmp_path, 2)
    (tmp_path / "._000000.png").write_bytes(b"\0\5\26\7" + bytes(100))
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    assert count_path_images(tmp_path) == 2
    assert load_images(tmp_path).shape == (2, 1, SIZE, SIZE)
    save_labels_csv(tmp_path, [3, 4])  # rows for the images only: the hidden files need none
    labels, _ = folder_labels(tmp_path)
    assert labels.tolist() == [3, 4]
    _labels_csv(tmp_path, f"file,label,class\n{names[0]},3,\n{names[1]},4,\n._000000.png,3,\n")
    with pytest.raises(ValueError, match=r"lists \._000000\.png, which is hidden"):
        folder_labels(tmp_path)


# ------------------------------------------------------------------------- items 3, 7, 10: labels


def test_a_file_listed_twice_in_labels_csv_is_refused_naming_both_rows(tmp_path):
    """The last row won, silently: 000000.png was scored as label 2."""
    names = _pngs(tmp_path, 2)
    _labels_csv(tmp_path, f"file,label,class\n{names[0]},1,cat\n{names[1]},2,dog\n"
                          f"{names[0]},2,dog\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"lists 000000\.png twice: line 2 \(label 1\) and line "
                                         r"4 \(label 2\)"):  # fmt: skip
        folder_labels(tmp_path)
    _labels_csv(tmp_path, f"file,label,class\n{names[0]},1,\n{names[1]},2,\n{names[0]},1,\n")
    with pytest.raises(ValueError, match="twice"):  # the same label twice is a mistake too
        folder_labels(tmp_path)


def test_a_label_past_int64_is_refused_in_one_line(tmp_path):
    """99999999999999999999999 crashed `eval --images` with an OverflowError traceback."""
    names = _pngs(tmp_path, 2)
    _labels_csv(tmp_path, f"file,label\n{names[0]},99999999999999999999999\n{names[1]},2\n")
    with pytest.raises(ValueError, match="line 2: label 99999999999999999999999 is over"):
        folder_labels(tmp_path)
    _labels_csv(tmp_path, f"file,label\n{names[0]},{2**63 - 1}\n{names[1]},2\n")
    assert folder_labels(tmp_path)[0].tolist() == [2**63 - 1, 2]  # the largest int64 is read


def test_a_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the header was not recognised."""
    names = _pngs(tmp_path, 2)
    _labels_csv(tmp_path, f"file,label,class\n{names[0]},1,cat\n{names[1]},2,dog\n", bom=True)
    labels, classes = folder_labels(tmp_path)
    assert labels.tolist() == [1, 2] and classes == {1: "cat", 2: "dog"}
    assert _our_labels_csv(tmp_path / LABELS_CSV)  # as `sample --out` tells its own from a user's
    assert foreign_files(tmp_path) == (False, [])


# ---------------------------------------------------------------------- item 5: compressed .npz


def _npz_member(path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name + ".npy", data)


def test_savez_compressed_files_are_read_while_zip_bombs_stay_refused(tmp_path, monkeypatch):
    """Constant labels or simple images compress past 100×, and were refused as zip bombs."""
    images = np.zeros((1000, SIZE, SIZE, 1), np.uint8)
    images[:, 4:12, 4:12] = 255
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, arr_0=images, labels=np.zeros(len(images), np.int64))
    assert load_images(path).shape == (1000, 1, SIZE, SIZE)
    assert npz_labels(path).tolist() == [0] * 1000
    np.savez_compressed(path, arr_0=images[:10], class_names=np.array(["x"] * 20_000))
    assert count_path_images(path) == 10
    # a large member inflating past MAX_INFLATION× stays refused (the free size made small)
    free = 2**20
    monkeypatch.setattr(npz_archive, "MAX_FREE_INFLATED_BYTES", free)
    np.savez_compressed(path, arr_0=np.zeros((2, free, 1, 1), np.uint8))
    with pytest.raises(ValueError, match="array 'arr_0' inflates .* refusing a zip bomb"):
        npz_headers(path)
    # as do members each under the free size that inflate past it together
    np.savez_compressed(path, **{f"a{k}": np.zeros(free // 2 + 1, np.uint8) for k in range(3)})
    with pytest.raises(ValueError, match="its arrays inflate .* refusing a zip bomb"):
        npz_headers(path)
    # and a member holding more bytes than its shape declares (padding to inflate freely)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(4, np.uint8))
    _npz_member(path, "labels", buffer.getvalue() + bytes(1000))
    with pytest.raises(ValueError, match=r"'labels' declares shape \(4,\) \(4 bytes\) but holds "
                                         "1004: crafted or corrupt"):  # fmt: skip
        npz_headers(path)


# ------------------------------------------------------------------------- item 11: upper case


def test_an_upper_case_npz_suffix_is_an_npz(tmp_path, capsys):
    """X.NPZ was 'neither a folder of images nor an .npz file' for --images, and --make-ref took
    it for a data set ('lacks mu/sigma')."""
    path = tmp_path / "IMAGES.NPZ"
    with open(path, "wb") as f:  # np.savez would name it IMAGES.NPZ.npz
        np.savez(f, arr_0=_grey(12)[..., None], labels=np.arange(12))
    assert count_path_images(path) == 12
    assert load_images(path).shape == (12, 1, SIZE, SIZE)
    assert npz_labels(path).tolist() == list(range(12))
    stats = tmp_path / "STATS.NPZ"
    save_dataset_stats(stats, DatasetStats(np.zeros(4), np.eye(4)))
    err = cli_error(capsys, ["eval", "--make-ref", str(stats), "--size", "16", "--channels", "1",
                             "--out", str(tmp_path / "out.npz")])  # fmt: skip
    assert "holds statistics" in err and f"--ref {stats}" in err


def test_a_sixteen_bit_pgm_is_read_as_grey(tmp_path):
    """Pillow opens a 16-bit PGM as mode 'I' (prepare reads it as grey since today): `eval
    --images` read it as three equal colour channels."""
    from PIL import Image

    from pixeljit.metrics import iter_folder_images

    Image.fromarray(np.full((4, 4), 200 * 257, np.uint16)).save(tmp_path / "a.pgm")
    assert Image.open(tmp_path / "a.pgm").mode == "I"
    (batch,) = list(iter_folder_images(tmp_path))
    assert tuple(batch.shape) == (1, 1, 4, 4) and int(batch.max()) == int(batch.min()) == 200
