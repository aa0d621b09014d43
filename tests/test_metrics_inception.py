"""The FID Inception path end to end with locally made weights; loading, download, messages."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------- an independent re-implementation
# pytorch-fid and torch-fidelity both import torchvision, which does not import beside torch 2.13,
# so the check below is a second, functional implementation written from the published
# architecture (Szegedy et al. 2016, "Rethinking the Inception Architecture", Fig. 5–7 and Tab. 1)
# plus the FID graph's quirks: TF1 legacy bilinear resize to 299, (x − 128) / 128, average pools
# that ignore padding, a 3×3 max pool in the last E block, bias-free logits. It shares nothing with
# pixeljit.metrics.inception but the state dict's names.
def _unit(x, sd, name, stride=1, padding=0):
    """conv (no bias) → batch norm (eps 1e-3, running statistics) → ReLU."""
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
    bn = [sd[f"{name}.bn.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
    return F.relu(F.batch_norm(x, bn[0], bn[1], bn[2], bn[3], training=False, eps=1e-3))


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _mixed_35(x, sd, m):  # Fig. 5: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg→1×1
    b1 = _unit(x, sd, f"{m}.branch1x1")
    b5 = _unit(_unit(x, sd, f"{m}.branch5x5_1"), sd, f"{m}.branch5x5_2", padding=2)
    b3 = _unit(x, sd, f"{m}.branch3x3dbl_1")
    b3 = _unit(_unit(b3, sd, f"{m}.branch3x3dbl_2", padding=1), sd, f"{m}.branch3x3dbl_3", 1, 1)
    return torch.cat([b1, b5, b3, _unit(_avg3(x), sd, f"{m}.branch_pool")], 1)


def _reduce_35(x, sd, m):  # 35 → 17: 3×3/2 | 1×1→3×3→3×3/2 | max 3×3/2
    b3 = _unit(x, sd, f"{m}.branch3x3", stride=2)
    bd = _unit(_unit(x, sd, f"{m}.branch3x3dbl_1"), sd, f"{m}.branch3x3dbl_2", padding=1)
    bd = _unit(bd, sd, f"{m}.branch3x3dbl_3", stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


def _mixed_17(x, sd, m):  # Fig. 6 with n = 7: 1×7 and 7×1 factorised convolutions
    row, col = (0, 3), (3, 0)
    b1 = _unit(x, sd, f"{m}.branch1x1")
    b7 = _unit(x, sd, f"{m}.branch7x7_1")
    b7 = _unit(_unit(b7, sd, f"{m}.branch7x7_2", padding=row), sd, f"{m}.branch7x7_3", 1, col)
    bd = _unit(x, sd, f"{m}.branch7x7dbl_1")
    for i, pad in zip((2, 3, 4, 5), (col, row, col, row), strict=True):
        bd = _unit(bd, sd, f"{m}.branch7x7dbl_{i}", padding=pad)
    return torch.cat([b1, b7, bd, _unit(_avg3(x), sd, f"{m}.branch_pool")], 1)


def _reduce_17(x, sd, m):  # 17 → 8: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max 3×3/2
    b3 = _unit(_unit(x, sd, f"{m}.branch3x3_1"), sd, f"{m}.branch3x3_2", stride=2)
    b7 = _unit(x, sd, f"{m}.branch7x7x3_1")
    b7 = _unit(b7, sd, f"{m}.branch7x7x3_2", padding=(0, 3))
    b7 = _unit(b7, sd, f"{m}.branch7x7x3_3", padding=(3, 0))
    b7 = _unit(b7, sd, f"{m}.branch7x7x3_4", stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


def _mixed_8(x, sd, m, last):  # Fig. 7: expanded 1×3 / 3×1 outputs; the FID graph's last: max
    b1 = _unit(x, sd, f"{m}.branch1x1")
    b3 = _unit(x, sd, f"{m}.branch3x3_1")
    b3 = torch.cat([_unit(b3, sd, f"{m}.branch3x3_2a", padding=(0, 1)),
                    _unit(b3, sd, f"{m}.branch3x3_2b", padding=(1, 0))], 1)  # fmt: skip
    bd = _unit(_unit(x, sd, f"{m}.branch3x3dbl_1"), sd, f"{m}.branch3x3dbl_2", padding=1)
    bd = torch.cat([_unit(bd, sd, f"{m}.branch3x3dbl_3a", padding=(0, 1)),
                    _unit(bd, sd, f"{m}.branch3x3dbl_3b", padding=(1, 0))], 1)  # fmt: skip
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if last else _avg3(x)
    return torch.cat([b1, b3, bd, _unit(pooled, sd, f"{m}.branch_pool")], 1)


def _tf1_resize(x, size):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres), by gathering."""

    def axis(n_in):
        src = torch.arange(size, dtype=torch.float64) * n_in / size
        i0 = src.floor().long()
        i1 = torch.clamp(i0 + 1, max=n_in - 1)
        return i0, i1, (src - i0).float()

    r0, r1, fr = axis(x.shape[2])
    x = x[:, :, r0] * (1 - fr)[:, None] + x[:, :, r1] * fr[:, None]
    c0, c1, fc = axis(x.shape[3])
    return x[..., c0] * (1 - fc) + x[..., c1] * fc


def reference_fid_inception(images_u8, sd):
    """uint8 (N, C, H, W) → (pool3 (N, 2048), logits (N, 1008)) of the FID Inception graph."""
    x = images_u8.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = (_tf1_resize(x, 299) - 128.0) / 128.0
    x = _unit(_unit(_unit(x, sd, "Conv2d_1a_3x3", stride=2), sd, "Conv2d_2a_3x3"),
              sd, "Conv2d_2b_3x3", padding=1)  # fmt: skip
    x = F.max_pool2d(x, 3, stride=2)
    x = _unit(_unit(x, sd, "Conv2d_3b_1x1"), sd, "Conv2d_4a_3x3")
    x = F.max_pool2d(x, 3, stride=2)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _mixed_35(x, sd, m)
    x = _reduce_35(x, sd, "Mixed_6a")
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _mixed_17(x, sd, m)
    x = _reduce_17(x, sd, "Mixed_7a")
    x = _mixed_8(_mixed_8(x, sd, "Mixed_7b", last=False), sd, "Mixed_7c", last=True)
    pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pool, pool @ sd["fc.weight"].T


@torch.inference_mode()
def test_inception_equals_an_independent_implementation(random_weights):
    """Same random weights, same uint8 input: our extractor equals the functional re-implementation
    above (fails if a pooling quirk, the resize, the scaling or a branch's padding changes)."""
    sd = torch.load(random_weights, weights_only=True)
    ext = InceptionExtractor(weights_path=random_weights, allow_nonstandard=True)
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (1, 3, 37, 53), generator=gen, dtype=torch.uint8)
    got = ext.extract(rgb)
    pool, logits = reference_fid_inception(rgb, sd)
    scale = pool.abs().max()
    assert scale > 0 and (pool > 0).float().mean() > 0.5  # calibrated: most features alive
    torch.testing.assert_close(got.features, pool, rtol=1e-4, atol=1e-5 * float(scale))
    torch.testing.assert_close(got.logits, logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max()))
