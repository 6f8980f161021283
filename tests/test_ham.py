"""The HAM graph: energies and vector fields of the HAM paper's architectures (docs/maths.md §3)
written out independently in plain jnp, Lyapunov properties on random graphs, clamping,
transformations, and every validation rule."""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hamjax as hj
from hamjax import lagrangians as L
from hamjax import synapses as S

RTOL, ATOL = 1e-4, 1e-4


def _rand(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _keys(n, seed=0):
    return jax.random.split(jax.random.PRNGKey(seed), n)


def _dense(seed, n_in, n_out, scale=None):
    """A Dense synapse with a numpy Gaussian weight (no jax.random compile per shape)."""
    n = int(np.prod(n_in))
    scale = 1.0 / np.sqrt(n) if scale is None else scale
    return S.Dense(n_in, n_out, weight=_rand(seed, (int(np.prod(n_out)), n), scale))


def _close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _close_dict(a, b, rtol=RTOL, atol=ATOL):
    assert set(a) == set(b)
    for n in a:
        assert a[n].shape == b[n].shape, n
        _close(a[n], b[n], rtol, atol)


@eqx.filter_jit
def _energy_and_field(net, x, clamp=()):
    return net.energy(x), net.vector_field(x, clamp=clamp)


def _lse(a, beta, axis=-1):
    return jax.nn.logsumexp(beta * a, axis=axis) / beta


def _softmax(a, beta, axis=-1):
    e = jnp.exp(beta * a - jnp.max(beta * a, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


# ============================================ §3.1 one hidden layer, eqs. (13)-(15)
N, K, B = 5, 4, 3


def _one_hidden(beta, tau_v, tau_h):
    net = hj.HAM(
        layers={
            "v": hj.Layer(N, L.Identity(), tau=tau_v),
            "h": hj.Layer(K, L.Softmax(beta), tau=tau_h),
        },
        synapses={"xi": _dense(5, N, K, scale=0.8)},
        edges={"xi": ("v", "h")},
    )
    return net, net.synapses["xi"].weight  # ξ: (K, N), h from v


@pytest.mark.parametrize("beta, tau_v, tau_h", [(1.0, 1.0, 1.0), (2.5, 3.0, 0.2)])
def test_one_hidden_layer_energy_and_dynamics(beta, tau_v, tau_h):
    net, xi = _one_hidden(beta, tau_v, tau_h)
    v, h = _rand(1, (B, N)), _rand(2, (B, K), 2.0)

    @jax.jit
    def reference(v, h, xi):
        f = _softmax(h, beta)
        # (15), with the inverse temperature of (16)
        e = (0.5 * jnp.sum(v**2, -1) + jnp.sum(h * f, -1) - _lse(h, beta)
             - jnp.einsum("bm,mi,bi->b", f, xi, v))
        # (14)
        dv = (jnp.einsum("mi,bm->bi", xi, f) - v) / tau_v
        dh = (jnp.einsum("mi,bi->bm", xi, v) - h) / tau_h
        # (9) with the per-layer tau and the softmax Jacobian
        hess = jax.vmap(jax.jacobian(lambda a: _softmax(a, beta)))(h)
        rate = -tau_v * jnp.sum(dv**2, -1) - tau_h * jnp.einsum("bm,bmn,bn->b", dh, hess, dh)
        return e, {"v": dv, "h": dh}, rate

    e_ref, dx_ref, rate_ref = reference(v, h, xi)
    e, dx = _energy_and_field(net, {"v": v, "h": h})
    _close(e, e_ref)
    _close_dict(dx, dx_ref)
    _close(eqx.filter_jit(lambda n, x: n.energy_rate(x))(net, {"v": v, "h": h}), rate_ref)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_memory_equals_hidden_softmax_layer_at_its_fixed_point(beta):
    """Adiabatic limit τ_h → 0 of §3.1: the Memory synapse is the explicit model at h = ξv."""
    net, xi = _one_hidden(beta, 1.5, 1.0)
    mem = hj.HAM(
        layers={"v": hj.Layer(N, L.Identity(), tau=1.5)},
        synapses={"xi": S.Memory(N, K, beta=beta, memories=xi)},
        edges={"xi": "v"},
    )
    v = _rand(3, (B, N), 1.5)

    @jax.jit
    def ramsauer(v, xi):  # energy and update of the modern Hopfield network
        h = v @ xi.T
        return h, 0.5 * jnp.sum(v**2, -1) - _lse(h, beta), (_softmax(h, beta) @ xi - v) / 1.5

    h_star, e_ref, dv_ref = ramsauer(v, xi)
    e_full, dx_full = _energy_and_field(net, {"v": v, "h": h_star})
    e_mem, dx_mem = _energy_and_field(mem, {"v": v})
    _close(dx_full["h"], 0.0)  # h = ξv is the hidden layer's equilibrium
    _close(e_mem, e_full)
    _close(e_mem, e_ref)
    _close(dx_mem["v"], dx_full["v"])
    _close(dx_mem["v"], dv_ref)


# ============================================ §3.2 two dense hidden layers, eqs. (16)-(19)
NZ = 3


def _two_hidden(beta, gamma, taus=(1.0, 0.5, 0.25), adiabatic=False):
    xi_syn = _dense(6, N, K, scale=0.9)
    th_syn = _dense(7, K, NZ, scale=1.1)
    layers = {
        "v": hj.Layer(N, L.Identity(), tau=taus[0]),
        "h": hj.Layer(K, L.Softmax(beta), tau=taus[1]),
    }
    if adiabatic:
        theta = S.Memory(K, NZ, beta=gamma, memories=th_syn.weight)
        net = hj.HAM(layers, {"xi": xi_syn, "theta": theta}, {"xi": ("v", "h"), "theta": ("h",)})
    else:
        layers["z"] = hj.Layer(NZ, L.Softmax(gamma), tau=taus[2])
        net = hj.HAM(layers, {"xi": xi_syn, "theta": th_syn},
                     {"xi": ("v", "h"), "theta": ("h", "z")})
    return net, xi_syn.weight, th_syn.weight  # ξ: (K, N), Θ: (NZ, K)


@partial(jax.jit, static_argnums=(5, 6))
def _eq18(v, h, z, xi, th, beta, gamma):
    f, g = _softmax(h, beta), _softmax(z, gamma)
    return (0.5 * jnp.sum(v**2, -1)
            + jnp.sum(h * f, -1) - _lse(h, beta)
            + jnp.sum(z * g, -1) - _lse(z, gamma)
            - jnp.einsum("bm,mi,bi->b", f, xi, v)
            - jnp.einsum("ba,am,bm->b", g, th, f))


@partial(jax.jit, static_argnums=(4, 5))
def _eq19(v, h, xi, th, beta, gamma):
    f = _softmax(h, beta)
    return (0.5 * jnp.sum(v**2, -1) + jnp.sum(h * f, -1) - _lse(h, beta)
            - jnp.einsum("bm,mi,bi->b", f, xi, v) - _lse(f @ th.T, gamma))


@pytest.mark.parametrize("beta, gamma", [(1.0, 1.0), (2.0, 0.5)])
def test_two_hidden_layers_energy_dynamics_and_adiabatic_limit(beta, gamma):
    taus = (2.0, 0.7, 0.3)
    net, xi, th = _two_hidden(beta, gamma, taus)
    v, h, z = _rand(4, (B, N)), _rand(5, (B, K), 2.0), _rand(6, (B, NZ), 2.0)

    @jax.jit
    def eq17(v, h, z, xi, th):
        f, g = _softmax(h, beta), _softmax(z, gamma)
        return {
            "v": (f @ xi - v) / taus[0],
            "h": (v @ xi.T + g @ th - h) / taus[1],
            "z": (f @ th.T - z) / taus[2],
        }, f @ th.T

    dx_ref, z_star = eq17(v, h, z, xi, th)
    e, dx = _energy_and_field(net, {"v": v, "h": h, "z": z})
    _close(e, _eq18(v, h, z, xi, th, beta, gamma))
    _close_dict(dx, dx_ref)
    # (19): (18) at z = Θf, and the same energy from a Memory synapse in place of z
    _close(_eq18(v, h, z_star, xi, th, beta, gamma), _eq19(v, h, xi, th, beta, gamma))
    e_full, dx_full = _energy_and_field(net, {"v": v, "h": h, "z": z_star})
    _close(e_full, _eq19(v, h, xi, th, beta, gamma))
    _close(dx_full["z"], 0.0)
    ad, _, _ = _two_hidden(beta, gamma, taus, adiabatic=True)
    e_ad, dx_ad = _energy_and_field(ad, {"v": v, "h": h})
    _close(e_ad, _eq19(v, h, xi, th, beta, gamma))
    _close_dict(dx_ad, {"v": dx_full["v"], "h": dx_full["h"]})


# ===================================== §3.3 conv hidden layer + dense top, eqs. (20)-(23)
IMG, C, KC, W, STRIDE = 7, 2, 3, 3, 2
M = (IMG - W) // STRIDE + 1  # eq. (22)


def _jconv(v, ker, s):
    """conv2d(v; ξ, s) written as a sum over kernel offsets (plain jnp, no lax.conv)."""
    w, m = ker.shape[0], (v.shape[-2] - ker.shape[0]) // s + 1
    out = 0.0
    for i in range(w):
        for j in range(w):
            patch = v[..., i : i + s * (m - 1) + 1 : s, j : j + s * (m - 1) + 1 : s, :]
            out = out + jnp.einsum("...abc,ck->...abk", patch, ker[i, j])
    return out


def _jconv_T(f, ker, s, n):
    """The transposed convolution: every feature-map pixel scattered back through the kernel."""
    w, m = ker.shape[0], f.shape[-2]
    out = jnp.zeros(f.shape[:-3] + (n, n, ker.shape[2]))
    for i in range(w):
        for j in range(w):
            out = out.at[..., i : i + s * (m - 1) + 1 : s, j : j + s * (m - 1) + 1 : s, :].add(
                jnp.einsum("...abk,ck->...abc", f, ker[i, j]))
    return out


def _conv_ham(beta, gamma, taus, adiabatic=False):
    conv = S.Conv2D(C, KC, W, stride=STRIDE, key=_keys(1, 7)[0])
    top = _dense(8, (M, M, KC), NZ, scale=1.5)
    layers = {
        "v": hj.Layer((IMG, IMG, C), L.Identity(), tau=taus[0]),
        "h": hj.Layer((M, M, KC), L.Softmax(beta, axis=-1), tau=taus[1]),
    }
    if adiabatic:
        mem = S.Memory((M, M, KC), NZ, beta=gamma, memories=top.weight)
        net = hj.HAM(layers, {"xi": conv, "theta": mem}, {"xi": ("v", "h"), "theta": "h"})
    else:
        layers["z"] = hj.Layer(NZ, L.Softmax(gamma), tau=taus[2])
        net = hj.HAM(layers, {"xi": conv, "theta": top}, {"xi": ("v", "h"), "theta": ("h", "z")})
    return net, conv.kernel, top.weight


def test_conv_architecture_energy_dynamics_and_adiabatic_limit():
    beta, gamma, taus = 1.5, 0.8, (1.0, 0.4, 0.2)
    net, ker, th = _conv_ham(beta, gamma, taus)
    assert net.layers["h"].shape == (M, M, KC) == (3, 3, KC)
    v = _rand(8, (2, IMG, IMG, C))
    h = _rand(9, (2, M, M, KC), 2.0)
    z = _rand(10, (2, NZ), 2.0)

    @jax.jit
    def reference(v, h, z, ker, th):
        f, g = _softmax(h, beta, -1), _softmax(z, gamma)
        flat_f = f.reshape(2, -1)
        conv_v = _jconv(v, ker, STRIDE)
        legendre_vh = (0.5 * jnp.sum(v**2, (1, 2, 3))
                       + jnp.sum(h * f, (1, 2, 3)) - jnp.sum(_lse(h, beta, -1), (1, 2)))
        e = (legendre_vh + jnp.sum(z * g, -1) - _lse(z, gamma)
             - jnp.sum(f * conv_v, (1, 2, 3)) - jnp.einsum("ba,am,bm->b", g, th, flat_f))
        dx = {  # (21)
            "v": (_jconv_T(f, ker, STRIDE, IMG) - v) / taus[0],
            "h": (conv_v + (g @ th).reshape(h.shape) - h) / taus[1],
            "z": (flat_f @ th.T - z) / taus[2],
        }
        # (23): the adiabatic energy at z = Θ·flatten(f)
        z_star = flat_f @ th.T
        e23 = legendre_vh - jnp.sum(f * conv_v, (1, 2, 3)) - _lse(z_star, gamma)
        return e, dx, z_star, e23

    e_ref, dx_ref, z_star, e23 = reference(v, h, z, ker, th)
    e, dx = _energy_and_field(net, {"v": v, "h": h, "z": z})
    _close(e, e_ref)
    _close_dict(dx, dx_ref)
    # (23) from the full model at z = Θ·flatten(f), and from a Memory synapse in place of z
    e_full, dx_full = _energy_and_field(net, {"v": v, "h": h, "z": z_star})
    _close(e_full, e23)
    ad, _, _ = _conv_ham(beta, gamma, taus, adiabatic=True)
    e_ad, dx_ad = _energy_and_field(ad, {"v": v, "h": h})
    _close(e_ad, e23)
    _close_dict(dx_ad, {"v": dx_full["v"], "h": dx_full["h"]})


# ===================================================== random chains: Lyapunov properties
def _make_lagrangian(kind, size):
    return {
        "identity": lambda: L.Identity(),
        "tanh": lambda: L.Tanh(1.3),
        "sigmoid": lambda: L.Sigmoid(0.9),
        "softmax": lambda: L.Softmax(1.7),
        "repu3": lambda: L.RePU(3),
        "smu": lambda: L.SmoothLeakyReLU(0.3, 1.5),
        "layernorm": lambda: L.LayerNorm(gamma=0.8, delta=0.1 * jnp.arange(size)),
        "spherical": lambda: L.SphericalNorm(gamma=1.2),
    }[kind]()


SMOOTH_KINDS = ["identity", "tanh", "sigmoid", "softmax", "repu3", "smu", "layernorm", "spherical"]


@st.composite
def chains(draw):
    n = draw(st.integers(2, 4))
    sizes = [draw(st.integers(1, 3)) for _ in range(n)]
    kinds = [draw(st.sampled_from(SMOOTH_KINDS)) for _ in range(n)]
    taus = [draw(st.sampled_from([0.3, 1.0, 2.5])) for _ in range(n)]
    biased = [draw(st.booleans()) for _ in range(n)]
    seed = draw(st.integers(0, 2**16))
    return sizes, kinds, taus, biased, seed


def _chain(sizes, kinds, taus, biased, seed):
    names = [f"l{i}" for i in range(len(sizes))]
    layers = {
        n: hj.Layer(s, _make_lagrangian(k, s), tau=t, bias=_rand(seed + i, (s,)) if b else None)
        for i, (n, s, k, t, b) in enumerate(zip(names, sizes, kinds, taus, biased, strict=True))
    }
    synapses = {f"w{i}": _dense(seed + 50 + i, sizes[i], sizes[i + 1])
                for i in range(len(sizes) - 1)}
    edges = {f"w{i}": (names[i], names[i + 1]) for i in range(len(sizes) - 1)}
    return hj.HAM(layers, synapses, edges)


def _chain_reference(net, x):
    """Eq. (8) with biases and eq. (5) for a chain of Dense synapses, from the weights."""
    names = list(net.layers)
    g = {n: net.layers[n].lagrangian.activation(x[n]) for n in names}
    e, cur = 0.0, {n: jnp.zeros_like(x[n]) for n in names}
    for n in names:
        lay = net.layers[n]
        bias = 0.0 if lay.bias is None else lay.bias
        e = e + jnp.sum((x[n] - bias) * g[n], -1) - lay.lagrangian(x[n], 1)
    for i in range(len(names) - 1):
        a, b, w = names[i], names[i + 1], net.synapses[f"w{i}"].weight
        e = e - jnp.einsum("...o,oi,...i->...", g[b], w, g[a])
        cur[b] = cur[b] + g[a] @ w.T
        cur[a] = cur[a] + g[b] @ w
    dx = {}
    for n in names:
        lay = net.layers[n]
        bias = 0.0 if lay.bias is None else lay.bias
        dx[n] = (cur[n] + bias - x[n]) / lay.tau
    return e, dx


DT, EULER_STEPS, FD_H = 0.01, 12, 0.04


@eqx.filter_jit
def _lyapunov_quantities(net, x, clamp=()):
    e = net.energy(x)
    dx = net.vector_field(x)
    rate = net.energy_rate(x)
    _, rate_jvp = jax.jvp(net.energy, (x,), (dx,))

    def along(t):
        return net.energy({n: x[n] + t * dx[n] for n in x})

    d = lambda h: (along(h) - along(-h)) / (2 * h)  # noqa: E731
    rate_fd = (4 * d(FD_H / 2) - d(FD_H)) / 3  # Richardson: O(h⁴)

    def step(xs, _):
        v = net.vector_field(xs)
        xs = {n: xs[n] + DT * v[n] for n in xs}
        return xs, net.energy(xs)

    _, trace = jax.lax.scan(step, x, None, length=EULER_STEPS)
    ref = _chain_reference(net, x)
    # with some layers clamped
    dxc = net.vector_field(x, clamp=clamp)
    rate_c = net.energy_rate(x, clamp=clamp)
    _, rate_c_jvp = jax.jvp(net.energy, (x,), (dxc,))
    return dict(e=e, dx=dx, rate=rate, rate_jvp=rate_jvp, rate_fd=rate_fd, trace=trace, ref=ref,
                dxc=dxc, rate_c=rate_c, rate_c_jvp=rate_c_jvp)


@pytest.mark.slow
@given(chains(), st.data())
@settings(max_examples=6)
def test_random_chain_properties(chain, data):
    """Random chains of 2-4 layers with convex Lagrangians, random sizes, taus and biases."""
    net = _chain(*chain)
    names = list(net.layers)
    clamp = tuple(data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))))
    seed = chain[-1]
    x = {n: _rand(seed + 100 + i, (3,) + lay.shape)
         for i, (n, lay) in enumerate(net.layers.items())}
    q = _lyapunov_quantities(net, x, clamp)
    e = np.asarray(q["e"])
    assert e.shape == (3,)
    # energy and field against eq. (8) and eq. (5) written from the weights
    _close(e, q["ref"][0])
    _close_dict(q["dx"], q["ref"][1])
    # eq. (9): dE/dt = −Σ τ ẋᵀHẋ ≤ 0, against autodiff and a finite difference of E along ẋ
    rate = np.asarray(q["rate"])
    assert np.all(rate <= 1e-6)
    _close(rate, q["rate_jvp"], rtol=1e-4, atol=1e-5)
    _close(rate, q["rate_fd"], rtol=5e-3, atol=2e-3 * (1 + np.abs(e).max()))
    # small Euler steps never increase the energy
    trace = np.concatenate([e[None], np.asarray(q["trace"])])
    assert np.all(np.diff(trace, axis=0) <= 1e-5 * (1 + np.abs(trace[:-1]))), trace
    # clamping: zero on clamped layers, the unclamped field on free ones, and the rate is
    # still the derivative of E along the (clamped) field
    for n in names:
        if n in clamp:
            assert np.all(np.asarray(q["dxc"][n]) == 0.0)
        else:
            _close(q["dxc"][n], q["dx"][n], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(q["rate_c"]) <= 1e-6)
    _close(q["rate_c"], q["rate_c_jvp"], rtol=1e-4, atol=1e-5)


