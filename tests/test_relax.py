"""Relaxation: steady states, stopping rules, saving, adjoints, failure paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import hamjax as hj
from hamjax.lagrangians import Identity, ReLU, Softmax, Tanh

N_IN, N_HID, N_OUT = 6, 5, 3
# the solvers and adjoints the tests name
SOLVERS = {"tsit5": diffrax.Tsit5(), "euler": diffrax.Euler()}
ADJOINTS = {"recursive": diffrax.RecursiveCheckpointAdjoint(), "implicit": hj.ImplicitSteadyState()}


def chain(key, taus=(1.0, 1.0, 1.0), hidden=None, scale=1.0):
    hidden = Softmax(1.0) if hidden is None else hidden
    k1, k2 = jax.random.split(key)
    return hj.HAM(
        layers={
            "image": hj.Layer(N_IN, Identity(), tau=taus[0]),
            "hidden": hj.Layer(N_HID, hidden, tau=taus[1], bias=True),
            "label": hj.Layer(N_OUT, Softmax(2.0), tau=taus[2]),
        },
        synapses={
            "w1": hj.synapses.Dense(N_IN, N_HID, key=k1, scale=scale),
            "w2": hj.synapses.Dense(N_HID, N_OUT, key=k2, scale=scale),
        },
        edges={"w1": ("image", "hidden"), "w2": ("hidden", "label")},
    )


@pytest.fixture(scope="module")
def net():
    return chain(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def x0(net):
    x = net.init_state(batch=(4,), key=jax.random.PRNGKey(1), scale=0.5)
    x["image"] = jax.random.uniform(jax.random.PRNGKey(2), (4, N_IN))
    return x


@pytest.fixture(scope="module")
def steady(net, x0):
    return hj.relax(net, x0, clamp="image", stop=hj.SteadyState(atol=1e-6))


def closed_form_currents(net, x):
    """Currents of docs/maths.md eq. (5) for the chain, written by hand."""
    g = net.activations(x)
    w1 = net.synapses["w1"].weight
    w2 = net.synapses["w2"].weight
    return {
        "hidden": g["image"] @ w1.T + g["label"] @ w2 + net.layers["hidden"].bias,
        "label": g["hidden"] @ w2.T,
    }


def test_steady_state_solves_fixed_point_equations(net, x0, steady):
    assert bool(jnp.all(steady.converged))
    assert bool(jnp.all(steady.result == hj.RESULTS.successful))
    c = closed_form_currents(net, steady.state)
    for name in ("hidden", "label"):
        np.testing.assert_allclose(steady.state[name], c[name], atol=2e-5)
    np.testing.assert_array_equal(steady.state["image"], x0["image"])
    assert float(jnp.max(steady.residual)) <= 1e-6


@pytest.mark.slow
def test_steady_state_independent_of_tau(x0):
    # small weights and tanh: the field is a contraction, so the minimum is unique
    key = jax.random.PRNGKey(3)
    a = chain(key, taus=(1.0, 1.0, 1.0), hidden=Tanh(1.0), scale=0.3)
    b = chain(key, taus=(1.0, 0.2, 3.0), hidden=Tanh(1.0), scale=0.3)
    sa = hj.relax(a, x0, clamp="image", stop=hj.SteadyState(atol=1e-6))
    sb = hj.relax(b, x0, clamp="image", stop=hj.SteadyState(atol=1e-6))
    assert bool(jnp.all(sa.converged & sb.converged))
    for name in ("hidden", "label"):
        np.testing.assert_allclose(sa.state[name], sb.state[name], atol=1e-5)


@pytest.mark.parametrize("solver", ["tsit5", "euler"])
def test_energy_never_increases_on_saved_trajectory(net, x0, solver):
    sol = hj.relax(net, x0, clamp="image", solver=SOLVERS[solver], dt0=0.05,
                   save=hj.SaveAt(trajectory=True, energy=True))
    e = sol.energy_trace()
    assert e.shape[1:] == (4,) and e.shape[0] >= 3
    assert np.all(np.diff(e, axis=0) <= 1e-6), np.diff(e, axis=0).max()
    # the saved energies are the energies of the saved states
    ts = np.asarray(sol.ts)
    k = int(np.isfinite(ts).sum()) - 1
    state_k = {n: v[k] for n, v in sol.trajectory.items()}
    np.testing.assert_allclose(e[k], net.energy(state_k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sol.trajectory["image"][0], x0["image"])


def test_euler_and_tsit5_agree(net, x0, steady):
    # float32 Euler stalls near 1e-6: increments dt·dx fall below the state's resolution
    eul = hj.relax(
        net,
        x0,
        clamp="image",
        solver=diffrax.Euler(),
        dt0=0.05,
        stop=hj.SteadyState(atol=1e-5),
        max_steps=20000,
    )
    assert bool(jnp.all(eul.converged))
    for name in ("hidden", "label"):
        np.testing.assert_allclose(eul.state[name], steady.state[name], atol=1e-4)


def test_optimistix_solvers_agree_with_ode(net, x0, steady):
    root = hj.relax(net, x0, clamp="image", solver=optx.Newton(rtol=1e-6, atol=1e-8),
                    stop=hj.SteadyState(atol=1e-6))
    assert bool(jnp.all(root.converged))
    for name in ("hidden", "label"):
        np.testing.assert_allclose(root.state[name], steady.state[name], atol=1e-4)
    # minimising E in float32 resolves energy differences of ~1e-7 only, so its steady state is
    # good to ~1e-4: the residual is small, but not below a 1e-6 tolerance
    mini = hj.relax(net, x0, clamp="image", solver=optx.BFGS(rtol=1e-7, atol=1e-8),
                    stop=hj.SteadyState(atol=1e-6))
    assert float(jnp.max(mini.residual)) < 2e-3
    for name in ("hidden", "label"):
        np.testing.assert_allclose(mini.state[name], steady.state[name], atol=3e-3)
    # optimistix's own fixed-point iteration, each sample alone, stopping by its tolerances
    it = hj.relax(net, x0, clamp="image", solver=optx.FixedPointIteration(rtol=0, atol=1e-8),
                  stop=hj.SteadyState(atol=1e-6))
    assert bool(jnp.all(it.converged)) and it.steps.shape == (4,)
    for name in ("hidden", "label"):
        np.testing.assert_allclose(it.state[name], steady.state[name], atol=1e-5)


@pytest.mark.slow
def test_fixed_point_method_agrees_with_ode_and_differentiates(net, x0, steady):
    mask = jnp.zeros((4, N_HID), bool).at[:, 0].set(True)

    def loss(n, solver):
        sol = hj.relax(n, x0, clamp="image", solver=solver, stop=hj.SteadyState(atol=1e-7),
                       adjoint=hj.ImplicitSteadyState())
        return jnp.sum(sol.state["label"] * jnp.arange(N_OUT))

    @eqx.filter_jit
    def run(n):
        # one compilation for the four relaxations (each alone would compile its own loops)
        kw = dict(clamp="image", solver=hj.solvers.FixedPoint(), stop=hj.SteadyState(atol=1e-6))
        fp = hj.relax(n, x0, **kw)
        fr = hj.relax(n, x0, freeze={"hidden": mask}, **kw)
        return (fp, fr, eqx.filter_grad(loss)(n, hj.solvers.FixedPoint()),
                eqx.filter_grad(loss)(n, diffrax.Tsit5()))

    fp, fr, g_fp, g_ode = run(net)
    assert bool(jnp.all(fp.converged)) and float(jnp.max(fp.residual)) <= 1e-6
    assert bool(jnp.all((fp.steps >= 1) & (fp.steps < 4096)))
    np.testing.assert_array_equal(fp.evaluations, fp.steps)
    for name in ("hidden", "label"):
        np.testing.assert_allclose(fp.state[name], steady.state[name], atol=1e-5)
    # frozen neurons stay put, the others settle
    np.testing.assert_array_equal(fr.state["hidden"][:, 0], x0["hidden"][:, 0])
    assert bool(jnp.all(fr.converged))
    # the gradient (implicit function theorem at either steady state) equals the ODE's
    for u, v in zip(jax.tree.leaves(g_fp), jax.tree.leaves(g_ode), strict=True):
        np.testing.assert_allclose(u, v, rtol=2e-3, atol=2e-5)


def test_minimise_recovers_steady_state_on_flat_relu_set():
    # one ReLU neuron driven negative: the energy is flat along it, so a minimiser may sit far
    # away; the fixed-point step after relax's minimiser lands on the steady state.
    w = jnp.array([[1.0], [-2.0]])  # (out=2, in=1)
    net = hj.HAM(
        layers={"v": hj.Layer(1, Identity()), "h": hj.Layer(2, ReLU())},
        synapses={"w": hj.synapses.Dense(1, 2, key=jax.random.PRNGKey(0))},
        edges={"w": ("v", "h")},
    )
    net = eqx.tree_at(lambda n: n.synapses["w"].weight, net, w)
    x = {"v": jnp.array([1.0]), "h": jnp.array([0.5, -42.0])}
    sol = hj.relax(net, x, clamp="v", solver=optx.BFGS(rtol=1e-7, atol=1e-8),
                   stop=hj.SteadyState(atol=1e-6))
    np.testing.assert_allclose(sol.state["h"], [1.0, -2.0], atol=1e-4)
    assert bool(sol.converged)


def test_fixed_steps_equals_handwritten_euler(net, x0):
    n, dt = 7, 0.1
    sol = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), stop=hj.FixedSteps(n), dt0=dt)
    x = dict(x0)
    for _ in range(n):
        c = closed_form_currents(net, x)
        x = {
            **x,
            "hidden": x["hidden"] + dt * (c["hidden"] - x["hidden"]),
            "label": x["label"] + dt * (c["label"] - x["label"]),
        }
    for name in ("hidden", "label"):
        np.testing.assert_allclose(sol.state[name], x[name], rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(sol.steps == n))


@pytest.mark.slow
def test_fixed_steps_scan_equals_diffeqsolve(net, x0):
    # FixedSteps with the recursive adjoint drives diffrax's solver.step from a scan; with fewer
    # checkpoints the same relaxation goes through diffeqsolve. Same states, saved trajectory,
    # energies, counts and BPTT gradients.
    kw = dict(clamp="image", stop=hj.FixedSteps(6), dt0=0.1,
              save=hj.SaveAt(trajectory=True, energy=True))
    few = diffrax.RecursiveCheckpointAdjoint(checkpoints=2)

    def loss(n, adjoint, solver):
        sol = hj.relax(n, x0, clamp="image", solver=SOLVERS[solver], stop=hj.FixedSteps(6), dt0=0.1,
                       adjoint=ADJOINTS.get(adjoint, adjoint))
        return jnp.sum(sol.state["label"] * jnp.arange(N_OUT))

    @eqx.filter_jit
    def run(n):
        # both solvers and both paths in one compilation
        return {solver: (hj.relax(n, x0, solver=SOLVERS[solver], **kw),
                         hj.relax(n, x0, solver=SOLVERS[solver], adjoint=few, **kw),
                         eqx.filter_grad(loss)(n, "recursive", solver),
                         eqx.filter_grad(loss)(n, few, solver))
                for solver in ("euler", "tsit5")}

    for solver, (a, b, ga, gb) in run(net).items():
        for name in net.layers:
            np.testing.assert_allclose(a.state[name], b.state[name], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.trajectory[name], b.trajectory[name], rtol=1e-5,
                                       atol=1e-6)
        np.testing.assert_allclose(a.energies, b.energies, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.ts, b.ts, atol=1e-6)
        assert a.trajectory["hidden"].shape == (7, 4, N_HID)
        for f in ("steps", "num_steps", "evaluations"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=solver + f)
        np.testing.assert_allclose(a.t_final, b.t_final, atol=1e-6)
        for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_fixed_steps_flags_nonfinite_and_counts_steps():
    key = jax.random.PRNGKey(0)
    net = hj.HAM(
        layers={"a": hj.Layer(3, hj.lagrangians.Exp(1.0)),
                "b": hj.Layer(3, hj.lagrangians.Exp(1.0))},
        synapses={"w": hj.synapses.Dense(3, 3, key=key, scale=50.0)},
        edges={"w": ("a", "b")},
    )
    xb = {"a": jnp.stack([jnp.ones(3), -jnp.ones(3) * 5]),
          "b": jnp.stack([jnp.ones(3), -jnp.ones(3) * 5])}
    sol = hj.relax(net, xb, solver=diffrax.Euler(), dt0=0.5, stop=hj.FixedSteps(40))
    assert not bool(sol.finite[0]) and not bool(sol.converged[0])
    assert 1 <= int(sol.num_steps[0]) < 40
    with pytest.raises(hj.NonFiniteStateError, match=r"samples \[\[0\].*stopped at step"):
        hj.relax(net, xb, solver=diffrax.Euler(), dt0=0.5, stop=hj.FixedSteps(40),
                 raise_nonfinite=True)


def test_fixed_time(net, x0):
    sol = hj.relax(
        net,
        x0,
        clamp="image",
        stop=hj.FixedTime(0.5),
        save=hj.SaveAt(trajectory=True, ts=jnp.linspace(0.0, 0.5, 6)),
    )
    np.testing.assert_allclose(sol.ts, np.linspace(0, 0.5, 6), atol=1e-6)
    assert sol.trajectory["hidden"].shape == (6, 4, N_HID)
    np.testing.assert_allclose(sol.t_final, 0.5, atol=1e-6)


def test_max_steps_outcome(net, x0):
    sol = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), dt0=0.01, max_steps=5)
    assert bool(jnp.all(sol.result == hj.RESULTS.max_steps_reached))
    assert not bool(jnp.any(sol.converged))
    assert bool(jnp.all(sol.steps == 5))


def test_evaluation_count_matches_real_calls(x0):
    calls = []

    class CountingDense(hj.synapses.Dense):
        multilinear = False  # keep it in the loop, so every field evaluation calls it

        def energy(self, g_a, g_b):
            jax.debug.callback(lambda: calls.append(1))
            return super().energy(g_a, g_b)

    key = jax.random.PRNGKey(0)
    base = chain(key)
    net = hj.HAM(
        layers=base.layers,
        synapses={"w1": base.synapses["w1"], "w2": CountingDense(N_HID, N_OUT, key=key)},
        edges=base.edges,
    )
    for solver in ("tsit5", "euler"):
        calls.clear()
        sol = hj.relax(net, x0, clamp="image", solver=SOLVERS[solver])
        jax.effects_barrier()
        # after the solve relax evaluates the field once more for the residual; each sample
        # counts its own evaluations, and the batch evaluates as often as its slowest sample
        assert len(calls) == int(jnp.max(sol.evaluations)) + 1, (solver, len(calls),
                                                                 sol.evaluations)


@pytest.mark.slow
def test_adjoints_agree_with_finite_differences(net, x0):
    target = jax.nn.one_hot(jnp.arange(4) % N_OUT, N_OUT)

    def loss(net, adjoint):
        sol = hj.relax(net, x0, clamp="image", adjoint=ADJOINTS[adjoint],
                       stop=hj.SteadyState(atol=1e-6))
        return jnp.sum((sol.state["label"] - target) ** 2)

    # each a single compilation, the loss of w2 reused for every finite difference
    grads = eqx.filter_jit(lambda n: {a: eqx.filter_grad(loss)(n, a)
                                      for a in ("recursive", "implicit")})(net)
    wr = grads["recursive"].synapses["w2"].weight
    wi = grads["implicit"].synapses["w2"].weight
    np.testing.assert_allclose(wi, wr, rtol=2e-3, atol=2e-5)
    br = grads["recursive"].layers["hidden"].bias
    bi = grads["implicit"].layers["hidden"].bias
    np.testing.assert_allclose(bi, br, rtol=2e-3, atol=2e-5)

    # central finite differences on two entries of w2 (float32: a wide step)
    loss_of_w2 = jax.jit(lambda w: loss(eqx.tree_at(lambda n: n.synapses["w2"].weight, net, w),
                                        "recursive"))
    w = net.synapses["w2"].weight
    for idx in [(0, 1), (2, 4)]:
        eps = 1e-2
        fd = (loss_of_w2(w.at[idx].add(eps)) - loss_of_w2(w.at[idx].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(wi[idx], fd, rtol=2e-2, atol=1e-4)


@pytest.mark.slow
def test_gradient_with_respect_to_clamped_input(net, x0):
    def loss(img, adjoint):
        x = {**x0, "image": img}
        sol = hj.relax(net, x, clamp="image", adjoint=ADJOINTS[adjoint],
                       stop=hj.SteadyState(atol=1e-6))
        return jnp.sum(sol.state["label"][:, 0])

    gr, gi = jax.jit(lambda img: [jax.grad(loss)(img, a) for a in ("recursive", "implicit")])(
        x0["image"])
    assert float(jnp.max(jnp.abs(gr))) > 1e-4
    np.testing.assert_allclose(gi, gr, rtol=2e-3, atol=2e-5)


def test_nonfinite_paths():
    # an exponential layer fed by large weights overflows
    key = jax.random.PRNGKey(0)
    net = hj.HAM(
        layers={
            "a": hj.Layer(3, hj.lagrangians.Exp(1.0)),
            "b": hj.Layer(3, hj.lagrangians.Exp(1.0)),
        },
        synapses={"w": hj.synapses.Dense(3, 3, key=key, scale=50.0)},
        edges={"w": ("a", "b")},
    )
    x = {"a": jnp.ones(3), "b": jnp.ones(3)}
    with pytest.raises(hj.NonFiniteStateError,
                       match=r"layer\(s\) \[.*'(a|b)'.*\] \(stopped at step"):
        hj.relax(net, x, solver=diffrax.Euler(), dt0=0.5)
    xb = {
        "a": jnp.stack([jnp.ones(3), jnp.zeros(3)]),
        "b": jnp.stack([jnp.ones(3), -jnp.ones(3) * 5]),
    }
    sol = hj.relax(net, xb, solver=diffrax.Euler(), dt0=0.5, max_steps=50)
    assert not bool(sol.finite[0]) and not bool(sol.converged[0])
    with pytest.raises(hj.NonFiniteStateError, match="samples"):
        hj.relax(net, xb, solver=diffrax.Euler(), dt0=0.5, max_steps=50, raise_nonfinite=True)
    with pytest.raises(hj.NonFiniteStateError, match=r"x0\['a'\]"):
        hj.relax(net, {"a": jnp.array([1.0, jnp.nan, 0.0]), "b": jnp.ones(3)})
    # the same rule under jit, raised when the computation runs (equinox.error_if)
    traced = jax.jit(lambda n, x: hj.relax(n, x, solver=diffrax.Euler(), dt0=0.5, max_steps=50,
                                           raise_nonfinite=True).state)
    with pytest.raises(Exception, match="non-finite state"):
        jax.block_until_ready(traced(net, xb))
    flagged = jax.jit(lambda n, x: hj.relax(n, x, solver=diffrax.Euler(), dt0=0.5,
                                            max_steps=50).finite)(net, xb)
    assert not bool(flagged[0])  # in a batch, "auto" flags, jitted or not


def test_batched_equals_unbatched(net, x0, steady):
    one = {n: v[2] for n, v in x0.items()}
    sol = hj.relax(net, one, clamp="image", stop=hj.SteadyState(atol=1e-6))
    assert sol.converged.shape == ()
    for name in ("hidden", "label"):
        np.testing.assert_allclose(sol.state[name], steady.state[name][2], atol=2e-5)


def test_relax_under_jit_and_vmap(net, x0, steady):
    @eqx.filter_jit
    def run(net, x):
        return hj.relax(net, x, clamp="image", stop=hj.SteadyState(atol=1e-6)).state["label"]

    np.testing.assert_allclose(run(net, x0), steady.state["label"], atol=2e-5)
    per_sample = jax.vmap(lambda x: run(net, x))(x0)
    np.testing.assert_allclose(per_sample, steady.state["label"], atol=2e-5)


def test_bad_arguments(net, x0):
    with pytest.raises(ValueError, match="solver='tsit5' is a name: pass a solver object"):
        hj.relax(net, x0, clamp="image", solver="tsit5")
    with pytest.raises(ValueError, match="solver must be a diffrax solver or an optimistix"):
        hj.relax(net, x0, clamp="image", solver=lambda x: x)
    with pytest.raises(hj.StateError, match="every layer is clamped"):
        hj.relax(net, x0, clamp=("image", "hidden", "label"))
    with pytest.raises(hj.GraphError, match="unknown layer 'pixels'"):
        hj.relax(net, x0, clamp="pixels")
    with pytest.raises(ValueError, match="implicit adjoint"):
        hj.relax(net, x0, clamp="image", stop=hj.FixedSteps(3), adjoint=hj.ImplicitSteadyState())
    with pytest.raises(ValueError, match="adjoint must be a diffrax adjoint"):
        hj.relax(net, x0, clamp="image", adjoint="recursive")
    with pytest.raises(ValueError, match="stop must be a stopping rule"):
        hj.relax(net, x0, clamp="image", stop="steady_state")
    with pytest.raises(hj.StateError, match=r"x0\['hidden'\] has shape"):
        hj.relax(net, {**x0, "hidden": jnp.zeros((4, N_HID + 1))}, clamp="image")
    with pytest.raises(TypeError, match="method"):  # the path follows from the solver's type
        hj.relax(net, x0, clamp="image", method="anderson")


def test_residual_gradient_finite_at_an_exact_fixed_point():
    # a distance-based memory with a hard softmax maps a stored pattern exactly onto itself:
    # residual 0, where the gradient of a sqrt is infinite; the residual's gradient must be 0
    xi = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    net = hj.models.memory_model((3,), 2, beta=50.0, patterns=xi, similarity="distance")
    x0 = {"image": xi}

    def penalty(n):
        sol = hj.relax(n, x0, solver=diffrax.Euler(), stop=hj.FixedSteps(3), dt0=1.0)
        return jnp.sum(sol.residual**2)

    assert float(penalty(net)) == 0.0
    g = eqx.filter_grad(penalty)(net)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


# ------------------------------------------------------------------ steady-state methods


def test_anderson_reaches_the_ode_steady_state_in_fewer_evaluations(net, x0, steady):
    an = hj.relax(net, x0, clamp="image", solver=hj.solvers.Anderson(),
                  stop=hj.SteadyState(atol=1e-6))
    fp = hj.relax(net, x0, clamp="image", solver=hj.solvers.FixedPoint(),
                  stop=hj.SteadyState(atol=1e-6))
    assert bool(jnp.all(an.converged)) and float(jnp.max(an.residual)) <= 1e-6
    for name in ("hidden", "label"):
        np.testing.assert_allclose(an.state[name], steady.state[name], atol=1e-5)
    # the batch costs as many evaluations as its slowest sample
    assert int(jnp.max(an.evaluations)) < int(jnp.max(fp.evaluations)) < int(
        jnp.max(steady.evaluations))
    np.testing.assert_allclose(an.tolerance, 1e-6)


FROZEN = np.zeros((4, N_HID), bool)
FROZEN[:, :2] = True  # the first two hidden neurons of every sample


def _frozen_loss(mask, **kw):
    """A completion-style loss: hidden neurons partly frozen, label read out."""
    def loss(n, x):
        sol = hj.relax(n, x, clamp="image", freeze={"hidden": mask},
                       stop=hj.SteadyState(atol=1e-7), **kw)
        return jnp.sum(sol.state["label"] * jnp.arange(N_OUT)) + jnp.sum(sol.state["hidden"] ** 2)

    return loss


@eqx.filter_jit
def _grads_and_difference(loss, net, x0, bump=None):
    """The gradients of ``loss`` with respect to the parameters and to the hidden initial
    state (one backward pass) and, given ``bump``, ``loss(x0 + bump) − loss(x0 − bump)``."""
    g, gx = eqx.filter_grad(lambda nx: loss(*nx))((net, x0))
    if bump is None:
        return g, gx["hidden"]
    diff = (loss(net, {**x0, "hidden": x0["hidden"] + bump})
            - loss(net, {**x0, "hidden": x0["hidden"] - bump}))
    return g, gx["hidden"], diff


@pytest.fixture(scope="module")
def frozen_reference(net, x0):
    """BPTT (recursive adjoint through Tsit5) to the same steady state, shared by the three
    implicit methods: gradients with respect to the parameters and the hidden initial state."""
    return _grads_and_difference(_frozen_loss(FROZEN, max_steps=4096), net, x0)


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(adjoint=hj.ImplicitSteadyState()),
                                dict(solver=hj.solvers.FixedPoint()),
                                dict(solver=hj.solvers.Anderson())],
                         ids=["ode", "fixed_point", "anderson"])
def test_frozen_neurons_differentiate_at_the_steady_state(net, x0, frozen_reference, kw):
    """Freezing makes ``τẋ`` zero on the frozen rows whatever the state, so the implicit
    function theorem on it is singular; on ``F = x₀ − x`` there it is not. The implicit
    gradients (parameters, and the frozen values themselves) equal BPTT through the ODE to the
    same steady state, which finite differences confirm."""
    loss = _frozen_loss(FROZEN, **kw)
    # central difference on one frozen value
    eps = 1e-2
    bump = jnp.zeros_like(x0["hidden"]).at[1, 0].set(eps)
    g, gx, diff = _grads_and_difference(loss, net, x0, bump)
    fd = diff / (2 * eps)
    g_ref, gx_ref = frozen_reference
    for u, v in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        assert bool(jnp.all(jnp.isfinite(u)))
        np.testing.assert_allclose(u, v, rtol=5e-3, atol=5e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=5e-3, atol=5e-5)
    assert float(jnp.max(jnp.abs(gx[:, :2]))) > 1e-3  # the frozen values do matter
    np.testing.assert_allclose(gx[:, 2:], 0.0, atol=1e-4)  # where a free neuron began does not
    np.testing.assert_allclose(gx[1, 0], fd, rtol=2e-2, atol=1e-3)


@pytest.mark.slow
def test_implicit_gradient_is_right_at_dead_neurons():
    """ReLU hidden units driven below zero are dead (H = 0 there): the energy Hessian is
    singular but ``CH − I`` is not. Neumann (default) and a dense least-squares solve of the
    adjoint give the gradient of BPTT through the ODE to the same steady state (the
    adjoint tolerance is relative: compared in norm)."""
    net = chain(jax.random.PRNGKey(3), hidden=ReLU())
    net = eqx.tree_at(lambda n: n.layers["hidden"].bias, net,
                      jnp.array([-5.0, -5.0, 0.3, 0.2, 0.1]))
    x = net.init_state(batch=(4,))
    x["image"] = jax.random.uniform(jax.random.PRNGKey(4), (4, N_IN))

    adjoints = {"recursive": diffrax.RecursiveCheckpointAdjoint(),
                "implicit": hj.ImplicitSteadyState(),
                "implicit_dense": hj.ImplicitSteadyState(lx.AutoLinearSolver(well_posed=False)),
                "phantom": hj.ImplicitSteadyState(hj.solvers.PhantomGradient())}
    solvers = {"ode": diffrax.Tsit5(), "fixed_point": hj.solvers.FixedPoint()}

    def loss(n, adjoint, solver="ode"):
        sol = hj.relax(n, x, clamp="image", solver=solvers[solver], adjoint=adjoints[adjoint],
                       stop=hj.SteadyState(atol=1e-6))
        return jnp.sum(sol.state["label"] * jnp.arange(N_OUT)), sol

    cases = (("recursive", "ode"), ("implicit", "ode"), ("implicit", "fixed_point"),
             ("implicit_dense", "ode"), ("implicit_dense", "fixed_point"),
             ("phantom", "fixed_point"))
    # every gradient (and its relaxation) in one compilation
    out = eqx.filter_jit(lambda n: {c: eqx.filter_grad(lambda m, c=c: loss(m, *c),
                                                       has_aux=True)(n) for c in cases})(net)
    flat = lambda g: np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])  # noqa: E731
    ref, sol = out["recursive", "ode"]
    ref = flat(ref)
    assert bool(jnp.all(sol.state["hidden"][:, :2] < 0))  # dead
    # the fixed-point iteration settles where the dynamics do (this net has a saddle that
    # Anderson's extrapolation can land on instead: see hamjax.solvers.Anderson)
    fp = out["implicit", "fixed_point"][1]
    np.testing.assert_allclose(fp.state["label"], sol.state["label"], atol=1e-5)
    for adjoint, method in cases[1:-1]:
        g = flat(out[adjoint, method][0])
        rel = np.linalg.norm(g - ref) / np.linalg.norm(ref)
        assert rel < 1e-4, (adjoint, method, rel)
    # the phantom gradient approximates it
    g = flat(out["phantom", "fixed_point"][0])
    assert np.dot(g, ref) / (np.linalg.norm(g) * np.linalg.norm(ref)) > 0.99


@pytest.mark.slow
def test_relax_under_a_users_jit_with_x0_closed_over(net, x0, steady):
    """x0 is a constant of the traced function and the net a tracer: relax must not try to
    read a traced value (the non-finite check) and must give the eager answer, under grad and
    vmap too."""
    methods = ("ode", "anderson")
    solvers = {"ode": diffrax.Tsit5(), "anderson": hj.solvers.Anderson()}

    def label(n, x, method):
        return hj.relax(n, x, clamp="image", solver=solvers[method],
                        stop=hj.SteadyState(atol=1e-6)).state["label"]

    @jax.jit
    def run(n):
        # both methods, forward, gradient and vmap, in one compilation
        out = {}
        for method in methods:
            def objective(m, method=method):
                lab = label(m, x0, method)
                return jnp.sum(lab), lab

            (_, lab), g = jax.value_and_grad(objective, has_aux=True)(n)

            def one(img, method=method):
                return label(net, {**{k: v[0] for k, v in x0.items()}, "image": img}, method)

            out[method] = lab, g, jax.vmap(one)(x0["image"])
        return out

    for method, (lab, g, per) in run(net).items():
        np.testing.assert_allclose(lab, steady.state["label"], atol=2e-5, err_msg=method)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g)), method
        np.testing.assert_allclose(per, steady.state["label"], atol=2e-5, err_msg=method)


@pytest.mark.parametrize("kw", [dict(), dict(solver=diffrax.Euler(), dt0=0.2, max_steps=2000),
                                dict(solver=hj.solvers.Anderson())],
                         ids=["tsit5", "euler", "anderson"])
def test_a_nan_sample_is_flagged_and_the_others_relax(net, x0, steady, kw):
    """Under jit (no eager check can run), one sample with a NaN pixel: it is reported not
    finite, not converged, with a NaN residual (never 0); the healthy samples relax to the
    same steady states as without it."""
    bad = {**x0, "image": x0["image"].at[1, 2].set(jnp.nan)}

    @jax.jit
    def run(x):
        return hj.relax(net, x, clamp="image", stop=hj.SteadyState(atol=1e-6), **kw)

    sol = run(bad)
    assert not bool(sol.finite[1]) and not bool(sol.converged[1])
    assert bool(jnp.isnan(sol.residual[1]))
    ok = np.array([0, 2, 3])
    assert bool(jnp.all(sol.converged[ok])) and bool(jnp.all(sol.finite[ok]))
    np.testing.assert_allclose(sol.state["label"][ok], steady.state["label"][ok], atol=1e-4)
    assert bool(jnp.isnan(sol.state["image"][1, 2]))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(solver=hj.solvers.FixedPoint())],
                         ids=["tsit5", "fixed_point"])
def test_an_unbatched_nan_state_comes_back_nan_and_flagged(net, x0, kw):
    """One sample without a batch axis, a NaN pixel, under jit and flagged: its free layers come
    back NaN (never the zeros it started from, which would read as a state), non-finite and
    not converged, with the outcome ``nonfinite``: what the same sample gets in a batch."""
    one = {n: v[1] for n, v in x0.items()}
    one["image"] = one["image"].at[2].set(jnp.nan)
    run = eqx.filter_jit(lambda n, x: hj.relax(n, x, clamp="image", raise_nonfinite=False, **kw))
    sol = run(net, one)
    batched = run(net, {n: jnp.stack([v, v]) for n, v in one.items()})
    for out in (sol, jax.tree.map(lambda v: v[0], batched)):
        assert bool(jnp.all(jnp.isnan(out.state["hidden"])))
        assert bool(jnp.all(jnp.isnan(out.state["label"])))
        assert not bool(out.finite) and not bool(out.converged)
        assert out.result == hj.RESULTS.nonfinite


@pytest.mark.slow
def test_a_derivative_at_unconverged_samples_is_never_silent(net, x0):
    """Two fixed-point iterations leave every sample unconverged (``F(x) ≠ 0``, where the
    implicit function theorem gives a wrong derivative): differentiating that relaxation warns
    by default, fails with ``on_unconverged=UnconvergedGradientError`` (under jit too) and is
    quiet with ``None``; a converged relaxation differentiates quietly, and an unconverged one that
    is not differentiated says nothing (its ``converged`` flags say it)."""
    import warnings

    def objective(n, adjoint, max_steps):
        r = hj.relax(n, x0, clamp="image", solver=hj.solvers.FixedPoint(), adjoint=adjoint,
                     max_steps=max_steps, stop=hj.SteadyState(atol=1e-6))
        return jnp.sum(r.state["label"])

    short = hj.relax(net, x0, clamp="image", solver=hj.solvers.FixedPoint(), max_steps=2,
                     stop=hj.SteadyState(atol=1e-6))
    assert not bool(jnp.any(short.converged)) and bool(jnp.all(short.finite))
    grad = jax.grad(objective)
    with pytest.warns(hj.UnconvergedGradientWarning, match="4 sample"):
        jax.block_until_ready(grad(net, hj.ImplicitSteadyState(), 2))
        jax.effects_barrier()
    with pytest.raises(Exception, match=r"had not\s+converged"):
        strict = hj.ImplicitSteadyState(on_unconverged=hj.UnconvergedGradientError)
        jax.block_until_ready(eqx.filter_jit(lambda n: grad(n, strict, 2))(net))
    with warnings.catch_warnings():
        warnings.simplefilter("error", hj.UnconvergedGradientWarning)
        jax.block_until_ready(grad(net, hj.ImplicitSteadyState(on_unconverged=None), 2))
        jax.block_until_ready(grad(net, hj.ImplicitSteadyState(), 1024))
        jax.block_until_ready(objective(net, hj.ImplicitSteadyState(), 2))
        jax.effects_barrier()
    with pytest.raises(ValueError, match="on_unconverged"):
        hj.ImplicitSteadyState(on_unconverged="raise")


def test_fixed_steps_carry_their_tolerance(net, x0):
    loose = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), dt0=0.2,
                     stop=hj.FixedSteps(30, atol=1e-2))
    tight = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), dt0=0.2,
                     stop=hj.FixedSteps(30))
    np.testing.assert_allclose(loose.tolerance, 1e-2)
    np.testing.assert_allclose(tight.tolerance, 1e-4)
    np.testing.assert_array_equal(loose.converged, loose.residual <= 1e-2)
    np.testing.assert_array_equal(tight.converged, tight.residual <= 1e-4)
    assert int(jnp.sum(loose.converged)) > int(jnp.sum(tight.converged))


def test_fixed_point_falls_back_to_the_ode_where_the_iteration_diverges():
    """Three neurons inhibiting each other (lateral weights −0.75, identity Lagrangian):
    ``x ← Wx + b`` has an eigenvalue −1.5 and oscillates away from its fixed point, while the
    dynamics ``τẋ = (W − I)x + b`` (eigenvalues −2.5, −0.25) settle. The iteration gives the
    samples up and the ODE finishes them."""
    w = -0.75 * (jnp.ones((3, 3)) - jnp.eye(3))
    b = jnp.array([3.0, -3.0, 1.5])
    net = hj.HAM(layers={"x": hj.Layer(3, Identity(), bias=True)},
                 synapses={"lat": hj.synapses.Lateral(3, key=jax.random.PRNGKey(0))},
                 edges={"lat": ("x",)})
    net = eqx.tree_at(lambda n: (n.synapses["lat"].weight, n.layers["x"].bias), net, (w, b))
    x = {"x": jnp.zeros((2, 3)).at[1].set(0.1)}
    expected = np.linalg.solve(np.eye(3) - np.asarray(w), np.asarray(b))
    sol = hj.relax(net, x, solver=hj.solvers.FixedPoint(), stop=hj.SteadyState(atol=1e-5))
    assert bool(jnp.all(sol.converged))
    np.testing.assert_allclose(sol.state["x"], np.broadcast_to(expected, (2, 3)), atol=1e-4)
    # the ODE's evaluations (7 a Tsit5 step with its test) are counted beyond the iterations
    assert bool(jnp.all(sol.evaluations > 20))
    # Anderson extrapolates a linear map to its fixed point without the ODE
    an = hj.relax(net, x, solver=hj.solvers.Anderson(), stop=hj.SteadyState(atol=1e-5))
    assert bool(jnp.all(an.converged)) and bool(jnp.all(an.evaluations < 10))


def test_every_keyword_takes_effect_or_is_refused(net, x0):
    ode_only = dict(dt0=0.2, save=hj.SaveAt(energy=True),
                    progress=True, stepsize_controller=diffrax.ConstantStepSize())
    anderson = hj.solvers.Anderson()
    for k, v in ode_only.items():
        with pytest.raises(ValueError, match=f"{k} applies to the ODE path .* not to Anderson"):
            hj.relax(net, x0, clamp="image", solver=anderson, **{k: v})
    with pytest.raises(ValueError, match="use stop=SteadyState"):
        hj.relax(net, x0, clamp="image", solver=hj.solvers.FixedPoint(), stop=hj.FixedSteps(3))
    with pytest.raises(ValueError, match="t1"):
        hj.relax(net, x0, clamp="image", solver=anderson, stop=hj.SteadyState(t1=5.0))
    with pytest.raises(ValueError, match="differentiates an ODE solve, not a steady-state"):
        hj.relax(net, x0, clamp="image", solver=anderson,
                 adjoint=diffrax.RecursiveCheckpointAdjoint())
    with pytest.raises(ValueError, match="give the tolerance once"):
        hj.relax(net, x0, clamp="image", solver=hj.solvers.Anderson(atol=1e-3))
    with pytest.raises(ValueError, match="freeze works with"):
        hj.relax(net, x0, clamp="image", solver=optx.Newton(rtol=1e-6, atol=1e-8),
                 freeze={"hidden": True})
    with pytest.raises(ValueError, match="max_steps"):
        hj.relax(net, x0, clamp="image", max_steps=0)
    # names are for the command line; the strategy object says what to keep
    with pytest.raises(ValueError, match=r"save='energy' is a name: pass hamjax.SaveAt\(energy"):
        hj.relax(net, x0, clamp="image", save="energy")
    with pytest.raises(ValueError, match="saves nothing"):
        hj.SaveAt(ts=jnp.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="needs a finite end time"):
        hj.relax(net, x0, clamp="image", save=hj.SaveAt(energy=True, ts=jnp.linspace(0, 1, 3)))
    with pytest.raises(ValueError, match="raise_nonfinite must be"):
        hj.relax(net, x0, clamp="image", raise_nonfinite="flag")
    # a strategy object takes its own settings
    damped = hj.relax(net, x0, clamp="image", stop=hj.SteadyState(atol=1e-6),
                      solver=hj.solvers.Anderson(history=1, mixing=0.5))
    plain = hj.relax(net, x0, clamp="image", stop=hj.SteadyState(atol=1e-6),
                     solver=hj.solvers.FixedPoint())
    assert bool(jnp.all(damped.converged)) and not np.array_equal(damped.steps, plain.steps)


@pytest.mark.slow
def test_a_set_aside_sample_saves_no_trajectory(net, x0):
    """A sample set aside (NaN start) is relaxed invisibly from zeros; its saved trajectory and
    energies are NaN (its clamped layer keeps the given values), never a finite path that
    would pass a Lyapunov check. The other samples' saves are those of a run without it."""
    bad = {**x0, "hidden": x0["hidden"].at[1, 0].set(jnp.nan)}
    kw = dict(clamp="image", stop=hj.SteadyState(atol=1e-5, t1=4.0),
              save=hj.SaveAt(trajectory=True, energy=True, ts=jnp.linspace(0.0, 4.0, 5)))
    sol = hj.relax(net, bad, **kw)
    ref = hj.relax(net, x0, **kw)
    assert bool(jnp.all(jnp.isnan(sol.trajectory["hidden"][:, 1])))
    assert bool(jnp.all(jnp.isnan(sol.energies[:, 1])))
    np.testing.assert_array_equal(sol.trajectory["image"][:, 1],
                                  jnp.broadcast_to(bad["image"][1], (5, N_IN)))
    ok = np.array([0, 2, 3])
    np.testing.assert_allclose(sol.energies[:, ok], ref.energies[:, ok], rtol=1e-5, atol=1e-6)


