"""Lagrangians: closed-form activations are gradients, batch axes are kept, Hessians are PSD,
learnable parameters are trained through a jitted relaxation loop."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hamjax as hj
from hamjax import lagrangians as L

RTOL, ATOL = 2e-5, 2e-6
PHI1 = 1.25781  # erf(1) + 2/(e√π), docs/maths.md §4.7


def _cases():
    delta4 = jnp.array([0.3, -0.2, 0.1, 0.5])
    delta3 = jnp.array([0.2, -0.4, 0.1])
    return [
        ("identity", L.Identity(), (5,)),
        ("relu", L.ReLU(), (5,)),
        ("repu3", L.RePU(3), (5,)),
        ("exp", L.Exp(0.7), (5,)),
        ("tanh", L.Tanh(1.3), (5,)),
        ("sigmoid", L.Sigmoid(2.0), (5,)),
        ("softmax", L.Softmax(1.5), (5,)),
        ("softmax_channels", L.Softmax(2.0, axis=-1), (2, 3, 4)),
        ("softmax_axis0", L.Softmax(0.8, axis=0), (3, 4)),
        ("softmax_axis1_of_3", L.Softmax(1.2, axis=1), (2, 3, 2)),
        ("layernorm", L.LayerNorm(gamma=1.3, delta=delta4), (4,)),
        ("layernorm_rows", L.LayerNorm(gamma=0.7, delta=delta4), (3, 4)),
        ("layernorm_axis0", L.LayerNorm(gamma=1.1, delta=delta3, axis=0), (3, 4)),
        ("spherical", L.SphericalNorm(), (4,)),
        ("spherical_delta", L.SphericalNorm(gamma=2.0, delta=delta4), (3, 4)),
        ("smu", L.SmoothLeakyReLU(0.3, 2.0), (5,)),
        ("smu_psd_edge", L.SmoothLeakyReLU(0.12, 0.7), (5,)),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]
CASE_BY_NAME = {c[0]: c for c in CASES}
ELEMENTWISE = [c[0] for c in CASES if isinstance(c[1], L.ElementwiseLagrangian)]


def _x(seed, shape, scale=1.5):
    # numpy draws: a jax.random draw would compile once per shape
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# One compiled program per case, shared by the tests below: XLA compiles dominate run time.
BATCH = (2, 3)


def _hessian(lag, x):
    shape = x.shape
    return jax.hessian(lambda v: lag(v.reshape(shape)))(x.reshape(-1))


@functools.cache
def _quantities(name):
    _, lag, shape = CASE_BY_NAME[name]
    ndim = len(shape)

    @jax.jit
    def q(xb):
        x1 = xb[0, 0]
        out = dict(
            closed=lag.activation(xb, ndim),
            auto=jax.grad(lambda v: jnp.sum(lag(v, ndim)))(xb),
            # ndim=None: the whole array is one layer
            closed1=lag.activation(x1),
            auto1=jax.grad(lag)(x1),
            value=lag(xb, ndim),
            per_sample_value=jnp.stack(
                [jnp.stack([lag(xb[i, j]) for j in range(BATCH[1])]) for i in range(BATCH[0])]),
            per_sample_act=jnp.stack(
                [jnp.stack([lag.activation(xb[i, j]) for j in range(BATCH[1])])
                 for i in range(BATCH[0])]),
            hessian=_hessian(lag, x1),
        )
        if getattr(lag, "axis", -1) < 0:  # a positive axis would count from the batch axes
            out["total"] = lag(xb)
        if isinstance(lag, L.ElementwiseLagrangian):
            out["derivative1"] = lag.derivative(x1)
            out["derivative"] = lag.derivative(xb)
            out["derivative_auto"] = jax.vmap(jax.grad(lag.activation))(xb.reshape(-1))
        return out

    return q


# ------------------------------------------------------------------ activation == grad L
@pytest.mark.parametrize("name", IDS)
def test_activation_is_gradient(name):
    q = _quantities(name)

    # hypothesis draws values; shapes stay fixed so the program compiles once
    @given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 1.5, 3.0]))
    @settings(max_examples=5)
    def check(seed, scale):
        x = _x(seed, BATCH + CASE_BY_NAME[name][2], scale)
        r = q(x)
        assert r["closed"].shape == x.shape
        np.testing.assert_allclose(r["closed"], r["auto"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(r["closed1"], r["auto1"], rtol=RTOL, atol=ATOL)

    check()


# ----------------------------------------------------------------------- batch axes kept
@pytest.mark.parametrize("name", IDS)
def test_batched_call_equals_stacked_samples(name):
    r = _quantities(name)(_x(1, BATCH + CASE_BY_NAME[name][2]))
    assert r["value"].shape == BATCH
    np.testing.assert_allclose(r["value"], r["per_sample_value"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(r["closed"], r["per_sample_act"], rtol=RTOL, atol=ATOL)
    if "total" in r:  # ndim=None: every axis is a layer axis, all summed
        np.testing.assert_allclose(r["total"], np.sum(r["per_sample_value"]), rtol=1e-4,
                                   atol=1e-5)


def test_softmax_channel_axis_reference():
    """Softmax over the channels of an (H, W, C) feature map, against plain numpy."""
    beta = 1.7
    x = np.asarray(_x(3, (2, 2, 3, 4)))  # batch 2 of (H, W, C) = (2, 3, 4)
    lag = L.Softmax(beta, axis=-1)
    e = np.exp(beta * x - (beta * x).max(-1, keepdims=True))
    np.testing.assert_allclose(lag.activation(x, 3), e / e.sum(-1, keepdims=True), rtol=1e-5)
    lse = np.log(np.exp(beta * x).sum(-1)) / beta
    np.testing.assert_allclose(lag(x, 3), lse.sum((-1, -2)), rtol=1e-5)
    # a positive axis counts inside the layer: axis=2 of an (H, W, C) layer is the channel axis
    lag2 = L.Softmax(beta, axis=2)
    np.testing.assert_allclose(lag2(x, 3), lse.sum((-1, -2)), rtol=1e-5)
    np.testing.assert_allclose(lag2.activation(x, 3), lag.activation(x, 3), rtol=1e-6)
    # axis=0 of the layer is H, not the batch axis
    lag0 = L.Softmax(beta, axis=0)
    e0 = np.exp(beta * x)
    np.testing.assert_allclose(lag0.activation(x, 3), e0 / e0.sum(1, keepdims=True), rtol=1e-5)


def test_axis_out_of_layer_range_is_rejected():
    x = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError, match="out of range"):
        L.Softmax(axis=2).activation(x, 2)
    with pytest.raises(ValueError, match="out of range"):
        L.Softmax(axis=-3).activation(x, 2)  # would reach the batch axis


def test_layernorm_and_spherical_reference():
    x = np.asarray(_x(4, (2, 4)))
    gamma, delta, eps = 1.3, np.array([0.3, -0.2, 0.1, 0.5]), 1e-5
    ln = L.LayerNorm(gamma=gamma, delta=delta, eps=eps)
    xc = x - x.mean(-1, keepdims=True)
    sd = np.sqrt((xc**2).mean(-1, keepdims=True) + eps)
    np.testing.assert_allclose(ln.activation(x, 1), gamma * xc / sd + delta, rtol=1e-5)
    np.testing.assert_allclose(ln(x, 1), gamma * 4 * sd[:, 0] + x @ delta, rtol=1e-5)
    sp = L.SphericalNorm(gamma=gamma, delta=delta, eps=eps)
    nrm = np.sqrt((x**2).sum(-1, keepdims=True) + eps)
    np.testing.assert_allclose(sp.activation(x, 1), gamma * x / nrm + delta, rtol=1e-5)
    np.testing.assert_allclose(sp(x, 1), gamma * nrm[:, 0] + x @ delta, rtol=1e-5)
    # a vector delta along a non-last axis broadcasts along that axis
    ln0 = L.LayerNorm(gamma=gamma, delta=delta[:2], axis=0, eps=eps)
    xt = x  # layer shape (2, 4), normalised along axis 0
    xc0 = xt - xt.mean(0, keepdims=True)
    sd0 = np.sqrt((xc0**2).mean(0, keepdims=True) + eps)
    np.testing.assert_allclose(ln0.activation(xt, 2), gamma * xc0 / sd0 + delta[:2, None],
                               rtol=1e-5, atol=1e-6)


def test_elementwise_closed_forms():
    x = np.linspace(-2.0, 2.0, 9, dtype=np.float32)
    r = np.maximum(x, 0)
    np.testing.assert_allclose(L.Identity()(x), 0.5 * (x**2).sum(), rtol=1e-6)
    np.testing.assert_allclose(L.ReLU()(x), 0.5 * (r**2).sum(), rtol=1e-6)
    np.testing.assert_allclose(L.RePU(3)(x), (r**3).sum() / 3, rtol=1e-6)
    np.testing.assert_allclose(L.RePU(3).activation(x), r**2, rtol=1e-6)
    np.testing.assert_allclose(L.Exp(0.7)(x), np.exp(0.7 * x).sum() / 0.7, rtol=1e-6)
    np.testing.assert_allclose(L.Tanh(1.3)(x), np.log(np.cosh(1.3 * x)).sum() / 1.3, rtol=1e-5)
    np.testing.assert_allclose(L.Sigmoid(2.0)(x), np.log1p(np.exp(2 * x)).sum() / 2, rtol=1e-6)
    np.testing.assert_allclose(L.Sigmoid(2.0).activation(x), 1 / (1 + np.exp(-2 * x)), rtol=1e-6)
    a, mu = 0.2, 1.5
    erf = np.vectorize(math.erf)
    g = 0.5 * ((1 + a) * x + (1 - a) * x * erf(mu * (1 - a) * x))
    np.testing.assert_allclose(L.SmoothLeakyReLU(a, mu).activation(x), g, rtol=1e-5, atol=1e-7)
    # the tanh Lagrangian stays finite where cosh overflows float32
    assert np.isfinite(L.Tanh(1.0)(jnp.array([200.0])))


def test_repu_rejects_nonconvex_degree():
    with pytest.raises(ValueError, match="n >= 2"):
        L.RePU(1.5)


# -------------------------------------------------------------------------- Hessian PSD
@pytest.mark.parametrize("name", IDS)
def test_hessian_is_psd(name):
    q = _quantities(name)

    @given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 1.0, 3.0]))
    @settings(max_examples=5)
    def check(seed, scale):
        h = np.asarray(q(_x(seed, BATCH + CASE_BY_NAME[name][2], scale))["hessian"], np.float64)
        np.testing.assert_allclose(h, h.T, atol=1e-5 * (1 + np.abs(h).max()))
        eig = np.linalg.eigvalsh(0.5 * (h + h.T))
        assert eig.min() >= -1e-5 * (1 + np.abs(eig).max()), eig

    check()


@pytest.mark.parametrize("a, mu", [(0.0, 1.0), (0.05, 2.5), (0.11, 0.5)])
def test_smooth_leaky_relu_not_psd_below_threshold(a, mu):
    lag = L.SmoothLeakyReLU(a, mu)
    x_min = -1.0 / (mu * (1.0 - a))
    h = np.asarray(jax.jit(lambda v: _hessian(lag, v))(jnp.full((3,), x_min)))
    eig = np.linalg.eigvalsh(h)
    expected = 0.5 * (1 + a) - 0.5 * (1 - a) * PHI1
    assert expected < 0
    assert eig.min() < 0
    np.testing.assert_allclose(eig.min(), expected, atol=1e-4)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_derivative_is_hessian_diagonal(name):
    x = _x(7, BATCH + CASE_BY_NAME[name][2])
    r = _quantities(name)(x)
    h = np.asarray(r["hessian"])
    np.testing.assert_allclose(r["derivative1"], np.diag(h), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(h - np.diag(np.diag(h)), 0.0, atol=1e-7)  # additive: diagonal
    # batch-shaped input: derivative is elementwise and keeps the shape
    assert r["derivative"].shape == x.shape
    np.testing.assert_allclose(r["derivative"].reshape(-1), r["derivative_auto"], rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("a, mu", [(0.0, 1.0), (0.05, 2.5), (0.3, 0.5), (0.9, 4.0)])
def test_smooth_leaky_relu_derivative_bounds_are_tight(a, mu):
    lag = L.SmoothLeakyReLU(a, mu)
    lo, hi = (float(b) for b in lag.derivative_bounds())
    np.testing.assert_allclose(lo, 0.5 * (1 + a) - 0.5 * (1 - a) * PHI1, atol=1e-5)
    np.testing.assert_allclose(hi, 0.5 * (1 + a) + 0.5 * (1 - a) * PHI1, atol=1e-5)
    c = mu * (1 - a)
    # attained at x = ∓1/(μ(1−a))
    np.testing.assert_allclose(lag.derivative(jnp.array(-1.0 / c)), lo, atol=1e-6)
    np.testing.assert_allclose(lag.derivative(jnp.array(1.0 / c)), hi, atol=1e-6)
    # respected on a grid, and nothing on the grid beats them
    grid = np.linspace(-8.0 / c, 8.0 / c, 4001, dtype=np.float32)
    d = np.asarray(jax.jit(lambda v: lag.derivative(v))(grid))
    assert d.min() >= lo - 1e-6 and d.max() <= hi + 1e-6
    np.testing.assert_allclose([d.min(), d.max()], [lo, hi], atol=1e-5)
    # the derivative goes back to the leak and to 1 far out
    np.testing.assert_allclose(lag.derivative(jnp.array([-50.0 / c, 50.0 / c])), [a, 1.0],
                               atol=1e-6)


def test_smooth_leaky_relu_psd_threshold():
    assert float(L.SmoothLeakyReLU(0.0).derivative_bounds()[0]) == pytest.approx(-0.1289, abs=1e-4)
    assert float(L.SmoothLeakyReLU(0.0).derivative_bounds()[1]) == pytest.approx(1.1289, abs=1e-4)
    assert float(L.SmoothLeakyReLU(0.1135).derivative_bounds()[0]) < 0
    assert float(L.SmoothLeakyReLU(0.1150).derivative_bounds()[0]) > 0


# -------------------------------------------------- learnable parameters through relaxation
DT, STEPS = 0.2, 6


def _softmax_ham(lagrangian):
    k1, k2 = jax.random.split(jax.random.PRNGKey(11))
    return hj.HAM(
        layers={
            "v": hj.Layer((4,), L.Identity(), tau=1.0),
            "h": hj.Layer((3,), lagrangian, tau=0.5),
        },
        synapses={"xi": hj.synapses.Dense(4, 3, key=k1, scale=1.0)},
        edges={"xi": ("v", "h")},
    ), k2


@eqx.filter_jit
def _relaxed_loss(net, x0, target):
    def step(x, _):
        dx = net.vector_field(x)
        return {n: x[n] + DT * dx[n] for n in x}, None

    x, _ = jax.lax.scan(step, x0, None, length=STEPS)
    return jnp.sum((x["v"] - target) ** 2) + jnp.sum(net.energy(x))


@pytest.mark.parametrize(
    "lagrangian, get",
    [
        (L.Softmax(1.3), lambda n: n.layers["h"].lagrangian.beta),
        (L.Tanh(0.8), lambda n: n.layers["h"].lagrangian.beta),
        (L.LayerNorm(gamma=0.9), lambda n: n.layers["h"].lagrangian.gamma),
    ],
    ids=["softmax_beta", "tanh_beta", "layernorm_gamma"],
)
def test_lagrangian_parameter_gradient_through_relaxation(lagrangian, get):
    net, k = _softmax_ham(lagrangian)
    x0 = {"v": jax.random.normal(k, (2, 4)), "h": jnp.zeros((2, 3))}
    target = jnp.ones((2, 4))
    grads = eqx.filter_jit(eqx.filter_grad(_relaxed_loss))(net, x0, target)
    g = float(get(grads))
    assert np.isfinite(g) and g != 0.0
    eps = 1e-2
    p = get(net)
    lp = _relaxed_loss(eqx.tree_at(get, net, p + eps), x0, target)
    lm = _relaxed_loss(eqx.tree_at(get, net, p - eps), x0, target)
    fd = float(lp - lm) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-3)
