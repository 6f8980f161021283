"""Relaxation: run a HAM's dynamics until it settles.

``relax(net, x0, clamp=..., solver=..., stop=..., adjoint=...)`` is hamjax's ``diffeqsolve``: one
entry point, with strategy objects for how to get there (``solver``), when to stop (``stop``),
what to save and how to differentiate (``adjoint``). The path follows from the solver's type:

* a diffrax solver (default ``diffrax.Tsit5()``) integrates ``τ_A dx_A/dt = −∂E/∂g_A``
  (docs/maths.md eq. 5): the dynamics themselves, any stopping rule, trajectories, BPTT;
* an optimistix fixed-point solver (hamjax's :class:`~hamjax.solvers.FixedPoint` and
  :class:`~hamjax.solvers.Anderson` among them), root finder (``optx.Newton``) or minimiser
  (``optx.BFGS``, of the energy) goes straight to the steady state ``x_A = c_A + I_A``, which is
  differentiated by the implicit function theorem.

Clamped layers are not states: they travel with the currents they send through multilinear
synapses, computed once (see :class:`hamjax.ClampedDynamics`).

Convergence is judged per sample: sample ``i`` has converged when the root-mean-square over the
free neurons of ``τ_A ẋ_A = c_A + I_A − x_A`` (the residual of the steady-state equations) is at
most ``atol + rtol·rms(x_i)``, the tolerance carried in :attr:`Relaxation.tolerance`.

Samples are relaxed each on its own: an adaptive step size, a stop at the steady state, the
fixed-point iterations and Newton's and BFGS's steps are each sample's (``vmap`` over the batch,
or per-sample solvers), so a sample's result does not depend on the other samples of its batch
(to rounding). Two cases step the batch together, where that changes nothing or is asked for:
a constant step size for a fixed time or number of steps (BPTT's hot path), and a saved
trajectory or progress bar (one time grid for the batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array

from ._convergence import (
    AbstractStop,
    NonFiniteStateError,
    SteadyState,
    _batch_ndim,
    _each_sample,
    _finite,
    _rows,
    _stop,
    _tolerance,
    residual_norm,
)
from ._ham import HAM, StateError
from ._implicit import ImplicitSteadyState, _adjoint, _at_steady_state, _guard_unconverged
from ._ode import SaveAt, _adaptive, _relax_ode, _saveat
from ._results import RESULTS, broadcast_result, results_where
from ._steady import _ITERATION, _MINIMISE, _ROOT, _kind, _Steady, _steady_forward

Solver = (diffrax.AbstractSolver | optx.AbstractFixedPointSolver | optx.AbstractRootFinder
          | optx.AbstractMinimiser)

__all__ = ["RelaxOptions", "Relaxation", "relax"]


# ------------------------------------------------------------------ result
class Relaxation(eqx.Module):
    """The outcome of :func:`relax`. Per-sample fields have shape ``batch`` (the batch shape of
    ``x0``; ``()`` for one sample).

    * ``state``: the final state, every layer (clamped ones included), ``(*batch, *shape)``;
    * ``converged``: per sample, finite and ``residual ≤ tolerance`` (judged whatever the stop;
      docs/maths.md §5.1);
    * ``residual``: per-sample RMS of ``τ dx/dt`` (the fixed-point residual) at the end (NaN for
      a non-finite sample);
    * ``tolerance``: per sample, the ``atol + rtol·rms(x)`` that ``converged`` was judged by;
    * ``finite``: per sample, whether the state (and its residual) stayed finite;
    * ``steps`` (accepted), ``num_steps`` (attempted), ``evaluations`` (vector-field calls, with
      those of the stopping test; −1 for a solver whose count is unknown), ``t_final`` (NaN for
      the steady-state solvers, which have no time), per sample: each sample's own (a batch
      costs as many evaluations as its slowest sample; where the batch steps together, a fixed
      number of steps or a saved trajectory, every sample shows the batch's count);
    * ``result``: per sample, how the relaxation ended (:class:`hamjax.RESULTS`, shape
      ``batch``): ``successful``, ``max_steps_reached``, ``nonfinite`` or ``solver_failed``,
      whichever solver ran;
    * ``ts``, ``trajectory`` (dict of arrays with a leading save axis), ``energies`` (per saved
      step and sample) when asked for; unused save slots hold ``inf`` (see :meth:`energy_trace`).
    """

    state: dict[str, Array]
    converged: Array
    residual: Array
    tolerance: Array
    finite: Array
    steps: Array
    num_steps: Array
    evaluations: Array
    t_final: Array
    result: RESULTS
    ts: Array | None = None
    trajectory: dict[str, Array] | None = None
    energies: Array | None = None

    def energy_trace(self) -> np.ndarray:
        """The saved energies as a NumPy array, unused slots (after the last step) dropped:
        shape ``(saved steps, *batch)``. Raises ``ValueError`` when no energies were saved
        (``relax(..., save=SaveAt(energy=True))`` saves them)."""
        if self.energies is None:
            raise ValueError("no energies were saved: call relax(..., "
                             "save=hamjax.SaveAt(energy=True))")
        e = np.asarray(self.energies)
        keep = np.isfinite(np.asarray(self.ts))
        return e[keep]


# ------------------------------------------------------------------ the entry point
def relax(
    net: HAM,
    x0: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    solver: Solver | None = None,
    stop: AbstractStop | None = None,
    adjoint: diffrax.AbstractAdjoint | ImplicitSteadyState | None = None,
    max_steps: int = 4096,
    raise_nonfinite: bool | None = None,
    freeze: Mapping[str, Array] | None = None,
    mesh=None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    save: SaveAt | None = None,
    progress: bool | None = None,
) -> Relaxation:
    """Relax ``net`` from ``x0`` with the layers in ``clamp`` held fixed.

    Arguments (every path):
        solver: how to reach the end state; the path follows from its type.

            * a diffrax solver (default ``diffrax.Tsit5()``; ``diffrax.Euler()``,
              ``diffrax.Heun()``, ...): integrate the dynamics (the ODE path).
            * :class:`hamjax.solvers.FixedPoint`: the iteration ``x_A ← c_A + I_A`` of all layers
              at once (Euler with ``dt = τ``), per sample. It converges only to stable steady
              states (it repels the others); where it cycles or diverges (a synchronous update
              can, where the ODE settles) it gives the sample up and the ODE (Tsit5) finishes it
              from there. Its tolerance is ``stop``'s (give none to the solver).
            * :class:`hamjax.solvers.Anderson`: Anderson acceleration of the same iteration, same
              fallback and tolerance: fewer iterations, but its extrapolation can land on an
              unstable steady state (a saddle of the energy) that the dynamics would leave;
              check with :mod:`hamjax.analysis` where that matters.
            * another optimistix fixed-point solver (``optx.FixedPointIteration``, ...), root
              finder of the vector field (``optx.Newton(rtol, atol)``: a dense Jacobian, for
              small nets and cross-checks) or minimiser of the energy (``optx.BFGS(rtol,
              atol)``, followed by one fixed-point step ``x_A ← c_A + I_A`` that moves a
              minimiser lying on a dead-neuron flat set onto the dynamical steady state,
              docs/maths.md §4.6, Proposition 4; in float32 the energy resolves the steady state
              to a residual of about 1e-4 only): run on each sample alone, stopping by the
              solver's own tolerances; ``stop`` judges ``converged``.

            The steady-state solvers take ``stop=SteadyState(atol, rtol)`` only, count one
            evaluation per iteration (−1, unknown, for optimistix's own), and are
            differentiated at the steady state (``adjoint``).
        stop: an :class:`AbstractStop`: ``SteadyState(atol, rtol, t1)`` (default, with
            ``atol=1e-4``), ``FixedTime(t1)``, or ``FixedSteps(n)`` (n steps of ``dt0`` with a
            constant step size). Each carries the tolerance by which ``converged`` is judged.
        adjoint: how gradients flow. The ODE path: a diffrax adjoint (default
            ``diffrax.RecursiveCheckpointAdjoint()``, BPTT through the solver;
            ``diffrax.DirectAdjoint()`` for forward- and higher-order autodiff); any path at a
            ``SteadyState``: :class:`ImplicitSteadyState` (the implicit function theorem, the
            default of the steady-state solvers), ``ImplicitSteadyState(PhantomGradient())``
            (a truncated adjoint series: cheap and approximate) or
            ``ImplicitSteadyState(lineax.AutoLinearSolver(well_posed=False))`` (dense, for
            small nets whose Jacobian may be singular).
        max_steps: the most solver steps (or iterations). Reaching it is not an error: ``result``
            is then ``max_steps_reached`` and ``converged`` is False for samples whose residual
            is above tolerance.
        raise_nonfinite: a sample whose state is (or becomes) NaN/inf is set aside while the
            others go on. ``True`` raises :class:`NonFiniteStateError` naming the layers,
            samples and step; ``False`` returns with ``finite`` False (and ``converged`` False,
            a NaN ``residual``) for those samples; ``None`` (default) raises for an unbatched
            state and flags in a batch. The same inside ``jit``/``grad``/``vmap``, where the
            error is raised when the computation runs, by ``equinox.error_if`` (an
            ``EquinoxRuntimeError`` whose message says the same, without the layers and samples
            a trace cannot read).
        freeze: ``{layer: bool mask}`` of neurons of free layers held at their ``x0`` values
            (``True`` = frozen), broadcast against the layer's state: masked completion.
        mesh: a ``jax.sharding.Mesh`` (:func:`hamjax.sharding.make_mesh`): the batch of ``x0``
            (and of ``freeze``) is split over its devices along the leading axis and ``net``
            replicated; convergence is judged per sample, so the result equals the
            single-device one.

    Arguments of the ODE path only (given with a steady-state solver, they are an error):
        dt0: the (initial) step size (default 0.25, as the gradient estimators').
        stepsize_controller: for adaptive solvers defaults to ``PIDController`` with a tenth of
            the SteadyState's ``rtol``/``atol`` (a looser one stalls above the residual asked
            for) and a per-sample error norm, or ``rtol=1e-3, atol=1e-6`` under FixedTime; a
            constant step size otherwise.
        save: what to keep beside the end state, a :class:`SaveAt`: ``SaveAt(trajectory=True)``
            (the states at every step, or at ``SaveAt(ts=...)``), ``SaveAt(energy=True)`` (the
            energy per sample only: cheap, for Lyapunov checks and plots), or both. Default:
            the end state only.
        progress: show a tqdm progress bar (fraction of ``t1``; give SteadyState a
            finite ``t1`` for a meaningful bar).

    Shapes: ``x0`` is ``{layer name: (*batch, *layer.shape)}`` for every layer of ``net`` (the
    clamped ones included), the same ``batch`` in all; the :class:`Relaxation` keeps those
    shapes, with per-sample fields of shape ``batch``. The dynamics are docs/maths.md eq. (5),
    the steady state eq. (T1), the gradients §5.2–5.3.

    Errors, raised before any work: :class:`StateError` for a state that does not fit ``net``,
    every layer clamped, or a ``freeze`` mask of a layer that is not free or of a shape that
    does not broadcast; :class:`GraphError` for an unknown layer in ``clamp``; ``ValueError``
    for a ``solver``, ``stop`` or ``adjoint`` that is not one (a name, say: names are for the
    command line), a keyword that does not apply to the solver's path, a tolerance given to
    hamjax's fixed-point solvers (it is ``stop``'s), ``max_steps < 1``, a bad
    ``raise_nonfinite`` or ``save``, ``freeze`` with a root finder or minimiser, or a
    combination of ``stop``, ``adjoint`` and saving that cannot work (the implicit adjoint
    away from a ``SteadyState``, ``SaveAt(ts=...)`` without a finite end time);
    :class:`hamjax.sharding.ShardingError` for a ``mesh`` with an unbatched ``x0`` or an
    indivisible batch. :class:`NonFiniteStateError` as ``raise_nonfinite`` says.
    """
    clamp = net.check_clamp(clamp)
    batch = net.check_state(x0, "x0")
    stop = SteadyState() if stop is None else _stop(stop)
    solver, kind = _path(solver)
    saveat = _saveat(save)
    ode_kw = dict(dt0=dt0, stepsize_controller=stepsize_controller,
                  save=None if save is None else saveat, progress=progress)
    _check_arguments(solver, kind, stop, max_steps, raise_nonfinite, ode_kw)
    ode_kw["save"] = saveat
    adjoint = _adjoint(adjoint, kind is None)
    if mesh is not None:
        net, x0, freeze = _distribute(net, x0, freeze, batch, mesh)
    if len(clamp) == len(net.layers):
        raise StateError("every layer is clamped: there is nothing to relax")
    if raise_nonfinite is None:
        raise_nonfinite = not batch
    concrete = not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(x0))
    if raise_nonfinite and concrete:
        bad = [n for n, v in x0.items() if not bool(jnp.all(jnp.isfinite(v)))]
        if bad:
            raise NonFiniteStateError(f"x0[{bad[0]!r}] contains NaN or infinite values")
    # A sample that starts non-finite (a NaN pixel, say) can only stay so. Where it would stall
    # (an adaptive step-size control rejects every step of a NaN sample, and ends where it
    # began, with a finite state) or spoil the others' gradients (the implicit adjoint
    # multiplies its NaN currents by 0), it is set aside: relaxed from zeros, invisibly, and
    # put back at the end, NaN and flagged, batched or not. Fixed steps need no such care (a
    # NaN propagates to the state; samples do not interact there), and BPTT through them is
    # the hot path.
    aside = (kind is not None or isinstance(adjoint, ImplicitSteadyState)
             or _adaptive(solver, stop, stepsize_controller))
    alive0 = _finite(net, x0) if aside else None
    x_start = _zero_rows(net, x0, alive0) if aside else x0

    if freeze and kind in (_ROOT, _MINIMISE):
        raise ValueError(f"freeze works with a diffrax solver or a fixed-point solver, not "
                         f"{type(solver).__name__} (its frozen rows would be singular)")
    dyn = net.dynamics(x_start, clamp=clamp, freeze=freeze)
    x_free = dyn.free_state(x_start)
    nb = _batch_ndim(dyn, x_free)
    if kind is None:
        ode_kw["solver"] = solver
        if _joint_steps(stop, solver, stepsize_controller, ode_kw["save"], progress):
            final, extras = _relax_ode(dyn, x_free, stop, adjoint, max_steps, **ode_kw)
        else:
            final, extras = _each_sample(
                lambda d, x: _relax_ode(d, x, stop, adjoint, max_steps, **ode_kw), dyn, x_free,
                nb)
    elif kind == _ITERATION:
        # hamjax's fixed-point solvers are per sample already (each sample stops at its own
        # tolerance); their ODE finish runs per sample (_finish_by_ode)
        plan = _Steady(kind, solver, stop, max_steps, nb)
        if isinstance(adjoint, ImplicitSteadyState):
            final, extras = _at_steady_state(_steady_forward, dyn, x_free, plan, adjoint, nb)
        else:
            final, extras = _steady_forward(dyn, x_free, plan)
    else:
        # optimistix's solvers on one sample at a time: their steps, line searches and
        # stopping tests are then the sample's own (and Newton's Jacobian is a sample's, not
        # the batch's)
        plan = _Steady(kind, solver, stop, max_steps, 0)

        def forward(d, x, plan):
            return _each_sample(lambda di, xi: _steady_forward(di, xi, plan), d, x,
                                _batch_ndim(d, x))

        if isinstance(adjoint, ImplicitSteadyState):
            final, extras = _at_steady_state(forward, dyn, x_free, plan, adjoint, nb)
        else:
            final, extras = forward(dyn, x_free, plan)
    out = _result(net, dyn, x0, final, stop, alive0, extras)
    if isinstance(adjoint, ImplicitSteadyState):
        # a derivative at an unconverged sample is not what the theorem gives: say so
        out = eqx.tree_at(lambda o: o.state, out, _guard_unconverged(
            out.state, out.finite & ~out.converged, adjoint.on_unconverged))
    if raise_nonfinite:
        if isinstance(out.finite, jax.core.Tracer):
            # under jit/grad/vmap the same rule, checked when the computation runs
            out = eqx.error_if(out, ~jnp.all(out.finite), _NONFINITE_TRACED)
        else:
            _raise_nonfinite(out, batch)
    return out


class RelaxOptions(eqx.Module):
    """How to relax, as one object: the ``solver``, ``stop``, ``max_steps``, ``dt0`` and
    ``adjoint`` of :func:`hamjax.relax` (each meaning what it means there, ``None`` for
    relax's default), checked once, when built. The gradient estimators of
    :mod:`hamjax.train` hold one (``Implicit(relaxation=RelaxOptions(...))``), and
    ``options(net, x0, clamp=..., ...)`` is ``relax(net, x0, clamp=..., ..., **options)``.

    Raises ``ValueError`` for what :func:`hamjax.relax` would refuse of these settings alone: a
    ``solver``, ``stop`` or ``adjoint`` that is not one (a name, say), ``dt0`` or a stop other
    than ``SteadyState`` (or a finite ``t1``) with a steady-state solver, a diffrax adjoint
    with one, a tolerance given to hamjax's fixed-point solvers, or ``max_steps < 1``."""

    solver: Solver | None = None
    stop: AbstractStop | None = None
    max_steps: int = 4096
    dt0: float | None = None
    adjoint: diffrax.AbstractAdjoint | ImplicitSteadyState | None = None

    def __check_init__(self):
        solver, kind = _path(self.solver)
        stop = SteadyState() if self.stop is None else _stop(self.stop)
        _check_arguments(solver, kind, stop, self.max_steps, None, dict(dt0=self.dt0))
        _adjoint(self.adjoint, kind is None)

    @property
    def tolerance(self) -> float:
        """The ``atol`` by which :attr:`Relaxation.converged` is judged (``stop``'s)."""
        return (SteadyState() if self.stop is None else self.stop).atol

    def kwargs(self) -> dict:
        """The keyword arguments of :func:`hamjax.relax` these options stand for (the ones
        given, not ``None``)."""
        kw = dict(solver=self.solver, stop=self.stop, max_steps=self.max_steps, dt0=self.dt0,
                  adjoint=self.adjoint)
        return {k: v for k, v in kw.items() if v is not None}

    def __call__(self, net: HAM, x0: Mapping[str, Array], **kwargs) -> Relaxation:
        """``relax(net, x0, **kwargs, **self.kwargs())``: ``kwargs`` are relax's other
        keywords (``clamp``, ``freeze``, ``raise_nonfinite``, ``save``, ...)."""
        return relax(net, x0, **kwargs, **self.kwargs())


def _joint_steps(stop, solver, controller, save, progress) -> bool:
    """Whether the ODE path steps the whole batch together. Samples are independent under a
    constant step size run for a fixed time or number of steps (the hot path of BPTT, kept one
    batched loop); an adaptive step size or a stop at the steady state is each sample's own,
    by ``vmap``, except where a trajectory or progress bar is saved, which share one time grid."""
    if save.saves_steps or progress:
        return True
    return not (stop.at_steady_state or _adaptive(solver, stop, controller))


def _path(solver) -> tuple[Solver, str | None]:
    """``(solver, kind)``: the solver (Tsit5 when None) and its steady-state path
    (``_steady._kind``), None for the ODE path of a diffrax solver."""
    if solver is None:
        return diffrax.Tsit5(), None
    if isinstance(solver, diffrax.AbstractSolver):
        return solver, None
    kind = _kind(solver)
    if kind is not None:
        return solver, kind
    if isinstance(solver, str):
        raise ValueError(f"solver={solver!r} is a name: pass a solver object, e.g. "
                         "diffrax.Tsit5(), diffrax.Euler() or hamjax.solvers.Anderson() (names "
                         "are for the command line)")
    raise ValueError(f"solver must be a diffrax solver or an optimistix fixed-point solver, "
                     f"root finder or minimiser, got {solver!r}")


def _check_arguments(solver, kind, stop, max_steps, raise_nonfinite, ode_kw) -> None:
    """Reject, before any work, keywords that would not take effect and values out of range."""
    if kind is not None:
        name = type(solver).__name__
        given = [k for k, v in ode_kw.items() if v is not None and not (
            k == "save" and not v.saves_steps)]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f"the ODE path (a diffrax solver) only, not to {name}")
        if not stop.at_steady_state:
            raise ValueError(f"{name} goes to a steady state: use stop=SteadyState(...), not "
                             f"{type(stop).__name__}")
        if math.isfinite(stop.end_time(1.0)):
            raise ValueError(f"{name} has no model time: SteadyState(t1=...) applies to the "
                             "ODE path only (bound the iterations with max_steps)")
        if kind == _ITERATION and (solver.atol is not None or solver.rtol is not None):
            raise ValueError("give the tolerance once, in stop=SteadyState(atol=..., rtol=...),"
                             f" not in the {name} solver")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if raise_nonfinite not in (None, True, False):
        raise ValueError(f"raise_nonfinite must be True, False or None, got {raise_nonfinite!r}")


