"""The binary memories against closed forms written independently in numpy (the energy each
docstring states, and its sign update), then small, seeded capacity experiments against theory,
with the agreement band stated per test.

N = 100 neurons in the experiments. Bands are loose enough for the sampling noise of a few
hundred to a few thousand probed bits, tight enough to tell the rectified SNR factor 2 apart from
none.
"""

import equinox as eqx
import jax
import numpy as np
import pytest
from _reference import close, np_hebb, pm1

from hamjax import capacity as C
from hamjax import models as M

N = 100
KEY = jax.random.PRNGKey(0)

_sign = eqx.filter_jit(C.sign_update)


# ------------------------------------------------------------------ classical (binary) Hopfield
def test_binary_hopfield_energy_and_sign_updates():
    xi = pm1(0, (6, 30))
    sigma = pm1(1, (4, 30))
    net = C.classical_hopfield(xi)
    w = np_hebb(xi)
    close(net.weight, w)
    close(net.energy(sigma), -0.5 * np.einsum("bi,ij,bj->b", sigma, w, sigma))
    # synchronous: all neurons from the same σ
    field = sigma @ w
    expected = np.where(field > 0, 1.0, np.where(field < 0, -1.0, sigma))
    close(_sign(net, sigma), expected)
    # asynchronous sweep in order 0..N-1: each neuron sees the earlier updates
    s = sigma.copy()
    for i in range(30):
        f = s @ w[i]
        s[:, i] = np.where(f > 0, 1.0, np.where(f < 0, -1.0, s[:, i]))
    out = _sign(net, sigma, mode="async")
    close(out, s)
    assert np.all(np.asarray(net.energy(out)) <= np.asarray(net.energy(sigma)) + 1e-5)
    # energy gap by brute force
    gap = np.asarray(net.energy_gap(sigma[0]))
    for i in (0, 7, 29):
        up, dn = sigma[0].copy(), sigma[0].copy()
        up[i], dn[i] = 1.0, -1.0
        close(gap[i], net.energy(dn) - net.energy(up))
    with pytest.raises(ValueError, match="mode"):
        _sign(net, sigma, mode="random")


# ------------------------------------------------------------------ dense associative memory
def _np_dam_step(xi, sigma, F):
    """σ_i ← sign(Σ_μ F(ξ_μ·σ|σ_i=+1) − F(ξ_μ·σ|σ_i=−1)), written as a loop over neurons."""
    out = sigma.copy()
    for b in range(sigma.shape[0]):
        for i in range(sigma.shape[1]):
            up, dn = sigma[b].copy(), sigma[b].copy()
            up[i], dn[i] = 1.0, -1.0
            d = np.sum(F(xi @ up.astype(np.float64)) - F(xi @ dn.astype(np.float64)))
            out[b, i] = 1.0 if d > 0 else (-1.0 if d < 0 else sigma[b, i])
    return out


@pytest.mark.parametrize(
    "kw, F",
    [
        ({"n": 3}, lambda h: np.maximum(h, 0.0) ** 3),
        ({"n": 4, "rectified": False}, lambda h: h**4),
        ({"n": 2, "rectified": False}, lambda h: h**2),
        ({"kind": "exp", "beta": 0.5}, lambda h: np.exp(0.5 * h)),
    ],
)
def test_dense_associative_memory_energy_and_update(kw, F):
    xi = pm1(4, (40, 16))
    sigma = pm1(5, (3, 16))
    sigma[:2] = xi[:2]
    sigma[0, :3] *= -1  # a corrupted pattern
    net = C.dense_associative_memory(xi, **kw)
    close(net.energy(sigma), -np.sum(F(sigma @ xi.T), -1), rtol=1e-5)
    close(_sign(net, sigma), _np_dam_step(xi, sigma, F))
    if kw.get("kind") != "exp":
        e = net.energy_gap(sigma)
        for i in (0, 9):
            up, dn = sigma.copy(), sigma.copy()
            up[:, i], dn[:, i] = 1.0, -1.0
            close(e[:, i], -np.sum(F(dn @ xi.T), -1) + np.sum(F(up @ xi.T), -1), rtol=1e-5)
    # asynchronous sweep: same as the loop applied one neuron at a time, never raises the energy
    out = _sign(net, sigma, mode="async")
    s = sigma.copy()
    for i in range(16):
        s[:, i] = _np_dam_step(xi, s, F)[:, i]
    close(out, s)
    assert np.all(np.asarray(net.energy(out)) <= np.asarray(net.energy(sigma)) * (1 - 1e-6) + 1e-3)


def test_dense_associative_memory_exp_is_overflow_free():
    xi = pm1(6, (50, 400))  # βξ·σ = 400 overflows exp in float32; the update must not
    sigma = xi[:5].copy()
    sigma[:, :40] *= -1
    out = _sign(C.dense_associative_memory(xi, kind="exp"), sigma)
    close(out, xi[:5])


# ------------------------------------------------------------------------------- experiments


def test_patterns_and_corruption():
    xi = C.random_patterns(50, N, key=KEY)
    assert xi.shape == (50, N) and set(np.unique(np.asarray(xi))) == {-1.0, 1.0}
    assert abs(float(xi.mean())) < 0.05
    bad = C.flip_bits(xi, 7, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.sum(np.asarray(bad != xi), -1), 7)
    np.testing.assert_allclose(np.asarray(C.overlap(bad, xi)), 1 - 2 * 7 / N)


