"""How `eval`'s work is split over torchrun's ranks: each rank takes a contiguous block of the
images (`shard`), in rank order the images' own order, so gathering the ranks' features gives
what one process would have; a rank whose block is empty (fewer images than ranks) still takes
part in every gather, with nothing of its own. The ranks' PNGs of `--save-images` go into one
set, moved into place whole by rank 0 once every rank has written its share (`rank_image_set`).
A progress bar (rank 0's) says it counts rank 0's share (`share_label`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from pixeljit.files.image_set import shared_image_set, staged_image_set
from pixeljit.metrics.image_sources import count_path_images
from pixeljit.metrics.stats import distributed_active
from pixeljit.values import is_integer


def shard(num: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block [start, stop) of global indices that `rank` of `world` makes. The
    blocks differ in size by one at most, so with at least as many images as ranks every rank
    has some (ceil-sized blocks left the last ranks none: 4 images on 3 ranks were 2 + 2 + 0)."""
    if not is_integer(world) or world < 1:
        raise ValueError(f"the world size must be a whole number ≥ 1, got {world!r}")
    if not is_integer(rank) or not 0 <= rank < world:
        raise ValueError(f"rank must be one of 0 … {world - 1} (world size {world}), got {rank!r}")
    per, extra = divmod(num, world)
    start = rank * per + min(rank, extra)
    return start, start + per + (rank < extra)


def ranks() -> tuple[int, int]:
    """(rank, world size) under torch.distributed; (0, 1) alone."""
    if not distributed_active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def rank_block(num: int) -> tuple[int, int]:
    """This process's `shard` of `num` images under torch.distributed ([0, num) alone): the
    ranks' blocks, gathered in rank order, are the images in their own order, each once."""
    return shard(num, *ranks())


def is_main() -> bool:
    """Rank 0 under torch.distributed, or the one process: the one that shows progress."""
    return ranks()[0] == 0


def share_label(what: str, num: int, rank: int = 0, world: int = 1) -> str:
    """A progress bar's label: `what` alone, or under torchrun, where the bar (rank 0's) counts
    rank 0's block of the `num` images, 'WHAT (rank 0's B of NUM)': exact, where a total of
    NUM would be reached only if every rank kept pace with rank 0."""
    if world <= 1:
        return what
    start, stop = shard(num, rank, world)
    return f"{what} (rank {rank}'s {stop - start:,} of {num:,})"


def rank_share(batches, images):
    """The rows of (uint8, labels) `batches` in this rank's block of the source's images
    (`rank_block`; all of them without torchrun, where every rank had scored them all, so each
    counted world-size times). A rank whose block is empty yields one batch of no images (of
    the source's shape), so it takes part in the gathers of every metric, IS's logits too."""
    if not distributed_active():
        yield from batches
        return
    total = count_path_images(images) if isinstance(images, (str, os.PathLike)) else len(images)
    start, stop = rank_block(total)
    if start == stop:  # the first batch, none of its rows: only its shape
        for u8, y in batches:
            yield u8[:0], None if y is None else y[:0]
            return
        return
    seen = 0
    for u8, y in batches:
        lo, hi = max(start - seen, 0), min(stop - seen, len(u8))
        seen += len(u8)
        if lo < hi:
            yield u8[lo:hi], None if y is None else y[lo:hi]
        if seen >= stop:
            return


class _Ranks:
    """torch.distributed's ranks as a `files.image_set.SetTeam` (rank 0 leads)."""

    def __init__(self) -> None:
        self.leader = torch.distributed.get_rank() == 0

    def share(self, value):
        from pixeljit.training.distributed import share_from_rank0

        return share_from_rank0(value)

    def wait_all(self) -> None:
        from pixeljit.training.distributed import wait_for_every_rank

        wait_for_every_rank()


@contextlib.contextmanager
def rank_image_set(folder: str | os.PathLike | None) -> Iterator[Path | None]:
    """The staging folder every rank writes its share of `folder`'s set into, the whole set
    moved in once, by rank 0, when all have (`files.image_set.shared_image_set`); alone,
    `staged_image_set`. None (nothing to write) for None."""
    if folder is None or not distributed_active():
        with staged_image_set(folder) as staging:
            yield staging
        return
    with shared_image_set(folder, _Ranks()) as staging:
        yield staging
