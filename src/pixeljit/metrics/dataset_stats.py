"""FD statistics of a data set (`DatasetStats`): computed once, cached as `.npz`, read in
ADM / JiT format.

File format (a superset of the ADM evaluator's and the JiT authors' `jit_in{256,512}_stats.npz`):
    mu (d,) float64, sigma (d, d) float64       — required; all these tools read/write them
    count () int64, extractor () str            — optional; written by pixeljit
    image_shape (3,) int64                      — optional; (C, H, W) of the images measured
    features (M, d) float32                     — optional; needed for KID and precision/recall
ADM's "reference batches" (their name for such files) also hold `arr_0` images and spatial
`mu_s`/`sigma_s`: they are ignored.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.distributed as dist

from pixeljit.files.atomic import atomic_write
from pixeljit.files.cache import CACHE_ENV

from .distances import sqrt_psd
from .extractor import FeatureExtractor
from .image_sources import DEFAULT_BATCH, ImageSource, iter_batches, npz_headers
from .stats import DEFAULT_BANK_CAPACITY, FeatureBank, FeatureStats, distributed_active

MAX_STATS_DIM = 16384  # feature dimension bound when no extractor is given (sigma: 2 GiB)
MAX_NAME_BYTES = 4096  # the extractor name stored with the statistics
SYMMETRY_TOLERANCE = 1e-6  # max |sigma − sigmaᵀ| relative to max |sigma|
PSD_TOLERANCE = 1e-5  # most negative eigenvalue of sigma allowed, relative to the largest |one|
# how statistics are made, from Python and from the command line (said in messages)
REMAKE_STATS = "pixeljit.metrics.compute_dataset_stats / `pixeljit eval --make-ref`"


@dataclass
class DatasetStats:
    """Moments (and optionally kept features) of a data set under one extractor."""

    mu: np.ndarray  # (d,) float64
    sigma: np.ndarray  # (d, d) float64
    count: int | None = None
    extractor: str | None = None
    features: np.ndarray | None = None  # (M, d) float32
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of the images measured
    _sqrt_sigma: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def sqrt_sigma(self) -> np.ndarray:
        """√sigma (d, d) float64, computed once (every FD against these statistics reuses it)."""
        if self._sqrt_sigma is None:
            self._sqrt_sigma = sqrt_psd(self.sigma)
        return self._sqrt_sigma

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if d < 1 or self.sigma.shape != (d, d):
            raise ValueError(
                f"mu must be (d,) and sigma (d, d), got {self.mu.shape}, {self.sigma.shape}"
            )
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.ndim != 2 or self.features.shape[1] != d:
                raise ValueError(f"features must be (M, {d}), got {self.features.shape}")

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def check_image_shape(
        self,
        shape: tuple[int, ...],
        source: str = "ref",
        scored: str = "the images scored",
    ) -> None:
        """ValueError when these statistics were measured on images of another size or channel
        count than `shape` (C, H, W): an FD between the two measures the resize, not the model.
        Statistics that record no shape (ADM's, the authors', older pixeljit files) pass."""
        check_recorded_shape(self.image_shape, shape, source, scored)

    def check_extractor(
        self, extractor: FeatureExtractor, source: str = "data-set statistics"
    ) -> None:
        """ValueError when these statistics were made by a different extractor."""
        if self.dim != extractor.dim:
            raise ValueError(
                f"{source} has {self.dim}-d statistics but extractor {extractor.name!r} gives "
                f"{extractor.dim}-d features: {_use_extractor(self.extractor)}"
            )
        if self.extractor is not None and self.extractor != extractor.stats_name:
            raise ValueError(
                f"{source} was computed with extractor {self.extractor!r}, not "
                f"{extractor.stats_name!r}: compute it again with this extractor "
                f"({REMAKE_STATS})"
            )


def check_recorded_shape(recorded, shape, source: str, scored: str, also: str = "") -> None:
    """ValueError when statistics `source` measured images of shape `recorded` (C, H, W; None:
    not recorded) and the `scored` images are `shape`: the message names what differs (size,
    channel count or both) and how to get matching statistics; `also` adds another way out."""
    if recorded is None or tuple(recorded) == tuple(shape):
        return
    (rc, rh, rw), (c, h, w) = recorded, shape
    unequal = {"size": (rh, rw) != (h, w), "channel count": rc != c}
    differs = " and ".join(what for what, differ in unequal.items() if differ)
    raise ValueError(
        f"{source} holds statistics of {shape_text(recorded)} images, but {scored} are "
        f"{shape_text(shape)}: an FD between them measures the difference in {differs}, not "
        f"the images. Compute statistics at {shape_text(shape)} "
        f"(pixeljit.metrics.compute_dataset_stats of such images / `pixeljit eval --make-ref "
        f"DATASET --size {w} --channels {c} --out STATS.npz`; `pixeljit eval` also takes the "
        f"data set itself as --ref and resizes it to match){also}"
    )


def shape_text(shape) -> str:
    c, h, w = (int(v) for v in shape)
    return f"{h}×{w}-px {c}-channel"


def save_dataset_stats(path: str | os.PathLike, ref: DatasetStats, overwrite: bool = False) -> Path:
    """Write `ref` as `.npz` atomically (temp file + rename); an existing file is replaced only
    with `overwrite`."""
    if not isinstance(overwrite, bool):  # overwrite="no" is truthy: it would replace the file
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if not isinstance(ref, DatasetStats):
        raise TypeError(f"ref must be DatasetStats (compute_dataset_stats gives them), got "
                        f"{type(ref).__name__}")  # fmt: skip
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: name the statistics file in it "
                                "(NAME.npz)")  # fmt: skip
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": ref.mu, "sigma": ref.sigma}
    if ref.count is not None:
        arrays["count"] = np.asarray(ref.count, dtype=np.int64)
    if ref.extractor is not None:
        arrays["extractor"] = np.asarray(ref.extractor)
    if ref.features is not None:
        arrays["features"] = ref.features
    if ref.image_shape is not None:
        arrays["image_shape"] = np.asarray(ref.image_shape, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def _use_extractor(recorded: str | None) -> str:
    """The fix for statistics of another feature size: the extractor they record, if any."""
    if recorded:
        name = recorded.split("@", 1)[0]
        return f"score with the extractor they were computed with, {name} (--extractor {name})"
    return "use the extractor the statistics were computed with"


def _check_stats_headers(path: Path, headers: dict, extractor: FeatureExtractor | None) -> None:
    """Keys, dtypes and shapes of a statistics file from its headers, before loading it."""
    if "mu" not in headers or "sigma" not in headers:
        images = (" It holds images (arr_0): `pixeljit eval --make-ref FILE --size S --channels "
                  "C --out STATS.npz` (Python: compute_dataset_stats) makes statistics of "
                  "them") if "arr_0" in headers else ""  # fmt: skip
        raise ValueError(
            f"{path} lacks 'mu'/'sigma': not a statistics file (keys: {sorted(headers)}).{images}"
        )
    for key in ("mu", "sigma", "features"):
        if key in headers and headers[key].dtype.kind != "f":
            raise ValueError(f"{path}: {key} must be floating point, got {headers[key].dtype}")
    mu, sigma = headers["mu"].shape, headers["sigma"].shape
    if len(mu) != 1 or mu[0] < 1:
        raise ValueError(f"{path}: mu must have shape (D,) with D ≥ 1, got {mu}")
    dim = mu[0]
    if extractor is not None and dim != extractor.dim:
        raise ValueError(
            f"{path} has {dim}-d statistics but extractor {extractor.name!r} gives "
            f"{extractor.dim}-d features: {_use_extractor(recorded_extractor(path))}"
        )
    if dim > MAX_STATS_DIM:
        raise ValueError(f"{path}: {dim}-d statistics exceed the {MAX_STATS_DIM}-d limit")
    if sigma != (dim, dim):
        raise ValueError(f"{path}: sigma must have shape ({dim}, {dim}) like mu, got {sigma}")
    if "features" in headers:
        feats = headers["features"].shape
        if len(feats) != 2 or feats[1] != dim:
            raise ValueError(f"{path}: features must have shape (M, {dim}), got {feats}")
    count = headers.get("count")
    if count is not None and (count.shape != () or count.dtype.kind not in "iu"):
        raise ValueError(f"{path}: count must be an integer scalar")
    shape = headers.get("image_shape")
    if shape is not None and (shape.shape != (3,) or shape.dtype.kind not in "iu"):
        raise ValueError(f"{path}: image_shape must be 3 integers (C, H, W)")
    if "extractor" in headers:
        head = headers["extractor"]
        if head.shape != () or head.dtype.kind != "U" or head.nbytes > MAX_NAME_BYTES:
            raise ValueError(f"{path}: extractor must be a short text scalar, got {head.dtype}")


def _check_values(path: Path, ref: DatasetStats) -> None:
    """Finite moments, a symmetric covariance; finite kept features."""
    for key in ("mu", "sigma", "features"):
        value = getattr(ref, key)
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{path}: {key} holds NaN or Inf: the statistics are corrupt")
    scale = max(float(np.abs(ref.sigma).max()), np.finfo(np.float64).tiny)
    asymmetry = float(np.abs(ref.sigma - ref.sigma.T).max()) / scale
    if asymmetry > SYMMETRY_TOLERANCE:
        raise ValueError(
            f"{path}: sigma is not symmetric (relative asymmetry {asymmetry:.2g}): not a covariance"
        )
    evals = np.linalg.eigvalsh((ref.sigma + ref.sigma.T) / 2)
    floor = -PSD_TOLERANCE * max(float(np.abs(evals).max()), np.finfo(np.float64).tiny)
    if evals[0] < floor:
        raise ValueError(
            f"{path}: sigma has a negative eigenvalue ({evals[0]:.3g}) beyond round-off: not a "
            f"covariance; recompute the statistics ({REMAKE_STATS})"
        )
    if ref.count is not None and ref.count < 0:
        raise ValueError(f"{path}: count must be ≥ 0, got {ref.count}")


def load_dataset_stats(
    path: str | os.PathLike, extractor: FeatureExtractor | None = None
) -> DatasetStats:
    """Read statistics written by pixeljit, the ADM evaluator or the JiT authors (`mu`, `sigma`).

    The arrays' headers are checked (keys, dtypes, shapes, the extractor's dimension, declared
    sizes against the file: zip bombs) before anything is loaded; then the values (finite,
    symmetric covariance). Pickled objects are never read."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data-set statistics {path} is a folder, not a file: pass the "
                                "statistics .npz (mu, sigma) itself, as save_dataset_stats / "
                                "`pixeljit eval --make-ref DATA --size S --channels C --out "
                                "STATS.npz` write it")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"data-set statistics {path} not found")
    _check_stats_headers(path, npz_headers(path), extractor)
    try:
        with np.load(path, allow_pickle=False) as data:
            ref = DatasetStats(
                mu=data["mu"],
                sigma=data["sigma"],
                count=int(data["count"]) if "count" in data else None,
                extractor=str(data["extractor"]) if "extractor" in data else None,
                features=data["features"] if "features" in data else None,
                image_shape=_image_shape(path, data),
            )
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: could not read the statistics ({err})") from None
    _check_values(path, ref)
    if extractor is not None:
        ref.check_extractor(extractor, str(path))
    return ref


