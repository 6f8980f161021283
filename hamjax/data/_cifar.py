"""CIFAR-10 and CIFAR-100 in their official Python-pickle batch format.

The archives ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` extract to the folders
``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``)
and ``cifar-100-python/`` (``train``, ``test``, ``meta``). Each file is a pickled ``dict`` with
``bytes`` keys; ``b"data"`` is a ``uint8`` array ``(n, 3072)`` whose rows hold an image's red
plane, then its green, then its blue, each 32×32 row-major.

Pickle can run code while it loads, so only load files you trust. The files here are read by an
unpickler that refuses every global except the few that rebuild a NumPy array (and ``bytes``),
so a file that tries anything else is a :class:`DataError` rather than run.
"""

from __future__ import annotations

import functools
import math
import pickle
from pathlib import Path

import numpy as np

from ._checks import DataError, DataFileNotFoundError, as_dir, as_limit, listing
from ._dataset import Dataset

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta")
"""The files :func:`load_cifar10` reads from ``cifar-10-batches-py/``."""

CIFAR100_FILES = ("train", "test", "meta")
"""The files :func:`load_cifar100` reads from ``cifar-100-python/``."""

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE

# what an array (and, in pickles written by Python 3 at protocol 2, a bytes object) needs
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, NumPy arrays and bytes, none larger than
    ``limit`` bytes (the file's size: every array of a batch is read from the file's bytes)."""

    def __init__(self, f, limit: int, **kw):
        super().__init__(f, **kw)
        self.limit = limit

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"the pickle asks for {module}.{name}, which a CIFAR "
                                         "batch never holds; refusing to load it")
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return functools.partial(_bounded_reconstruct, found, self.limit)
        return found


def _bounded_reconstruct(reconstruct, limit: int, subtype, shape, dtype):
    """numpy's ``_reconstruct`` (an empty array that ``__setstate__`` then fills), refusing a
    shape whose size exceeds ``limit`` bytes before it is allocated (a pickle of a few bytes can
    declare any shape)."""
    try:
        n = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f"an array of shape {shape!r}, dtype {dtype!r}: {e}") from e
    if n > limit:
        raise pickle.UnpicklingError(f"the pickle declares an array of shape {tuple(shape)} "
                                     f"({n} bytes), more than the file's {limit} bytes can "
                                     "hold; refusing to allocate it")
    return reconstruct(subtype, shape, dtype)


def _unpickle(path: Path) -> dict:
    """The ``dict`` pickled in ``path`` (keys ``bytes``), or a :class:`DataError` naming it."""
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, limit=path.stat().st_size, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError, OverflowError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CIFAR batch (truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a pickled {type(obj).__name__}; expected a CIFAR batch "
                        "(a dict with keys b'data' and the labels)")
    return obj


def _entry(d: dict, key: bytes, path: Path):
    if key not in d:
        keys = ", ".join(repr(k) for k in d)
        raise DataError(f"{path}: no key {key!r}; expected a CIFAR batch holding it (the file "
                        f"holds {keys or 'no keys'})")
    return d[key]


def _batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 32, 32, 3), labels int32 (n,))`` of one batch file."""
    d = _unpickle(path)
    data = _entry(d, b"data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _ROW):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: b'data' is {dtype} of shape {shape}; expected uint8 of shape "
                        f"(n, {_ROW}) (3 colour planes of 32×32)")
    labels = _entry(d, label_key, path)
    if isinstance(labels, list | tuple) and (
            len(labels) != len(data) or not all(type(v) is int for v in labels)):
        # checked as a list: NumPy would build an object array of a ragged or nested one
        kinds = sorted({type(v).__name__ for v in labels[:1000]})
        raise DataError(f"{path}: {label_key!r} is a list of {len(labels)} entries of "
                        f"{', '.join(kinds) or 'nothing'}; expected {len(data)} integer labels, "
                        "one per row of b'data'")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {label_key!r} holds {labels.dtype} of shape {labels.shape}; "
                        f"expected {len(data)} integer labels, one per row of b'data'")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {label_key!r} must lie in 0..{num_classes - 1}; found values "
                        f"from {labels.min()} to {labels.max()}")
    # rows are channel-major (R plane, G plane, B plane): (n, C, H, W) -> NHWC
    images = data.reshape(len(data), 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _names(path: Path, key: bytes, num_classes: int) -> tuple[str, ...]:
    names = _entry(_unpickle(path), key, path)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        n = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise DataError(f"{path}: {key!r} holds {n} names; expected {num_classes}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _folder(data_dir, folder: str, files, what: str, archive: str) -> Path:
    """The extracted archive folder: ``data_dir/folder`` when it exists, else ``data_dir``
    itself; every one of ``files`` must be in it."""
    holds = f"the folder {folder}/ (extracted from {archive}) or its files"
    root = as_dir(data_dir, what, holds)
    inner = root / folder
    if inner.is_dir():
        root = inner
    elif root.name != folder and not any((root / f).exists() for f in files):
        hint = (f"; {archive} is there: extract it first (tar -xzf {archive})"
                if (root / archive).exists() else "")
        raise DataFileNotFoundError(
            f"{inner / files[0]} not found: expected {what}'s extracted folder {folder}/ in "
            f"{root}, or {root} to be that folder (holding {', '.join(files)}){hint}; the "
            f"directory holds: {listing(root)}")
    for f in files:
        if not (root / f).is_file():
            raise DataFileNotFoundError(f"{root / f} not found; expected {what}'s files "
                                        f"{', '.join(files)} in {root}")
    return root


def _dataset(parts, limits, num_classes, name, class_names) -> Dataset:
    out = []
    for (x, y), limit in zip(parts, limits, strict=True):
        x, y = x[:limit], y[:limit]
        xf = x.astype(np.float32)
        xf *= np.float32(1.0 / 255.0)
        out += [xf, y]
    return Dataset(*out, (_SIDE, _SIDE, 3), num_classes, name, class_names)


def load_cifar10(data_dir, limit_train: int | None = None,
                 limit_test: int | None = None) -> Dataset:
    """CIFAR-10 from its extracted Python archive: 50,000 training and 10,000 test colour
    images of 32×32 pixels in 10 classes.

    ``data_dir``: the folder ``cifar-10-batches-py/`` or the folder holding it. Images: ``uint8``
    rows ``(n, 3072)`` (red plane, green plane, blue plane) become ``float32`` in ``[0, 1]`` of
    shape ``(n, 32, 32, 3)`` (NHWC); labels ``int32`` in ``0..9``, named by ``batches.meta``'s
    ``b"label_names"``. The five training batches are concatenated in order.
    ``limit_train`` / ``limit_test`` keep at most the first that many examples of each part
    (every file is still read and validated).

    Pickle can run code while it loads: only load files you trust. The files are read by an
    unpickler that accepts nothing but containers, NumPy arrays and bytes.

    Raises :class:`DataFileNotFoundError` naming the file expected (``…/cifar-10-batches-py/
    data_batch_3 not found``) and :class:`DataError` naming a truncated or corrupt file, a
    missing key, or data of the wrong shape, type or label range.
    """
    limits = (as_limit(limit_train, "limit_train"), as_limit(limit_test, "limit_test"))
    root = _folder(data_dir, "cifar-10-batches-py", CIFAR10_FILES, "CIFAR-10",
                   "cifar-10-python.tar.gz")
    names = _names(root / "batches.meta", b"label_names", 10)
    train = [_batch(root / f, b"labels", 10) for f in CIFAR10_FILES[:5]]
    train = (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]))
    test = _batch(root / "test_batch", b"labels", 10)
    return _dataset((train, test), limits, 10, "cifar10", names)


