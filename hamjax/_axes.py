"""Per-sample reductions: a layer's state is ``(*batch, *shape)``, and every per-sample quantity
(an energy, a norm, a finiteness flag) reduces its trailing ``len(shape)`` axes."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array


def trailing(v: Array, ndim: int | None) -> tuple[int, ...]:
    """The last ``ndim`` axes of ``v`` (all of them when ``ndim`` is None)."""
    return tuple(range(0 if ndim is None else v.ndim - ndim, v.ndim))


def sum_trailing(v: Array, ndim: int | None) -> Array:
    """``Σ`` over the last ``ndim`` axes of ``v`` (all axes when None): one value per sample."""
    return jnp.sum(v, axis=trailing(v, ndim)) if ndim != 0 else v


def all_trailing(v: Array, ndim: int | None) -> Array:
    """``all`` over the last ``ndim`` axes of ``v``: one flag per sample."""
    return jnp.all(v, axis=trailing(v, ndim)) if ndim != 0 else v


def stacked(patterns, what: str = "patterns") -> Array:
    """``patterns`` as a float array with a leading pattern axis, ``(K, *pattern_shape)``: the
    memories of a Hopfield network or a dense associative memory. ``ValueError`` (naming
    ``what``) for fewer than two axes."""
    p = jnp.asarray(patterns, dtype=jnp.result_type(float))
    if p.ndim < 2:
        raise ValueError(f"{what} must have shape (K, *pattern_shape), got {p.shape}")
    return p
