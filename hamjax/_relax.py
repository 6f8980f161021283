"""Relaxation: run a HAM's dynamics until it settles.

``relax(net, x0, clamp=...)`` is hamjax's ``diffeqsolve``: one entry point, with strategy objects
(or short strings) for how to get there (``method``), when to stop, what to save and how to
differentiate.

* ``method="ode"`` integrates ``τ_A dx_A/dt = −∂E/∂g_A`` (MATH.md eq. 5) with diffrax: the
  dynamics themselves, any stopping rule, trajectories, BPTT.
* ``method="anderson"`` / ``"fixed_point"`` / ``"root"`` / ``"minimise"`` go straight to the
  steady state ``x_A = c_A + I_A`` and are differentiated there by the implicit function theorem.

Clamped layers are not states: they travel with the currents they send through multilinear
synapses, computed once (see :class:`hamjax.ham.ClampedDynamics`).

Convergence is judged per sample: sample ``i`` has converged when the root-mean-square over the
free neurons of ``τ_A ẋ_A = c_A + I_A − x_A`` (the residual of the steady-state equations) is at
most ``atol + rtol·rms(x_i)``, the tolerance carried in :attr:`Relaxation.tolerance`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import optimistix.internal as optxi  # implicit_jvp: the same machinery diffrax.ImplicitAdjoint uses
from jaxtyping import Array

from ._ham import HAM, ClampedDynamics, StateError
from .solvers import Anderson, Neumann, PhantomGradient, with_batch_ndim

__all__ = [
    "relax",
    "Frozen",
    "ImplicitSteadyState",
    "Relaxation",
    "SteadyState",
    "FixedTime",
    "FixedSteps",
    "NonFiniteStateError",
    "residual_norm",
]


class NonFiniteStateError(FloatingPointError):
    """A relaxation produced (or was given) a NaN or infinite state."""


# ------------------------------------------------------------------ stopping rules
class SteadyState(eqx.Module):
    """Stop once every sample's residual ``rms(τ dx/dt) ≤ atol + rtol·rms(x)``, or at ``t_max``
    (model time; ``method="ode"`` only)."""

    atol: float = 1e-4
    rtol: float = 0.0
    t_max: float = math.inf


class FixedTime(eqx.Module):
    """Integrate from 0 to ``t1`` (model time, in units of the layers' ``tau``). ``atol`` and
    ``rtol`` only judge :attr:`Relaxation.converged` at the end."""

    t1: float
    atol: float = 1e-4
    rtol: float = 0.0


class FixedSteps(eqx.Module):
    """Take exactly ``n`` steps of size ``dt0`` (constant step size): the classic unrolled loop.
    ``atol`` and ``rtol`` only judge :attr:`Relaxation.converged` at the end."""

    n: int
    atol: float = 1e-4
    rtol: float = 0.0


Stop = SteadyState | FixedTime | FixedSteps

_SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
}

# new vector-field evaluations per attempted step; FSAL solvers reuse their last stage
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

_STEADY_METHODS = ("anderson", "fixed_point", "root", "minimise", "minimize")


def _solver(solver) -> diffrax.AbstractSolver:
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    if isinstance(solver, str) and solver.lower() in _SOLVERS:
        return _SOLVERS[solver.lower()]()
    raise ValueError(
        f"unknown solver {solver!r}; use a diffrax solver or one of {sorted(_SOLVERS)}"
    )


def _stop(stop) -> Stop:
    if isinstance(stop, SteadyState | FixedTime | FixedSteps):
        return stop
    if stop == "steady_state":
        return SteadyState()
    raise ValueError(
        f"unknown stopping rule {stop!r}; use SteadyState(...), FixedTime(t1), FixedSteps(n) "
        "or 'steady_state'"
    )


class ImplicitSteadyState(eqx.Module):
    """Differentiate a steady state ``F(x*; θ) = 0`` by the implicit function theorem:
    ``dx*/dθ = −(∂F/∂x)⁻¹ ∂F/∂θ`` (``optimistix.implicit_jvp``). The forward solve is not
    differentiated, so memory does not grow with the number of relaxation steps.

    ``F = τ ẋ = c + I − x`` (frozen neurons: ``x₀ − x``), whose Jacobian at a stable steady
    state is ``C H − I``. Dead neurons make ``H`` (and the energy Hessian ``H − HCH``) singular,
    but not ``CH − I``: on a dead direction ``(CH − I) D = −D`` (MATH.md §4.5). On trained
    networks ``CH`` is a contraction, so the default linear solver is
    :class:`hamjax.solvers.Neumann` (fixed-point iteration of the adjoint equation, per sample,
    GMRES as fallback); :class:`hamjax.solvers.PhantomGradient` truncates it for a cheap
    approximate gradient; any lineax solver works (``lx.GMRES(...)``; ``"implicit_dense"``:
    a dense least-squares solve that survives a truly singular system, for small nets)."""

    linear_solver: lx.AbstractLinearSolver = Neumann()


def _adjoint(adjoint, kind: str):
    """The adjoint for a relaxation of kind ``"ode"`` or a steady-state method."""
    if adjoint is None:
        adjoint = "recursive" if kind == "ode" else "implicit"
    if isinstance(adjoint, ImplicitSteadyState):
        return adjoint
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        if kind != "ode":
            raise ValueError(f"a diffrax adjoint differentiates an ODE solve, not method={kind!r}:"
                             " use adjoint='implicit', 'phantom' or ImplicitSteadyState(...)")
        return adjoint
    named = {
        "implicit": lambda: ImplicitSteadyState(),
        "implicit_dense": lambda: ImplicitSteadyState(lx.AutoLinearSolver(well_posed=False)),
        "phantom": lambda: ImplicitSteadyState(PhantomGradient()),
    }
    if adjoint in named:
        return named[adjoint]()
    if adjoint in ("recursive", "direct"):
        if kind != "ode":
            raise ValueError(f"adjoint={adjoint!r} backpropagates through an ODE solve; "
                             f"method={kind!r} is differentiated at its steady state: use "
                             "adjoint='implicit', 'phantom' or ImplicitSteadyState(...)")
        return (diffrax.RecursiveCheckpointAdjoint() if adjoint == "recursive"
                else diffrax.DirectAdjoint())
    raise ValueError(
        f"unknown adjoint {adjoint!r}; use 'recursive', 'direct' (method='ode'), 'implicit', "
        "'implicit_dense', 'phantom', ImplicitSteadyState(...) or a diffrax adjoint"
    )


class Frozen(eqx.Module):
    """Dynamics with some neurons of free layers held at their initial values (masked pattern
    completion): ``ẋ ← ẋ ⊙ (1 − mask)``. Frozen neurons count as converged."""

    dyn: ClampedDynamics
    masks: dict[str, Array]

    @property
    def net(self) -> HAM:
        return self.dyn.net

    @property
    def free(self) -> tuple[str, ...]:
        return self.dyn.free

    @property
    def clamped_state(self):
        return self.dyn.clamped_state

    def full_state(self, x_free):
        return self.dyn.full_state(x_free)

    def free_state(self, x):
        return self.dyn.free_state(x)

    def currents(self, x_free):
        return self.dyn.currents(x_free)

    def __call__(self, x_free):
        dx = self.dyn(x_free)
        return {n: jnp.where(self.masks[n], 0.0, v) if n in self.masks else v
                for n, v in dx.items()}


# ------------------------------------------------------------------ residuals
def _batch_ndim(dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> int:
    n = dyn.free[0]
    return x_free[n].ndim - dyn.net.layers[n].ndim


def _per_sample_sq(dyn: ClampedDynamics, tree: Mapping[str, Array]) -> Array:
    nb = _batch_ndim(dyn, tree)
    return sum(jnp.sum(v * v, axis=tuple(range(nb, v.ndim))) for v in tree.values())


def _num_free(dyn: ClampedDynamics) -> int:
    return sum(dyn.net.layers[n].size for n in dyn.free)


def _force(dyn: ClampedDynamics, dx: Mapping[str, Array]) -> dict[str, Array]:
    """``τ_A ẋ_A = c_A + I_A − x_A``: how far each layer is from its fixed-point equation."""
    return {n: v * dyn.net.layers[n].tau for n, v in dx.items()}


def _steady_force(dyn, x: Mapping[str, Array], x_init: Mapping[str, Array]) -> dict[str, Array]:
    """``F(x) = τ ẋ = c + I − x``, with ``x₀ − x`` on frozen neurons: the function whose zero is
    the steady state. Unlike ``τ ẋ`` itself (zero on frozen rows whatever ``x``), its Jacobian
    is invertible there (``−I``), so the implicit function theorem applies, and it carries the
    dependence of the steady state on the frozen values."""
    f = _force(dyn, dyn(x))
    if isinstance(dyn, Frozen):
        f = {n: jnp.where(dyn.masks[n], x_init[n] - x[n], v) if n in dyn.masks else v
             for n, v in f.items()}
    return f


def residual_norm(dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> Array:
    """Per-sample root-mean-square over the free neurons of ``τ_A ẋ_A = c_A + I_A − x_A``: the
    residual of the steady-state equations, independent of the time constants. NaN for a
    non-finite sample."""
    return _rms(dyn, _force(dyn, dyn(x_free)))


def _rms(dyn, tree):
    ms = _per_sample_sq(dyn, tree) / _num_free(dyn)
    # sqrt with a zero gradient at zero: a memory model lands exactly on a stored pattern (a
    # hard softmax in float32), where d sqrt = inf would turn a residual penalty's gradient NaN.
    # A NaN stays NaN (a non-finite sample must never read as residual 0).
    pos = ms > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ms, 1.0)), jnp.where(ms == 0, 0.0, ms))


def _finite(dyn, tree) -> Array:
    nb = _batch_ndim(dyn, tree)
    flags = [jnp.all(jnp.isfinite(v), axis=tuple(range(nb, v.ndim))) for v in tree.values()]
    out = flags[0]
    for f in flags[1:]:
        out = out & f
    return out


def _finite_samples(net: HAM, x: Mapping[str, Array]) -> Array:
    """Per sample: every layer of ``x`` (clamped ones too) finite."""
    out = None
    for n, layer in net.layers.items():
        v = x[n]
        f = jnp.all(jnp.isfinite(v), axis=tuple(range(v.ndim - layer.ndim, v.ndim)))
        out = f if out is None else out & f
    return out


class PerSampleRMS(eqx.Module):
    """``max_i sqrt(mean_j v_ij²)``: the largest per-sample root-mean-square of a batched
    PyTree (samples along the first ``batch_ndim`` axes of every leaf). An error norm for
    step-size control that holds each sample, not the batch on average, to the tolerance."""

    batch_ndim: int = eqx.field(static=True)

    def __call__(self, tree) -> Array:
        leaves = jax.tree_util.tree_leaves(tree)
        nb = self.batch_ndim
        sq = sum(jnp.sum(jnp.abs(v) ** 2, axis=tuple(range(nb, v.ndim))) for v in leaves)
        n = sum(math.prod(v.shape[nb:]) for v in leaves)
        return jnp.max(jnp.sqrt(sq / n))


# ------------------------------------------------------------------ result
class Relaxation(eqx.Module):
    """The outcome of :func:`relax`.

    * ``state``: the final state, every layer (clamped ones included);
    * ``converged``: per sample, finite and ``residual ≤ tolerance`` (judged whatever the stop);
    * ``residual``: per-sample RMS of ``τ dx/dt`` (the fixed-point residual) at the end (NaN for
      a non-finite sample);
    * ``tolerance``: per sample, the ``atol + rtol·rms(x)`` that ``converged`` was judged by;
    * ``finite``: per sample, whether the state (and its residual) stayed finite;
    * ``steps`` (accepted), ``num_steps`` (attempted), ``evaluations`` (vector-field calls, with
      those of the stopping test; −1 for a solver whose count is unknown), ``t_final`` (NaN for
      the steady-state methods, which have no time);
    * ``result``: diffrax's outcome (``diffrax.RESULTS``): e.g. ``max_steps_reached``;
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
    result: diffrax.RESULTS
    ts: Array | None = None
    trajectory: dict[str, Array] | None = None
    energies: Array | None = None

    def energy_trace(self) -> np.ndarray:
        """The saved energies as a NumPy array, unused slots (after the last step) dropped."""
        if self.energies is None:
            raise ValueError("no energies were saved: call relax(..., save='energy')")
        e = np.asarray(self.energies)
        keep = np.isfinite(np.asarray(self.ts))
        return e[keep]


# ------------------------------------------------------------------ the entry point
def relax(
    net: HAM,
    x0: Mapping[str, Array],
    clamp: Iterable[str] | str = (),
    *,
    method: str | Anderson = "ode",
    stop: Stop | str = "steady_state",
    adjoint: diffrax.AbstractAdjoint | ImplicitSteadyState | str | None = None,
    max_steps: int = 4096,
    on_nonfinite: Literal["auto", "raise", "flag"] = "auto",
    freeze: Mapping[str, Array] | None = None,
    mesh=None,
    solver: diffrax.AbstractSolver | str | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    save: Literal["final", "trajectory", "energy", "both"] | None = None,
    save_ts: Array | None = None,
    progress: bool | None = None,
) -> Relaxation:
    """Relax ``net`` from ``x0`` with the layers in ``clamp`` held fixed.

    Arguments (all methods):
        method: how to reach the end state.

            * ``"ode"`` (default): integrate the dynamics with a diffrax ``solver``.
            * ``"fixed_point"``: the iteration ``x_A ← c_A + I_A`` of all layers at once (Euler
              with ``dt = τ``; ``Anderson(history=1)``), per sample. It converges only to
              stable steady states (it repels the others); where it cycles or diverges (a
              synchronous update can, where the ODE settles) it gives the sample up and the
              ODE (Tsit5) finishes it from there.
            * ``"anderson"``: Anderson acceleration (:class:`hamjax.solvers.Anderson`) of the
              same iteration, same fallback: fewer iterations, but its extrapolation can land
              on an unstable steady state (a saddle of the energy) that the dynamics would
              leave; check with :mod:`hamjax.analysis` where that matters.
            * ``"root"``: optimistix's Newton method on the vector field (dense Jacobian: small
              nets, cross-checks).
            * ``"minimise"``: BFGS on the energy, then one fixed-point step ``x_A ← c_A + I_A``
              that moves a minimiser lying on a dead-neuron flat set onto the dynamical steady
              state (MATH.md §4.6, Proposition 4). In float32 the energy resolves the steady
              state to a residual of about 1e-4 only.
            * an :class:`hamjax.solvers.Anderson` instance (its tolerances come from ``stop``).

            The steady-state methods take ``stop=SteadyState(atol, rtol)`` only, count one
            evaluation per iteration, and are differentiated at the steady state (``adjoint``).
        stop: ``SteadyState(atol, rtol, t_max)`` (default ``atol=1e-4``), ``FixedTime(t1)``, or
            ``FixedSteps(n)`` (n steps of ``dt0`` with a constant step size). Each carries the
            tolerance by which ``converged`` is judged.
        adjoint: how gradients flow. ``method="ode"``: ``"recursive"`` (default; BPTT through the
            solver), ``"direct"`` (forward- and higher-order autodiff) or a diffrax adjoint; any
            method at a ``SteadyState``: ``"implicit"`` (the implicit function theorem, the
            default of the steady-state methods; :class:`ImplicitSteadyState`), ``"phantom"``
            (a truncated adjoint series: cheap and approximate) or ``"implicit_dense"``.
        max_steps: the most solver steps (or iterations). Reaching it is not an error: ``result``
            is then ``max_steps_reached`` and ``converged`` is False for samples whose residual
            is above tolerance.
        on_nonfinite: a sample whose state is (or becomes) NaN/inf is set aside while the others
            go on. ``"raise"`` raises :class:`NonFiniteStateError` naming the layers, samples
            and step; ``"flag"`` returns with ``finite`` False (and ``converged`` False, a NaN
            ``residual``) for those samples; ``"auto"`` raises for an unbatched state and flags
            in a batch. Inside ``jit``/``grad``/``vmap`` only flagging is possible.
        freeze: ``{layer: bool mask}`` of neurons of free layers held at their ``x0`` values
            (``True`` = frozen), broadcast against the layer's state: masked completion.
        mesh: a ``jax.sharding.Mesh`` (:func:`hamjax.sharding.make_mesh`): the batch of ``x0``
            (and of ``freeze``) is split over its devices along the leading axis and ``net``
            replicated; convergence is judged per sample, so the result equals the
            single-device one.

    Arguments of ``method="ode"`` only (given with another method, they are an error):
        solver: a diffrax solver or its name (``"tsit5"`` default, ``"euler"``, ``"heun"``, ...).
        dt0: the (initial) step size (default 0.1).
        stepsize_controller: for adaptive solvers defaults to ``PIDController`` with a tenth of
            the SteadyState's ``rtol``/``atol`` (a looser one stalls above the residual asked
            for) and a per-sample error norm, or ``rtol=1e-3, atol=1e-6`` under FixedTime; a
            constant step size otherwise.
        save: ``"final"`` (default), ``"trajectory"`` (states at every step, or at ``save_ts``),
            ``"energy"`` (only the energy per sample: cheap, for Lyapunov checks and plots) or
            ``"both"``.
        save_ts: the times to save at (a finite end time is needed).
        progress: show a tqdm progress bar (fraction of ``t1``/``t_max``; give SteadyState a
            finite ``t_max`` for a meaningful bar).
    """
    clamp = net.check_clamp(clamp)
    batch = net.check_state(x0, "x0")
    stop = _stop(stop)
    kind, steady_solver = _method(method)
    ode_kw = dict(solver=solver, dt0=dt0, stepsize_controller=stepsize_controller, save=save,
                  save_ts=save_ts, progress=progress)
    if kind != "ode":
        given = [k for k, v in ode_kw.items() if v is not None and not (k == "save"
                                                                      and v == "final")]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f"method='ode' only, not method={kind!r}")
        if not isinstance(stop, SteadyState):
            raise ValueError(f"method={kind!r} goes to a steady state: use stop=SteadyState(...)"
                             f", not {type(stop).__name__}")
        if math.isfinite(stop.t_max):
            raise ValueError(f"method={kind!r} has no model time: SteadyState(t_max=...) applies "
                             "to method='ode' only (bound the iterations with max_steps)")
    adjoint = _adjoint(adjoint, kind)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if on_nonfinite not in ("auto", "raise", "flag"):
        raise ValueError(f"on_nonfinite must be 'auto', 'raise' or 'flag', got {on_nonfinite!r}")
    if mesh is not None:
        from .sharding import ShardingError, replicate, shard_batch

        if not batch:
            raise ShardingError("relax(..., mesh=...) splits a batch: x0 has no batch axis")
        net, x0 = replicate(net, mesh), shard_batch(dict(x0), mesh)
        if freeze:
            # masks carrying the batch axis travel with their samples; others broadcast
            freeze = {n: shard_batch(jnp.asarray(m), mesh) if n in net.layers
                      and jnp.ndim(m) > net.layers[n].ndim and jnp.shape(m)[0] == batch[0]
                      else m for n, m in freeze.items()}
    if len(clamp) == len(net.layers):
        raise StateError("every layer is clamped: there is nothing to relax")
    raise_nonfinite = on_nonfinite == "raise" or (on_nonfinite == "auto" and not batch)

    concrete = not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(x0))
    if raise_nonfinite and concrete:
        bad = [n for n, v in x0.items() if not bool(jnp.all(jnp.isfinite(v)))]
        if bad:
            raise NonFiniteStateError(f"x0[{bad[0]!r}] contains NaN or infinite values")
    # A sample that starts non-finite (a NaN pixel, say) can only stay so. Where it would stall
    # the others (an adaptive step-size control rejects every step of a NaN sample) or spoil
    # their gradients (the implicit adjoint multiplies its NaN currents by 0), it is set aside:
    # relaxed from zeros, invisibly, and put back at the end, flagged. Fixed steps need no such
    # care (samples do not interact there), and BPTT through them is the hot path.
    aside = bool(batch) and (kind != "ode" or isinstance(adjoint, ImplicitSteadyState)
                             or _adaptive(solver, stop, stepsize_controller))
    x_orig = x0
    if aside:
        alive0 = _finite_samples(net, x0)
        x0 = {n: jnp.where(_rows(alive0, v, net.layers[n].ndim), v, 0.0) for n, v in x0.items()}

    dyn = net.dynamics(x0, clamp)
    x_free = dyn.free_state(x0)
    if freeze:
        masks = {}
        for name, m in freeze.items():
            if name not in dyn.free:
                raise StateError(f"cannot freeze neurons of {name!r}: not a free layer of this "
                                 f"relaxation (free layers: {list(dyn.free)})")
            m = jnp.asarray(m, dtype=bool)
            try:
                masks[name] = jnp.broadcast_to(m, x_free[name].shape)
            except ValueError:
                raise StateError(f"freeze[{name!r}] has shape {m.shape}, which does not "
                                 f"broadcast to the layer's state {x_free[name].shape}") from None
        if kind in ("root", "minimise"):
            raise ValueError(f"freeze works with method='ode', 'anderson' or 'fixed_point', not "
                             f"{kind!r}")
        dyn = Frozen(dyn, masks)
    nb = _batch_ndim(dyn, x_free)

    if kind == "ode":
        final, extras = _relax_ode(dyn, x_free, stop, adjoint, max_steps, **ode_kw)
    else:
        cfg = (kind, steady_solver, stop, max_steps, nb)
        if isinstance(adjoint, ImplicitSteadyState):
            final, extras = _at_steady_state(_steady_forward, dyn, x_free, cfg, adjoint, nb)
        else:
            final, extras = _steady_forward(dyn, x_free, cfg)

    residual = residual_norm(dyn, final)
    tolerance = stop.atol + stop.rtol * _rms(dyn, final)
    finite = _finite(dyn, final) & jnp.isfinite(residual)
    if aside:
        finite = finite & alive0
        # a sample set aside keeps its given (non-finite) clamped values and has no relaxed
        # state: NaN, so that nothing computed from it passes for a result
        state = {n: jnp.where(_rows(alive0, v, net.layers[n].ndim), v,
                              x_orig[n] if n in dyn.clamped_state else jnp.nan)
                 for n, v in dyn.full_state(final).items()}
        residual = jnp.where(alive0, residual, jnp.nan)
    else:
        state = dyn.full_state(final)
    out = Relaxation(
        state=state,
        converged=(residual <= tolerance) & finite,
        residual=residual,
        tolerance=jnp.broadcast_to(tolerance, residual.shape),
        finite=finite,
        **extras,
    )

    if raise_nonfinite and not isinstance(finite, jax.core.Tracer):
        bad = ~np.asarray(finite)
        if bad.any():
            layers = [n for n, v in state.items() if not bool(jnp.all(jnp.isfinite(v)))]
            where = f" in samples {np.argwhere(bad).tolist()}" if batch else ""
            raise NonFiniteStateError(
                f"relaxation produced a non-finite state in layer(s) {layers}{where} (stopped at "
                f"step {int(out.num_steps)}); try a smaller dt0, an adaptive solver, or check "
                "the weights"
            )
    return out


