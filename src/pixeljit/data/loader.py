"""The training loader: deterministic, shardable, exactly resumable, converting on the device.

Order. Epoch e visits the samples in `perm_e = randperm(N)` drawn from a torch.Generator seeded
by (seed, e). Step k of the epoch takes the *global* batch perm_e[p : p + G] with p = k*G and
G = global_batch; rank r of W takes the contiguous slice [r*G/W, (r+1)*G/W) of it, so the
union over ranks is exactly the single-process batch. The last incomplete optimiser step of an
epoch is dropped: with gradient accumulation the loader's batch is one micro-step's (G = micro
× W) and `epoch_batch` the step's (A·G), and an epoch ends where a whole step no longer fits, so
every layout of the same step (1 process accumulating A micro-batches, or A·W processes) sees
the same samples; every sample is seen once per epoch except the N mod epoch_batch left over,
which change from epoch to epoch. Iteration never ends, it rolls into the next epoch.

Flips. Whether the sample at position p of epoch e is mirrored is drawn once per epoch from a
second generator seeded by (seed, e), indexed by p: the same samples flip whatever the world
size (`flip=False` turns mirroring off). The uint8 batch is moved to the device first; the
flip and the uint8 -> [-1, 1] float conversion run there, with no host-device sync.

Resume. `state_dict()` is {epoch, position} (+ what must match: seed, num_samples, flip);
`load_state_dict` continues bit-identically with the batch that would have come next, on any
world size with the same global batch.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from pixeljit.rng import derive_seed as _derive

PERM_STREAM = 0
FLIP_STREAM = 1
FLIP_PROBABILITY = 0.5
UINT8_HALF_RANGE = 127.5  # u8 / 127.5 - 1 maps 0 -> -1 and 255 -> +1
_EPOCH_CACHE = 2
# batches gathered ahead by a background thread when the device is an accelerator. On a CPU device
# none: the thread shares the cores with the training step and slowed it (the demo's model, 2
# cores: 200 steps in 51–59 s inline against 73–86 s with 2 ahead, docs/benchmarks.md).
ACCELERATOR_PREFETCH = 2


def derive_seed(seed: int, epoch: int, stream: int) -> int:
    """A well-mixed 63-bit generator seed from (seed, epoch, stream), stable across platforms."""
    return _derive(seed, epoch, stream)


def epoch_order(num_samples: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(permutation (N,) int64, flip bits (N,) bool) of one epoch, indexed by position."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, PERM_STREAM))
    perm = torch.randperm(num_samples, generator=gen)
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, FLIP_STREAM))
    flips = torch.rand(num_samples, generator=gen) < FLIP_PROBABILITY
    return perm, flips


class DeviceLoader:
    """Infinite (x, y) batches from a PackedDataset / ArrayDataset (see the module doc).

    x: (global_batch / world_size, C, H, W) float in [-1, 1] on `device`; y: int64 on `device`.
    `prefetch` batches are gathered ahead in a background thread (0: gather inline; None:
    ACCELERATOR_PREFETCH on an accelerator, inline on a CPU device).
    """

    def __init__(
        self,
        dataset,
        global_batch: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        prefetch: int | None = None,
        dtype: torch.dtype = torch.float32,
        epoch_batch: int | None = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(
                f"global_batch {global_batch} must be a positive multiple of "
                f"world_size {world_size}"
            )
        epoch_batch = global_batch if epoch_batch is None else epoch_batch
        if epoch_batch < 1 or epoch_batch % global_batch:
            raise ValueError(
                f"epoch_batch {epoch_batch} (an optimiser step's samples) must be a positive "
                f"multiple of global_batch {global_batch} (a micro-step's)"
            )
        if len(dataset) < epoch_batch:
            raise ValueError(
                f"dataset has {len(dataset)} samples, fewer than one global batch of {epoch_batch}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset, self.global_batch = dataset, global_batch
        self.device, self.dtype = torch.device(device), dtype
        self.seed, self.rank, self.world_size, self.flip = seed, rank, world_size, flip
        self.batch_size = global_batch // world_size  # per rank
        self.num_samples = len(dataset)
        self.epoch_batch = epoch_batch  # an epoch ends where another of these does not fit
        self.steps_per_epoch = self.num_samples // epoch_batch * (epoch_batch // global_batch)
        if prefetch is None:
            prefetch = 0 if self.device.type == "cpu" else ACCELERATOR_PREFETCH
        self.prefetch = max(0, prefetch)
        self._pin = self.device.type == "cuda"
        self._epoch, self._position = 0, 0
        self._orders: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._orders_lock = threading.Lock()  # the prefetch thread and the caller both plan
        self._queue: deque[tuple[tuple[int, int], Future]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    # --- order -----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._epoch

    @property
    def position(self) -> int:
        """Samples of the current epoch already consumed (globally): a multiple of the batch."""
        return self._position

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self._orders_lock:
            if epoch not in self._orders:
                while len(self._orders) >= _EPOCH_CACHE:
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = epoch_order(self.num_samples, self.seed, epoch)
            return self._orders[epoch]

    def _next_key(self, epoch: int, position: int) -> tuple[int, int]:
        return self._settled(epoch, position + self.global_batch)

    def _settled(self, epoch: int, position: int) -> tuple[int, int]:
        """(epoch, position) of the batch at `position`: the next epoch's start where no whole
        optimiser step (`epoch_batch`) starts there, or no batch fits."""
        step_start = position % self.epoch_batch == 0
        if (step_start and position + self.epoch_batch > self.num_samples) or (
            position + self.global_batch > self.num_samples
        ):
            return epoch + 1, 0
        return epoch, position

    def plan(self, epoch: int, position: int) -> tuple[np.ndarray, torch.Tensor]:
        """This rank's (dataset indices (B,), flip bits (B,)) for the global batch at
        `position` of `epoch`."""
        perm, flips = self._order(epoch)
        start = position + self.rank * self.batch_size
        stop = start + self.batch_size
        mirror = flips[start:stop] if self.flip else torch.zeros(self.batch_size, dtype=torch.bool)
        return perm[start:stop].numpy(), mirror

    # --- host side ---------------------------------------------------------------------------
    def _host_batch(self, key: tuple[int, int]):
        """(images (B, C, H, W) uint8, labels (B,) int64, rows to mirror (F,) int64), on host.

        The rows to mirror are found here, on the host, so the device never has to sync."""
        indices, mirror = self.plan(*key)
        images = torch.from_numpy(self.dataset.gather(indices))  # fresh copy, ours to modify
        labels = torch.from_numpy(np.ascontiguousarray(self.dataset.labels[indices]))
        rows = mirror.nonzero().squeeze(1)  # (F,)
        if self._pin:
            images, labels = images.pin_memory(), labels.pin_memory()  # rows: tiny, left pageable
        return images, labels, rows

    def _take(self, key: tuple[int, int]):
        if self.prefetch == 0:
            return self._host_batch(key)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixeljit-loader")
        if self._queue and self._queue[0][0] != key:
            self._drop_queue()
        ahead = self._queue[-1][0] if self._queue else None
        while len(self._queue) < self.prefetch + 1:
            ahead = key if ahead is None else self._next_key(*ahead)
            self._queue.append((ahead, self._pool.submit(self._host_batch, ahead)))
        return self._queue.popleft()[1].result()

    def _drop_queue(self) -> None:
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()

    # --- device side -------------------------------------------------------------------------
    def to_device(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor):
        """uint8 (B, C, H, W) -> device; mirror `rows` there (in place), then float in [-1, 1].

        `images` may be modified (on a CPU device `.to` returns the same tensor)."""
        x = images.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
        y = labels.to(self.device, non_blocking=True)  # (B,) int64
        if rows.numel():  # a host tensor: no device sync
            r = rows.to(self.device, non_blocking=True)  # (F,)
            x[r] = x[r].flip(-1)
        x = x.to(self.dtype).div_(UINT8_HALF_RANGE).sub_(1.0)
        return x, y

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self._epoch, self._position)
        images, labels, rows = self._take(key)
        self._epoch, self._position = self._next_key(*key)
        return self.to_device(images, labels, rows)

    # --- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "flip": self.flip,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict, other_size_ok: bool = False) -> None:
        """Continue from `state`. Seed, dataset size and flip must match (else the order would
        differ); a different global batch is accepted and continues from the same position.
        With `other_size_ok` (an inexact resume on changed data) a data set of another size
        continues the same epoch at the same fraction of it."""
        keys = ("seed", "flip") if other_size_ok else ("seed", "num_samples", "flip")
        for key in keys:
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has "
                    f"{getattr(self, key)!r}: resuming would not reproduce the data order"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        saved_size = int(state["num_samples"])
        if epoch < 0 or not 0 <= position <= saved_size:
            raise ValueError(f"invalid loader state: epoch={epoch}, position={position}")
        if saved_size != self.num_samples:  # the same fraction of the epoch, in this data's size
            position = position * self.num_samples // saved_size
        epoch, position = self._settled(epoch, position)
        self._drop_queue()
        self._epoch, self._position = epoch, position

    def close(self) -> None:
        """Stop the prefetch thread (also done at interpreter exit)."""
        self._drop_queue()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> DeviceLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
