"""Dividing examples: a seeded train/test split, and shuffled batches for an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ._checks import DataError, as_labels, as_rng


def split_indices(y, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """Deterministic train/test split of ``len(y)`` examples, as two ``int64`` index arrays.

    ``round(test_fraction * n)`` examples go to the test part. With ``stratify`` each class
    contributes in proportion to its size (largest remainders decide the rounding), so class
    proportions agree between the parts to within one example per class. Both index arrays are
    in a shuffled order. The same ``(y, test_fraction, seed)`` always gives the same split.
    ``y``: ``(n,)`` integer labels. Raises :class:`DataError` for ``test_fraction`` outside
    ``(0, 1)`` or one that leaves either part empty.
    """
    # Not scikit-learn's train_test_split: it refuses a class of one example, and fewer test
    # (or training) examples than classes, where the proportional quota below is still well
    # defined.
    y = as_labels(y, "y")
    n = len(y)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction}")
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test <= n - 1:
        raise DataError(f"test_fraction={test_fraction} of {n} examples leaves "
                        f"{n_test} test and {n - n_test} training examples; both need at least 1")
    rng = as_rng(seed, "seed")
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


def batch_indices(n: int, batch_size: int = 128, seed: int = 0, epoch: int = 0,
                  drop_last: bool = False, shuffle: bool = True) -> list[np.ndarray]:
    """The example indices of each batch of one pass over ``n`` examples: ``int64`` arrays of
    ``batch_size`` (the last may be shorter, or is dropped when ``drop_last``).

    The order is a permutation drawn from ``(seed, epoch)``, or the stored order with
    ``shuffle=False``: the same arguments always give the same batches. :func:`batches` takes
    these indices from ``x``; a process of a multi-host run takes only its own rows of each.
    Raises :class:`DataError` for a negative ``n``, a non-positive ``batch_size`` or a negative
    ``seed``/``epoch``."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"n must be a non-negative integer; got {n!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
    for name, v in (("seed", seed), ("epoch", epoch)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise DataError(f"{name} must be a non-negative integer; got {v!r}")
    order = (np.random.default_rng((int(seed), int(epoch))).permutation(n) if shuffle
             else np.arange(n))
    stop = n - n % batch_size if drop_last else n
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]


def batches(x, y=None, batch_size: int = 128, seed: int = 0, epoch: int = 0,
            drop_last: bool = False, shuffle: bool = True) -> Iterator[tuple]:
    """Yield ``(x_batch, y_batch)`` pairs of NumPy arrays covering ``x`` once.

    The order is a permutation drawn from ``(seed, epoch)``: the same pair always gives the same
    batches, and each epoch a different order (:func:`batch_indices`). ``y`` may be ``None``
    (then ``y_batch`` is ``None``). The last, smaller batch is dropped when ``drop_last``. With
    ``shuffle=False`` the examples come in their stored order. ``x``: ``(n, ...)``, ``y``:
    ``(n, ...)``; batches are ``(batch_size, ...)``. Raises :class:`DataError` (when called, not
    on the first ``next``) for mismatched lengths, a non-positive ``batch_size`` or a negative
    ``seed``/``epoch``.
    """
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"batches needs x of shape (n, ...); got shape {x.shape}")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise DataError(f"batches: x holds {len(x)} examples but y holds {len(y)}")
    # the checks run here, when batches() is called, not on the first next()
    parts = batch_indices(len(x), batch_size, seed, epoch, drop_last, shuffle)
    return ((x[idx], None if y is None else y[idx]) for idx in parts)
