"""How `pixeljit eval --images DIR` and `load_images` read a folder of image files: a named pipe
named x.png made them wait forever; images in sub-folders were left out without a word; the
channel count was the first file's, so one grey image among colour ones made the folder grey
(or refused it, suggesting a resize); Pillow's decode warnings came without the file's name,
twice on the command line; and a decompression bomb got Pillow's raw error with its own limit
or pixeljit's message with another, by how large the image declared itself."""

from __future__ import annotations

import argparse
import io
import os
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_errors import cli_error
from pixeljit.data.transforms import MAX_IMAGE_PIXELS
from pixeljit.metrics.image_sources import load_images

SIDE = 16
TIFF_WARNING = "Metadata Warning, tag 278 had too many entries"


def _grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)


def _pngs(folder: Path, count: int, colour: bool = False, start: int = 0) -> Path:
    """`folder` (made if missing) with `count` noise PNGs {start:02d}.png, … grey or RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + count):
        pixels = np.stack([_grey(k), _grey(k + 100), _grey(k + 200)], -1) if colour else _grey(k)
        Image.fromarray(pixels).save(folder / f"{k:02d}.png")
    return folder


def _tiff_with_a_bad_tag(path: Path) -> None:
    """A valid SIDE × SIDE grey TIFF whose RowsPerStrip (tag 278) holds two values: Pillow
    reads it, warning 'Metadata Warning, tag 278 had too many entries: 2, expected 1'."""
    pixels = _grey(7).tobytes()
    entries = [(256, 3, 1, SIDE), (257, 3, 1, SIDE), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, None), (277, 3, 1, 1), (278, 3, 2, None),
               (279, 4, 1, len(pixels))]  # fmt: skip
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        if tag == 278:  # two SHORTs, both SIDE
            out += struct.pack("<HHIHH", tag, kind, count, SIDE, SIDE)
        elif kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, data_at if tag == 273 else value)
    path.write_bytes(bytes(out + struct.pack("<I", 0) + pixels))


def _declared_png(path: Path, side: int) -> None:
    """A tiny PNG whose header declares side × side pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


class Hung(Exception):
    """A read that did not return in time (it waited on a pipe)."""


