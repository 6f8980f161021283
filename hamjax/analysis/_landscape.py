"""Energy landscapes: a scalar function of the state on a 2-D plane through a point, with the
vector field projected onto the plane (the picture of the dead-neurons paper's Figure 1, for a
network of any size)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

State = Mapping[str, Array]


class Slice(eqx.Module):
    """A function on the plane ``x* + a·u + b·v`` (:func:`energy_slice`; NumPy arrays):

    * ``a``, ``b``: ``(grid,)`` the coordinates along ``u`` and ``v``;
    * ``values``: ``(grid, grid)`` the function, rows along ``b``, columns along ``a`` (as
      ``matplotlib``'s ``contour(a, b, values)`` takes it);
    * ``field``: ``(2, grid, grid)`` the vector field's components along ``u`` and ``v``
      (``⟨ẋ, u⟩``, ``⟨ẋ, v⟩``), or ``None``;
    * ``u``, ``v``: the orthonormal directions (flattened over the state's leaves, in
      ``jax.tree`` order); ``v`` is the given second direction made orthogonal to ``u``."""

    a: np.ndarray
    b: np.ndarray
    values: np.ndarray
    field: np.ndarray | None
    u: np.ndarray
    v: np.ndarray


def energy_slice(fn: Callable[[State], Array], x_star: State, d1: State, d2: State, *,
                 extent: float | tuple[float, float, float, float] = 1.0, grid: int = 41,
                 vector_field: Callable[[State], State] | None = None) -> Slice:
    """Evaluate ``fn`` (a state ``{name: array}`` → scalar: an energy, a residual energy) on the
    plane through ``x_star`` spanned by ``d1`` and ``d2`` (states of ``x_star``'s structure,
    unbatched), and project ``vector_field`` (state → state, e.g. ``net.dynamics(...)``) onto
    it.

    The directions are made orthonormal (``u = d1/|d1|``, ``v`` = ``d2`` minus its ``u`` part,
    normalised), so distances on the plane are distances in state space. ``extent``: the plane
    covers ``[−e, e]²``, or ``(a_min, a_max, b_min, b_max)``; ``grid`` points a side. Returns a
    :class:`Slice`. ``ValueError`` for a zero direction, two parallel ones, or ``grid < 2``."""
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    leaves, treedef = jax.tree.flatten(dict(x_star))
    shapes = [jnp.shape(v) for v in leaves]
    sizes = [int(np.prod(s)) for s in shapes]

    def flat(tree) -> np.ndarray:
        t = jax.tree.leaves(dict(tree))
        if len(t) != len(leaves):
            raise ValueError("the directions must have the layers of x_star")
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in t])

    def unflat(vec):
        parts = jnp.split(vec, np.cumsum(sizes)[:-1])
        return jax.tree.unflatten(treedef, [p.reshape(s) for p, s in zip(parts, shapes,
                                                                           strict=True)])

    x0, u, v = flat(x_star), flat(d1), flat(d2)
    if np.linalg.norm(u) == 0:
        raise ValueError("d1 is zero: it spans no direction")
    u = u / np.linalg.norm(u)
    v = v - (v @ u) * u
    if np.linalg.norm(v) < 1e-8 * max(1.0, np.linalg.norm(flat(d2))):
        raise ValueError("d2 is zero or parallel to d1: the two span no plane")
    v = v / np.linalg.norm(v)
    lo_a, hi_a, lo_b, hi_b = ((-extent, extent, -extent, extent)
                              if np.isscalar(extent) else extent)
    a, b = np.linspace(lo_a, hi_a, grid), np.linspace(lo_b, hi_b, grid)
    aa, bb = np.meshgrid(a, b)  # rows along b
    dtype = jnp.asarray(leaves[0]).dtype
    pts = jnp.asarray(x0[None] + aa.reshape(-1, 1) * u + bb.reshape(-1, 1) * v, dtype)
    values = np.asarray(jax.jit(jax.vmap(lambda p: fn(unflat(p))))(pts)).reshape(grid, grid)
    field = None
    if vector_field is not None:
        uv = jnp.asarray(np.stack([u, v]), dtype)

        def project(p):
            f = jax.tree.leaves(dict(vector_field(unflat(p))))
            return uv @ jnp.concatenate([jnp.ravel(t) for t in f])

        field = np.asarray(jax.jit(jax.vmap(project))(pts)).T.reshape(2, grid, grid)
    return Slice(a=a, b=b, values=values, field=field, u=u, v=v)
