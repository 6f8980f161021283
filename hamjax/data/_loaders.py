"""The scikit-learn digits (bundled) and the datasets in MNIST's four-IDX-file layout.

Each returns a :class:`Dataset` of ``float32`` images in ``[0, 1]`` and ``int32`` labels.
Nothing is downloaded: MNIST, Fashion-MNIST and any other set in the same layout are read by one
function, :func:`load_idx_dataset`, from a directory holding the four IDX files, each raw or
gzip-compressed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ._checks import DataError, DataFileNotFoundError, as_dir, as_limit, listing
from ._dataset import Dataset
from ._idx import read_idx
from ._split import split_indices


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images, bunch.target


def load_digits(test_fraction: float = 0.2, seed: int = 0, limit_train: int | None = None,
                limit_test: int | None = None) -> Dataset:
    """The scikit-learn digits: 1,797 images of 8×8 pixels, 10 classes, bundled (no download).

    Pixel intensities 0..16 are scaled to ``[0, 1]``; images have shape ``(n, 8, 8, 1)``. The
    split is stratified by class and determined by ``seed`` (see :func:`split_indices`); with
    the defaults 1,438 training and 359 test images. ``limit_train`` / ``limit_test`` keep at
    most the first that many examples of each part (after the split).
    """
    limit_train = as_limit(limit_train, "limit_train")
    limit_test = as_limit(limit_test, "limit_test")
    images, target = _digits_arrays()
    train, test = split_indices(target, test_fraction, seed, stratify=True)
    train, test = train[:limit_train], test[:limit_test]
    x = (images.astype(np.float32) / 16.0)[..., None]
    y = target.astype(np.int32)
    return Dataset(x[train], y[train], x[test], y[test], (8, 8, 1), 10, "digits",
                   tuple(str(k) for k in range(10)))


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The standard names of the four IDX files of MNIST (and of Fashion-MNIST, which keeps them),
which :func:`load_idx_dataset` looks for; each may also end in ``.gz``."""

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Fashion-MNIST's ten class names, ``FASHION_MNIST_CLASSES[k]`` for label ``k``."""


def _find_idx_file(data_dir: Path, base: str, what: str) -> Path:
    """``data_dir/base`` or ``data_dir/base.gz`` (the raw file first); failing those, the one
    file whose name ends in ``-base`` or ``-base.gz`` (e.g. ``emnist-letters-`` + ``base``)."""
    for path in (data_dir / base, data_dir / (base + ".gz")):
        if path.is_file():
            return path
    prefixed = sorted(p for p in data_dir.iterdir()
                      if p.is_file() and p.name.endswith((f"-{base}", f"-{base}.gz")))
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise DataError(f"{what} in {data_dir}: {len(prefixed)} files end in {base}: "
                        f"{', '.join(p.name for p in prefixed)}; expected one (move the others "
                        "away)")
    raise DataFileNotFoundError(
        f"{what} file missing in {data_dir}: expected {base} or {base}.gz "
        f"(the standard names are {', '.join(MNIST_FILES.values())}, each raw or .gz); "
        f"the directory holds: {listing(data_dir)}"
    )


def load_idx_dataset(data_dir, *, name: str = "idx", class_names=None,
                     num_classes: int | None = None, limit_train: int | None = None,
                     limit_test: int | None = None) -> Dataset:
    """A dataset in MNIST's layout: a directory holding four IDX files, each raw or ``.gz``.

    The files are :data:`MNIST_FILES` (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``); where a standard name is absent,
    the one file ending in ``-`` plus that name is read (EMNIST's
    ``emnist-letters-train-images-idx3-ubyte.gz``, say). Where both ``name`` and ``name.gz``
    exist the raw file is read. Images: ``uint8`` of shape ``(n, H, W)`` (grey) or
    ``(n, H, W, C)`` with ``C`` 1 or 3, scaled from 0..255 to ``float32`` in ``[0, 1]``, shape
    ``(n, H, W, C)``; labels: ``uint8``, returned as ``int32``.

    ``num_classes`` is ``len(class_names)`` when names are given, else the given number, else
    the largest label plus one. ``limit_train`` / ``limit_test`` keep at most the first that
    many examples of each part (the files are still read and validated in full). ``name``
    names the dataset.

    Every file is checked: magic number (``0x0000080D`` for ``D``-dimensional ``uint8``), byte
    count against the header's dimensions, labels below ``num_classes``, and images against
    labels in number; any failure raises :class:`DataError` naming the file and what was
    expected; a missing directory or file raises :class:`DataFileNotFoundError`.
    """
    return _idx_dataset(data_dir, name, "IDX dataset" if name == "idx" else name, class_names,
                        num_classes, limit_train, limit_test, image_ndim=None)


