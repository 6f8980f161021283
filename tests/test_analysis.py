"""hamjax.analysis against closed forms (docs/maths.md §1.3, §4.3–4.6) and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax as hj
from hamjax import analysis as an

L = hj.lagrangians


def kh_net(w, b, lagrangian):
    """DN eq. (1)/(4) as a one-layer HAM: E = (x−b)·g − L − ½ gᵀWg, W symmetric."""
    n = w.shape[0]
    lat = hj.synapses.Lateral(n, zero_diagonal=False, key=jax.random.PRNGKey(0))
    lat = jax.tree_util.tree_map(lambda _: jnp.asarray(w, jnp.float32), lat)
    return hj.HAM({"x": hj.Layer(n, lagrangian, bias=b)}, {"w": lat}, {"w": ("x",)})


def sym(key, n, scale):
    a = jax.random.normal(key, (n, n))
    return scale * (a + a.T) / (2 * np.sqrt(n))


def fixed_point(w, b, act, x0, iters=400):
    # contraction x ← W g(x) + b (‖W‖ sup g' < 1 in these tests)
    x = x0
    for _ in range(iters):
        x = w @ act(x) + b
    return x


@pytest.fixture(scope="module")
def tanh_kh():
    n = 6
    w = sym(jax.random.PRNGKey(1), n, 0.6)
    b = jax.random.normal(jax.random.PRNGKey(2), (n,))
    net = kh_net(w, b, L.Tanh())
    xs = fixed_point(w, b, jnp.tanh, jnp.zeros(n))
    return net, w, b, {"x": xs}


def test_flat_index_roundtrip_and_locate():
    idx = an.FlatIndex(("a", "b"), ((2, 3), (4,)))
    state = {"a": jnp.arange(6.0).reshape(2, 3), "b": 10 + jnp.arange(4.0)}
    v = idx.flatten(state)
    assert v.shape == (10,)
    back = idx.unflatten(v)
    assert all(jnp.array_equal(back[k], state[k]) for k in state)
    assert idx.locate(4) == ("a", (1, 1))
    assert idx.locate(7) == ("b", (1,))
    assert idx.slice("b") == slice(6, 10)
    assert idx.labels()[4] == "a[1, 1]"
    with pytest.raises(IndexError):
        idx.locate(10)


def test_hessians_closed_forms_at_fixed_point(tanh_kh):
    net, w, b, xs = tanh_kh
    x = xs["x"]
    assert jnp.max(jnp.abs(an.FlatSystem(net, xs).residual(xs["x"]))) < 1e-5
    h = an.hessian(net, xs, of="lagrangian")
    np.testing.assert_allclose(h, jnp.diag(1 - jnp.tanh(x) ** 2), atol=1e-6)
    lag_hess = jax.jit(jax.hessian(net.layers["x"].lagrangian_value))
    np.testing.assert_allclose(h, lag_hess(x), atol=1e-5)
    np.testing.assert_allclose(an.coupling(net, xs), w, atol=1e-6)
    eh = an.hessian(net, xs, of="energy")
    np.testing.assert_allclose(eh, h - h @ w @ h, atol=1e-5)  # docs/maths.md eq. (DN6)
    np.testing.assert_allclose(an.energy_hessian(net, xs, at_fixed_point=True), eh, atol=1e-5)
    # matrix-free operators agree with the dense matrices
    np.testing.assert_allclose(an.energy_hessian(net, xs, dense=False).as_matrix(), eh, atol=1e-5)
    np.testing.assert_allclose(an.lagrangian_hessian(net, xs, dense=False).as_matrix(), h,
                               atol=1e-6)
    # and with a central finite difference of the energy gradient
    grad = jax.jit(jax.grad(lambda z: net.energy({"x": z})))
    eps = 1e-2
    fd = jnp.stack([(grad(x + eps * e) - grad(x - eps * e)) / (2 * eps) for e in jnp.eye(6)])
    np.testing.assert_allclose(fd, eh, atol=2e-3)


def test_energy_hessian_off_fixed_point_matches_autodiff(tanh_kh):
    net, w, b, _ = tanh_kh
    x = jax.random.normal(jax.random.PRNGKey(5), (6,))
    exact = jax.jit(jax.hessian(lambda z: net.energy({"x": z})))(x)
    np.testing.assert_allclose(an.energy_hessian(net, {"x": x}), exact, atol=1e-5)
    # eq. (6) drops a term proportional to the residual: it differs away from a fixed point
    assert not np.allclose(an.energy_hessian(net, {"x": x}, at_fixed_point=True), exact,
                           atol=1e-3)


def test_jacobian_spectrum_is_eig_WH_minus_I(tanh_kh):
    net, w, _, xs = tanh_kh
    h = an.hessian(net, xs, of="lagrangian")
    j = an.jacobian(net, xs)
    np.testing.assert_allclose(j, w @ h - jnp.eye(6), atol=1e-6)
    ev = np.sort(np.linalg.eigvals(np.asarray(j)).real)
    ref = np.sort(np.linalg.eigvals(np.asarray(w @ h - jnp.eye(6))).real)
    np.testing.assert_allclose(ev, ref, atol=1e-5)
    v = jnp.arange(6.0)
    np.testing.assert_allclose(an.jacobian(net, xs, dense=False).mv(v), j @ v, atol=1e-5)


def test_layered_ham_coupling_clamping_tau_and_memory():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    net = hj.HAM(
        layers={
            "v": hj.Layer(4, L.Identity()),
            "h": hj.Layer(3, L.Tanh(), tau=0.5, bias=jnp.array([0.1, -0.2, 0.3])),
            "z": hj.Layer(2, L.Softmax(), tau=0.25),
        },
        synapses={
            "w1": hj.synapses.Dense(4, 3, key=k1),
            "w2": hj.synapses.Dense(3, 2, key=k2),
            "m": hj.synapses.Memory(3, 5, beta=2.0, key=k3),
        },
        edges={"w1": ("v", "h"), "w2": ("h", "z"), "m": ("h",)},
    )
    x = net.init_state(key=jax.random.PRNGKey(4), scale=1.0)
    sys = an.FlatSystem(net, x, clamp=("v",))
    assert sys.index.names == ("h", "z")
    vf = jax.jit(lambda s: net.vector_field(s, clamp=("v",)))(x)
    np.testing.assert_allclose(sys.field(sys.x), sys.index.flatten(vf), atol=1e-5)
    # Memory makes the coupling state dependent: C = −∂²E_syn/∂g², and J = T⁻¹(CH − I)
    c = an.coupling(net, x, clamp="v")
    g = sys.activation(sys.x)
    c_ref = -jax.jit(jax.hessian(sys.synapse_energy))(g)
    np.testing.assert_allclose(c, c_ref, atol=1e-5)
    w2 = net.synapses["w2"].weight
    np.testing.assert_allclose(c[3:, :3], w2, atol=1e-6)  # dense block z ← h
    h = an.lagrangian_hessian(net, x, clamp="v")
    p = jax.nn.softmax(x["z"])
    np.testing.assert_allclose(h[3:, 3:], jnp.diag(p) - jnp.outer(p, p), atol=1e-6)
    j = an.jacobian(net, x, clamp="v")
    np.testing.assert_allclose(j, (c @ h - jnp.eye(5)) / sys.tau[:, None], atol=1e-4)
    with pytest.raises(ValueError, match="one sample"):
        an.FlatSystem(net, net.init_state(batch=(2,)))


def test_lanczos_matches_eigh():
    a = sym(jax.random.PRNGKey(7), 60, 1.0)
    ref = np.linalg.eigvalsh(np.asarray(a))
    full, _ = an.lanczos(a, 60)
    np.testing.assert_allclose(np.sort(full), ref, atol=1e-4)
    # the extremes converge long before the Krylov space fills the whole space
    np.testing.assert_allclose(an.extremal_eigenvalues(a, 2, "largest", steps=35), ref[::-1][:2],
                               atol=1e-3)
    np.testing.assert_allclose(an.extremal_eigenvalues(a, 2, "smallest", steps=35), ref[:2],
                               atol=1e-3)
    # exact on a low-rank operator (breakdown restarts the Krylov space)
    u = jax.random.normal(jax.random.PRNGKey(8), (60, 2))
    low = u @ u.T
    vals, _ = an.lanczos(low, 60)
    np.testing.assert_allclose(np.sort(vals)[-2:], np.linalg.eigvalsh(np.asarray(low))[-2:],
                               rtol=1e-4)


# ------------------------------------------------------------------------ dead neurons
def test_relu_dead_neurons_and_flat_energy():
    w = sym(jax.random.PRNGKey(9), 5, 0.5)
    b = jnp.ones(5)
    net = kh_net(w, b, L.ReLU())
    x = {"x": jnp.array([1.0, -2.0, 0.5, -0.3, 2.0])}
    dn = an.dead_neurons(net, x)
    assert dn.counts == {"x": 2} and dn.total == 2
    assert dn.neurons() == [("x", (1,)), ("x", (3,))]
    d = dn.basis()
    np.testing.assert_allclose(d[:, 0], -np.eye(5)[1])  # points deeper into x_1 < 0
    h = an.hessian(net, x, of="lagrangian")
    np.testing.assert_allclose(h @ d, 0.0)  # H D = 0, eq. (7)
    for j in range(2):
        assert an.is_flat(net, x, d[:, j], alphas=(0.1, 1.0, 42.0, 1e3))
        # the cone is one-sided: crossing zero revives the neuron
        assert not an.is_flat(net, x, d[:, j], alphas=(-5.0,))
    assert not an.is_flat(net, x, np.eye(5)[0])
    np.testing.assert_allclose(dn.projector(), np.diag([0, 1, 0, 1, 0.0]))


def test_softmax_shift_and_saturated_sigmoid():
    k = jax.random.PRNGKey(10)
    net = hj.HAM(
        layers={"s": hj.Layer(4, L.Softmax(beta=2.0)), "q": hj.Layer(3, L.Sigmoid())},
        synapses={"w": hj.synapses.Dense(4, 3, key=k)},
        edges={"w": ("s", "q")},
    )
    x = {"s": jnp.array([0.3, -0.1, 0.5, 0.2]), "q": jnp.array([0.5, 30.0, -0.2])}
    dn = an.dead_neurons(net, x)
    assert dn.counts == {"s": 1, "q": 1}
    np.testing.assert_allclose(dn.directions["s"][:, 0], np.full(4, 0.5), atol=1e-5)
    shift = {"s": jnp.ones(4), "q": jnp.zeros(3)}
    # DN Example 4: flat for every α, both signs
    assert an.is_flat(net, x, shift, alphas=(-7.0, -1.0, 3.0, 50.0), atol=1e-4)
    assert an.is_flat(net, x, dn.basis()[:, 1], alphas=(1.0, 10.0))
    assert len(dn.states()) == 2


# --------------------------------------------------------------------------- stability
def two_neuron(w, b):
    return kh_net(jnp.asarray(w), jnp.asarray(b), L.ReLU())


def test_stability_verdicts_tell_dead_from_flat():
    # stable: x* = (−1, 2), neuron 0 dead, W restricted to the live neuron is 0.25 < 1
    w = np.array([[0.0, 0.5], [0.5, 0.25]])
    net = two_neuron(w, [-2.0, 1.5])
    rep = an.stability(net, {"x": jnp.array([-1.0, 2.0])})
    assert rep.stable is True
    assert rep.n_dead == {"x": 1} and rep.flat_directions.shape[1] == 0
    np.testing.assert_allclose(rep.spectrum, [-0.75], atol=1e-6)
    # the full Jacobian adds −1/τ for the dead direction (block-triangular structure)
    np.testing.assert_allclose(np.sort(rep.jacobian_spectrum.real), [-1.0, -0.75], atol=1e-6)
    assert "dead" in rep.reason and "stable" in str(rep)

    # unstable: the live neuron has self-coupling 2 > 1 (energy Hessian −1 on range(H))
    net = two_neuron([[2.0, 0.0], [0.0, 0.0]], [-1.0, -1.0])
    rep = an.stability(net, {"x": jnp.array([1.0, -1.0])})
    assert rep.stable is False
    np.testing.assert_allclose(rep.spectrum, [1.0], atol=1e-6)
    np.testing.assert_allclose(rep.energy_spectrum, [-1.0], atol=1e-6)

    # undecided: self-coupling exactly 1 gives a flat energy direction that is NOT a dead neuron
    net = two_neuron([[1.0, 0.0], [0.0, 0.0]], [0.0, -1.0])
    xs = {"x": jnp.array([1.0, -1.0])}
    rep = an.stability(net, xs)
    assert rep.stable is None
    assert rep.n_dead == {"x": 1}
    np.testing.assert_allclose(np.abs(rep.flat_directions[:, 0]), [1.0, 0.0], atol=1e-6)
    # the full energy Hessian has two zero modes; only one is a harmless dead neuron
    assert np.sum(np.abs(np.linalg.eigvalsh(an.hessian(net, xs))) < 1e-6) == 2

    rep = an.stability(net, {"x": jnp.array([3.0, -2.0])})
    assert rep.stable is None and "not a steady state" in rep.reason


def test_stability_lanczos_and_tau_independence():
    n = 30
    w = sym(jax.random.PRNGKey(11), n, 0.9)
    b = 0.5 * jax.random.normal(jax.random.PRNGKey(12), (n,))
    net = kh_net(w, b, L.ReLU())
    xs = {"x": fixed_point(w, b, jax.nn.relu, jnp.zeros(n))}
    dense = an.stability(net, xs)
    assert dense.stable is True and dense.n_dead["x"] > 0
    lz = an.stability(net, xs, dense=False)
    assert lz.stable is True
    np.testing.assert_allclose(lz.spectrum[0], max(dense.spectrum[0], -1.0), atol=1e-3)
    # restricted spectrum ⊂ spectrum of WH − I; the rest is −1 (one per dead neuron)
    full = np.sort(dense.jacobian_spectrum.real)
    restricted = np.sort(dense.spectrum.real)
    merged = np.sort(np.concatenate([restricted, -np.ones(dense.n_dead["x"])]))
    np.testing.assert_allclose(full, merged, atol=1e-4)


@pytest.mark.slow
def test_stability_does_not_depend_on_tau():
    k1, k2 = jax.random.split(jax.random.PRNGKey(13))

    def build(tau_h, tau_z):
        return hj.HAM(
            layers={"h": hj.Layer(5, L.ReLU(), tau=tau_h, bias=0.3 * jnp.ones(5)),
                    "z": hj.Layer(3, L.Softmax(), tau=tau_z)},
            synapses={"w": hj.synapses.Dense(5, 3, key=k1, scale=0.6)},
            edges={"w": ("h", "z")},
        )

    net = build(1.0, 1.0)
    x = net.init_state(key=k2, scale=1.0)
    _, xs = an.simulate(net, x, t1=60.0, n_save=2)
    xs = {k: v[-1] for k, v in xs.items()}
    a, b = an.stability(net, xs), an.stability(build(0.3, 2.0), xs)
    assert a.stable is b.stable is True
    assert a.n_dead["z"] == 1  # softmax shift
    np.testing.assert_allclose(a.energy_spectrum, b.energy_spectrum, atol=1e-5)


def test_recover_steady_state_from_energy_minimiser():
    # docs/maths.md §4.6: minimiser at x̃_0 = −42 (anywhere on the flat set), steady state x*_0 = −1
    w = np.array([[0.0, 0.5], [0.5, 0.25]])
    net = two_neuron(w, [-2.0, 1.5])
    x_tilde = an.minimise_energy(net, {"x": jnp.array([-42.0, 0.3])})
    np.testing.assert_allclose(x_tilde["x"], [-42.0, 2.0], atol=1e-4)
    assert an.stability(net, x_tilde).stable is None  # a minimiser is not a steady state here
    rec = an.recover_steady_state(net, x_tilde)
    np.testing.assert_allclose(rec.state["x"], [-1.0, 2.0], atol=1e-4)
    np.testing.assert_allclose(rec.projected["x"], rec.state["x"], atol=1e-5)
    np.testing.assert_allclose(rec.projector, np.diag([1.0, 0.0]))
    assert rec.residual < 1e-5
    np.testing.assert_allclose(net.energy(rec.state), net.energy(x_tilde), atol=1e-5)
    assert an.stability(net, rec.state).stable is True


# --------------------------------------------------------------------------- Lyapunov
def test_lyapunov_check_and_rates(tanh_kh):
    net, *_ = tanh_kh
    x0 = {"x": 2.0 * jax.random.normal(jax.random.PRNGKey(14), (6,))}
    ts, xs = an.simulate(net, x0, t1=5.0, n_save=41)
    res = an.check_lyapunov(net, trajectory=(ts, xs))
    assert res.ok and res.max_increase <= 0 and res.max_rate <= 0
    # the rate is the derivative of the saved energy (central differences, dt = 0.125)
    e, r = np.asarray(res.energies), np.asarray(res.rates)
    np.testing.assert_allclose((e[2:] - e[:-2]) / 0.25, r[1:-1], atol=0.05 * np.abs(r).max())
    assert float(an.max_energy_increase(jnp.array([3.0, 2.0, 2.5, 1.0]))) == 0.5
    # a trajectory run backwards gains energy: the check must fail
    bad = an.check_lyapunov(net, trajectory=(ts, {"x": xs["x"][::-1]}))
    assert not bad.ok and bad.max_increase > 0
    # a solve that runs out of steps says so instead of returning inf-padded states
    with pytest.raises(RuntimeError, match="max_steps=3"):
        an.simulate(net, x0, t1=5.0, n_save=41, max_steps=3)