def test_unbatched_states_give_per_sample_energies_and_fields():
    net = _chain([3, 2, 4], ["tanh", "softmax", "identity"], [1.0, 0.5, 2.0], [True, False, True],
                 3)
    x = {n: _rand(50 + i, (2, 2) + lay.shape) for i, (n, lay) in enumerate(net.layers.items())}
    e, dx = _energy_and_field(net, x)
    assert e.shape == (2, 2)
    # jax.vmap of the unbatched energy and field, twice, over both batch axes
    flat = {n: v.reshape((4,) + v.shape[2:]) for n, v in x.items()}
    e_vmap, dx_vmap = eqx.filter_jit(
        lambda n, s: jax.vmap(lambda t: (n.energy(t), n.vector_field(t)))(s))(net, flat)
    _close(e_vmap, e.reshape(4), rtol=1e-5, atol=1e-5)
    _close_dict(dx_vmap, {n: v.reshape((4,) + v.shape[2:]) for n, v in dx.items()},
                rtol=1e-5, atol=1e-6)
    for i in range(2):
        for j in range(2):
            e1, dx1 = _energy_and_field(net, {n: v[i, j] for n, v in x.items()})
            assert e1.shape == ()
            _close(e1, e[i, j], rtol=1e-5, atol=1e-5)
            _close_dict(dx1, {n: v[i, j] for n, v in dx.items()}, rtol=1e-5, atol=1e-6)


