"""Packed sets: `prepare` -> shards + manifest -> `PackedDataset`; corruption; the CLI verb."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixeljit.cli import main
from pixeljit.data import PackedDataset, load_fashion_mnist, pack_arrays, prepare
from pixeljit.data import fashion_mnist as fm
from pixeljit.data.shards import MANIFEST
from pixeljit.data.source import BadImageError
from pixeljit.files.idx import write_idx


def solid_colour(i: int, label: int) -> tuple[int, int, int]:
    return (40 * i, 100 * label, 7)


def make_classes(root, per_class: int = 3, size=(24, 18)):
    """root/{ant,bee}/ with distinct solid RGB images; returns (file, label, colour) in packing
    order."""
    files = []
    for label, name in enumerate(["ant", "bee"]):
        for i in range(per_class):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, solid_colour(i, label)).save(path)
            files.append((path, label, solid_colour(i, label)))
    return files


def test_prepare_folder_round_trip(tmp_path):
    files = make_classes(tmp_path / "src")
    out = tmp_path / "packed"
    result = prepare(tmp_path / "src", 8, out, images_per_shard=4)
    assert result.count == 6 and result.image_shape == (3, 8, 8) and result.num_classes == 2
    data = PackedDataset(out, verify=True)
    assert len(data) == 6 and data.image_shape == (3, 8, 8)
    assert data.class_names == ["ant", "bee"] and data.num_classes == 2 and data.conditional
    np.testing.assert_array_equal(data.labels, [y for _, y, _ in files])
    # a solid image stays solid through the crop and resize: every pixel its colour, (C, H, W)
    expected = np.stack(
        [np.broadcast_to(np.array(c, np.uint8)[:, None, None], (3, 8, 8)) for _, _, c in files]
    )
    np.testing.assert_array_equal(data.slice(0, 6), expected)
    order = np.array([5, 0, 3, 4, 1])  # crosses the shard boundary (4 per shard)
    np.testing.assert_array_equal(data.gather(order), expected[order])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["count"] == 6
    assert manifest["shape"] == [3, 8, 8] and manifest["channels"] == 3
    assert [s["count"] for s in manifest["shards"]] == [4, 2]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in manifest["shards"])
    assert manifest["source"]["kind"] == "image-folder" and manifest["class_counts"] == [3, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "src"]  # no staging left


def test_prepare_fashion_mnist_sizes_and_channels(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz", labels, compress=True)
    native = PackedDataset(
        prepare(
            "fashion-mnist", 28, tmp_path / "a", split="test", data_dir=tmp_path / "idx"
        ).out_dir
    )
    assert native.image_shape == (1, 28, 28) and native.class_names == list(fm.CLASS_NAMES)
    np.testing.assert_array_equal(native.slice(0, 5)[:, 0], images)  # 28 -> 28: untouched
    np.testing.assert_array_equal(native.labels, labels)
    big = prepare(
        "fashion-mnist", 64, tmp_path / "b", split="test", channels=3, data_dir=tmp_path / "idx"
    )
    data = PackedDataset(big.out_dir)
    assert data.image_shape == (3, 64, 64)
    x = data.slice(0, 5)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])  # grey replicated into RGB
    # upsampling preserves the mean brightness closely (bicubic is interpolating)
    assert np.abs(x[:, 0].mean(axis=(1, 2)) - images.mean(axis=(1, 2))).max() < 4.0


def test_prepare_real_fashion_mnist_test_split(tmp_path):
    try:
        x, y = load_fashion_mnist("test")
    except FileNotFoundError as err:
        pytest.fail(str(err))
    data = PackedDataset(prepare("fashion-mnist", 28, tmp_path / "fm", split="test").out_dir)
    assert len(data) == 10_000 and data.image_shape == (1, 28, 28) and data.num_classes == 10
    np.testing.assert_array_equal(data.labels, y)
    idx = np.random.default_rng(0).choice(10_000, 64, replace=False)
    np.testing.assert_array_equal(data.gather(idx), x[idx])


def test_prepare_emoji_is_unconditional(tmp_path):
    data = PackedDataset(prepare("emoji", 16, tmp_path / "e", split="train", limit=3).out_dir)
    assert len(data) == 3 and data.image_shape == (3, 16, 16)
    assert not data.conditional and data.num_classes == 1 and (data.labels == 0).all()


def test_prepare_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        prepare(tmp_path / "nothing", 8, tmp_path / "o")
    with pytest.raises(ValueError, match="one split"):
        prepare("emoji", 8, tmp_path / "o", split="test")
    with pytest.raises(ValueError, match="size"):
        prepare("emoji", 0, tmp_path / "o")
    with pytest.raises(ValueError, match="channels"):
        prepare("emoji", 8, tmp_path / "o", channels=4)
    with pytest.raises(ValueError, match="only applies to fashion-mnist"):
        prepare("emoji", 8, tmp_path / "o", download=True)


def test_prepare_is_atomic_and_refuses_to_clobber(tmp_path):
    make_classes(tmp_path / "src")
    (tmp_path / "src" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    with pytest.raises(BadImageError, match="broken.png"):
        prepare(tmp_path / "src", 8, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written
    result = prepare(tmp_path / "src", 8, out, skip_bad=True)
    assert result.count == 6 and [s.path for s in result.skipped][0].endswith("broken.png")
    manifest = json.loads((out / MANIFEST).read_text())
    assert (
        manifest["skipped"][0]["path"].endswith("broken.png") and manifest["skipped"][0]["reason"]
    )
    with pytest.raises(ValueError, match="not empty"):
        prepare(tmp_path / "src", 4, out, skip_bad=True)
    prepare(tmp_path / "src", 4, out, skip_bad=True, overwrite=True)
    assert PackedDataset(out).image_shape == (3, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_pack_arrays(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (7, 1, 5, 5), dtype=np.uint8)
    data = PackedDataset(pack_arrays(images, tmp_path / "u").out_dir)
    assert not data.conditional and data.num_classes == 1 and (data.labels == 0).all()
    np.testing.assert_array_equal(data.slice(0, 7), images)
    labelled = PackedDataset(pack_arrays(images, tmp_path / "c", np.arange(7) % 3).out_dir)
    assert labelled.conditional and labelled.class_names == ["0", "1", "2"]
    with pytest.raises(ValueError, match=r"labels outside \[0, 2\)"):
        pack_arrays(images, tmp_path / "bad", np.arange(7) % 3, ["a", "b"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="uint8"):
        pack_arrays(images.astype(np.float32), tmp_path / "f")


def test_all_images_bad_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images"):
        prepare(tmp_path / "src", 8, tmp_path / "o", skip_bad=True)


# --- a packed set that does not match its manifest ---------------------------------------------
@pytest.fixture
def packed(tmp_path):
    make_classes(tmp_path / "src")
    return prepare(tmp_path / "src", 8, tmp_path / "p", images_per_shard=4).out_dir


def edit_manifest(folder, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_manifest_count_mismatch(packed):
    edit_manifest(packed, lambda m: m.update(count=7))
    with pytest.raises(ValueError, match="manifest count 7"):
        PackedDataset(packed)


def test_manifest_shape_mismatch(packed):
    edit_manifest(packed, lambda m: m.update(shape=[1, 8, 8]))
    with pytest.raises(ValueError, match="do not match the manifest"):
        PackedDataset(packed)


def test_truncated_shard(packed):
    shard = packed / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="images-00001.npy has .* bytes"):
        PackedDataset(packed)


def test_changed_content_is_caught_by_the_checksum(packed):
    shard = packed / "images-00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF  # same size, one pixel differs
    shard.write_bytes(bytes(raw))
    PackedDataset(packed)  # sizes and shapes still agree
    with pytest.raises(ValueError, match="sha256"):
        PackedDataset(packed, verify=True)


def test_missing_files(packed, tmp_path):
    (packed / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy is missing"):
        PackedDataset(packed)
    with pytest.raises(FileNotFoundError, match="pixeljit prepare"):
        PackedDataset(tmp_path / "src")
    (packed / MANIFEST).write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PackedDataset(packed)


# --- the CLI verb ------------------------------------------------------------------------------
def test_cli_prepare(tmp_path, capsys):
    make_classes(tmp_path / "src")
    out = tmp_path / "cli"
    assert main(["prepare", str(tmp_path / "src"), "--size", "8", "--out", str(out)]) == 0
    assert "packed 6 images of 3x8x8 in 2 classes" in capsys.readouterr().out
    assert PackedDataset(out).class_names == ["ant", "bee"]
    (tmp_path / "src" / "ant" / "zz.png").write_bytes(b"garbage")
    argv = ["prepare", str(tmp_path / "src"), "--size", "8", "--out", str(tmp_path / "c2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zz.png" in err and "--skip-bad" in err
    assert main([*argv, "--skip-bad", "--channels", "1"]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    assert PackedDataset(tmp_path / "c2").image_shape == (1, 8, 8)
