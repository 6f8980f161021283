"""Gradient estimators: how the gradient of a loss on a relaxed state reaches the parameters
(docs/maths.md §5).

* :class:`BPTT`: backpropagation through the solver's steps (``RecursiveCheckpointAdjoint``).
* :class:`Implicit`: implicit function theorem at the steady state ``F(x*; θ) = 0``:
  ``dℓ/dθ = −(∂ℓ/∂x*) (∂F/∂x)⁻¹ ∂F/∂θ``; memory independent of the number of steps. The
  steady state is found by the fixed-point iteration ``x ← c + I`` (ODE fallback) and the
  adjoint system by a fixed-point (Neumann) iteration: both contract in a few steps at a
  stable steady state, and neither can settle on an unstable one.
* :class:`EqProp`: equilibrium propagation (Scellier & Bengio 2017). Relax freely to ``x⁰``,
  then with the cost added to the energy, ``E + β C``, to ``x^β`` (and ``x^{−β}``):
  ``dℓ/dθ ≈ [∂E/∂θ(x^β) − ∂E/∂θ(x^{−β})] / (2β)`` (symmetric nudging, error O(β²)),
  ``[∂E/∂θ(x^β) − ∂E/∂θ(x⁰)] / β`` (one-sided), or the one-sided estimate with a random sign of
  β per sample (Laborieux et al. 2021: unbiased at first order in expectation, one nudged
  phase). Only energies are differentiated: no backward pass through the dynamics.

Both steady-state estimators leave a sample whose relaxation (any phase) did not converge out of
the gradient and report it in the metrics (``converged``, ``converged_nudged``, ``used``): a
gradient computed at a state that is not a steady state is not the gradient asked for.

Each estimator provides ``relax(net, task, batch)`` (its inference relaxation) and
``loss_and_grad(net, task, batch, *, key=None) -> (loss, grads, per-sample metrics)``; grads have
the structure of ``eqx.filter(net, eqx.is_inexact_array)``; ``key`` (a PRNG key) is used by the
randomised estimators only (``needs_key``).
"""

from __future__ import annotations

import abc
import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._convergence import FixedSteps, SteadyState
from .._ham import HAM
from .._implicit import ImplicitSteadyState
from .._ode import DT0
from .._relax import RelaxOptions, relax
from ..solvers import Anderson, FixedPoint
from ._nudging import (
    AbstractNudgeCost,
    AbstractNudging,
    SymmetricNudging,
    _nudged,
    default_nudge_cost,
)
from ._tasks import Task

__all__ = ["GradientEstimator", "BPTT", "Implicit", "EqProp"]


def _relaxation(net: HAM, task: Task, batch: dict, **kw):
    x0 = task.initial_state(net, batch)
    return relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch), raise_nonfinite=False, **kw)


def _mean_loss_and_metrics(net, task, batch, sol, residual_penalty=0.0):
    ev = task.evaluate(net, sol.state, batch)
    ev["converged"] = sol.converged.astype(jnp.float32)
    loss = jnp.mean(ev["loss"])
    if residual_penalty:
        # ρ·mean |c + I − x|² at the final state: the readout must sit at a fixed point, so the
        # trained network classifies with its attractor, not with a transient of the dynamics
        loss = loss + residual_penalty * jnp.mean(sol.residual**2)
    return loss, ev


# the estimators' default relaxations
_BPTT_DEFAULT = RelaxOptions(solver=diffrax.Euler(), stop=FixedSteps(20), dt0=DT0, max_steps=256)
_STEADY_DEFAULT = RelaxOptions(solver=FixedPoint(), stop=SteadyState(atol=1e-4), max_steps=1024)


def _check_steady(m) -> None:
    """A steady-state estimator's relaxation: a stop at a steady state, a positive tolerance."""
    name, r = type(m).__name__, m.relaxation
    if not isinstance(r, RelaxOptions):
        raise ValueError(f"{name}(relaxation=...) must be a hamjax.RelaxOptions, got {r!r}")
    if r.stop is not None and not r.stop.at_steady_state:
        raise ValueError(f"{name} differentiates at a steady state: its relaxation needs "
                         f"stop=SteadyState(...), not {type(r.stop).__name__}")
    if not r.tolerance > 0:
        raise ValueError(f"{name}: the relaxation's tolerance (SteadyState(atol=...)) must be "
                         f"positive, got {r.tolerance}")


