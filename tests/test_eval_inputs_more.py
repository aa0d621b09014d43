"""More of what `pixeljit eval` reads and refuses: uint64 labels past int64 (they wrapped to
negative ones), empty `.npz` files (a raw `torch.cat` error), folders named like an image or an
`.npz` (a raw "Is a directory"), and messages that name --num-images in full (under torchrun,
torchrun's own parser takes --num for its --numa-binding)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from cli_errors import check_flags, cli_error
from pixeljit.cli import main
from pixeljit.files.images import LABELS_CSV, save_labels_csv
from pixeljit.metrics.image_sources import count_path_images, folder_labels, load_images, npz_labels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE, COUNT = 16, 12  # COUNT: enough for IS (10 splits), which needs no reference
INT64_MAX = 2**63 - 1
IS_ONLY = ["--metrics", "is", "--extractor", "fmnist-cnn"]
ABBREVIATED_NUM = re.compile(r"--num(?![\w-])")  # --num, not --num-images


def _grey(count: int = COUNT) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)


def _pngs(folder, count: int = COUNT) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{k:06d}.png" for k in range(count)]
    for name, image in zip(names, _grey(count), strict=True):
        Image.fromarray(image).save(folder / name)
    return names


def _scored_count(capsys, images, out) -> int:
    """How many images `eval --images` scored (IS only: no reference needed)."""
    assert main(["eval", "--images", str(images), *IS_ONLY, "--out", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())["scores"]["count"]


# --------------------------------------------------------------------- 1: labels past int64


def test_uint64_labels_past_int64_are_refused_naming_the_file_array_and_range(tmp_path, capsys):
    """uint64 labels ≥ 2**63 wrapped to negative int64 ones, then were refused as "holds
    -9223372036854775803; classes are ≥ 0", a value the file never held. uint64 labels within
    int64 still read back exactly."""
    path = tmp_path / "big.npz"
    labels = np.array([0] * (COUNT - 1) + [2**63 + 5], dtype=np.uint64)
    np.savez(path, arr_0=_grey()[..., None], labels=labels)
    with pytest.raises(ValueError) as caught:
        npz_labels(path)
    said = str(caught.value)
    assert str(path) in said and "'labels'" in said and str(2**63 + 5) in said
    assert f"0 … {INT64_MAX}" in said and "-9223372036854775803" not in said
    err = cli_error(capsys, ["eval", "--images", str(path), *IS_ONLY])
    assert str(path) in err and "'labels'" in err and f"0 … {INT64_MAX}" in err
    within = np.array([0] * (COUNT - 1) + [INT64_MAX], dtype=np.uint64)
    np.savez(path, arr_0=_grey()[..., None], labels=within)
    read = npz_labels(path)
    assert read.dtype == np.int64 and read.tolist() == within.tolist()


# --------------------------------------------------------------------------- 2: empty .npz


NO_IMAGES = np.zeros((0, SIZE, SIZE, 1), np.uint8)


@pytest.mark.parametrize(
    "arrays, missing",
    [({}, "holds no arrays"), ({"arr_0": NO_IMAGES}, "holds 0 images")],
    ids=["no-arrays", "no-images"],
)
def test_an_empty_npz_is_refused_naming_the_file_and_what_is_missing(
    tmp_path, capsys, arrays, missing
):
    """An .npz without arrays, or whose images array holds none, failed with torch.cat's
    "expected a non-empty list of Tensors" (or a bare "has no array 'arr_0' (keys: [])")."""
    path = tmp_path / "empty.npz"
    np.savez(path, **arrays)
    for read in (load_images, count_path_images):
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + missing):
            read(path)
    for argv in (["--images", str(path), "--metrics", "fd", "--ref", "r.npz"],
                 ["--make-ref", str(path), "--size", str(SIZE), "--channels", "1", "--out",
                  str(tmp_path / "ref.npz")]):  # fmt: skip
        err = cli_error(capsys, ["eval", *argv])
        assert str(path) in err and ("no images" in err or missing in err), err
        assert "torch.cat" not in err
    with pytest.raises(ValueError, match="yielded no images"):
        load_images([])  # an iterable source with no batches: no torch.cat error either


# ------------------------------------------------------------- 3: folders named like files


def test_a_subfolder_named_like_an_image_is_a_subfolder_not_an_image(tmp_path, capsys):
    """`imgs/x.png/` (a folder) was taken for an image: "x.png is not a readable image ([Errno 21]
    Is a directory)". It is a subfolder, as `prepare` takes it, and only the top level is read."""
    folder = tmp_path / "imgs"
    names = _pngs(folder)
    _pngs(folder / "x.png", 1)
    assert count_path_images(folder) == COUNT
    assert _scored_count(capsys, folder, tmp_path / "s.json") == COUNT
    save_labels_csv(folder, [0] * COUNT, None)  # the images' rows, then one for the folder
    assert folder_labels(folder)[0].tolist() == [0] * COUNT
    with open(folder / LABELS_CSV, "a") as f:
        f.write("x.png,1,\n")
    with pytest.raises(ValueError, match=r"lists x\.png, which is a folder, not an image file"):
        folder_labels(folder)
    only = tmp_path / "only"
    _pngs(only / "y.png", 2)  # its only "image" is a folder of images
    err = cli_error(capsys, ["eval", "--images", str(only), *IS_ONLY])
    assert "no image files" in err and f"subfolder {only / 'y.png'} holds images" in err
    assert "Is a directory" not in err and len(names) == COUNT


