"""Datasets and corruptions for associative-memory tasks, in plain NumPy.

Sources:

- :func:`load_digits`: the scikit-learn digits (1,797 8×8 images, bundled with scikit-learn; the
  default), split into train and test deterministically by seed, stratified by class.
- :func:`load_mnist`: MNIST from a directory holding the standard four IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), each gzip-compressed (``.gz``) or raw.
- :func:`from_arrays`: any NumPy arrays.

Every loader returns a :class:`Dataset`: images are ``float32`` in ``[0, 1]`` with shape
``(n, H, W, C)`` (NHWC), labels are ``int32`` class indices in ``[0, num_classes)``.
Nothing is downloaded.

Corruptions (:func:`gaussian_noise`, :func:`salt_and_pepper`, :func:`mask_region`,
:func:`mask_random`, dispatched by :func:`corrupt`) take a batch ``x`` of shape ``(n, ...)`` with
values in ``[0, 1]``, never modify it, and return a :class:`Corrupted` pair ``(images, mask)``:
the corrupted copy and a boolean array of ``x``'s shape that is ``True`` where a value was
corrupted or hidden (so ``~mask`` marks the pixels a memory may trust). Randomness comes only from
an explicit ``np.random.Generator`` or integer seed. :func:`psnr` scores a restoration.

Bad input raises :class:`DataError` (a ``ValueError``) naming the file or argument and what was
expected; a missing file or directory raises :class:`DataFileNotFoundError`, which is both a
``DataError`` and a ``FileNotFoundError``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "CORRUPTIONS",
    "DATASETS",
    "MNIST_FILES",
    "Corrupted",
    "DataError",
    "DataFileNotFoundError",
    "Dataset",
    "batches",
    "corrupt",
    "flatten",
    "from_arrays",
    "gaussian_noise",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "mask_random",
    "mask_region",
    "one_hot",
    "psnr",
    "random_affine",
    "random_shift",
    "read_idx",
    "salt_and_pepper",
    "split_indices",
    "unflatten",
    "write_idx",
]


class DataError(ValueError):
    """A data file, array or argument is not what was expected; the message says what was."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist; the message lists the names looked for."""


# --------------------------------------------------------------------------------------------
# Dataset


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split of images and integer labels.

    Attributes:
        x_train: ``float32`` in ``[0, 1]``, shape ``(n_train, H, W, C)`` (or ``(n_train, D)``
            after :meth:`flat`, or for arrays given flat without an image shape).
        y_train: ``int32`` class indices in ``[0, num_classes)``, shape ``(n_train,)``.
        x_test, y_test: the same for the test part.
        image_shape: the shape of one image, ``(H, W, C)`` (``(D,)`` for data that never had an
            image shape); kept when the data are flattened so that they can be reshaped back.
        num_classes: the number of classes.
        name: ``"digits"``, ``"mnist"`` or the name given to :func:`from_arrays`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, ...]
    num_classes: int
    name: str

    def __post_init__(self):
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if len(x) != len(y):
                raise DataError(f"Dataset {self.name!r}: x_{part} holds {len(x)} examples but "
                                f"y_{part} holds {len(y)} labels")
            if x.shape[1:] not in (tuple(self.image_shape), (math.prod(self.image_shape),)):
                raise DataError(f"Dataset {self.name!r}: x_{part} has shape {x.shape}; expected "
                                f"(n, *{tuple(self.image_shape)}) or (n, "
                                f"{math.prod(self.image_shape)})")

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        return len(self.x_test)

    @property
    def num_features(self) -> int:
        """``H * W * C``: the length of one flattened image."""
        return math.prod(self.image_shape)

    def flat(self) -> Dataset:
        """The same data with images flattened to ``(n, H * W * C)``; ``image_shape`` is kept."""
        return dataclasses.replace(
            self, x_train=flatten(self.x_train), x_test=flatten(self.x_test)
        )

    def images(self) -> Dataset:
        """The same data with images in their ``(n, *image_shape)`` shape (undoes :meth:`flat`)."""
        return dataclasses.replace(
            self,
            x_train=unflatten(self.x_train, self.image_shape),
            x_test=unflatten(self.x_test, self.image_shape),
        )

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, "
                f"x_test={self.x_test.shape}, image_shape={tuple(self.image_shape)}, "
                f"num_classes={self.num_classes})")


