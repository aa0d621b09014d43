"""The FID InceptionV3 (TensorFlow graph of 2015-12-05) written in plain torch, and its extractor.

Parameter names and shapes follow the pytorch-fid / torch-fidelity port of the TF weights
(`pt_inception-2015-12-05-6726825d.pth`, 566 entries, fc with 1008 classes), so that file loads
strictly. The TF graph differs from torchvision's Inception3 in three places, reproduced here:
average pools ignore padding, the last block pools with a 3×3 max instead of an average, and the
logits used for IS omit the fc bias. Inputs follow the ADM / torch-fidelity protocol: uint8 →
float, TF1 "legacy" bilinear resize to 299 (no half-pixel offset), then (x − 128) / 128.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixeljit.files.download import file_digest

from .extractor import Extracted, FeatureExtractor, check_uint8_images, to_rgb
from .weights import INCEPTION_SHA256, resolve_inception_weights

INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INCEPTION_CLASSES = 1008  # the TF graph's softmax has 1008 outputs (1000 + 8 unused)
BN_EPS = 1e-3
PIXEL_OFFSET = 128.0  # the graph maps x to (x − 128) / 128
PIXEL_SCALE = 128.0

# (name, in, out, kernel, stride, padding); kernel/padding may be (h, w)
ConvSpec = tuple


class ConvBN(nn.Module):
    """Bias-free convolution, batch norm (eps 1e-3) and ReLU: TF's conv unit."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class MixedBlock(nn.Module):
    """Parallel branches concatenated along channels; the pooling branch comes last.

    Each branch is a list of conv names applied in turn; a tuple as the last element forks the
    branch into parallel convs whose outputs are concatenated (the 1×3 / 3×1 pairs of the E
    blocks). `pool` is "avg" (3×3 stride-1 average ignoring padding, then conv `branch_pool`),
    "max" (3×3 stride-1 max, then `branch_pool`) or "reduce" (3×3 stride-2 max, no conv).
    """

    def __init__(self, convs: list[ConvSpec], branches: list[list], pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max", "reduce"):
            raise ValueError(f"unknown pool kind {pool!r}")
        for name, cin, cout, *geometry in convs:
            self.add_module(name, ConvBN(cin, cout, *geometry))
        self.branches = branches
        self.pool = pool

    def _branch(self, x: torch.Tensor, steps: list) -> torch.Tensor:
        for step in steps:
            if isinstance(step, tuple):
                return torch.cat([getattr(self, name)(x) for name in step], dim=1)
            x = getattr(self, step)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._branch(x, steps) for steps in self.branches]
        if self.pool == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            outs.append(self.branch_pool(pooled))
        elif self.pool == "max":
            outs.append(self.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1)))
        else:
            outs.append(F.max_pool2d(x, 3, stride=2))
        return torch.cat(outs, dim=1)


