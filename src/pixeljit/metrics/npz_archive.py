"""The arrays an `.npz` declares, read from their `.npy` headers before anything is loaded, and
bounded: no pickled objects, no zip bomb, every member exactly its header and declared bytes."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_INFLATION = 100  # a large member may inflate at most this much (zlib alone allows ~1032×)
# Below this many inflated bytes a member (and the members together) may inflate by any ratio:
# `np.savez_compressed` squeezes a constant or sorted labels array, or simple images, well past
# MAX_INFLATION, and 64 MiB costs no more memory or time than a batch does. Above it the ratio
# test stops a small file that declares gigabytes (a zip bomb) before anything is inflated.
MAX_FREE_INFLATED_BYTES = 64 * 2**20


@dataclass(frozen=True)
class NpyHeader:
    """What one array of an `.npz` declares, read from its `.npy` header without loading it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    nbytes: int  # the data bytes the header declares


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, fortran, dtype


def _inflates_too_much(inflated: int, compressed: int) -> bool:
    """Whether `compressed` bytes declaring `inflated` ones look like a zip bomb: over
    MAX_FREE_INFLATED_BYTES and more than MAX_INFLATION times the compressed size."""
    return inflated > MAX_FREE_INFLATED_BYTES and inflated > MAX_INFLATION * compressed


def npz_headers(path: str | os.PathLike) -> dict[str, NpyHeader]:
    """{array name: its header} of an `.npz`, bounded before anything is loaded: no object
    arrays, no member (nor all of them together) inflating past MAX_FREE_INFLATED_BYTES by more
    than MAX_INFLATION × its compressed size (zip bombs), each member exactly its array's
    header and declared bytes. ValueError naming the file otherwise."""
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = [info for info in zf.infolist() if info.filename.endswith(".npy")]
            for info in members:
                out.update(_member_header(path, zf, info))
            inflated = sum(info.file_size for info in members)
            if _inflates_too_much(inflated, sum(info.compress_size for info in members)):
                raise ValueError(f"{path}: its arrays inflate {path.stat().st_size} bytes to "
                                 f"{inflated}: refusing a zip bomb")  # fmt: skip
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err})") from None
    return out


def _member_header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    """{name: header} of one `.npy` member, checked (see `npz_headers`)."""
    name = info.filename.removesuffix(".npy")
    if _inflates_too_much(info.file_size, info.compress_size):
        raise ValueError(f"{path}: array {name!r} inflates {info.compress_size} bytes to "
                         f"{info.file_size}: refusing a zip bomb")  # fmt: skip
    with zf.open(info) as f:
        shape, fortran, dtype = read_npy_header(f)
        data_start = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: array {name!r} holds Python objects; only numeric arrays "
                         "are read (pickles are refused)")  # fmt: skip
    nbytes = math.prod(shape) * dtype.itemsize
    held = info.file_size - data_start
    if nbytes != held:  # np.save writes the header and the data, nothing after them
        raise ValueError(f"{path}: array {name!r} declares shape {shape} ({nbytes} bytes) but "
                         f"holds {held}: {'truncated or' if nbytes > held else 'crafted or'} "
                         "corrupt")  # fmt: skip
    return {name: NpyHeader(tuple(shape), dtype, bool(fortran), nbytes)}
