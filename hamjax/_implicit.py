"""Differentiating a relaxation at its steady state by the implicit function theorem.

At a steady state ``F(x*; θ) = 0`` with ``F = τ ẋ = c + I − x``, so ``dx*/dθ = −(∂F/∂x)⁻¹ ∂F/∂θ``:
the forward solve is never differentiated and memory does not grow with the number of steps.
Frozen neurons (masked completion) get the row ``x₀ − x`` in ``F``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix.internal as optxi  # implicit_jvp: the machinery diffrax.ImplicitAdjoint uses
from jaxtyping import Array

from ._convergence import _finite, _rows
from .solvers import Neumann, with_batch_ndim

__all__ = ["ImplicitSteadyState", "UnconvergedGradientError", "UnconvergedGradientWarning"]


class UnconvergedGradientWarning(RuntimeWarning):
    """A gradient was taken by the implicit function theorem at a relaxation some of whose
    samples had not converged: for them ``F(x) ≠ 0``, the theorem does not hold, and their
    part of the gradient is off (by tens of percent on a trained classifier stopped early).
    Issued by :class:`ImplicitSteadyState` with ``on_unconverged=UnconvergedGradientWarning``
    (the default). Mask such samples out (``Relaxation.converged``, as
    :class:`hamjax.train.Implicit` does) and pass ``on_unconverged=None``, or relax longer. A
    ``RuntimeWarning``."""


class UnconvergedGradientError(RuntimeError):
    """:class:`UnconvergedGradientWarning` as an error
    (``ImplicitSteadyState(on_unconverged=UnconvergedGradientError)``); inside a compiled
    computation it reaches the caller as the runtime error that carries its text."""


def _steady_force(dyn, x: Mapping[str, Array], x_init: Mapping[str, Array]) -> dict[str, Array]:
    """``F(x) = τ ẋ = c + I − x``, with ``x₀ − x`` on frozen neurons: the function whose zero is
    the steady state. Unlike ``τ ẋ`` itself (zero on frozen rows whatever ``x``), its Jacobian
    is invertible there (``−I``), so the implicit function theorem applies, and it carries the
    dependence of the steady state on the frozen values."""
    f = dyn.residual(x)
    return {n: jnp.where(dyn.frozen[n], x_init[n] - x[n], v) if n in dyn.frozen else v
            for n, v in f.items()}


class ImplicitSteadyState(eqx.Module):
    """Differentiate a steady state ``F(x*; θ) = 0`` by the implicit function theorem:
    ``dx*/dθ = −(∂F/∂x)⁻¹ ∂F/∂θ`` (docs/maths.md eqs. (T2)–(T3); ``optimistix.implicit_jvp``).
    The forward solve is not differentiated, so memory does not grow with the number of
    relaxation steps. Pass it as ``relax(..., adjoint=ImplicitSteadyState(linear_solver))``;
    ``ImplicitSteadyState()`` is the default of the steady-state solvers.

    ``F = τ ẋ = c + I − x`` (frozen neurons: ``x₀ − x``), whose Jacobian at a stable steady
    state is ``C H − I``. Dead neurons make ``H`` (and the energy Hessian ``H − HCH``) singular,
    but not ``CH − I``: on a dead direction ``(CH − I) D = −D`` (docs/maths.md §4.5). On trained
    networks ``CH`` is a contraction, so the default linear solver is
    :class:`hamjax.solvers.Neumann` (fixed-point iteration of the adjoint equation, per sample,
    Anderson-accelerated where it is slow); :class:`hamjax.solvers.PhantomGradient` truncates
    it for a cheap approximate gradient; any lineax solver works (``lx.GMRES(...)``;
    ``lx.AutoLinearSolver(well_posed=False)``: a dense least-squares solve that survives a truly
    singular system, for small nets).

    ``linear_solver``: the lineax solver of the adjoint system ``(CH − I)ᵀ λ = ∇ℓ`` (default
    ``Neumann()``); hamjax's own solvers are told the batch axes by :func:`hamjax.relax`.

    ``on_unconverged``: what a derivative taken at a relaxation with unconverged (finite)
    samples issues, where the theorem does not hold: :class:`UnconvergedGradientWarning`
    (default; or a subclass) is warned with their number when the derivative is computed;
    :class:`UnconvergedGradientError` (or a subclass) is raised (under ``jit`` too, a runtime
    error with the same text); ``None`` is for a caller that masks those samples itself
    (:class:`hamjax.train.Implicit` does). Whichever, :attr:`Relaxation.converged` says which
    samples they are; a relaxation that is not differentiated is never affected. Anything
    else raises ``ValueError``."""

    linear_solver: lx.AbstractLinearSolver = Neumann()
    on_unconverged: type | None = eqx.field(static=True, default=UnconvergedGradientWarning)

    def __check_init__(self):
        kind = self.on_unconverged
        if kind is not None and not (isinstance(kind, type) and issubclass(
                kind, UnconvergedGradientWarning | UnconvergedGradientError)):
            raise ValueError("ImplicitSteadyState(on_unconverged=...) must be "
                             "UnconvergedGradientWarning (warn), UnconvergedGradientError "
                             f"(raise) or None (nothing), got {kind!r}")

def _adjoint(adjoint, ode: bool):
    """The adjoint of a relaxation on the ODE path (``ode``) or a steady-state path: the given
    one, checked, or the path's default (BPTT through the solver; the implicit function
    theorem)."""
    if adjoint is None:
        return diffrax.RecursiveCheckpointAdjoint() if ode else ImplicitSteadyState()
    if isinstance(adjoint, ImplicitSteadyState):
        return adjoint
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        if not ode:
            raise ValueError("a diffrax adjoint differentiates an ODE solve, not a steady-state "
                             "solver: use ImplicitSteadyState(...)")
        return adjoint
    raise ValueError(
        f"adjoint must be a diffrax adjoint (the ODE path) or ImplicitSteadyState(...), got "
        f"{adjoint!r}"
    )


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
    # every leaf a JAX array: an outcome code left a NumPy constant on one trace and traced on
    # another (under shard_map) makes the closure-converted linearisation refuse its inputs
    extras = jax.tree.map(jnp.asarray, extras)
    bad = ~_finite(dyn.net, final)
    final = {n: jnp.where(_rows(bad, v, v.ndim - batch_ndim), x_init[n], v)
             for n, v in final.items()}
    return final, (extras, bad)

def _implicit_rewrite(root, _extras, inputs):
    dyn, x_init, _ = inputs
    return _steady_force(dyn, root, x_init)


def _guard_unconverged(state, off, kind: type | None):
    """``state``, with derivatives that issue ``kind`` (an :class:`UnconvergedGradientWarning`
    or :class:`UnconvergedGradientError` class; ``None``: nothing) where ``off`` (per sample:
    finite but not converged) holds: the check runs only when ``state`` is differentiated,
    forward or reverse."""
    if kind is None:
        return state
    return _guarded(kind, state, off)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _guarded(kind, state, off):
    del off
    return state


@_guarded.defjvp
def _guarded_jvp(kind, primals, tangents):
    state, off = primals
    t_state, _ = tangents
    # a callback, which has an effect: a check on a value (eqx.error_if) would be compiled
    # away with the primal output that grad does not use
    report = functools.partial(_report_unconverged, kind)
    jax.lax.cond(jnp.any(off), lambda k: jax.debug.callback(report, k), lambda k: None,
                 jnp.sum(off))
    return state, t_state


def _report_unconverged(kind: type, n):
    # under vmap the cond above runs both branches: counts of 0 arrive here too
    n = int(np.sum(np.asarray(n)))
    if not n:
        return
    msg = (f"a derivative of relax at a steady state was taken where {n} sample(s) had not "
           "converged: the implicit function theorem does not hold for them (mask them with "
           "Relaxation.converged, relax longer, or pass "
           "ImplicitSteadyState(on_unconverged=None))")
    if issubclass(kind, Exception) and not issubclass(kind, Warning):
        raise kind(msg)
    warnings.warn(msg, kind, stacklevel=2)
