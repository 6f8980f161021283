"""Dead neurons: the null space of the Lagrangian Hessians and the flat energy along it.

DN Definition (docs/maths.md §4.3): at ``x`` the activation has ``k`` dead neurons when there is a
full-rank ``D ∈ R^{N×k}`` with ``g(x + Dα) = g(x)`` for α in a set ``A``; to first order
``H(x) D = 0`` (eq. 7), so ``D`` spans (part of) ``ker H``. Proposition 1: the energy is then
constant on ``{x + Dα : α ∈ A}``. ReLU below zero and saturated sigmoids give one dead direction per
neuron (``A`` a one-sided cone), softmax gives one shift direction ``1/√n`` per softmax group
(``A = R``: one "effective" dead neuron, DN Example 4).

Detection is per layer (the Hessian is block-diagonal over layers): for elementwise Lagrangians the
diagonal ``f'(x_i)``, otherwise ``eigh`` of the layer's dense Hessian, with eigenvalues
``|λ| ≤ max(atol, rtol · max|λ|)`` counted as zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._ham import HAM
from ..lagrangians import ElementwiseLagrangian
from ._hessians import FlatIndex, FlatSystem, _call, _layer_hessian_dense

__all__ = ["DeadNeurons", "layer_spectrum", "dead_neurons", "energy_along", "is_flat"]


@dataclasses.dataclass(frozen=True)
class DeadNeurons:
    """Dead directions of the free layers at one state (docs/maths.md §4.3), as returned by
    :func:`dead_neurons`.

    ``directions[A]`` is an ``(N_A, k_A)`` matrix with orthonormal columns in layer ``A``'s
    flattened coordinates; ``live[A]`` (``(N_A, N_A − k_A)``) completes it to an orthonormal basis
    and ``live_eigenvalues[A]`` are the Hessian eigenvalues on it (``H_A = live Λ liveᵀ``).
    Elementwise dead directions point further into the flat region (``sign(x_i) e_i``).
    ``counts[A]`` is ``k_A``, ``tol[A]`` the eigenvalue tolerance used for layer ``A``, and
    ``index`` the :class:`FlatIndex` of the free layers (``N = Σ_A N_A``)."""

    index: FlatIndex
    counts: dict[str, int]
    directions: dict[str, np.ndarray]
    live: dict[str, np.ndarray]
    live_eigenvalues: dict[str, np.ndarray]
    tol: dict[str, float]

    @property
    def total(self) -> int:
        """The number of dead directions over all free layers, ``k = Σ_A k_A``."""
        return sum(self.counts.values())

    def basis(self) -> np.ndarray:
        """``D``: all dead directions as columns of one ``(N, k)`` matrix over the flat free
        state (rows in :class:`FlatIndex` order, columns layer by layer)."""
        return self._embed(self.directions)

    def live_basis(self) -> np.ndarray:
        """``A``: orthonormal columns spanning ``range(H)`` over the flat free state, an
        ``(N, N − k)`` matrix (docs/maths.md §4.5)."""
        return self._embed(self.live)

    def _embed(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        cols = []
        for name in self.index.names:
            b = blocks[name]
            full = np.zeros((self.index.size, b.shape[1]), b.dtype)
            full[self.index.slice(name)] = b
            cols.append(full)
        return np.concatenate(cols, axis=1)

    def states(self) -> list[dict[str, Array]]:
        """Each dead direction as a dict state over the free layers (zero on other layers):
        a list of ``k`` dicts ``{name: array of the layer's shape}``."""
        d = self.basis()
        return [self.index.unflatten(jnp.asarray(d[:, j])) for j in range(d.shape[1])]

    def neurons(self) -> list[tuple[str, tuple[int, ...]]]:
        """For dead directions that are single neurons (elementwise layers), their
        ``(layer, index)``; directions spread over several neurons (softmax) are skipped."""
        out = []
        d = self.basis()
        for j in range(d.shape[1]):
            nz = np.flatnonzero(np.abs(d[:, j]) > 0.5)
            if len(nz) == 1 and np.count_nonzero(d[:, j]) == 1:
                out.append(self.index.locate(int(nz[0])))
        return out

    def projector(self) -> np.ndarray:
        """``P = D Dᵀ``, the orthogonal projector onto the dead subspace ``ker H``
        (docs/maths.md §4.6): an ``(N, N)`` NumPy matrix."""
        d = self.basis()
        return d @ d.T


def layer_spectrum(layer, x: Array, rtol: float = 1e-5, atol: float = 0.0):
    """``(dead, live, live_eigenvalues, tol)`` of one layer's Lagrangian Hessian ``H_A`` at ``x``
    (docs/maths.md §4.3): orthonormal columns ``(N_A, k_A)`` spanning ``ker H_A``, orthonormal
    columns ``(N_A, N_A − k_A)`` spanning ``range H_A``, the eigenvalues on the latter, and the
    tolerance ``max(atol, rtol·max|λ|)`` below which ``|λ|`` counted as zero.

    ``layer``: a :class:`hamjax.Layer`; ``x``: one sample of its state, shape ``layer.shape``."""
    n = layer.size
    lag = layer.lagrangian
    x = jnp.asarray(x)
    if isinstance(lag, ElementwiseLagrangian):
        lam = np.asarray(jnp.reshape(lag.derivative(x), (n,)), dtype=np.float64)
        tol = max(atol, rtol * float(np.max(np.abs(lam), initial=0.0)))
        dead = np.abs(lam) <= tol
        eye = np.eye(n, dtype=np.float64)
        # orient each dead unit vector away from the origin: deeper into the saturated region
        sign = np.where(np.reshape(np.asarray(x), (n,)) < 0, -1.0, 1.0)
        return eye[:, dead] * sign[dead], eye[:, ~dead], lam[~dead], tol
    h = np.asarray(_layer_hessian_dense(layer, x), dtype=np.float64)
    lam, vec = np.linalg.eigh(0.5 * (h + h.T))
    tol = max(atol, rtol * float(np.max(np.abs(lam), initial=0.0)))
    dead = np.abs(lam) <= tol
    d = vec[:, dead]
    # fix the sign so that e.g. softmax's shift direction is +1/√n, not −1/√n
    s = np.sign(d.sum(axis=0))
    d = d * np.where(s == 0, 1.0, s)
    return d, vec[:, ~dead], lam[~dead], tol


def dead_neurons(
    net: HAM,
    x: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    rtol: float = 1e-5,
    atol: float = 0.0,
) -> DeadNeurons:
    """The dead directions (null space of the Lagrangian Hessians, docs/maths.md §4.3) of every free
    layer of ``net`` at the unbatched state ``x``, per layer: counts and orthonormal directions.

    An eigenvalue ``λ`` of ``H_A`` counts as zero when ``|λ| ≤ max(atol, rtol·max|λ(H_A)|)``; the
    relative tolerance makes saturated sigmoids (``σ' ≈ 1e-9``) dead in float32 and softmax's
    shift direction (zero up to rounding) dead, while keeping layers of any scale comparable."""
    sys = FlatSystem(net, x, clamp=clamp)
    counts, dirs, live, lams, tols = {}, {}, {}, {}, {}
    for name in sys.free:
        d, a, lam, tol = layer_spectrum(net.layers[name], sys.state[name], rtol, atol)
        counts[name], dirs[name], live[name], lams[name], tols[name] = d.shape[1], d, a, lam, tol
    return DeadNeurons(sys.index, counts, dirs, live, lams, tols)


def _direction(index: FlatIndex, direction) -> Array:
    if isinstance(direction, Mapping):
        return index.flatten({n: jnp.asarray(direction.get(n, 0.0)) + jnp.zeros(s)
                              for n, s in zip(index.names, index.shapes, strict=True)})
    direction = jnp.asarray(direction)
    if direction.shape != (index.size,):
        raise ValueError(f"a flat direction needs shape ({index.size},), got {direction.shape}")
    return direction


def energy_along(
    net: HAM,
    x: Mapping[str, Array],
    direction,
    alphas: Sequence[float] | Array,
    *,
    clamp: Iterable[str] | str = (),
) -> Array:
    """``E(x + α d)`` for every α in ``alphas``; ``d`` a flat vector over the free layers or a dict
    state (missing layers zero). The energy along a dead direction is flat (docs/maths.md §4.3,
    Proposition 1).

    ``x``: one unbatched state; ``direction``: ``(N,)`` in :class:`FlatIndex` order (else
    ``ValueError``) or a dict; returns an array of ``alphas``' length."""
    sys = FlatSystem(net, x, clamp=clamp)
    d = _direction(sys.index, direction)
    alphas = jnp.asarray(alphas, sys.x.dtype)
    zs = sys.x[None, :] + alphas[:, None] * d[None, :]
    return _call(sys, "energies", zs)


def is_flat(
    net: HAM,
    x: Mapping[str, Array],
    direction,
    alphas: Sequence[float] | Array = (0.1, 1.0, 10.0, 100.0),
    *,
    clamp: Iterable[str] | str = (),
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> bool:
    """Whether ``E(x + α d) = E(x)`` for every α in ``alphas`` (Proposition 1, docs/maths.md
    §4.3), within ``atol + rtol·|E(x)|``. For one-sided dead directions (ReLU, sigmoid) pass α's
    inside the cone; the directions of :func:`dead_neurons` point into it, so positive α's are.
    ``x`` and ``direction`` as for :func:`energy_along`; returns a Python bool."""
    e = np.asarray(energy_along(net, x, direction, [0.0, *list(np.asarray(alphas))], clamp=clamp))
    return bool(np.all(np.abs(e[1:] - e[0]) <= atol + rtol * abs(e[0])))