def flatten(x) -> np.ndarray:
    """``(n, ...)`` → ``(n, D)`` with ``D`` the product of the trailing dimensions."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"flatten needs a batch (n, ...); got a scalar of shape {x.shape}")
    return x.reshape(len(x), -1)


def unflatten(x, image_shape) -> np.ndarray:
    """``(n, D)`` (or ``(n, *image_shape)``) → ``(n, *image_shape)``."""
    x = np.asarray(x)
    image_shape = tuple(int(s) for s in image_shape)
    if x.ndim < 1 or math.prod(x.shape[1:]) != math.prod(image_shape):
        raise DataError(f"cannot reshape an array of shape {x.shape} to (n, *{image_shape}): "
                        f"expected {math.prod(image_shape)} values per example")
    return x.reshape((len(x), *image_shape))


def one_hot(y, num_classes: int, dtype=np.float32) -> np.ndarray:
    """Class indices ``(...)`` in ``[0, num_classes)`` → one-hot ``(..., num_classes)``."""
    y = _labels(y, "y")
    if num_classes < 1:
        raise DataError(f"num_classes must be positive; got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}); got values from {y.min()} to "
                        f"{y.max()}")
    return np.eye(num_classes, dtype=dtype)[y]


# --------------------------------------------------------------------------------------------
# Splitting and batching


def split_indices(y, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """Deterministic train/test split of ``len(y)`` examples, as two ``int64`` index arrays.

    ``round(test_fraction * n)`` examples go to the test part. With ``stratify`` each class
    contributes in proportion to its size (largest remainders decide the rounding), so class
    proportions agree between the parts to within one example per class. Both index arrays are
    in a shuffled order. The same ``(y, test_fraction, seed)`` always gives the same split.
    """
    y = _labels(y, "y")
    n = len(y)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction}")
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test <= n - 1:
        raise DataError(f"test_fraction={test_fraction} of {n} examples leaves "
                        f"{n_test} test and {n - n_test} training examples; both need at least 1")
    rng = _as_rng(seed, "seed")
    if stratify:
        classes, counts = np.unique(y, return_counts=True)
        quota = counts * (n_test / n)
        take = np.floor(quota).astype(np.int64)
        extra = n_test - int(take.sum())
        # Stable sort: equal remainders go to the smaller class index first.
        take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
        test_parts = []
        for c, k in zip(classes, take, strict=True):
            members = np.flatnonzero(y == c)
            test_parts.append(rng.permutation(members)[:k])
        is_test = np.zeros(n, bool)
        is_test[np.concatenate(test_parts)] = True
        test_idx = rng.permutation(np.flatnonzero(is_test))
        train_idx = rng.permutation(np.flatnonzero(~is_test))
    else:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def batches(x, y=None, batch_size: int = 128, seed: int = 0, epoch: int = 0,
            drop_last: bool = False, shuffle: bool = True) -> Iterator[tuple]:
    """Yield ``(x_batch, y_batch)`` pairs of NumPy arrays covering ``x`` once.

    The order is a permutation drawn from ``(seed, epoch)``: the same pair always gives the same
    batches, and each epoch a different order. ``y`` may be ``None`` (then ``y_batch`` is
    ``None``). The last, smaller batch is dropped when ``drop_last``. With ``shuffle=False``
    the examples come in their stored order.
    """
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"batches needs x of shape (n, ...); got shape {x.shape}")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise DataError(f"batches: x holds {len(x)} examples but y holds {len(y)}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
    for name, v in (("seed", seed), ("epoch", epoch)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise DataError(f"{name} must be a non-negative integer; got {v!r}")
    n = len(x)
    order = np.random.default_rng((int(seed), int(epoch))).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n

    def generate():
        for start in range(0, stop, batch_size):
            idx = (order[start:start + batch_size] if order is not None
                   else slice(start, start + batch_size))
            yield x[idx], (None if y is None else y[idx])

    return generate()


# --------------------------------------------------------------------------------------------
# Sources


DATASETS = ("digits", "mnist")


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images, bunch.target


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The scikit-learn digits: 1,797 images of 8×8 pixels, 10 classes, bundled (no download).

    Pixel intensities 0..16 are scaled to ``[0, 1]``; images have shape ``(n, 8, 8, 1)``. The
    split is stratified by class and determined by ``seed`` (see :func:`split_indices`); with
    the defaults 1,438 training and 359 test images.
    """
    images, target = _digits_arrays()
    train, test = split_indices(target, test_fraction, seed, stratify=True)
    x = (images.astype(np.float32) / 16.0)[..., None]
    y = target.astype(np.int32)
    return Dataset(x[train], y[train], x[test], y[test], (8, 8, 1), 10, "digits")


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_mnist_file(data_dir: Path, base: str) -> Path:
    candidates = [data_dir / base, data_dir / (base + ".gz")]
    for path in candidates:
        if path.is_file():
            return path
    present = sorted(p.name for p in data_dir.iterdir())
    shown = ", ".join(present[:20]) + (", ..." if len(present) > 20 else "")
    raise DataFileNotFoundError(
        f"MNIST file missing in {data_dir}: expected {base} or {base}.gz "
        f"(the standard names are {', '.join(MNIST_FILES.values())}, each raw or .gz); "
        f"the directory holds: {shown or 'nothing'}"
    )


