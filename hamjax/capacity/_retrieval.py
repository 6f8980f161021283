"""Capacity and retrieval experiments: draw random ±1 patterns, store them in a memory
(:mod:`hamjax.capacity` binary memories, or a continuous HAM from :mod:`hamjax.models`), corrupt
them, retrieve them with one-step or iterate-to-fixed-point sign updates (binary memories) or with
:func:`hamjax.relax` (continuous HAMs), and measure the fraction of patterns recovered and the
one-step bit-error rate against the number ``K`` stored. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._relax import relax
from ._binary import classical_hopfield, dense_associative_memory, sign_update


# ----------------------------------------------------------------------------- patterns
def random_patterns(num_patterns: int, num_neurons: int, *, key) -> Array:
    """``K = num_patterns`` independent uniform ±1 patterns of ``N = num_neurons`` bits, drawn
    from the PRNG key ``key``: shape ``(K, N)``, float32 (the patterns of docs/maths.md §6)."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (num_patterns, num_neurons)), 1.0, -1.0)


def flip_bits(patterns: Array, num_flips: int, *, key) -> Array:
    """Flip exactly ``num_flips`` bits of every pattern (``(*batch, N)``), at positions drawn
    independently for every pattern from the PRNG key ``key``; returns the same shape.

    Raises ``ValueError`` unless ``0 ≤ num_flips ≤ N``."""
    patterns = jnp.asarray(patterns)
    n = patterns.shape[-1]
    if num_flips == 0:
        return patterns
    if not 0 <= num_flips <= n:
        raise ValueError(f"num_flips must be in [0, {n}], got {num_flips}")
    scores = jax.random.uniform(key, patterns.shape)
    # the num_flips smallest scores of each row: a uniform random subset of that size
    kth = jnp.sort(scores, axis=-1)[..., num_flips - 1 : num_flips]
    return jnp.where(scores <= kth, -patterns, patterns)