@contextmanager
def _within(seconds: int):
    """Fail with Hung, rather than hang, when the block runs longer than `seconds`."""

    def expired(signum, frame):
        raise Hung(f"still running after {seconds} s: waiting on the pipe?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _said(caught) -> list[str]:
    return [str(w.message) for w in caught]


# ----------------------------------------------------------------------- 1: pipes and devices


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
@pytest.mark.parametrize("linked", [False, True], ids=["pipe", "link-to-pipe"])
def test_a_named_pipe_among_the_images_is_refused_by_name_not_waited_on(tmp_path, capsys, linked):
    folder = _pngs(tmp_path / "imgs", 2, start=1)
    if linked:
        os.mkfifo(tmp_path / "pipe")
        (folder / "00.png").symlink_to(tmp_path / "pipe")
    else:
        os.mkfifo(folder / "00.png")
    with _within(20), pytest.raises(ValueError) as caught:
        load_images(folder)
    message = str(caught.value)
    assert str(folder / "00.png") in message and "named pipe (FIFO)" in message, message
    assert "remove it or replace it" in message
    with _within(20):
        err = cli_error(capsys, ["eval", "--images", str(folder), "--metrics", "is"])
    assert f"{folder / '00.png'}: not a regular file but a named pipe (FIFO)" in err, err


# ---------------------------------------------------------- 2: images in sub-folders are said


def test_images_in_sub_folders_are_warned_of_by_name(tmp_path):
    folder = _pngs(tmp_path / "nested", 3)
    _pngs(folder / "sub", 3, start=3)
    _pngs(folder / "deeper" / "down", 1, start=6)  # images two levels down count too
    (folder / "empty").mkdir()
    _pngs(folder / ".hidden", 1, start=7)  # hidden: never read, not a sub-folder of images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_images(folder).shape == (3, 1, SIDE, SIDE)  # the top level, as documented
    said = [w for w in caught if str(folder / "sub") in str(w.message)]
    assert len(said) == 1, _said(caught)
    text = str(said[0].message)
    assert said[0].category.__name__ == "SubfolderImagesWarning"  # a category to filter by
    assert str(folder / "sub") in text and str(folder / "deeper") in text, text
    assert "empty" not in text and ".hidden" not in text and "not scored" in text, text


def test_a_folder_without_sub_folders_of_images_is_read_without_a_warning(tmp_path):
    """(a guard: passes before the fix too)"""
    folder = _pngs(tmp_path / "flat", 3)
    (folder / "notes").mkdir()
    (folder / "notes" / "a.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_images(folder).shape == (3, 1, SIDE, SIDE)


# -------------------------------------------------------------- 3: the folder's channel count


@pytest.mark.parametrize("grey_first", [True, False])
def test_one_grey_image_among_colour_ones_is_read_as_rgb(tmp_path, grey_first):
    folder = _pngs(tmp_path / "mixed", 3, colour=True, start=1)
    grey_name = "00.png" if grey_first else "09.png"
    Image.fromarray(_grey(50)).save(folder / grey_name)
    images = load_images(folder).numpy()
    assert images.shape == (4, 3, SIDE, SIDE)
    grey = images[0 if grey_first else -1]
    for channel in grey:  # as prepare converts it: three equal channels
        np.testing.assert_array_equal(channel, _grey(50))


def test_a_grey_palette_image_stays_grey_and_a_colour_palette_makes_the_folder_rgb(tmp_path):
    greys = _pngs(tmp_path / "greys", 2, start=1)
    Image.fromarray(_grey(60)).convert("P").save(greys / "00.png")
    assert Image.open(greys / "00.png").mode == "P"
    assert load_images(greys).shape == (3, 1, SIDE, SIDE)  # (a guard: grey before the fix too)
    colours = _pngs(tmp_path / "colours", 2, start=1)
    rgb = np.stack([_grey(61), _grey(62), _grey(63)], -1)
    Image.fromarray(rgb).convert("P").save(colours / "00.png")  # a palette of colours, first
    assert load_images(colours).shape == (3, 3, SIDE, SIDE)


def _probe(folder: Path, channels: int):
    from pixeljit.cli.evaluate import _image_shape

    return _image_shape(argparse.Namespace(images=str(folder), size=None, channels=channels))


def test_the_channel_flag_is_checked_against_the_folder_and_never_told_to_resize(tmp_path):
    mixed = _pngs(tmp_path / "mixed", 3, colour=True, start=1)
    Image.fromarray(_grey(50)).save(mixed / "00.png")  # grey first
    assert _probe(mixed, 3) == (3, SIDE, SIDE)
    with pytest.raises(ValueError) as caught:
        _probe(mixed, 1)
    message = str(caught.value)
    assert "RGB (3 channels)" in message and str(mixed / "01.png") in message, message
    assert "resize" not in message and "save every image as grey" in message, message
    with pytest.raises(ValueError) as caught:
        _probe(_pngs(tmp_path / "greys", 2), 3)
    message = str(caught.value)
    assert "grey (1 channel)" in message and "resize" not in message, message


# ------------------------------------------------- 4: Pillow's warnings, named and said once


def test_a_decode_warning_names_its_file_once(tmp_path):
    folder = _pngs(tmp_path / "imgs", 2)
    _tiff_with_a_bad_tag(folder / "x.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = load_images(folder)
    assert images.shape == (3, 1, SIDE, SIDE)
    said = [text for text in _said(caught) if TIFF_WARNING in text]
    assert len(said) == 1 and said[0].startswith(f"{folder / 'x.tif'}: {TIFF_WARNING}"), said


def test_the_command_line_says_each_decode_warning_once_naming_the_file(tmp_path):
    """One run covers the sub-folder warning too: said once, before the scores."""
    folder = _pngs(tmp_path / "imgs", 10)
    _tiff_with_a_bad_tag(folder / "0.tif")  # sorted first: the file the shape was probed on
    assert sorted(p.name for p in folder.iterdir())[0] == "0.tif"
    _pngs(folder / "more", 2, start=20)
    argv = ["eval", "--images", str(folder), "--extractor", "fmnist-cnn", "--metrics", "is"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIXELJIT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pixeljit", *argv], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if TIFF_WARNING in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"pixeljit eval: warning: {folder / '0.tif'}: {TIFF_WARNING}")
    subs = [line for line in done.stderr.splitlines() if str(folder / "more") in line]
    assert len(subs) == 1 and "not scored" in subs[0], done.stderr


# -------------------------------------------------------------- 5: decompression bombs, one way


@pytest.mark.parametrize("side", [20000, 12000], ids=["past-pillow-limit", "past-ours"])
def test_a_decompression_bomb_gets_one_message_with_the_projects_limit(tmp_path, capsys, side):
    """Past Pillow's own limit (about 179 M pixels) and past pixeljit's (67 M): the same
    message, naming the file, pixeljit's limit and the fix."""
    folder = _pngs(tmp_path / "imgs", 10)  # enough for IS: the bomb is what is refused
    _declared_png(folder / "bomb.png", side)
    with pytest.raises(ValueError) as caught:
        load_images(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'bomb.png'}: image of "), message
    assert f"{side * side:,} pixels" in message, message
    limit = f"is over the limit of {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb"
    assert limit in message and message.endswith("shrink it to at most 8192 x 8192 pixels, or "
                                                 "remove it"), message  # fmt: skip
    assert "178956970" not in message and "DOS attack" not in message, message
    err = cli_error(capsys, ["eval", "--images", str(folder), "--metrics", "is"])
    assert f"{folder / 'bomb.png'}: image of " in err and limit in err, err
