"""Basins of attraction of an associative memory: how much corruption a memory survives
(docs/maths.md §6.3, eq. (B1)).

For memories ``ξ_μ`` (rows of ``memories``, ``(M, N)``) and a retrieval map ``R`` (run the
dynamics from a start to where they settle), the memory's attractor is ``a_μ = R(ξ_μ)``; the
basin curve is, per corruption level ``ℓ``,

    P_μ(ℓ) = Pr[ R(corrupt(ξ_μ, ℓ)) ends at a_μ ]

estimated over ``trials`` corruptions, with its average over the memories and the radius at
which it falls below one half. How close ``a_μ`` is to ``ξ_μ`` is measured too: above a
memory's capacity its attractor is no longer the memory (classical Hopfield beyond ≈ 0.138 N
patterns), and a basin around a spurious attractor is not a retrieval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


class Basins(eqx.Module):
    """The basin curves measured by :func:`basins` (NumPy arrays; ``L`` levels, ``M`` memories).

    * ``levels``: ``(L,)`` the corruption levels, increasing;
    * ``returned``: ``(L, M)`` per level and memory, the fraction of trials whose relaxation
      ended at the memory's attractor;
    * ``mean``: ``(L,)`` that fraction averaged over the memories;
    * ``radius``: ``(M,)`` per memory, the level at which ``returned`` first falls below one
      half, interpolated linearly between the two levels around it; ``inf`` where it stays at
      or above one half over every level measured (the radius is beyond them), ``0`` where it
      is below one half at the first level;
    * ``mean_radius``: the same for the average curve ``mean``;
    * ``attractor_error``: ``(M,)`` the root-mean-square distance ``rms(a_μ − ξ_μ)`` of each
      memory's attractor from the memory (0: the memory is a fixed point; large: the memory is
      not retrieved, whatever its basin);
    * ``trials``: corruptions per memory and level."""

    levels: np.ndarray
    returned: np.ndarray
    mean: np.ndarray
    radius: np.ndarray
    mean_radius: float
    attractor_error: np.ndarray
    trials: int = eqx.field(static=True)


def half_radius(levels, fraction) -> np.ndarray:
    """The level at which ``fraction`` (``(L, ...)``, against increasing ``levels`` ``(L,)``)
    first falls below one half, linearly interpolated; ``inf`` where it never does, ``0`` where
    it does at the first level. Returns shape ``fraction.shape[1:]``."""
    levels = np.asarray(levels, dtype=float)
    p = np.asarray(fraction, dtype=float)
    flat = p.reshape(len(levels), -1)
    out = np.full(flat.shape[1], np.inf)
    for j in range(flat.shape[1]):
        below = np.nonzero(flat[:, j] < 0.5)[0]
        if below.size == 0:
            continue
        i = below[0]
        if i == 0:
            out[j] = 0.0
            continue
        p0, p1 = flat[i - 1, j], flat[i, j]
        out[j] = levels[i - 1] + (p0 - 0.5) / (p0 - p1) * (levels[i] - levels[i - 1])
    return out.reshape(p.shape[1:])


def basins(retrieve: Callable[[Array, Array], Array], memories, levels: Sequence[float], *,
           corrupt: Callable[[Array, float, Array], Array], key, trials: int = 16,
           atol: float = 0.0) -> Basins:
    """Measure the basin of attraction of each memory against the corruption level
    (docs/maths.md §6.3, eq. (B1)).

    ``retrieve(x, key) -> final``: the dynamics run from the starts ``x`` (``(B, N)``) to where
    they settle, same shape (``key``: for random update orders; a deterministic map ignores
    it). ``corrupt(x, level, key) -> x'``: corrupt each row of ``x`` at ``level`` (e.g.
    :func:`hamjax.capacity.flip_fraction` for ±1 memories). ``memories``: ``(M, N)``;
    ``levels``: increasing. A relaxation *ends at* the attractor ``a_μ = retrieve(ξ_μ)`` when
    ``rms(final − a_μ) ≤ atol`` (``atol=0``: exactly, for binary states).

    Returns a :class:`Basins`. ``ValueError`` for levels that are not increasing, ``trials <
    1`` or memories that are not ``(M, N)``."""
    memories = jnp.asarray(memories, dtype=jnp.float32)
    levels = np.asarray(levels, dtype=float)
    if memories.ndim != 2:
        raise ValueError(f"memories must be (M, N), got shape {memories.shape}")
    if levels.ndim != 1 or levels.size == 0 or np.any(np.diff(levels) <= 0):
        raise ValueError(f"levels must be a non-empty increasing sequence, got {levels}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    m = memories.shape[0]
    k_own, key = jax.random.split(key)
    attractors = retrieve(memories, k_own)
    starts = jnp.tile(memories, (trials, 1))  # (trials·M, N), memory μ at rows μ, M + μ, ...
    targets = jnp.tile(attractors, (trials, 1))
    returned = np.zeros((len(levels), m))
    for i, level in enumerate(levels):
        k_c, k_r = jax.random.split(jax.random.fold_in(key, i))
        final = retrieve(corrupt(starts, float(level), k_c), k_r)
        err = jnp.sqrt(jnp.mean((final - targets) ** 2, axis=-1))
        returned[i] = np.asarray(err <= atol).reshape(trials, m).mean(axis=0)
    mean = returned.mean(axis=1)
    own_error = np.asarray(jnp.sqrt(jnp.mean((attractors - memories) ** 2, axis=-1)))
    return Basins(levels=levels, returned=returned, mean=mean,
                  radius=half_radius(levels, returned), mean_radius=float(half_radius(levels,
                                                                                      mean)),
                  attractor_error=own_error, trials=trials)
