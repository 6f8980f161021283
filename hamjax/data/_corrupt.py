"""Corruptions: noise and masks applied to a batch, returning the copy and where it changed.

Each corruption takes a batch ``x`` of shape ``(n, ...)`` with values in ``[0, 1]``, never modifies
it, and returns a :class:`Corrupted` pair ``(images, mask)``: the corrupted copy and a boolean
array of ``x``'s shape that is ``True`` where a value was corrupted or hidden (so ``~mask`` marks
the values a memory may trust). Randomness comes only from an explicit ``np.random.Generator`` or
integer seed. :func:`corrupt` dispatches by name.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._checks import DataError, as_batch, as_fraction, as_rng
from ._dataset import unflatten


class Corrupted(NamedTuple):
    """A corrupted batch and where it was corrupted.

    ``images``: same shape as the input, values in ``[0, 1]`` for inputs in ``[0, 1]``.
    ``mask``: bool, same shape, ``True`` where a value was corrupted or hidden.
    """

    images: np.ndarray
    mask: np.ndarray


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

    ``x``: ``(n, ...)``; ``rng``: a ``np.random.Generator`` or an integer seed. ``mask`` is all
    ``True`` for ``sigma > 0`` (every value is perturbed), all ``False`` for 0. Raises
    :class:`DataError` for a negative ``sigma`` or a missing ``rng``.
    """
    x = as_batch(x, "gaussian_noise")
    sigma = float(sigma)
    if not sigma >= 0.0:
        raise DataError(f"gaussian_noise: sigma must be >= 0; got {sigma}")
    rng = as_rng(rng)
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    noisy = x + (sigma * rng.standard_normal(x.shape, dtype=dt)).astype(x.dtype)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    return Corrupted(noisy, np.full(x.shape, sigma > 0.0))


def salt_and_pepper(x, fraction: float, rng) -> Corrupted:
    """Set exactly ``round(fraction * D)`` values of each example (``D`` values each) to 0 or 1,
    each with probability 1/2. ``mask`` marks the chosen values (some may keep their value when
    it was already 0 or 1).

    ``x``: ``(n, ...)``; ``rng``: a ``np.random.Generator`` or an integer seed. Raises
    :class:`DataError` for a fraction outside ``[0, 1]`` or a missing ``rng``."""
    x = as_batch(x, "salt_and_pepper")
    fraction = as_fraction(fraction, "salt_and_pepper")
    rng = as_rng(rng)
    mask = _random_elements(x.shape, fraction, rng)
    out = x.copy()
    out[mask] = (rng.random(int(mask.sum())) < 0.5).astype(x.dtype)
    return Corrupted(out, mask)


def mask_random(x, fraction: float, rng, fill: float = 0.0) -> Corrupted:
    """Hide exactly ``round(fraction * D)`` values of each example (``D`` values each), chosen
    uniformly, by setting them to ``fill``. ``mask`` marks the hidden values.

    ``x``: ``(n, ...)``; ``rng``: a ``np.random.Generator`` or an integer seed. Raises
    :class:`DataError` for a fraction outside ``[0, 1]`` or a missing ``rng``."""
    x = as_batch(x, "mask_random")
    fraction = as_fraction(fraction, "mask_random")
    mask = _random_elements(x.shape, fraction, as_rng(rng))
    return Corrupted(np.where(mask, np.asarray(fill, x.dtype), x), mask)


def _masked_images(x, image_shape, who: str) -> tuple[np.ndarray, tuple | None]:
    """``(images (n, H, W[, C]), the flat shape to return to or None)`` of a region or patch
    mask's input: images, or flat ``(n, D)`` with ``image_shape``. ``DataError`` otherwise."""
    x = as_batch(x, who)
    flat_shape = None
    if image_shape is not None:
        flat_shape = x.shape
        x = unflatten(x, image_shape)
    if x.ndim not in (3, 4):
        raise DataError(f"{who} needs images of shape (n, H, W) or (n, H, W, C), or flat "
                        f"(n, D) with image_shape=(H, W[, C]); got shape {x.shape}")
    return x, flat_shape


REGIONS = ("bottom_half", "top_half", "left_half", "right_half", "center")
"""The named regions :func:`mask_region` hides: halves of the image and the central box."""