def _recorded(path: str | os.PathLike, key: str):
    """The array `key` of a statistics `.npz` (checked from its headers as loading checks them),
    None when the file holds none, or is no readable statistics file (loading it says why)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        headers = npz_headers(path)
        _check_stats_headers(path, headers, None)
        if key not in headers:
            return None
        with np.load(path, allow_pickle=False) as data:
            return data[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None


def recorded_extractor(path: str | os.PathLike) -> str | None:
    """The extractor a statistics file says it was computed with (its `--extractor` name), None
    when it records none (the ADM evaluator's, the authors') or is not such a file."""
    value = _recorded(path, "extractor")
    return None if value is None else str(value).split("@", 1)[0]


def recorded_image_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """The (C, H, W) a statistics file records of the images it measured, None when it records
    none or is not such a file."""
    value = _recorded(path, "image_shape")
    return None if value is None else tuple(int(v) for v in value)  # type: ignore[return-value]


def _image_shape(path: Path, data) -> tuple[int, int, int] | None:
    if "image_shape" not in data:
        return None
    shape = tuple(int(v) for v in data["image_shape"])
    if min(shape) < 1:
        raise ValueError(f"{path}: image_shape must be positive, got {shape}")
    return shape  # type: ignore[return-value]


def compute_dataset_stats(
    images: ImageSource,
    extractor: FeatureExtractor,
    batch_size: int = DEFAULT_BATCH,
    keep_features: bool = True,
    bank_capacity: int | None = DEFAULT_BANK_CAPACITY,
    seed: int = 0,
) -> DatasetStats:
    """Moments (and by default the features, for KID / PR) of a set of uint8 images.

    Under torch.distributed each rank passes its own shard; the result covers all ranks.
    `bank_capacity` bounds the kept features per rank (uniform reservoir, 50k by default as in
    `ScoreConfig`; None keeps all, e.g. 10 GB for ImageNet's 1.28M Inception features).
    """
    stats = FeatureStats(extractor.dim, device=extractor.device)
    bank = FeatureBank(bank_capacity, seed=seed) if keep_features else None
    shapes = set()
    for batch in iter_batches(images, batch_size):
        shapes.add(tuple(batch.shape[1:]))
        feats = extractor.features(batch)  # (n, dim)
        stats.update(feats)
        if bank is not None:
            bank.add(feats)
    stats.all_reduce()
    if stats.count < 2:
        raise ValueError(f"data-set statistics need at least 2 images, got {stats.count}")
    mu, sigma = stats.mu_sigma()
    features = bank.all_gather(extractor.device).cpu().numpy() if bank is not None else None
    shape = shapes.pop() if len(shapes) == 1 else None  # images of mixed sizes: not one shape
    return DatasetStats(mu, sigma, stats.count, extractor.stats_name, features, shape)


def _of_shape(
    images: Callable[[], ImageSource], shape: tuple[int, ...], batch_size: int
) -> Callable[[], ImageSource]:
    """`images`, its batches refused unless they are (C, H, W) `shape` (`cached_dataset_stats`'
    `image_shape`): statistics of other images would be cached under that shape's entry."""
    shape = tuple(int(v) for v in shape)

    def checked():
        for batch in iter_batches(images(), batch_size):
            got = tuple(getattr(batch, "shape", ())[1:])
            if len(got) == 3 and got != shape:
                raise ValueError(
                    f"cached_dataset_stats: image_shape is {shape_text(shape)}, but images() "
                    f"gave {shape_text(got)} images: give images of that shape, or pass their "
                    "own shape as image_shape"
                )
            yield batch

    return checked


def cached_dataset_stats(
    path: str | os.PathLike,
    images: Callable[[], ImageSource],
    extractor: FeatureExtractor,
    image_shape: tuple[int, int, int] | None = None,
    **compute_kwargs,
) -> DatasetStats:
    """Load the cache file `path` if it holds statistics of this extractor (and, given, of
    `image_shape` (C, H, W), recorded: an entry written before the shape was recorded is
    stale), else compute them from `images` and write them there.

    `images` is called only when computing (so an expensive dataset is opened only if needed).
    Under torch.distributed only rank 0 writes. A cache that cannot take the file (a full disk)
    loses the statistics for next time only: that is warned, naming the file and the fix, and
    they are returned from memory (computing them took minutes).
    """
    path = Path(path)
    if image_shape is not None:  # never cached (nor returned) as what they are not
        images = _of_shape(images, image_shape, compute_kwargs.get("batch_size", DEFAULT_BATCH))
    if path.is_file():
        ref = load_dataset_stats(path, extractor)
        if image_shape is None or ref.image_shape == tuple(image_shape):
            return ref
    ref = compute_dataset_stats(images(), extractor, **compute_kwargs)
    if not distributed_active() or dist.get_rank() == 0:
        try:
            save_dataset_stats(path, ref, overwrite=True)  # a stale entry is replaced
        except OSError as err:
            warnings.warn(
                f"saving the reference statistics to the {CACHE_ENV} cache failed ("
                f"{err.strerror or err}: {path}); scoring goes on with them in memory, but they "
                "will be computed again next time: free space there (or make it writable), set "
                f"{CACHE_ENV} to a writable folder with room, or save them once with `pixeljit "
                "eval --make-ref DATA --size S --channels C --out STATS.npz` and pass --ref "
                "STATS.npz",
                stacklevel=2,
            )
    return ref