def _adaptive(solver, stop, controller) -> bool:
    """Whether ``method="ode"`` with these settings controls its step size."""
    return (isinstance(_solver("tsit5" if solver is None else solver),
                       diffrax.AbstractAdaptiveSolver)
            and not isinstance(stop, FixedSteps)
            and not isinstance(controller, diffrax.ConstantStepSize))


def _rows(flags: Array, v: Array, layer_ndim: int) -> Array:
    """A per-sample flag broadcast against a layer's batched state."""
    return flags.reshape(flags.shape + (1,) * layer_ndim)


def _method(method) -> tuple[str, Any]:
    """``(kind, steady-state solver or None)``."""
    if isinstance(method, Anderson):
        return "anderson", method
    if method == "ode":
        return "ode", None
    if method == "anderson":
        return "anderson", Anderson()
    if method == "fixed_point":
        return "fixed_point", Anderson(history=1)
    if method in ("root", "minimise", "minimize"):
        return ("minimise" if method == "minimize" else method), None
    raise ValueError(f"unknown method {method!r}; use 'ode', 'anderson', 'fixed_point', 'root', "
                     "'minimise' or hamjax.solvers.Anderson(...)")


# ------------------------------------------------------------------ the ODE path
def _relax_ode(dyn, x_free, stop, adjoint, max_steps, *, solver, dt0, stepsize_controller,
               save, save_ts, progress):
    solver = _solver("tsit5" if solver is None else solver)
    dt0 = 0.1 if dt0 is None else dt0
    save = "final" if save is None else save
    progress = bool(progress)
    controller = stepsize_controller
    adaptive = _adaptive(solver, stop, controller)
    if controller is None:
        if not adaptive:
            controller = diffrax.ConstantStepSize()
        elif isinstance(stop, SteadyState):
            controller = _steady_controller(stop, _batch_ndim(dyn, x_free))
        else:
            controller = diffrax.PIDController(
                rtol=1e-3, atol=1e-6, norm=PerSampleRMS(_batch_ndim(dyn, x_free))
            )
    if isinstance(stop, FixedSteps):
        if not isinstance(controller, diffrax.ConstantStepSize):
            raise ValueError("FixedSteps takes a constant step size; drop stepsize_controller")
        if stop.n < 1:
            raise ValueError(f"FixedSteps needs n >= 1, got {stop.n}")
        max_steps = stop.n
        if isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint) and adjoint.checkpoints is None:
            # The step count is known: keep every step for the backward pass, as a hand-written
            # scan does. diffrax's default, O(√n) checkpoints, recomputes the forward pass and
            # made a 20-step BPTT gradient 3.0× the hand-written one (1.7× with this; n states
            # is what any BPTT through n steps stores anyway).
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=stop.n)
    if isinstance(adjoint, diffrax.ImplicitAdjoint | ImplicitSteadyState):
        if not isinstance(stop, SteadyState):
            raise ValueError(
                "the implicit adjoint differentiates at a steady state: use SteadyState"
            )
        if save != "final":
            raise ValueError("the implicit adjoint only supports save='final'")
    if isinstance(stop, SteadyState) and math.isinf(stop.t_max) and save_ts is not None:
        raise ValueError("save_ts needs a finite end time: give SteadyState a t_max")
    if (
        isinstance(stop, FixedSteps)
        and type(adjoint) is diffrax.RecursiveCheckpointAdjoint
        and adjoint.checkpoints == stop.n
        and save_ts is None
        and not progress
    ):
        return _fixed_steps(dyn, x_free, solver, stop.n, dt0, save)
    saveat, want_x, want_e = _save_spec(save, save_ts)
    cfg = (solver, controller, stop, dt0, max_steps, saveat, progress)
    if isinstance(adjoint, ImplicitSteadyState):
        final, sol = _at_steady_state(_ode_forward, dyn, x_free, cfg, adjoint,
                                      _batch_ndim(dyn, x_free))
        sol = eqx.tree_at(
            lambda s: s.ys, sol, jax.tree.map(lambda v: v[None], final), is_leaf=lambda v: v is None
        )
    else:
        sol = _solve(dyn, x_free, solver, controller, stop, adjoint, dt0, max_steps, saveat,
                     progress)

    if save == "final":
        final = jax.tree.map(lambda v: v[-1], sol.ys)
        ts = traj = energies = None
    else:
        final = jax.tree.map(lambda v: v[-1], sol.ys[0])
        ts = sol.ts[1]
        traj = sol.ys[1].get("x") if want_x else None
        traj = dyn_full_traj(dyn, traj) if traj is not None else None
        energies = sol.ys[1].get("energy") if want_e else None

    num_steps = sol.stats["num_steps"]
    evals = _evaluations(solver, num_steps, steady_test=isinstance(stop, SteadyState))
    extras = dict(
        steps=sol.stats["num_accepted_steps"],
        num_steps=num_steps,
        evaluations=evals,
        t_final=sol.ts[0][-1] if save != "final" else sol.ts[-1],
        result=sol.result,
        ts=ts,
        trajectory=traj,
        energies=energies,
    )
    return final, extras


