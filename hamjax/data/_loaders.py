"""The named datasets: the scikit-learn digits (bundled) and MNIST from its IDX files.

Both return a :class:`Dataset` of ``float32`` images in ``[0, 1]``, shape ``(n, H, W, 1)``, and
``int32`` labels ``0..9``. Nothing is downloaded: MNIST is read from a directory holding the
four standard IDX files, each raw or gzip-compressed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ._checks import DataError, DataFileNotFoundError
from ._dataset import Dataset
from ._idx import read_idx
from ._split import split_indices

DATASETS = ("digits", "mnist")
"""The dataset names :func:`load_dataset` accepts."""


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
"""The standard names of MNIST's four IDX files, which :func:`load_mnist` looks for (each may
also end in ``.gz``)."""


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