def flip_fraction(patterns: Array, fraction: float, key) -> Array:
    """Flip ``round(fraction·N)`` bits of every ±1 pattern (``(*batch, N)``) at random positions
    (:func:`flip_bits`): the corruption of :func:`hamjax.analysis.basins` for binary memories,
    ``fraction`` in ``[0, 1]`` (0.5: a random pattern; 1: the mirror pattern ``−ξ``).

    Raises ``ValueError`` for a ``fraction`` outside ``[0, 1]``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = jnp.shape(patterns)[-1]
    return flip_bits(patterns, int(round(fraction * n)), key=key)


def overlap(sigma: Array, patterns: Array) -> Array:
    """The overlap ``m = σ·ξ / N`` row by row (1 when ``σ = ξ``, −1 when ``σ = −ξ``; the
    normalised overlap ``ξ_μ·σ`` of docs/maths.md §6.2).

    ``sigma`` and ``patterns``: ``(*batch, N)``; returns shape ``batch``."""
    return jnp.sum(sigma * patterns, axis=-1) / sigma.shape[-1]


# ---------------------------------------------------------------------------- retrieval
@eqx.filter_jit
def _iterate(model, sigma, max_steps: int, mode: str, key, chunk: int | None):
    def step(s, k):
        b = s.shape[0]
        if chunk is None or chunk >= b:
            return sign_update(model, s, mode=mode, key=k)
        # sign_update is batch-native: map it over blocks of ``chunk`` samples (padded)
        nb = -(-b // chunk)
        padded = jnp.concatenate([s, jnp.ones((nb * chunk - b, s.shape[1]), s.dtype)])
        out = jax.lax.map(lambda r: sign_update(model, r, mode=mode, key=k),
                          padded.reshape(nb, chunk, s.shape[1]))
        return out.reshape(nb * chunk, s.shape[1])[:b]

    def cond(c):
        _, changed, t, _ = c
        return changed & (t < max_steps)

    def body(c):
        s, _, t, k = c
        k, sub = (None, None) if k is None else jax.random.split(k)
        new = step(s, sub)
        return new, jnp.any(new != s), t + 1, k

    s, changed, t, _ = jax.lax.while_loop(cond, body, (sigma, jnp.array(True), 0, key))
    return s, t, ~changed


def retrieve(model, sigma0: Array, *, steps: int | None = 1, mode: str = "sync",
             max_steps: int = 100, chunk: int | None = None, key=None):
    """Run the sign dynamics of a binary memory (:class:`BinaryHopfield`,
    :class:`DenseAssociativeMemory`) from ``sigma0`` (``(B, N)``).

    ``steps=1``: one update (synchronous by default); ``steps=None``: iterate until no neuron
    changes (a fixed point) or ``max_steps`` updates (asynchronous sweeps reach a fixed point;
    synchronous updates may 2-cycle). ``chunk`` bounds memory: samples are processed
    ``chunk`` at a time (a dense associative memory needs ``O(chunk·K·N)``).
    Returns ``(σ, number of updates, reached a fixed point)``: ``σ`` of shape ``(B, N)``, the
    count a scalar, the flag a scalar (True when the last update changed nothing). ``mode``
    and ``key`` are those of :func:`sign_update`."""
    sigma0 = jnp.asarray(sigma0, dtype=jnp.float32)
    limit = max_steps if steps is None else int(steps)
    s, t, fixed = _iterate(model, sigma0, limit, mode, key, chunk)
    return s, t, fixed


def relax_retrieve(net, x0: Array, *, layer: str = "image", binarize: bool = True, **relax_kw):
    """Retrieve with a continuous HAM: relax ``net`` (:func:`hamjax.relax`, diffrax) from
    ``x0`` placed in ``layer`` (other layers start at zero) and read out the sign of that
    layer's activation (or the activation itself when ``binarize`` is False).

    ``x0``: ``(*batch, *layer shape)``; ``relax_kw`` go to :func:`hamjax.relax`. Returns
    ``(readout, relaxation)``: the readout of ``x0``'s shape and the :class:`hamjax.Relaxation`."""
    x0 = jnp.asarray(x0, dtype=jnp.float32)
    batch = x0.shape[: x0.ndim - net.layers[layer].ndim]
    state = net.init_state(batch)
    state[layer] = x0
    sol = relax(net, state, **relax_kw)
    g = net.layers[layer].activation(sol.state[layer])
    return (jnp.where(g >= 0, 1.0, -1.0) if binarize else g), sol


def one_step_errors(model, patterns: Array, probe: int | None = None,
                    chunk: int | None = None) -> Array:
    """Per probed pattern, the number of bits that one synchronous update from the stored
    pattern flips (the first ``probe`` patterns; all when None). Bit-error rate = mean / N,
    to compare with docs/maths.md eq. (C3).

    ``patterns``: ``(K, N)``; returns an integer array of shape ``(probe,)`` (``(K,)``)."""
    xi = patterns if probe is None else patterns[:probe]
    s, _, _ = retrieve(model, xi, steps=1, chunk=chunk)
    return jnp.sum(s != xi, axis=-1)


def recovery(model, patterns: Array, *, flips: int = 0, probe: int | None = None,
             steps: int | None = None, mode: str = "async", tolerance: float = 0.0,
             max_steps: int = 100, chunk: int | None = None, key=None) -> dict:
    """Store-corrupt-retrieve: flip ``flips`` bits of (the first ``probe``) stored patterns,
    retrieve, and call a pattern recovered when at most ``tolerance·N`` of its bits are wrong.

    Returns a dict: ``recovered`` (bool), ``errors`` (wrong bits) and ``overlap``, NumPy arrays
    of shape ``(probe,)``, and ``fraction`` (the recovered fraction, a float). ``steps``,
    ``mode``, ``max_steps`` and ``chunk`` are those of :func:`retrieve` (default: asynchronous
    sweeps to a fixed point). ``key`` (a PRNG key) draws the flips and the update order;
    flipping bits without one raises ``ValueError``."""
    if flips and key is None:
        raise ValueError(f"recovery needs a PRNG key, key=, to flip {flips} bits")
    xi = patterns if probe is None else patterns[:probe]
    k_flip, k_dyn = (None, None) if key is None else jax.random.split(key)
    start = xi if flips == 0 else flip_bits(xi, flips, key=k_flip)
    s, _, _ = retrieve(model, start, steps=steps, mode=mode, max_steps=max_steps,
                       key=k_dyn if mode == "async" else None, chunk=chunk)
    errors = np.asarray(jnp.sum(s != xi, axis=-1))
    n = xi.shape[-1]
    rec = errors <= tolerance * n
    return {"recovered": rec, "errors": errors, "overlap": np.asarray(overlap(s, xi)),
            "fraction": float(rec.mean())}


