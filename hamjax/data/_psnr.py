"""Peak signal-to-noise ratio: how close a restored batch is to the clean one, in dB.

Written with ``jax.numpy`` so that the same function scores NumPy arrays and JAX arrays, also
inside ``jax.jit`` (the training tasks report it as a metric).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from ._checks import DataError


def psnr(clean, restored, max_val: float = 1.0) -> Array:
    """Peak signal-to-noise ratio per example, in dB: ``10 log10(max_val² / MSE)``.

    ``clean``, ``restored``: the same shape ``(n, ...)``; the MSE is taken over all but the
    first axis, giving shape ``(n,)`` (a 1-D pair counts as one example and gives a scalar).
    ``inf`` where the restoration is exact. Returns a JAX array (``float32`` unless 64-bit
    JAX is enabled).
    """
    clean, restored = jnp.asarray(clean), jnp.asarray(restored)
    if clean.shape != restored.shape:
        raise DataError(f"psnr: clean has shape {clean.shape} but restored {restored.shape}; "
                        "expected the same")
    if clean.ndim == 0:
        raise DataError("psnr needs arrays of shape (n, ...) or (D,); got scalars")
    axes = tuple(range(1, clean.ndim)) if clean.ndim > 1 else None
    mse = jnp.mean((clean - restored) ** 2, axis=axes)
    return 10.0 * jnp.log10(max_val**2 / mse)


QUANTISATION_MSE = (1.0 / 255.0) ** 2 / 12.0
"""The mean squared error of 8-bit quantisation noise, ``(1/255)²/12``: the floor of
:func:`capped_psnr`."""


def capped_psnr(mse) -> Array:
    """``10 log10(1 / max(MSE, (1/255)²/12))`` for pixels in ``[0, 1]``: at most 58.9 dB, the PSNR
    of 8-bit quantisation noise, so that a region restored exactly (a blank one, say) does not
    make a mean over images infinite. ``mse``: any shape; returns the same shape."""
    return -10.0 * jnp.log10(jnp.maximum(jnp.asarray(mse), QUANTISATION_MSE))
