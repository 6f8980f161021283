"""Capacity and retrieval experiments for associative memories, and the theory to compare with.

Pure functions: draw random ±1 patterns, store them in a memory (:mod:`hamjax.presets`),
corrupt them, retrieve them with one-step or iterate-to-fixed-point sign updates (binary
memories) or with :func:`hamjax.relax` (continuous HAMs), and measure the fraction of patterns
recovered and the one-step bit-error rate against the number ``K`` stored.

Theory (``N`` neurons, ``K`` random ±1 patterns, Φ the standard normal CDF):

* classical Hopfield: ``K ≈ 0.138 N`` with a small fraction of errors (Amit, Gutfreund &
  Sompolinsky), ``K ≈ N / (2 ln N)`` with every pattern an exact fixed point (McEliece et al.);
* dense associative memory ``F(x) = x^n`` (Krotov & Hopfield 2016): one-step bit-error rate
  ``Φ(−sqrt(N^(n−1) / ((2n−3)!! K)))`` from a signal-to-noise estimate, hence an error-free
  capacity ``N^(n−1) / (2 (2n−3)!! ln N)``;
* the *rectified* polynomial ``F(x) = max(x, 0)^n`` has half the crosstalk variance (a
  pattern's noise term ``F'(ξ_μ·σ)`` vanishes when the overlap is negative, half the time), so
  its rate is ``Φ(−sqrt(2 N^(n−1) / ((2n−3)!! K)))`` and its error-free capacity twice the
  above — this factor 2 is derived below and checked numerically in tests/test_capacity.py;
* ``F(x) = exp(x)``: capacity exponential in ``N`` (Demircigil et al. 2017), far beyond ``N``.

Signal-to-noise derivation (one synchronous update of bit ``i`` from a stored pattern ``ξ_ν``):
with ``a_μ = Σ_{j≠i} ξ_μj ξ_νj`` (mean 0, variance ``N − 1`` for ``μ ≠ ν``) the field is
``ξ_νi [F(N) − F(N−2)] + Σ_{μ≠ν} [F(a_μ + ξ_μi ξ_νi) − F(a_μ − ξ_μi ξ_νi)]``. The signal is
``≈ 2n N^(n−1)``; each crosstalk term is ``≈ 2 ξ_μi ξ_νi F'(a_μ)``, of mean 0 and variance
``4 n² E[a^(2n−2)] = 4 n² (2n−3)!! N^(n−1)`` (``E[F'(a)²]`` halves for the rectified ``F``).
Signal² / noise variance over ``K − 1 ≈ K`` patterns gives the rates above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jaxtyping import Array

from . import presets

__all__ = [
    "random_patterns",
    "flip_bits",
    "overlap",
    "retrieve",
    "relax_retrieve",
    "one_step_errors",
    "recovery",
    "capacity_curve",
    "double_factorial",
    "hopfield_small_error_capacity",
    "hopfield_error_free_capacity",
    "polynomial_error_free_capacity",
    "snr_bit_error_rate",
    "predicted_stable_fraction",
    "make_memory",
]


# ----------------------------------------------------------------------------- patterns
def random_patterns(key, num_patterns: int, num_neurons: int) -> Array:
    """``K`` independent uniform ±1 patterns of ``N`` bits, shape ``(K, N)``, float32."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (num_patterns, num_neurons)), 1.0, -1.0)


def flip_bits(key, patterns: Array, num_flips: int) -> Array:
    """Flip exactly ``num_flips`` bits of every pattern, at positions drawn independently."""
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


def overlap(sigma: Array, patterns: Array) -> Array:
    """``m = σ·ξ / N`` row by row (1 when ``σ = ξ``)."""
    return jnp.sum(sigma * patterns, axis=-1) / sigma.shape[-1]


