"""The ODE path of :func:`hamjax.relax`: integrate ``τ_A ẋ_A = c_A + I_A − x_A`` with diffrax
(any solver, stopping rule, saved trajectory or energies), or step it a fixed number of times by a
scan for backpropagation through time."""

from __future__ import annotations

import math
from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._convergence import (
    PerSampleRMS,
    SteadyState,
    _batch_ndim,
    _finite,
)
from ._ham import ClampedDynamics
from ._implicit import ImplicitSteadyState, _at_steady_state
from ._results import RESULTS, from_diffrax

# the (initial) step size of every relaxation that does not name one: relax's ODE path and the
# gradient estimators' default relaxations (0.25 of the time constant: stable for Euler, and an
# adaptive solver's controller shrinks it where it must)
DT0 = 0.25

_EVALS_PER_STEP = {
    diffrax.Euler: 1,
    diffrax.Heun: 2,
    diffrax.Midpoint: 2,
    diffrax.Ralston: 2,
    diffrax.Bosh3: 3,
    diffrax.Tsit5: 6,
    diffrax.Dopri5: 6,
    diffrax.Dopri8: 12,
}

_FSAL = (diffrax.Bosh3, diffrax.Tsit5, diffrax.Dopri5, diffrax.Dopri8)


def _adaptive(solver, stop, controller) -> bool:
    """Whether the ODE path with these settings (``solver`` None: Tsit5) controls its step
    size."""
    return ((solver is None or isinstance(solver, diffrax.AbstractAdaptiveSolver))
            and not stop.constant_steps
            and not isinstance(controller, diffrax.ConstantStepSize))


def _controller(controller, solver, stop, batch_ndim: int):
    """The step-size controller: the given one, or constant steps for a non-adaptive solve,
    :func:`_steady_controller` towards a steady state, a per-sample PID controller otherwise."""
    if controller is not None:
        return controller
    if not _adaptive(solver, stop, None):
        return diffrax.ConstantStepSize()
    if stop.at_steady_state:
        return _steady_controller(stop, batch_ndim)
    return diffrax.PIDController(rtol=1e-3, atol=1e-6, norm=PerSampleRMS(batch_ndim))


class SaveAt(eqx.Module):
    """What :func:`hamjax.relax` keeps of the way to the end state, beside the end state itself
    (the ODE path only: the steady-state solvers have no trajectory): ``relax(...,
    save=SaveAt(...))``, as ``diffrax.SaveAt`` is ``diffeqsolve``'s.

    * ``trajectory``: the states (every layer, the clamped ones included) at every step, or at
      ``ts`` (:attr:`Relaxation.trajectory`, a leading save axis);
    * ``energy``: the energy per sample at the same times (:attr:`Relaxation.energies`, shape
      ``(saves, *batch)``): cheap, for Lyapunov checks and plots;
    * ``ts``: the times to save at (1-D, increasing; the stop needs a finite end time), or
      ``None``: the start and every step.

    ``SaveAt()`` (the default) keeps the end state only. Unused save slots hold ``inf`` (see
    :meth:`Relaxation.energy_trace`). ``ValueError`` for ``ts`` with nothing to save at them or
    a ``ts`` that is not 1-D."""

    trajectory: bool = eqx.field(static=True, default=False)
    energy: bool = eqx.field(static=True, default=False)
    ts: Array | None = None

    def __check_init__(self):
        if self.ts is not None:
            if not self.saves_steps:
                raise ValueError("SaveAt(ts=...) saves nothing at those times: ask for "
                                 "trajectory=True and/or energy=True")
            if jnp.ndim(self.ts) != 1:
                raise ValueError(f"SaveAt(ts=...) takes a 1-D array of times, got shape "
                                 f"{jnp.shape(self.ts)}")

    @property
    def saves_steps(self) -> bool:
        """Whether anything beyond the end state is kept."""
        return self.trajectory or self.energy


_SAVE_NAMES = {"final": "SaveAt()", "trajectory": "SaveAt(trajectory=True)",
               "energy": "SaveAt(energy=True)", "both": "SaveAt(trajectory=True, energy=True)"}


def _saveat(save) -> SaveAt:
    """The :class:`SaveAt` of relax's ``save`` (``None``: the end state only)."""
    if save is None:
        return SaveAt()
    if isinstance(save, SaveAt):
        return save
    if isinstance(save, str) and save in _SAVE_NAMES:
        raise ValueError(f"save={save!r} is a name: pass hamjax.{_SAVE_NAMES[save]} (names are "
                         "for the command line)")
    raise ValueError(f"save must be a hamjax.SaveAt, got {save!r}")


