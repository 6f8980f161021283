"""IDX files, the format MNIST ships in: read one into an array, write an array as one.

Every malformed file (wrong magic number, truncated or trailing data, a corrupt gzip stream)
raises :class:`DataError` naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ._checks import DataError, DataFileNotFoundError

_IDX_CODES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODE_OF = {dt.newbyteorder("=").str[1:]: code for code, dt in _IDX_CODES.items()}


def _idx_code(dtype) -> int:
    key = np.dtype(dtype).newbyteorder("=").str[1:]
    if key not in _IDX_CODE_OF:
        raise DataError(f"IDX files hold uint8, int8, int16, int32, float32 or float64; got "
                        f"dtype {np.dtype(dtype)}")
    return _IDX_CODE_OF[key]


def read_idx(path, dtype=None, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed: detected from its content) into an array.

    Format: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, one
    big-endian uint32 per dimension, then the values, big-endian, row-major. With ``dtype``
    and/or ``ndim`` the magic number must say exactly that. The data must be exactly as long
    as the dimensions require. Returns an array in native byte order. Raises
    :class:`DataFileNotFoundError` for a missing file and :class:`DataError` for a malformed one
    (magic number, truncation, trailing data, a corrupt gzip stream).

    Memory is bounded by what the header declares, whatever the file holds: the header is
    read and checked first; a raw file's size, and a gzip file's recorded uncompressed size
    (its trailer, for single-member streams under 4 GiB, as the official files are), must match
    it before any payload is read; decompression stops one byte past the declared size (a
    stream that goes on is refused there, not decompressed to its end).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"IDX file {path} does not exist"
                                    + (" (it is a directory)" if path.is_dir() else ""))
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    where = f"{path}" + (" (after gzip decompression)" if compressed else "")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            return _read_idx_stream(f, path, where, compressed, dtype, ndim)
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: the gzip stream is truncated or corrupt ({e}); expected a "
                        "complete gzip-compressed IDX file") from e


def _read_idx_stream(f, path: Path, where: str, compressed: bool, dtype, ndim) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{where}: truncated: expected at least the 4-byte IDX magic number, "
                        f"got {len(head)} bytes")
    zero, code, nd = head[:2], head[2], head[3]
    magic = int.from_bytes(head, "big")
    if ndim is not None or dtype is not None:
        want_code = _idx_code(dtype) if dtype is not None else code
        want_nd = ndim if ndim is not None else nd
        want = (want_code << 8) | want_nd
        if magic != want:
            kind = np.dtype(_IDX_CODES[want_code]).newbyteorder("=") if (
                want_code in _IDX_CODES) else "?"
            raise DataError(f"{path}: wrong magic number 0x{magic:08X}; expected 0x{want:08X} "
                            f"(IDX {kind}, {want_nd} dimension{'s' * (want_nd != 1)})")
    if zero != b"\x00\x00" or code not in _IDX_CODES or nd == 0:
        raise DataError(f"{path}: wrong magic number 0x{magic:08X}; expected 0x0000TTDD with "
                        f"type code TT in {{08, 09, 0B, 0C, 0D, 0E}} and DD >= 1 dimensions "
                        "(is this an IDX file?)")
    header = 4 + 4 * nd
    dims = f.read(4 * nd)
    if len(dims) < 4 * nd:
        raise DataError(f"{where}: truncated header: expected {header} bytes for {nd} "
                        f"dimensions, got {4 + len(dims)}")
    shape = struct.unpack(f">{nd}I", dims)
    dt = _IDX_CODES[code]
    want_bytes = math.prod(shape) * dt.itemsize
    declared = (f"the header declares shape {shape} of {dt.newbyteorder('=')}, i.e. "
                f"{want_bytes} data bytes ({header + want_bytes} with the header)")
    # the payload's size, known before a byte of it is read (or decompressed)
    total = _stored_size(path, compressed)
    if compressed and total is not None and total != (header + want_bytes) % 2**32:
        raise DataError(f"{path}: the gzip stream is truncated or corrupt, or holds other data "
                        f"than its header says: {declared}; its trailer records {total} "
                        "uncompressed bytes")
    if not compressed and total != header + want_bytes:
        problem = "truncated" if total < header + want_bytes else "trailing data"
        raise DataError(f"{where}: {problem}: {declared}; expected {want_bytes} bytes, got "
                        f"{total - header}")
    out = np.empty(want_bytes, np.uint8)
    got = f.readinto(memoryview(out)) if want_bytes else 0
    if got < want_bytes:
        raise DataError(f"{where}: truncated: {declared}; expected {want_bytes} bytes, got {got}")
    if f.read(1):
        raise DataError(f"{where}: trailing data: {declared}; the data goes on past them")
    return out.view(dt).reshape(shape).astype(dt.newbyteorder("="))


def _stored_size(path: Path, compressed: bool) -> int | None:
    """The uncompressed size of a file: its size, or a gzip stream's ISIZE (its last four
    bytes: the size modulo 2³², exact below 4 GiB for a single-member stream); None for a
    stream too short to have a trailer."""
    size = path.stat().st_size
    if not compressed:
        return size
    if size < 18:  # a gzip header and trailer alone take 18 bytes
        return None  # decompressing says what is wrong with it
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    return isize


def write_idx(path, array, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64; at least 1-D) as an IDX
    file, gzip-compressed when ``compress`` is true or, by default, when ``path`` ends in
    ``.gz``. The file is written under a temporary name and renamed, so it appears whole.
    Returns the path; raises :class:`DataError` for an unsupported dtype or shape."""
    path = Path(path)
    array = np.asarray(array)
    code = _idx_code(array.dtype)
    if not 1 <= array.ndim <= 255:
        raise DataError(f"write_idx needs an array with 1 to 255 dimensions; got shape "
                        f"{array.shape}")
    if any(s >= 2**32 for s in array.shape):
        raise DataError(f"write_idx: IDX dimensions must be < 2**32; got shape {array.shape}")
    payload = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=_IDX_CODES[code]).tobytes())
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path