def _steady_controller(stop: SteadyState, batch_ndim: int) -> diffrax.PIDController:
    """The step-size control of an adaptive solve to a steady state.

    The residual an adaptive solver can reach is ~ its error tolerance: a looser controller
    (rtol 1e-3, say) stalls at |dx/dt| ~ 1e-3·|x| and never stops. Tie the two, as diffrax's
    steady_state_event does the other way round. The error norm is the worst sample's RMS, not
    the RMS over the whole batch: with the latter one sample's local error may be √batch times
    the tolerance, and a batch of 128 stalls at residuals ~3e-3 while the stopping test asks
    1e-4 of each. A local-error tolerance a tenth of the residual asked for: at 1× the solver
    can sit at its stability limit with residuals hovering around atol; at 0.1× it rejects
    fewer steps and, measured on a 784-512-10 HAM, needs ~10 % fewer evaluations."""
    return diffrax.PIDController(rtol=0.1 * stop.rtol, atol=0.1 * stop.atol,
                                 norm=PerSampleRMS(batch_ndim))


def _within(dyn, force, x, stop) -> Array:
    """Per sample: ``rms(force) ≤ atol + rtol·rms(x)`` (False for a NaN residual)."""
    return _rms(dyn, force) <= stop.atol + stop.rtol * _rms(dyn, x)


