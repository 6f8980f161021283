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
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"IDX file {path} does not exist"
                                    + (" (it is a directory)" if path.is_dir() else ""))
    raw = path.read_bytes()
    compressed = raw[:2] == b"\x1f\x8b"
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: the gzip stream is truncated or corrupt ({e}); expected a "
                            "complete gzip-compressed IDX file") from e
    where = f"{path}" + (" (after gzip decompression)" if compressed else "")
    if len(raw) < 4:
        raise DataError(f"{where}: truncated: expected at least the 4-byte IDX magic number, "
                        f"got {len(raw)} bytes")
    zero, code, nd = raw[:2], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
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
    if len(raw) < header:
        raise DataError(f"{where}: truncated header: expected {header} bytes for {nd} "
                        f"dimensions, got {len(raw)}")
    shape = struct.unpack(f">{nd}I", raw[4:header])
    dt = _IDX_CODES[code]
    want_bytes = math.prod(shape) * dt.itemsize
    got_bytes = len(raw) - header
    if got_bytes != want_bytes:
        problem = "truncated" if got_bytes < want_bytes else "trailing data"
        raise DataError(f"{where}: {problem}: the header declares shape {shape} of "
                        f"{dt.newbyteorder('=')}, i.e. {want_bytes} data bytes "
                        f"({header + want_bytes} with the header); expected {want_bytes} bytes, "
                        f"got {got_bytes}")
    return np.frombuffer(raw, dtype=dt, offset=header).reshape(shape).astype(
        dt.newbyteorder("="))


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