def mask_region(x, region="bottom_half", fill: float = 0.0, image_shape=None) -> Corrupted:
    """Hide a rectangle of every image by setting it to ``fill``.

    ``x``: images ``(n, H, W)`` or ``(n, H, W, C)``, or flat ``(n, D)`` with ``image_shape``
    ``(H, W)`` or ``(H, W, C)`` given (the result is flat again). ``region``: one of
    ``"bottom_half"`` (rows ``H // 2`` to ``H``), ``"top_half"``, ``"left_half"``,
    ``"right_half"``, ``"center"`` (the central ``H // 2 × W // 2`` box), or a tuple
    ``(top, left, height, width)`` in pixels that lies inside the image. All channels of a
    hidden pixel are hidden. ``mask`` is ``True`` on the hidden values. Raises
    :class:`DataError` for an unknown region, a box outside the image, or a batch that is not
    images.
    """
    x, flat_shape = _masked_images(x, image_shape, "mask_region")
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


def mask_patches(x, fraction: float, rng, patch: int = 4, fill: float = 0.0,
                 image_shape=None) -> Corrupted:
    """Hide exactly ``round(fraction * T)`` of the ``T = (H/p)(W/p)`` square ``p × p`` patches
    of each image (``p = patch``), chosen uniformly, by setting them to ``fill``: the masked
    patches of a masked autoencoder or the Energy Transformer, as pixels.

    ``x``: images ``(n, H, W)`` or ``(n, H, W, C)``, or flat ``(n, D)`` with ``image_shape``
    given (the result is flat again); all channels of a hidden pixel are hidden; ``mask`` is
    ``True`` on the hidden values. Raises :class:`DataError` for a fraction outside ``[0, 1]``,
    a patch that does not tile the image, or a missing ``rng``."""
    x, flat_shape = _masked_images(x, image_shape, "mask_patches")
    fraction = as_fraction(fraction, "mask_patches")
    n, H, W = x.shape[:3]
    if patch < 1 or H % patch or W % patch:
        raise DataError(f"mask_patches: {patch}x{patch} patches do not tile {H}x{W} images")
    grid = _random_elements((n, H // patch, W // patch), fraction, as_rng(rng))
    mask = np.repeat(np.repeat(grid, patch, axis=1), patch, axis=2)
    mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 3)), x.shape)
    out = np.where(mask, np.asarray(fill, x.dtype), x)
    if flat_shape is not None:
        out, mask = out.reshape(flat_shape), mask.reshape(flat_shape)
    return Corrupted(out, np.array(mask))


CORRUPTIONS = ("gaussian", "salt_and_pepper", "mask_random", "mask_patches", "mask_region",
               "mask_bottom")
"""The corruption kinds :func:`corrupt` dispatches on (and the tasks of :mod:`hamjax.train`
accept)."""


def corrupt(x, kind: str, level, rng=None, *, fill: float = 0.0, image_shape=None,
            patch: int = 4) -> Corrupted:
    """Apply one corruption by name; ``level`` is its strength.

    ====================  =====================================================  ===========
    kind                  level                                                  needs rng
    ====================  =====================================================  ===========
    ``gaussian``          noise standard deviation ``sigma``                     yes
    ``salt_and_pepper``   fraction of values set to 0 or 1                       yes
    ``mask_random``       fraction of values set to ``fill``                     yes
    ``mask_patches``      fraction of ``patch × patch`` patches set to ``fill``  yes
    ``mask_region``       a region for :func:`mask_region` (name or tuple)       no
    ``mask_bottom``       fraction of image rows hidden from the bottom          no
    ====================  =====================================================  ===========

    ``image_shape`` lets the region and patch masks work on flat ``(n, D)`` batches; ``fill`` is
    the value of hidden entries; ``patch`` the side of ``mask_patches``'s patches. Returns a
    :class:`Corrupted` pair; raises :class:`DataError` for an unknown ``kind`` (the kinds are
    :data:`CORRUPTIONS`) or a bad level.
    """
    if kind == "gaussian":
        return gaussian_noise(x, level, rng)
    if kind == "salt_and_pepper":
        return salt_and_pepper(x, level, rng)
    if kind == "mask_random":
        return mask_random(x, level, rng, fill=fill)
    if kind == "mask_patches":
        return mask_patches(x, level, rng, patch=patch, fill=fill, image_shape=image_shape)
    if kind == "mask_region":
        return mask_region(x, level, fill=fill, image_shape=image_shape)
    if kind == "mask_bottom":
        level = as_fraction(level, "mask_bottom")
        shape = tuple(image_shape) if image_shape is not None else np.shape(x)[1:]
        if len(shape) not in (2, 3):
            raise DataError(f"mask_bottom needs images (n, H, W[, C]) or image_shape; got "
                            f"shape {np.shape(x)}")
        H, W = shape[0], shape[1]
        rows = int(round(level * H))
        return mask_region(x, (H - rows, 0, rows, W), fill=fill, image_shape=image_shape)
    raise DataError(f"unknown corruption kind {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