class GradientEstimator(eqx.Module):
    """Base class: a relaxation recipe plus a way to differentiate through it (docs/maths.md §5).

    A subclass implements :meth:`relax_kwargs` (how to relax) and :meth:`loss_and_grad` (the
    gradient ``dℓ/dθ`` of the mean loss over a batch), and says with :attr:`steady_state`
    whether its gradient holds only at a converged steady state and with :attr:`needs_key`
    whether it draws random numbers."""

    @abc.abstractmethod
    def relax_kwargs(self) -> dict:
        """Keyword arguments of :func:`hamjax.relax` for this estimator's relaxation (solver,
        stopping rule, solver, adjoint): the same for training and evaluation."""

    def relax(self, net: HAM, task: Task, batch: dict):
        """Relax ``net`` from ``task.initial_state(net, batch)`` with the task's clamped layers
        and frozen neurons, non-finite samples flagged: a :class:`hamjax.Relaxation` with batch
        ``(n,)``."""
        return _relaxation(net, task, batch, **self.relax_kwargs())

    @property
    def tolerance(self) -> float:
        """The residual tolerance by which this estimator's relaxations are judged converged."""
        return self.relaxation.tolerance

    @property
    def steady_state(self) -> bool:
        """Whether the gradient is only valid at a converged steady state."""
        return False

    @property
    def needs_key(self) -> bool:
        """Whether :meth:`loss_and_grad` needs a PRNG key (False here)."""
        return False

    @abc.abstractmethod
    def loss_and_grad(self, net: HAM, task: Task, batch: dict, *, key=None):
        """``(mean loss, grads, per-sample metrics)`` of ``task`` on a prepared ``batch`` of
        ``n`` samples: a scalar, a PyTree shaped like ``eqx.filter(net, eqx.is_inexact_array)``,
        and a dict of ``(n,)`` arrays (the task's metrics with ``converged``). ``key``: a PRNG
        key, for the estimators that draw random numbers (:attr:`needs_key`)."""


class BPTT(GradientEstimator):
    """Backpropagation through time (docs/maths.md §5.2): reverse-mode autodiff through every
    step of the ``relaxation`` (a :class:`hamjax.RelaxOptions` with a diffrax solver; default
    20 Euler steps of 0.25, ``RelaxOptions(solver=diffrax.Euler(), stop=FixedSteps(20),
    dt0=0.25, max_steps=256)``); with ``stop=SteadyState(atol)``, an adaptive solve to a steady
    state, still backpropagated through every step. The stop's ``atol`` judges ``converged``.
    ``residual_penalty`` ρ (default 0) adds ``ρ·mean|τẋ|²`` at the final state to the loss, so
    that a fixed number of steps ends at (near) a fixed point: without it the network can learn
    to classify with a transient that later diverges.

    Exact for the computation performed, converged or not; memory grows with the steps. A
    relaxation whose solver is not a diffrax solver, or whose adjoint is not a diffrax adjoint,
    raises ``ValueError``."""

    relaxation: RelaxOptions = eqx.field(static=True, default=_BPTT_DEFAULT)
    residual_penalty: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        r = self.relaxation
        if not isinstance(r, RelaxOptions):
            raise ValueError(f"BPTT(relaxation=...) must be a hamjax.RelaxOptions, got {r!r}")
        if not isinstance(r.solver, diffrax.AbstractSolver | None):
            raise ValueError(f"BPTT backpropagates through a diffrax solver's steps, not "
                             f"{type(r.solver).__name__}: use Implicit for a steady-state "
                             "solver")
        if isinstance(r.adjoint, ImplicitSteadyState):
            raise ValueError("BPTT backpropagates through the steps: its relaxation takes a "
                             "diffrax adjoint, not ImplicitSteadyState (that is Implicit)")

    def relax_kwargs(self):
        """The relaxation's keywords for :func:`hamjax.relax`, with the recursive-checkpoint
        adjoint unless it names another."""
        kw = self.relaxation.kwargs()
        kw.setdefault("adjoint", diffrax.RecursiveCheckpointAdjoint())
        return kw

    def loss_and_grad(self, net, task, batch, *, key=None):
        """``(mean loss, grads, metrics)`` by reverse-mode autodiff through every solver step
        (plus the residual penalty); ``key`` is not used."""
        def f(net):
            sol = self.relax(net, task, batch)
            return _mean_loss_and_metrics(net, task, batch, sol, self.residual_penalty)

        (loss, metrics), grads = eqx.filter_value_and_grad(f, has_aux=True)(net)
        return loss, grads, metrics