def test_relu_chain_energy_never_increases():
    """ReLU has dead neurons (H = 0 where x < 0); the energy is still non-increasing."""
    net = hj.HAM(
        {"a": hj.Layer(4, L.ReLU(), bias=_rand(1, (4,))), "b": hj.Layer(3, L.ReLU(), tau=0.5),
         "c": hj.Layer(2, L.ReLU(), tau=0.3)},
        {"w0": _dense(9, 4, 3, scale=1.0), "w1": _dense(10, 3, 2, scale=1.0)},
        {"w0": ("a", "b"), "w1": ("b", "c")},
    )
    x = {n: _rand(60 + i, (8,) + lay.shape) for i, (n, lay) in enumerate(net.layers.items())}
    q = _lyapunov_quantities(net, x)
    _close(q["e"], q["ref"][0])
    _close_dict(q["dx"], q["ref"][1])
    trace = np.concatenate([np.asarray(q["e"])[None], np.asarray(q["trace"])])
    assert np.all(np.diff(trace, axis=0) <= 1e-5 * (1 + np.abs(trace[:-1])))
    assert np.all(np.asarray(q["rate"]) <= 1e-6)
    _close(q["rate"], q["rate_jvp"], rtol=1e-4, atol=1e-5)


# ====================================================== hyperedges, self-edges, bare layers
class _Triple(S.Synapse):
    """``E = −Σ_i g_a,i g_b,i g_c,i``: a multilinear three-layer hyperedge."""

    multilinear = True

    def energy(self, ga, gb, gc):
        return -jnp.sum(ga * gb * gc, -1)

    def expected_shapes(self, shapes):
        return ((3,), (3,), (3,))