def load_mnist(data_dir=None, limit_train: int | None = None,
               limit_test: int | None = None) -> Dataset:
    """MNIST from a directory holding the four standard IDX files, each raw or gzip-compressed.

    ``data_dir`` defaults to the environment variable ``HAMJAX_MNIST_DIR``. Images are scaled
    from 0..255 to ``float32`` in ``[0, 1]``, shape ``(n, 28, 28, 1)``; labels ``int32`` in
    ``0..9``. ``limit_train`` / ``limit_test`` keep at most the first that many examples of each
    part (the files are still read and validated in full). Where both ``name`` and ``name.gz``
    exist the raw file is read.

    Every file is checked: magic number (``0x00000803`` for images, ``0x00000801`` for labels),
    byte count against the header's dimensions, labels in ``0..9``, and images against labels
    in number; any failure raises :class:`DataError` naming the file and what was expected.
    """
    if data_dir is None:
        data_dir = os.environ.get("HAMJAX_MNIST_DIR")
        if not data_dir:
            raise DataError("load_mnist needs data_dir, a directory holding "
                            f"{', '.join(MNIST_FILES.values())} (raw or .gz), or the "
                            "environment variable HAMJAX_MNIST_DIR set to one")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.exists():
        raise DataFileNotFoundError(
            f"MNIST directory {data_dir} does not exist; expected a directory holding "
            f"{', '.join(MNIST_FILES.values())} (raw or .gz)")
    if not data_dir.is_dir():
        raise DataError(f"MNIST data_dir {data_dir} is a file; expected a directory holding "
                        f"{', '.join(MNIST_FILES.values())} (raw or .gz)")
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
            raise DataError(f"{name} must be None or a positive integer; got {limit!r}")

    parts = {}
    for part, limit in (("train", limit_train), ("test", limit_test)):
        img_path = _find_mnist_file(data_dir, MNIST_FILES[f"{part}_images"])
        lab_path = _find_mnist_file(data_dir, MNIST_FILES[f"{part}_labels"])
        images = read_idx(img_path, dtype=np.uint8, ndim=3)
        labels = read_idx(lab_path, dtype=np.uint8, ndim=1)
        if len(images) != len(labels):
            raise DataError(f"MNIST {part} count mismatch: {img_path} holds {len(images)} "
                            f"images but {lab_path} holds {len(labels)} labels; expected equal "
                            "counts")
        if labels.size and labels.max() > 9:
            raise DataError(f"{lab_path}: labels must lie in 0..9; found {labels.max()}")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = images.astype(np.float32)[..., None]
        x *= np.float32(1.0 / 255.0)
        parts[part] = (x, labels.astype(np.int32))
    (x_tr, y_tr), (x_te, y_te) = parts["train"], parts["test"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"MNIST images in {data_dir}: training images are {x_tr.shape[1:3]} "
                        f"but test images {x_te.shape[1:3]}; expected equal sizes")
    return Dataset(x_tr, y_tr, x_te, y_te, tuple(x_tr.shape[1:]), 10, "mnist")


