"""Independent NumPy references and comparisons that several test files share."""

import numpy as np

RTOL, ATOL = 2e-4, 2e-4


def pm1(seed, shape):
    """Seeded uniform ±1 patterns (float32)."""
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=shape).astype(np.float32)


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def np_hebb(xi):
    """The Hebbian weight ``(1/N) Σ_μ ξ_μ ξ_μᵀ`` with a zero diagonal."""
    w = xi.T @ xi / xi.shape[1]
    np.fill_diagonal(w, 0.0)
    return w