@pytest.mark.parametrize("clamp", [(), ("a",), ("a", "b"), ("b", "c"), ("a", "b", "c")])
def test_hyperedge_self_edge_and_clamping(clamp):
    net = hj.HAM(
        layers={"a": hj.Layer(3, L.Tanh()), "b": hj.Layer(3, L.Sigmoid(), tau=0.5),
                "c": hj.Layer(3, L.Identity(), tau=2.0, bias=jnp.arange(3.0)),
                "lone": hj.Layer((2, 2), L.Tanh(), bias=jnp.ones((2, 2)))},
        synapses={"t": _Triple(), "self": _dense(11, 3, 3),
                  "bias": S.Bias(3, key=_keys(1, 4)[0], scale=1.0)},
        edges={"t": ("a", "b", "c"), "self": ("c", "c"), "bias": "a"},
    )
    x = {n: _rand(70 + i, (2,) + lay.shape) for i, (n, lay) in enumerate(net.layers.items())}
    e, dx = _energy_and_field(net, x, clamp)
    # reference in float64 numpy
    xn = {n: np.asarray(v, np.float64) for n, v in x.items()}
    ga, gb, gc = np.tanh(xn["a"]), 1 / (1 + np.exp(-xn["b"])), xn["c"]
    wself = np.asarray(net.synapses["self"].weight, np.float64)
    b, c_bias = np.asarray(net.synapses["bias"].bias, np.float64), np.arange(3.0)
    ref = {
        "a": gb * gc + b - xn["a"],
        "b": (ga * gc - xn["b"]) / 0.5,
        "c": (ga * gb + gc @ (wself + wself.T) + c_bias - xn["c"]) / 2.0,
        "lone": 1.0 - xn["lone"],
    }
    for n in ref:
        _close(dx[n], 0.0 if n in clamp else ref[n], rtol=1e-5, atol=1e-5)
    lone = xn["lone"]
    e_ref = (np.sum(xn["a"] * ga - np.log(np.cosh(xn["a"])), -1)
             + np.sum(xn["b"] * gb - np.log1p(np.exp(xn["b"])), -1)
             + 0.5 * np.sum(gc**2, -1) - gc @ c_bias
             + np.sum((lone - 1.0) * np.tanh(lone) - np.log(np.cosh(lone)), (1, 2))
             - np.sum(ga * gb * gc, -1) - np.einsum("ni,ij,nj->n", gc, wself, gc) - ga @ b)
    _close(e, e_ref)


