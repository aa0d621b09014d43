"""What a grid scores against: the packed images of each size, and the real reference.

- `packed_data`: the images of each size the grid trains on: the whole set from the cache, or
  its first `data_limit` images packed once into the results folder.
- `real_reference`: the real images' feature statistics at one size (optionally resized to the
  common scoring size), their HF energy at every size, and each size's *floor* (the FD a perfect
  model of those images scores); `one_size_reference` for a grid at one setting.
- `default_extractor`: FD-EffNetLite0 on the grid's device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixeljit.data.open import open_dataset
from pixeljit.data.packed import PackedDataset
from pixeljit.experiments.evidence import (
    RealReference,
    feature_stats,
    hf_energy,
    real_subset,
    resize_uint8,
    resolve_device,
)
from pixeljit.metrics.extractor import FeatureExtractor

if TYPE_CHECKING:
    from pixeljit.experiments.grid import GridConfig

DATA_FOLDER = "data"  # inside a results folder: images packed for a --data-limit grid
CHANNELS = 3  # the grids train on colour images


def packed_data(
    config: GridConfig, sizes, out: Path, say: Callable[[str], None] | None = None
) -> dict[int, PackedDataset]:
    """The packed images of each size: the whole set from the cache, or the first
    `data_limit` images packed once into the results folder; `say` hears of each size before
    it is opened or packed (packing takes a while)."""
    from pixeljit.data.prepare import prepare
    from pixeljit.data.shards import MANIFEST

    say = say or (lambda line: None)
    found = {}
    for size in sorted(set(sizes)):
        if config.data_limit is None:
            say(f"data: {config.data} at {size} px (packed into the cache the first time)")
            found[size] = open_dataset(config.data, size, CHANNELS, progress=False)
            continue
        folder = out / DATA_FOLDER / f"{Path(config.data).name}-{size}px-{config.data_limit}"
        if not (folder / MANIFEST).is_file():
            say(f"data: packing the first {config.data_limit} images of {config.data} at "
                f"{size} px into {folder}")  # fmt: skip
            prepare(config.data, size, folder, channels=CHANNELS, limit=config.data_limit,
                    progress=False, overwrite=True)  # fmt: skip
        found[size] = PackedDataset(folder)
    return found


def real_reference(
    config: GridConfig,
    data: dict[int, PackedDataset],
    extractor: FeatureExtractor,
    ref_size: int,
    floor_sizes=(),
    score_size: int | None = None,
) -> tuple[RealReference, dict[str, float]]:
    """The real images at `ref_size` (resized to `score_size` when given) as the FD reference,
    their HF energy at every size of `data`, and the *floor* of each of `floor_sizes`: the FD of
    the same real images at that size against the reference (the best a perfect model of those
    images can score at the common resolution), keyed by str(size) as JSON reads it back."""
    seed = config.seeds[0]
    ref = real_subset(data[ref_size], config.real_count, seed)
    hf_by_size = {
        size: hf_energy(real_subset(data[size], config.real_count, seed)) for size in data
    }

    def scored(images: torch.Tensor) -> torch.Tensor:
        return images if score_size is None else resize_uint8(images, score_size)

    real = RealReference.from_stats(feature_stats(extractor, scored(ref)), hf_by_size)
    floor = {}
    for size in floor_sizes:
        images = ref if size == ref_size else real_subset(data[size], real.count, seed)
        floor[str(size)] = real.fd(feature_stats(extractor, scored(images)))
    return real, floor


def default_extractor(device: str) -> FeatureExtractor:
    """FD-EffNetLite0 (ImportError naming the `eval` extra when its packages are missing)."""
    from pixeljit.metrics import EffNetLite0Extractor

    return EffNetLite0Extractor(device=resolve_device(device))


ReferenceFn = Callable[
    [dict[int, PackedDataset], FeatureExtractor], tuple[RealReference, dict[str, float]]
]


def one_size_reference(
    config, data: dict[int, PackedDataset], extractor: FeatureExtractor
) -> tuple[RealReference, dict[str, float]]:
    """The real reference of a one-setting grid: its `config.size`-px images, no floors."""
    return real_reference(config, data, extractor, config.size)
