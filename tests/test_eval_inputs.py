"""What `pixeljit eval` reads and refuses: 16-bit and palette images read as `prepare` reads them,
the real cause of a reference that does not fit, --make-ref on an images .npz, and inputs or
flags that would otherwise be scored silently wrong."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_errors import cli_error
from pixeljit.cli import build_parser, main
from pixeljit.cli.evaluate_args import check_args
from pixeljit.metrics import DatasetStats, save_dataset_stats
from pixeljit.metrics.image_sources import count_path_images, iter_folder_images, iter_npz_images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE, COUNT = 16, 40


def _grey(count: int = COUNT, seed: int = 0) -> np.ndarray:
    """(count, SIZE, SIZE) uint8 grey images covering every value 0..255."""
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)


def _png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one): (H, W, 3) uint16."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def _folder(path: Path, images: np.ndarray, save) -> Path:
    path.mkdir(parents=True)
    for k, a in enumerate(images):
        save(a).save(path / f"{k:03d}.png")
    return path


def _read(folder: Path) -> np.ndarray:
    return np.concatenate([b.numpy() for b in iter_folder_images(folder)])


# ------------------------------------------------------------------------------ pixel values


def test_16_bit_pngs_read_as_the_8_bit_values_they_hold(tmp_path):
    """16-bit grey PNGs were converted with Pillow's clipping `convert('L')`: every value above
    255 became 255 (FD 24 instead of 2 for the same images). v·257 must read back as v, as
    `pixeljit prepare` reads it, for grey and for 48-bit RGB."""
    grey = _grey(4)
    g8 = _folder(tmp_path / "g8", grey, Image.fromarray)
    g16 = _folder(tmp_path / "g16", grey, lambda a: Image.fromarray(a.astype(np.uint16) * 257))
    assert Image.open(next(g16.iterdir())).mode.startswith("I;16")
    assert np.array_equal(_read(g16), _read(g8)) and _read(g16).shape[1] == 1
    rgb = np.stack([grey[0], 255 - grey[0], grey[1]], axis=-1)  # (H, W, 3)
    (tmp_path / "c16").mkdir()
    _png16_rgb(tmp_path / "c16" / "a.png", rgb.astype(np.uint16) * 257)
    assert np.array_equal(_read(tmp_path / "c16")[0], rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("array", [np.full((8, 8), 70000, np.int32), np.full((8, 8), 0.5, "f4")])
def test_modes_without_an_8_bit_meaning_are_refused_like_prepare(tmp_path, array):
    """A 32-bit integer or float image was squeezed into 8 bits by whatever Pillow's convert
    does; `prepare` refuses those modes, and so does eval now, naming the file and the mode."""
    path = tmp_path / "deep.png"  # Pillow reads the content, not the name: a TIFF inside
    Image.fromarray(array).save(path, format="TIFF")
    mode = Image.open(path).mode
    assert mode in ("I", "F")
    with pytest.raises(ValueError, match=f"deep.png: unsupported image mode '{mode}'") as err:
        _read(tmp_path)
    assert "\n" not in str(err.value)


def test_a_grey_palette_png_is_read_as_grey_and_a_colour_palette_as_colour(tmp_path):
    """Palette PNGs were all read as RGB: grey images saved with a palette of greys came out
    3-channel and could not be scored against a grey reference."""
    grey = _grey(3)
    palette = _folder(tmp_path / "pal", grey, lambda a: Image.fromarray(a).convert("P"))
    assert Image.open(next(palette.iterdir())).mode == "P"
    assert np.array_equal(_read(palette), grey[:, None])
    colour = Image.fromarray(np.stack([grey[0], grey[1], grey[2]], -1)).convert("P")
    (tmp_path / "cpal").mkdir()
    colour.save(tmp_path / "cpal" / "a.png")
    assert _read(tmp_path / "cpal").shape == (1, 3, SIZE, SIZE)


# --------------------------------------------------------------------- references and the CLI


@pytest.fixture(scope="module")
def grey_set(tmp_path_factory):
    """COUNT grey images as an images .npz (arr_0, NHWC)."""
    root = tmp_path_factory.mktemp("grey")
    np.savez(root / "imgs.npz", arr_0=_grey()[..., None])
    return root


def test_make_ref_takes_an_images_npz_and_every_form_of_those_images_scores_zero(
    grey_set, tmp_path
):
    """--make-ref on an images .npz said it 'lacks mu/sigma: not a statistics file'. Made from
    it, the statistics score the same images as 8-bit, 16-bit and grey-palette PNGs at FD 0."""
    ref = tmp_path / "ref.npz"
    made = main(["eval", "--make-ref", str(grey_set / "imgs.npz"), "--size", str(SIZE),
                 "--channels", "1", "--extractor", "fmnist-cnn", "--out", str(ref)])  # fmt: skip
    assert made == 0
    grey = _grey()
    forms = {
        "npz": grey_set / "imgs.npz",
        "g16": _folder(tmp_path / "g16", grey, lambda a: Image.fromarray(a.astype("u2") * 257)),
        "pal": _folder(tmp_path / "pal", grey, lambda a: Image.fromarray(a).convert("P")),
    }
    for name, images in forms.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--images", str(images), "--ref", str(ref), "--metrics", "fd",
                     "--out", str(out)]) == 0, name  # fmt: skip
        fd = json.loads(out.read_text())["scores"]["FD-FMNIST"]
        assert 0.0 <= fd < 1e-9, (name, fd)


def test_make_ref_refuses_a_statistics_file_saying_what_it_takes(grey_set, tmp_path, capsys):
    """A statistics .npz given to --make-ref was copied to --out as if measured."""
    stats = tmp_path / "stats.npz"
    save_dataset_stats(stats, DatasetStats(np.zeros(4), np.eye(4)))
    err = cli_error(capsys, ["eval", "--make-ref", str(stats), "--size", "16", "--channels", "1",
                             "--out", str(tmp_path / "out.npz")])  # fmt: skip
    assert "holds statistics" in err and f"--ref {stats}" in err and "image folder" in err
    assert not (tmp_path / "out.npz").exists()


def _grey_ref(path: Path, shape=(1, SIZE, SIZE)) -> Path:
    """fmnist-cnn-sized (128-d) statistics recording the image shape they measured."""
    save_dataset_stats(path, DatasetStats(np.zeros(128), np.eye(128), 10, "fmnist-cnn",
                                          image_shape=shape))  # fmt: skip
    return path


def test_colour_images_against_a_grey_reference_name_the_channel_count(tmp_path, capsys):
    """With the default extractor the error was '128-d statistics but extractor effnet-lite0
    gives 1280-d features': the symptom (auto picks the extractor by channel count), and it
    said nothing of the channels. The shape is checked first, and worded per mismatch."""
    ref = _grey_ref(tmp_path / "ref16.npz")
    rgb = _folder(tmp_path / "rgb", _grey(4), lambda a: Image.fromarray(a).convert("RGB"))
    err = cli_error(capsys, ["eval", "--images", str(rgb), "--ref", str(ref), "--metrics", "fd"])
    assert "1-channel images, but the images of --images" in err and "3-channel" in err
    assert "difference in channel count, not" in err and "difference in size" not in err
    assert "-d statistics" not in err and "--channels 3" in err
    small = _folder(tmp_path / "g8", _grey(4)[:, :8, :8], Image.fromarray)
    err = cli_error(capsys, ["eval", "--images", str(small), "--ref", str(ref), "--metrics", "fd"])
    assert "difference in size, not" in err and "channel count" not in err


# ----------------------------------------------------------------------- inputs refused clearly


def test_unknown_extractor_lists_auto_too(grey_set, capsys):
    err = cli_error(capsys, ["eval", "--images", str(grey_set / "imgs.npz"), "--ref", "r.npz",
                             "--extractor", "bogus"])  # fmt: skip
    assert "'bogus'" in err and "auto" in err and "fmnist-cnn" in err


def test_missing_images_path_says_it_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = cli_error(capsys, ["eval", "--images", str(missing), "--ref", "r.npz"])
    assert f"{missing} does not exist" in err and "neither" not in err


def test_an_npz_with_two_image_arrays_is_refused_naming_them(tmp_path, capsys):
    """arr_0 and arr_1 of images: only arr_0 was scored, without a word."""
    path = tmp_path / "two.npz"
    images = _grey(4)[..., None]
    np.savez(path, images, images[::-1])  # arr_0, arr_1
    for read in (count_path_images, lambda p: next(iter_npz_images(p))):
        with pytest.raises(ValueError, match="2 image arrays .arr_0, arr_1.*ambiguous"):
            read(path)
    err = cli_error(capsys, ["eval", "--images", str(path), "--ref", "r.npz", "--metrics", "is"])
    assert "arr_0, arr_1" in err
    np.savez(path, arr_0=images, labels=np.arange(4))  # images with labels: one image array
    assert count_path_images(path) == 4


def test_a_folder_with_images_only_in_subfolders_names_one(tmp_path, capsys):
    _folder(tmp_path / "set" / "b", _grey(2), Image.fromarray)  # "a" holds no images
    (tmp_path / "set" / "a").mkdir()
    err = cli_error(capsys, ["eval", "--images", str(tmp_path / "set"), "--ref", "r.npz"])
    assert "no image files" in err and "top level" in err
    assert f"subfolder {tmp_path / 'set' / 'b'} holds images" in err


def _eval_args(tiny_file, *flags):
    return build_parser().parse_args(["eval", "--checkpoint", str(tiny_file), "--ref", "r.npz",
                                      *flags])  # fmt: skip


def test_a_sweep_step_larger_than_its_range_is_refused(tiny_file):
    """--sweep-cfg 1 2 5 swept 1.0 alone; 1 2 0.6 swept 2.2, past HI."""
    with pytest.raises(ValueError, match=r"--sweep-cfg 1 2 5: STEP is larger than HI − LO = 1"):
        check_args(_eval_args(tiny_file, "--sweep-cfg", "1", "2", "5"))
    assert check_args(_eval_args(tiny_file, "--sweep-cfg", "1", "2", "0.6")) == [1.0, 1.6]
    scales = check_args(_eval_args(tiny_file, "--sweep-cfg", "1", "4", "0.1"))
    assert len(scales) == 31 and scales[-1] == 4.0
    assert check_args(_eval_args(tiny_file, "--sweep-cfg", "2", "2", "5")) == [2.0]


def test_weights_named_twice_in_emas_are_refused(tiny_file):
    """--emas model ema:0.999 model generated and scored 'model' twice."""
    sweep = ("--sweep-cfg", "1", "2", "1")
    with pytest.raises(ValueError, match="names model more than once"):
        check_args(_eval_args(tiny_file, *sweep, "--emas", "model", "ema:0.999", "model"))
    with pytest.raises(ValueError, match="'all' already names every EMA"):
        check_args(_eval_args(tiny_file, *sweep, "--emas", "all", "model"))


@pytest.mark.parametrize("name", ["weights.safetensors", "latest.pt", "grid.png", "notes.json"])
def test_a_ref_file_that_is_no_statistics_npz_is_named_as_such(tmp_path, capsys, name):
    """A --ref file of another kind was reported as "not a packed folder, an image folder, or
    one of ('fashion-mnist', 'emoji')", never naming the statistics .npz it should have been."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_grey(12)):
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    ref = tmp_path / name
    ref.write_bytes(b"not statistics")
    err = cli_error(capsys, ["eval", "--images", str(folder), "--metrics", "fd", "--ref",
                             str(ref), "--extractor", "fmnist-cnn"])  # fmt: skip
    assert f"reference {ref} is a file but not a statistics .npz: pass the .npz" in err