def from_arrays(x_train, y_train, x_test=None, y_test=None, *, test_fraction: float = 0.2,
                seed: int = 0, image_shape=None, num_classes: int | None = None,
                stratify: bool = True, name: str = "arrays") -> Dataset:
    """A :class:`Dataset` from NumPy arrays.

    ``x``: shape ``(n, H, W)`` (a channel axis is added), ``(n, H, W, C)`` or ``(n, D)``
    (reshaped to ``(n, *image_shape)`` when ``image_shape`` is given, else kept flat with
    ``image_shape = (D,)``). ``uint8`` values are scaled from 0..255 to ``[0, 1]``; any other
    numeric values must already lie in ``[0, 1]``. Stored as ``float32``.
    ``y``: integer class indices ``>= 0``, shape ``(n,)``; ``num_classes`` defaults to the
    largest label plus one.
    Without ``x_test``/``y_test`` the training arrays are split by :func:`split_indices`
    (``test_fraction``, ``seed``, ``stratify``).
    """
    if (x_test is None) != (y_test is None):
        raise DataError("from_arrays: give both x_test and y_test, or neither (then the "
                        "training arrays are split by test_fraction)")
    x_tr = _images(x_train, "x_train", image_shape)
    y_tr = _labels(y_train, "y_train", expected_len=len(x_tr))
    if x_test is None:
        train, test = split_indices(y_tr, test_fraction, seed, stratify=stratify)
        x_tr, y_tr, x_te, y_te = x_tr[train], y_tr[train], x_tr[test], y_tr[test]
    else:
        x_te = _images(x_test, "x_test", image_shape)
        y_te = _labels(y_test, "y_test", expected_len=len(x_te))
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise DataError(f"from_arrays: x_test examples have shape {x_te.shape[1:]} but "
                            f"x_train examples {x_tr.shape[1:]}; expected the same")
    top = max(int(y_tr.max(initial=-1)), int(y_te.max(initial=-1)))
    if num_classes is None:
        num_classes = top + 1
    elif top >= num_classes:
        raise DataError(f"from_arrays: num_classes={num_classes} but a label is {top}; labels "
                        f"must lie in [0, {num_classes})")
    return Dataset(x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32),
                   tuple(x_tr.shape[1:]), int(num_classes), name)


def _images(x, what: str, image_shape) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{what} must have shape (n, H, W), (n, H, W, C) or (n, D); got shape "
                        f"{x.shape}")
    if len(x) == 0:
        raise DataError(f"{what} is empty (shape {x.shape}); expected at least one example")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype == bool or np.issubdtype(x.dtype, np.integer) or np.issubdtype(
            x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{what} contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{what} values must lie in [0, 1] (or be uint8 in 0..255); got "
                            f"values from {lo} to {hi}: scale them first, e.g. x / x.max()")
    else:
        raise DataError(f"{what} must be numeric; got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if math.prod(x.shape[1:]) != math.prod(image_shape):
            raise DataError(f"{what} examples have shape {x.shape[1:]} "
                            f"({math.prod(x.shape[1:])} values) but image_shape={image_shape} "
                            f"needs {math.prod(image_shape)}")
        x = x.reshape((len(x), *image_shape))
    return x


def _labels(y, what: str, expected_len: int | None = None) -> np.ndarray:
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


def load_dataset(name: str = "digits", data_dir=None, **kwargs) -> Dataset:
    """Load a dataset by name: ``"digits"`` (:func:`load_digits`, no ``data_dir``) or
    ``"mnist"`` (:func:`load_mnist`, ``data_dir`` or ``HAMJAX_MNIST_DIR``). ``kwargs`` go to
    the loader."""
    key = str(name).lower()
    if key == "digits":
        if data_dir is not None:
            raise DataError(f"dataset 'digits' is bundled with scikit-learn and takes no "
                            f"data_dir (got {data_dir!r}); for IDX files use name='mnist'")
        return load_digits(**kwargs)
    if key == "mnist":
        return load_mnist(data_dir, **kwargs)
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                    "(or build one from arrays with hamjax.data.from_arrays)")


