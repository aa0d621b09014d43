"""Scoring entry points for the CLI: images + extractor + data-set statistics → FD / KID / IS / PR.

One pass over the images feeds the streaming moments (FD), the feature bank (KID, PR) and the
logits (IS). Under torch.distributed each rank passes its shard of images and every rank gets
the scores of the union.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .dataset_stats import DatasetStats
from .distances import (
    KIDConfig,
    PRConfig,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    kid_subset_size,
    precision_recall,
)
from .extractor import FeatureExtractor
from .image_sources import DEFAULT_BATCH, ImageSource, check_batch_size, iter_batches
from .stats import DEFAULT_BANK_CAPACITY, FeatureBank, FeatureStats, all_gather_rows

METRICS = ("fd", "kid", "is", "pr")
PR_REAL_SEED = 0  # draws the real features that precision / recall compare against
NO_IMAGES = "class_accuracy got no images: give at least one image (N ≥ 1) with its label"


def metric_names(metrics) -> tuple[str, ...]:
    """`metrics` as a tuple of names: one name ("fd") is that metric, not its letters."""
    if isinstance(metrics, str):
        return (metrics,)
    try:
        names = tuple(metrics)
    except TypeError:
        raise TypeError(f"metrics must be names from {METRICS} (a str or a tuple of them), got "
                        f"{type(metrics).__name__} {metrics!r}") from None  # fmt: skip
    odd = [m for m in names if not isinstance(m, str)]
    if odd:
        raise TypeError(f"metrics must be names from {METRICS}, got {odd[0]!r} in {metrics!r}")
    return names


@dataclass
class ScoreConfig:
    """What to compute and how. `bank_capacity` bounds the generated features kept for KID/PR
    (per rank, a uniform reservoir; None keeps all: N × dim float32 on the host). The default
    keeps 50k (400 MB of Inception features): up to the FID-standard 50k images KID/PR see every
    image, beyond it a uniform sample, so a 10M-image run cannot hold 80 GB of features.
    """

    metrics: tuple[str, ...] = METRICS
    batch_size: int = DEFAULT_BATCH
    kid: KIDConfig = field(default_factory=KIDConfig)
    pr: PRConfig = field(default_factory=PRConfig)
    is_splits: int = 10
    bank_capacity: int | None = DEFAULT_BANK_CAPACITY
    seed: int = 0

    def __post_init__(self) -> None:
        self.metrics = metric_names(self.metrics)
        self.batch_size = check_batch_size(self.batch_size, "ScoreConfig.batch_size")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")

    def fewest_images(self, metric: str) -> tuple[int, str]:
        """The fewest images `metric` can be computed from, and why: a covariance (FD) and the
        unbiased MMD (KID) need 2, the k-NN radii of precision / recall k + 1, IS one per
        split."""
        return {"fd": (2, "a covariance"), "kid": (2, "the unbiased MMD"),
                "pr": (self.pr.k + 1, "the k-NN radii"),
                "is": (self.is_splits, f"its {self.is_splits} splits")}[metric]  # fmt: skip

    def check_count(self, metrics, count: int, fix: str) -> None:
        """Refuse `count` images for a metric that needs more; `fix` ({metric} filled in) says
        what to do."""
        for metric in metrics:
            least, why = self.fewest_images(metric)
            if count < least:
                raise ValueError(f"{metric} needs at least {least} images (for {why}), got "
                                 f"{count}: {fix.format(metric=metric, least=least)}")  # fmt: skip


@dataclass
class Scores:
    """Results; a metric that was not requested stays None."""

    extractor: str
    fd_label: str
    count: int
    fd: float | None = None
    kid: float | None = None
    kid_std: float | None = None  # None when every KID subset was the whole of both sets
    kid_subset_size: int | None = None  # the samples per KID subset actually drawn
    inception_score: float | None = None
    inception_score_std: float | None = None
    precision: float | None = None
    recall: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Labelled values, e.g. {"FID": …} for Inception or {"FD-EffNetLite0": …} otherwise."""
        is_label = "IS" if self.fd_label == "FID" else self.fd_label.replace("FD-", "IS-", 1)
        named = {
            self.fd_label: self.fd,
            "KID": self.kid,
            "KID_std": self.kid_std,
            "KID_subset_size": self.kid_subset_size,
            is_label: self.inception_score,
            f"{is_label}_std": self.inception_score_std,
            "precision": self.precision,
            "recall": self.recall,
        }
        out = {k: v for k, v in named.items() if v is not None}
        out["count"] = float(self.count)
        return out