def test_energy_terms_sum_to_energy():
    net, _ = _one_hidden(1.0, 1.0, 1.0)
    x = {"v": _rand(90, (2, N)), "h": _rand(91, (2, K))}
    terms, energy = eqx.filter_jit(lambda n, s: (n.energy_terms(s), n.energy(s)))(net, x)
    assert set(terms["layers"]) == {"v", "h"} and set(terms["synapses"]) == {"xi"}
    total = sum(terms["layers"].values()) + sum(terms["synapses"].values())
    _close(total, energy, rtol=1e-6, atol=1e-6)
    _close(terms["layers"]["v"], 0.5 * jnp.sum(x["v"] ** 2, -1), rtol=1e-5, atol=1e-6)


def test_init_state_and_activations():
    net, _ = _one_hidden(2.0, 1.0, 1.0)
    for batch, shape in [((), ()), (3, (3,)), ((2, 4), (2, 4))]:
        x = net.init_state(batch=batch)
        assert {n: v.shape for n, v in x.items()} == {"v": shape + (N,), "h": shape + (K,)}
        assert all(np.all(np.asarray(v) == 0) for v in x.values())
    x = net.init_state(batch=(500,), key=jax.random.PRNGKey(0), scale=0.1)
    assert np.std(np.asarray(x["v"])) == pytest.approx(0.1, rel=0.05)
    g = net.activations(x)
    _close(g["v"], x["v"], rtol=0, atol=0)
    _close(g["h"], _softmax(x["h"], 2.0), rtol=1e-5, atol=1e-7)
    assert net.edges == {"xi": ("v", "h")}