# --------------------------------------------------------------------------------------------
# IDX files


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
    as the dimensions require. Returns an array in native byte order.
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
    ``.gz``. The file is written under a temporary name and renamed, so it appears whole."""
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


# --------------------------------------------------------------------------------------------
# Corruptions


class Corrupted(NamedTuple):
    """A corrupted batch and where it was corrupted.

    ``images``: same shape as the input, values in ``[0, 1]`` for inputs in ``[0, 1]``.
    ``mask``: bool, same shape, ``True`` where a value was corrupted or hidden.
    """

    images: np.ndarray
    mask: np.ndarray


def _as_rng(rng, what: str = "rng") -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise DataError(f"{what} must be a numpy.random.Generator or a non-negative integer seed; "
                    f"got {rng!r} (randomness is always explicit here)")


def _batch(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"{what} needs a batch x of shape (n, ...); got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _fraction(fraction, what: str) -> float:
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"{what}: fraction must lie in [0, 1]; got {fraction}")
    return fraction


def _random_elements(shape, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(fraction * D)`` of the ``D`` values of each example, chosen uniformly."""
    n, d = shape[0], math.prod(shape[1:])
    k = int(round(fraction * d))
    if k == 0 or n == 0:
        return np.zeros(shape, bool)
    if k == d:
        return np.ones(shape, bool)
    u = rng.random((n, d))
    kth = np.partition(u, k - 1, axis=1)[:, k - 1:k]
    return (u <= kth).reshape(shape)


def gaussian_noise(x, sigma: float, rng, clip: bool = True) -> Corrupted:
    """``x + sigma * N(0, 1)`` elementwise, clipped to ``[0, 1]`` when ``clip``.

    ``mask`` is all ``True`` for ``sigma > 0`` (every value is perturbed), all ``False`` for 0.
    """
    x = _batch(x, "gaussian_noise")
    sigma = float(sigma)
    if not sigma >= 0.0:
        raise DataError(f"gaussian_noise: sigma must be >= 0; got {sigma}")
    rng = _as_rng(rng)
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    noisy = x + (sigma * rng.standard_normal(x.shape, dtype=dt)).astype(x.dtype)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    return Corrupted(noisy, np.full(x.shape, sigma > 0.0))


def random_shift(x, max_shift: int, rng) -> np.ndarray:
    """Translate each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) by its own random
    offset of ``−max_shift … max_shift`` pixels along each axis, filling with zeros:
    the classical augmentation of MNIST-like data (pen strokes move, labels do not)."""
    x = _batch(x, "random_shift")
    if x.ndim not in (3, 4):
        raise DataError(f"random_shift needs images (n, H, W) or (n, H, W, C); got shape "
                        f"{x.shape}")
    s = int(max_shift)
    if s < 0 or s >= min(x.shape[1:3]):
        raise DataError(f"random_shift: max_shift must be in [0, {min(x.shape[1:3]) - 1}] for "
                        f"{x.shape[1]}×{x.shape[2]} images; got {max_shift}")
    rng = _as_rng(rng)
    if s == 0:
        return x.copy()
    h, w = x.shape[1:3]
    pad = [(0, 0), (s, s), (s, s)] + [(0, 0)] * (x.ndim - 3)
    padded = np.pad(x, pad)
    dy, dx = rng.integers(-s, s + 1, size=(2, len(x)))
    out = np.empty_like(x)
    for i in range(len(x)):
        # output pixel (r, c) reads input pixel (r − dy, c − dx)
        out[i] = padded[i, s - dy[i] : s - dy[i] + h, s - dx[i] : s - dx[i] + w]
    return out