def load_cifar100(data_dir, label_kind: str = "fine", limit_train: int | None = None,
                  limit_test: int | None = None) -> Dataset:
    """CIFAR-100 from its extracted Python archive: 50,000 training and 10,000 test colour
    images of 32×32 pixels in 100 fine classes grouped into 20 coarse superclasses.

    ``data_dir``: the folder ``cifar-100-python/`` or the folder holding it. ``label_kind``:
    ``"fine"`` (100 classes, ``b"fine_labels"``; the dataset is named ``"cifar100"``) or
    ``"coarse"`` (20 superclasses, ``b"coarse_labels"``; named ``"cifar100-coarse"``); class
    names from ``meta``. Images as in :func:`load_cifar10`: ``float32`` ``(n, 32, 32, 3)`` in
    ``[0, 1]``. ``limit_train`` / ``limit_test`` keep at most the first that many examples.

    Pickle can run code while it loads: only load files you trust (the unpickler used accepts
    nothing but containers, NumPy arrays and bytes). Errors as for :func:`load_cifar10`.
    """
    if label_kind not in ("fine", "coarse"):
        raise DataError(f"label_kind must be 'fine' (100 classes) or 'coarse' (20 "
                        f"superclasses); got {label_kind!r}")
    limits = (as_limit(limit_train, "limit_train"), as_limit(limit_test, "limit_test"))
    root = _folder(data_dir, "cifar-100-python", CIFAR100_FILES, "CIFAR-100",
                   "cifar-100-python.tar.gz")
    k = 100 if label_kind == "fine" else 20
    key = f"{label_kind}_labels".encode()
    names = _names(root / "meta", f"{label_kind}_label_names".encode(), k)
    parts = (_batch(root / "train", key, k), _batch(root / "test", key, k))
    name = "cifar100" if label_kind == "fine" else "cifar100-coarse"
    return _dataset(parts, limits, k, name, names)
