"""The public metrics API (`pixeljit.metrics`) refuses what would give a meaningless number or
lose a file, naming the problem and the fix: images of another size than the reference measured,
non-square images stretched square, an existing statistics file replaced; and its messages
name functions that exist, in both the Python and the command-line spelling."""

from __future__ import annotations

import importlib
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixeljit.cli import main
from pixeljit.metrics import (
    DatasetStats,
    FMNISTExtractor,
    cached_dataset_stats,
    class_accuracy,
    compute_dataset_stats,
    iter_folder_images,
    iter_npz_images,
    load_classifier,
    load_dataset_stats,
    resolve_inception_weights,
    save_dataset_stats,
    score_images,
)
from pixeljit.metrics.extractor import (
    Extracted,
    FeatureExtractor,
    check_uint8_images,
    resize_square,
)


class PooledGrey(FeatureExtractor):
    """Features: the grey image average-pooled to 2×2, at any input size (no resize of its own,
    so a size mismatch reaches the distances); counts the images it was given."""

    name, fd_label, dim = "pooled", "FD-pooled", 4

    def __init__(self) -> None:
        self.seen = 0

    def extract(self, images: torch.Tensor) -> Extracted:
        x = check_uint8_images(images).float().mean(dim=1, keepdim=True) / 255  # (N, 1, H, W)
        self.seen += len(x)
        return Extracted(features=F.adaptive_avg_pool2d(x, 2).flatten(1))