class Implicit(GradientEstimator):
    """Implicit differentiation at the steady state (residual ``atol``; docs/maths.md §5.3,
    eqs. (T2)–(T4)).

    ``relaxation``: how the steady state is found, a :class:`hamjax.RelaxOptions` with
    ``stop=SteadyState(atol)`` (default ``RelaxOptions(solver=FixedPoint(),
    stop=SteadyState(atol=1e-4), max_steps=1024)``). Its solver: :class:`hamjax.solvers.FixedPoint`
    (``x ← c + I``, which converges only to stable steady states, the ODE finishing samples it
    cannot; it jumps to ``c + I`` where the ODE follows the transient in small steps, so it
    needs fewer evaluations of the currents: ``python -m benchmarks --only steady_state``),
    :class:`hamjax.solvers.Anderson` (fewer iterations, but its extrapolation can land on an
    unstable steady state, a saddle of the energy that the dynamics would leave), another
    optimistix steady-state solver, or a diffrax solver (``diffrax.Tsit5()``: the dynamics' own
    path). Its ``adjoint``: an :class:`ImplicitSteadyState`, whose linear solver solves the
    adjoint system (default :class:`hamjax.solvers.Neumann`, Anderson-accelerated where the
    plain series is slow; ``ImplicitSteadyState(PhantomGradient())``: a truncated series,
    cheaper, approximate).

    Samples whose relaxation did not converge are left out of the gradient (``used`` in the
    metrics) and of nothing else: the loss reported is the mean over all samples. A
    relaxation that does not stop at a steady state, whose tolerance is not positive or whose
    adjoint is not an :class:`ImplicitSteadyState` raises ``ValueError``."""

    relaxation: RelaxOptions = eqx.field(static=True, default=_STEADY_DEFAULT)

    def __check_init__(self):
        _check_steady(self)
        adjoint = self.relaxation.adjoint
        if adjoint is not None and not isinstance(adjoint, ImplicitSteadyState):
            raise ValueError(f"Implicit: the relaxation's adjoint must be an "
                             f"ImplicitSteadyState (its linear solver solves the adjoint "
                             f"system), got {adjoint!r}")

    @property
    def steady_state(self):
        """True: the implicit gradient holds only at a converged steady state."""
        return True

    def relax_kwargs(self):
        """The relaxation's keywords for :func:`hamjax.relax`, with the implicit adjoint
        (``ImplicitSteadyState()`` unless it names another)."""
        kw = self.relaxation.kwargs()
        # unconverged samples are masked out of the objective (loss_and_grad): no warning
        kw["adjoint"] = dataclasses.replace(kw.get("adjoint", ImplicitSteadyState()),
                                            on_unconverged=None)
        return kw

    def loss_and_grad(self, net, task, batch, *, key=None):
        """``(mean loss, grads, metrics)``: the gradient of the loss summed over converged
        samples, divided by ``n``, by the implicit function theorem (eq. (T3)); metrics gain
        ``converged`` and ``used``. ``key`` is not used."""
        def f(net):
            sol = self.relax(net, task, batch)
            ev = task.evaluate(net, sol.state, batch)
            used = sol.converged
            # a non-converged sample's loss is not differentiated: where (not a product), so
            # that a NaN sample cannot reach the gradient
            objective = jnp.sum(jnp.where(used, ev["loss"], 0.0)) / used.shape[0]
            ev["converged"] = used.astype(jnp.float32)
            ev["used"] = ev["converged"]
            return objective, (jnp.mean(ev["loss"]), ev)

        (_, (loss, metrics)), grads = eqx.filter_value_and_grad(f, has_aux=True)(net)
        return loss, grads, metrics


