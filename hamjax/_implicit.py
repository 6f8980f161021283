"""Differentiating a relaxation at its steady state by the implicit function theorem.

At a steady state ``F(x*; θ) = 0`` with ``F = τ ẋ = c + I − x``, so ``dx*/dθ = −(∂F/∂x)⁻¹ ∂F/∂θ``:
the forward solve is never differentiated and memory does not grow with the number of steps.
Frozen neurons (masked completion) get the row ``x₀ − x`` in ``F``.
"""

from __future__ import annotations

from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix.internal as optxi  # implicit_jvp: the machinery diffrax.ImplicitAdjoint uses
from jaxtyping import Array

from ._convergence import _finite, _rows
from ._ham import HAM, ClampedDynamics
from .solvers import Neumann, PhantomGradient, with_batch_ndim

__all__ = ["ImplicitSteadyState"]


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

    def _hold(self, tree):
        return {n: jnp.where(self.masks[n], 0.0, v) if n in self.masks else v
                for n, v in tree.items()}

    def residual(self, x_free):
        return self._hold(self.dyn.residual(x_free))

    def __call__(self, x_free):
        return self._hold(self.dyn(x_free))


def _steady_force(dyn, x: Mapping[str, Array], x_init: Mapping[str, Array]) -> dict[str, Array]:
    """``F(x) = τ ẋ = c + I − x``, with ``x₀ − x`` on frozen neurons: the function whose zero is
    the steady state. Unlike ``τ ẋ`` itself (zero on frozen rows whatever ``x``), its Jacobian
    is invertible there (``−I``), so the implicit function theorem applies, and it carries the
    dependence of the steady state on the frozen values."""
    if isinstance(dyn, Frozen):
        f = dyn.dyn.residual(x)
        return {n: jnp.where(dyn.masks[n], x_init[n] - x[n], v) if n in dyn.masks else v
                for n, v in f.items()}
    return dyn.residual(x)


class ImplicitSteadyState(eqx.Module):
    """Differentiate a steady state ``F(x*; θ) = 0`` by the implicit function theorem:
    ``dx*/dθ = −(∂F/∂x)⁻¹ ∂F/∂θ`` (docs/maths.md eqs. (T2)–(T3); ``optimistix.implicit_jvp``).
    The forward solve is not differentiated, so memory does not grow with the number of
    relaxation steps. Pass it as ``relax(..., adjoint=ImplicitSteadyState(linear_solver))``;
    ``adjoint="implicit"`` is ``ImplicitSteadyState()``.

    ``F = τ ẋ = c + I − x`` (frozen neurons: ``x₀ − x``), whose Jacobian at a stable steady
    state is ``C H − I``. Dead neurons make ``H`` (and the energy Hessian ``H − HCH``) singular,
    but not ``CH − I``: on a dead direction ``(CH − I) D = −D`` (docs/maths.md §4.5). On trained
    networks ``CH`` is a contraction, so the default linear solver is
    :class:`hamjax.solvers.Neumann` (fixed-point iteration of the adjoint equation, per sample,
    Anderson-accelerated where it is slow); :class:`hamjax.solvers.PhantomGradient` truncates
    it for a cheap approximate gradient; any lineax solver works (``lx.GMRES(...)``;
    ``"implicit_dense"``: a dense least-squares solve that survives a truly singular system, for
    small nets).

    ``linear_solver``: the lineax solver of the adjoint system ``(CH − I)ᵀ λ = ∇ℓ`` (default
    ``Neumann()``); hamjax's own solvers are told the batch axes by :func:`hamjax.relax`."""

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
