"""The one interface every feature extractor offers, and the shared input checks.

An extractor maps uint8 images (N, C, H, W) to features (N, dim) float32 and, when it is a
classifier, class logits (N, num_classes). All distances (FD, KID, precision/recall) and the
Inception-style score work on any extractor through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GREY_CHANNELS = 1
RGB_CHANNELS = 3
# ITU-R BT.601 luma weights, used to turn RGB into grey for grey-only extractors
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class Extracted:
    """Output of one extractor pass: features (N, dim) float32 and optional logits (N, K)."""

    features: torch.Tensor
    logits: torch.Tensor | None = None


class FeatureExtractor(ABC):
    """A frozen network that embeds uint8 images.

    Attributes:
        name: short identifier (the `--extractor` choice).
        revision: '' until the extractor's features change (e.g. a new resize rule); then a tag
            that `stats_name` adds, so statistics made before are refused instead of mixed.
        fd_label: how its Fréchet distance is reported ("FID" only for the standard Inception).
        dim: feature width.
        num_classes: width of `logits`, 0 when the extractor has no classifier head.
        class_names: what each logit means (class accuracy matches labels to them by name),
            None when unknown.
        device: where the network runs; inputs are moved there.
    """

    name: str
    revision: str = ""
    fd_label: str
    dim: int
    num_classes: int = 0
    class_names: tuple[str, ...] | None = None
    device: torch.device = torch.device("cpu")

    @property
    def stats_name(self) -> str:
        """The identifier stored next to data-set statistics (guards against mixing)."""
        return f"{self.name}@{self.revision}" if self.revision else self.name

    @abstractmethod
    def extract(self, images: torch.Tensor) -> Extracted:
        """Features (and logits if any) of uint8 images (N, C, H, W)."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features (N, dim) float32 of uint8 images (N, C, H, W)."""
        return self.extract(images).features

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of uint8 images; ValueError if there is no head."""
        out = self.extract(images).logits
        if out is None:
            raise ValueError(f"extractor {self.name!r} has no classifier head (no logits)")
        return out


def check_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Validate images as uint8 (N, C, H, W) with C in {1, 3}; returns them unchanged."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 in [0, 255], got {images.dtype}; convert float images in "
            "[-1, 1] with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)"
        )
    if images.ndim != 4 or images.shape[1] not in (GREY_CHANNELS, RGB_CHANNELS):
        raise ValueError(
            f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}"
        )
    return images


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W): grey images are repeated over three channels."""
    return x.expand(-1, RGB_CHANNELS, -1, -1) if x.shape[1] == GREY_CHANNELS else x


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) float -> (N, 1, H, W): RGB is reduced with the BT.601 luma weights."""
    if x.shape[1] == GREY_CHANNELS:
        return x
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, RGB_CHANNELS, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def check_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` (N, C, H, W) unchanged if H = W, else a ValueError: resizing it to size × size would
    stretch it (its features would measure the distortion, and a classifier misjudge it)."""
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(
            f"images must be square: got {h}×{w} px (H×W), which resizing to {size}×{size} "
            f"would stretch; crop or pad them square first (e.g. a centre crop to "
            f"{min(h, w)}×{min(h, w)})"
        )
    return x


def resize_square(x: torch.Tensor, size: int, shrink: str = "area") -> torch.Tensor:
    """Resize float (N, C, H, W) pixels in [0, 255] to (N, C, size, size): bilinear when
    enlarging; when shrinking, `shrink` 'area' (box averaging, so integer down-scales of
    block-upsampled images are exact) or 'bicubic' (antialiased, clamped to [0, 255]: the inverse
    of a bicubic enlargement such as `prepare`'s 28 → 32 px Fashion-MNIST). Images that are not
    square are refused (`check_square`), never stretched."""
    check_square(x, size)
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-1] >= size and x.shape[-2] >= size:
        if shrink == "bicubic":
            out = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                                align_corners=False)  # fmt: skip
            return out.clamp(0.0, 255.0)
        if shrink != "area":
            raise ValueError(f"shrink must be 'area' or 'bicubic', got {shrink!r}")
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