def _recorder(save):
    """``(record(y, dyn) -> dict, want_x, want_e)``: what a saved step keeps."""
    if save not in ("final", "trajectory", "energy", "both"):
        raise ValueError(f"save must be 'final', 'trajectory', 'energy' or 'both', got {save!r}")
    want_x = save in ("trajectory", "both")
    want_e = save in ("energy", "both")

    def record(y, dyn):
        out = {}
        if want_x:
            out["x"] = y
        if want_e:
            out["energy"] = dyn.net.energy(dyn.full_state(y))
        return out

    return record, want_x, want_e


def _save_spec(save, ts):
    record, want_x, want_e = _recorder(save)
    if save == "final":
        return diffrax.SaveAt(t1=True), False, False

    def fn(t, y, dyn):
        return record(y, dyn)

    sub = (
        diffrax.SubSaveAt(ts=ts, fn=fn)
        if ts is not None
        else diffrax.SubSaveAt(t0=True, steps=True, fn=fn)
    )
    return diffrax.SaveAt(subs=[diffrax.SubSaveAt(t1=True), sub]), want_x, want_e


@eqx.filter_jit
def _solve(dyn, x_free, solver, controller, stop, adjoint, dt0, max_steps, saveat, progress):
    term = diffrax.ODETerm(lambda t, y, d: d(y))

    # Samples are independent: the solve stops when every sample has converged or gone
    # non-finite (one NaN sample neither stops the batch nor counts as converged).
    if isinstance(stop, SteadyState):
        t1 = stop.t_max

        def cond_fn(t, y, d, **kwargs):
            return jnp.all(_within(d, _force(d, d(y)), y, stop) | ~_finite(d, y))

        event = diffrax.Event(cond_fn)
    else:
        t1 = stop.t1 if isinstance(stop, FixedTime) else stop.n * dt0

        def cond_fn(t, y, d, **kwargs):
            return jnp.all(~_finite(d, y))

        # ImplicitAdjoint needs a steady-state event; other stops get only the NaN guard
        event = None if isinstance(adjoint, diffrax.ImplicitAdjoint) else diffrax.Event(cond_fn)

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
    hand-written BPTT loop does: a 20-step BPTT gradient went from 1.8× to ~1.0× the hand-written
    one (``python -m benchmarks --only training``). The numbers are the same steps of the same
    solver. A non-finite state is not stopped at (a scan cannot stop), it stays non-finite and
    is flagged; ``num_steps`` counts the steps up to the first non-finite state."""
    term = diffrax.ODETerm(lambda t, y, d: d(y))
    dt = jnp.asarray(dt0, jnp.result_type(float))
    record, want_x, want_e = _recorder(save)

    def body(carry, i):
        y, state, ok_steps = carry
        t0 = i * dt
        y1, _, _, state, _ = solver.step(term, t0, t0 + dt, y, dyn, state, made_jump=False)
        # steps taken while the state was finite, the one that broke it included
        ok_steps = ok_steps + jnp.all(_finite(dyn, y)).astype(ok_steps.dtype)
        return (y1, state, ok_steps), record(y1, dyn)

    state0 = solver.init(term, dt * 0, dt, x_free, dyn)
    carry = (x_free, state0, jnp.asarray(0, jnp.int32))
    (final, _, ok_steps), ys = jax.lax.scan(body, carry, jnp.arange(n))
    finite = jnp.all(_finite(dyn, final))
    num_steps = jnp.where(finite, n, ok_steps)
    evals = _evaluations(solver, num_steps, steady_test=False)
    ts = traj = energies = None
    if save != "final":
        ts = jnp.arange(n + 1) * dt
        first = record(x_free, dyn)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, ys)
        traj = dyn_full_traj(dyn, ys["x"]) if want_x else None
        energies = ys["energy"] if want_e else None
    result = diffrax.RESULTS.where(finite, diffrax.RESULTS.successful,
                                   diffrax.RESULTS.event_occurred)
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


def dyn_full_traj(dyn: ClampedDynamics, traj: Mapping[str, Array]) -> dict[str, Array]:
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


# ------------------------------------------------------------------ the steady-state methods
def _at_steady_state(forward, dyn, x_init, cfg, adjoint: ImplicitSteadyState, batch_ndim: int):
    """``forward(dyn, x_init, cfg) -> (x*, extras)``, differentiated by the implicit function
    theorem on ``F(x*; dyn, x_init) = 0`` (:func:`_steady_force`) with the adjoint's linear
    solver; the forward itself is never differentiated. ``x_init`` matters only where neurons
    are frozen (elsewhere a steady state does not depend on where it began).

    A sample whose forward ended non-finite is linearised at its (finite) start instead and
    returned as NaN: the adjoint system is block diagonal, so a NaN row would otherwise turn
    every sample's gradient NaN through ``∂F/∂θ``, even with a zero cotangent (0·NaN)."""
    linear_solver = with_batch_ndim(adjoint.linear_solver, batch_ndim)
    root, (extras, bad) = optxi.implicit_jvp(
        _implicit_primal, _implicit_rewrite, (dyn, x_init, (forward, cfg, batch_ndim)),
        frozenset(), linear_solver)
    root = {n: jnp.where(_rows(bad, v, v.ndim - batch_ndim), jnp.nan, v) for n, v in root.items()}
    return root, extras