# ========================================================== jit, filter_grad, vmap
def test_jit_grad_and_vmap():
    net, xi = _one_hidden(1.5, 1.0, 0.5)
    x = {"v": _rand(80, (4, N)), "h": _rand(81, (4, K))}
    e, dx = _energy_and_field(net, x, ("v",))
    _close(jax.jit(lambda s: net.energy(s))(x), e, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(dx["v"]) == 0)
    # vmap over the whole HAM's energy and field, sample by sample
    _close(jax.jit(jax.vmap(net.energy))(x), e, rtol=1e-6, atol=1e-6)
    _close_dict(jax.jit(jax.vmap(lambda s: net.vector_field(s, clamp=("v",))))(x), dx,
                rtol=1e-6, atol=1e-6)
    # filter_grad w.r.t. the whole HAM: ∂(Σ E)/∂ξ = −Σ_b f_b v_bᵀ; ∂/∂β against the closed form
    grads = eqx.filter_jit(eqx.filter_grad(lambda n, s: jnp.sum(n.energy(s))))(net, x)
    f = _softmax(x["h"], 1.5)
    _close(grads.synapses["xi"].weight, -f.T @ x["v"], rtol=1e-5, atol=1e-5)

    def e_of_beta(beta):
        ff = _softmax(x["h"], beta)
        return jnp.sum(jnp.sum(x["h"] * ff, -1) - _lse(x["h"], beta)
                       - jnp.einsum("bm,mi,bi->b", ff, xi, x["v"]))

    _close(grads.layers["h"].lagrangian.beta, jax.jit(jax.grad(e_of_beta))(1.5), rtol=1e-4,
           atol=1e-5)