def random_affine(x, rng, max_rotation: float = 0.0, max_zoom: float = 0.0) -> np.ndarray:
    """Rotate each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) about its centre by its own
    random angle in ``±max_rotation`` degrees and scale it by a random factor in
    ``1 ± max_zoom``; bilinear interpolation, zeros outside (Simard et al. 2003's affine
    distortions, without the shear)."""
    x = _batch(x, "random_affine")
    if x.ndim not in (3, 4):
        raise DataError(f"random_affine needs images (n, H, W) or (n, H, W, C); got shape "
                        f"{x.shape}")
    if not (0.0 <= max_rotation <= 180.0 and 0.0 <= max_zoom < 1.0):
        raise DataError(f"random_affine: need 0 <= max_rotation <= 180 and 0 <= max_zoom < 1; "
                        f"got {max_rotation}, {max_zoom}")
    rng = _as_rng(rng)
    n, h, w = x.shape[:3]
    theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    zoom = 1.0 + rng.uniform(-max_zoom, max_zoom, n)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    r, c = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    cos, sin = (np.cos(theta) / zoom)[:, None, None], (np.sin(theta) / zoom)[:, None, None]
    # output pixel p reads the input at A⁻¹ p: rotate back by θ, shrink by the zoom
    ys = cos * r + sin * c + cy
    xs = -sin * r + cos * c + cx
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    flat = x.reshape(n, h * w, -1)
    out = np.zeros((n, h, w, flat.shape[-1]), np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)).reshape(n, h * w)
        vals = np.take_along_axis(flat, idx[:, :, None], axis=1).reshape(out.shape)
        out += (wgt * inside)[..., None] * vals
    return out.reshape(x.shape).astype(x.dtype)


def salt_and_pepper(x, fraction: float, rng) -> Corrupted:
    """Set exactly ``round(fraction * D)`` values of each example (``D`` values each) to 0 or 1,
    each with probability 1/2. ``mask`` marks the chosen values (some may keep their value when
    it was already 0 or 1)."""
    x = _batch(x, "salt_and_pepper")
    fraction = _fraction(fraction, "salt_and_pepper")
    rng = _as_rng(rng)
    mask = _random_elements(x.shape, fraction, rng)
    out = x.copy()
    out[mask] = (rng.random(int(mask.sum())) < 0.5).astype(x.dtype)
    return Corrupted(out, mask)


def mask_random(x, fraction: float, rng, fill: float = 0.0) -> Corrupted:
    """Hide exactly ``round(fraction * D)`` values of each example (``D`` values each), chosen
    uniformly, by setting them to ``fill``. ``mask`` marks the hidden values."""
    x = _batch(x, "mask_random")
    fraction = _fraction(fraction, "mask_random")
    mask = _random_elements(x.shape, fraction, _as_rng(rng))
    return Corrupted(np.where(mask, np.asarray(fill, x.dtype), x), mask)


REGIONS = ("bottom_half", "top_half", "left_half", "right_half", "center")