def _distribute(net, x0, freeze, batch, mesh):
    """Split the batch of ``x0`` (and of ``freeze`` masks that carry it) over ``mesh``; replicate
    ``net``."""
    from .sharding import ShardingError, replicate, shard_batch

    if not batch:
        raise ShardingError("relax(..., mesh=...) splits a batch: x0 has no batch axis")
    net, x0 = replicate(net, mesh), shard_batch(dict(x0), mesh)
    if freeze:
        # masks carrying the batch axis travel with their samples; others broadcast
        freeze = {n: shard_batch(jnp.asarray(m), mesh) if n in net.layers
                  and jnp.ndim(m) > net.layers[n].ndim and jnp.shape(m)[0] == batch[0]
                  else m for n, m in freeze.items()}
    return net, x0, freeze


def _zero_rows(net: HAM, x: Mapping[str, Array], alive: Array) -> dict[str, Array]:
    """``x`` with the samples that are not ``alive`` replaced by zeros."""
    return {n: jnp.where(_rows(alive, v, net.layers[n].ndim), v, 0.0) for n, v in x.items()}


def _result(net, dyn, x0, final, stop, alive0, extras) -> Relaxation:
    """The :class:`Relaxation` of a final free state, judged per sample. Samples set aside
    (``alive0`` False) keep their given (non-finite) clamped values and have no relaxed state,
    trajectory or energies: NaN, so that nothing computed from them passes for a result."""
    extras = dict(extras)
    # a solver that measured each sample's residual at its final state passes it on: at a
    # steady state F(x*(θ); θ) = 0 whatever θ, so its derivative is 0, as this constant's is
    residual = extras.pop("residual", None)
    if residual is None:
        residual = residual_norm(dyn, final)
    tolerance = _tolerance(dyn, final, stop)
    finite = _finite(dyn.net, final) & jnp.isfinite(residual)
    state = dyn.full_state(final)
    if alive0 is not None:
        finite = finite & alive0
        state = {n: jnp.where(_rows(alive0, v, net.layers[n].ndim), v,
                              x0[n] if n in dyn.clamped_state else jnp.nan)
                 for n, v in state.items()}
        residual = jnp.where(alive0, residual, jnp.nan)
        extras = _set_aside_saved(net, dyn, x0, alive0, extras)
    for k in ("steps", "num_steps", "evaluations", "t_final"):
        extras[k] = jnp.broadcast_to(extras[k], residual.shape)
    # a sample that went (or started) non-finite says so, whatever its solver reported
    extras["result"] = results_where(finite, broadcast_result(extras["result"], residual.shape),
                                     RESULTS.nonfinite)
    return Relaxation(
        state=state,
        converged=(residual <= tolerance) & finite,
        residual=residual,
        tolerance=jnp.broadcast_to(tolerance, residual.shape),
        finite=finite,
        **extras,
    )