def test_theory_formulas():
    assert C.double_factorial(3) == 3 and C.double_factorial(5) == 15
    assert C.double_factorial(1) == 1 == C.double_factorial(-1)
    assert np.isclose(C.hopfield_error_free_capacity(100), 100 / (2 * np.log(100)))
    assert np.isclose(C.polynomial_error_free_capacity(100, 2), C.hopfield_error_free_capacity(100))
    assert np.isclose(C.polynomial_error_free_capacity(100, 3), 100**2 / (6 * np.log(100)))
    assert np.isclose(C.polynomial_error_free_capacity(100, 3, rectified=True),
                      2 * C.polynomial_error_free_capacity(100, 3))
    # Φ(−sqrt(N/K)) at N/K = 4: Φ(−2)
    assert np.isclose(C.snr_bit_error_rate(100, 25, 2), 0.0227501, rtol=1e-4)


def test_hebbian_one_step_bit_error_rate_matches_snr():
    """Band: measured one-step bit-error rate within a factor 1.5 of Φ(−sqrt(N/K)) at K = 0.2N
    and 0.3N (4,000 and 6,000 probed bits)."""
    r = C.capacity_curve("hebbian", N, [20, 30], key=KEY, trials=2, probe=None, steps=1)
    theory = C.snr_bit_error_rate(N, r["K"], 2)
    ratio = np.asarray(r["ber"]) / theory
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), (r["ber"], theory)


def test_hebbian_recovery_below_and_above_0138N():
    """Iterating asynchronous sign updates to a fixed point from 5%-corrupted patterns, with
    the small-error criterion (≤ 5% wrong bits): ≥ 95% recovered at K = 0.07N, ≤ 40% at
    K = 0.3N (theory: a retrieval phase up to 0.138N). Error-free: at K = 10 < N/(2 ln N) =
    10.9 at least 80% of the patterns are exact fixed points (theory (1 − Φ(−sqrt(N/K)))^N =
    0.92)."""
    fr = {}
    for k in (7, 30):
        xi = C.random_patterns(k, N, key=jax.random.fold_in(KEY, k))
        rec = C.recovery(C.classical_hopfield(xi), xi, key=jax.random.PRNGKey(k), flips=5,
                         probe=7, steps=None, mode="async", tolerance=0.05, max_steps=20)
        fr[k] = rec["fraction"]
    assert fr[7] >= 0.95 and fr[30] <= 0.4, fr
    assert C.hopfield_error_free_capacity(N) > 10
    stable = []
    for t in range(4):
        xi = C.random_patterns(10, N, key=jax.random.fold_in(KEY, 100 + t))
        stable.append(C.recovery(C.classical_hopfield(xi), xi, steps=1, mode="sync")["fraction"])
    assert np.mean(stable) >= 0.8, stable


@pytest.mark.parametrize("rectified", [True, False])
def test_polynomial_snr_and_the_rectified_factor_two(rectified):
    """n = 3, K = 1600 = 0.16 N²: the measured rate (4,000 probed bits) is within a factor 1.5
    of Φ(−sqrt(c N² / (3K))) with c = 2 for the rectified F (c = 1 for plain x³). The unrectified
    formula (c = 1) overestimates the rectified rate more than twofold."""
    kind = "poly" if rectified else "poly_plain"
    r = C.capacity_curve(kind, N, [1600], key=KEY, n=3, probe=40, steps=1, chunk=8)
    ber = r["ber"][0]
    theory = float(C.snr_bit_error_rate(N, 1600, 3, rectified=rectified))
    assert theory / 1.5 < ber < theory * 1.5, (ber, theory)
    if rectified:
        assert ber < 0.5 * float(C.snr_bit_error_rate(N, 1600, 3, rectified=False))


def test_polynomial_stable_fraction_and_exponential_beyond_n():
    """Rectified n = 3 at K = 800 = 2.7 × N²/(2·3!!·ln N): the fraction of exact fixed points is
    within ±0.15 of (1 − p)^N (theory 0.82). Exponential F at K = 10 N recovers every probed
    pattern from 20% flipped bits in one step."""
    r = C.capacity_curve("poly", N, [800], key=KEY, n=3, probe=40, steps=1, chunk=8)
    theory = float(C.predicted_stable_fraction(N, 800, 3, rectified=True))
    assert abs(r["fraction"][0] - theory) <= 0.15, (r["fraction"], theory)
    r = C.capacity_curve("exp", N, [10 * N], key=KEY, probe=20, flips=20, steps=1, chunk=10)
    assert r["fraction"][0] == 1.0


def test_continuous_hopfield_retrieval_with_relax():
    """The continuous (tanh) Hopfield model relaxed with hj.relax from a 10%-corrupted pattern
    settles on the stored pattern's signs (K = 3, N = 40)."""
    xi = C.random_patterns(3, 40, key=KEY)
    bad = C.flip_bits(xi, 4, key=jax.random.PRNGKey(2))
    net = M.continuous_hopfield(xi, 4.0)
    out, sol = C.relax_retrieve(net, 0.5 * bad)
    assert bool(np.all(np.asarray(sol.converged)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(xi))