def _dataset_features(ref: DatasetStats, what: str) -> torch.Tensor:
    if ref.features is None:
        c, size = (ref.image_shape[0], ref.image_shape[-1]) if ref.image_shape else ("C", "S")
        raise ValueError(
            f"{what} needs the data set's features, but its statistics hold only mu/sigma "
            "(as ADM / JiT .npz files do): make a reference that keeps them from the data set's "
            f"images (`pixeljit eval --make-ref DATASET --size {size} --channels {c} --out "
            "STATS.npz`, at the scored images' size and channel count, or pass the data set "
            "itself as --ref; pixeljit.metrics.compute_dataset_stats(images, extractor, "
            "keep_features=True)), or leave this metric out (--metrics / metrics=)"
        )
    return torch.from_numpy(ref.features)


def _same_subsets(count: int, cfg: KIDConfig) -> str:
    """Why KID_std is left out when both sets hold `count` ≤ cfg.subset_size samples."""
    return (f"KID_std left out: the scored and the reference features are {count} each, no "
            f"more than the subset size {cfg.subset_size}, so each of the {cfg.num_subsets} "
            "subsets is the whole of both sets and their spread is round-off; KID is the "
            "unbiased MMD² of the two sets. For a spread, give either side more samples (more "
            "images, or a reference that keeps more features)")  # fmt: skip


def _check_ref(ref, extractor: FeatureExtractor, wanted: tuple[str, ...]) -> None:
    """`ref` fit for the metrics `wanted` that compare with it, refused before any image is
    scored: statistics (not a path), of this extractor, with features for KID / PR."""
    needs_ref = sorted({"fd", "kid", "pr"} & set(wanted))
    if not needs_ref:
        return
    make = ("pixeljit.metrics.compute_dataset_stats(images, extractor) or "
            "load_dataset_stats(STATS.npz, extractor)")  # fmt: skip
    if ref is None:
        raise ValueError(f"metrics {needs_ref} need data-set statistics: pass ref= ({make})")
    if not isinstance(ref, DatasetStats):
        what = "a path" if isinstance(ref, (str, os.PathLike)) else type(ref).__name__
        raise TypeError(f"ref must be DatasetStats, got {what} {ref!r}: pass {make}")
    recorded = (ref.extractor or "").split("@", 1)[0]
    if recorded and ref.dim != extractor.dim:  # the statistics name the extractor they need
        raise ValueError(
            f"data-set statistics of {ref.dim}-d features were made with extractor {recorded!r}, "
            f"but {extractor.name!r} gives {extractor.dim}-d features: score with {recorded} "
            f"(create_extractor({recorded!r}) / --extractor {recorded})"
        )
    ref.check_extractor(extractor)
    for metric, what in (("kid", "KID"), ("pr", "precision/recall")):
        if metric in wanted:
            _dataset_features(ref, what)


def _check_batch_shape(ref: DatasetStats, batch) -> None:
    """A batch of other images (C, H, W) than `ref` measured (when it records their shape)."""
    shape = tuple(getattr(batch, "shape", ())[1:])
    if len(shape) == 3:  # anything else: the extractor names what it got
        ref.check_image_shape(shape)


def matched_real_features(real: torch.Tensor, num: int) -> torch.Tensor:
    """`num` of the reference's feature rows (N, d), drawn with PR_REAL_SEED in their stored
    order (all when there are no more). Precision and recall compare equal numbers of real and
    generated features, as Kynkäänniemi et al. do: a set's k-NN radii shrink as it grows, so 500
    samples against 60,000 training images would judge the two sides by different balls (and
    spend minutes on the radii of the larger set)."""
    if len(real) <= num:
        return real
    pick = np.random.default_rng(PR_REAL_SEED).choice(len(real), size=num, replace=False)
    return real[torch.from_numpy(np.sort(pick))]


