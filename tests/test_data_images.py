"""Pixels and folders: colour modes, the ADM crop, folder layouts, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixeljit.data.folders import decode_image, folder_stream, scan_image_folder
from pixeljit.data.source import BadImageError
from pixeljit.data.transforms import adm_center_crop, image_to_chw, resize_stack, to_channels


# --- colour modes ------------------------------------------------------------------------------
def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # transparent -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> itself
    rgba[0, 2] = (0, 100, 200, 128)  # half -> blend with white
    out = np.asarray(to_channels(Image.fromarray(rgba, "RGBA"), 3)).astype(int)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 1], (10, 20, 30))
    a = 128 / 255
    blend = np.array([0, 100, 200]) * a + 255 * (1 - a)
    assert np.abs(out[0, 2] - blend).max() <= 1


def test_grey_palette_and_16bit_modes():
    la = Image.fromarray(np.array([[[40, 0], [40, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(np.asarray(to_channels(la, 1)), [[255, 40]])
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1])
    np.testing.assert_array_equal(np.asarray(to_channels(pal, 3)), [[[255, 0, 0], [0, 0, 255]]])
    pal.info["transparency"] = 0  # index 0 transparent -> white
    np.testing.assert_array_equal(np.asarray(to_channels(pal, 3)), [[[255, 255, 255], [0, 0, 255]]])
    grey = Image.fromarray(np.array([[7, 200]], np.uint8))
    rgb = np.asarray(to_channels(grey, 3))
    np.testing.assert_array_equal(rgb, [[[7, 7, 7], [200, 200, 200]]])  # L -> RGB replicates
    red = Image.new("RGB", (1, 1), (255, 0, 0))
    assert np.asarray(to_channels(red, 1))[0, 0] == 76  # ITU-R 601 luma: 0.299 * 255
    deep = Image.fromarray(np.array([[0x1234, 0xFF00]], np.uint16))
    assert deep.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(to_channels(deep, 1)), [[0x12, 0xFF]])
    with pytest.raises(ValueError, match="unsupported image mode"):
        to_channels(Image.new("F", (2, 2)), 3)
    with pytest.raises(ValueError, match="channels"):
        to_channels(grey, 2)


# --- the ADM centre crop -----------------------------------------------------------------------
def test_adm_crop_box_halves_before_bicubic():
    """A 4x block image becomes exactly its blocks: two box halvings, then no resampling.
    A direct bicubic resize blurs across blocks, so this tells the two rules apart."""
    blocks = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    big = np.kron(blocks, np.ones((4, 4), np.uint8))  # (32, 32)
    np.testing.assert_array_equal(adm_center_crop(Image.fromarray(big), 8), blocks)
    direct = np.asarray(Image.fromarray(big).resize((8, 8), Image.BICUBIC))
    assert not np.array_equal(direct, blocks)


def test_adm_crop_takes_the_centre():
    size = 16
    wide = np.random.default_rng(1).integers(0, 256, (size, size + 7, 3), dtype=np.uint8)
    out = adm_center_crop(Image.fromarray(wide), size)  # short side == size: only the crop
    np.testing.assert_array_equal(out, wide[:, 3 : 3 + size])
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))  # (size + 7, size, 3)
    np.testing.assert_array_equal(adm_center_crop(Image.fromarray(tall), size), tall[3 : 3 + size])


@pytest.mark.parametrize("size", [32, 64, 128, 20])
def test_resize_to_any_resolution_keeps_constants(size):
    flat = np.full((2, 1, 28, 28), 93, np.uint8)
    out = resize_stack(flat, size, 1)
    assert out.shape == (2, 1, size, size) and (out == 93).all()
    assert resize_stack(flat, size, 3).shape == (2, 3, size, size)
    assert resize_stack(flat, 28, 1) is flat  # already there: untouched


def test_non_square_rgb_to_chw():
    img = Image.new("RGB", (300, 200), (1, 2, 3))
    chw = image_to_chw(img, 64, 3)
    assert chw.shape == (3, 64, 64) and chw.dtype == np.uint8
    np.testing.assert_array_equal(chw[:, 10, 10], (1, 2, 3))


def test_exif_orientation_is_applied_when_packing_and_scoring(tmp_path):
    """A phone photo stores its pixels sideways with an EXIF Orientation tag; `prepare` (and
    `eval --images DIR`) packed the stored layout. Orientation 6 (rotate 90° clockwise to
    view): a 40 × 20 picture dark left / bright right is viewed dark on top, bright below."""
    from pixeljit.metrics.image_sources import iter_folder_images

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise
    (tmp_path / "c").mkdir()
    Image.fromarray(pixels).save(tmp_path / "c" / "r.png", exif=exif.tobytes())
    packed = decode_image(tmp_path / "c" / "r.png", 16, 3)
    (scored,) = [batch[0].numpy() for batch in iter_folder_images(tmp_path / "c")]
    assert scored.shape == (3, 40, 20)  # upright: 20 wide, 40 tall
    for chw in (packed, scored):
        rows = chw.mean(axis=(0, 2))  # brightness by row, top to bottom
        assert rows[0] < 10 and rows[-1] > 245, rows


# --- folders -----------------------------------------------------------------------------------
def save(path, mode: str, colour, size=(20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def make_imagenet(root):
    """root/train/{cat,dog}/ with RGB jpg, RGBA png, grey png, palette gif; root/val/cat/."""
    save(root / "train" / "dog" / "b.png", "RGBA", (0, 0, 255, 0))
    save(root / "train" / "dog" / "a.jpg", "RGB", (0, 200, 0))
    save(root / "train" / "cat" / "z.png", "L", 90)
    save(root / "train" / "cat" / "sub" / "p.gif", "P", 3)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    save(root / "val" / "cat" / "v.png", "RGB", (1, 1, 1))


def test_imagenet_layout_sorted_classes_and_files(tmp_path):
    make_imagenet(tmp_path)
    scan = scan_image_folder(tmp_path, split="train")
    assert scan.layout == "classes" and scan.class_names == ["cat", "dog"]
    rel = [(p.relative_to(tmp_path / "train").as_posix(), y) for p, y in scan.files]
    assert rel == [("cat/sub/p.gif", 0), ("cat/z.png", 0), ("dog/a.jpg", 1), ("dog/b.png", 1)]
    assert [p.endswith("notes.txt") for p in scan.ignored] == [True]
    save(tmp_path / "train" / "dog" / ".hidden.png", "RGB", (9, 9, 9))  # e.g. a thumbnail
    save(tmp_path / "train" / ".cache" / "x.png", "RGB", (9, 9, 9))  # not a class, not entered
    again = scan_image_folder(tmp_path, split="train")
    assert again.files == scan.files and again.class_names == ["cat", "dog"]
    hidden = sorted(Path(p).relative_to(tmp_path / "train").as_posix() for p in again.ignored)
    assert hidden == [".cache", "cat/notes.txt", "dog/.hidden.png"]  # each named, none silent
    stream = folder_stream(tmp_path, 8, split="train")
    images, labels = next(stream.batches)
    assert images.shape == (4, 3, 8, 8) and stream.conditional
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(images[1, :, 0, 0], (90, 90, 90))  # grey -> RGB
    np.testing.assert_array_equal(images[3, :, 0, 0], (255, 255, 255))  # transparent -> white
    grey = next(folder_stream(tmp_path, 8, channels=1, split="train").batches)[0]
    assert grey.shape == (4, 1, 8, 8)


def test_split_errors(tmp_path):
    make_imagenet(tmp_path)
    with pytest.raises(ValueError, match="split"):
        scan_image_folder(tmp_path)  # would pack train/val as two classes
    with pytest.raises(FileNotFoundError, match="split folder"):
        scan_image_folder(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_image_folder(tmp_path / "absent")


def test_flat_folder_is_unconditional(tmp_path):
    save(tmp_path / "b.png", "RGB", (5, 5, 5))
    save(tmp_path / "a.jpeg", "RGB", (9, 9, 9))
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    scan = scan_image_folder(tmp_path)
    assert scan.layout == "flat" and scan.class_names == [tmp_path.name]
    assert [p.name for p, _ in scan.files] == ["a.jpeg", "b.png"]
    assert [Path(p).name for p in scan.ignored] == [".DS_Store"]  # named, not packed
    stream = folder_stream(tmp_path, 4)
    assert not stream.conditional
    np.testing.assert_array_equal(next(stream.batches)[1], [0, 0])


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    save(tmp_path / "full" / "x.png", "RGB", (0, 0, 0))
    with pytest.raises(ValueError, match="empty_class holds no images"):
        scan_image_folder(tmp_path)
    save(tmp_path / "loose.png", "RGB", (0, 0, 0))
    with pytest.raises(ValueError, match="--layout flat"):
        scan_image_folder(tmp_path)
    assert len(scan_image_folder(tmp_path, layout="flat").files) == 2
    with pytest.raises(ValueError, match="layout must be"):
        scan_image_folder(tmp_path, layout="nested")


def make_with_bad(root):
    save(root / "ok1.png", "RGB", (10, 10, 10))
    (root / "bad_garbage.jpg").write_bytes(b"this is not a jpeg")
    save(root / "ok2.png", "RGB", (20, 20, 20), size=(64, 64))
    full = (root / "ok2.png").read_bytes()
    (root / "bad_truncated.png").write_bytes(full[: len(full) // 2])
    (root / "bad_zself.png").symlink_to("bad_zself.png")  # a link to itself stopped the scan
    return root


def test_corrupt_images_fail_without_the_flag(tmp_path):
    make_with_bad(tmp_path)
    with pytest.raises(BadImageError, match="bad_garbage.jpg") as err:
        list(folder_stream(tmp_path, 8).batches)
    assert "skip_bad=True" in str(err.value) and "--skip-bad" in str(err.value)
    with pytest.raises(OSError):
        decode_image(tmp_path / "bad_truncated.png", 8, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_images_skipped_and_reported(tmp_path, workers):
    make_with_bad(tmp_path)
    stream = folder_stream(tmp_path, 8, skip_bad=True, num_workers=workers)
    batches = list(stream.batches)
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(images[:, 0, 0, 0], [10, 20])
    assert [s.path.rsplit("/", 1)[1] for s in stream.skipped] == [
        "bad_garbage.jpg",
        "bad_truncated.png",
        "bad_zself.png",
    ]
    assert all(s.reason for s in stream.skipped)


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_stack_is_image_to_chw_per_image(channels):
    """Random non-square RGB and grey stacks (H ≠ W) resize exactly as `image_to_chw` does each
    image, the Pillow image built here channel by channel (so rows stay rows, columns columns),
    to the stack's own channel count and to the other one; a grey stack already at the target
    size becomes RGB by repeating its one plane, untouched otherwise."""
    rng = np.random.default_rng(channels)
    rgb = rng.integers(0, 256, (3, 3, 13, 7), dtype=np.uint8)
    grey = rng.integers(0, 256, (3, 1, 13, 7), dtype=np.uint8)
    for stack in (rgb, grey):
        got = resize_stack(stack, 5, channels)
        assert got.shape == (3, channels, 5, 5)
        for i in range(len(stack)):
            planes = [Image.fromarray(plane) for plane in stack[i]]  # each (H, W)
            img = planes[0] if len(planes) == 1 else Image.merge("RGB", planes)
            assert img.size == (7, 13)  # Pillow's (width, height)
            np.testing.assert_array_equal(got[i], image_to_chw(img, 5, channels))
    square = rng.integers(0, 256, (2, 1, 6, 6), dtype=np.uint8)
    as_rgb = resize_stack(square, 6, 3)
    assert as_rgb.shape == (2, 3, 6, 6)
    for c in range(3):
        np.testing.assert_array_equal(as_rgb[:, c], square[:, 0])