class EqProp(GradientEstimator):
    """Equilibrium propagation with nudging strength ``beta`` (Scellier & Bengio; docs/maths.md
    §5.4, eqs. (T5)–(T6)).

    ``beta``: small enough that the nudged steady states stay close and stable. The −β phase of
    a squared-error nudge adds up to ``β·max H_out²`` to the spectrum of ``CH`` (for the Softmax
    label, ``H ≤ β_softmax/4``), which brings a barely stable state towards the edge of
    stability: the larger β, the slower each nudged phase settles (timings in
    ``python -m benchmarks --only steady_state``), while the symmetric estimate's bias is only
    O(β²), so a small β costs little accuracy.

    ``nudging``: which phases are relaxed and differenced, an :class:`AbstractNudging`:
    :class:`SymmetricNudging` (default: +β and −β, bias O(β²)), :class:`OneSidedNudging`
    (+β against the free state, bias O(β), one nudged phase) or :class:`RandomSignNudging`
    (one-sided with the sign of β drawn per sample, Laborieux et al. 2021: the O(β) bias
    cancels in expectation; needs ``key``).

    ``nudge``: the cost added to the energy, an :class:`AbstractNudgeCost`:
    :class:`TaskCost` (the task's cost itself), :class:`LinearisedCost` (the cost linearised
    at the free state, a constant current of norm at most β into the output layer) or
    :class:`SquaredErrorCost` (``½|g − onehot(y)|²`` on the label activations: a different
    loss from the one reported, kept by name for comparison). Default (``None``):
    :func:`default_nudge_cost`, the cost itself except for the negative log-likelihood
    (``Classification(loss_kind="nll")`` on a Softmax label), nudged linearised. The NLL
    itself cannot be the nudge: ``−β · (−log g_y)`` makes the energy unbounded below as
    ``g_y → 0`` (the −β phase runs away). Cross-entropy on the label activations (``"ce"``) and
    squared errors are nudged by the cost itself: their currents are bounded, and the energy
    stays bounded below for both signs on bounded or quadratic output layers (docs/maths.md
    §5.4).

    Every phase relaxes to a steady state by ``relaxation`` (a :class:`hamjax.RelaxOptions`
    with ``stop=SteadyState(atol)``, default as :class:`Implicit`'s, no adjoint: nothing is
    differentiated through a relaxation): the free phase to its residual ``atol``, the nudged
    phases, which start from the free steady state, to ``nudged_atol`` (default
    ``min(atol, 1e-5)``; where the free state enters the estimate (one-sided nudgings) the
    free phase relaxes to it too).
    The estimate is a difference of nudged states that differ by O(β), so they must be
    resolved well below that: on an untrained 784-512-10 classifier with β = 0.05 nudged
    phases relaxed to 1e-4 give an estimate at cosine 0.95 to the implicit gradient, to 1e-5
    at 0.999, for about twice the iterations. A sample any of whose needed phases did not
    converge is left out of the gradient;
    ``converged`` (free phase), ``converged_nudged`` and ``used`` report it per sample.

    ``nudged_solver``: how the nudged phases get there. Default (``None``):
    :class:`hamjax.solvers.Anderson` where ``relaxation`` is a steady-state solver, the
    relaxation's own solver where it is a diffrax one. A nudged phase starts at the free
    steady state, a stable one, and moves O(β) from it: in that nearly linear regime Anderson
    acceleration does what GMRES would on the slowly contracting iteration (the one the
    implicit adjoint solves), in 2–3× fewer iterations (``python -m benchmarks --only
    steady_state``); far from a steady state its extrapolation can land on a saddle, so the
    free phase keeps the relaxation's solver. A ``nudging`` or ``nudge`` of another type (a
    string among them), a bad ``relaxation``, a ``nudged_solver`` the nudged phases' settings
    cannot take, or a non-positive ``beta`` or ``nudged_atol`` raise ``ValueError``."""

    beta: float = eqx.field(static=True, default=0.05)
    nudging: AbstractNudging = eqx.field(static=True, default=SymmetricNudging())
    nudge: AbstractNudgeCost | None = eqx.field(static=True, default=None)
    relaxation: RelaxOptions = eqx.field(static=True, default=_STEADY_DEFAULT)
    nudged_atol: float | None = eqx.field(static=True, default=None)
    nudged_solver: object = eqx.field(static=True, default=None)

    def __check_init__(self):
        _check_steady(self)
        _ = self.nudged_relaxation  # a nudged_solver the phases' settings refuse raises here
        if self.relaxation.adjoint is not None:
            raise ValueError("EqProp differentiates no relaxation: its relaxation takes no "
                             "adjoint")
        if self.nudged_atol is not None and not self.nudged_atol > 0:
            raise ValueError(f"EqProp(nudged_atol=...) must be positive, got {self.nudged_atol}")
        if not isinstance(self.nudging, AbstractNudging):
            raise ValueError("EqProp(nudging=...) must be SymmetricNudging(), OneSidedNudging() "
                             f"or RandomSignNudging() (hamjax.train), got {self.nudging!r}")
        if not isinstance(self.nudge, AbstractNudgeCost | None):
            raise ValueError("EqProp(nudge=...) must be None (the default), TaskCost(), "
                             "LinearisedCost() or SquaredErrorCost() (hamjax.train), got "
                             f"{self.nudge!r}")
        if not self.beta > 0:
            raise ValueError(f"EqProp beta must be positive, got {self.beta}")

    @property
    def steady_state(self):
        """True: the estimate holds only at converged steady states."""
        return True

    @property
    def nudged_tolerance(self) -> float:
        """The residual the nudged phases relax to: ``nudged_atol``, or ``min(atol, 1e-5)``."""
        return (min(self.tolerance, 1e-5) if self.nudged_atol is None
                else self.nudged_atol)

    @property
    def needs_key(self):
        """Whether the nudging draws random numbers (:class:`RandomSignNudging`)."""
        return self.nudging.needs_key

    def relax_kwargs(self):
        """The relaxation's keywords for :func:`hamjax.relax` (the free phase; the nudged ones
        relax by :attr:`nudged_relaxation`)."""
        return self.relaxation.kwargs()

    @property
    def nudged_relaxation(self) -> RelaxOptions:
        """How the nudged phases relax: :attr:`nudged_solver` (or its default) to
        :attr:`nudged_tolerance`, the relaxation's other settings."""
        r = self.relaxation
        solver = self.nudged_solver
        if solver is None:
            steady = r.solver is not None and not isinstance(r.solver, diffrax.AbstractSolver)
            solver = Anderson() if steady else r.solver
        return RelaxOptions(solver=solver, stop=SteadyState(atol=self.nudged_tolerance),
                            max_steps=r.max_steps, dt0=r.dt0)

    def loss_and_grad(self, net, task, batch, *, key=None):
        """``(mean loss, grads, metrics)``: the free phase's loss, the estimate (T6) of the
        gradient over the samples ``used`` (divided by ``n``), and the metrics with
        ``converged``, ``converged_nudged`` and ``used``. ``key``: a PRNG key, required by a
        nudging that draws random numbers (:attr:`needs_key`; else ``ValueError``)."""
        net = jax.lax.stop_gradient(net)
        if not self.nudging.uses_free_state:
            free = self.relax(net, task, batch)
        else:  # the free state enters the estimate: resolved like the nudged ones
            free = _relaxation(net, task, batch, **dict(
                self.relax_kwargs(), stop=SteadyState(atol=self.nudged_tolerance)))
        nudged_kw = self.nudged_relaxation.kwargs()
        ev = task.evaluate(net, free.state, batch)
        loss = jnp.mean(ev["loss"])
        n = free.converged.shape[0]
        nudge = default_nudge_cost(task) if self.nudge is None else self.nudge
        cost, nudge_batch, scale = nudge.prepare(net, task, batch, free.state)

        def phase(beta):
            nudged = _nudged(net, task, nudge_batch, beta, cost)
            return relax(nudged, free.state, clamp=task.clamp, freeze=task.frozen(batch),
                         raise_nonfinite=False, **nudged_kw)

        beta_a, beta_b = self.nudging.strengths(self.beta, n, key)
        a = phase(beta_a)
        if beta_b is None:
            b, beta_b = free, jnp.zeros_like(beta_a)
            nudged_ok = a.converged
        else:
            b = phase(beta_b)
            nudged_ok = a.converged & b.converged
        used = a.converged & b.converged
        coef = used * scale / ((beta_a - beta_b) * n)
        states = (a.state, b.state)

        def estimate(m):
            # Σ_i coef_i [E_i(x_a) − E_i(x_b)]: one backward pass for both energies; a sample
            # left out has coef 0 and its states replaced (a NaN times 0 is still NaN)
            keep = used.reshape((n,))
            safe = [{k: jnp.where(keep.reshape((n,) + (1,) * (v.ndim - 1)), v, 0.0)
                     for k, v in s.items()} for s in states]
            return jnp.sum(coef * (m.energy(safe[0]) - m.energy(safe[1])))

        grads = eqx.filter_grad(estimate)(net)
        ev["converged"] = free.converged.astype(jnp.float32)
        ev["converged_nudged"] = nudged_ok.astype(jnp.float32)
        ev["used"] = used.astype(jnp.float32)
        return loss, grads, ev
