"""hamjax.solvers against optimistix's and lineax's own solvers and closed forms: Anderson
acceleration (per sample, safeguarded), the Neumann adjoint solve with its fallback, and the
truncated (phantom) series."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

from hamjax.solvers import Anderson, FixedPoint, LinearSolveWarning, Neumann, PhantomGradient

N = 12


def _contraction(seed=0, gain=0.9, batch=4):
    """``f(x) = tanh(W x + b_i)`` per sample ``i``: a contraction (``|W| < 1``)."""
    w = gain * jax.random.normal(jax.random.PRNGKey(seed), (N, N)) / np.sqrt(N)
    b = jax.random.normal(jax.random.PRNGKey(seed + 1), (batch, N))

    def f(x, _):
        return jnp.tanh(x @ w.T + b)

    return f, jnp.zeros((batch, N))


def test_history_one_is_the_plain_iteration():
    """``Anderson(history=1)`` takes exactly the steps of ``x ← f(x)`` (and, damped,
    ``x ← x + β (f(x) − x)``, which is optimistix's ``FixedPointIteration(damp=1 − β)``)."""
    f, x0 = _contraction()
    for mixing in (1.0, 0.5):
        k = 7
        ours = optx.fixed_point(f, Anderson(rtol=0.0, atol=0.0, history=1, mixing=mixing,
                                            batch_ndim=1), x0, max_steps=k, throw=False)
        theirs = optx.fixed_point(f, optx.FixedPointIteration(rtol=0.0, atol=0.0,
                                                              damp=1.0 - mixing),
                                  x0, max_steps=k, throw=False)
        np.testing.assert_allclose(ours.value, theirs.value, rtol=1e-6, atol=1e-7)


def test_fixed_point_is_optimistix_fixed_point_iteration_per_sample():
    """``FixedPoint`` takes exactly the steps of optimistix's ``FixedPointIteration`` while a
    sample is unconverged; then it holds each sample at the first iterate within its own
    tolerance, where one optimistix solve per sample (its own stopping test: ``rms(f(x) − x)
    ≤ atol``, here the max-norm of a one-element residual scaled) ends at the same point."""
    f, x0 = _contraction()
    k = 7
    ours = optx.fixed_point(f, FixedPoint(rtol=0.0, atol=0.0, batch_ndim=1), x0, max_steps=k,
                            throw=False)
    theirs = optx.fixed_point(f, optx.FixedPointIteration(rtol=0.0, atol=0.0), x0,
                              max_steps=k, throw=False)
    np.testing.assert_allclose(ours.value, theirs.value, rtol=1e-6, atol=1e-7)
    tol = 1e-6
    sol = optx.fixed_point(f, FixedPoint(rtol=0.0, atol=tol, batch_ndim=1), x0, max_steps=500)
    res = jnp.sqrt(jnp.mean((f(sol.value, None) - sol.value) ** 2, axis=1))
    assert bool(jnp.all(res <= tol)) and bool(jnp.all(sol.stats["done"]))
    for i in range(x0.shape[0]):
        # the same sample alone, iterated by hand until its own residual meets the tolerance
        x = x0[i:i + 1]
        while True:
            fx = f(jnp.broadcast_to(x, x0.shape), None)[i:i + 1]
            if float(jnp.sqrt(jnp.mean((fx - x) ** 2))) <= tol:
                break
            x = fx
        np.testing.assert_allclose(sol.value[i], x[0], rtol=1e-6, atol=1e-7)


def test_fixed_point_gives_up_on_a_repelling_fixed_point():
    """``x ← 2x + 1`` runs away from its fixed point −1: the sample is given up (finite,
    unconverged, held) once its residual passes ``safeguard`` times its best, while a
    contracting sample beside it converges; the loop ends long before ``max_steps``."""
    def f(x, _):
        return jnp.stack([2.0 * x[0] + 1.0, 0.5 * x[1] + 1.0])

    x0 = jnp.zeros((2, 3))
    sol = optx.fixed_point(f, FixedPoint(rtol=0.0, atol=1e-6, batch_ndim=1), x0,
                           max_steps=1000, throw=False)
    assert bool(jnp.all(sol.stats["done"])) and int(sol.stats["num_steps"]) < 40
    assert bool(jnp.all(jnp.isfinite(sol.value[0])))
    assert float(sol.stats["residual"][0]) > 1.0
    np.testing.assert_allclose(sol.value[1], 2.0, atol=1e-5)


def test_anderson_finds_the_fixed_point_faster():
    f, x0 = _contraction()
    tol = 1e-6
    acc = optx.fixed_point(f, Anderson(rtol=0.0, atol=tol, batch_ndim=1), x0, max_steps=500)
    plain = optx.fixed_point(f, Anderson(rtol=0.0, atol=tol, history=1, batch_ndim=1), x0,
                             max_steps=500)
    # the fixed point, from an independent solver: Newton on f(x) − x
    root = optx.root_find(lambda x, a: f(x, a) - x, optx.Newton(rtol=1e-5, atol=1e-6), x0)
    np.testing.assert_allclose(acc.value, root.value, atol=1e-5)
    np.testing.assert_allclose(plain.value, root.value, atol=1e-5)
    assert int(acc.stats["num_steps"]) < 0.7 * int(plain.stats["num_steps"])
    # per sample: every residual within the tolerance
    res = jnp.sqrt(jnp.mean((f(acc.value, None) - acc.value) ** 2, axis=1))
    assert bool(jnp.all(res <= tol * 1.01))


def test_samples_are_independent():
    """One sample's result does not depend on which others share its batch."""
    f, x0 = _contraction(batch=4)
    solver = Anderson(rtol=0.0, atol=1e-6, batch_ndim=1)
    both = optx.fixed_point(f, solver, x0, max_steps=200).value
    for i in range(4):
        def fi(x, a, i=i):
            return f(jnp.broadcast_to(x, x0.shape), a)[i:i + 1]

        alone = optx.fixed_point(fi, solver, x0[i:i + 1], max_steps=200).value
        np.testing.assert_allclose(both[i], alone[0], atol=1e-6)


def test_safeguard_gives_up_on_a_repelling_fixed_point():
    """``x ← 2x + 1`` runs away from its fixed point −1: the plain step blows up, the
    safeguard restarts from the best iterate, and after ``max_restarts`` the sample is given up
    (held at its best, finite, unconverged) while a contracting sample beside it converges.
    The loop ends long before ``max_steps``."""
    def f(x, _):
        return jnp.stack([2.0 * x[0] + 1.0, 0.5 * x[1] + 1.0])

    x0 = jnp.zeros((2, 3))
    sol = optx.fixed_point(f, Anderson(rtol=0.0, atol=1e-6, history=1, batch_ndim=1), x0,
                           max_steps=4096, throw=False)
    st = sol.state
    assert int(sol.stats["num_steps"]) < 400
    assert bool(st.done[0]) and bool(st.done[1])
    assert int(st.restarts[0]) >= 1 and float(st.residual[0]) > 1e-6
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    np.testing.assert_allclose(sol.value[1], 2.0, atol=1e-5)


def _system(scale, seed=0, n=N):
    m = jax.random.normal(jax.random.PRNGKey(seed), (n, n))
    m = scale * (m + m.T) / (2 * np.sqrt(n))  # symmetric: real spectrum, radius ≈ scale·√2
    return m, m - jnp.eye(n)


def test_neumann_solves_a_contraction_like_lu():
    m, a = _system(0.3)
    b = jax.random.normal(jax.random.PRNGKey(5), (N,))
    op = lx.MatrixLinearOperator(a)
    sol = lx.linear_solve(op, b, Neumann())
    ref = lx.linear_solve(op, b, lx.LU())
    assert float(jnp.max(jnp.abs(m))) > 0 and int(sol.stats["fallback_steps"]) == 0
    np.testing.assert_allclose(sol.value, ref.value, rtol=1e-3, atol=1e-4)
    # reverse mode solves the transposed system the same way
    g_ours = jax.grad(lambda v: jnp.sum(jnp.sin(lx.linear_solve(op, v, Neumann()).value)))(b)
    g_lu = jax.grad(lambda v: jnp.sum(jnp.sin(lx.linear_solve(op, v, lx.LU()).value)))(b)
    np.testing.assert_allclose(g_ours, g_lu, rtol=1e-3, atol=1e-4)


def test_neumann_falls_back_when_it_does_not_contract():
    """Spectral radius above 1: the series diverges. The default fallback, the iteration
    Anderson-accelerated, and GMRES each solve the system to the Neumann tolerance (rms of the
    residual within 1e-4 of rms(b)); without a fallback the solve fails."""
    _, a = _system(1.5)
    b = jax.random.normal(jax.random.PRNGKey(6), (N,))
    op = lx.MatrixLinearOperator(a)
    gmres = lx.GMRES(rtol=1e-6, atol=1e-10, restart=20, stagnation_iters=20, max_steps=1000)
    for solver in (Neumann(), Neumann(fallback=gmres)):
        sol = lx.linear_solve(op, b, solver)
        assert int(sol.stats["fallback_steps"]) > 0
        rms = float(jnp.sqrt(jnp.mean((a @ sol.value - b) ** 2)))
        assert rms <= 1.0001e-4 * float(jnp.sqrt(jnp.mean(b ** 2)))
    with pytest.raises(Exception, match="maximum number of solver steps"):
        lx.linear_solve(op, b, Neumann(fallback=None))


def test_neumann_tolerance_is_per_sample():
    """Two independent systems in one batch, one scaled 1e4 smaller: each is solved to its own
    relative tolerance (a batch-wide norm would leave the small one unsolved)."""
    m, _ = _system(0.5)
    b = jnp.stack([jax.random.normal(jax.random.PRNGKey(7), (N,)),
                   1e-4 * jax.random.normal(jax.random.PRNGKey(8), (N,))])
    op = lx.FunctionLinearOperator(lambda v: v @ m.T - v, jax.eval_shape(lambda: b))
    solver = Neumann(rtol=1e-4, atol=0.0, batch_ndim=1)
    v = lx.linear_solve(op, b, solver).value
    r = jnp.sqrt(jnp.mean((v @ m.T - v - b) ** 2, axis=1))
    assert bool(jnp.all(r <= 1e-4 * jnp.sqrt(jnp.mean(b ** 2, axis=1)) * 1.01))


def test_phantom_gradient_is_the_truncated_series():
    """``k`` steps from 0 of ``v ← v + λ(Av − b)``: with λ = 1 that is ``−Σ_{i<k} Mⁱ b``."""
    m, a = _system(0.3)
    b = jax.random.normal(jax.random.PRNGKey(9), (N,))
    op = lx.MatrixLinearOperator(a)
    for k in (1, 3):
        v = lx.linear_solve(op, b, PhantomGradient(steps=k)).value
        series = -sum(np.linalg.matrix_power(np.asarray(m), i) @ np.asarray(b) for i in range(k))
        np.testing.assert_allclose(v, series, rtol=1e-5, atol=1e-6)
    v = lx.linear_solve(op, b, PhantomGradient(steps=2, damping=0.5)).value
    step = 0.5 * -np.asarray(b)  # v1 = v0 + λ(A·0 − b)
    step = step + 0.5 * (np.asarray(a) @ step - np.asarray(b))
    np.testing.assert_allclose(v, step, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="history"):
        Anderson(history=0)
    with pytest.raises(ValueError, match="mixing"):
        Anderson(mixing=1.5)
    with pytest.raises(ValueError, match="steps"):
        PhantomGradient(steps=0)


def test_neumann_gives_failed_samples_a_zero_solution_and_warns():
    """Two independent 1-d systems: ``(0.5 − 1) v = b₀`` contracts; ``0 · v = b₁`` has no
    solution. The first is solved, the second gets 0 and a LinearSolveWarning (in a gradient
    it drops out instead of failing the batch); ``throw=True`` fails the solve."""
    m = jnp.array([[0.5], [1.0]])  # A = M − I per sample: −0.5 and 0
    b = jnp.array([[1.0], [1.0]])
    op = lx.FunctionLinearOperator(lambda v: m * v - v, jax.eval_shape(lambda: b))
    fb = lx.GMRES(rtol=1e-6, atol=1e-10, restart=2, stagnation_iters=2, max_steps=20)
    with pytest.warns(LinearSolveWarning, match="1 sample"):
        v = lx.linear_solve(op, b, Neumann(batch_ndim=1, fallback=fb)).value
        jax.effects_barrier()
    np.testing.assert_allclose(v, [[-2.0], [0.0]], rtol=2e-4)  # rtol 1e-4 on the residual
    with pytest.raises(Exception, match="maximum number of solver steps"):
        lx.linear_solve(op, b, Neumann(batch_ndim=1, fallback=fb, throw=True))