def _implicit_primal(inputs):
    dyn, x_init, (forward, cfg, batch_ndim) = inputs
    final, extras = forward(dyn, x_init, cfg)
    bad = ~_finite(dyn, final)
    final = {n: jnp.where(_rows(bad, v, v.ndim - batch_ndim), x_init[n], v)
             for n, v in final.items()}
    return final, (extras, bad)


def _implicit_rewrite(root, _extras, inputs):
    dyn, x_init, _ = inputs
    return _steady_force(dyn, root, x_init)


def _fixed_point_map(y, args):
    """``x ← x + F(x) = c + I`` (frozen neurons: their initial values)."""
    dyn, x_init = args
    f = _steady_force(dyn, y, x_init)
    return {n: y[n] + f[n] for n in y}


def _steady_forward(dyn, x_free, cfg):
    kind, solver, stop, max_steps, nb = cfg
    if kind in ("anderson", "fixed_point"):
        if solver.atol is not None or solver.rtol is not None:
            raise ValueError("give the tolerance once, in stop=SteadyState(atol=..., rtol=...),"
                             " not in the Anderson solver")
        solver = with_batch_ndim(eqx.tree_at(lambda s: (s.atol, s.rtol), solver,
                                             (stop.atol, stop.rtol),
                                             is_leaf=lambda v: v is None), nb)
        # never differentiated here: relax differentiates at the steady state (_at_steady_state)
        sol = optx.fixed_point(_fixed_point_map, solver, x_free, args=(dyn, x_free),
                               max_steps=max_steps, throw=False)
        x, ode_evals, ode_ok = _finish_by_ode(dyn, sol.value, x_free, stop, max_steps)
        n = sol.stats["num_steps"] + ode_evals
        result = diffrax.RESULTS.where(ode_ok, _optx_result(sol),
                                       diffrax.RESULTS.max_steps_reached)
        return x, dict(steps=n, num_steps=n, evaluations=n, t_final=jnp.asarray(jnp.nan),
                       result=result)
    if kind == "root":
        sol = optx.root_find(lambda y, d: d(y), optx.Newton(rtol=1e-6, atol=stop.atol * 1e-2),
                             x_free, args=dyn, max_steps=max_steps, throw=False,
                             adjoint=optx.RecursiveCheckpointAdjoint())
        x = sol.value
    else:
        net = dyn.net

        def total_energy(y, d):
            return jnp.sum(net.energy(d.full_state(y)))

        sol = optx.minimise(total_energy, optx.BFGS(rtol=1e-7, atol=stop.atol * 1e-2), x_free,
                            args=dyn, max_steps=max_steps, throw=False,
                            adjoint=optx.RecursiveCheckpointAdjoint())
        y = sol.value
        # one fixed-point step x ← c(g(x)) + I: the minimiser may sit anywhere on a dead-neuron
        # flat set; the step lands on the steady state with the same activations (Prop. 4)
        f = _force(dyn, dyn(y))
        x = {n: y[n] + f[n] for n in dyn.free}
    steps = sol.stats["num_steps"]
    return x, dict(steps=steps, num_steps=steps, evaluations=jnp.asarray(-1),
                   t_final=jnp.asarray(jnp.nan), result=_optx_result(sol))


