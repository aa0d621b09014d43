"""Sampling noise from per-sample seeds: sample k of a run with base seed s starts from its own
generator, so its image does not depend on the batch split or the number of ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixeljit.rng import derive_seed

Tensor = torch.Tensor


def sample_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """Per-sample seeds for samples start … start + count − 1 of a run with base `seed`
    (hashed with numpy's SeedSequence, so nearby seeds and indices don't collide)."""
    return [derive_seed(seed, index) for index in range(start, start + count)]


def noise_from_seeds(
    seeds: Sequence[int],
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(len(seeds), *shape) standard normal noise drawn on `device`, row i from its own
    generator seeded with seeds[i]: the same seed gives the same row whatever the batch split.

    The draw is float32 on the device's own generator (mt19937 on the CPU, Philox on CUDA), so
    a seed gives the same noise on every CPU and on every CUDA device, but CPU and CUDA noise
    differ (draw on the CPU and pass `noise=` to `sample` for images that match across them).
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "meta":  # torch: "META device type not an accelerator."
        raise ValueError("noise cannot be drawn on 'meta', which holds no values: pass "
                         "device='cpu' or the network's device")  # fmt: skip
    out = torch.empty((len(seeds), *shape), device=device, dtype=torch.float32)
    gen = torch.Generator(device=device)
    for row, s in zip(out, seeds, strict=True):  # one small launch per row, no host sync
        gen.manual_seed(s)
        torch.randn(shape, generator=gen, out=row)
    return out.to(dtype)