def _check_ode(stop, adjoint, controller, save: SaveAt, dt0):
    """Reject combinations of stopping rule, adjoint and saving that cannot work, and return
    the adjoint to use (the recursive adjoint keeps every step of a ``FixedSteps`` solve)."""
    if stop.constant_steps:
        if not isinstance(controller, diffrax.ConstantStepSize):
            raise ValueError(f"{type(stop).__name__} takes a constant step size; drop "
                             "stepsize_controller")
        if isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint) and adjoint.checkpoints is None:
            # The step count is known: keep every step for the backward pass, as a hand-written
            # scan does, instead of diffrax's O(√n) checkpoints that recompute the forward pass
            # (n states is what any BPTT through n steps stores anyway).
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=stop.n)
    if isinstance(adjoint, diffrax.ImplicitAdjoint | ImplicitSteadyState):
        if not stop.at_steady_state:
            raise ValueError(
                "the implicit adjoint differentiates at a steady state: use SteadyState"
            )
        if save.saves_steps:
            raise ValueError("the implicit adjoint saves the end state only: drop save=SaveAt(...)")
    if save.ts is not None and not math.isfinite(stop.end_time(dt0)):
        raise ValueError(f"SaveAt(ts=...) needs a finite end time: give {type(stop).__name__} "
                         "one (SteadyState(t1=...))")
    return adjoint


def _relax_ode(dyn, x_free, stop, adjoint, max_steps, *, solver, dt0, stepsize_controller,
               save: SaveAt, progress):
    """``(final free state, extras for Relaxation)`` of the ODE path (a diffrax ``solver``)."""
    dt0 = DT0 if dt0 is None else dt0
    progress = bool(progress)
    nb = _batch_ndim(dyn, x_free)
    controller = _controller(stepsize_controller, solver, stop, nb)
    adjoint = _check_ode(stop, adjoint, controller, save, dt0)
    if stop.constant_steps:
        max_steps = stop.n
        if (type(adjoint) is diffrax.RecursiveCheckpointAdjoint
                and adjoint.checkpoints == stop.n and save.ts is None and not progress):
            return _fixed_steps(dyn, x_free, solver, stop.n, dt0, save)
    saveat = _save_spec(save)
    if isinstance(adjoint, ImplicitSteadyState):
        cfg = (solver, controller, stop, dt0, max_steps, saveat, progress)
        final, sol = _at_steady_state(_ode_forward, dyn, x_free, cfg, adjoint, nb)
        sol = eqx.tree_at(
            lambda s: s.ys, sol, jax.tree.map(lambda v: v[None], final), is_leaf=lambda v: v is None
        )
    else:
        sol = _solve(dyn, x_free, solver, controller, stop, adjoint, dt0, max_steps, saveat,
                     progress)
    if not save.saves_steps:
        final = jax.tree.map(lambda v: v[-1], sol.ys)
        ts = traj = energies = None
    else:
        final = jax.tree.map(lambda v: v[-1], sol.ys[0])
        ts = sol.ts[1]
        traj = _full_trajectory(dyn, sol.ys[1]["x"]) if save.trajectory else None
        energies = sol.ys[1]["energy"] if save.energy else None
    num_steps = sol.stats["num_steps"]
    return final, dict(
        steps=sol.stats["num_accepted_steps"],
        num_steps=num_steps,
        evaluations=_evaluations(solver, num_steps, steady_test=stop.at_steady_state),
        t_final=sol.ts[0][-1] if save.saves_steps else sol.ts[-1],
        result=from_diffrax(sol.result),
        ts=ts,
        trajectory=traj,
        energies=energies,
    )


def _steady_controller(stop: SteadyState, batch_ndim: int) -> diffrax.PIDController:
    """The step-size control of an adaptive solve to a steady state.

    The residual an adaptive solver can reach is ~ its error tolerance: a looser controller
    (rtol 1e-3, say) stalls at |dx/dt| ~ 1e-3·|x| and never stops. Tie the two, as diffrax's
    steady_state_event does the other way round. The error norm is the worst sample's RMS, not
    the RMS over the whole batch: with the latter one sample's local error may be √batch times
    the tolerance, and a batch of 128 stalls at residuals ~3e-3 while the stopping test asks
    1e-4 of each. The local-error tolerance is a tenth of the residual asked for: at the same
    size the solver can sit at its stability limit with residuals hovering around atol,
    rejecting steps."""
    return diffrax.PIDController(rtol=0.1 * stop.rtol, atol=0.1 * stop.atol,
                                 norm=PerSampleRMS(batch_ndim))


def _recorder(save: SaveAt):
    """``record(y, dyn) -> dict``: what a saved step keeps."""

    def record(y, dyn):
        out = {}
        if save.trajectory:
            out["x"] = y
        if save.energy:
            out["energy"] = dyn.net.energy(dyn.full_state(y))
        return out

    return record


def _save_spec(save: SaveAt) -> diffrax.SaveAt:
    """diffrax's ``SaveAt`` for ours: the end state, and what is asked for at ``ts`` or every
    step."""
    if not save.saves_steps:
        return diffrax.SaveAt(t1=True)
    record = _recorder(save)

    def fn(t, y, dyn):
        return record(y, dyn)

    sub = (
        diffrax.SubSaveAt(ts=save.ts, fn=fn)
        if save.ts is not None
        else diffrax.SubSaveAt(t0=True, steps=True, fn=fn)
    )
    return diffrax.SaveAt(subs=[diffrax.SubSaveAt(t1=True), sub])


