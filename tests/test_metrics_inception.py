"""The FID Inception path end to end with locally made weights; loading, download, messages."""

from __future__ import annotations

import hashlib

import pytest
import torch

from pixeljit.files.download import download
from pixeljit.metrics import weights
from pixeljit.metrics.inception import (
    INCEPTION_CLASSES,
    INCEPTION_DIM,
    FIDInceptionV3,
    InceptionExtractor,
    load_fid_inception,
    resize_tf1_bilinear,
)

STATE_KEYS = 566  # entries of pt_inception-2015-12-05-6726825d.pth
# torchvision's InceptionV3 without the auxiliary head, with the TF graph's 1008-way fc
PARAMETERS = 23_834_568 + (INCEPTION_CLASSES - 1000) * (INCEPTION_DIM + 1)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> str:
    """A state dict of the right keys/shapes with random values.

    The batch-norm statistics are calibrated on random inputs (one train-mode pass with
    cumulative averaging), so that features depend on the input as in a trained network.
    """
    torch.manual_seed(0)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running stats = the calibration batch's stats
            torch.nn.init.normal_(module.bias, std=0.1)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 299, 299))
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_architecture_matches_weights_file_layout():
    model = FIDInceptionV3()
    state = model.state_dict()
    assert len(state) == STATE_KEYS
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert state["fc.weight"].shape == (INCEPTION_CLASSES, INCEPTION_DIM)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)


def test_extractor_end_to_end_with_random_weights(random_weights):
    ext = InceptionExtractor(weights_path=random_weights, allow_nonstandard=True)
    shapes = {}
    for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
        getattr(ext.net, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
    gen = torch.Generator().manual_seed(2)
    rgb = torch.randint(0, 256, (2, 3, 40, 48), generator=gen, dtype=torch.uint8)
    out = ext.extract(rgb)
    # the graph's resolutions after resizing to 299: 35², 17², 8²
    assert shapes == {
        "Mixed_5d": (2, 288, 35, 35),
        "Mixed_6e": (2, 768, 17, 17),
        "Mixed_7c": (2, 2048, 8, 8),
    }
    assert out.features.shape == (2, INCEPTION_DIM) and out.features.dtype == torch.float32
    assert out.logits.shape == (2, INCEPTION_CLASSES)
    assert torch.isfinite(out.features).all() and (out.features >= 0).all()  # pooled ReLUs
    torch.testing.assert_close(out.logits, out.features @ ext.net.fc.weight.T)  # no fc bias
    assert (out.features[0] - out.features[1]).abs().max() > 1e-3 * out.features.abs().max()
    grey = rgb[:, :1]
    torch.testing.assert_close(ext.features(grey), ext.features(grey.expand(-1, 3, -1, -1)))


def test_loader_rejects_nonstandard_wrong_and_unreadable_files(random_weights, tmp_path):
    with pytest.raises(ValueError, match="not the standard FID Inception file"):
        load_fid_inception(random_weights)
    state = torch.load(random_weights, weights_only=True)
    state["extra.weight"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    state["fc.bias"] = torch.zeros(1000)
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"missing \['Mixed_5b.branch1x1.conv.weight'\]") as err:
        load_fid_inception(wrong, allow_nonstandard=True)
    assert "extra.weight" in str(err.value) and "fc.bias: (1000,) != (1008,)" in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a PyTorch state dict"):
        load_fid_inception(garbage, allow_nonstandard=True)


def test_missing_weights_say_how_to_obtain_them(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.INCEPTION_ENV, raising=False)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    for kwargs in ({}, {"weights_path": tmp_path / "nope.pth"}):
        with pytest.raises(FileNotFoundError) as err:
            InceptionExtractor(**kwargs)
        message = str(err.value)
        assert weights.INCEPTION_URL in message
        assert weights.INCEPTION_OPTION in message and weights.INCEPTION_ENV in message
    monkeypatch.setenv(weights.INCEPTION_ENV, str(tmp_path / "also-missing.pth"))
    with pytest.raises(FileNotFoundError, match="also-missing.pth"):
        weights.resolve_inception_weights()


def test_download_verifies_sha256_atomically(tmp_path, monkeypatch):
    payload = tmp_path / "source.bin"
    payload.write_bytes(b"inception bytes " * 1000)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    url = payload.as_uri()  # file:// — the same urllib path as https, no network
    dest = tmp_path / "out" / "weights.pth"
    with pytest.raises(ValueError, match="sha256"):
        download(url, dest, "0" * 64)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # nothing left behind
    assert download(url, dest, digest) == dest
    assert dest.read_bytes() == payload.read_bytes()
    # resolve(download=True) fetches into the cache when nothing is there yet
    monkeypatch.delenv(weights.INCEPTION_ENV, raising=False)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "INCEPTION_URL", url)
    monkeypatch.setattr(weights, "INCEPTION_SHA256", digest)
    got = weights.resolve_inception_weights(download=True)
    assert got == tmp_path / "cache" / weights.INCEPTION_FILENAME and got.is_file()


def test_tf1_legacy_bilinear_resize():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_tf1_bilinear(x, 4), x)
    up = resize_tf1_bilinear(x, 8)[0, 0]
    # TF1 (align_corners=False, no half-pixel centres): output i samples input i/2, border clamped
    row = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0])
    torch.testing.assert_close(up[0], row)
    torch.testing.assert_close(up[:, 0], 4 * row)
    const = torch.full((2, 3, 5, 7), 42.0)
    torch.testing.assert_close(resize_tf1_bilinear(const, 299), torch.full((2, 3, 299, 299), 42.0))
