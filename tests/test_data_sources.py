"""Sources: IDX files, Fashion-MNIST (local, downloaded, the real test split), Noto emoji."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pixeljit.data import fashion_mnist as fm
from pixeljit.data.emoji import find_emoji_font, iter_emoji_pngs, load_emoji
from pixeljit.data.transforms import image_to_chw, to_channels
from pixeljit.files.idx import read_idx, write_idx

APT_FASHION = "sudo apt-get install dataset-fashion-mnist"


def small_fashion(rng: np.random.Generator, n: int = 6, side: int = 28):
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    labels = (np.arange(n) % len(fm.CLASS_NAMES)).astype(np.uint8)
    return images, labels


def write_split(folder, split: str, images, labels, compress: bool = True) -> None:
    image_name, label_name = fm.FILES[split]
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{image_name}{suffix}", images, compress=compress)
    write_idx(folder / f"{label_name}{suffix}", labels, compress=compress)


# --- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arr = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, compress=compress)  # no .gz suffix
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == compress
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 5, 7)
    np.testing.assert_array_equal(out, arr)


def test_idx_bad_files(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((4, 4), np.uint8))
    (tmp_path / "cut").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "int").write_bytes(b"\x00\x00\x0c\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="unsupported"):
        read_idx(tmp_path / "int")
    (tmp_path / "gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(tmp_path / "gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


# --- Fashion-MNIST -----------------------------------------------------------------------------
def test_fashion_mnist_from_user_folder(tmp_path):
    rng = np.random.default_rng(1)
    train, test = small_fashion(rng, 6), small_fashion(rng, 4)
    write_split(tmp_path, "train", *train, compress=True)
    write_split(tmp_path, "test", *test, compress=False)  # raw IDX also accepted
    for split, (images, labels) in (("train", train), ("test", test)):
        x, y = fm.load_fashion_mnist(split, root=tmp_path)
        assert x.shape == (len(images), 1, 28, 28) and x.dtype == np.uint8
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], images)
        np.testing.assert_array_equal(y, labels)
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("val", root=tmp_path)


def test_fashion_mnist_inconsistent_files(tmp_path):
    images, labels = small_fashion(np.random.default_rng(2), 5)
    write_split(tmp_path, "train", images, labels[:4])
    with pytest.raises(ValueError, match="disagree"):
        fm.load_fashion_mnist("train", root=tmp_path)
    write_split(tmp_path, "train", images, np.full(5, 10, np.uint8))
    with pytest.raises(ValueError, match="outside 0..9"):
        fm.load_fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_missing_names_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        fm.load_fashion_mnist("test", root=tmp_path)
    assert APT_FASHION in str(err.value) and "download=True" in str(err.value)
    assert str(tmp_path) in str(err.value)
    # default search (no root): Debian folder then the cache, both absent here
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("train")


def serve_locally(tmp_path, monkeypatch, algorithm: str = "sha256"):
    """A file:// 'mirror' with small IDX files, and checksums for it; returns the data."""
    mirror = tmp_path / "mirror"
    data = small_fashion(np.random.default_rng(3), 7)
    write_split(mirror, "train", *data)
    write_split(mirror, "test", *small_fashion(np.random.default_rng(4), 5))
    sums = {
        p.name: (algorithm, hashlib.new(algorithm, p.read_bytes()).hexdigest())
        for p in mirror.iterdir()
    }
    monkeypatch.setattr(fm, "OFFICIAL_BASE_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(fm, "OFFICIAL_CHECKSUMS", sums)
    return data


def test_download_is_checksum_verified(tmp_path, monkeypatch):
    images, labels = serve_locally(tmp_path, monkeypatch, "md5")
    dest = tmp_path / "dest"
    x, y = fm.load_fashion_mnist("train", root=dest, download=True)
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels)
    # the test split comes with it: the demo scores against it after training on the train one
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{n}.gz" for split in ("train", "test") for n in fm.FILES[split]
    )
    assert len(fm.load_fashion_mnist("test", root=dest)[1]) == 5


def test_download_keeps_a_good_file_and_replaces_a_damaged_one(tmp_path, monkeypatch):
    """Files already in the destination are kept only when their checksum is right: a
    truncated earlier download is fetched again, a good one is not touched."""
    images, _ = serve_locally(tmp_path, monkeypatch)
    dest = tmp_path / "dest"
    fm.download_fashion_mnist(dest, "train")
    first, second = (dest / f"{n}.gz" for n in fm.FILES["train"])
    stamp = second.stat().st_mtime_ns
    first.write_bytes(first.read_bytes()[:20])  # an interrupted earlier download
    fm.download_fashion_mnist(dest, "train")
    x, _ = fm.load_fashion_mnist("train", root=dest)
    np.testing.assert_array_equal(x[:, 0], images)
    assert second.stat().st_mtime_ns == stamp  # the good one was kept as it was


