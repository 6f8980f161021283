"""Capacity theory for random ±1 patterns, to compare the measurements of
:mod:`hamjax.capacity` with (docs/maths.md §6, eqs. (C1)–(C5)).

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

import numpy as np
from jax.scipy.special import ndtr


def double_factorial(k: int) -> int:
    """The double factorial ``k!! = k (k−2) (k−4) …`` of an integer ``k``; ``(−1)!! = 0!! = 1``
    (as in docs/maths.md eq. (C3), where ``(2n−3)!!`` appears). Returns a Python int."""
    return math.prod(range(k, 0, -2)) if k > 0 else 1


def hopfield_small_error_capacity(num_neurons) -> float:
    """``K ≈ 0.138 N``: the classical Hopfield network's capacity with a small fraction (≈1.6%)
    of errors allowed (Amit, Gutfreund & Sompolinsky 1985; docs/maths.md eq. (C1)).

    ``num_neurons``: ``N``, a number or an array; returns a float array of its shape."""
    return 0.138 * np.asarray(num_neurons, dtype=float)


def hopfield_error_free_capacity(num_neurons) -> float:
    """``K ≈ N / (2 ln N)``: every stored pattern an exact fixed point (McEliece et al. 1987;
    docs/maths.md eq. (C2)).

    ``num_neurons``: ``N``, a number or an array; returns a float array of its shape."""
    n = np.asarray(num_neurons, dtype=float)
    return n / (2.0 * np.log(n))


def polynomial_error_free_capacity(num_neurons, n: int, rectified: bool = False):
    """``K ≈ N^(n−1) / (2 (2n−3)!! ln N)`` (Krotov & Hopfield 2016, ``F = x^n``; ``n = 2`` is
    the Hopfield network's ``N / (2 ln N)``), twice that for the rectified ``F``
    (docs/maths.md eq. (C4)).

    ``num_neurons``: ``N``, a number or an array; returns a float array of its shape."""
    N = np.asarray(num_neurons, dtype=float)
    c = 2.0 if rectified else 1.0
    return c * N ** (n - 1) / (2.0 * double_factorial(2 * n - 3) * np.log(N))


def snr_bit_error_rate(num_neurons, num_patterns, n: int = 2, rectified: bool = False):
    """The signal-to-noise estimate of the one-step bit-error rate from a stored pattern:
    ``Φ(−sqrt(c N^(n−1) / ((2n−3)!! K)))``, ``c = 1`` for ``F = x^n`` (and the Hebbian
    network, ``n = 2``) and ``c = 2`` for the rectified ``max(x, 0)^n`` (see the module
    docstring; docs/maths.md eq. (C3)).

    ``num_neurons`` (``N``) and ``num_patterns`` (``K``): numbers or arrays that broadcast;
    returns a float array of their broadcast shape."""
    N = np.asarray(num_neurons, dtype=float)
    K = np.asarray(num_patterns, dtype=float)
    c = 2.0 if rectified else 1.0
    return np.asarray(ndtr(-np.sqrt(c * N ** (n - 1) / (double_factorial(2 * n - 3) * K))))


def predicted_stable_fraction(num_neurons, num_patterns, n: int = 2, rectified: bool = False):
    """``(1 − p)^N`` with ``p`` the :func:`snr_bit_error_rate`: the fraction of stored patterns
    that are exact fixed points if bit errors were independent (docs/maths.md eq. (C5)).

    Arguments as for :func:`snr_bit_error_rate`; returns a float array of their broadcast
    shape."""
    p = snr_bit_error_rate(num_neurons, num_patterns, n, rectified)
    return (1.0 - p) ** np.asarray(num_neurons, dtype=float)