def mask_region(x, region="bottom_half", fill: float = 0.0, image_shape=None) -> Corrupted:
    """Hide a rectangle of every image by setting it to ``fill``.

    ``x``: images ``(n, H, W)`` or ``(n, H, W, C)``, or flat ``(n, D)`` with ``image_shape``
    ``(H, W)`` or ``(H, W, C)`` given (the result is flat again). ``region``: one of
    ``"bottom_half"`` (rows ``H // 2`` to ``H``), ``"top_half"``, ``"left_half"``,
    ``"right_half"``, ``"center"`` (the central ``H // 2 × W // 2`` box), or a tuple
    ``(top, left, height, width)`` in pixels that lies inside the image. All channels of a
    hidden pixel are hidden. ``mask`` is ``True`` on the hidden values.
    """
    x = _batch(x, "mask_region")
    flat_shape = None
    if image_shape is not None:
        flat_shape = x.shape
        x = unflatten(x, image_shape)
    if x.ndim not in (3, 4):
        raise DataError(f"mask_region needs images of shape (n, H, W) or (n, H, W, C), or flat "
                        f"(n, D) with image_shape=(H, W[, C]); got shape {x.shape}")
    H, W = x.shape[1], x.shape[2]
    if isinstance(region, str):
        boxes = {
            "bottom_half": (H // 2, 0, H - H // 2, W),
            "top_half": (0, 0, H // 2, W),
            "left_half": (0, 0, H, W // 2),
            "right_half": (0, W // 2, H, W - W // 2),
            "center": ((H - H // 2) // 2, (W - W // 2) // 2, H // 2, W // 2),
        }
        if region not in boxes:
            raise DataError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)} "
                            "or a tuple (top, left, height, width)")
        top, left, height, width = boxes[region]
    else:
        try:
            top, left, height, width = (int(v) for v in region)
        except (TypeError, ValueError) as e:
            raise DataError(f"region must be one of {', '.join(REGIONS)} or a tuple (top, left, "
                            f"height, width) of integers; got {region!r}") from e
        if min(top, left, height, width) < 0 or top + height > H or left + width > W:
            raise DataError(f"region (top={top}, left={left}, height={height}, width={width}) "
                            f"does not fit in {H}×{W} images; expected 0 <= top, "
                            "top + height <= H, 0 <= left, left + width <= W")
    mask = np.zeros(x.shape, bool)
    mask[:, top:top + height, left:left + width] = True
    out = np.where(mask, np.asarray(fill, x.dtype), x)
    if flat_shape is not None:
        out, mask = out.reshape(flat_shape), mask.reshape(flat_shape)
    return Corrupted(out, mask)


CORRUPTIONS = ("gaussian", "salt_and_pepper", "mask_random", "mask_region", "mask_bottom")


def corrupt(x, kind: str, level, rng=None, *, fill: float = 0.0, image_shape=None) -> Corrupted:
    """Apply one corruption by name; ``level`` is its strength.

    ====================  =====================================================  ===========
    kind                  level                                                  needs rng
    ====================  =====================================================  ===========
    ``gaussian``          noise standard deviation ``sigma``                     yes
    ``salt_and_pepper``   fraction of values set to 0 or 1                       yes
    ``mask_random``       fraction of values set to ``fill``                     yes
    ``mask_region``       a region for :func:`mask_region` (name or tuple)       no
    ``mask_bottom``       fraction of image rows hidden from the bottom          no
    ====================  =====================================================  ===========

    ``image_shape`` lets the region masks work on flat ``(n, D)`` batches.
    """
    if kind == "gaussian":
        return gaussian_noise(x, level, rng)
    if kind == "salt_and_pepper":
        return salt_and_pepper(x, level, rng)
    if kind == "mask_random":
        return mask_random(x, level, rng, fill=fill)
    if kind == "mask_region":
        return mask_region(x, level, fill=fill, image_shape=image_shape)
    if kind == "mask_bottom":
        level = _fraction(level, "mask_bottom")
        shape = tuple(image_shape) if image_shape is not None else np.shape(x)[1:]
        if len(shape) not in (2, 3):
            raise DataError(f"mask_bottom needs images (n, H, W[, C]) or image_shape; got "
                            f"shape {np.shape(x)}")
        H, W = shape[0], shape[1]
        rows = int(round(level * H))
        return mask_region(x, (H - rows, 0, rows, W), fill=fill, image_shape=image_shape)
    raise DataError(f"unknown corruption kind {kind!r}; expected one of {', '.join(CORRUPTIONS)}")


def psnr(clean, restored, max_val: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio per example, in dB: ``10 log10(max_val² / MSE)``.

    ``clean``, ``restored``: the same shape ``(n, ...)``; the MSE is taken over all but the
    first axis, giving shape ``(n,)`` (a 1-D pair counts as one example and gives a scalar).
    ``inf`` where the restoration is exact.
    """
    clean = np.asarray(clean, np.float64)
    restored = np.asarray(restored, np.float64)
    if clean.shape != restored.shape:
        raise DataError(f"psnr: clean has shape {clean.shape} but restored {restored.shape}; "
                        "expected the same")
    if clean.ndim == 0:
        raise DataError("psnr needs arrays of shape (n, ...) or (D,); got scalars")
    axes = tuple(range(1, clean.ndim)) if clean.ndim > 1 else None
    mse = np.mean((clean - restored) ** 2, axis=axes)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(max_val**2 / mse)
