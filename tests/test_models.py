"""Ready-made HAMs (hamjax.models) against closed forms written independently in numpy: the
energy each docstring states, and its update (attention step, or the vector field of docs/maths.md
eqs. 5/14/17/21); the Energy Transformer's synapses against explicit loops.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import close, np_hebb, pm1

from hamjax import models as M
from hamjax import synapses as S
from hamjax.lagrangians import Softmax

# jitted entry points: one compilation each beats op-by-op dispatch on a loaded CPU
_energy = eqx.filter_jit(lambda net, x: net.energy(x))
_field = eqx.filter_jit(lambda net, x: net.vector_field(x))
_rate = eqx.filter_jit(lambda net, x: net.energy_rate(x))
_step = eqx.filter_jit(M.fixed_point_step)


def _rand(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _np_softmax(h, beta=1.0, axis=-1):
    z = beta * h - np.max(beta * h, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _np_lse(h, beta=1.0, axis=-1):
    m = np.max(beta * h, axis=axis, keepdims=True)
    return (np.squeeze(m, axis) + np.log(np.exp(beta * h - m).sum(axis=axis))) / beta


def _np_softmax_legendre(h, beta):
    """``h·softmax(βh) − (1/β) log Σ e^{βh}`` along the last axis."""
    return np.sum(h * _np_softmax(h, beta), -1) - _np_lse(h, beta)


# ------------------------------------------------------------- continuous classical Hopfield
def test_continuous_hopfield_energy_and_field():
    xi = pm1(2, (3, 12))
    beta = 2.0
    net = M.continuous_hopfield(xi, beta)
    x = _rand(3, (5, 12))
    g = np.tanh(beta * x)
    w = np_hebb(xi)
    legendre = np.sum(x * g - np.log(np.cosh(beta * x)) / beta, -1)
    close(_energy(net, {"image": x}), legendre - 0.5 * np.einsum("bi,ij,bj->b", g, w, g))
    close(_field(net, {"image": x})["image"], g @ w - x)
    with pytest.raises(ValueError, match="weight"):
        S.Lateral(12, weight=np.zeros((3, 3)))


# -------------------------------------------------------------------------- modern Hopfield
def test_modern_hopfield_energy_and_attention_step():
    xi = _rand(7, (9, 10))
    v = _rand(8, (4, 10))
    beta = 3.0
    net = M.modern_hopfield(xi, beta)
    close(_energy(net, {"image": v}), 0.5 * np.sum(v * v, -1) - _np_lse(v @ xi.T, beta))
    step = _step(net, {"image": v})["image"]
    close(step, _np_softmax(v @ xi.T, beta) @ xi)
    # the same as dot-product attention with queries v, keys = values = ξ, scale β
    q = jnp.asarray(v)[None, :, None, :]
    kv = jnp.asarray(xi)[None, :, None, :]
    att = jax.nn.dot_product_attention(q, kv, kv, scale=beta)[0, :, 0, :]
    close(step, att)
    # image-shaped patterns keep their shape
    imgs = _rand(9, (5, 4, 4, 1))
    net = M.modern_hopfield(imgs, 1.0)
    assert net.layers["image"].shape == (4, 4, 1)


# --------------------------------------------------------------------- HAM paper, §4.1–4.3
def test_ham_1hidden_eqs_13_to_15():
    xi = _rand(10, (6, 8))
    beta = 1.5
    net = M.ham_1hidden(xi, beta)
    v, h = _rand(11, (3, 8)), _rand(12, (3, 6))
    f = _np_softmax(h, beta)
    e = 0.5 * np.sum(v * v, -1) + _np_softmax_legendre(h, beta) - np.einsum("bm,mi,bi->b", f, xi, v)
    close(_energy(net, {"image": v, "hidden": h}), e)
    dx = _field(net, {"image": v, "hidden": h})
    close(dx["image"], f @ xi - v)
    close(dx["hidden"], (v @ xi.T - h) / 0.1, rtol=1e-3, atol=1e-3)
    # adiabatic limit: h = ξv gives the Ramsauer energy
    ad = M.ham_1hidden(xi, beta, adiabatic=True)
    close(_energy(ad, {"image": v}), _energy(net, {"image": v, "hidden": v @ xi.T}))


def test_ham_2hidden_eqs_16_to_19():
    xi, theta = _rand(13, (6, 8)), _rand(14, (4, 6))
    beta, gamma = 1.5, 0.7
    net = M.ham_2hidden(xi, theta, beta, gamma, taus=(1.0, 1.0, 1.0))
    v, h, z = _rand(15, (2, 8)), _rand(16, (2, 6)), _rand(17, (2, 4))
    f, g = _np_softmax(h, beta), _np_softmax(z, gamma)
    e = (0.5 * np.sum(v * v, -1) + _np_softmax_legendre(h, beta) + _np_softmax_legendre(z, gamma)
         - np.einsum("bm,mi,bi->b", f, xi, v) - np.einsum("ba,am,bm->b", g, theta, f))
    x = {"image": v, "hidden": h, "top": z}
    close(_energy(net, x), e)
    dx = _field(net, x)
    close(dx["image"], f @ xi - v)
    close(dx["hidden"], v @ xi.T + g @ theta - h)
    close(dx["top"], f @ theta.T - z)
    ad = M.ham_2hidden(xi, theta, beta, gamma, adiabatic_top=True)
    close(_energy(ad, {"image": v, "hidden": h}), _energy(net, {**x, "top": f @ theta.T}))


def _np_conv(v, k, s):
    """VALID cross-correlation, NHWC × HWIO, stride s, as explicit loops."""
    b, n, _, c = v.shape
    w, _, _, kk = k.shape
    m = (n - w) // s + 1
    out = np.zeros((b, m, m, kk), np.float64)
    for a in range(m):
        for bb in range(m):
            patch = v[:, a * s:a * s + w, bb * s:bb * s + w, :]
            out[:, a, bb, :] = np.einsum("bxyc,xyck->bk", patch, k)
    return out


def _np_conv_t(f, k, s, n):
    b, m, _, kk = f.shape
    w, _, c, _ = k.shape
    out = np.zeros((b, n, n, c), np.float64)
    for a in range(m):
        for bb in range(m):
            out[:, a * s:a * s + w, bb * s:bb * s + w, :] += np.einsum("bk,xyck->bxyc",
                                                                    f[:, a, bb, :], k)
    return out


def test_ham_conv_eqs_20_to_23():
    kernel = _rand(18, (3, 3, 2, 4), 0.5)
    image_shape, stride = (7, 7, 2), 2
    m = (7 - 3) // stride + 1
    theta = _rand(19, (5, m * m * 4), 0.5)
    beta, gamma = 1.3, 0.8
    net = M.ham_conv(kernel, theta, image_shape, beta, gamma, stride=stride, taus=(1, 1, 1))
    assert net.layers["features"].shape == (m, m, 4)
    v, h, z = _rand(20, (2, 7, 7, 2)), _rand(21, (2, m, m, 4)), _rand(22, (2, 5))
    f, g = _np_softmax(h, beta), _np_softmax(z, gamma)
    conv = _np_conv(v, kernel, stride)
    e = (0.5 * np.sum(v * v, (1, 2, 3)) + _np_softmax_legendre(h, beta).sum((1, 2))
         + _np_softmax_legendre(z, gamma) - np.sum(f * conv, (1, 2, 3))
         - np.einsum("ba,aj,bj->b", g, theta, f.reshape(2, -1)))
    x = {"image": v, "features": h, "top": z}
    close(_energy(net, x), e)
    dx = _field(net, x)
    close(dx["image"], _np_conv_t(f, kernel, stride, 7) - v)
    close(dx["features"], conv + (g @ theta).reshape(h.shape) - h)
    close(dx["top"], f.reshape(2, -1) @ theta.T - z)
    ad = M.ham_conv(kernel, theta, image_shape, beta, gamma, stride=stride, adiabatic_top=True)
    z_star = f.reshape(2, -1) @ theta.T
    close(_energy(ad, {"image": v, "features": h}), _energy(net, {**x, "top": z_star}))


def test_deep_dense_ham_eqs_5_and_8():
    sizes = (5, 7, 4, 3)
    ws = [_rand(30 + i, (sizes[i + 1], sizes[i])) for i in range(3)]
    net = M.deep_dense_ham(sizes, key=jax.random.PRNGKey(0), weights=ws, beta=2.0)
    xs = [_rand(40 + i, (2, s)) for i, s in enumerate(sizes)]
    gs = [xs[0]] + [_np_softmax(x, 2.0) for x in xs[1:]]
    e = 0.5 * np.sum(xs[0] ** 2, -1) + sum(_np_softmax_legendre(x, 2.0) for x in xs[1:])
    e = e - sum(np.einsum("bi,ij,bj->b", gs[i + 1], ws[i], gs[i]) for i in range(3))
    state = {f"layer{i}": x for i, x in enumerate(xs)}
    close(_energy(net, state), e)
    dx = _field(net, state)
    for a in range(4):
        cur = np.zeros_like(xs[a])
        if a > 0:
            cur += gs[a - 1] @ ws[a - 1].T
        if a < 3:
            cur += gs[a + 1] @ ws[a]
        close(dx[f"layer{a}"], (cur - xs[a]) / 0.5**a, rtol=1e-3, atol=1e-3)


def test_conv_pool_ham_energy_and_lyapunov():
    net = M.conv_pool_ham((6, 6, 1), channels=3, kernel_size=3, pool=2, num_top=4,
                          key=jax.random.PRNGKey(1), beta=1.2, gamma=0.9)
    assert net.layers["pooled"].shape == (2, 2, 3)
    x = {n: _rand(90 + i, (2,) + layer.shape) for i, (n, layer) in enumerate(net.layers.items())}
    k = np.asarray(net.synapses["conv"].kernel)
    theta = np.asarray(net.synapses["theta"].weight)
    v, h, p, z = (np.asarray(x[n]) for n in ("image", "features", "pooled", "top"))
    f, g = _np_softmax(h, 1.2), _np_softmax(z, 0.9)
    pooled_f = f.reshape(2, 2, 2, 2, 2, 3).mean((2, 4))
    e = (0.5 * np.sum(v * v, (1, 2, 3)) + _np_softmax_legendre(h, 1.2).sum((1, 2))
         + 0.5 * np.sum(p * p, (1, 2, 3)) + _np_softmax_legendre(z, 0.9)
         - np.sum(f * _np_conv(v, k, 1), (1, 2, 3)) - np.sum(p * pooled_f, (1, 2, 3))
         - np.einsum("ba,aj,bj->b", g, theta, p.reshape(2, -1)))
    close(_energy(net, x), e)
    dx = _field(net, x)
    close(dx["pooled"], (pooled_f + (g @ theta).reshape(p.shape) - p) / 0.2)
    assert np.all(np.asarray(_rate(net, x)) <= 1e-5)


# ---------------------------------------------------------------- Energy Transformer block
def _np_attention_energy(g, wk, wq, beta):
    """The Energy Transformer attention energy as explicit loops over heads, queries and keys."""
    heads, _, _ = wk.shape
    t = g.shape[0]
    e = 0.0
    for hd in range(heads):
        k = g @ wk[hd].T  # (T, Y)
        q = g @ wq[hd].T
        for c in range(t):
            terms = [math.exp(beta * float(k[b] @ q[c])) for b in range(t) if b != c]
            e -= math.log(sum(terms)) / beta
    return e


def test_attention_synapse_against_loops_and_finite_differences():
    att = S.Attention(6, num_heads=2, head_dim=3, beta=0.8, key=jax.random.PRNGKey(3))
    g = _rand(50, (2, 5, 6))
    wk, wq = np.asarray(att.key_weight, np.float64), np.asarray(att.query_weight, np.float64)
    ref = [_np_attention_energy(g[b].astype(np.float64), wk, wq, 0.8) for b in range(2)]
    close(att.energy(g), ref, rtol=1e-5)
    # the current −∂E/∂g against central differences of the energy along random directions
    grad = jax.grad(lambda x: jnp.sum(_energy(att, x)))(jnp.asarray(g))
    for seed in range(3):
        d = _rand(60 + seed, g.shape)
        eps = 1e-2
        fd = (np.sum(_np_e(att, g + eps * d)) - np.sum(_np_e(att, g - eps * d))) / (2 * eps)
        close(np.sum(np.asarray(grad) * d), fd, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="shape"):
        S.Attention(6, 2, 3, key_weight=np.zeros((2, 3, 5)), query_weight=np.zeros((2, 3, 6)))


def _np_e(att, g):
    wk, wq = np.asarray(att.key_weight, np.float64), np.asarray(att.query_weight, np.float64)
    return [_np_attention_energy(gb.astype(np.float64), wk, wq, float(att.beta)) for gb in g]


def test_token_memory_is_per_token():
    xi = _rand(70, (5, 4))
    g = _rand(71, (3, 6, 4))
    relu = S.TokenMemory(4, 5, memories=xi)
    close(relu.energy(g), -0.5 * np.sum(np.maximum(g @ xi.T, 0) ** 2, (1, 2)))
    soft = S.TokenMemory(4, 5, memories=xi, lagrangian=Softmax(2.0))
    close(soft.energy(g), -_np_lse(g @ xi.T, 2.0).sum(-1))


def test_energy_transformer_block_energy_field_and_patches():
    img = _rand(80, (2, 4, 4, 2))
    toks = np.asarray(M.patchify(img, 2))
    assert toks.shape == (2, 4, 8)
    close(toks[1, 2], img[1, 2:4, 0:2, :].reshape(-1))  # patch (1, 0) in row-major order
    close(M.unpatchify(toks, (4, 4, 2), 2), img)

    net = M.energy_transformer_block((4, 4, 2), 2, key=jax.random.PRNGKey(4), num_heads=2,
                                     head_dim=3, num_memories=6, gamma=1.0)
    x = toks.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    sd = np.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5)
    g = xc / sd
    legendre = np.sum(x * g, (1, 2)) - np.sum(8 * sd[..., 0], -1)
    att, mem = net.synapses["attention"], np.asarray(net.synapses["hopfield"].memories)
    e = (legendre + np.asarray(_np_e(att, g))
         - 0.5 * np.sum(np.maximum(g @ mem.T, 0) ** 2, (1, 2)))
    state = {"tokens": jnp.asarray(toks)}
    close(_energy(net, state), e, rtol=1e-4, atol=1e-3)
    # τ dx/dt = −∂E_syn/∂g − x, with ∂E/∂g of both synapses by autodiff of the summed energy
    cur = -jax.grad(lambda gg: jnp.sum(att.energy(gg) + net.synapses["hopfield"].energy(gg)))(
        jnp.asarray(g, jnp.float32))
    close(_field(net, state)["tokens"], np.asarray(cur) - toks, rtol=1e-3, atol=1e-3)
    assert np.all(np.asarray(_rate(net, state)) <= 1e-4)