def _set_aside_saved(net, dyn, x0, alive0, extras) -> dict:
    """The saved trajectory (leading save axis) and energies of set-aside samples: NaN, clamped
    layers at their given values."""
    traj, energies = extras.get("trajectory"), extras.get("energies")
    if traj is not None:
        traj = {n: jnp.where(_rows(alive0, v, net.layers[n].ndim), v,
                             x0[n] if n in dyn.clamped_state else jnp.nan)
                for n, v in traj.items()}
    if energies is not None:
        energies = jnp.where(alive0, energies, jnp.nan)
    return {**extras, "trajectory": traj, "energies": energies}


_NONFINITE_TRACED = ("relax: a relaxation produced (or was given) a non-finite state "
                     "(raise_nonfinite=True, or None on an unbatched state); pass "
                     "raise_nonfinite=False to get it flagged in Relaxation.finite instead")


def _raise_nonfinite(out: Relaxation, batch) -> None:
    bad = ~np.asarray(out.finite)
    if bad.any():
        layers = [n for n, v in out.state.items() if not bool(jnp.all(jnp.isfinite(v)))]
        where = f" in samples {np.argwhere(bad).tolist()}" if batch else ""
        raise NonFiniteStateError(
            f"relaxation produced a non-finite state in layer(s) {layers}{where} (stopped at "
            f"step {int(np.max(out.num_steps))}); try a smaller dt0, an adaptive solver, or check "
            "the weights"
        )
