"""Hostile and malformed inputs: IDX gzip bombs, image decompression bombs, lying or escaping
manifests, symbolic-link loops. Each fails with one line naming the file, in bounded memory."""

from __future__ import annotations

import gzip
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixeljit.data import PackedDataset, pack_arrays, prepare
from pixeljit.data import manifest as manifest_module
from pixeljit.data.folders import decode_image, scan_image_folder
from pixeljit.data.shards import MANIFEST
from pixeljit.data.transforms import MAX_IMAGE_PIXELS
from pixeljit.files import idx

MIB = 1 << 20


# --- IDX ---------------------------------------------------------------------------------------
def idx_header(shape) -> bytes:
    return bytes([0, 0, idx.IDX_UBYTE, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_idx_gzip_bomb_is_refused_after_the_declared_size(tmp_path):
    """A 64 KiB file inflating to 64 MiB while its header declares 100 bytes: the old reader
    inflated all of it into memory before comparing."""
    inflated = 64 * MIB
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(idx_header((100,)))
        zeros = bytes(MIB)
        for _ in range(inflated // MIB):
            fh.write(zeros)
    assert bomb.stat().st_size < inflated // 100
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb-idx1-ubyte.gz: .* holds more than 100 bytes"):
            idx.read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"reading the bomb peaked at {peak / MIB:.0f} MiB"


def test_idx_gzip_declaring_a_huge_shape_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((70_000, 200_000, 200_000)) + bytes(10)))
    with pytest.raises(ValueError, match=r"huge-idx3-ubyte.gz: .*over the \d+-byte limit"):
        idx.read_idx(path)
    path.write_bytes(gzip.compress(idx_header((1, 2, 3, 4, 5)) + bytes(120)))
    with pytest.raises(ValueError, match="5 dimensions"):
        idx.read_idx(path)


# --- images ------------------------------------------------------------------------------------
def png_bomb(path, side: int) -> None:
    """A valid grey PNG of side x side black pixels, a few hundred KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + side zero pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _never(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was called")

    return refuse


def test_image_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """67 M pixels in ~70 KB: under Pillow's own limits (89 M warns, 179 M refuses), so the old
    code decoded it (67 MB grey, 200 MB as RGB) without a word."""
    from PIL import ImageFile

    side = 8193
    assert side * side > MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    png_bomb(bomb, side)
    assert bomb.stat().st_size < 400_000
    with monkeypatch.context() as patch:  # refused from the header: no pixel is decoded
        patch.setattr(ImageFile.ImageFile, "load", _never("decoding"))
        patch.setattr(Image.Image, "load", _never("decoding"))
        with pytest.raises(ValueError, match=r"8193x8193 .* over the limit"):
            decode_image(bomb, 8, 3)
    Image.new("RGB", (6, 4), (1, 2, 3)).save(tmp_path / "fine.png")
    result = prepare(tmp_path, 4, tmp_path.parent / "packed-bomb", skip_bad=True)
    assert result.count == 1 and result.skipped[0].path.endswith("bomb.png")
    assert "over the limit" in result.skipped[0].reason


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path, monkeypatch):
    """1 x 70,000 pixels is a small image, but the crop would first resize it to 64 x 4.5 M
    (286 MB; 1.1 GB at 256 px): the old code did."""
    Image.new("L", (1, 70_000), 7).save(tmp_path / "sliver.png")
    monkeypatch.setattr(Image.Image, "resize", _never("resizing"))
    with pytest.raises(
        ValueError,
        match=r"64x4480000, before the centre crop, over the limit .* nearer to a square",
    ):
        decode_image(tmp_path / "sliver.png", 64, 1)


# --- packed sets -------------------------------------------------------------------------------
@pytest.fixture
def packed(tmp_path):
    images = np.arange(4 * 3 * 2 * 2, dtype=np.uint8).reshape(4, 3, 2, 2)
    return pack_arrays(images, tmp_path / "p", images_per_shard=2).out_dir


def edit_manifest(folder, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_manifest_paths_escaping_the_folder_are_never_read(packed, tmp_path, monkeypatch):
    """The old reader memory-mapped whatever path the manifest named, here a file outside."""
    import pixeljit.data.packed as packed_module

    opened = []
    real_load = np.load

    def recording_load(path, *args, **kwargs):
        opened.append(Path(path).resolve())
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(packed_module.np, "load", recording_load)
    PackedDataset(packed)
    assert opened, "the spy sees the shards a valid manifest names"
    opened.clear()
    outside = tmp_path / "outside.npy"
    outside.write_bytes((packed / "images-00001.npy").read_bytes())
    edit_manifest(packed, lambda m: m["shards"][1].update(file="../outside.npy"))
    with pytest.raises(ValueError, match=r"manifest.json: file name '../outside.npy' is not"):
        PackedDataset(packed)
    edit_manifest(packed, lambda m: m["shards"][1].update(file=str(outside)))
    with pytest.raises(ValueError, match="is not a plain name"):
        PackedDataset(packed)
    (packed / "images-00001.npy").unlink()
    (packed / "images-00001.npy").symlink_to(outside)
    edit_manifest(packed, lambda m: m["shards"][1].update(file="images-00001.npy"))
    with pytest.raises(ValueError, match="a link that leads outside"):
        PackedDataset(packed)
    assert outside.resolve() not in opened  # refused from the manifest, never opened


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m["shards"][0].pop("file"), "file name None"),  # old: KeyError
        (lambda m: m["shards"][0].update(count="2"), "count is '2'"),
        (lambda m: m.update(shape=[3, 2]), r"shape \[3, 2\] is not \[C, H, W\]"),
        (lambda m: m.update(shape=[3, -2, 2]), "height"),
        (lambda m: m.update(class_names=7), "class_names"),
        (lambda m: m.update(shards={"file": "x"}), "'shards' must be a list"),  # old: TypeError
    ],
)
def test_malformed_manifest_fields_are_one_line_errors(packed, change, problem):
    edit_manifest(packed, change)
    with pytest.raises(ValueError, match=problem) as err:
        PackedDataset(packed)
    assert str(packed) in str(err.value) and "\n" not in str(err.value)


def test_manifest_that_is_not_an_object_or_too_big(packed, monkeypatch):
    (packed / MANIFEST).write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="a JSON list, not an object"):  # old: AttributeError
        PackedDataset(packed)
    (packed / MANIFEST).write_text(json.dumps({"format": "x"}) + " " * 5000)
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 4096)
    with pytest.raises(ValueError, match="over the 4096-byte limit"):  # never parsed
        PackedDataset(packed)


def test_manifest_declaring_more_than_the_shard_holds(packed):
    """Counts and shapes raised together so the totals still agree; the file sizes do not."""

    def inflate(m):
        m.update(count=4_000_000, images_per_shard=2_000_000, shape=[3, 2, 2])
        for s in m["shards"]:
            s["count"] = 2_000_000
        m["labels"]["count"] = 4_000_000

    edit_manifest(packed, inflate)
    with pytest.raises(ValueError, match=r"images-00000.npy has \d+ bytes, too few"):
        PackedDataset(packed)


# --- symbolic links in image folders -------------------------------------------------------------
def save(path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, 0, 0)).save(path)


def test_symlink_loop_is_refused(tmp_path):
    """The old walk followed root/cat/up -> root ~40 levels deep, packing each image ~40 times."""
    root = tmp_path / "root"
    save(root / "cat" / "a.png")
    save(root / "dog" / "b.png")
    (root / "cat" / "up").symlink_to(root)
    with pytest.raises(ValueError, match=r"symbolic link loop: .*cat/up leads to"):
        scan_image_folder(root)


def test_two_links_to_one_folder_are_refused(tmp_path):
    save(tmp_path / "shared" / "s.png")
    root = tmp_path / "root"
    save(root / "cat" / "a.png")
    (root / "cat" / "one").symlink_to(tmp_path / "shared")
    (root / "cat" / "two").symlink_to(tmp_path / "shared")
    with pytest.raises(ValueError, match=r"cat/two and .*cat/one are the same folder"):
        scan_image_folder(root)
    (root / "cat" / "two").unlink()  # one link to a folder outside is followed, once
    scan = scan_image_folder(root)
    names = [p.relative_to(root).as_posix() for p, _ in scan.files]
    assert names == ["cat/a.png", "cat/one/s.png"]
    (root / "dog").symlink_to(root / "cat")  # a class folder linked to another class
    with pytest.raises(ValueError, match="same folder"):
        scan_image_folder(root)