# ================================================================= validation rules
def _valid_parts():
    layers = {"v": hj.Layer(5), "h": hj.Layer(4, L.Softmax())}
    synapses = {"w": _dense(12, 5, 4)}
    edges = {"w": ("v", "h")}
    return layers, synapses, edges


def test_graph_validation_messages():
    layers, synapses, edges = _valid_parts()
    hj.HAM(layers, synapses, edges)  # valid
    with pytest.raises(hj.GraphError, match="at least one layer"):
        hj.HAM({}, {}, {})
    with pytest.raises(hj.GraphError, match=r"synapse 'w' connects unknown layer 'hidden'"):
        hj.HAM(layers, synapses, {"w": ("v", "hidden")})
    with pytest.raises(
        hj.GraphError,
        match=r"synapse 'w' \(Dense\) expects layer 'h' \(argument 1\) to have shape \(3,\), "
        r"but layer 'h' has shape \(4,\)",
    ):
        hj.HAM(layers, {"w": _dense(13, 5, 3)}, edges)
    with pytest.raises(hj.GraphError, match=r"expects layer 'v' \(argument 0\) to have shape "
                                            r"\(\*, \*, 2\), but layer 'v' has shape \(5,\)"):
        hj.HAM(layers, {"w": S.Conv2D(2, 3, 3, key=_keys(1)[0])}, edges)
    with pytest.raises(hj.GraphError, match="synapse 'extra' has no edge"):
        hj.HAM(layers, {**synapses, "extra": S.Bias(4)}, edges)
    with pytest.raises(hj.GraphError, match="edge 'ghost' has no synapse"):
        hj.HAM(layers, synapses, {**edges, "ghost": ("v",)})
    with pytest.raises(hj.GraphError, match=r"connects 2 layer\(s\), but its edge names 1"):
        hj.HAM(layers, synapses, {"w": "v"})
    with pytest.raises(hj.GraphError, match=r"connects 1 layer\(s\), but its edge names 2"):
        hj.HAM(layers, {"b": S.Bias(4)}, {"b": ("h", "h")})
    with pytest.raises(hj.GraphError, match="layer 'h' must be a hamjax.Layer, got int"):
        hj.HAM({**layers, "h": 4}, synapses, edges)
    with pytest.raises(hj.GraphError, match="synapse 'w' must be a hamjax synapse, got Array"):
        hj.HAM(layers, {"w": jnp.ones((4, 5))}, edges)
    assert issubclass(hj.GraphError, ValueError) and issubclass(hj.StateError, ValueError)


