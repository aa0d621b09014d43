"""Generate-and-score in one streaming pass, sharded over torchrun ranks; the paper's selection.

Images are made batch by batch, scored as they come (moments for FD, a feature bank for KID / PR,
logits for IS), and never written unless asked. Sample k (global index) has class k mod K and
noise from seed (seed, k), so a run's images do not depend on the batch size or the number of
ranks; rank r makes the contiguous block of indices it owns. Selection (§1 of the facts sheet):
every EMA × every CFG scale on a few thousand samples, lowest FD wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pixeljit.checkpoints.load import TrainedModel
from pixeljit.checkpoints.provenance import DIGEST_KEY, model_record, weights_digest
from pixeljit.data.open import open_dataset
from pixeljit.diffusion.execution import MATMUL_PRECISIONS, matmul_precision
from pixeljit.diffusion.sampler import SamplerConfig, check_seed, sample
from pixeljit.evaluation_ranks import (  # noqa: F401  (shard, rank_block: this module's API)
    is_main,
    rank_block,
    rank_image_set,
    rank_share,
    ranks,
    shard,
    share_label,
)
from pixeljit.files.cache import cache_root
from pixeljit.files.images import save_labels_csv, save_pngs, to_uint8
from pixeljit.metrics import (
    DatasetStats,
    FeatureExtractor,
    ScoreConfig,
    cached_dataset_stats,
    load_dataset_stats,
    score_images,
)
from pixeljit.metrics.image_sources import DEFAULT_BATCH, iter_batches
from pixeljit.metrics.labelled import (
    AccuracyCounter,
    label_order,
    not_classifier_labels,
    source_labels,
)
from pixeljit.metrics.score import metric_names
from pixeljit.values import is_integer


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate: how many images, with which sampler, seed, batch size and precision
    (`matmul_precision`: of float32 products while generating, restored after; None: as set)."""

    num: int
    sampler: SamplerConfig = SamplerConfig()
    seed: int = 0
    batch_size: int = 64
    amp_dtype: torch.dtype | None = None
    noise_scale: float | None = None  # None → the checkpoint's training value
    matmul_precision: str | None = None  # "highest" | "high" | "medium"; None: the process's

    def __post_init__(self) -> None:
        for name in ("num", "batch_size"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"GenerationSpec.{name} must be an integer ≥ 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # a NumPy integer stored as an int
        object.__setattr__(self, "seed", check_seed(self.seed)[0])
        if self.noise_scale is not None and not (
            math.isfinite(self.noise_scale) and self.noise_scale > 0
        ):
            raise ValueError(f"GenerationSpec.noise_scale must be > 0, got {self.noise_scale}")
        if self.matmul_precision not in (None, *MATMUL_PRECISIONS):
            raise ValueError(f"GenerationSpec.matmul_precision must be None or one of "
                             f"{MATMUL_PRECISIONS}, got {self.matmul_precision!r}")  # fmt: skip


def balanced_labels(start: int, stop: int, num_classes: int) -> list[int] | None:
    """Class k mod K for global index k (50 per class for 50K ImageNet images); None if uncond."""
    return [k % num_classes for k in range(start, stop)] if num_classes > 0 else None


def generate(
    model: TrainedModel,
    spec: GenerationSpec,
    rank: int = 0,
    world: int = 1,
    save_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(uint8 images (B, C, H, W) on the CPU, labels (B,) or None) for this rank's shard; one
    batch of none for an empty shard (fewer images than ranks), which still takes part in the
    scores' gathers. `progress`: a bar of this rank's shard, said so under torchrun."""
    start, stop = shard(spec.num, rank, world)
    config = model.net.config
    classes = config.num_classes
    if start == stop:
        size = (0, config.in_channels, config.image_size, config.image_size)
        none = torch.zeros(0, dtype=torch.long) if classes > 0 else None
        yield torch.zeros(size, dtype=torch.uint8), none
        return
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = share_label("generating", spec.num, rank, world)
        bar = tqdm(total=stop - start, unit="img", desc=label)
    scale = model.noise_scale if spec.noise_scale is None else spec.noise_scale
    mm = spec.matmul_precision  # held while sampling only: never while the caller scores
    try:  # the bar ends its line before any error is said
        for first in range(start, stop, spec.batch_size):
            last = min(first + spec.batch_size, stop)
            labels = balanced_labels(first, last, classes)
            with matmul_precision(mm) if mm else contextlib.nullcontext():
                images = sample(
                    model.net, labels, num=last - first,
                    **spec.sampler.kwargs(),  # an unconditional model with cfg ≠ 1: refused there
                    noise_scale=scale, prediction=model.prediction,
                    preconditioner=model.preconditioner, sigma_data=model.sigma_data,
                    seed=spec.seed, first_index=first, amp_dtype=spec.amp_dtype,
                )  # fmt: skip
            u8 = to_uint8(images)
            if save_dir is not None:
                save_pngs(u8, save_dir, start=first)
            if bar is not None:
                bar.update(last - first)
            yield u8, (torch.tensor(labels) if labels is not None else None)
    finally:
        if bar is not None:
            bar.close()


def evaluate(
    model: TrainedModel,
    spec: GenerationSpec,
    extractor: FeatureExtractor,
    ref: DatasetStats | None,
    metrics: tuple[str, ...] = ("fd", "kid", "is", "pr"),
    rank: int = 0,
    world: int = 1,
    save_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Generate `spec.num` images (this rank's share) and score them against `ref` as they come.

    Adds `class_accuracy` when the extractor classifies the model's own label space (the
    Fashion-MNIST classifier on a 10-class model). `save_dir`: the images (and labels.csv)
    are also written there as one set, every rank's part moved in at once (by rank 0) once all
    are written and scored (`evaluation_ranks.rank_image_set`)."""
    classes = model.net.config.num_classes
    with rank_image_set(save_dir) as staging:  # `save_dir`'s set moved in only once whole
        batches = generate(model, spec, rank, world, staging, progress)
        scores = score_labelled(
            batches, classes, extractor, ref, metrics, spec.batch_size, model.class_names
        )  # under torchrun it gathers every rank's, so all their images are written by now
        if staging is not None and rank == 0 and classes > 0:  # all labels: k mod classes
            save_labels_csv(staging, balanced_labels(0, spec.num, classes), model.class_names)
    return scores


def score_labelled(
    batches, classes: int, extractor: FeatureExtractor, ref: DatasetStats | None,
    metrics: tuple[str, ...], batch_size: int, label_names=None,
) -> dict[str, float]:  # fmt: skip
    """Score (uint8 images (B, C, H, W), labels (B,) or None) batches against `ref`; adds
    `class_accuracy` when the extractor classifies the `classes`-way label space, the labels
    matched to its classes by `label_names` where both sides name them (`label_order`)."""
    metrics = metric_names(metrics)  # "is" alone is one metric, not two letters
    if "is" in metrics and extractor.num_classes == 0:
        metrics = tuple(m for m in metrics if m != "is")
    counter = None
    comparable = classes > 0 and extractor.num_classes == classes
    order = label_order(label_names, extractor) if comparable else None
    if isinstance(order, str):
        warnings.warn(order, stacklevel=2)
        comparable = False
    if comparable:
        if order is not None:  # label k of the data is the classifier's class order[k]
            batches = ((u8, None if y is None else order.to(y.device)[y]) for u8, y in batches)
        counter = AccuracyCounter(extractor)
        images, extractor = counter.images(batches), counter
    else:
        images = (u8 for u8, _ in batches)
    config = ScoreConfig(batch_size=batch_size)
    out = score_images(images, extractor, ref, metrics, config).as_dict()
    if counter is not None:
        out["class_accuracy"] = counter.accuracy()
    return out


def score_real_images(
    dataset, num: int, extractor: FeatureExtractor, ref: DatasetStats | None,
    metrics: tuple[str, ...] = ("fd",), batch_size: int = 500,
) -> dict[str, float]:  # fmt: skip
    """The floor a model is measured against: the first `num` images of `dataset` (e.g. the held-out
    test split) scored exactly as generated ones, with their own labels for the class accuracy."""
    stop = min(num, len(dataset))

    def batches():
        for first in range(0, stop, batch_size):
            last = min(first + batch_size, stop)
            yield (torch.from_numpy(dataset.slice(first, last)),
                   torch.from_numpy(dataset.labels[first:last]))  # fmt: skip

    names = getattr(dataset, "class_names", None)
    return score_labelled(
        batches(), dataset.num_classes, extractor, ref, metrics, batch_size, names
    )


def score_image_source(
    images, extractor: FeatureExtractor, ref: DatasetStats | None, metrics: tuple[str, ...],
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, float]:  # fmt: skip
    """Score existing images (a folder or an `.npz`) like generated ones; an `.npz` with
    'labels' (`pixeljit sample --out X.npz`), or a folder with a labels.csv (`--out DIR/`), in
    the classifier's label space also gets the class accuracy, as the same images generated from
    a checkpoint do. The label space is the classifier's when the labels' class names are all
    names of its classes (matched by name), else when the labels' class count
    (`label_classes`) is its class count (taken in its order). Other labels leave the accuracy
    out with a warning."""
    labels, names = source_labels(images)
    classes = extractor.num_classes
    if labels is not None and classes:
        why = not_classifier_labels(images, labels, names, extractor)
        if why:
            warnings.warn(f"class accuracy left out: {why}", stacklevel=2)
            labels = None
    labelled = labels is not None and bool(classes)

    def batches():
        start = 0
        for u8 in iter_batches(images, batch_size):
            y = torch.from_numpy(labels[start : start + len(u8)]) if labelled else None
            yield u8, y
            start += len(u8)

    mine = rank_share(batches(), images)  # under torchrun each rank scores its own block
    if not labelled:
        config = ScoreConfig(batch_size=batch_size)
        return score_images((u8 for u8, _ in mine), extractor, ref, metrics, config).as_dict()
    return score_labelled(mine, classes, extractor, ref, metrics, batch_size, names)


# ---------------------------------------------------------------------- data-set statistics


STATS_DIGEST_CHARS = 16  # of the SHA-256 naming a packed set's cached statistics


def content_digest(dataset) -> str:
    """A digest of what a packed set holds (image shape and its shards' SHA-256, as its manifest
    lists them): the cache key of its statistics, so two sets in folders of the same name (or
    a folder prepared again with other images) never share cached statistics."""
    held = {"shape": list(dataset.image_shape),
            "shards": [s["sha256"] for s in dataset.manifest["shards"]]}  # fmt: skip
    text = json.dumps(held, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:STATS_DIGEST_CHARS]


def dataset_stats_for(
    ref: str,
    extractor: FeatureExtractor,
    image_size: int,
    channels: int,
    split: str | None = None,
    rank0_first=None,
    progress: bool = False,
) -> DatasetStats:
    """`ref` is a statistics `.npz` (ours, ADM's or the authors' `mu`/`sigma`) or a data set
    (packed folder, fashion-mnist, emoji, image folder) whose statistics are computed once at
    the model's size and cached. `progress`: a bar while they are computed (minutes for a large
    set); nothing when they come from the cache. `rank0_first`: see `data.open.open_dataset`."""
    if ref.lower().endswith(".npz"):
        _check_stats_file(ref, extractor, image_size, channels)
        return load_dataset_stats(ref, extractor)
    if Path(ref).is_file():  # a data set is a folder or a built-in name, never one file
        raise ValueError(
            f"reference {ref} is a file but not a statistics .npz: pass the .npz that `pixeljit "
            "eval --make-ref` writes (or ADM's / the authors' mu-sigma .npz), or a data set (a "
            "packed or image folder, fashion-mnist, emoji)"
        )
    dataset = open_dataset(ref, image_size, channels, split, rank0_first)
    wanted = (channels, image_size, image_size)
    if tuple(dataset.image_shape) != wanted:  # a packed folder is read as it was packed
        have = tuple(dataset.image_shape)
        raise ValueError(
            f"{ref} is packed at {have[-1]}×{have[-2]} px with {have[0]} channel(s), not the "
            f"{image_size}×{image_size} px with {channels} channel(s) asked for: pass its source "
            f"(packed to match) or pack it again (`pixeljit prepare SOURCE --size {image_size} "
            f"--channels {channels} --out DIR`)"
        )
    tag = f"{Path(dataset.folder).name}-{content_digest(dataset)}"
    path = cache_root() / "refstats" / f"{tag}-{extractor.stats_name.replace('@', '-')}.npz"

    def images():
        from tqdm.auto import tqdm

        batch = 500
        first, last = rank_block(len(dataset))  # under torchrun, this rank's block
        label = share_label(f"reference statistics of {ref}", len(dataset), *ranks())
        with tqdm(total=last - first, unit="img", desc=label,
                  disable=not (progress and is_main())) as bar:  # fmt: skip
            for start in range(first, last, batch):
                chunk = dataset.slice(start, min(start + batch, last))
                yield torch.from_numpy(chunk)
                bar.update(len(chunk))

    return cached_dataset_stats(path, images, extractor, image_shape=wanted)


def _check_stats_file(ref: str, extractor: FeatureExtractor, size: int, channels: int) -> None:
    """A reference `.npz` that is no statistics file of this extractor, refused with the way
    out: an images `.npz` (arr_0) is turned into statistics by `--make-ref`; statistics of
    another feature size name the extractor they record. Anything else: `load_dataset_stats`."""
    from pixeljit.metrics.dataset_stats import recorded_extractor
    from pixeljit.metrics.image_sources import NPZ_IMAGE_KEY, names_npz_file, npz_headers

    if not names_npz_file(ref):
        return
    try:
        headers = npz_headers(ref)
    except (ValueError, OSError):
        return  # load_dataset_stats says what is wrong with the file
    if not {"mu", "sigma"} <= set(headers):
        if NPZ_IMAGE_KEY in headers:
            raise ValueError(
                f"{ref} holds images ({NPZ_IMAGE_KEY}), not statistics (mu, sigma): make "
                f"statistics of them with `pixeljit eval --make-ref {ref} --size {size} "
                f"--channels {channels} --out STATS.npz` and pass --ref STATS.npz"
            )
        return
    mu = headers["mu"].shape
    recorded = recorded_extractor(ref)
    if recorded and len(mu) == 1 and mu[0] != extractor.dim and recorded != extractor.name:
        raise ValueError(
            f"{ref} holds {mu[0]}-d statistics made with extractor {recorded!r}, but "
            f"{extractor.name!r} gives {extractor.dim}-d features: score with {recorded} "
            f"(--extractor {recorded}, or auto, which takes the one the file records)"
        )


def generation_record(
    model: TrainedModel,
    checkpoint,
    spec: GenerationSpec,
    reference: str | None,
    extractor: str,
    weights_in_rows: bool = False,
) -> dict:
    """What generated scores were measured on, written beside them: the weights (with their
    digest, `checkpoints.provenance`), the sampler, the count, seed and precision, the reference
    and the extractor. `weights_in_rows` (a CFG / EMA sweep, whose rows each name their weights
    and digest): the checkpoint and step only."""
    amp = str(spec.amp_dtype).removeprefix("torch.") if spec.amp_dtype is not None else "none"
    scored = ({"checkpoint": str(checkpoint), "step": model.step} if weights_in_rows
              else model_record(model, checkpoint))  # fmt: skip
    return {
        "model": scored,
        "sampler": spec.sampler.as_json(),
        "num": spec.num,
        "seed": spec.seed,
        "amp": amp,
        "matmul_precision": spec.matmul_precision or torch.get_float32_matmul_precision(),
        "noise_scale": spec.noise_scale if spec.noise_scale is not None else model.noise_scale,
        "reference": reference,
        "extractor": extractor,
    }


def sweep_rows(
    load, emas: list[str], cfgs: list[float], spec: GenerationSpec, extractor, ref, **kw
) -> list[dict]:
    """FD for every (EMA, CFG) pair on `spec.num` samples: the paper's selection procedure. Each
    row names the weights it scored as loaded ('ema:0.9999', not 'ema') with their digest."""
    rows = []
    for weights in emas:
        model = load(weights)
        name, digest = model.weights or weights, weights_digest(model.net)
        for w in cfgs:
            guided = dataclasses.replace(spec, sampler=dataclasses.replace(spec.sampler, cfg=w))
            scores = evaluate(model, guided, extractor, ref, ("fd",), **kw)
            rows.append({"weights": name, "cfg": w, **scores, DIGEST_KEY: digest})
    return rows
