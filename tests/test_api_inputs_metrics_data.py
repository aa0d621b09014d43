"""Bad input to the metrics and data APIs is refused with a message naming it, never scored or
packed as something else (labels broadcast, RGB images read as grey, a metric's name read as
its letters, NHWC packed as 28 channels, negative rows wrapped to the end)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixeljit.data import ArrayDataset, PackedDataset, pack_arrays
from pixeljit.metrics import (
    ScoreConfig,
    class_accuracy,
    compute_dataset_stats,
    iter_batches,
    score_images,
)
from pixeljit.metrics.extractor import Extracted, FeatureExtractor, check_uint8_images

CLASSES = 10


class BrightnessClassifier(FeatureExtractor):
    """Class = the image's mean brightness in tenths of 256; features: 2×2 pooled grey."""

    name, fd_label, dim, num_classes = "bright", "FD-bright", 4, CLASSES

    def extract(self, images: torch.Tensor) -> Extracted:
        x = check_uint8_images(images).float().mean(dim=1, keepdim=True)  # (N, 1, H, W)
        cls = (x.mean(dim=(1, 2, 3)) * CLASSES / 256).long().clamp(0, CLASSES - 1)  # (N,)
        feats = F.adaptive_avg_pool2d(x / 255, 2).flatten(1)
        return Extracted(features=feats, logits=F.one_hot(cls, CLASSES).float())


def _images(labels, channels: int = 1, size: int = 8) -> torch.Tensor:
    """uint8 (N, C, size, size) whose brightness puts image k in class labels[k]."""
    values = torch.as_tensor(labels) * 25 + 10
    return values.to(torch.uint8)[:, None, None, None].expand(-1, channels, size, size).clone()


# --- class_accuracy -------------------------------------------------------------------------
def test_class_accuracy_takes_1d_integer_labels():
    labels = np.arange(12) % CLASSES
    images = _images(labels)
    assert class_accuracy(images, labels, BrightnessClassifier()) == 1.0
    assert class_accuracy(images, torch.from_numpy(labels).to(torch.uint8),
                          BrightnessClassifier(), batch_size=5) == 1.0  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.arange(12)[:, None] % CLASSES, ValueError, r"1-D.*\(12, 1\)"),
        (torch.arange(12, dtype=torch.float32) % CLASSES + 0.7, TypeError, "integers.*float32"),
        (torch.full((12,), CLASSES), ValueError, r"\[0, 10\).*got 10"),
        (torch.full((12,), -1), ValueError, r"\[0, 10\).*got -1"),
        (torch.arange(11) % CLASSES, ValueError, "11 labels for 12 images"),
    ],
)
def test_class_accuracy_refuses_bad_labels(labels, error, match):
    images = _images(np.arange(12) % CLASSES)
    with pytest.raises(error, match=match):
        class_accuracy(images, labels, BrightnessClassifier())


def test_class_accuracy_counts_streamed_images_against_the_labels():
    labels = torch.arange(12) % CLASSES
    batches = list(_images(labels).split(5))
    with pytest.raises(ValueError, match="one per image"):
        class_accuracy(iter(batches), labels[:8], BrightnessClassifier())
    with pytest.raises(ValueError, match="one per image"):
        class_accuracy(iter(batches[:2]), labels, BrightnessClassifier())


def test_class_accuracy_refuses_a_batch_size_below_one():
    labels = torch.arange(4)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1.*got 0"):
        class_accuracy(_images(labels), labels, BrightnessClassifier(), batch_size=0)


# --- 3-d and NHWC images --------------------------------------------------------------------
def test_single_rgb_images_are_not_read_as_grey_batches():
    rgb = [img for img in _images(torch.arange(4), channels=3)]  # four (3, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(3, 8, 8\).*torch.stack"):
        list(iter_batches(rgb))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        compute_dataset_stats(rgb, BrightnessClassifier())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*x\[:, None\]"):
        list(iter_batches(np.zeros((5, 8, 8), np.uint8)))


def test_nhwc_images_are_refused_with_the_transpose():
    with pytest.raises(ValueError, match=r"NHWC.*transpose\(0, 3, 1, 2\)"):
        list(iter_batches(np.zeros((4, 8, 8, 3), np.uint8)))


