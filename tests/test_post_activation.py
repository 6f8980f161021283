"""The modified dynamics of DN §4 (the post-activation systems of hamjax.analysis, docs/maths.md
§4.7–4.8): properties of our reconstruction — same steady states, energies non-increasing, no
flat directions, eq. (DN12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax as hj
from hamjax import analysis as an
from hamjax import analysis as dn

L = hj.lagrangians


def pd_weight(key, n, norm=0.8):
    s = jax.random.normal(key, (n, n))
    w = s.T @ s
    return norm * w / jnp.linalg.norm(w, 2)


@pytest.fixture(scope="module")
def relu_system():
    n = 5
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    w = 0.8 * (a + a.T) / (2 * np.sqrt(n))
    b = jax.random.normal(jax.random.PRNGKey(1), (n,))
    return dn.post_activation(w, b, L.ReLU()), w, b


def nonincreasing(sys, ys, tol=1e-5):
    e = np.asarray(sys.energies(ys))
    return float(np.max(np.diff(e))) <= tol * (1 + np.abs(e).max()), e


def test_steady_states_are_affine_images(relu_system):
    sys, w, b = relu_system
    y0 = jax.random.normal(jax.random.PRNGKey(2), (5,))
    _, ys = sys.solve(y0, 30.0, n_save=2)
    y = ys[-1]
    assert jnp.max(jnp.abs(sys.residual(y))) < 1e-4
    x = sys.to_x(y)  # x* = W y* + b solves the original fixed-point equation
    np.testing.assert_allclose(w @ jax.nn.relu(x) + b, x, atol=1e-4)
    np.testing.assert_allclose(sys.to_y(x), y, atol=1e-4)
    # E_1(y*) = E_KH(x*) (docs/maths.md eq. (DN10))
    e_kh = jnp.vdot(x - b, jax.nn.relu(x)) - L.ReLU()(x) - 0.5 * jnp.vdot(
        jax.nn.relu(x), w @ jax.nn.relu(x))
    np.testing.assert_allclose(sys.e1(y), e_kh, atol=1e-5)
    np.testing.assert_allclose(sys.original_residual(x), 0.0, atol=1e-4)


def test_ham_system_matches_the_ham():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    net = hj.HAM(
        layers={"v": hj.Layer(4, L.Identity()),
                "h": hj.Layer(3, L.ReLU(), bias=jnp.array([0.2, -0.5, 0.1])),
                "z": hj.Layer(2, L.Softmax())},
        synapses={"w1": hj.synapses.Dense(4, 3, key=k1),
                  "w2": hj.synapses.Dense(3, 2, key=k2, scale=0.5)},
        edges={"w1": ("v", "h"), "w2": ("h", "z")},
    )
    x = net.init_state(key=k3, scale=1.0)
    sys = dn.post_activation(net, x=x, clamp="v")
    flat = an.FlatSystem(net, x, clamp="v")
    y = flat.activation(flat.x)
    # the map x = c(y) + b is the HAM's own input currents plus biases
    np.testing.assert_allclose(sys.to_x(y), flat.currents(y) + flat.bias, atol=1e-6)
    # only the clamped layer's values are read: giving just that layer is the same system
    only_v = dn.post_activation(net, x={"v": x["v"]}, clamp="v")
    np.testing.assert_allclose(only_v.to_x(y), sys.to_x(y), atol=1e-7)
    # at a steady state y* (found with M = I), x* = c(y*) + b is the HAM's steady state and
    # E_1(y*) its energy
    _, ys = dn.post_activation(net, x=x, clamp="v", m="identity").solve(y, 40.0, n_save=2)
    ys = ys[-1]
    assert jnp.max(jnp.abs(sys.residual(ys))) < 1e-5
    xs = flat.full_state(sys.to_x(ys))
    np.testing.assert_allclose(flat.index.flatten(net.vector_field(xs, clamp="v")), 0.0,
                               atol=1e-4)
    # up to the constant Legendre term of the clamped layer
    np.testing.assert_allclose(sys.e1(ys), net.energy(xs) - net.layers["v"].energy(x["v"]),
                               atol=1e-4)


@pytest.mark.parametrize(
    "case", ["E2-identity", "E2-gradient", "Eab-polar", "E1-W"]
)
def test_energies_nonincreasing_symmetric(case):
    n = 5
    w = pd_weight(jax.random.PRNGKey(4), n)
    b = jax.random.normal(jax.random.PRNGKey(5), (n,))
    m, alpha, beta = {
        "E2-identity": ("identity", 0.0, 1.0),  # ω(ĤW) ≤ ‖W‖ ≤ 1: sym(I − ĤW) ⪰ 0 (Ex. 6.2)
        "E2-gradient": ("gradient", 0.0, 1.0),
        "Eab-polar": ("polar", 1.0, 0.5),  # Proposition 5.2
        "E1-W": (lambda y: w, 1.0, 0.0),  # Example 5.1: K M = W² ⪰ 0
    }[case]
    sys = dn.post_activation(w, b, L.ReLU(), alpha=alpha, beta=beta, m=m)
    y0 = 2.0 * jax.random.normal(jax.random.PRNGKey(6), (n,))
    _, ys = sys.solve(y0, 8.0, n_save=33)
    ok, e = nonincreasing(sys, ys)
    assert ok and e[-1] < e[0]
    # condition (11) and dE/dt ≤ 0 on the trajectory
    check = jax.jit(lambda y: (sys.condition(y), sys.energy_rate(y)))
    for y in (ys[0], ys[8]):
        cond, rate = check(y)
        assert cond >= -1e-5 and rate <= 1e-5


def test_polar_mobility_is_orthogonal_and_kM_psd(relu_system):
    _, w, b = relu_system
    sys = dn.post_activation(w, b, L.ReLU(), alpha=1.0, beta=1.0, m="polar")
    y = jax.random.normal(jax.random.PRNGKey(7), (5,))
    q = sys.mobility(y)
    np.testing.assert_allclose(q.T @ q, jnp.eye(5), atol=1e-5)
    km = sys.k_matrix(y) @ q
    np.testing.assert_allclose(km, km.T, atol=1e-5)
    assert jnp.linalg.eigvalsh(km)[0] >= -1e-5


@pytest.mark.slow
def test_nonsymmetric_smooth_leaky_relu_example_7():
    # DN Examples 6–7: W ≠ Wᵀ (free feedback blocks), SMU with a = 0 (g' < 0 somewhere: H not
    # PSD), spectral rescale so that I − ĤW stays invertible; gradient flow on E_2
    lag = L.SmoothLeakyReLU(a=0.0, mu=1.0)
    lo, hi = lag.derivative_bounds()
    assert float(lo) < 0 and abs(dn.derivative_bound(lag) - 1.1289) < 1e-3
    keys = jax.random.split(jax.random.PRNGKey(8), 4)
    sizes = [4, 3, 3]
    ws = [jax.random.normal(keys[k], (sizes[k + 1], sizes[k])) for k in range(2)]
    vs = [jax.random.normal(keys[k + 2], (sizes[k], sizes[k + 1])) for k in range(2)]
    w = dn.spectral_rescale(dn.layered_weights(ws, vs), lag, eps=0.05)
    assert not np.allclose(w, w.T)
    assert float(jnp.linalg.norm(w, 2)) * dn.derivative_bound(lag) < 1.0
    b = jax.random.normal(keys[0], (10,))
    sys = dn.post_activation(w, b, lag)
    with pytest.raises(ValueError, match="symmetric"):
        sys.e1(jnp.zeros(10))
    y0 = 3.0 * jax.random.normal(keys[1], (10,))
    _, ys = sys.solve(y0, 40.0, n_save=41)
    ok, e = nonincreasing(sys, ys)
    assert ok and e[-1] < 1e-7 * max(1.0, e[0])
    # the trajectory visited non-PSD Hessians
    xs = jax.vmap(sys.to_x)(ys)
    assert float(jnp.min(lag.derivative(xs))) < 0
    # the limit is a steady state of the original non-symmetric system x = W g(x) + b
    x = sys.to_x(ys[-1])
    np.testing.assert_allclose(w @ lag.activation(x) + b, x, atol=1e-3)
    # and (12) holds there: (I − ĤW)ᵀ(I − ĤW) ≻ 0
    assert jnp.linalg.eigvalsh(sys.stability_matrix(ys[-1]))[0] > 0


def central_differences(grad, y, h=1e-2):
    eye = jnp.eye(y.shape[0])
    g = jax.vmap(grad)
    return jax.jit(lambda y: (g(y + h * eye) - g(y - h * eye)) / (2 * h))(y)


def test_stability_matrix_matches_energy_hessian(relu_system):
    n = 5
    w = pd_weight(jax.random.PRNGKey(9), n)
    b = jax.random.normal(jax.random.PRNGKey(10), (n,))
    _, ys = dn.post_activation(w, b, L.Tanh()).solve(jnp.zeros(n), 30.0, n_save=2)
    y = ys[-1]
    for alpha, beta in [(1.0, 0.0), (0.0, 1.0), (0.7, 0.4)]:
        sys = dn.post_activation(w, b, L.Tanh(), alpha=alpha, beta=beta)
        s = sys.stability_matrix(y)
        exact = jax.jit(jax.hessian(sys.energy))(y)
        np.testing.assert_allclose(s, exact, atol=2e-4)
        # central finite differences of the gradient
        fd = central_differences(jax.grad(sys.energy), y)
        np.testing.assert_allclose(0.5 * (fd + fd.T), 0.5 * (s + s.T), atol=2e-3)


def test_no_flat_directions_where_the_kh_energy_has_them(relu_system):
    sys, w, b = relu_system
    _, ys = sys.solve(jnp.zeros(5), 30.0, n_save=2)
    y = ys[-1]
    x = sys.to_x(y)
    dead = np.flatnonzero(np.asarray(x) < 0)
    assert len(dead) >= 1  # this W, b leave dead neurons at the steady state
    net = hj.HAM({"x": hj.Layer(5, L.ReLU(), bias=b)},
                 {"w": hj.synapses.Lateral(5, zero_diagonal=False, weight=w)},
                 {"w": ("x",)})
    xs = {"x": x}
    kh = np.linalg.eigvalsh(np.asarray(an.hessian(net, xs)))
    assert np.sum(np.abs(kh) < 1e-6) >= len(dead)  # KH energy: zero modes (eq. 7)
    # modified energies: the stability matrix (12) has no zero mode (E_2 and E_1 + E_2)
    for alpha, beta in [(0.0, 1.0), (1.0, 1.0)]:
        s = dn.post_activation(w, b, L.ReLU(), alpha=alpha, beta=beta).stability_matrix(y)
        assert np.min(np.abs(np.linalg.eigvals(np.asarray(s)))) > 1e-3
    # in x: the KH energy is flat along a dead neuron, the residual energy ½|F|² is not
    e_i = -jnp.eye(5)[dead[0]]
    assert an.is_flat(net, xs, e_i, alphas=(0.5, 5.0))
    r = [float(sys.residual_energy(x + a * e_i)) for a in (0.0, 0.5, 5.0)]
    assert r[0] < 1e-8 and r[1] > 0.1 and r[2] > r[1]
    # and the HAM version of the residual energy agrees (batch-native)
    batch = {"x": jnp.stack([x + a * e_i for a in (0.0, 0.5, 5.0)])}
    np.testing.assert_allclose(dn.residual_energy(net, batch), r, rtol=1e-4, atol=1e-7)


def test_residual_energy_decreases_on_original_dynamics():
    # eq. (13)–(14) with M = I, α = 0: ½|F|² is a Lyapunov function when ω(CH − I) ≤ 0
    n = 5
    a = jax.random.normal(jax.random.PRNGKey(11), (n, n))
    w = 0.9 * (a + a.T) / jnp.linalg.norm(a + a.T, 2)
    b = jax.random.normal(jax.random.PRNGKey(12), (n,))
    net = hj.HAM({"x": hj.Layer(n, L.ReLU(), bias=b)},
                 {"w": hj.synapses.Lateral(n, zero_diagonal=False, weight=w)},
                 {"w": ("x",)})
    x0 = {"x": 3.0 * jax.random.normal(jax.random.PRNGKey(13), (n,))}
    assert float(dn.residual_energy_abscissa(net, x0)) <= 0.0
    _, xs = an.simulate(net, x0, t1=6.0, n_save=31)
    r = np.asarray(dn.residual_energy(net, xs))
    assert np.max(np.diff(r)) <= 1e-6 * (1 + r.max()) and r[-1] < r[0]
    sys = dn.post_activation(w, b, L.ReLU())
    np.testing.assert_allclose(sys.x_energy(xs["x"][5]), r[5], rtol=1e-4)
    assert float(dn.numerical_abscissa(jnp.array([[0.0, 1.0], [-1.0, 0.0]]))) == 0.0


def test_x_energy_alpha_term_is_e1_in_x_coordinates():
    n = 4
    w = pd_weight(jax.random.PRNGKey(14), n)
    b = jax.random.normal(jax.random.PRNGKey(15), (n,))
    sys = dn.post_activation(w, b, L.Tanh(), alpha=1.0, beta=0.0)
    y = jax.random.normal(jax.random.PRNGKey(16), (n,))
    np.testing.assert_allclose(sys.x_energy(sys.to_x(y)), sys.e1(y), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="M must be 'identity', 'gradient', 'polar'"):
        dn.post_activation(w, b, L.Tanh(), m="newton")
