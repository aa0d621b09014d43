"""Image folders as `pixeljit prepare DIR` and `train --data DIR` read them (a probe's findings):
image types Pillow reads were dropped without a word, a 32-bit integer TIFF was packed black,
Pillow's warnings named no file and were glued to the bar, split-named class folders could not
be packed even with --layout classes, a huge PNG got Pillow's raw message, a newline in a class
name broke the preview grid's labels, --skip-bad's bar stopped short, and a set a killed
`sample --out` left half moved in was packed as the mix."""

from __future__ import annotations

import io
import os
import random
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from killed_writes import kill_while_writing_set, write_set
from pixeljit.data.open import open_dataset
from pixeljit.data.packed import PackedDataset
from pixeljit.data.prepare import prepare
from pixeljit.data.source import BadImageError
from pixeljit.data.transforms import to_channels
from pixeljit.files.images import make_grid
from pixeljit.metrics.image_sources import iter_folder_images


def _noise(seed: int, side: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


def _packed(result) -> np.ndarray:
    data = PackedDataset(result.out_dir)
    return data.slice(0, len(data))


# --- 1: every image type Pillow reads is packed; what is left out is said ------------------


def test_image_types_pillow_reads_are_packed_and_the_rest_said(tmp_path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    kinds = [("jpg", "JPEG"), ("jpe", "JPEG"), ("tga", "TGA"), ("jp2", "JPEG2000")]
    kinds += [("avif", "AVIF")] if features.check("avif") else []
    for i in range(2):
        for ext, fmt in [*kinds, ("ico", "ICO")]:
            _noise(i).save(src / f"{i}.{ext}", format=fmt)
    for name in ("README.txt", ".DS_Store", "Thumbs.db"):
        (src / name).write_text("x")
    data = open_dataset(str(src), 8, 3)
    assert len(data) == 2 * len(kinds)  # train used to see only the 2 .jpg
    said = [line for line in capsys.readouterr().out.splitlines() if "ignored" in line]
    assert len(said) == 1, said
    assert said[0].startswith("ignored 5 entries, not packed: 3 not an image type pixeljit reads")
    assert "(.ico ×2, .txt; e.g. " in said[0] and "convert images to PNG or JPEG" in said[0]
    assert "2 hidden or system entries" in said[0] and "non-image" not in said[0]


# --- 2: a 32-bit integer image is refused, 16-bit grey still keeps its top 8 bits -------------


def _tiff_mode_i(path: Path, value: int = 200) -> Path:
    Image.fromarray(np.full((8, 8), value, np.int32), "I").save(path)
    return path


def test_a_32_bit_integer_tiff_is_refused_by_name_not_packed_black(tmp_path):
    src = tmp_path / "tif"
    src.mkdir()
    _tiff_mode_i(src / "a.tif")
    with pytest.raises(BadImageError, match=r"a\.tif: .*mode 'I' \(32-bit integer grey, from a "
                       r"TIFF file\).*--skip-bad"):  # fmt: skip
        prepare(src, 8, tmp_path / "out")
    Image.new("L", (8, 8), 90).save(src / "b.png")
    result = prepare(src, 8, tmp_path / "out", skip_bad=True)
    assert [Path(b.path).name for b in result.skipped] == ["a.tif"] and result.count == 1
    assert (_packed(result) == 90).all()


def test_sixteen_bit_grey_keeps_its_top_bits_and_never_turns_black(tmp_path):
    Image.fromarray(np.full((8, 8), 200 * 257, np.uint16)).save(tmp_path / "p16.png")
    Image.fromarray(np.full((8, 8), 200 * 257, np.uint16)).save(tmp_path / "g16.pgm")
    result = prepare(tmp_path, 8, tmp_path.parent / "out16", channels=1)
    assert result.count == 2 and (_packed(result) == 200).all()
    img = Image.fromarray(np.full((4, 4), 200 * 257, np.int32), "I")
    img.format = "PNG"  # as Pillow before 10 opened a 16-bit grey PNG
    assert (np.asarray(to_channels(img, 1)) == 200).all()
    img.format = "TIFF"
    with pytest.raises(ValueError, match="mode 'I'"):
        to_channels(img, 1)
    low = Image.fromarray(np.full((4, 4), 200, np.uint16))  # 8-bit values in a 16-bit file
    with pytest.raises(ValueError, match=r"values all lie in 200\.\.200.*all black"):
        to_channels(low, 1)


def test_eval_reads_mode_i_as_prepare_does(tmp_path):
    """`eval --images` shares `to_channels`: the same TIFF refused, the same PNG read."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    Image.fromarray(np.full((8, 8), 200 * 257, np.uint16)).save(good / "a.png")
    _tiff_mode_i(bad / "a.tif")
    assert (next(iter_folder_images(good)) == 200).all()
    with pytest.raises(ValueError, match=r"a\.tif: .*mode 'I'"):
        next(iter_folder_images(bad))


# --- 3: Pillow's warnings name the file, on a line of their own ------------------------------


def _warning_tiffs(folder: Path, count: int = 2) -> list[Path]:
    """A valid 24×24 TIFF with random bytes flipped (random.seed(5)) until Pillow warns while
    reading it and still decodes it; `count` of them."""
    buf = io.BytesIO()
    _noise(0).save(buf, format="TIFF")
    good, found = buf.getvalue(), []
    random.seed(5)
    for n in range(2000):
        data = bytearray(good)
        for _ in range(3):
            data[random.randrange(len(data))] ^= 1 << random.randrange(8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with Image.open(io.BytesIO(bytes(data))) as img:
                    img.load()
            except Exception:  # noqa: BLE001 - not decodable: try the next
                continue
        if caught and not any("decompression" in str(w.message) for w in caught):
            found.append(folder / f"w{n}.tif")
            found[-1].write_bytes(data)
            if len(found) == count:
                return found
    raise AssertionError("no warning TIFF made")


@pytest.mark.parametrize("workers", [0, 2])
def test_pillow_warnings_name_the_file(tmp_path, workers):
    src = tmp_path / "warn"
    src.mkdir()
    first, second = _warning_tiffs(src)
    with pytest.warns(UserWarning) as said:
        result = prepare(src, 8, tmp_path / "out", num_workers=workers)
    assert result.count == 2
    texts = [str(w.message) for w in said]
    assert any(t.startswith(f"{first}: ") for t in texts), texts
    assert any(t.startswith(f"{second}: ") for t in texts), texts
    assert all(t.startswith((f"{first}: ", f"{second}: ")) for t in texts), texts


def test_pillow_warnings_get_their_own_line_beside_the_bar(tmp_path):
    src = tmp_path / "warn"
    src.mkdir()
    files = _warning_tiffs(src)
    _noise(3).save(src / "a.png")
    done = subprocess.run([sys.executable, "-m", "pixeljit", "prepare", str(src), "--size",
                           "8", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.split("\n") if "warning" in line]
    assert lines, done.stderr
    for line in lines:  # not after the bar's text on its line
        assert re.match(rf"pixeljit prepare: warning: ({'|'.join(map(str, files))}): ", line), line


# --- 4: --layout classes packs split-named folders as classes -------------------------------


def test_layout_classes_overrides_the_split_guess(tmp_path):
    src = tmp_path / "splitnames"
    for k, name in enumerate(("train", "test")):
        (src / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(src / name / "a.png")
    with pytest.raises(ValueError, match=r"holds split folders.*--layout classes"):
        prepare(src, 8, tmp_path / "auto")
    result = prepare(src, 8, tmp_path / "out", layout="classes")
    data = PackedDataset(result.out_dir)
    assert data.class_names == ["test", "train"] and data.labels.tolist() == [0, 1]


# --- 5: one message for an oversized image, whichever limit it passes ------------------------


def _png_header(path: Path, side: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


@pytest.mark.parametrize("side", [12_000, 20_000])  # under / over Pillow's own refusal
def test_a_huge_image_gets_one_message_with_our_limit_and_the_fixes(tmp_path, side):
    src = tmp_path / "bomb"
    src.mkdir()
    _png_header(src / "big.png", side)
    with pytest.raises(BadImageError) as caught:
        prepare(src, 8, tmp_path / "out")
    text = str(caught.value)
    assert f"{src / 'big.png'}: " in text and "over the limit of 67,108,864 pixels" in text
    assert "shrink it to at most 8192 x 8192 pixels" in text and "--skip-bad" in text
    assert "DOS attack" not in text and f"{side * side:,} pixels" in text


# --- 6: a control character in a class name does not break the grid's labels --------------


def test_grid_labels_show_control_characters_escaped():
    images = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    broken = np.asarray(make_grid(images, ncols=1, row_labels=["cat\nsit", "a\x07b"]))
    shown = np.asarray(make_grid(images, ncols=1, row_labels=["cat\\nsit", "a\\x07b"]))
    assert broken.shape == shown.shape and (broken == shown).all()


# --- 7: skipped files advance the bar ---------------------------------------------------------


def test_skip_bad_bar_counts_skipped_files(tmp_path, capsys):
    src = tmp_path / "skip"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "0.png")
    for i in range(1, 10):
        (src / f"{i}.png").write_bytes(b"not a png")
    result = prepare(src, 8, tmp_path / "out", skip_bad=True, progress=True)
    assert result.count == 1 and len(result.skipped) == 9
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "10/10" in last, last


# --- 8: a set a killed `sample --out` left half moved in is finished before packing ---------


@pytest.mark.parametrize("reader", ["prepare", "open_dataset"])
def test_a_half_moved_image_set_is_finished_before_it_is_packed(tmp_path, reader):
    out = tmp_path / "samples"
    write_set(out, [10, 11, 12, 13], [0] * 4)
    kill_while_writing_set(out, [20, 21, 22, 23], [0] * 4, after=2)
    on_disk = [np.asarray(Image.open(p))[0, 0].item() for p in sorted(out.glob("*.png"))]
    assert on_disk == [20, 21, 12, 13]  # the mix the kill left; the rest is staged
    with pytest.warns(UserWarning, match=rf"{out}: finished a write .* before reading it"):
        if reader == "prepare":
            data = PackedDataset(prepare(out, 4, tmp_path / "packed", channels=1).out_dir)
        else:
            data = open_dataset(str(out), 4, 1)
    assert data.slice(0, len(data))[:, 0, 0, 0].tolist() == [20, 21, 22, 23]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
