"""The Dataset container, its reshaping helpers, and building one from arrays.

A :class:`Dataset` holds ``float32`` images in ``[0, 1]`` of shape ``(n, H, W, C)`` (NHWC) and
``int32`` labels in ``[0, num_classes)``, split into a training and a test part.
:func:`from_arrays` validates and scales any NumPy arrays into one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._checks import DataError, as_labels
from ._split import split_indices


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
        name: the dataset's name: ``"digits"``, ``"mnist"``, ``"cifar10"``, ..., or the name
            given to :func:`from_arrays`.
        class_names: the name of each class, ``class_names[k]`` for label ``k`` (a tuple of
            ``num_classes`` strings), or ``None`` where the source names none.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, ...]
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise DataError(f"Dataset {self.name!r}: {len(names)} class names for "
                                f"{self.num_classes} classes; expected one name per class")
            object.__setattr__(self, "class_names", names)
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
        """The number of training examples, ``n_train``."""
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        """The number of test examples, ``n_test``."""
        return len(self.x_test)

    @property
    def num_features(self) -> int:
        """``H * W * C``: the length of one flattened image."""
        return math.prod(self.image_shape)

    def flat(self) -> Dataset:
        """The same data with images flattened to ``(n, H * W * C)``; ``image_shape`` is kept.

        Returns a new :class:`Dataset` (labels shared, images reshaped)."""
        return dataclasses.replace(
            self, x_train=flatten(self.x_train), x_test=flatten(self.x_test)
        )

    def images(self) -> Dataset:
        """The same data with images in their ``(n, *image_shape)`` shape (undoes :meth:`flat`).

        Returns a new :class:`Dataset` (labels shared, images reshaped)."""
        return dataclasses.replace(
            self,
            x_train=unflatten(self.x_train, self.image_shape),
            x_test=unflatten(self.x_test, self.image_shape),
        )

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, "
                f"x_test={self.x_test.shape}, image_shape={tuple(self.image_shape)}, "
                f"num_classes={self.num_classes})")

    def label_name(self, label: int) -> str:
        """The name of class ``label``: ``class_names[label]``, or the number as text where
        the dataset names no classes."""
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise DataError(f"Dataset {self.name!r}: label {label} is not in "
                            f"[0, {self.num_classes})")
        return self.class_names[label] if self.class_names is not None else str(label)


def flatten(x) -> np.ndarray:
    """``(n, ...)`` → ``(n, D)`` with ``D`` the product of the trailing dimensions.

    Returns a NumPy array (a view where possible); raises :class:`DataError` for a scalar."""
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"flatten needs a batch (n, ...); got a scalar of shape {x.shape}")
    return x.reshape(len(x), -1)


def unflatten(x, image_shape) -> np.ndarray:
    """``(n, D)`` (or ``(n, *image_shape)``) → ``(n, *image_shape)``.

    Returns a NumPy array; raises :class:`DataError` when an example does not hold
    ``prod(image_shape)`` values."""
    x = np.asarray(x)
    image_shape = tuple(int(s) for s in image_shape)
    if x.ndim < 1 or math.prod(x.shape[1:]) != math.prod(image_shape):
        raise DataError(f"cannot reshape an array of shape {x.shape} to (n, *{image_shape}): "
                        f"expected {math.prod(image_shape)} values per example")
    return x.reshape((len(x), *image_shape))


def one_hot(y, num_classes: int, dtype=np.float32) -> np.ndarray:
    """Class indices ``(...)`` in ``[0, num_classes)`` → one-hot ``(..., num_classes)``.

    ``dtype`` (default ``float32``) is the output's. Raises :class:`DataError` for non-integer
    labels, a non-positive ``num_classes`` or a label outside ``[0, num_classes)``."""
    y = as_labels(y, "y")
    if num_classes < 1:
        raise DataError(f"num_classes must be positive; got {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}); got values from {y.min()} to "
                        f"{y.max()}")
    return np.eye(num_classes, dtype=dtype)[y]


def from_arrays(x_train, y_train, x_test=None, y_test=None, *, test_fraction: float = 0.2,
                seed: int = 0, image_shape=None, num_classes: int | None = None,
                stratify: bool = True, name: str = "arrays", class_names=None) -> Dataset:
    """A :class:`Dataset` from NumPy arrays.

    ``x``: shape ``(n, H, W)`` (a channel axis is added), ``(n, H, W, C)`` or ``(n, D)``
    (reshaped to ``(n, *image_shape)`` when ``image_shape`` is given, else kept flat with
    ``image_shape = (D,)``). ``uint8`` values are scaled from 0..255 to ``[0, 1]``; any other
    numeric values must already lie in ``[0, 1]``. Stored as ``float32``.
    ``y``: integer class indices ``>= 0``, shape ``(n,)``; ``num_classes`` defaults to the
    number of ``class_names`` when given, else to the largest label plus one.
    Without ``x_test``/``y_test`` the training arrays are split by :func:`split_indices`
    (``test_fraction``, ``seed``, ``stratify``). ``name`` names the dataset; ``class_names``
    (optional) names each of the ``num_classes`` classes.

    Raises :class:`DataError` for a bad shape, an empty array, non-finite or out-of-range
    values, labels that do not match the images, only one of ``x_test``/``y_test``, a label
    not below ``num_classes``, or ``class_names`` not one per class.
    """
    if (x_test is None) != (y_test is None):
        raise DataError("from_arrays: give both x_test and y_test, or neither (then the "
                        "training arrays are split by test_fraction)")
    x_tr = _images(x_train, "x_train", image_shape)
    y_tr = as_labels(y_train, "y_train", expected_len=len(x_tr))
    if x_test is None:
        train, test = split_indices(y_tr, test_fraction, seed, stratify=stratify)
        x_tr, y_tr, x_te, y_te = x_tr[train], y_tr[train], x_tr[test], y_tr[test]
    else:
        x_te = _images(x_test, "x_test", image_shape)
        y_te = as_labels(y_test, "y_test", expected_len=len(x_te))
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise DataError(f"from_arrays: x_test examples have shape {x_te.shape[1:]} but "
                            f"x_train examples {x_tr.shape[1:]}; expected the same")
    top = max(int(y_tr.max(initial=-1)), int(y_te.max(initial=-1)))
    if num_classes is None:
        num_classes = top + 1 if class_names is None else len(class_names)
    if top >= num_classes:
        raise DataError(f"from_arrays: num_classes={num_classes} but a label is {top}; labels "
                        f"must lie in [0, {num_classes})")
    return Dataset(x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32),
                   tuple(x_tr.shape[1:]), int(num_classes), name,
                   None if class_names is None else tuple(class_names))


def _images(x, what: str, image_shape) -> np.ndarray:
    """``x`` validated and scaled to ``float32`` in ``[0, 1]``, NHWC or reshaped to
    ``(n, *image_shape)``."""
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
