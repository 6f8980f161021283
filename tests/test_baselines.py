"""The restoration baselines (hj.data.nearest_fill, hopfield_fill, PCA, fit_baselines) against
brute-force NumPy, their limits and closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

import hamjax as hj

D = hj.data


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (50, 24)).astype(np.float32)
    x = rng.uniform(0, 1, (7, 24)).astype(np.float32)
    evidence = (rng.uniform(size=(7, 24)) < 0.5).astype(np.float32)
    return train, x, evidence


def test_nearest_is_the_brute_force_nearest_on_the_evidence(data):
    train, x, e = data
    d = ((x[:, None, :] - train[None]) ** 2 * e[:, None, :]).sum(-1)
    np.testing.assert_array_equal(D.nearest_fill(x, e, train, chunk=16), train[d.argmin(1)])


def test_hopfield_is_the_softmax_average_with_the_nearest_and_the_mean_as_limits(data):
    train, x, e = data
    d = ((x[:, None, :] - train[None]) ** 2 * e[:, None, :]).sum(-1).astype(np.float64)
    w = np.exp(-0.5 * 3.0 * (d - d.min(1, keepdims=True)))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(D.hopfield_fill(x, e, train, 3.0, chunk=16), w @ train,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(D.hopfield_fill(x, e, train, 1e6), D.nearest_fill(x, e, train),
                               atol=1e-6)
    np.testing.assert_allclose(D.hopfield_fill(x, e, train, 0.0),
                               np.broadcast_to(train.mean(0), x.shape), atol=1e-6)


def test_pca_recovers_an_image_of_its_span_from_half_its_pixels(data):
    train, _, e = data
    pca = D.fit_pca(train, 5)
    u = np.asarray(pca.components)
    np.testing.assert_allclose(u @ u.T, np.eye(5), atol=1e-5)  # orthonormal
    z = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    x = np.asarray(pca.mean) + z @ u
    hidden_garbage = np.where(e > 0, x, 7.0)  # the hidden pixels play no part
    np.testing.assert_allclose(pca.fill(hidden_garbage, e, 5, ridge=0.0), x, atol=1e-4)
    # every pixel evidence: the orthogonal projection onto the first k components
    y = data[1]
    proj = np.asarray(pca.mean) + (y - np.asarray(pca.mean)) @ u[:3].T @ u[:3]
    np.testing.assert_allclose(pca.fill(y, np.ones_like(y), 3, ridge=0.0), proj, atol=1e-5)
    with pytest.raises(D.DataError, match="max_components"):
        D.fit_pca(train, 0)


def test_fit_baselines_chooses_the_best_validation_setting(data):
    train, _, _ = data
    rng = np.random.default_rng(2)
    clean = train[:10] + 0.05 * rng.normal(size=(10, 24)).astype(np.float32)
    noisy = clean + 0.3 * rng.normal(size=clean.shape).astype(np.float32)
    ones = np.ones_like(clean)
    b = D.fit_baselines(train, clean, noisy, ones, ones, ks=(2, 4, 8), betas=(0.1, 1.0, 10.0))
    assert set(b.validation["pca"]) == {2, 4, 8} and set(b.validation["hopfield"]) == {0.1, 1, 10}
    assert b.k == max(b.validation["pca"], key=b.validation["pca"].get)
    assert b.beta == max(b.validation["hopfield"], key=b.validation["hopfield"].get)
    assert set(b.at_grid_edge) <= {"k", "beta"}
    assert ("k" in b.at_grid_edge) == (b.k in (2, 8))
    best = float(jnp.mean(D.masked_psnr(clean, b.pca.fill(noisy, ones, b.k), ones)))
    assert best == pytest.approx(b.validation["pca"][b.k], rel=1e-5)
    out = b.restore(noisy, ones, batch_size=3)
    np.testing.assert_allclose(out["nearest"], D.nearest_fill(noisy, ones, train))
    assert {k: v.shape for k, v in out.items()} == dict.fromkeys(out, (10, 24))


def test_masked_psnr_over_every_pixel_is_psnr(data):
    train, x, e = data
    np.testing.assert_allclose(D.masked_psnr(train[:7], x, np.ones_like(x)),
                               D.psnr(train[:7], x), rtol=1e-5)
    se = ((train[:7] - x) ** 2 * e).sum(1) / e.sum(1)
    np.testing.assert_allclose(D.masked_psnr(train[:7], x, e), 10 * np.log10(1 / se), rtol=1e-5)
    # an exact restoration of the scored pixels: 8-bit quantisation noise's 58.9 dB, not inf
    exact = np.where(e > 0, train[:7], x)
    np.testing.assert_allclose(D.masked_psnr(train[:7], exact, e),
                               10 * np.log10(12 * 255.0 ** 2), rtol=1e-6)