def score_images(
    images: ImageSource,
    extractor: FeatureExtractor,
    ref: DatasetStats | None,
    metrics: tuple[str, ...] | None = None,
    cfg: ScoreConfig | None = None,
) -> Scores:
    """Score uint8 images (N, C, H, W) — a tensor, batches, a folder or an `.npz` — against `ref`.

    `metrics` (subset of "fd", "kid", "is", "pr", or one such name) overrides cfg.metrics.
    FD/KID/PR need `ref` made with the same extractor, of images of the same size and channel
    count where `ref` records them (`ref.image_shape`; statistics recording none, such as ADM's
    or the authors', are taken as they are); KID/PR need its features; IS needs an extractor
    with logits.
    """
    cfg = cfg or ScoreConfig()
    wanted = metric_names(metrics) if metrics is not None else cfg.metrics
    ScoreConfig(metrics=wanted)  # validates the names
    _check_ref(ref, extractor, wanted)
    compares = bool({"fd", "kid", "pr"} & set(wanted))
    if "is" in wanted and extractor.num_classes == 0:
        raise ValueError(f"IS needs class logits; extractor {extractor.name!r} has none")
    stats = FeatureStats(extractor.dim, device=extractor.device)
    bank = FeatureBank(cfg.bank_capacity, cfg.seed) if {"kid", "pr"} & set(wanted) else None
    logits: list[torch.Tensor] = []
    for batch in iter_batches(images, cfg.batch_size):
        if compares:
            _check_batch_shape(ref, batch)
        out = extractor.extract(batch)
        stats.update(out.features)
        if bank is not None:
            bank.add(out.features)
        if "is" in wanted:
            logits.append(out.logits.cpu())
    stats.all_reduce()
    cfg.check_count(wanted, stats.count, "score more images or leave {metric} out")
    scores = Scores(extractor.name, extractor.fd_label, stats.count)
    if "fd" in wanted:
        mu, sigma = stats.mu_sigma()
        scores.fd = frechet_distance(mu, sigma, ref.mu, ref.sigma, ref.sqrt_sigma())
    if bank is not None:
        fake = bank.all_gather(extractor.device)  # KID / PR run where the extractor runs
        if "kid" in wanted:
            real = _dataset_features(ref, "KID").to(extractor.device)
            scores.kid, scores.kid_std = kernel_inception_distance(fake, real, cfg.kid)
            scores.kid_subset_size = kid_subset_size(len(fake), len(real), cfg.kid)
            if scores.kid_subset_size == len(fake) == len(real):
                scores.kid_std = None
                warnings.warn(_same_subsets(len(fake), cfg.kid), stacklevel=2)
        if "pr" in wanted:
            real = matched_real_features(_dataset_features(ref, "precision/recall"), len(fake))
            real = real.to(extractor.device)
            scores.precision, scores.recall = precision_recall(real, fake, cfg.pr)
    if "is" in wanted:
        # a rank that scored no batch gathers no rows (the others' width is taken)
        mine = torch.cat(logits) if logits else torch.empty(0, 0)
        all_logits = all_gather_rows(mine.to(extractor.device)).cpu()
        scores.inception_score, scores.inception_score_std = inception_score(
            all_logits, cfg.is_splits
        )
    return scores


def _check_labels(labels, num_classes: int) -> torch.Tensor:
    """`labels` as a 1-D int64 CPU tensor of classes in [0, num_classes), or a ValueError /
    TypeError saying what was given: (N, 1) would broadcast against the predictions, floats
    would be truncated, and a class the classifier lacks would count as a silent miss."""
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if not isinstance(labels, (torch.Tensor, np.ndarray)):
        raise TypeError(f"labels must be a 1-D integer tensor or array (N,), got "
                        f"{type(labels).__name__}")  # fmt: skip
    t = torch.from_numpy(np.ascontiguousarray(labels)) if isinstance(labels, np.ndarray) else labels
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"labels must be integers (class indices), got {t.dtype}: pass "
                        "labels.long() if they are whole numbers")  # fmt: skip
    if t.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), one class per image, got shape "
                         f"{tuple(t.shape)}: flatten them (labels.reshape(-1))")  # fmt: skip
    t = t.cpu().long()
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"labels must be classes in [0, {num_classes}) of the classifier, got "
                         f"{bad}: map them to its label space first")  # fmt: skip
    return t


def class_accuracy(
    images: ImageSource,
    labels: torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = DEFAULT_BATCH,
) -> float:
    """Fraction of images the extractor's classifier assigns to their intended label (N,).

    For class-conditional samples scored by a classifier of the same label space (e.g. the
    Fashion-MNIST classifier for Fashion-MNIST samples).
    """
    if extractor.num_classes == 0:
        raise ValueError(f"extractor {extractor.name!r} has no classifier head")
    count = len(images) if isinstance(images, (torch.Tensor, np.ndarray)) else None
    if count == 0:  # said before the labels, which for no images may be `[]` (floats to numpy)
        raise ValueError(NO_IMAGES)
    labels = _check_labels(labels, extractor.num_classes)
    batch_size = check_batch_size(batch_size)
    if count is not None and count != len(labels):
        raise ValueError(f"labels must be one per image: got {len(labels)} labels for {count} "
                         "images")  # fmt: skip
    hits, seen = 0, 0
    for batch in iter_batches(images, batch_size):
        pred = extractor.logits(batch).argmax(dim=1).cpu()  # (n,)
        if seen + len(pred) > len(labels):
            raise ValueError(f"labels must be one per image: got {len(labels)} labels for more "
                             f"images ({seen + len(pred)} so far)")  # fmt: skip
        hits += int((pred == labels[seen : seen + len(pred)]).sum())
        seen += len(pred)
    if seen == 0:
        raise ValueError(NO_IMAGES)
    if seen != len(labels):
        raise ValueError(f"labels must be one per image: got {len(labels)} labels for {seen} "
                         "images")  # fmt: skip
    return hits / seen
