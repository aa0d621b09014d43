"""Mirroring (data.flip) only where the data is mirror-symmetric: Fashion-MNIST is not (its
shoes all face left), so its presets do not flip and asking for flips there warns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import tiny_run
from pixeljit.data import fashion_mnist
from pixeljit.training.loop import train
from pixeljit.training.presets import get_preset, presets
from pixeljit.training.setup import flip_warning

FMNIST_PRESETS = [n for n in presets() if get_preset(n).data.source == "fashion-mnist"]


def _asymmetry(images: np.ndarray) -> float:
    """‖mean − mirror(mean)‖ / ‖mean‖ of a class's mean image (0: mirror-symmetric)."""
    mean = images.astype(np.float64).mean(axis=0)
    return float(np.linalg.norm(mean - mean[..., ::-1]) / np.linalg.norm(mean))


def test_fashion_mnist_shoes_face_one_way_and_the_other_classes_do_not():
    """The fact the presets rely on, measured on the real test split: each shoe class's mean
    image differs from its mirror image at least twice as much as any other class's does
    (measured: shoes 0.65–0.95, the rest 0.08–0.27)."""
    images, labels = fashion_mnist.load_fashion_mnist("test")  # missing data fails, as elsewhere
    names = fashion_mnist.CLASS_NAMES
    score = {names[c]: _asymmetry(images[labels == c]) for c in range(len(names))}
    shoes = [score[n] for n in fashion_mnist.FACING_CLASSES]
    others = [score[n] for n in names if n not in fashion_mnist.FACING_CLASSES]
    assert min(shoes) > 2 * max(others), score


@pytest.mark.parametrize("name", FMNIST_PRESETS)
def test_fashion_mnist_presets_do_not_mirror(name):
    cfg = get_preset(name)
    assert cfg.data.flip is False
    assert flip_warning(cfg) is None


def test_flips_on_fashion_mnist_warn_with_the_fix():
    cfg = get_preset("fmnist-small")
    flipped = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, flip=True))
    message = flip_warning(flipped)
    assert message is not None and "data.flip=false" in message and "face left" in message


def test_flips_elsewhere_do_not_warn():
    cfg = get_preset("emoji-cpu")
    assert cfg.data.flip is True and flip_warning(cfg) is None
    folder = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="/data/imagenet"))
    assert flip_warning(folder) is None


@pytest.mark.parametrize("flip", [True, False])
def test_packed_fashion_mnist_warns_only_when_mirrored(fmnist16, tmp_path, capsys, flip):
    """A folder packed from Fashion-MNIST is recognised by its manifest, not only the name."""
    train(tiny_run(fmnist16(64), tmp_path / "run", **{"data.flip": flip}), progress=False)
    said = "warning: data.flip=true mirrors Fashion-MNIST" in capsys.readouterr().out
    assert said is flip