def test_download_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    serve_locally(tmp_path, monkeypatch)
    name = f"{fm.FILES['train'][0]}.gz"
    bad = dict(fm.OFFICIAL_CHECKSUMS)
    bad[name] = ("sha256", "0" * 64)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="has sha256 .*, expected"):
        fm.download_fashion_mnist(dest, "train", checksums=bad)
    assert not (dest / name).exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")], "partial file left behind"


def test_download_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    serve_locally(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="could not download"):
        fm.download_fashion_mnist(tmp_path / "d", "train", base_url=(tmp_path / "nowhere").as_uri())


def test_official_checksum_table_covers_every_file():
    names = {f"{n}.gz" for pair in fm.FILES.values() for n in pair}
    assert set(fm.OFFICIAL_CHECKSUMS) == names
    for algorithm, digest in fm.OFFICIAL_CHECKSUMS.values():
        assert len(digest) == hashlib.new(algorithm).digest_size * 2
        int(digest, 16)


def test_real_fashion_mnist_test_split():
    """The installed data set (Debian package); missing is a failure with the install line."""
    try:
        images_path, _ = fm.find_fashion_mnist("test")
        x, y = fm.load_fashion_mnist("test")
    except FileNotFoundError as err:
        pytest.fail(f"{err}\n(the CI installs it: {APT_FASHION})")
    assert images_path.parent == fm.DEBIAN_DIR or images_path.parent == fm.default_cache_dir()
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))  # the test split is balanced
    assert x.min() == 0 and x.max() == 255
    assert len(fm.CLASS_NAMES) == 10 and fm.CLASS_NAMES[9] == "Ankle boot"


# --- Noto Color Emoji --------------------------------------------------------------------------
def test_emoji_handful_composited_on_white():
    names_pngs = []
    for item in iter_emoji_pngs():
        names_pngs.append(item)
        if len(names_pngs) == 3:
            break
    name, png = names_pngs[0]
    rgba = Image.open(io.BytesIO(png))  # palette + per-entry alpha (a few glyphs are RGBA)
    assert rgba.mode in ("P", "RGBA") and rgba.size == (136, 128)
    src = np.asarray(rgba.convert("RGBA")).astype(np.float64)  # (128, 136, 4)
    assert 0 < (src[..., 3] == 0).mean() < 1  # partly transparent
    alpha = src[..., 3:] / 255.0
    expected = src[..., :3] * alpha + 255.0 * (1.0 - alpha)  # over opaque white
    rgb = np.asarray(to_channels(rgba, 3)).astype(np.float64)
    assert np.abs(rgb - expected).max() <= 1.0, name
    # at 128 px the ADM crop resamples nothing and cuts (136 - 128) / 2 columns per side
    chw = image_to_chw(rgba, 128, 3)
    np.testing.assert_array_equal(
        chw.transpose(1, 2, 0), np.asarray(to_channels(rgba, 3))[:, 4:132]
    )

    small = load_emoji(32, limit=3)
    assert small.shape == (3, 3, 32, 32) and small.dtype == np.uint8
    assert (small[:, :, 0, 0] == 255).all()  # transparent corners became white
    grey = load_emoji(16, channels=1, limit=2)
    assert grey.shape == (2, 1, 16, 16)


def test_emoji_missing_font_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        find_emoji_font(tmp_path / "NotoColorEmoji.ttf")
    (tmp_path / "fake.ttf").write_bytes(b"not a font at all")
    with pytest.raises(ValueError, match="cannot read the font"):
        next(iter_emoji_pngs(tmp_path / "fake.ttf"))


def test_the_demo_asks_for_the_test_split_before_training(tmp_path, monkeypatch, capsys):
    """The demo scores against the test split after ~10 minutes of training: a machine holding
    only the train files (an older `--download`) is told so before the first step."""
    from pixeljit.cli import main

    only_train = tmp_path / "debian"
    write_split(only_train, "train", *small_fashion(np.random.default_rng(0), 4))
    monkeypatch.setattr(fm, "DEBIAN_DIR", only_train)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST (test split) not found" in err and "--download" in err
    assert not out.exists()  # nothing trained, nothing written