def make_memory(kind: str, patterns: Array, n: int = 3):
    """``"hebbian"`` (classical Hopfield), ``"poly"`` (rectified ``x^n``), ``"poly_plain"``
    (non-rectified ``x^n``) or ``"exp"`` dense associative memory of ``patterns``.

    ``patterns``: ``(K, N)``. Returns a :class:`BinaryHopfield` or
    :class:`DenseAssociativeMemory`; an unknown ``kind`` raises ``ValueError``."""
    if kind == "hebbian":
        return classical_hopfield(patterns)
    if kind == "poly":
        return dense_associative_memory(patterns, n)
    if kind == "poly_plain":
        return dense_associative_memory(patterns, n, rectified=False)
    if kind == "exp":
        return dense_associative_memory(patterns, kind="exp")
    raise ValueError(f"unknown memory kind {kind!r}; use 'hebbian', 'poly', 'poly_plain', 'exp'")


def capacity_curve(kind: str, num_neurons: int, num_patterns: Sequence[int], *,
                   n: int = 3, trials: int = 1, probe: int | None = 50, flips: int = 0,
                   steps: int | None = 1, mode: str = "sync", tolerance: float = 0.0,
                   max_steps: int = 100, chunk: int | None = None,
                   patterns: Array | None = None, key) -> dict:
    """Recovered fraction and one-step bit-error rate against the number of stored patterns.

    For each ``K`` in ``num_patterns`` and each trial, draw ``K`` random ±1 patterns of
    ``num_neurons`` bits (or take the first ``K`` rows of ``patterns``), store them
    (:func:`make_memory`), measure :func:`recovery` on ``probe`` of them and the one-step
    bit-error rate. Returns lists keyed ``K``, ``fraction``, ``ber`` and ``mean_errors`` (one
    entry per ``K``, means over the trials), with ``kind``, ``N`` and ``n``: the measurements to
    put beside :func:`snr_bit_error_rate` and the capacities of docs/maths.md §6. The other
    keywords are those of :func:`recovery`; ``key`` (a PRNG key) draws everything."""
    out = {"kind": kind, "N": num_neurons, "n": n, "K": [], "fraction": [], "ber": [],
           "mean_errors": []}
    for k_count in num_patterns:
        fr, ber, errs = [], [], []
        for t in range(trials):
            kt = jax.random.fold_in(jax.random.fold_in(key, k_count), t)
            k_pat, k_rec = jax.random.split(kt)
            xi = (random_patterns(k_count, num_neurons, key=k_pat) if patterns is None
                  else jnp.asarray(patterns[:k_count]))
            model = make_memory(kind, xi, n)
            rec = recovery(model, xi, key=k_rec, flips=flips, probe=probe, steps=steps,
                           mode=mode, tolerance=tolerance, max_steps=max_steps, chunk=chunk)
            one = np.asarray(one_step_errors(model, xi, probe, chunk))
            fr.append(rec["fraction"])
            errs.append(rec["errors"].mean())
            ber.append(one.mean() / num_neurons)
        out["K"].append(int(k_count))
        out["fraction"].append(float(np.mean(fr)))
        out["ber"].append(float(np.mean(ber)))
        out["mean_errors"].append(float(np.mean(errs)))
    return out
