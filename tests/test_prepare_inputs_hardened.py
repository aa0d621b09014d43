"""Image folders `prepare` (and the train --data cache) must read right or refuse clearly: PNG
tRNS transparency, 16/12-bit PGM (mode 'I'), dangling class links, FIFOs, non-UTF-8 names, and
Pillow's own decompression-bomb warning."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_group
from pixeljit.data import PackedDataset, prepare
from pixeljit.data.folders import decode_image, folder_fingerprint, scan_image_folder
from pixeljit.data.transforms import to_channels

SIDE = 4  # pixels: every image here is tiny
WHITE = 255
FIFO_TIMEOUT_S = 60  # a hang shows as a timeout, never as a stuck test run
BOMB_SIDE = 10_000  # 100 M pixels: over Pillow's warning limit and pixeljit's own


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(path: Path, depth: int, colour: int, row: bytes, trns: bytes | None = None,
         side: int = SIDE) -> Path:  # fmt: skip
    """A raw PNG of `side` identical rows (colour type `colour`, bit depth `depth`)."""
    header = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if trns is not None:
        body += _chunk(b"tRNS", trns)
    body += _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for _ in range(side))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + _chunk(b"IEND", b""))
    return path


def _pgm(path: Path, maxval: int, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"P5 {SIDE} {SIDE} {maxval}\n".encode() + struct.pack(">H", value) * SIDE**2)
    return path


def _rgb(path: Path, colour=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIDE, SIDE), colour).save(path, format="PNG")
    return path


# --- 2: tRNS transparency -------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth,colour,row,trns",
    [
        (8, 0, bytes(SIDE), struct.pack(">H", 0)),  # L, black transparent
        (8, 2, bytes(3 * SIDE), struct.pack(">HHH", 0, 0, 0)),  # RGB, black transparent
        (16, 0, struct.pack(">H", 100 * 257) * SIDE, struct.pack(">H", 100 * 257)),  # I;16
    ],
    ids=["L", "RGB", "I16"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_trns_transparency_goes_white(tmp_path, depth, colour, row, trns, channels):
    path = _png(tmp_path / "x.png", depth, colour, row, trns)
    arr = decode_image(path, SIDE, channels)
    assert (arr == WHITE).all(), arr


def test_trns_keeps_opaque_pixels_and_16_bit_rule(tmp_path):
    """Only the tRNS value is transparent (compared on all 16 bits); others keep their top 8."""
    values = [100 * 257, 100 * 257 + 1, 200 * 257, 0]  # the 2nd differs only in its low byte
    path = _png(
        tmp_path / "x.png", 16, 0, struct.pack(">4H", *values), struct.pack(">H", 100 * 257)
    )
    with Image.open(path) as img:
        img.load()
        out = np.asarray(to_channels(img, 1))
    assert out[0].tolist() == [WHITE, 100, 200, 0]


# --- 8: 16-bit and 12-bit PGM (mode 'I') -----------------------------------------------------


@pytest.mark.parametrize("maxval,value,expected", [(65535, 200 * 257, 200), (4095, 4095, 255),
                                                   (4095, 2048, 128)])  # fmt: skip
def test_pgm_sixteen_and_twelve_bit(tmp_path, maxval, value, expected):
    arr = decode_image(_pgm(tmp_path / "x.pgm", maxval, value), SIDE, 1)
    assert (arr == expected).all(), arr


@pytest.mark.parametrize("value", [-1, 65536])
def test_mode_i_outside_sixteen_bits_refused(value):
    img = Image.fromarray(np.full((SIDE, SIDE), value, np.int32))
    assert img.mode == "I"
    with pytest.raises(ValueError, match=r"outside the 16-bit range 0\.\.65535"):
        to_channels(img, 1)


def test_prepare_packs_sixteen_bit_pgm(tmp_path):
    _pgm(tmp_path / "src" / "x.pgm", 65535, 77 * 257)
    prepare(str(tmp_path / "src"), SIDE, tmp_path / "out", channels=1)
    assert (PackedDataset(tmp_path / "out").slice(0, 1) == 77).all()


# --- 4: class-level entries that are neither folder nor file --------------------------------


def test_dangling_class_link_refused(tmp_path):
    src = tmp_path / "src"
    _rgb(src / "a" / "x.png")
    _rgb(src / "c" / "x.png")
    target = tmp_path / "unmounted" / "b"
    (src / "b").symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link") as err:
        scan_image_folder(src)
    assert str(src / "b") in str(err.value) and str(target) in str(err.value)


def test_fifo_beside_class_folders_listed_as_ignored(tmp_path):
    src = tmp_path / "src"
    _rgb(src / "a" / "x.png")
    os.mkfifo(src / "pipe")
    scan = scan_image_folder(src, layout="classes")
    assert scan.class_names == ["a"]
    assert str(src / "pipe") in scan.ignored


# --- 12: a FIFO named like an image never blocks ---------------------------------------------


@pytest.mark.parametrize("skip_bad", [False, True])
def test_fifo_image_never_opened(tmp_path, skip_bad):
    src = tmp_path / "src"
    _rgb(src / "a" / "ok.png")
    os.mkfifo(src / "a" / "x.png")
    code = (
        "import sys; from pixeljit.data import prepare\n"
        "try:\n"
        f"    r = prepare(sys.argv[1], {SIDE}, sys.argv[2], skip_bad={skip_bad})\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n"
        "else:\n"
        "    print('SKIPPED', [b.path for b in r.skipped], r.count)\n"
    )
    cmd = [sys.executable, "-c", code, str(src), str(tmp_path / "out")]
    try:
        done = run_group(cmd, FIFO_TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"prepare hung on a FIFO for {FIFO_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr
    assert "named pipe" in done.stdout or skip_bad, done.stdout
    word = "SKIPPED" if skip_bad else "REFUSED"
    assert done.stdout.startswith(word) and str(src / "a" / "x.png") in done.stdout, done.stdout
    if skip_bad:
        assert done.stdout.rstrip().endswith(" 1"), done.stdout


# --- 6: names that are not valid UTF-8 -------------------------------------------------------


def test_non_utf8_file_names_fingerprint_and_pack(tmp_path):
    src = tmp_path / "src"
    _rgb(src / "a" / "ok.png")
    _rgb(Path(os.fsdecode(bytes(src / "a") + b"/x\xff.png")))
    Path(os.fsdecode(bytes(src / "a") + b"/z\xfe.png")).write_bytes(b"not an image")
    assert len(folder_fingerprint(scan_image_folder(src))) == 64
    result = prepare(str(src), SIDE, tmp_path / "out", skip_bad=True)
    assert result.count == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text("utf-8"))
    assert manifest["skipped"][0]["path"].endswith("z\\xfe.png")


def test_non_utf8_class_name_refused(tmp_path):
    src = tmp_path / "src"
    _rgb(Path(os.fsdecode(bytes(src) + b"/caf\xe9/x.png")))
    with pytest.raises(ValueError, match=r"not valid UTF-8.*rename"):
        prepare(str(src), SIDE, tmp_path / "out")


# --- 13: one message for an oversized image, not Pillow's warning too ------------------------


def test_no_pillow_bomb_warning(tmp_path):
    path = _png(tmp_path / "big.png", 8, 0, b"", side=BOMB_SIDE)  # header only matters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="over the limit"):
            decode_image(path, SIDE, 3)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
