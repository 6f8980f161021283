"""Basins of attraction (hj.analysis.basins) against the theory of associative memories: the
classical Hopfield network below and above its capacity (≈ 0.138 N), a dense memory of degree 3
beyond it, and the modern Hopfield network's separation condition (Ramsauer et al. 2020)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax as hj

C = hj.capacity
LEVELS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.55, 0.6, 0.7]


@functools.lru_cache  # the low-load memory serves two tests
def _binary_basins(kind, n_neurons, k_patterns, trials=6, n=3):
    xi = C.random_patterns(k_patterns, n_neurons, key=jax.random.PRNGKey(k_patterns))
    model = C.make_memory(kind, xi, n)

    def retrieve(x, key):
        return C.retrieve(model, x, steps=None, mode="async", key=key, max_steps=30)[0]

    return hj.analysis.basins(retrieve, xi, LEVELS, corrupt=C.flip_fraction, trials=trials,
                              key=jax.random.PRNGKey(1)), xi, retrieve


def test_half_radius_interpolates_where_the_curve_crosses_one_half():
    levels = [0.0, 0.1, 0.2, 0.3]
    p = np.array([[1.0, 1.0, 0.2], [0.9, 0.6, 0.1], [0.7, 0.4, 0.0], [0.6, 0.0, 0.0]])
    r = hj.analysis.half_radius(levels, p)
    np.testing.assert_allclose(r[1], 0.1 + (0.6 - 0.5) / (0.6 - 0.4) * 0.1)
    assert r[0] == np.inf and r[2] == 0.0  # never below one half / below it at once


def test_hopfield_far_below_capacity_has_basins_up_to_half_the_bits():
    """K = 0.02 N: every memory is a fixed point and attracts starts with fewer than half of
    its bits flipped (radius → 1/2 as K/N → 0); past one half the start is nearer the mirror
    pattern −ξ, which the dynamics reach instead (the energy is even in σ)."""
    b, xi, retrieve = _binary_basins("hebbian", 400, 8)
    assert np.all(b.attractor_error == 0.0)
    assert 0.4 <= b.mean_radius < 0.5
    assert np.all(b.returned[LEVELS.index(0.3)] == 1.0)
    assert np.all(b.returned[LEVELS.index(0.6):] == 0.0)
    mirrored = retrieve(C.flip_fraction(xi, 0.7, jax.random.PRNGKey(2)), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(mirrored, -xi)


@pytest.mark.slow
def test_hopfield_basins_shrink_with_load_and_vanish_above_capacity():
    """Below 0.138 N (K = 0.1 N) the memories are retrieved with few wrong bits (Amit,
    Gutfreund & Sompolinsky: ≈ 1.6 % at the capacity, fewer below) and their basins are
    smaller than at low load; above it (K = 0.3 N) the attractor a start at a memory reaches
    is far from the memory (the retrieval states are gone)."""
    low, _, _ = _binary_basins("hebbian", 400, 8)
    mid, _, _ = _binary_basins("hebbian", 400, 40)
    high, _, _ = _binary_basins("hebbian", 400, 120)
    wrong_bits = lambda b: (b.attractor_error ** 2 / 4).mean()  # noqa: E731 - ±1: |Δ|² = 4
    assert C.hopfield_small_error_capacity(400) == pytest.approx(55.2)
    assert wrong_bits(mid) < 0.016 < 0.1 < wrong_bits(high)
    assert 0.15 < mid.mean_radius < low.mean_radius
    assert high.mean_radius < 0.1


def test_dense_memory_keeps_basins_beyond_the_classical_capacity():
    """A rectified cubic dense memory (Krotov & Hopfield 2016) stores K = 0.4 N exactly, four
    times past 0.138 N, with a wide basin; the classical network at the same load does not."""
    dense, _, _ = _binary_basins("poly", 100, 40)
    classical, _, _ = _binary_basins("hebbian", 100, 40)
    assert C.polynomial_error_free_capacity(100, 3, rectified=True) > 40
    assert np.all(dense.attractor_error == 0.0) and dense.mean_radius > 0.3
    assert (classical.attractor_error ** 2 / 4).mean() > 0.1


def _gaussian_at_distance(x, r, key):
    """Each row moved by a random direction of length ``r``."""
    d = jax.random.normal(key, x.shape)
    return x + r * d / jnp.linalg.norm(d, axis=-1, keepdims=True)


@pytest.mark.slow
def test_modern_hopfield_retrieves_well_separated_patterns_within_the_theorem_radius():
    """Ramsauer et al. (2020), Theorems 3–5: a pattern ``x_i`` with separation ``Δ_i = x_iᵀx_i
    − max_{j≠i} x_iᵀx_j ≥ 2/(βN) + ln(2(N−1)NβM²)/β`` (N patterns, M the largest norm) has a
    fixed point ``x_i*`` in the sphere of radius ``1/(βNM)`` around it, which every start in
    that sphere converges to, with ``|f(ξ) − x_i| ≤ 2(N−1) exp(−β(Δ_i − 2 max(|ξ − x_i|, |x_i*
    − x_i|) M)) M``. Two nearly equal patterns are not separated: they share one attractor,
    between them, so neither is retrieved."""
    d, n, beta = 64, 12, 40.0
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (n, d))
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    x = x.at[1].set(x[0] + 0.02 * x[1])  # pattern 1 nearly pattern 0
    x = x.at[1].set(x[1] / jnp.linalg.norm(x[1]))
    m_norm = float(jnp.max(jnp.linalg.norm(x, axis=-1)))
    gram = np.asarray(x @ x.T)
    delta = np.diag(gram) - np.max(np.where(np.eye(n, dtype=bool), -np.inf, gram), axis=1)
    bound = 2 / (beta * n) + math.log(2 * (n - 1) * n * beta * m_norm ** 2) / beta
    separated = delta >= bound
    assert not separated[0] and not separated[1] and separated[2:].all()
    net = hj.models.modern_hopfield(x, beta)
    stop = hj.SteadyState(atol=1e-6)

    def retrieve(v, key):
        return hj.relax(net, {"image": v}, solver=hj.solvers.FixedPoint(), stop=stop,
                        max_steps=2000).state["image"]

    radius = 1 / (beta * n * m_norm)
    b = hj.analysis.basins(retrieve, x, [0.5 * radius, radius], corrupt=_gaussian_at_distance,
                           trials=8, key=jax.random.PRNGKey(1), atol=1e-4)
    own = np.asarray(b.attractor_error) * math.sqrt(d)  # |x_i* − x_i|
    assert np.all(own[separated] <= radius)
    assert np.all(b.returned[:, separated] == 1.0)
    # the one-step error bound of Theorem 5 at the starts of the theorem's sphere
    xi = _gaussian_at_distance(x, radius, jax.random.PRNGKey(2))
    one = hj.models.fixed_point_step(net, {"image": xi})["image"]
    err = np.asarray(jnp.linalg.norm(one - x, axis=-1))
    dist = np.maximum(radius, own)
    eps = 2 * (n - 1) * np.exp(-beta * (delta - 2 * dist * m_norm)) * m_norm
    assert np.all(err[separated] <= eps[separated])
    # the pair shares an attractor between them: neither pattern is retrieved
    assert np.all(own[:2] > 0.25 * float(jnp.linalg.norm(x[0] - x[1])))


def test_basins_refuses_what_it_cannot_measure():
    def retrieve(x, key):
        return x

    xi = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="increasing"):
        hj.analysis.basins(retrieve, xi, [0.2, 0.1], corrupt=C.flip_fraction, key=None)
    with pytest.raises(ValueError, match=r"\(M, N\)"):
        hj.analysis.basins(retrieve, jnp.ones(4), [0.1], corrupt=C.flip_fraction, key=None)
    with pytest.raises(ValueError, match="trials"):
        hj.analysis.basins(retrieve, xi, [0.1], corrupt=C.flip_fraction, key=None, trials=0)
    with pytest.raises(ValueError, match="fraction"):
        C.flip_fraction(xi, 1.5, jax.random.PRNGKey(0))