def test_layer_validation_messages():
    for tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tau must be positive and finite"):
            hj.Layer(3, tau=tau)
    with pytest.raises(ValueError, match=r"bias must have the layer's shape \(3,\), got \(4,\)"):
        hj.Layer(3, bias=jnp.ones(4))
    with pytest.raises(TypeError, match="must be a hamjax Lagrangian"):
        hj.Layer(3, lagrangian=jnp.tanh)
    with pytest.raises(ValueError, match="positive sizes"):
        hj.Layer((3, 0))
    lay = hj.Layer((2, 3), bias=True)
    assert lay.bias.shape == (2, 3) and lay.ndim == 2 and lay.size == 6
    assert lay.batch_shape(jnp.zeros((4, 2, 3))) == (4,)
    with pytest.raises(ValueError, match=r"ending in shape \(2, 3\)"):
        lay.batch_shape(jnp.zeros((3, 2)))


def test_state_validation_messages():
    layers, synapses, edges = _valid_parts()
    net = hj.HAM(layers, synapses, edges)
    good = {"v": jnp.zeros((2, 5)), "h": jnp.zeros((2, 4))}
    entry_points = [net.energy, net.energy_terms, net.vector_field, net.energy_rate,
                    net.dynamics]
    for fn in entry_points:
        with pytest.raises(hj.StateError, match=r"missing layer\(s\) \['h'\]"):
            fn({"v": good["v"]})
    with pytest.raises(hj.StateError, match=r"unknown layer\(s\) \['q'\]"):
        net.energy({**good, "q": jnp.zeros(2)})
    with pytest.raises(hj.StateError, match=r"state\['h'\] has shape \(2, 5\), expected "
                                            r"\(\*batch, 4\)"):
        net.vector_field({**good, "h": jnp.zeros((2, 5))})
    with pytest.raises(hj.StateError, match=r"state\['v'\] must be a floating-point array, "
                                            r"got dtype int32"):
        net.energy({**good, "v": jnp.zeros((2, 5), jnp.int32)})
    with pytest.raises(hj.StateError, match=r"state\['h'\] has batch shape \(3,\), but other "
                                            r"layers have batch shape \(2,\)"):
        net.energy({**good, "h": jnp.zeros((3, 4))})
    with pytest.raises(hj.StateError, match="must be a dict of arrays"):
        net.energy([good["v"], good["h"]])
    with pytest.raises(hj.GraphError, match="cannot clamp unknown layer 'image'"):
        net.vector_field(good, clamp=("image",))
    with pytest.raises(hj.GraphError, match="cannot clamp unknown layer 'image'"):
        net.energy_rate(good, clamp="image")
    # rules hold under jit too: the error is raised while tracing, with the same message
    with pytest.raises(hj.StateError, match=r"state\['h'\] has shape"):
        jax.jit(lambda s: net.energy(s))({**good, "h": jnp.zeros((2, 5))})
    assert net.check_state(good) == (2,)
    assert net.check_clamp("v") == ("v",)


def test_layer_order_survives_tree_map():
    """Order is a property of the model: a net rebuilt by jax.tree.map (as an optimiser update
    does) keeps its layers and synapses in the order given, so flat indices and keyed initial
    states are the same before and after."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    net = hj.HAM(
        layers={"image": hj.Layer(3), "zeta": hj.Layer(2, L.ReLU()), "alpha": hj.Layer(4)},
        synapses={"w2": hj.synapses.Dense(2, 4, key=k2), "w1": hj.synapses.Dense(3, 2, key=k1)},
        edges={"w2": ("zeta", "alpha"), "w1": ("image", "zeta")},
    )
    mapped = jax.tree.map(lambda v: v + 0.0, net)
    assert list(mapped.layers) == list(net.layers) == ["image", "zeta", "alpha"]
    assert list(mapped.synapses) == ["w2", "w1"]
    x = net.init_state(5, key=jax.random.PRNGKey(1))
    y = mapped.init_state(5, key=jax.random.PRNGKey(1))
    for n in net.layers:
        np.testing.assert_array_equal(x[n], y[n])
    one = {n: v[0] for n, v in x.items()}
    assert hj.analysis.FlatSystem(mapped, one).index == hj.analysis.FlatSystem(net, one).index
    assert hj.analysis.FlatSystem(net, one).index.names == ("image", "zeta", "alpha")