def _idx_dataset(data_dir, name: str, what: str, class_names, num_classes, limit_train,
                 limit_test, image_ndim: int | None) -> Dataset:
    """:func:`load_idx_dataset`'s work; ``what`` names the dataset in errors, ``image_ndim``
    (when given) is the dimension count the image files' magic numbers must state."""
    data_dir = as_dir(data_dir, what, f"{', '.join(MNIST_FILES.values())} (raw or .gz)")
    limits = {"train": as_limit(limit_train, "limit_train"),
              "test": as_limit(limit_test, "limit_test")}
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise DataError(f"load_idx_dataset: num_classes={num_classes} but "
                            f"{len(class_names)} class_names; give one or make them agree")
        num_classes = len(class_names)
    parts, paths = {}, {}
    for part in ("train", "test"):
        img_path = _find_idx_file(data_dir, MNIST_FILES[f"{part}_images"], what)
        lab_path = _find_idx_file(data_dir, MNIST_FILES[f"{part}_labels"], what)
        images = read_idx(img_path, dtype=np.uint8, ndim=image_ndim)
        if images.ndim == 3:
            images = images[..., None]
        elif images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(f"{img_path}: images of shape {images.shape}; expected (n, H, W) "
                            "or (n, H, W, C) with C = 1 or 3")
        labels = read_idx(lab_path, dtype=np.uint8, ndim=1)
        if len(images) != len(labels):
            raise DataError(f"{what} {part} count mismatch: {img_path} holds {len(images)} "
                            f"images but {lab_path} holds {len(labels)} labels; expected equal "
                            "counts")
        parts[part], paths[part] = (images, labels), lab_path
    if num_classes is None:
        num_classes = 1 + max(int(lab.max(initial=0)) for _, lab in parts.values())
    for part, (_, labels) in parts.items():
        if labels.size and labels.max() >= num_classes:
            raise DataError(f"{paths[part]}: labels must lie in 0..{num_classes - 1}; found "
                            f"{labels.max()}")
    out = {}
    for part, (images, labels) in parts.items():
        images, labels = images[:limits[part]], labels[:limits[part]]
        x = images.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        out[part] = (x, labels.astype(np.int32))
    (x_tr, y_tr), (x_te, y_te) = out["train"], out["test"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{what} images in {data_dir}: training images are {x_tr.shape[1:]} "
                        f"but test images {x_te.shape[1:]}; expected equal shapes")
    return Dataset(x_tr, y_tr, x_te, y_te, tuple(x_tr.shape[1:]), int(num_classes), name,
                   class_names)


def load_mnist(data_dir=None, limit_train: int | None = None,
               limit_test: int | None = None) -> Dataset:
    """MNIST from a directory holding the four standard IDX files, each raw or gzip-compressed.

    ``data_dir`` defaults to the environment variable ``HAMJAX_MNIST_DIR``. Read by
    :func:`load_idx_dataset`: images ``(n, 28, 28, 1)`` in ``[0, 1]``, labels ``int32`` in
    ``0..9`` (a label of 10 or more is a :class:`DataError`), class names ``"0"``..``"9"``.
    ``limit_train`` / ``limit_test`` keep at most the first that many examples of each part.
    """
    if data_dir is None:
        data_dir = os.environ.get("HAMJAX_MNIST_DIR")
        if not data_dir:
            raise DataError("load_mnist needs data_dir, a directory holding "
                            f"{', '.join(MNIST_FILES.values())} (raw or .gz), or the "
                            "environment variable HAMJAX_MNIST_DIR set to one")
    return _idx_dataset(data_dir, "mnist", "MNIST", [str(k) for k in range(10)], None,
                        limit_train, limit_test, image_ndim=3)


def load_fashion_mnist(data_dir, limit_train: int | None = None,
                       limit_test: int | None = None) -> Dataset:
    """Fashion-MNIST (Zalando's 28×28 grey images of clothing, 60,000 training and 10,000
    test images) from a directory holding its four IDX files, raw or gzip-compressed, under
    MNIST's file names (:data:`MNIST_FILES`, as Fashion-MNIST ships them).

    Read by :func:`load_idx_dataset`: images ``(n, 28, 28, 1)`` in ``[0, 1]``, labels ``int32``
    in ``0..9`` named by :data:`FASHION_MNIST_CLASSES`. ``limit_train`` / ``limit_test`` keep at
    most the first that many examples of each part.
    """
    return _idx_dataset(data_dir, "fashion-mnist", "Fashion-MNIST", FASHION_MNIST_CLASSES, None,
                        limit_train, limit_test, image_ndim=3)
