"""Energy slices (hj.analysis.energy_slice) against direct evaluation, and the dead-neurons
paper's Figure 1 property: the energy is flat along a dead neuron, the residual energy is not."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax as hj

A = jnp.array([[2.0, 0.5, 0.0, 0.1, 0.0], [0.5, 1.0, 0.2, 0.0, 0.0], [0.0, 0.2, 3.0, 0.0, 0.4],
               [0.1, 0.0, 0.0, 1.5, 0.3], [0.0, 0.0, 0.4, 0.3, 0.7]])


def _vec(x):
    return jnp.concatenate([x["p"], x["q"]])  # jax.tree order: p, q


def test_a_slice_is_the_function_and_the_projected_field_on_the_plane():
    x_star = {"p": jnp.array([0.3, -0.2, 1.0]), "q": jnp.array([0.5, 0.1])}
    d1 = {"p": jnp.array([2.0, 0.0, 0.0]), "q": jnp.array([0.0, 0.0])}
    d2 = {"p": jnp.array([1.0, 1.0, 0.0]), "q": jnp.array([0.0, 1.0])}
    energy = lambda x: 0.5 * _vec(x) @ A @ _vec(x)  # noqa: E731
    field = lambda x: {"p": -(A @ _vec(x))[:3], "q": -(A @ _vec(x))[3:]}  # noqa: E731
    s = hj.analysis.energy_slice(energy, x_star, d1, d2, extent=(-1.0, 2.0, -0.5, 0.5), grid=5,
                                 vector_field=field)
    np.testing.assert_allclose([s.u @ s.u, s.v @ s.v, s.u @ s.v], [1, 1, 0], atol=1e-12)
    np.testing.assert_allclose(s.u, [1, 0, 0, 0, 0])
    np.testing.assert_allclose(s.v, np.array([0, 1, 0, 0, 1]) / np.sqrt(2))
    x0 = np.asarray(_vec(x_star), np.float64)
    for i, j in [(0, 0), (2, 3), (4, 1)]:  # rows along b, columns along a
        x = x0 + s.a[j] * s.u + s.b[i] * s.v
        np.testing.assert_allclose(s.values[i, j], 0.5 * x @ np.asarray(A) @ x, rtol=1e-5)
        f = -np.asarray(A) @ x
        np.testing.assert_allclose(s.field[:, i, j], [f @ s.u, f @ s.v], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parallel"):
        hj.analysis.energy_slice(energy, x_star, d1, d1)
    with pytest.raises(ValueError, match="zero"):
        hj.analysis.energy_slice(energy, x_star, jax.tree.map(jnp.zeros_like, d1), d2)


def test_the_energy_is_flat_along_a_dead_neuron_and_the_residual_energy_is_not():
    """Two ReLU neurons, W = [[0, ½], [½, ¼]], b = (−2, 1.5): steady state x* = (−1, 2) with
    neuron 0 dead. Along x₀ < 0 the energy (DN eq. 4) does not change; the residual energy
    ½|F|² (DN eq. 14, α = 0) grows away from x* in every direction."""
    lateral = hj.synapses.Lateral(2, zero_diagonal=False, key=jax.random.PRNGKey(0))
    lateral = eqx.tree_at(lambda s: s.weight, lateral, jnp.array([[0.0, 0.5], [0.5, 0.25]]))
    layer = hj.Layer(2, hj.lagrangians.ReLU(), bias=jnp.array([-2.0, 1.5]))
    net = hj.HAM({"x": layer}, {"w": lateral}, {"w": ("x",)})
    x_star = {"x": jnp.array([-1.0, 2.0])}
    dyn = net.dynamics(x_star)
    np.testing.assert_allclose(dyn(x_star)["x"], 0.0, atol=1e-6)
    e0, e1 = {"x": jnp.array([1.0, 0.0])}, {"x": jnp.array([0.0, 1.0])}
    grid = 9
    s = hj.analysis.energy_slice(net.energy, x_star, e0, e1, extent=0.8, grid=grid,
                                 vector_field=dyn)
    dead = s.a + (-1.0) < 0  # columns where neuron 0 stays dead: all of them here
    assert dead.all()
    np.testing.assert_allclose(s.values, s.values[:, :1].repeat(grid, 1), atol=1e-6)  # flat
    assert np.ptp(s.values[:, grid // 2]) > 0.1  # not flat along the live neuron
    r = hj.analysis.energy_slice(lambda x: hj.analysis.residual_energy(net, x), x_star, e0, e1,
                                 extent=0.8, grid=grid)
    c = grid // 2
    assert r.values[c, c] == pytest.approx(0.0, abs=1e-10)
    assert np.all(np.delete(r.values.ravel(), c * grid + c) > 0)  # one bowl, no flat line
    # the field along the dead direction pulls back to x*: ẋ₀ = −(x₀ − x₀*) there
    np.testing.assert_allclose(s.field[0, c], -s.a, atol=1e-5)