# ---------------------------------------------------------------------------- retrieval
@eqx.filter_jit
def _iterate(model, sigma, max_steps: int, mode: str, key, chunk: int | None):
    def step(s, k):
        b = s.shape[0]
        if chunk is None or chunk >= b:
            return presets.sign_update(model, s, mode=mode, key=k)
        # sign_update is batch-native: map it over blocks of ``chunk`` samples (padded)
        nb = -(-b // chunk)
        padded = jnp.concatenate([s, jnp.ones((nb * chunk - b, s.shape[1]), s.dtype)])
        out = jax.lax.map(lambda r: presets.sign_update(model, r, mode=mode, key=k),
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
             max_steps: int = 100, key=None, chunk: int | None = None):
    """Run the sign dynamics of a binary memory (:class:`~hamjax.presets.BinaryHopfield`,
    :class:`~hamjax.presets.DenseAssociativeMemory`) from ``sigma0`` (``(B, N)``).

    ``steps=1``: one update (synchronous by default); ``steps=None``: iterate until no neuron
    changes (a fixed point) or ``max_steps`` updates (asynchronous sweeps reach a fixed point;
    synchronous updates may 2-cycle). ``chunk`` bounds memory: samples are processed
    ``chunk`` at a time (a dense associative memory needs ``O(chunk·K·N)``).
    Returns ``(σ, number of updates, reached a fixed point)``."""
    sigma0 = jnp.asarray(sigma0, dtype=jnp.float32)
    limit = max_steps if steps is None else int(steps)
    s, t, fixed = _iterate(model, sigma0, limit, mode, key, chunk)
    return s, t, fixed


def relax_retrieve(net, x0: Array, *, layer: str = "image", binarize: bool = True, **relax_kw):
    """Retrieve with a continuous HAM: relax ``net`` (:func:`hamjax.relax`, diffrax) from
    ``x0`` placed in ``layer`` (other layers start at zero) and read out the sign of that
    layer's activation (or the activation itself when ``binarize`` is False)."""
    from ._relax import relax

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
    pattern flips (the first ``probe`` patterns; all when None). Bit-error rate = mean / N."""
    xi = patterns if probe is None else patterns[:probe]
    s, _, _ = retrieve(model, xi, steps=1, chunk=chunk)
    return jnp.sum(s != xi, axis=-1)


def recovery(model, patterns: Array, *, key=None, flips: int = 0, probe: int | None = None,
             steps: int | None = None, mode: str = "async", tolerance: float = 0.0,
             max_steps: int = 100, chunk: int | None = None) -> dict:
    """Store-corrupt-retrieve: flip ``flips`` bits of (the first ``probe``) stored patterns,
    retrieve, and call a pattern recovered when at most ``tolerance·N`` of its bits are wrong.

    Returns a dict of numpy arrays: ``recovered`` (bool per probe), ``errors`` (wrong bits per
    probe), ``overlap`` and ``fraction`` (the recovered fraction)."""
    xi = patterns if probe is None else patterns[:probe]
    k_flip, k_dyn = (None, None) if key is None else jax.random.split(key)
    start = xi if flips == 0 else flip_bits(k_flip, xi, flips)
    s, _, _ = retrieve(model, start, steps=steps, mode=mode, max_steps=max_steps,
                       key=k_dyn if mode == "async" else None, chunk=chunk)
    errors = np.asarray(jnp.sum(s != xi, axis=-1))
    n = xi.shape[-1]
    rec = errors <= tolerance * n
    return {"recovered": rec, "errors": errors, "overlap": np.asarray(overlap(s, xi)),
            "fraction": float(rec.mean())}


def make_memory(kind: str, patterns: Array, n: int = 3):
    """``"hebbian"`` (classical Hopfield), ``"poly"`` (rectified ``x^n``), ``"poly_plain"``
    (non-rectified ``x^n``) or ``"exp"`` dense associative memory of ``patterns``."""
    if kind == "hebbian":
        return presets.classical_hopfield(patterns)
    if kind == "poly":
        return presets.dense_associative_memory(patterns, n)
    if kind == "poly_plain":
        return presets.dense_associative_memory(patterns, n, rectified=False)
    if kind == "exp":
        return presets.dense_associative_memory(patterns, kind="exp")
    raise ValueError(f"unknown memory kind {kind!r}; use 'hebbian', 'poly', 'poly_plain', 'exp'")


def capacity_curve(kind: str, num_neurons: int, num_patterns: Sequence[int], key, *,
                   n: int = 3, trials: int = 1, probe: int | None = 50, flips: int = 0,
                   steps: int | None = 1, mode: str = "sync", tolerance: float = 0.0,
                   max_steps: int = 100, chunk: int | None = None,
                   patterns: Array | None = None) -> dict:
    """Recovered fraction and one-step bit-error rate against the number of stored patterns.

    For each ``K`` in ``num_patterns`` and each trial, draw ``K`` random ±1 patterns of
    ``num_neurons`` bits (or take the first ``K`` rows of ``patterns``), store them
    (:func:`make_memory`), measure :func:`recovery` on ``probe`` of them and the one-step
    bit-error rate. Returns lists keyed ``K``, ``fraction``, ``ber`` and ``mean_errors``."""
    out = {"kind": kind, "N": num_neurons, "n": n, "K": [], "fraction": [], "ber": [],
           "mean_errors": []}
    for k_count in num_patterns:
        fr, ber, errs = [], [], []
        for t in range(trials):
            kt = jax.random.fold_in(jax.random.fold_in(key, k_count), t)
            k_pat, k_rec = jax.random.split(kt)
            xi = (random_patterns(k_pat, k_count, num_neurons) if patterns is None
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


# -------------------------------------------------------------------------------- theory
def double_factorial(k: int) -> int:
    """``k!! = k (k−2) (k−4) …``; ``(−1)!! = 0!! = 1``."""
    return math.prod(range(k, 0, -2)) if k > 0 else 1


def hopfield_small_error_capacity(num_neurons) -> float:
    """``0.138 N``: the classical Hopfield network's capacity with a small fraction (≈1.6%) of
    errors allowed (Amit, Gutfreund & Sompolinsky 1985)."""
    return 0.138 * np.asarray(num_neurons, dtype=float)


def hopfield_error_free_capacity(num_neurons) -> float:
    """``N / (2 ln N)``: every stored pattern an exact fixed point (McEliece et al. 1987)."""
    n = np.asarray(num_neurons, dtype=float)
    return n / (2.0 * np.log(n))


def polynomial_error_free_capacity(num_neurons, n: int, rectified: bool = False):
    """``N^(n−1) / (2 (2n−3)!! ln N)`` (Krotov & Hopfield 2016, ``F = x^n``; ``n = 2`` is
    the Hopfield network's ``N / (2 ln N)``), twice that for the rectified ``F``."""
    N = np.asarray(num_neurons, dtype=float)
    c = 2.0 if rectified else 1.0
    return c * N ** (n - 1) / (2.0 * double_factorial(2 * n - 3) * np.log(N))


def snr_bit_error_rate(num_neurons, num_patterns, n: int = 2, rectified: bool = False):
    """The signal-to-noise estimate of the one-step bit-error rate from a stored pattern:
    ``Φ(−sqrt(c N^(n−1) / ((2n−3)!! K)))``, ``c = 1`` for ``F = x^n`` (and the Hebbian
    network, ``n = 2``) and ``c = 2`` for the rectified ``max(x, 0)^n`` (see the module
    docstring)."""
    N = np.asarray(num_neurons, dtype=float)
    K = np.asarray(num_patterns, dtype=float)
    c = 2.0 if rectified else 1.0
    return np.asarray(ndtr(-np.sqrt(c * N ** (n - 1) / (double_factorial(2 * n - 3) * K))))


def predicted_stable_fraction(num_neurons, num_patterns, n: int = 2, rectified: bool = False):
    """``(1 − p)^N`` with ``p`` the :func:`snr_bit_error_rate`: the fraction of stored patterns
    that are exact fixed points if bit errors were independent."""
    p = snr_bit_error_rate(num_neurons, num_patterns, n, rectified)
    return (1.0 - p) ** np.asarray(num_neurons, dtype=float)