@eqx.filter_jit
def _solve(dyn, x_free, solver, controller, stop, adjoint, dt0, max_steps, saveat, progress):
    term = diffrax.ODETerm(lambda t, y, d: d(y))

    # Samples are independent: the solve stops when every sample is finished (converged, for
    # a stop at the steady state, or gone non-finite: one NaN sample neither stops the batch
    # nor counts as converged).
    t1 = stop.end_time(dt0)

    def cond_fn(t, y, d, **kwargs):
        return jnp.all(stop.finished(d, y))

    # diffrax's ImplicitAdjoint needs a steady-state event; other stops only the NaN guard
    event = (None if isinstance(adjoint, diffrax.ImplicitAdjoint) and not stop.at_steady_state
             else diffrax.Event(cond_fn))

    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=x_free,
        args=dyn,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        event=event,
        max_steps=max_steps,
        throw=False,
        progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
    )
    return sol


def _ode_forward(dyn, x_free, cfg):
    """The ODE solve as the (undifferentiated) forward of :func:`_at_steady_state`."""
    solver, controller, stop, dt0, max_steps, saveat, progress = cfg
    sol = _solve(dyn, x_free, solver, controller, stop, diffrax.RecursiveCheckpointAdjoint(),
                 dt0, max_steps, saveat, progress)
    final = jax.tree.map(lambda v: v[-1], sol.ys)
    return final, eqx.tree_at(lambda s: s.ys, sol, None)


@eqx.filter_jit
def _fixed_steps(dyn, x_free, solver, n, dt0, save):
    """``n`` constant steps of a diffrax solver, driven by ``jax.lax.scan`` (diffrax's manual
    stepping: ``solver.init`` / ``solver.step``), for ``FixedSteps`` with the recursive adjoint.

    Why not ``diffeqsolve``: its loop is a while loop with a data-dependent stop, which reverse
    mode can only differentiate by storing each step's input and recomputing the step in the
    backward pass (``checkpointed_while_loop``), and every step also pays for the step-size and
    event machinery. With the step count known, a scan lets JAX keep each step's residuals as a
    hand-written BPTT loop does (``python -m benchmarks --only training`` compares the two). The
    numbers are the same steps of the same solver. A non-finite state is not stopped at (a scan
    cannot stop), it stays non-finite and is flagged; ``num_steps`` counts the steps up to the
    first non-finite state."""
    term = diffrax.ODETerm(lambda t, y, d: d(y))
    dt = jnp.asarray(dt0, jnp.result_type(float))
    record = _recorder(save)

    def body(carry, i):
        y, state, ok_steps = carry
        t0 = i * dt
        y1, _, _, state, _ = solver.step(term, t0, t0 + dt, y, dyn, state, made_jump=False)
        # steps taken while the state was finite, the one that broke it included
        ok_steps = ok_steps + jnp.all(_finite(dyn.net, y)).astype(ok_steps.dtype)
        return (y1, state, ok_steps), record(y1, dyn)

    state0 = solver.init(term, dt * 0, dt, x_free, dyn)
    carry = (x_free, state0, jnp.asarray(0, jnp.int32))
    (final, _, ok_steps), ys = jax.lax.scan(body, carry, jnp.arange(n))
    finite = jnp.all(_finite(dyn.net, final))
    num_steps = jnp.where(finite, n, ok_steps)
    evals = _evaluations(solver, num_steps, steady_test=False)
    ts = traj = energies = None
    if save.saves_steps:
        ts = jnp.arange(n + 1) * dt
        first = record(x_free, dyn)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, ys)
        traj = _full_trajectory(dyn, ys["x"]) if save.trajectory else None
        energies = ys["energy"] if save.energy else None
    # a non-finite sample is flagged per sample by relax (_result)
    result = RESULTS.successful
    extras = dict(steps=num_steps, num_steps=num_steps, evaluations=evals,
                  t_final=num_steps * dt, result=result, ts=ts, trajectory=traj,
                  energies=energies)
    return final, extras


def _evaluations(solver, num_steps, steady_test: bool):
    """Vector-field evaluations of ``num_steps`` attempted steps (−1 for an unknown solver); FSAL
    solvers evaluate once more at the start, and a steady-state test once a step and at t0."""
    per = _EVALS_PER_STEP.get(type(solver))
    if per is None:
        return jnp.asarray(-1)
    evals = per * num_steps + (1 if isinstance(solver, _FSAL) else 0)
    if steady_test:
        evals = evals + num_steps + 1
    return evals


def _full_trajectory(dyn: ClampedDynamics, traj: Mapping[str, Array]) -> dict[str, Array]:
    """Add the (constant) clamped layers to a saved trajectory of free states."""
    n_saved = next(iter(traj.values())).shape[0]
    out = {}
    for n in dyn.net.layers:
        if n in traj:
            out[n] = traj[n]
        else:
            v = dyn.clamped_state[n]
            out[n] = jnp.broadcast_to(v, (n_saved,) + v.shape)
    return out
