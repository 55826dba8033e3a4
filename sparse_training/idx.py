"""The IDX file format of MNIST and Fashion-MNIST: the four file names, a reader and a uint8 writer.

:mod:`sparse_training.data` reads datasets with it and :mod:`sparse_training.fetch` writes and verifies
them, so neither of those needs the other for the format.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import UserError

# The four files of an MNIST-format dataset, in the order train images, train
# labels, test images, test labels; each may also be present gzipped (".gz").
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain, or gzipped if the name ends in ``.gz``) into a native-endian array.

    A missing file, a bad magic number, or a size that does not match the header
    raises :class:`UserError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file {path} does not exist.") from None
    return parse_idx(raw, path)


def parse_idx(raw: bytes, path: str | os.PathLike) -> np.ndarray:
    """Decode the bytes of an IDX file (gzipped if ``path`` ends in ``.gz`` or the bytes say so).

    ``path`` names the file in error messages; problems raise :class:`UserError` as in :func:`read_idx`.
    """
    path = Path(path)
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise UserError(
                f"IDX file {path} is not a valid gzip file (corrupt or truncated); "
                "replace it with the original."
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        magic = raw[:4].hex() or "empty file"
        raise UserError(
            f"{path} is not an IDX file (bad magic number {magic}); replace it with the original."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated (its header is incomplete).")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(
            f"IDX file {path} is {kind} ({len(raw)} bytes, expected {expected} for shape {dims}); "
            "replace it with the original."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic ``00 00 08 <ndim>``, big-endian uint32 dims, data."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer takes uint8 arrays, not {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
