"""Binary associative memories on ``σ ∈ {−1, +1}^N`` and their sign-update dynamics
(docs/maths.md §6.1–6.2).

These are discrete maps, not ODEs: :func:`sign_update` runs them. The continuous memories are
HAMs in :mod:`hamjax.models` (:func:`~hamjax.models.continuous_hopfield`,
:func:`~hamjax.models.modern_hopfield`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._axes import stacked


def hebbian_weight(patterns) -> Array:
    """``W = (1/N) Σ_μ ξ_μ ξ_μᵀ`` with a zero diagonal, for patterns ``ξ`` of shape ``(K, N)``;
    ``W`` has shape ``(N, N)`` (docs/maths.md §6.1).

    Patterns of shape ``(K, *pattern_shape)`` are flattened first; fewer than two axes raise
    ``ValueError``."""
    xi = stacked(patterns)
    xi = xi.reshape(xi.shape[0], -1)
    n = xi.shape[1]
    w = xi.T @ xi / n
    return w * (1.0 - jnp.eye(n, dtype=w.dtype))


def _sum_memories(d: Array) -> Array:
    """``Σ_μ d_{…μi}`` over axis −2, written as a contraction with ones: XLA's CPU fusion of
    ``reduce_sum(broadcast(dot) + …)`` (YNNPACK) can return wrong sums for this pattern, while
    the same sum as a dot is exact."""
    return jnp.einsum("...mi,m->...i", d, jnp.ones(d.shape[-2], d.dtype))


def _sign_keep(field: Array, sigma: Array) -> Array:
    """``sign(field)``, keeping ``σ`` where the field is exactly zero."""
    return jnp.where(field > 0, 1.0, jnp.where(field < 0, -1.0, sigma)).astype(sigma.dtype)


class BinaryHopfield(eqx.Module):
    """The classical (binary) Hopfield network on ``σ ∈ {−1, +1}^N``::

        E(σ) = −½ Σ_{i≠j} σ_i W_ij σ_j,        W = (1/N) Σ_μ ξ_μ ξ_μᵀ,  W_ii = 0
        σ_i ← sign(Σ_{j≠i} W_ij σ_j)

    ``weight`` has shape ``(N, N)`` (its diagonal is ignored); ``σ`` has shape ``(*batch, N)``.
    The update is a discrete map (use :func:`sign_update`), not an ODE. Flipping ``σ_i``
    against its field never raises the energy: ``E(σ_i=−1) − E(σ_i=+1) = 2 Σ_{j≠i} W_ij σ_j``
    (docs/maths.md §6.1). Built from patterns by :func:`classical_hopfield`."""

    weight: Array

    @property
    def num_neurons(self) -> int:
        """The number of neurons ``N``."""
        return self.weight.shape[0]

    def _offdiag(self) -> Array:
        return self.weight * (1.0 - jnp.eye(self.num_neurons, dtype=self.weight.dtype))

    def energy(self, sigma: Array) -> Array:
        """``E(σ) = −½ σᵀWσ`` (diagonal excluded) per sample.

        ``sigma``: ``(*batch, N)``; returns shape ``batch``."""
        return -0.5 * jnp.sum(sigma * (sigma @ self._offdiag()), axis=-1)

    def field(self, sigma: Array) -> Array:
        """The field ``h_i = Σ_{j≠i} W_ij σ_j`` of every neuron: the update is its sign.

        ``sigma``: ``(*batch, N)``; returns the same shape."""
        return sigma @ self._offdiag().T

    def energy_gap(self, sigma: Array) -> Array:
        """``E(σ with σ_i=−1) − E(σ with σ_i=+1)`` for every ``i``: ``2 Σ_{j≠i} W_ij σ_j``.

        ``sigma``: ``(*batch, N)``; returns the same shape."""
        return 2.0 * self.field(sigma)

    def neuron_field(self, sigma: Array, i) -> Array:
        """The field ``Σ_{j≠i} W_ij σ_j`` of neuron ``i`` alone (``O(N)``), for asynchronous
        updates. ``sigma``: ``(*batch, N)``; returns shape ``batch``."""
        return sigma @ self._offdiag()[i]


class DenseAssociativeMemory(eqx.Module):
    """Dense associative memory (Krotov & Hopfield 2016) on ``σ ∈ {−1, +1}^N``::

        E(σ) = −Σ_μ F(ξ_μ·σ)
        σ_i ← sign(Σ_μ [F(ξ_μ·σ|_{σ_i=+1}) − F(ξ_μ·σ|_{σ_i=−1})])

    ``memories`` ``ξ`` has shape ``(K, N)``. ``F(x) = x^n`` (``kind="poly"``; ``max(x, 0)^n``
    when ``rectified``, the default) or ``F(x) = exp(βx)`` (``kind="exp"``, Demircigil et al.
    2017). ``n = 2`` without rectification is the classical Hopfield network (with the diagonal
    kept). The update never raises ``E`` (docs/maths.md §6.2). Fields: ``memories``, ``kind``
    (``"poly"`` or ``"exp"``), ``n`` (the degree, ``≥ 1``), ``rectified`` and ``beta`` (β of
    ``"exp"``); a bad ``kind`` or ``n`` raises ``ValueError``. ``σ`` has shape ``(*batch, N)``.
    Built from patterns by :func:`dense_associative_memory`."""

    memories: Array
    kind: str = eqx.field(static=True, default="poly")
    n: int = eqx.field(static=True, default=3)
    rectified: bool = eqx.field(static=True, default=True)
    beta: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.kind not in ("poly", "exp"):
            raise ValueError(f"kind must be 'poly' or 'exp', got {self.kind!r}")
        if self.kind == "poly" and not self.n >= 1:
            raise ValueError(f"the polynomial degree n must be >= 1, got {self.n}")

    @property
    def num_neurons(self) -> int:
        """The number of neurons ``N``."""
        return self.memories.shape[1]

    def F(self, x: Array) -> Array:
        """The interaction function: ``F(x) = x^n``, ``max(x, 0)^n`` when ``rectified``, or
        ``exp(βx)``. Elementwise; ``x`` of any shape."""
        if self.kind == "exp":
            return jnp.exp(self.beta * x)
        return (jax.nn.relu(x) if self.rectified else x) ** self.n

    def energy(self, sigma: Array) -> Array:
        """``E(σ) = −Σ_μ F(ξ_μ·σ)`` per sample (``kind="exp"`` overflows float32 once
        ``βξ·σ > 88``). ``sigma``: ``(*batch, N)``; returns shape ``batch``."""
        return -jnp.sum(self.F(sigma @ self.memories.T), axis=-1)

    def _split(self, sigma: Array) -> tuple[Array, Array]:
        """``a_{μi} = ξ_μ·σ − ξ_μi σ_i`` (the overlap without neuron ``i``) and ``ξ_{μi}``,
        shapes ``(*batch, K, N)``."""
        h = sigma @ self.memories.T
        a = h[..., :, None] - self.memories * sigma[..., None, :]
        return a, jnp.broadcast_to(self.memories, a.shape)

    def _field_from(self, a: Array, xi: Array) -> Array:
        if self.kind == "exp":
            # log Σ_μ e^{β(a+ξ)} − log Σ_μ e^{β(a−ξ)}: the sign of the energy gap, overflow-free
            return (jax.nn.logsumexp(self.beta * (a + xi), axis=-2)
                    - jax.nn.logsumexp(self.beta * (a - xi), axis=-2))
        # F(x/N) = F(x)/N^n: the same sign, O(1) magnitudes in float32
        s = 1.0 / self.num_neurons
        return _sum_memories(self.F((a + xi) * s) - self.F((a - xi) * s))

    def field(self, sigma: Array) -> Array:
        """A quantity with the sign of the energy gap for every neuron (the update is its sign):
        ``Σ_μ F((ξ_μ·σ|_{σ_i=+1})/N) − F((ξ_μ·σ|_{σ_i=−1})/N)`` for ``poly``, the difference of
        the two log-sum-exps for ``exp``. Memory ``O(batch·K·N)``. ``sigma``: ``(*batch, N)``;
        returns the same shape."""
        return self._field_from(*self._split(sigma))

    def energy_gap(self, sigma: Array) -> Array:
        """``E(σ with σ_i=−1) − E(σ with σ_i=+1) = Σ_μ F(a_μi + ξ_μi) − F(a_μi − ξ_μi)``, with
        ``a_μi = Σ_{j≠i} ξ_μj σ_j``. ``sigma``: ``(*batch, N)``; returns the same shape."""
        a, xi = self._split(sigma)
        return _sum_memories(self.F(a + xi) - self.F(a - xi))

    def neuron_field(self, sigma: Array, i) -> Array:
        """The field of neuron ``i`` alone (``O(K·N)``), for asynchronous updates: its sign is
        that of the energy gap. ``sigma``: ``(*batch, N)``; returns shape ``batch``."""
        h = sigma @ self.memories.T
        xi_i = self.memories[:, i]
        a = h - xi_i * sigma[..., i, None]
        return self._field_from(a[..., :, None], jnp.broadcast_to(xi_i, a.shape)[..., :, None])[
            ..., 0
        ]


def classical_hopfield(patterns) -> BinaryHopfield:
    """The classical (binary) Hopfield network storing ``patterns`` ``ξ`` (shape ``(K, N)``, ±1)
    with the Hebbian rule ``W = (1/N) Σ_μ ξ_μ ξ_μᵀ``, zero diagonal::

        E = −½ σᵀWσ,    σ_i ← sign((Wσ)_i)

    Run it with :func:`sign_update`. Its continuous counterpart, a HAM with a Tanh layer, is
    :func:`hamjax.models.continuous_hopfield` (docs/maths.md §6.1, eqs. (C1)–(C2))."""
    return BinaryHopfield(hebbian_weight(patterns))


def dense_associative_memory(patterns, n: int = 3, *, kind: str = "poly",
                             rectified: bool = True, beta: float = 1.0) -> DenseAssociativeMemory:
    """Dense associative memory (Krotov & Hopfield 2016) storing ``patterns`` (``(K, N)``, ±1)::

        E(σ) = −Σ_μ F(ξ_μ·σ),   F(x) = max(x, 0)^n  (kind="poly")  or  exp(βx)  (kind="exp")
        σ_i ← sign(Σ_μ [F(ξ_μ·σ|_{σ_i=+1}) − F(ξ_μ·σ|_{σ_i=−1})])

    See :class:`DenseAssociativeMemory`; run it with :func:`sign_update` (docs/maths.md §6.2,
    eqs. (C3)–(C4)). ``patterns`` of shape ``(K, *pattern_shape)`` are flattened."""
    xi = stacked(patterns)
    return DenseAssociativeMemory(xi.reshape(xi.shape[0], -1), kind=kind, n=n,
                                  rectified=rectified, beta=beta)


def sign_update(model, sigma: Array, *, mode: str = "sync", key=None) -> Array:
    """One step of the binary dynamics of a :class:`BinaryHopfield` or
    :class:`DenseAssociativeMemory`: ``σ_i ← sign(field_i(σ))`` (a neuron with zero field keeps
    its state). ``sigma`` has shape ``(*batch, N)``; so has the result.

    ``mode="sync"`` updates all neurons at once from the same ``σ`` (may 2-cycle);
    ``mode="async"`` sweeps the neurons one after the other, each seeing the updates before it
    (in a random order when ``key`` is given, else ``0..N−1``), and never raises the energy
    (docs/maths.md §6.1). Another ``mode`` raises ``ValueError``."""
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(float))
    if mode == "sync":
        return _sign_keep(model.field(sigma), sigma)
    if mode != "async":
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    n = sigma.shape[-1]
    order = jnp.arange(n) if key is None else jax.random.permutation(key, n)

    def body(k, s):
        i = order[k]
        new = _sign_keep(model.neuron_field(s, i), s[..., i])
        return s.at[..., i].set(new)

    return jax.lax.fori_loop(0, n, body, sigma)
