"""Augmentation: random translations, rotations and zooms of a batch of images.

Each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) gets its own random transform, drawn from
an explicit ``np.random.Generator`` or integer seed; pixels that come from outside the image are
zero. The labels are left alone: these are the classical augmentations of MNIST-like data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import DataError, as_batch, as_rng


def _image_batch(x, what: str) -> np.ndarray:
    x = as_batch(x, what)
    if x.ndim not in (3, 4):
        raise DataError(f"{what} needs images (n, H, W) or (n, H, W, C); got shape {x.shape}")
    return x


def random_shift(x, max_shift: int, rng) -> np.ndarray:
    """Translate each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) by its own random
    offset of ``−max_shift … max_shift`` pixels along each axis, filling with zeros:
    the classical augmentation of MNIST-like data (pen strokes move, labels do not).

    ``rng``: a ``np.random.Generator`` or an integer seed. Returns a new array of ``x``'s shape;
    raises :class:`DataError` for a batch that is not images, a negative ``max_shift`` or one
    not smaller than the image."""
    x = _image_batch(x, "random_shift")
    s = int(max_shift)
    if s < 0 or s >= min(x.shape[1:3]):
        raise DataError(f"random_shift: max_shift must be in [0, {min(x.shape[1:3]) - 1}] for "
                        f"{x.shape[1]}×{x.shape[2]} images; got {max_shift}")
    rng = as_rng(rng)
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
    distortions, without the shear).

    Output pixel ``p`` (relative to the centre ``((H−1)/2, (W−1)/2)``) reads the input at
    ``R(−θ) p / zoom``. ``rng``: a ``np.random.Generator`` or an integer seed. Returns a new
    array of ``x``'s shape; raises :class:`DataError` for a batch that is not images,
    ``max_rotation`` outside ``[0, 180]`` or ``max_zoom`` outside ``[0, 1)``.
    """
    x = _image_batch(x, "random_affine")
    if not (0.0 <= max_rotation <= 180.0 and 0.0 <= max_zoom < 1.0):
        raise DataError(f"random_affine: need 0 <= max_rotation <= 180 and 0 <= max_zoom < 1; "
                        f"got {max_rotation}, {max_zoom}")
    rng = as_rng(rng)
    n, h, w = x.shape[:3]
    theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    zoom = 1.0 + rng.uniform(-max_zoom, max_zoom, n)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    r, c = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    cos, sin = (np.cos(theta) / zoom)[:, None, None], (np.sin(theta) / zoom)[:, None, None]
    ys = cos * r + sin * c + cy
    xs = -sin * r + cos * c + cx
    # One interpolation per channel over the whole batch: the batch coordinate is a whole
    # number, so only rows and columns are interpolated; "grid-constant" interpolates against
    # the zeros beyond the edge, as bilinear sampling of a zero-padded image does.
    coords = np.stack([np.broadcast_to(np.arange(n)[:, None, None], ys.shape), ys, xs])
    channels = x.reshape(n, h, w, -1)
    out = np.stack([ndimage.map_coordinates(channels[..., k], coords, order=1,
                                            mode="grid-constant", cval=0.0)
                    for k in range(channels.shape[-1])], axis=-1)
    return out.reshape(x.shape)