def test_a_folder_named_like_an_image_or_npz_is_read_as_a_folder(tmp_path, capsys):
    """`--images x.npz` naming a folder of PNGs failed with a bare "Is a directory: x.npz" (its
    labels were looked for in an .npz); --make-ref said such a folder "does not exist". Named
    x.png or x.npz, a folder given to --images is scored as a folder; --make-ref, which would
    read x.npz as a file, says it is a folder."""
    for name in ("set.png", "set.npz"):
        _pngs(tmp_path / name)
        assert npz_labels(tmp_path / name) is None
        assert _scored_count(capsys, tmp_path / name, tmp_path / f"{name}.json") == COUNT
    make_ref = ["eval", "--make-ref", str(tmp_path / "set.npz"), "--size", str(SIZE),
                "--channels", "1", "--out", str(tmp_path / "r.npz")]  # fmt: skip
    err = cli_error(capsys, make_ref)
    assert f"--make-ref {tmp_path / 'set.npz'} is a folder" in err and "does not exist" not in err
    assert not (tmp_path / "r.npz").exists()


# ------------------------------------------------------------------ 4: --num-images in full


def test_eval_messages_name_num_images_in_full(tiny_file, tmp_path, capsys):
    """eval's messages told users to pass --num, which torchrun's own parser takes as an
    abbreviation of its --numa-binding: they name --num-images, the flag as eval spells it in
    full, whether the user wrote --num or --num-images."""
    npz = tmp_path / "x.npz"
    np.savez(npz, arr_0=_grey()[..., None])
    checkpoint = ["eval", "--checkpoint", str(tiny_file), "--ref", "r.npz"]
    cases = [
        ([*checkpoint, "--num", "0"], "--num-images must be"),
        ([*checkpoint, "--num-images", "0"], "--num-images must be"),
        ([*checkpoint, "--metrics", "is", "--num", "4"], "raise --num-images to 10"),
        (["eval", "--images", str(npz), "--metrics", "is", "--num", "10"],
         "--num-images has no effect with --images"),
    ]  # fmt: skip
    for argv, said in cases:
        err = cli_error(capsys, argv)
        assert said in err, err
        assert not ABBREVIATED_NUM.search(err), err
        assert "--num-images" in check_flags("eval", err)  # a flag eval has
