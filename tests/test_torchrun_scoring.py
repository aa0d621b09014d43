"""Scoring under torchrun takes each image once: every rank read the whole `--images` source or
the whole reference data set, and the merged statistics counted each image once per rank
(`count` 40 for 20 images, a different KID; reference statistics of 20,000 images for
Fashion-MNIST's 10,000, cached and then read by later single-process runs). Each rank now takes
a contiguous block, so the gathered features are the source's, in its own order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import torchrun
from pixeljit.cli import main
from pixeljit.data import PackedDataset, prepare


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-scoring")
    prepare("fashion-mnist", 16, root / "data", split="test", limit=61)  # odd: unequal blocks
    return root


def test_reference_statistics_of_a_data_set_count_each_image_once(data, tmp_path, monkeypatch):
    argv = ["eval", "--make-ref", str(data / "data"), "--size", "16", "--channels", "1",
            "--extractor", "fmnist-cnn"]  # fmt: skip
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache-two"))  # cold: computed here
    done = torchrun([*argv, "--out", str(tmp_path / "two.npz")])
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache-one"))
    assert main([*argv, "--out", str(tmp_path / "one.npz")]) == 0
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:
        if one[key].dtype.kind == "f":
            np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert len(PackedDataset(data / "data")) == 61


def test_eval_images_under_torchrun_scores_each_image_once(data, tmp_path):
    real = PackedDataset(data / "data")
    images = tmp_path / "real.npz"
    np.savez(images, arr_0=real.slice(0, 61).transpose(0, 2, 3, 1), labels=real.labels[:61])
    ref = tmp_path / "ref.npz"
    assert main(["eval", "--make-ref", str(data / "data"), "--size", "16", "--channels", "1",
                 "--extractor", "fmnist-cnn", "--out", str(ref)]) == 0  # fmt: skip
    flags = ["eval", "--images", str(images), "--ref", str(ref), "--metrics", "fd", "kid", "pr"]
    assert main([*flags, "--out", str(tmp_path / "one.json")]) == 0
    done = torchrun([*flags, "--out", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["scores"] for n in ("one", "two"))
    assert one["count"] == two["count"] == 61
    assert sorted(one) == sorted(two)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
