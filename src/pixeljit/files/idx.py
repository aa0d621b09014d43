"""IDX files (the MNIST / Fashion-MNIST container), gzipped or raw.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the array in C order. Only unsigned bytes (type 0x08) are needed here: both
the images and the labels of (Fashion-)MNIST use it. A gzip stream is recognised by its magic
bytes, not by the file name, so `foo.gz` that is really raw (or the reverse) still reads.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from pixeljit.files.atomic import temp_sibling

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
HEADER_BYTES = 4
DIM_BYTES = 4


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(len(GZIP_MAGIC))
    if head == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as err:
            raise ValueError(
                f"{path}: corrupt gzip stream ({err}); delete the file and fetch it again"
            ) from err
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file into a uint8 array of the shape its header states."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < HEADER_BYTES or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code != IDX_UBYTE:
        raise ValueError(f"{path}: IDX type 0x{type_code:02x} unsupported (only uint8, 0x08)")
    body = HEADER_BYTES + DIM_BYTES * ndim
    if len(data) < body:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[HEADER_BYTES:body])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - body != expected:
        raise ValueError(
            f"{path}: IDX header says shape {tuple(shape)} ({expected} bytes) but the file "
            f"holds {len(data) - body} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=body).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (gzipped if `compress`), atomically."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx: only uint8 arrays are supported, got {array.dtype}")
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