def test_a_repeated_clamp_name_counts_once(net, x0, steady):
    # as many names as the net has layers, but one layer: not "every layer is clamped"
    sol = hj.relax(net, x0, clamp=("image",) * 3, stop=hj.SteadyState(atol=1e-6))
    np.testing.assert_allclose(sol.state["label"], steady.state["label"], atol=1e-6)


@pytest.mark.slow
def test_fixed_point_samples_do_not_depend_on_their_batch_mates():
    """FixedPoint() holds each sample at the first iterate within its own tolerance, and
    its adjoint iterates each sample to its own tolerance: a sample relaxed beside a stiff
    one (here samples with large inputs saturate their tanh units and settle in 4 iterations,
    the last, in the linear regime, takes 11) ends where it ends alone, and so does its
    implicit gradient."""
    net = chain(jax.random.PRNGKey(7), hidden=Tanh(1.0), scale=0.9)
    x = net.init_state(batch=(4,))
    x["image"] = jax.random.uniform(jax.random.PRNGKey(8), (4, N_IN)).at[:3].multiply(40.0)
    kw = dict(clamp="image", solver=hj.solvers.FixedPoint(), stop=hj.SteadyState(atol=1e-6))

    def loss(net, x):
        sol = hj.relax(net, x, **kw)
        return jnp.sum(sol.state["label"][:, 0]), sol

    (_, both), g_both = eqx.filter_value_and_grad(loss, has_aux=True)(net, x)
    assert bool(jnp.all(both.converged))
    g_sum, steps = None, []
    for i in range(4):
        one = {k: v[i:i + 1] for k, v in x.items()}
        (_, alone), g = eqx.filter_value_and_grad(loss, has_aux=True)(net, one)
        steps.append(int(alone.steps[0]))
        for name in ("hidden", "label"):
            np.testing.assert_allclose(both.state[name][i], alone.state[name][0], rtol=1e-6,
                                       atol=1e-7)
        g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
    # to the adjoint's own tolerance (rtol 1e-4): float32 rounding of a batched matmul can move
    # a sample's stop by one iteration
    for a, b in zip(jax.tree.leaves(g_both), jax.tree.leaves(g_sum), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # each sample took its own iterations, as many as alone (float32 rounding of a batched
    # matmul can move a stop by one), and the faster ones, held once they had converged, ended
    # where they end alone
    assert np.max(np.abs(np.asarray(both.steps) - steps)) <= 1 and min(steps) < max(steps) - 3


_PER_SAMPLE = r"""
import json, sys
import diffrax, jax, jax.numpy as jnp, optimistix as optx
import hamjax as hj
sys.path.insert(0, sys.argv[1])
from test_relax import N_HID, N_IN, chain

CASES = {
    "ode tsit5": dict(solver=diffrax.Tsit5()),
    "ode euler": dict(solver=diffrax.Euler(), dt0=0.2),
    "ode tsit5 fixed time": dict(solver=diffrax.Tsit5(), stop=hj.FixedTime(3.0)),
    "ode tsit5 frozen": dict(solver=diffrax.Tsit5(), freeze={"hidden": jnp.arange(N_HID) < 2}),
    "anderson": dict(solver=hj.solvers.Anderson()),
    "fixed_point": dict(solver=hj.solvers.FixedPoint()),
    "root": dict(solver=optx.Newton(rtol=1e-6, atol=1e-10)),
    "minimise": dict(solver=optx.BFGS(rtol=1e-7, atol=1e-8), stop=hj.SteadyState(atol=1e-6)),
}
def f64(t):
    return jax.tree.map(lambda v: v.astype(jnp.float64)
                        if jnp.issubdtype(v.dtype, jnp.floating) else v, t)
net = f64(chain(jax.random.PRNGKey(3)))
x = f64(net.init_state(batch=2, key=jax.random.PRNGKey(4), scale=0.1))
x["image"] = jax.random.uniform(jax.random.PRNGKey(5), (2, N_IN), jnp.float64).at[1].multiply(40.0)
out = {}
for name, kw in CASES.items():
    kw.setdefault("stop", hj.SteadyState(atol=1e-8))
    both = hj.relax(net, x, clamp="image", **kw)
    rec = dict(shape=list(both.steps.shape) + list(both.result._value.shape),
               converged=both.converged.tolist(), steps=both.steps.tolist(), alone=[])
    for i in (0, 1):
        alone = hj.relax(net, {n: v[i:i + 1] for n, v in x.items()}, clamp="image", **kw)
        diff = max(float(jnp.max(jnp.abs(both.state[n][i] - alone.state[n][0]))) for n in x)
        rec["alone"].append(dict(diff=diff, steps=int(alone.steps[0]),
                                 converged=bool(alone.converged[0])))
    out[name] = rec
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_a_sample_relaxes_alone_as_it_does_beside_a_stiff_one():
    """Per-sample semantics: each sample keeps its own step sizes, stopping test and
    iteration count, so a sample relaxed alone ends where it ends in a batch beside a sample
    with 40 times its input, which takes a different number of steps, for every method, to
    float64 rounding (a batched matmul may round differently from a single one). Before, a
    shared step size or stop moved it by 1e-8 to 1e-4. Run in a fresh interpreter with float64
    on: float64 switched on for a while inside this suite's process has made a later float64
    test crash XLA's compiler."""
    env = dict(os.environ, JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", _PER_SAMPLE, str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line.removeprefix("RESULT "))
    for name, r in res.items():
        assert r["shape"] == [2, 2], name  # steps and outcome per sample
        steady = name != "ode tsit5 fixed time"
        assert all(r["converged"]) or not steady, (name, r)
        # BFGS stops on a gradient of 1e-10, where rounding can move its last steps
        atol = 1e-8 if name == "minimise" else 1e-11
        for i, a in enumerate(r["alone"]):
            assert a["converged"] == r["converged"][i], (name, i)
            assert a["diff"] <= atol, (name, i, a["diff"])
            if name != "minimise":
                assert a["steps"] == r["steps"][i], (name, i, a, r["steps"])
        if name.startswith("ode") and steady:
            # the pair's stops differ: run together, one would step on past its own
            assert r["steps"][0] != r["steps"][1], name
