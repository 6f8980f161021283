"""Augmentation: random translations, rotations, zooms, elastic distortions and mirror images
of a batch of images.

Each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) gets its own random transform, drawn from
an explicit ``np.random.Generator`` or integer seed, or from a sequence of ``n`` generators, one
per image: image ``i`` then gets exactly what a call with image ``i`` alone and generator ``i``
would give, while the interpolation runs once over the batch (how :func:`hamjax.train.fit`
prepares each sample with its own generator at the cost of one batched call). Pixels that come
from outside the image are zero. The labels are left alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import DataError, as_batch, as_rng


def per_image(rng, n: int, draw, axis: int = 0) -> np.ndarray:
    """Random numbers for ``n`` images: ``draw(generator, k)`` returns an array holding ``k``
    images' numbers along ``axis``. For one generator (or an integer seed) that is
    ``draw(rng, n)``; for a sequence of ``n`` generators, image ``i``'s numbers come from
    generator ``i`` alone (``draw(rng[i], 1)``, joined along ``axis``)."""
    if isinstance(rng, list | tuple):
        if len(rng) != n:
            raise DataError(f"got {len(rng)} generators for {n} images; give one per image")
        return np.concatenate([draw(as_rng(g), 1) for g in rng], axis=axis)
    return draw(as_rng(rng), n)


def _image_batch(x, what: str) -> np.ndarray:
    x = as_batch(x, what)
    if x.ndim not in (3, 4):
        raise DataError(f"{what} needs images (n, H, W) or (n, H, W, C); got shape {x.shape}")
    return x


def random_shift(x, rng, max_shift: int) -> np.ndarray:
    """Translate each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) by its own random
    offset of ``−max_shift … max_shift`` pixels along each axis, filling with zeros:
    the classical augmentation of MNIST-like data (pen strokes move, labels do not).

    ``rng``: a ``np.random.Generator``, an integer seed or one generator per image. Returns a new
    array of ``x``'s shape; raises :class:`DataError` for a batch that is not images, a negative
    ``max_shift``, one not smaller than the image, or one that is not an integer (the
    arguments come in :func:`random_affine`'s order: images, generator, then the setting)."""
    x = _image_batch(x, "random_shift")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int | np.integer):
        raise DataError(f"random_shift(x, rng, max_shift): max_shift must be an integer number "
                        f"of pixels, got {type(max_shift).__name__}")
    s = int(max_shift)
    if s < 0 or s >= min(x.shape[1:3]):
        raise DataError(f"random_shift: max_shift must be in [0, {min(x.shape[1:3]) - 1}] for "
                        f"{x.shape[1]}×{x.shape[2]} images; got {max_shift}")
    if s == 0:
        per_image(rng, len(x), lambda g, k: np.zeros((k,)))  # checks the generators
        return x.copy()
    h, w = x.shape[1:3]
    pad = [(0, 0), (s, s), (s, s)] + [(0, 0)] * (x.ndim - 3)
    padded = np.pad(x, pad)
    dy, dx = per_image(rng, len(x), lambda g, k: g.integers(-s, s + 1, size=(2, k)), axis=1)
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
    ``R(−θ) p / zoom``. ``rng``: a ``np.random.Generator``, an integer seed or one generator
    per image. Returns a new array of ``x``'s shape; raises :class:`DataError` for a batch that
    is not images,
    ``max_rotation`` outside ``[0, 180]`` or ``max_zoom`` outside ``[0, 1)``.
    """
    x = _image_batch(x, "random_affine")
    if not (0.0 <= max_rotation <= 180.0 and 0.0 <= max_zoom < 1.0):
        raise DataError(f"random_affine: need 0 <= max_rotation <= 180 and 0 <= max_zoom < 1; "
                        f"got {max_rotation}, {max_zoom}")
    n, h, w = x.shape[:3]
    theta = np.deg2rad(per_image(rng, n, lambda g, k: g.uniform(-max_rotation, max_rotation, k)))
    zoom = 1.0 + per_image(rng, n, lambda g, k: g.uniform(-max_zoom, max_zoom, k))
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


def random_elastic(x, rng, alpha: float, sigma: float = 4.0) -> np.ndarray:
    """Elastic distortion of each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``), Simard,
    Steinkraus & Platt (2003) §2: a random displacement field, each component uniform in
    ``[−1, 1]`` per pixel, smoothed by a Gaussian of standard deviation ``sigma`` pixels and
    scaled by ``alpha``; output pixel ``p`` reads the input at ``p + Δ(p)`` (bilinear, zeros
    outside). Simard et al. use ``sigma = 4``, ``alpha = 34`` on MNIST; ``alpha = 0`` leaves
    the images unchanged. The smoothing is normalised as ``scipy.ndimage.gaussian_filter``'s
    (a kernel summing to 1), as in their paper.

    ``rng``: a ``np.random.Generator``, an integer seed or one generator per image. Returns a new
    array of ``x``'s shape; raises :class:`DataError` for a batch that is not images or a
    negative ``alpha`` or non-positive ``sigma``."""
    x = _image_batch(x, "random_elastic")
    if not (alpha >= 0.0 and sigma > 0.0):
        raise DataError(f"random_elastic: need alpha >= 0 and sigma > 0; got {alpha}, {sigma}")
    n, h, w = x.shape[:3]
    if alpha == 0:
        per_image(rng, n, lambda g, k: np.zeros((k,)))  # checks the generators
        return x.copy()
    field = per_image(rng, n, lambda g, k: g.uniform(-1.0, 1.0, (2, k, h, w)), axis=1)
    # smooth each image's field over its rows and columns only (not across the batch)
    dy, dx = (alpha * ndimage.gaussian_filter(f, (0, sigma, sigma), mode="constant")
              for f in field)
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([np.broadcast_to(np.arange(n)[:, None, None], dy.shape), r + dy, c + dx])
    channels = x.reshape(n, h, w, -1)
    out = np.stack([ndimage.map_coordinates(channels[..., k], coords, order=1,
                                            mode="grid-constant", cval=0.0)
                    for k in range(channels.shape[-1])], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def random_flip(x, rng) -> np.ndarray:
    """Mirror each image of ``x`` (``(n, H, W)`` or ``(n, H, W, C)``) left to right with
    probability ½: the standard augmentation of Fashion-MNIST and CIFAR, whose classes are
    symmetric under it (not of digits: a mirrored 3 is no digit). ``rng``: a
    ``np.random.Generator``, an integer seed or one generator per image. Returns a new array of
    ``x``'s shape."""
    x = _image_batch(x, "random_flip")
    flip = per_image(rng, len(x), lambda g, k: g.random(k)) < 0.5
    out = x.copy()
    out[flip] = x[flip][:, :, ::-1]
    return out
