"""Images per second of the packed-set loader (DeviceLoader) on this machine.

Packs Fashion-MNIST train (28 px, grey) when the Debian package is installed, and synthetic
RGB sets at 64 and 128 px, into a temporary folder; then times full passes of the loader
(gather from the memory map, move uint8, flip and convert on the device). The first batches
(warm-up, page cache) are not timed.

    python benchmarks/loader_speed.py [--device cpu] [--batch 256] [--steps 200] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixeljit.data import DeviceLoader, PackedDataset, pack_arrays, prepare

WARMUP_STEPS = 5
SYNTHETIC = {64: 20_000, 128: 5_000}  # size -> image count (keeps the benchmark < 1 GB)


def synthetic_set(out: Path, size: int, count: int, seed: int = 0) -> Path:
    """A packed set of random RGB images."""
    images = np.random.default_rng(seed).integers(0, 256, (count, 3, size, size), dtype=np.uint8)
    return pack_arrays(images, out, images_per_shard=max(1, count // 3)).out_dir


def time_loader(folder: Path, device: str, batch: int, steps: int, prefetch: int) -> float:
    data = PackedDataset(folder)
    with DeviceLoader(data, batch, device=device, seed=0, prefetch=prefetch) as loader:
        for _ in range(WARMUP_STEPS):
            next(loader)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            x, _ = next(loader)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        try:
            prepare("fashion-mnist", 28, Path(tmp) / "fm28")
            sets["fashion-mnist 1x28x28"] = Path(tmp) / "fm28"
        except FileNotFoundError as err:
            print(f"skipping Fashion-MNIST: {err}")
        for size, count in SYNTHETIC.items():
            sets[f"synthetic 3x{size}x{size}"] = synthetic_set(Path(tmp) / f"s{size}", size, count)
        for name, folder in sets.items():
            for prefetch in (0, 2):
                rate = time_loader(folder, args.device, args.batch, args.steps, prefetch)
                print(f"{name:24s} batch {args.batch} prefetch {prefetch}: {rate:12,.0f} images/s")


if __name__ == "__main__":
    main()