def _images(n: int = 24, size: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def _assert_names_exist(message: str) -> None:
    """Every dotted `pixeljit.…` name the message gives resolves (no AttributeError for a user
    who copies it)."""
    names = re.findall(r"pixeljit(?:\.\w+)+", message)
    assert names, message
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{name} (in the message) does not exist: {message}"
            obj = getattr(obj, attr)


# --- 1. the reference's image size ----------------------------------------------------------
def test_score_images_refuses_images_of_another_size_than_the_reference():
    ext = PooledGrey()
    x8 = _images(size=8)
    ref = compute_dataset_stats(x8, ext)
    assert ref.image_shape == (1, 8, 8)
    x16 = F.interpolate(x8.float(), scale_factor=2).to(torch.uint8)  # the same images, enlarged
    for metric in ("fd", "kid", "pr"):
        ext.seen = 0
        with pytest.raises(ValueError, match=r"8×8-px 1-channel images.*are 16×16-px 1-channel"
                                             r".*difference in size") as err:  # fmt: skip
            score_images(x16, ext, ref, metrics=metric)
        assert ext.seen == 0  # refused before anything was extracted
    assert "compute_dataset_stats" in str(err.value) and "--make-ref" in str(err.value)
    _assert_names_exist(str(err.value))
    with pytest.raises(ValueError, match="difference in channel count"):
        score_images(_images(size=8, channels=3), ext, ref, metrics="fd")
    # a later batch of another size in a stream is refused as well
    with pytest.raises(ValueError, match="are 16×16-px"):
        score_images(iter([x8[:12], x16[12:]]), ext, ref, metrics="fd")
    # images of the reference's own size score
    assert score_images(x8, ext, ref, metrics="fd").fd == pytest.approx(0.0, abs=1e-9)
    # ADM's / the authors' statistics (mu, sigma only) cannot be checked: taken as they are
    legacy = DatasetStats(ref.mu, ref.sigma)
    assert legacy.image_shape is None
    assert score_images(x16, ext, legacy, metrics="fd").fd >= 0


def test_cached_statistics_are_refused_for_images_of_another_shape(tmp_path):
    ext = PooledGrey()
    path = tmp_path / "cache.npz"
    with pytest.raises(ValueError, match=r"image_shape is 8×8-px.*gave 16×16-px"):
        cached_dataset_stats(path, lambda: _images(size=16), ext, image_shape=(1, 8, 8))
    assert not path.exists()  # nothing cached under the 8-px entry
    assert cached_dataset_stats(path, lambda: _images(), ext, (1, 8, 8)).image_shape == (1, 8, 8)


# --- 2. non-square images -------------------------------------------------------------------
def test_non_square_images_are_refused_not_stretched():
    x = torch.rand(2, 1, 28, 20) * 255
    with pytest.raises(ValueError, match=r"square.*28×20.*crop"):
        resize_square(x, 28)
    with pytest.raises(ValueError, match=r"square.*28×20"):
        resize_square(x, 16, shrink="bicubic")
    assert resize_square(x[..., :20, :], 28).shape == (2, 1, 28, 28)
    classifier = FMNISTExtractor()
    images, labels = _images(10, size=28), torch.arange(10)
    with pytest.raises(ValueError, match=r"square.*28×20"):
        class_accuracy(images[..., :20], labels, classifier)
    with pytest.raises(ValueError, match=r"square.*28×20"):
        compute_dataset_stats(images[..., :20], classifier)
    assert 0 <= class_accuracy(images, labels, classifier) <= 1


# --- 3. messages name what exists, for Python and the command line --------------------------
def test_kid_and_pr_without_features_name_the_python_function_and_the_cli():
    ext = PooledGrey()
    full = compute_dataset_stats(_images(), ext)
    moments = DatasetStats(full.mu, full.sigma, extractor=full.extractor)
    for metric, what in (("kid", "KID"), ("pr", "precision/recall")):
        ext.seen = 0
        with pytest.raises(ValueError, match=f"{what} needs the data set's features") as err:
            score_images(_images(), ext, moments, metrics=metric)
        assert ext.seen == 0  # said before the images were scored, not after
        text = str(err.value)
        assert "keep_features=True" in text and "pixeljit eval --make-ref" in text
        _assert_names_exist(text)
    other = DatasetStats(full.mu, full.sigma, extractor="other-net")
    with pytest.raises(ValueError, match="other-net") as err:
        score_images(_images(), ext, other, metrics="fd")
    assert "compute_dataset_stats" in str(err.value)
    _assert_names_exist(str(err.value))
    with pytest.raises(TypeError, match=r"ref must be DatasetStats.*load_dataset_stats") as err:
        score_images(_images(), ext, "stats.npz", metrics="fd")
    _assert_names_exist(str(err.value))
    with pytest.raises(ValueError, match=r"need data-set statistics: pass ref=") as err:
        score_images(_images(), ext, None, metrics="fd")
    _assert_names_exist(str(err.value))


# --- 4. an existing statistics file ---------------------------------------------------------
def test_save_dataset_stats_replaces_a_file_only_with_overwrite(tmp_path, capsys):
    ext = PooledGrey()
    first = compute_dataset_stats(_images(seed=0), ext)
    second = compute_dataset_stats(_images(seed=1), ext)
    path = save_dataset_stats(tmp_path / "ref.npz", first)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"ref.npz exists: pass overwrite=True"):
        save_dataset_stats(path, second)
    assert path.read_bytes() == before
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        save_dataset_stats(path, second, overwrite="no")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        save_dataset_stats(tmp_path, second)
    save_dataset_stats(path, second, overwrite=True)
    np.testing.assert_array_equal(load_dataset_stats(path).mu, second.mu)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    # the cache replaces its own stale entry (one that records no image shape) without a warning
    stale = tmp_path / "cache.npz"
    save_dataset_stats(stale, DatasetStats(first.mu, first.sigma, extractor=ext.stats_name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "saving … to the cache failed" would be one
        fresh = cached_dataset_stats(stale, lambda: _images(seed=1), ext, (1, 8, 8))
    assert load_dataset_stats(stale).image_shape == (1, 8, 8) == fresh.image_shape
    # `pixeljit eval --make-ref … --overwrite` still replaces its --out
    images, out = tmp_path / "imgs.npz", tmp_path / "made.npz"
    np.savez(images, arr_0=_images(24, size=8).permute(0, 2, 3, 1).numpy())
    make = ["eval", "--make-ref", str(images), "--size", "8", "--channels", "1",
            "--extractor", "fmnist-cnn", "--out", str(out)]  # fmt: skip
    assert main(make) == 0 and main([*make, "--overwrite"]) == 0
    assert main(make) == 2 and "--overwrite" in capsys.readouterr().err


# --- 5. a folder where a file is expected ---------------------------------------------------
def test_a_folder_given_for_a_file_is_named_a_folder(tmp_path):
    folder = tmp_path / "stats"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"stats is a folder.*\.npz") as err:
        load_dataset_stats(folder)
    assert "not found" not in str(err.value) and "does not exist" not in str(err.value)
    with pytest.raises(IsADirectoryError, match=r"is a folder, not an \.npz"):
        list(iter_npz_images(folder))
    with pytest.raises(IsADirectoryError, match=r"is a folder.*\.safetensors"):
        load_classifier(folder)
    with pytest.raises(IsADirectoryError, match=r"is a folder.*weights file"):
        resolve_inception_weights(folder)
    file = tmp_path / "one.npz"
    file.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"one.npz is a file.*iter_npz_images"):
        list(iter_folder_images(file))


# --- 6. no images ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("images", "labels"),
    [
        (torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)),
        (np.zeros((0, 1, 28, 28), np.uint8), []),
        (iter([]), torch.zeros(0, dtype=torch.long)),
    ],
)
def test_class_accuracy_of_no_images_says_so(images, labels):
    with pytest.raises(ValueError, match="class_accuracy got no images") as err:
        class_accuracy(images, labels, FMNISTExtractor())
    assert "labels for" not in str(err.value)
