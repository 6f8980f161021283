"""The data package's errors and the argument checks its modules share.

Every check raises :class:`DataError` (a ``ValueError``) naming the argument and what was expected;
a missing file or directory raises :class:`DataFileNotFoundError`, which is both a ``DataError``
and a ``FileNotFoundError``.
"""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """A data file, array or argument is not what was expected; the message says what was.

    Raised throughout :mod:`hamjax.data`, naming the file or argument and what was expected. A
    ``ValueError``."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist; the message lists the names looked for.

    Both a :class:`DataError` and a ``FileNotFoundError``, so either ``except`` catches it."""


def as_rng(rng, what: str = "rng") -> np.random.Generator:
    """``rng`` as a Generator: a Generator itself, or a fresh one from a non-negative integer
    seed. ``None`` is refused: randomness is always explicit here."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise DataError(f"{what} must be a numpy.random.Generator or a non-negative integer seed; "
                    f"got {rng!r} (randomness is always explicit here)")


def as_batch(x, what: str) -> np.ndarray:
    """``x`` as a floating array of shape ``(n, ...)`` (non-floating input becomes ``float32``)."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"{what} needs a batch x of shape (n, ...); got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def as_fraction(value, what: str) -> float:
    """``value`` as a float in ``[0, 1]``."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise DataError(f"{what}: fraction must lie in [0, 1]; got {value}")
    return value


def as_labels(y, what: str, expected_len: int | None = None) -> np.ndarray:
    """``y`` as integer class indices ``>= 0``; with ``expected_len``, 1-D of that length.
    Floating labels are accepted when they hold whole numbers."""
    y = np.asarray(y)
    if expected_len is not None:
        if y.ndim != 1:
            hint = "; pass class indices, e.g. y.argmax(-1)" if y.ndim == 2 else ""
            raise DataError(f"{what} must be 1-D class indices of shape ({expected_len},); got "
                            f"shape {y.shape}{hint}")
        if len(y) != expected_len:
            raise DataError(f"{what} holds {len(y)} labels but the images hold {expected_len} "
                            "examples; expected equal counts")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what} must hold integer class indices; got non-integer values")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what} must hold integer class indices; got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{what} must hold class indices >= 0; got {y.min()}")
    return y


def as_limit(limit, what: str) -> int | None:
    """``limit`` (``limit_train``/``limit_test``) as ``None`` or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise DataError(f"{what} must be None or a positive integer; got {limit!r}")
    return None if limit is None else int(limit)


def as_dir(data_dir, what: str, holds: str):
    """``data_dir`` as an existing directory ``Path`` (``~`` expanded). ``what`` names the
    dataset and ``holds`` says what the directory should hold, for the errors: a missing path
    raises :class:`DataFileNotFoundError`, a file :class:`DataError`."""
    from pathlib import Path

    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"{what} directory {path} does not exist; expected a "
                                    f"directory holding {holds}")
    if not path.is_dir():
        raise DataError(f"{what} data_dir {path} is a file; expected a directory holding "
                        f"{holds}")
    return path


def listing(directory) -> str:
    """The first names in ``directory``, for an error that says what is there instead."""
    present = sorted(p.name for p in directory.iterdir())
    shown = ", ".join(present[:20]) + (", ..." if len(present) > 20 else "")
    return shown or "nothing"