# --- metrics as one name --------------------------------------------------------------------
def test_one_metric_name_is_that_metric():
    ext = BrightnessClassifier()
    images = _images(torch.arange(20) % CLASSES)
    ref = compute_dataset_stats(images, ext)
    one = score_images(images, ext, ref, metrics="fd")
    assert one.fd == score_images(images, ext, ref, metrics=("fd",)).fd and one.kid is None
    assert ScoreConfig(metrics="kid").metrics == ("kid",)
    assert score_images(images, ext, ref, cfg=ScoreConfig(metrics="fd")).fd == one.fd
    with pytest.raises(TypeError, match="metrics must be names"):
        score_images(images, ext, ref, metrics=5)
    with pytest.raises(ValueError, match="ScoreConfig.batch_size must be ≥ 1"):
        ScoreConfig(batch_size=0)


# --- pack_arrays ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((4, 8, 8, 1), r"NHWC.*transpose\(0, 3, 1, 2\)"),
        ((4, 8, 8, 3), r"NHWC.*transpose\(0, 3, 1, 2\)"),
        ((4, 2, 8, 8), r"C = 1 \(grey\) or 3 \(RGB\).*\(4, 2, 8, 8\)"),
    ],
)
def test_pack_arrays_refuses_images_the_reader_cannot_take(tmp_path, shape, match):
    with pytest.raises(ValueError, match=match):
        pack_arrays(np.zeros(shape, np.uint8), tmp_path / "p")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.array([0.0, 1.7, 2.0, 1.0]), TypeError, "integers.*float64"),
        (np.array([[0], [1], [2], [1]]), ValueError, r"1-D.*\(4, 1\)"),
        (np.array([0, 1, 2]), ValueError, r"one per image \(4,\)"),
        (np.array([0, -1, 2, 1]), ValueError, "≥ 0, got -1"),
    ],
)
def test_pack_arrays_refuses_bad_labels(tmp_path, labels, error, match):
    with pytest.raises(error, match=match):
        pack_arrays(np.zeros((4, 1, 8, 8), np.uint8), tmp_path / "p", labels)
    assert not (tmp_path / "p").exists()


# --- gather / slice -------------------------------------------------------------------------
@pytest.fixture(params=["packed", "array"])
def dataset(request, tmp_path):
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    if request.param == "array":
        return ArrayDataset(images)
    return PackedDataset(pack_arrays(images, tmp_path / "p", images_per_shard=3).out_dir)


def test_gather_and_slice_refuse_rows_outside_the_set(dataset):
    with pytest.raises(ValueError, match=r"\[0, 10\).*got -1"):
        dataset.gather([-1])
    with pytest.raises(ValueError, match=r"\[0, 10\).*got 10"):
        dataset.gather(np.array([2, 10]))
    with pytest.raises(TypeError, match="integers"):
        dataset.gather(np.ones(10, bool))
    with pytest.raises(ValueError, match=r"slice\(-5, 3\).*≥ 0"):
        dataset.slice(-5, 3)
    with pytest.raises(ValueError, match=r"slice\(5, 3\).*start ≤ stop"):
        dataset.slice(5, 3)
    with pytest.raises(ValueError, match=r"start ≤ 10"):
        dataset.slice(11, 12)


def test_gather_and_slice_keep_their_legitimate_uses(dataset):
    every = dataset.slice(0, 10)
    assert len(dataset.slice(8, 500)) == 2  # a loop's last batch may ask past the end
    assert len(dataset.slice(10, 10)) == 0 and len(dataset.gather(np.array([], np.int64))) == 0
    np.testing.assert_array_equal(dataset.gather(np.array([9, 0, 4])), every[[9, 0, 4]])


def test_score_labelled_takes_one_metric_name_whole():
    """metrics="is" with an extractor that has no classifier (IS left out) was read as the
    letters 'i', 's' and refused as unknown metrics."""
    import torch

    from extractors import PoolExtractor
    from pixeljit.evaluation import score_labelled

    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    scores = score_labelled([(images, None)], 0, PoolExtractor(), None, "is", 8)
    assert "is" not in scores and scores["count"] == 8
