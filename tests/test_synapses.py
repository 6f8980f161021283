"""Synapses against independent numpy references: energies, the currents autodiff derives from
them (the transposed convolution / pooling adjoint), batching, shapes, multilinearity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hamjax as hj
from hamjax import lagrangians as L
from hamjax import synapses as S

RTOL, ATOL = 1e-5, 1e-5


def _rand(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _keys(n, seed=0):
    return jax.random.split(jax.random.PRNGKey(seed), n)


@jax.jit
def _energy(syn, *g):
    return syn.energy(*g)


@jax.jit
def _currents(syn, *g):
    """``−∂E/∂g_i`` for every argument: the current the synapse sends into each layer."""
    grads = jax.grad(lambda args: jnp.sum(syn.energy(*args)))(g)
    return tuple(-gr for gr in grads)


# ------------------------------------------------------------------ numpy references
def _np_pads(padding, in_hw, k, s):
    if padding == "VALID":
        return [(0, 0), (0, 0)]
    if padding == "SAME":
        pads = []
        for n, kk, ss in zip(in_hw, k, s, strict=True):
            out = -(-n // ss)
            total = max((out - 1) * ss + kk - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding), (padding, padding)]
    return [tuple(p) for p in padding]


def np_conv(v, kernel, stride, padding):
    """``out[a,b,k] = Σ_{i,j,c} v_pad[s a + i, s b + j, c] K[i,j,c,k]`` for a batch of NHWC maps."""
    kh, kw, _, cout = kernel.shape
    pads = _np_pads(padding, v.shape[1:3], (kh, kw), stride)
    vp = np.pad(v, [(0, 0)] + pads + [(0, 0)])
    oh = (vp.shape[1] - kh) // stride[0] + 1
    ow = (vp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((v.shape[0], oh, ow, cout), np.float64)
    for a in range(oh):
        for b in range(ow):
            patch = vp[:, a * stride[0] : a * stride[0] + kh, b * stride[1] : b * stride[1] + kw, :]
            out[:, a, b, :] = np.einsum("nijc,ijck->nk", patch, kernel)
    return out


def np_conv_T(f, kernel, stride, padding, in_hw):
    """The transposed convolution: scatter every output pixel back through the kernel."""
    kh, kw, cin, _ = kernel.shape
    pads = _np_pads(padding, in_hw, (kh, kw), stride)
    hp, wp = in_hw[0] + sum(pads[0]), in_hw[1] + sum(pads[1])
    vp = np.zeros((f.shape[0], hp, wp, cin), np.float64)
    for a in range(f.shape[1]):
        for b in range(f.shape[2]):
            vp[:, a * stride[0] : a * stride[0] + kh, b * stride[1] : b * stride[1] + kw, :] += (
                np.einsum("ijck,nk->nijc", kernel, f[:, a, b, :])
            )
    return vp[:, pads[0][0] : pads[0][0] + in_hw[0], pads[1][0] : pads[1][0] + in_hw[1], :]


def _pool_kernel(window, channels):
    k = np.zeros(window + (channels, channels))
    for c in range(channels):
        k[:, :, c, c] = 1.0 / (window[0] * window[1])
    return k


# -------------------------------------------------------------------------------- Dense
@pytest.mark.parametrize(
    "in_shape, out_shape, batch",
    [((5,), (3,), ()), ((2, 3), (4,), (2,)), ((4,), (2, 2), (2, 3)), ((2, 2, 2), (3, 1), (1,))],
)
def test_dense_energy_reference(in_shape, out_shape, batch):
    syn = S.Dense(in_shape, out_shape, key=_keys(1)[0])
    w = np.asarray(syn.weight)
    assert w.shape == (math.prod(out_shape), math.prod(in_shape))
    ga, gb = _rand(1, batch + in_shape), _rand(2, batch + out_shape)
    fa = ga.reshape(batch + (-1,))
    fb = gb.reshape(batch + (-1,))
    ref = -np.einsum("...o,oi,...i->...", fb, w, fa)
    e = _energy(syn, ga, gb)
    assert e.shape == batch
    np.testing.assert_allclose(e, ref, rtol=RTOL, atol=ATOL)
    ca, cb = _currents(syn, ga, gb)  # feedback Wᵀg_b into a, feedforward W g_a into b
    np.testing.assert_allclose(ca, (fb @ w).reshape(ga.shape), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cb, (fa @ w.T).reshape(gb.shape), rtol=RTOL, atol=ATOL)


def test_dense_construction():
    syn = S.Dense(400, 300, key=_keys(1)[0])
    assert np.std(np.asarray(syn.weight)) == pytest.approx(1 / 20, rel=0.05)
    syn = S.Dense(4, 3, key=_keys(1)[0], scale=0.0)
    assert np.all(np.asarray(syn.weight) == 0)
    w = _rand(0, (3, 4))
    syn = S.Dense((2, 2), 3, weight=w)
    np.testing.assert_array_equal(syn.weight, w)
    assert syn.in_shape == (2, 2) and syn.out_shape == (3,)
    with pytest.raises(ValueError, match=r"weight of shape \(3, 4\) \(out, in\), got \(4, 3\)"):
        S.Dense(4, 3, weight=w.T)
    with pytest.raises(ValueError, match="PRNG key"):
        S.Dense(4, 3)


# --------------------------------------------------------------------- Bias, Lateral
def test_bias():
    g = _rand(3, (2, 3, 4))
    assert np.all(np.asarray(S.Bias((3, 4)).bias) == 0)
    syn = S.Bias((3, 4), key=_keys(1)[0], scale=0.5)
    b = np.asarray(syn.bias)
    assert b.shape == (3, 4) and np.abs(b).max() > 0
    np.testing.assert_allclose(_energy(syn, g), -(g * b).sum((1, 2)), rtol=RTOL, atol=ATOL)
    (c,) = _currents(syn, g)
    np.testing.assert_allclose(c, np.broadcast_to(b, g.shape), rtol=RTOL)
    with pytest.raises(ValueError, match="PRNG key"):
        S.Bias(3, scale=0.5)
    np.testing.assert_array_equal(S.Bias((3, 4), bias=b).bias, b)
    with pytest.raises(ValueError, match=r"bias of shape \(3,\)"):
        S.Bias(3, bias=b)


@pytest.mark.parametrize("zero_diagonal", [True, False])
def test_lateral(zero_diagonal):
    syn = S.Lateral((2, 3), zero_diagonal=zero_diagonal, key=_keys(1)[0])
    raw = np.asarray(syn.weight)
    ws = np.asarray(syn.symmetric_weight)
    np.testing.assert_allclose(ws, ws.T, atol=0)
    ref_w = 0.5 * (raw + raw.T)
    if zero_diagonal:
        ref_w = ref_w - np.diag(np.diag(ref_w))
        assert np.all(np.diag(ws) == 0)
    else:
        assert np.all(np.diag(ws) != 0)
    np.testing.assert_allclose(ws, ref_w, rtol=1e-6, atol=1e-7)
    g = _rand(4, (3, 2, 3))
    f = g.reshape(3, 6)
    np.testing.assert_allclose(
        _energy(syn, g), -0.5 * np.einsum("ni,ij,nj->n", f, ref_w, f), rtol=RTOL, atol=ATOL
    )
    (c,) = _currents(syn, g)
    np.testing.assert_allclose(c, (f @ ref_w).reshape(g.shape), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------- Conv2D
CONV_CONFIGS = [
    # (input H, W, C), out channels, kernel, stride, padding
    ((6, 5, 2), 3, 3, 1, "VALID"),
    ((7, 7, 2), 3, 3, 2, "VALID"),
    ((7, 6, 1), 2, (3, 2), 2, "SAME"),
    ((6, 6, 2), 2, 3, 2, "SAME"),
    ((5, 6, 2), 3, 3, 2, 1),
    ((5, 5, 2), 2, (2, 3), (1, 2), ((1, 0), (2, 1))),
    ((8, 7, 3), 4, 5, 1, "VALID"),  # colour input
    ((7, 8, 3), 2, 3, 2, "SAME"),  # colour input, strided
]


@pytest.mark.parametrize("in_shape, cout, ksize, stride, padding", CONV_CONFIGS)
def test_conv2d_energy_and_transposed_feedback(in_shape, cout, ksize, stride, padding):
    syn = S.Conv2D(in_shape[2], cout, ksize, stride=stride, padding=padding, key=_keys(1)[0])
    kernel = np.asarray(syn.kernel, np.float64)
    kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
    assert kernel.shape == (kh, kw, in_shape[2], cout)
    s = (stride, stride) if isinstance(stride, int) else stride
    v = _rand(5, (2,) + in_shape)
    conv_v = np_conv(v, kernel, s, padding)
    out_shape = conv_v.shape[1:]
    assert syn.expected_shapes((in_shape,)) == ((None, None, in_shape[2]), out_shape)
    f = _rand(6, (2,) + out_shape)
    np.testing.assert_allclose(
        _energy(syn, v, f), -(f * conv_v).sum((1, 2, 3)), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(syn.convolve(v), conv_v, rtol=RTOL, atol=ATOL)
    c_in, c_out = _currents(syn, v, f)
    np.testing.assert_allclose(c_out, conv_v, rtol=RTOL, atol=ATOL)  # feedforward
    conv_t_f = np_conv_T(f, kernel, s, padding, in_shape[:2])
    np.testing.assert_allclose(c_in, conv_t_f, rtol=RTOL, atol=ATOL)  # feedback
    # the adjoint identity ⟨conv(v), f⟩ = ⟨v, conv_T(f)⟩ with conv from numpy, conv_T by autodiff
    np.testing.assert_allclose(
        (conv_v * f).sum((1, 2, 3)), (v * np.asarray(c_in)).sum((1, 2, 3)), rtol=1e-4, atol=1e-4
    )


@given(seed=st.integers(0, 2**16))
@settings(max_examples=5)
def test_conv2d_adjoint_property(seed):
    """⟨conv(v), f⟩ = ⟨v, conv_T(f)⟩ for random v, f (stride 2, SAME), numpy conv vs autodiff."""
    syn = S.Conv2D(2, 3, 3, stride=2, padding="SAME", key=_keys(1, seed)[0])
    v, f = _rand(seed, (1, 6, 5, 2)), _rand(seed + 1, (1, 3, 3, 3))
    c_in, _ = _currents(syn, v, f)
    lhs = (np_conv(v, np.asarray(syn.kernel, np.float64), (2, 2), "SAME") * f).sum()
    np.testing.assert_allclose(lhs, (v * np.asarray(c_in)).sum(), rtol=1e-4, atol=1e-4)


def test_conv2d_shape_rules():
    syn = S.Conv2D(3, 4, 3, stride=2, key=_keys(1)[0])
    assert syn.in_channels == 3 and syn.out_channels == 4
    assert syn.output_shape((8, 8, 3)) == (3, 3, 4)
    assert S.Conv2D(3, 4, 3, stride=2, padding="SAME", key=_keys(1)[0]).output_shape(
        (8, 8, 3)) == (4, 4, 4)
    assert S.Conv2D(3, 4, 3, stride=2, padding=1, key=_keys(1)[0]).output_shape((8, 8, 3)) == (
        4, 4, 4)
    # wrong input channels: no output shape can be inferred, only the channel counts
    assert syn.expected_shapes(((8, 8, 2),)) == ((None, None, 3), (None, None, 4))
    with pytest.raises(ValueError, match="padding"):
        S.Conv2D(3, 4, 3, padding="FULL", key=_keys(1)[0])


def test_conv2d_given_kernel():
    k = _rand(7, (3, 2, 2, 4))
    syn = S.Conv2D(2, 4, (3, 2), stride=2, kernel=k)
    np.testing.assert_array_equal(syn.kernel, k)
    assert syn.stride == (2, 2) and syn.in_channels == 2 and syn.out_channels == 4
    with pytest.raises(ValueError, match=r"kernel of shape \(3, 3, 2, 4\) \(HWIO\), got"):
        S.Conv2D(2, 4, 3, kernel=k)


# ---------------------------------------------------------------------------- AvgPool2D
POOL_CONFIGS = [
    ((6, 4, 2), 2, None, "VALID"),
    ((7, 5, 3), 2, None, "VALID"),  # non-overlapping windows, edges cropped (reshape path)
    ((7, 5, 3), 3, 2, "SAME"),
    ((5, 5, 1), 2, 1, 1),
    ((6, 6, 2), (2, 3), (2, 1), "VALID"),
    ((5, 7, 3), (2, 3), None, "VALID"),  # rectangular windows, a column cropped
]


@pytest.mark.parametrize("in_shape, window, stride, padding", POOL_CONFIGS)
def test_avgpool_reference_and_adjoint(in_shape, window, stride, padding):
    syn = S.AvgPool2D(window, stride, padding)
    win = (window, window) if isinstance(window, int) else window
    s = win if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    kernel = _pool_kernel(win, in_shape[2])
    v = _rand(7, (2,) + in_shape)
    pooled = np_conv(v, kernel, s, padding)
    # an explicit window loop for the VALID case, independent of the conv reference
    if padding == "VALID":
        a0, b0 = pooled.shape[1:3]
        loop = np.array([[v[:, a * s[0] : a * s[0] + win[0], b * s[1] : b * s[1] + win[1]]
                          .mean((1, 2)) for b in range(b0)] for a in range(a0)])
        np.testing.assert_allclose(pooled, loop.transpose(2, 0, 1, 3), rtol=1e-6, atol=1e-7)
    out_shape = pooled.shape[1:]
    assert syn.expected_shapes((in_shape,)) == ((None, None, None), out_shape)
    f = _rand(8, (2,) + out_shape)
    np.testing.assert_allclose(_energy(syn, v, f), -(f * pooled).sum((1, 2, 3)), rtol=RTOL,
                               atol=ATOL)
    c_in, c_out = _currents(syn, v, f)
    np.testing.assert_allclose(c_out, pooled, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(c_in, np_conv_T(f, kernel, s, padding, in_shape[:2]), rtol=RTOL,
                               atol=ATOL)
    np.testing.assert_allclose(
        (pooled * f).sum((1, 2, 3)), (v * np.asarray(c_in)).sum((1, 2, 3)), rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------------------- Memory
def _np_logsumexp(a, axis):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_memory_softmax_is_scaled_logsumexp(beta):
    xi = _rand(9, (6, 2, 3))
    syn = S.Memory((2, 3), 6, beta=beta, memories=xi)
    assert syn.num_memories == 6
    g = _rand(10, (4, 2, 3))
    h = g.reshape(4, 6).astype(np.float64) @ xi.reshape(6, 6).T
    np.testing.assert_allclose(syn.similarities(g), h, rtol=RTOL, atol=ATOL)
    ref = -_np_logsumexp(beta * h, -1) / beta
    np.testing.assert_allclose(_energy(syn, g), ref, rtol=RTOL, atol=ATOL)
    # its current is attention over the memories: ξᵀ softmax(β ξ g)
    p = np.exp(beta * h - beta * h.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    (c,) = _currents(syn, g)
    np.testing.assert_allclose(c, (p @ xi.reshape(6, 6)).reshape(g.shape), rtol=1e-4, atol=1e-5)


def test_memory_other_hidden_lagrangians():
    xi = _rand(11, (5, 4))
    g = _rand(12, (3, 4))
    h = g @ xi.T
    repu = S.Memory(4, 5, lagrangian=L.RePU(3), memories=xi)
    np.testing.assert_allclose(_energy(repu, g), -(np.maximum(h, 0) ** 3).sum(-1) / 3, rtol=RTOL,
                               atol=ATOL)
    ex = S.Memory(4, 5, lagrangian=L.Exp(0.6), memories=xi)
    np.testing.assert_allclose(_energy(ex, g), -np.exp(0.6 * h).sum(-1) / 0.6, rtol=RTOL,
                               atol=ATOL)


def test_memory_distance_similarity_is_euclidean_energy():
    # E(v) = ½|v|² − (1/β) lse(β(ξv − ½|ξ|²)) = −(1/β) lse(−β/2 |ξ − v|²) with an Identity layer
    import hamjax as hj

    beta = 1.5
    xi = _rand(13, (5, 4)).astype(np.float64)
    net = hj.models.memory_model((4,), 5, beta=beta, patterns=xi, similarity="distance")
    v = _rand(14, (3, 4)).astype(np.float64)
    d2 = ((v[:, None, :] - xi[None]) ** 2).sum(-1)
    np.testing.assert_allclose(net.energy({"image": jnp.asarray(v)}),
                               -_np_logsumexp(-beta * d2 / 2, -1) / beta, rtol=1e-5, atol=1e-5)
    p = np.exp(-beta * d2 / 2 - (-beta * d2 / 2).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(net.vector_field({"image": jnp.asarray(v)})["image"], p @ xi - v,
                               rtol=1e-4, atol=1e-5)
    # the faint memory wins under distance, the bright one under overlap
    mem = np.array([[1.0, 1.0, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0]])
    probe = jnp.asarray([[1.2, 0.9, 0.3, 0.0]])
    near = S.Memory(4, 2, beta=5.0, memories=mem, similarity="distance")
    dot = S.Memory(4, 2, beta=5.0, memories=mem)
    assert int(jnp.argmax(near.similarities(probe))) == 0
    assert int(jnp.argmax(dot.similarities(probe))) == 1
    with pytest.raises(ValueError, match="similarity"):
        S.Memory(4, 2, memories=mem, similarity="cosine")


def test_memory_construction_rules():
    syn = S.Memory((2, 2), 7, key=_keys(1)[0])
    assert syn.memories.shape == (7, 4)
    assert isinstance(syn.hidden, L.Softmax)
    assert S.Memory((2, 2), 3, memories=np.ones((3, 4))).memories.shape == (3, 4)
    with pytest.raises(ValueError, match=r"memories of shape \(3, 2, 2\)"):
        S.Memory((2, 2), 3, memories=np.ones((3, 5)))
    with pytest.raises(ValueError, match="PRNG key"):
        S.Memory(4, 3)


# ----------------------------------------------------- batching, shapes, multilinearity
def _synapse_cases():
    k = _keys(6, 3)
    return [
        ("dense", S.Dense((2, 2), 3, key=k[0]), [(2, 2), (3,)]),
        ("bias", S.Bias(3, key=k[1], scale=1.0), [(3,)]),
        ("lateral", S.Lateral(4, key=k[2]), [(4,)]),
        ("conv", S.Conv2D(2, 3, 3, stride=2, padding="SAME", key=k[3]), [(5, 5, 2), (3, 3, 3)]),
        ("pool", S.AvgPool2D(2), [(4, 4, 2), (2, 2, 2)]),
        ("memory", S.Memory((2, 2), 5, beta=2.0, key=k[4]), [(2, 2)]),
        ("memory_repu", S.Memory(3, 4, lagrangian=L.RePU(3), key=k[5]), [(3,)]),
    ]


SYN_CASES = _synapse_cases()
SYN_IDS = [c[0] for c in SYN_CASES]


@pytest.mark.parametrize("name, syn, shapes", SYN_CASES, ids=SYN_IDS)
def test_batched_energy_equals_per_sample(name, syn, shapes):
    batch = (2, 3)
    g = [_rand(20 + i, batch + s) for i, s in enumerate(shapes)]
    e = _energy(syn, *g)
    assert e.shape == batch
    for i in range(2):
        for j in range(3):
            e1 = _energy(syn, *(a[i, j] for a in g))
            assert e1.shape == ()
            np.testing.assert_allclose(e[i, j], e1, rtol=RTOL, atol=ATOL)
    assert syn(*g).shape == batch  # __call__ is energy


@pytest.mark.parametrize("name, syn, shapes", SYN_CASES, ids=SYN_IDS)
def test_expected_shapes_accept_the_offered_shapes(name, syn, shapes):
    expected = syn.expected_shapes(tuple(shapes))
    assert len(expected) == len(shapes)
    for exp, act in zip(expected, shapes, strict=True):
        assert len(exp) == len(act)
        assert all(e is None or e == a for e, a in zip(exp, act, strict=True))


def test_expected_shapes_values():
    k = _keys(1)[0]
    assert S.Dense((2, 3), 4, key=k).expected_shapes(((2, 3), (4,))) == ((2, 3), (4,))
    assert S.Bias((3, 2)).expected_shapes(((3, 2),)) == ((3, 2),)
    assert S.Lateral(5, key=k).expected_shapes(((5,),)) == ((5,),)
    assert S.Memory((2, 2), 3, key=k).expected_shapes(((2, 2),)) == ((2, 2),)
    assert S.AvgPool2D(2).expected_shapes(((8, 6, 3),)) == ((None, None, None), (4, 3, 3))


@pytest.mark.parametrize("name, syn, shapes", SYN_CASES, ids=SYN_IDS)
def test_multilinear_flag_means_linear_in_each_argument(name, syn, shapes):
    """HAM computes the current of a multilinear synapse into its only free layer once per
    relaxation; that is only exact if the energy is linear in each argument."""
    g = [_rand(30 + i, (2,) + s) for i, s in enumerate(shapes)]
    if not syn.multilinear:
        # the non-multilinear synapses here are genuinely nonlinear in their argument
        e2 = _energy(syn, *(2.0 * a for a in g))
        assert not np.allclose(e2, 2.0 * np.asarray(_energy(syn, *g)), rtol=1e-3)
        return
    for i in range(len(g)):
        h = _rand(40 + i, g[i].shape)
        mix = [a if j != i else 1.5 * a - 0.5 * h for j, a in enumerate(g)]
        other = [a if j != i else h for j, a in enumerate(g)]
        lhs = _energy(syn, *mix)
        rhs = 1.5 * np.asarray(_energy(syn, *g)) - 0.5 * np.asarray(_energy(syn, *other))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("image_shape, stride, pool, channels", [
    ((10, 9, 1), 1, 2, 3), ((9, 10, 3), 2, 2, 3), ((8, 8, 3), 1, 3, 3),
    ((10, 9, 1), 1, 1, (3, 4)), ((11, 12, 2), (2, 1), 2, (3, 4))])
def test_conv_ham_currents_are_minus_the_gradient_of_its_synapse_energy(image_shape, stride, pool,
                                                                        channels):
    """A conv HAM's currents into its free layers, as relaxations compute them (the clamped
    image's convolution once, as a constant current; the pooling and readout by autodiff every
    call), are ``−∂E/∂g`` of the HAM's total synapse energy, with the image free and clamped;
    colour images, strided convolutions and hierarchies of two conv stages (the currents
    between the stages both ways) included."""
    net = hj.models.conv_classifier(image_shape, 4, channels=channels, kernel_size=3,
                                    stride=stride, pool=pool, key=_keys(1, 3)[0])
    x = net.init_state(batch=2, key=_keys(1, 4)[0], scale=1.0)
    g = net.activations(x)

    def total(gs):
        return sum(jnp.sum(net.synapse_energy(s, gs)) for s in net.synapses)

    ref = jax.grad(total)(g)
    for clamp in ((), ("image",)):
        dyn = net.dynamics(x, clamp=clamp)
        got = jax.jit(lambda d, gf: d.currents(gf))(dyn, {n: g[n] for n in dyn.free})
        assert set(got) == set(dyn.free)
        for n in dyn.free:
            np.testing.assert_allclose(got[n], -ref[n], rtol=1e-5, atol=1e-5)


def test_conv_classifier_stages_are_checked():
    key = _keys(1, 5)[0]
    with pytest.raises(ValueError, match="kernel_size has 3 entries for 2 stages"):
        hj.models.conv_classifier((12, 12, 1), 3, channels=(2, 3), kernel_size=(3, 3, 3),
                                  key=key)
    with pytest.raises(ValueError, match="at least one stage"):
        hj.models.conv_classifier((12, 12, 1), 3, channels=(), key=key)


def test_multilinear_flags():
    flags = {name: syn.multilinear for name, syn, _ in SYN_CASES}
    assert flags == {"dense": True, "bias": True, "lateral": False, "conv": True, "pool": True,
                     "memory": False, "memory_repu": False}


# --------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("make, words", [
    (lambda k: S.Dense(4, 3, key=0), ["Dense", "PRNG key as key=", "got 0"]),
    (lambda k: S.Dense(0, 3, key=k), ["Dense", "in_features", "positive", "got 0"]),
    (lambda k: S.Dense(4, (3, -1), key=k), ["Dense", "out_features", "(3, -1)"]),
    (lambda k: S.Dense(4.0, 3, key=k), ["Dense", "in_features", "4.0"]),
    (lambda k: S.Conv2D(0, 3, 3, key=k), ["Conv2D", "in_channels", "got 0"]),
    (lambda k: S.Conv2D(1, 3, 0, key=k), ["Conv2D", "kernel_size"]),
    (lambda k: S.Memory(4, 0, key=k), ["Memory", "num_memories", "got 0"]),
    (lambda k: S.Memory(4, 2, key=7), ["Memory", "PRNG key as key=", "got 7"]),
    (lambda k: S.Lateral(0, key=k), ["Lateral", "features"]),
    (lambda k: S.Bias(0), ["Bias", "shape"]),
    (lambda k: S.Attention(8, num_heads=0, key=k), ["Attention", "num_heads"]),
    (lambda k: S.TokenMemory(8, -2, key=k), ["TokenMemory", "num_memories", "-2"]),
    (lambda k: S.Attention(k, 8), ["Attention", "PRNG key as dim", "key=", "keyword-only"]),
    (lambda k: S.Lateral(k), ["Lateral", "PRNG key as features", "key="]),
    (lambda k: S.Conv2D(1, 3, 3), ["Conv2D", "needs a PRNG key", "kernel="]),
    (lambda k: S.AvgPool2D(0), ["AvgPool2D", "window"]),
])
def test_bad_sizes_and_keys_are_named(make, words):
    """A slip in a constructor's arguments is a ValueError naming the class and the argument,
    not JAX's message about PRNG key data or a division by zero."""
    with pytest.raises(ValueError) as e:
        make(_keys(1)[0])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_new_style_and_legacy_keys_are_accepted():
    for k in (jax.random.PRNGKey(0), jax.random.key(0)):
        assert S.Dense(4, 3, key=k).weight.shape == (3, 4)