def _finish_by_ode(dyn, x, x_init, stop: SteadyState, max_steps: int):
    """``(x, evaluations, ok)``: samples an iteration left above tolerance (but finite) relaxed
    on by the dynamics (Tsit5, adaptive, to the same ``stop``) from where the iteration left
    them; ``ok`` is False when that solve ran out of steps. The synchronous update can cycle
    between the linear pieces of a ReLU network where the ODE settles. The samples already
    converged are frozen meanwhile: left free, those sitting just under the tolerance drift
    above it and back, and the batch took 3× the steps (107 against 38, digits, 359 samples).
    Runs only when some sample needs it."""
    force = _steady_force(dyn, x, x_init)
    fine = _within(dyn, force, x, stop) | ~_finite(dyn, force)

    def ode(x):
        inner, masks = (dyn.dyn, dyn.masks) if isinstance(dyn, Frozen) else (dyn, {})
        nb = _batch_ndim(dyn, x)
        hold = {n: masks.get(n, False) | fine.reshape(fine.shape + (1,) * (v.ndim - nb))
                for n, v in x.items()}
        held = Frozen(inner, {n: jnp.broadcast_to(m, x[n].shape) for n, m in hold.items()})
        controller = _steady_controller(stop, nb)
        solver = diffrax.Tsit5()
        sol = _solve(held, x, solver, controller, stop, diffrax.RecursiveCheckpointAdjoint(),
                     0.1, max_steps, diffrax.SaveAt(t1=True), False)
        final = jax.tree.map(lambda v: v[-1], sol.ys)
        evals = _evaluations(solver, sol.stats["num_steps"], steady_test=True)
        return final, jnp.asarray(evals, jnp.int32), sol.result != diffrax.RESULTS.max_steps_reached

    def keep(x):
        return x, jnp.asarray(0, jnp.int32), jnp.asarray(True)

    return jax.lax.cond(jnp.all(fine), keep, ode, x)


def _optx_result(sol) -> diffrax.RESULTS:
    return diffrax.RESULTS.where(
        sol.result == optx.RESULTS.successful,
        diffrax.RESULTS.successful,
        diffrax.RESULTS.max_steps_reached,
    )
