"""The steady-state paths of :func:`hamjax.relax`: go straight to ``x_A = c_A + I_A`` with an
optimistix solver, chosen by its type: a fixed-point solver (hamjax's per-sample
:class:`~hamjax.solvers.FixedPoint` and :class:`~hamjax.solvers.Anderson`, or optimistix's
own), a root finder on the vector field (``optx.Newton``, ...), or a minimiser of the energy
(``optx.BFGS``, ...). Samples hamjax's iterations give up are finished by the ODE."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from ._convergence import (
    SteadyState,
    _batch_ndim,
    _each_sample,
    _tolerance,
    residual_norm,
)
from ._ode import DT0, _evaluations, _solve, _steady_controller
from ._results import RESULTS, from_optimistix, results_where
from .solvers import Anderson, FixedPoint, iterate, with_batch_ndim

# the kinds of steady-state solver, by the optimistix class they derive from
_ITERATION, _FIXED_POINT, _ROOT, _MINIMISE = "iteration", "fixed_point", "root", "minimise"


def _kind(solver) -> str | None:
    """The steady-state path of an optimistix solver, None for anything else: hamjax's
    per-sample iterations, another fixed-point solver, a root finder, a minimiser."""
    if isinstance(solver, FixedPoint | Anderson):
        return _ITERATION
    if isinstance(solver, optx.AbstractFixedPointSolver):
        return _FIXED_POINT
    if isinstance(solver, optx.AbstractRootFinder):
        return _ROOT
    if isinstance(solver, optx.AbstractMinimiser):
        return _MINIMISE
    return None


class _Steady(eqx.Module):
    """How a steady-state path runs: the optimistix ``solver`` (of path ``kind``), the ``stop``
    judging convergence (and, for hamjax's iterations, stopping them), the iteration budget and
    the batch axes of the state it is given."""

    kind: str = eqx.field(static=True)
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder | optx.AbstractMinimiser
    stop: SteadyState
    max_steps: int = eqx.field(static=True)
    batch_ndim: int = eqx.field(static=True)


def _fixed_point_map(y, args):
    """``x ← c + I``, frozen neurons at their initial values: ``x + F(x)`` for the ``F`` of
    :func:`~hamjax._implicit._steady_force`, computed as the update itself (no ``x − x``
    round trip, which costs a hand-written loop's pass over the state)."""
    dyn, x_init = args
    f = dyn.fixed_point_map(y)
    return {n: jnp.where(dyn.frozen[n], x_init[n], v) if n in dyn.frozen else v
            for n, v in f.items()}


def _steady_forward(dyn, x_free, plan: _Steady):
    """``(x*, extras for Relaxation)``: the steady state by ``plan`` (never differentiated here:
    :func:`hamjax.relax` differentiates at the steady state)."""
    if plan.kind == _ITERATION:
        stop = plan.stop
        solver = with_batch_ndim(eqx.tree_at(lambda s: (s.atol, s.rtol), plan.solver,
                                             (stop.atol, stop.rtol),
                                             is_leaf=lambda v: v is None), plan.batch_ndim)
        x, stats = iterate(solver, _fixed_point_map, x_free, (dyn, x_free),
                           max_steps=plan.max_steps)
        n0 = dyn.free[0]
        shape = x_free[n0].shape[:_batch_ndim(dyn, x_free)]
        # the residual each sample's iteration measured where it left it (no evaluation more)
        x, ode_evals, ode_ok, res = _finish_by_ode(dyn, x, x_free, stop, plan.max_steps,
                                                   stats["residual"].reshape(shape))
        # each sample's own iterations (the loop runs as long as the slowest sample)
        n = stats["steps"].reshape(shape) + ode_evals
        # per sample: out of iterations where neither the iteration nor the ODE finished it
        done = stats["done"].reshape(shape)
        result = results_where(done & ode_ok, RESULTS.successful, RESULTS.max_steps_reached)
        return x, dict(steps=n, num_steps=n, evaluations=n, t_final=jnp.asarray(jnp.nan),
                       result=result, residual=res)
    # optimistix's own solvers, run by relax one sample at a time, stop by their own rules
    adjoint = optx.RecursiveCheckpointAdjoint()
    if plan.kind == _FIXED_POINT:
        sol = optx.fixed_point(_fixed_point_map, plan.solver, x_free, args=(dyn, x_free),
                               max_steps=plan.max_steps, throw=False, adjoint=adjoint)
        x = sol.value
    elif plan.kind == _ROOT:
        sol = optx.root_find(lambda y, d: d(y), plan.solver, x_free, args=dyn,
                             max_steps=plan.max_steps, throw=False, adjoint=adjoint)
        x = sol.value
    else:
        sol = _minimise_energy(dyn, x_free, plan.solver, plan.max_steps, adjoint=adjoint)
        # one fixed-point step x ← c(g(x)) + I: the minimiser may sit anywhere on a dead-neuron
        # flat set; the step lands on the steady state with the same activations (Prop. 4)
        x = dyn.fixed_point_map(sol.value)
    steps = sol.stats["num_steps"]
    return x, dict(steps=steps, num_steps=steps, evaluations=jnp.asarray(-1),
                   t_final=jnp.asarray(jnp.nan), result=from_optimistix(sol.result))


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


def _finish_by_ode(dyn, x, x_init, stop: SteadyState, max_steps: int, residual):
    """``(x, evaluations, ok, residual)``: samples an iteration left above tolerance (its
    per-sample ``residual`` at ``x``, NaN where non-finite), but finite, relaxed
    on by the dynamics (Tsit5, adaptive, to the same ``stop``) from where the iteration left
    them; ``ok`` is False when that solve ran out of steps. The synchronous update can cycle
    between the linear pieces of a ReLU network where the ODE settles. Each sample is
    solved on its own (its step size, its stop); the samples already converged are held
    where the iteration left them (their vector field is zero, so their solve stops at once)
    rather than moved by a step. Runs only when some sample needs it; ``residual`` is then
    measured anew at the end."""
    fine = (residual <= _tolerance(dyn, x, stop)) | ~jnp.isfinite(residual)

    def ode(x):
        nb = _batch_ndim(dyn, x)
        held = dyn._with_frozen({n: jnp.broadcast_to(
            fine.reshape(fine.shape + (1,) * (v.ndim - nb)), v.shape) for n, v in x.items()})
        solver = diffrax.Tsit5()

        def one(d, xi):
            # each sample with its own step size and stop
            sol = _solve(d, xi, solver, _steady_controller(stop, 0), stop,
                         diffrax.RecursiveCheckpointAdjoint(), DT0, max_steps,
                         diffrax.SaveAt(t1=True), False)
            return (jax.tree.map(lambda v: v[-1], sol.ys), sol.stats["num_steps"],
                    sol.result != diffrax.RESULTS.max_steps_reached)

        final, steps, ok = _each_sample(one, held, x, nb)
        evals = _evaluations(solver, steps, steady_test=True)
        return final, jnp.asarray(evals, jnp.int32), ok, residual_norm(dyn, final)

    def keep(x):
        return x, jnp.zeros(fine.shape, jnp.int32), jnp.ones(fine.shape, bool), residual

    return jax.lax.cond(jnp.all(fine), keep, ode, x)
