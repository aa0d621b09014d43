"""IDX files (the MNIST / Fashion-MNIST container), gzipped or raw.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the array in C order. Only unsigned bytes (type 0x08) are needed here: both
the images and the labels of (Fashion-)MNIST use it. A gzip stream is recognised by its magic
bytes, not by the file name, so `foo.gz` that is really raw (or the reverse) still reads.

Hostile files cost neither memory nor time beyond what they really hold: the header is read
first; a raw file must be exactly header + declared bytes long (checked with `stat` before
anything is read); a gzip stream is decompressed chunk by chunk up to the declared size plus one
byte and refused if it holds more or less, so a gzip bomb stops after declared + 1 bytes and a
header declaring a huge shape is refused once the real stream runs out. A gzip stream may not
declare more than MAX_GZIP_IDX_BYTES (decompress it by hand to read a larger raw file).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pixeljit.files.atomic import temp_sibling

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
HEADER_BYTES = 4
DIM_BYTES = 4
MAX_IDX_DIMS = 4  # (Fashion-)MNIST uses 1 (labels) and 3 (images)
MAX_GZIP_IDX_BYTES = 1 << 31  # declared payload a gzipped IDX file may claim
_CHUNK_BYTES = 1 << 20
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _read_exactly(fh: BinaryIO, count: int, path: Path, what: str) -> bytes:
    data = fh.read(count)
    if len(data) != count:
        raise ValueError(f"{path}: truncated IDX {what} ({len(data)} of {count} bytes)")
    return data


def _read_header(fh: BinaryIO, path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, header bytes) from the start of an IDX stream; checks magic, type and rank."""
    head = fh.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[0] != 0 or head[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = head[2], head[3]
    if type_code != IDX_UBYTE:
        raise ValueError(f"{path}: IDX type 0x{type_code:02x} unsupported (only uint8, 0x08)")
    if not 1 <= ndim <= MAX_IDX_DIMS:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions (1..{MAX_IDX_DIMS} read)")
    shape = struct.unpack(f">{ndim}I", _read_exactly(fh, DIM_BYTES * ndim, path, "header"))
    return tuple(shape), HEADER_BYTES + DIM_BYTES * ndim


def _size_error(path: Path, shape: tuple[int, ...], expected: int, held: str) -> ValueError:
    return ValueError(
        f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds {held} "
        "bytes; the file is truncated or corrupt: delete it and fetch it again"
    )


def _read_raw(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        shape, header = _read_header(fh, path)
        expected = math.prod(shape)
        held = path.stat().st_size - header
        if held != expected:  # checked before anything of the declared size is allocated
            raise _size_error(path, shape, expected, str(held))
        return np.fromfile(fh, dtype=np.uint8, count=expected).reshape(shape)


def _read_gzip(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            shape, _ = _read_header(fh, path)
            expected = math.prod(shape)
            if expected > MAX_GZIP_IDX_BYTES:
                raise ValueError(
                    f"{path}: gzipped IDX header declares shape {shape} ({expected} bytes), over "
                    f"the {MAX_GZIP_IDX_BYTES}-byte limit for compressed files; gunzip it and "
                    "read the raw file if it is genuine"
                )
            body = bytearray()  # grows with what the stream really holds, never past expected+1
            while len(body) <= expected:
                chunk = fh.read(min(_CHUNK_BYTES, expected + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
    except _GZIP_ERRORS as err:
        raise ValueError(
            f"{path}: corrupt gzip stream ({err}); delete the file and fetch it again"
        ) from err
    if len(body) != expected:
        held = f"more than {expected}" if len(body) > expected else str(len(body))
        raise _size_error(path, shape, expected, held)
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file into a uint8 array of the shape its header states."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(len(GZIP_MAGIC))
    return _read_gzip(path) if magic == GZIP_MAGIC else _read_raw(path)


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
