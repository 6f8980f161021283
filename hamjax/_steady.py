"""The steady-state methods of :func:`hamjax.relax`: go straight to ``x_A = c_A + I_A`` by a
fixed-point iteration (plain or Anderson-accelerated), Newton's method, or minimising the energy;
samples an iteration gives up are finished by the ODE."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from ._convergence import (
    SteadyState,
    _batch_ndim,
    _each_sample,
    _finite,
    _results_where,
    _within,
)
from ._implicit import Frozen, _steady_force
from ._ode import _evaluations, _solve, _steady_controller
from .solvers import Anderson, FixedPoint, with_batch_ndim


def _method(method) -> tuple[str, Any]:
    """``(kind, steady-state solver or None)``."""
    if isinstance(method, Anderson):
        return "anderson", method
    if isinstance(method, FixedPoint):
        return "fixed_point", method
    if method == "ode":
        return "ode", None
    if method == "anderson":
        return "anderson", Anderson()
    if method == "fixed_point":
        return "fixed_point", FixedPoint()
    if method in ("root", "minimise", "minimize"):
        return ("minimise" if method == "minimize" else method), None
    raise ValueError(f"unknown method {method!r}; use 'ode', 'anderson', 'fixed_point', 'root', "
                     "'minimise' or hamjax.solvers.Anderson(...)")

def _fixed_point_map(y, args):
    """``x ← c + I`` (frozen neurons: their initial values), written ``x + F(x)`` so that the
    frozen rows of :func:`~hamjax._implicit._steady_force` apply."""
    dyn, x_init = args
    f = _steady_force(dyn, y, x_init)
    return {n: y[n] + f[n] for n in y}


def _steady_forward(dyn, x_free, cfg):
    kind, solver, stop, max_steps, nb = cfg
    if kind in ("anderson", "fixed_point"):
        if solver.atol is not None or solver.rtol is not None:
            raise ValueError("give the tolerance once, in stop=SteadyState(atol=..., rtol=...),"
                             f" not in the {type(solver).__name__} solver")
        solver = with_batch_ndim(eqx.tree_at(lambda s: (s.atol, s.rtol), solver,
                                             (stop.atol, stop.rtol),
                                             is_leaf=lambda v: v is None), nb)
        # never differentiated here: relax differentiates at the steady state (_at_steady_state)
        sol = optx.fixed_point(_fixed_point_map, solver, x_free, args=(dyn, x_free),
                               max_steps=max_steps, throw=False)
        x, ode_evals, ode_ok = _finish_by_ode(dyn, sol.value, x_free, stop, max_steps)
        # each sample's own iterations (the loop runs as long as the slowest sample)
        n = sol.stats["steps"].reshape(ode_evals.shape) + ode_evals
        # per sample: out of iterations where neither the iteration nor the ODE finished it
        done = sol.stats["done"].reshape(ode_ok.shape)
        result = _results_where(done & ode_ok, diffrax.RESULTS.successful,
                                diffrax.RESULTS.max_steps_reached)
        return x, dict(steps=n, num_steps=n, evaluations=n, t_final=jnp.asarray(jnp.nan),
                       result=result)
    if kind == "root":
        sol = optx.root_find(lambda y, d: d(y), optx.Newton(rtol=1e-6, atol=stop.atol * 1e-2),
                             x_free, args=dyn, max_steps=max_steps, throw=False,
                             adjoint=optx.RecursiveCheckpointAdjoint())
        x = sol.value
    else:
        sol = _minimise_energy(dyn, x_free, optx.BFGS(rtol=1e-7, atol=stop.atol * 1e-2),
                              max_steps, adjoint=optx.RecursiveCheckpointAdjoint())
        # one fixed-point step x ← c(g(x)) + I: the minimiser may sit anywhere on a dead-neuron
        # flat set; the step lands on the steady state with the same activations (Prop. 4)
        x = dyn.fixed_point_map(sol.value)
    steps = sol.stats["num_steps"]
    return x, dict(steps=steps, num_steps=steps, evaluations=jnp.asarray(-1),
                   t_final=jnp.asarray(jnp.nan), result=_optx_result(sol))


def _minimise_energy(dyn, x_free, solver: optx.AbstractMinimiser, max_steps: int,
                    adjoint=None):
    """``argmin E`` over the free states (summed over samples, which do not interact) from
    ``x_free``: the optimistix solution. Dead coordinates have zero gradient and stay where
    ``x_free`` put them."""
    net = dyn.net

    def total_energy(y, d):
        return jnp.sum(net.energy(d.full_state(y)))

    return optx.minimise(total_energy, solver, x_free, args=dyn, max_steps=max_steps,
                         throw=False, adjoint=optx.ImplicitAdjoint() if adjoint is None
                         else adjoint)


def _finish_by_ode(dyn, x, x_init, stop: SteadyState, max_steps: int):
    """``(x, evaluations, ok)``: samples an iteration left above tolerance (but finite) relaxed
    on by the dynamics (Tsit5, adaptive, to the same ``stop``) from where the iteration left
    them; ``ok`` is False when that solve ran out of steps. The synchronous update can cycle
    between the linear pieces of a ReLU network where the ODE settles. Each sample is
    solved on its own (its step size, its stop); the samples already converged are held
    where the iteration left them (their vector field is zero, so their solve stops at once)
    rather than moved by a step. Runs only when some sample needs it."""
    force = _steady_force(dyn, x, x_init)
    fine = _within(dyn, force, x, stop) | ~_finite(dyn.net, force)

    def ode(x):
        inner, masks = (dyn.dyn, dyn.masks) if isinstance(dyn, Frozen) else (dyn, {})
        nb = _batch_ndim(dyn, x)
        hold = {n: masks.get(n, False) | fine.reshape(fine.shape + (1,) * (v.ndim - nb))
                for n, v in x.items()}
        held = Frozen(inner, {n: jnp.broadcast_to(m, x[n].shape) for n, m in hold.items()})
        solver = diffrax.Tsit5()

        def one(d, xi):
            # each sample with its own step size and stop
            sol = _solve(d, xi, solver, _steady_controller(stop, 0), stop,
                         diffrax.RecursiveCheckpointAdjoint(), 0.1, max_steps,
                         diffrax.SaveAt(t1=True), False)
            return (jax.tree.map(lambda v: v[-1], sol.ys), sol.stats["num_steps"],
                    sol.result != diffrax.RESULTS.max_steps_reached)

        final, steps, ok = _each_sample(one, held, x, nb)
        evals = _evaluations(solver, steps, steady_test=True)
        return final, jnp.asarray(evals, jnp.int32), ok

    def keep(x):
        return x, jnp.zeros(fine.shape, jnp.int32), jnp.ones(fine.shape, bool)

    return jax.lax.cond(jnp.all(fine), keep, ode, x)


def _optx_result(sol) -> diffrax.RESULTS:
    return diffrax.RESULTS.where(
        sol.result == optx.RESULTS.successful,
        diffrax.RESULTS.successful,
        diffrax.RESULTS.max_steps_reached,
    )