def _block_a(cin: int, pool_features: int) -> MixedBlock:
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg→1×1 (out 224 + pool_features)."""
    convs = [
        ("branch1x1", cin, 64, 1),
        ("branch5x5_1", cin, 48, 1),
        ("branch5x5_2", 48, 64, 5, 1, 2),
        ("branch3x3dbl_1", cin, 64, 1),
        ("branch3x3dbl_2", 64, 96, 3, 1, 1),
        ("branch3x3dbl_3", 96, 96, 3, 1, 1),
        ("branch_pool", cin, pool_features, 1),
    ]
    branches = [["branch1x1"], ["branch5x5_1", "branch5x5_2"]]
    branches.append(["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"])
    return MixedBlock(convs, branches, "avg")


def _block_b(cin: int) -> MixedBlock:
    """35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | max/2 (out 480 + cin)."""
    convs = [
        ("branch3x3", cin, 384, 3, 2),
        ("branch3x3dbl_1", cin, 64, 1),
        ("branch3x3dbl_2", 64, 96, 3, 1, 1),
        ("branch3x3dbl_3", 96, 96, 3, 2),
    ]
    branches = [["branch3x3"], ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]]
    return MixedBlock(convs, branches, "reduce")


def _block_c(cin: int, c7: int) -> MixedBlock:
    """17×17 block with factorised 7×7 convolutions (out 768)."""
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of 1×7 and 7×1
    convs = [
        ("branch1x1", cin, 192, 1),
        ("branch7x7_1", cin, c7, 1),
        ("branch7x7_2", c7, c7, row[0], 1, row[1]),
        ("branch7x7_3", c7, 192, col[0], 1, col[1]),
        ("branch7x7dbl_1", cin, c7, 1),
        ("branch7x7dbl_2", c7, c7, col[0], 1, col[1]),
        ("branch7x7dbl_3", c7, c7, row[0], 1, row[1]),
        ("branch7x7dbl_4", c7, c7, col[0], 1, col[1]),
        ("branch7x7dbl_5", c7, 192, row[0], 1, row[1]),
        ("branch_pool", cin, 192, 1),
    ]
    branches = [["branch1x1"], [f"branch7x7_{i}" for i in (1, 2, 3)]]
    branches.append([f"branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)])
    return MixedBlock(convs, branches, "avg")


def _block_d(cin: int) -> MixedBlock:
    """17→8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max/2 (out 512 + cin)."""
    convs = [
        ("branch3x3_1", cin, 192, 1),
        ("branch3x3_2", 192, 320, 3, 2),
        ("branch7x7x3_1", cin, 192, 1),
        ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
        ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
        ("branch7x7x3_4", 192, 192, 3, 2),
    ]
    branches = [["branch3x3_1", "branch3x3_2"], [f"branch7x7x3_{i}" for i in (1, 2, 3, 4)]]
    return MixedBlock(convs, branches, "reduce")


def _block_e(cin: int, pool: str) -> MixedBlock:
    """8×8 block with 1×3 / 3×1 forks (out 2048); the last one pools with a max."""
    convs = [
        ("branch1x1", cin, 320, 1),
        ("branch3x3_1", cin, 384, 1),
        ("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
        ("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
        ("branch3x3dbl_1", cin, 448, 1),
        ("branch3x3dbl_2", 448, 384, 3, 1, 1),
        ("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
        ("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
        ("branch_pool", cin, 192, 1),
    ]
    branches = [
        ["branch1x1"],
        ["branch3x3_1", ("branch3x3_2a", "branch3x3_2b")],
        ["branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")],
    ]
    return MixedBlock(convs, branches, pool)


class FIDInceptionV3(nn.Module):
    """InceptionV3 trunk of the FID graph: (N, 3, 299, 299) normalised → pool3 (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, 2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, 1, 1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = _block_a(192, 32)
        self.Mixed_5c = _block_a(256, 64)
        self.Mixed_5d = _block_a(288, 64)
        self.Mixed_6a = _block_b(288)
        self.Mixed_6b = _block_c(768, 128)
        self.Mixed_6c = _block_c(768, 160)
        self.Mixed_6d = _block_c(768, 160)
        self.Mixed_6e = _block_c(768, 192)
        self.Mixed_7a = _block_d(768)
        self.Mixed_7b = _block_e(1280, "avg")
        self.Mixed_7c = _block_e(2048, "max")
        self.fc = nn.Linear(INCEPTION_DIM, INCEPTION_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # ... (N, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # ... (N, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048) "pool3"


def _legacy_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of TF1 resize_bilinear (align_corners=False, no half-pixel shift).

    Output pixel i samples the input at s = i · n_in / n_out, mixing floor(s) and floor(s)+1
    (clamped to the border) linearly.
    """
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = src - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w


def resize_tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float (N, C, H, W) to (N, C, size, size) like TF1's legacy bilinear (FID protocol)."""
    wy = _legacy_bilinear_matrix(x.shape[2], size).to(x)  # (size, H)
    wx = _legacy_bilinear_matrix(x.shape[3], size).to(x)  # (size, W)
    return torch.einsum("ih,nchw,jw->ncij", wy, x, wx)


def check_state_dict(model: nn.Module, state: object, source: str) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped keys of `state` for `model`."""
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{source} is not a state dict of tensors (got {type(state).__name__})")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [
        f"{k}: {tuple(state[k].shape)} != {want[k]}"
        for k in sorted(set(want) & set(state))
        if tuple(state[k].shape) != want[k]
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match the FID InceptionV3 (expected the {len(want)} keys of "
            f"pt_inception-2015-12-05-6726825d.pth): missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shapes {shapes[:5]}"
        )


def load_fid_inception(
    weights_path: str | os.PathLike | None = None,
    download: bool = False,
    allow_nonstandard: bool = False,
) -> FIDInceptionV3:
    """Build the FID InceptionV3 and load its weights strictly (eval mode, frozen, on CPU).

    Unless `allow_nonstandard`, the file must be the standard one (sha256 checked), since other
    weights give numbers that do not compare with published FIDs.
    """
    path = resolve_inception_weights(weights_path, download=download)
    if not allow_nonstandard:
        digest = file_digest(path)
        if digest != INCEPTION_SHA256:
            raise ValueError(
                f"{path} is not the standard FID Inception file (sha256 {digest}, expected "
                f"{INCEPTION_SHA256}); its FIDs would not compare with published ones: use the "
                "standard file (Python: allow_nonstandard=True accepts this one anyway)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling/format error: say what the file should be
        raise ValueError(f"{path} could not be read as a PyTorch state dict: {err}") from err
    model = FIDInceptionV3()
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


class InceptionExtractor(FeatureExtractor):
    """Standard FID features (pool3, 2048-d) and the 1008-way bias-free logits for IS.

    Images of any H × W are resized to 299 × 299 exactly as the ADM / torch-fidelity protocol
    does, non-square ones stretched as there, so FIDs stay comparable with published ones (the
    other extractors refuse non-square images: `extractor.check_square`)."""

    name = "inception-v3-fid"
    fd_label = "FID"
    dim = INCEPTION_DIM
    num_classes = INCEPTION_CLASSES

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        download: bool = False,
        allow_nonstandard: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.net = load_fid_inception(weights_path, download, allow_nonstandard).to(self.device)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> Extracted:
        x = to_rgb(check_uint8_images(images).to(self.device).float())  # (N, 3, H, W)
        x = resize_tf1_bilinear(x, INCEPTION_SIZE)  # (N, 3, 299, 299)
        x = (x - PIXEL_OFFSET) / PIXEL_SCALE
        pool = self.net(x)  # (N, 2048)
        logits = pool @ self.net.fc.weight.T  # (N, 1008), no bias as in the original IS code
        return Extracted(features=pool.float(), logits=logits.float())
