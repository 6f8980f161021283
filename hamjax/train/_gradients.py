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
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._convergence import FixedSteps, SteadyState
from .._ham import HAM
from .._implicit import ImplicitSteadyState
from .._relax import relax
from ..synapses import Synapse
from ._tasks import Task

__all__ = ["GradientEstimator", "BPTT", "Implicit", "EqProp", "Nudge"]


def _relaxation(net: HAM, task: Task, batch: dict, **kw):
    x0 = task.initial_state(net, batch)
    return relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch), on_nonfinite="flag", **kw)


def _mean_loss_and_metrics(net, task, batch, sol, residual_penalty=0.0):
    ev = task.evaluate(net, sol.state, batch)
    ev["converged"] = sol.converged.astype(jnp.float32)
    loss = jnp.mean(ev["loss"])
    if residual_penalty:
        # ρ·mean |c + I − x|² at the final state: the readout must sit at a fixed point, so the
        # trained network classifies with its attractor, not with a transient of the dynamics
        loss = loss + residual_penalty * jnp.mean(sol.residual**2)
    return loss, ev


_STEADY = ("anderson", "fixed_point", "ode")


def _steady_kwargs(m) -> dict:
    """``relax`` keywords of a steady-state estimator ``m`` (fields ``method``, ``atol``,
    ``max_steps``, ``solver``, ``dt0``)."""
    kw = dict(method=m.method, stop=SteadyState(atol=m.atol), max_steps=m.max_steps)
    if m.method == "ode":
        kw.update(solver=m.solver or "tsit5", dt0=0.25 if m.dt0 is None else m.dt0)
    return kw


def _check_steady(m) -> None:
    name = type(m).__name__
    if m.method not in _STEADY:
        raise ValueError(f"{name}(method=...) must be one of {_STEADY}, got {m.method!r}")
    if m.method != "ode" and (m.solver is not None or m.dt0 is not None):
        raise ValueError(f"{name}(solver=..., dt0=...) apply to method='ode' only; "
                         f"method={m.method!r} iterates the steady-state equations")
    if not m.atol > 0:
        raise ValueError(f"{name}(atol=...) must be positive, got {m.atol}")


class GradientEstimator(eqx.Module):
    """Base class: a relaxation recipe plus a way to differentiate through it (docs/maths.md §5).

    A subclass implements :meth:`relax_kwargs` (how to relax) and :meth:`loss_and_grad` (the
    gradient ``dℓ/dθ`` of the mean loss over a batch), and says with :attr:`steady_state`
    whether its gradient holds only at a converged steady state and with :attr:`needs_key`
    whether it draws random numbers."""

    @abc.abstractmethod
    def relax_kwargs(self) -> dict:
        """Keyword arguments of :func:`hamjax.relax` for this estimator's relaxation (method,
        stopping rule, solver, adjoint): the same for training and evaluation."""

    def relax(self, net: HAM, task: Task, batch: dict):
        """Relax ``net`` from ``task.initial_state(net, batch)`` with the task's clamped layers
        and frozen neurons, non-finite samples flagged: a :class:`hamjax.Relaxation` with batch
        ``(n,)``."""
        return _relaxation(net, task, batch, **self.relax_kwargs())

    @property
    def tolerance(self) -> float:
        """The residual tolerance by which this estimator's relaxations are judged converged."""
        return self.atol

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
    """Backpropagation through time (docs/maths.md §5.2): ``steps`` steps of ``solver`` with
    step ``dt0``; with ``steps=None``, an adaptive solve to a steady state (``atol``, at most
    ``max_steps`` steps), still backpropagated through every step. ``atol`` also judges
    ``converged`` after fixed steps. ``residual_penalty`` ρ adds ``ρ·mean|τẋ|²`` at the final
    state to the loss, so that a fixed number of steps ends at (near) a fixed point: without it
    the network can learn to classify with a transient that later diverges.

    Defaults: 20 Euler steps of 0.25, ``atol=1e-4``, ``max_steps=256``, ``residual_penalty=0``.
    Exact for the computation performed, converged or not; memory grows with the steps."""

    steps: int | None = eqx.field(static=True, default=20)
    dt0: float = eqx.field(static=True, default=0.25)
    solver: str = eqx.field(static=True, default="euler")
    atol: float = eqx.field(static=True, default=1e-4)
    max_steps: int = eqx.field(static=True, default=256)
    residual_penalty: float = eqx.field(static=True, default=0.0)

    def relax_kwargs(self):
        """``solver``, ``dt0``, the stop (``FixedSteps(steps)`` or ``SteadyState(atol)`` with
        ``max_steps``) and ``adjoint="recursive"`` for :func:`hamjax.relax`."""
        if self.steps is None:
            return dict(solver=self.solver, dt0=self.dt0, stop=SteadyState(atol=self.atol),
                        max_steps=self.max_steps, adjoint="recursive")
        return dict(solver=self.solver, dt0=self.dt0, stop=FixedSteps(self.steps, atol=self.atol),
                    adjoint="recursive")

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

    ``method``: how the steady state is found: ``"fixed_point"`` (default: ``x ← c + I``, which
    converges only to stable steady states, the ODE finishing samples it cannot; it jumps to
    ``c + I`` where the ODE follows the transient in small steps, so it needs fewer evaluations
    of the currents: ``python -m benchmarks --only steady_state``),
    ``"anderson"`` (fewer iterations, but its extrapolation can land on an unstable steady
    state, a saddle of the energy that the dynamics would leave: see
    :class:`hamjax.solvers.Anderson`) or ``"ode"`` (the adaptive ``solver``, default Tsit5,
    from step ``dt0``: the dynamics' own path). ``max_steps`` bounds the
    iterations (or ODE steps). ``adjoint``: how the adjoint system is solved: ``"implicit"``
    (default: :class:`hamjax.solvers.Neumann`, Anderson-accelerated where the plain series is
    slow), ``"phantom"`` (a truncated
    series: cheaper, approximate), ``"implicit_dense"`` or an :class:`ImplicitSteadyState`.

    Samples whose relaxation did not converge are left out of the gradient (``used`` in the
    metrics) and of nothing else: the loss reported is the mean over all samples. Bad
    ``method``, ``solver``/``dt0`` with a method other than ``"ode"``, or a non-positive
    ``atol`` raise ``ValueError``."""

    atol: float = eqx.field(static=True, default=1e-4)
    method: str = eqx.field(static=True, default="fixed_point")
    solver: str | None = eqx.field(static=True, default=None)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=1024)
    adjoint: ImplicitSteadyState | str = "implicit"

    def __check_init__(self):
        _check_steady(self)

    @property
    def steady_state(self):
        """True: the implicit gradient holds only at a converged steady state."""
        return True

    def relax_kwargs(self):
        """``method``, ``stop=SteadyState(atol)``, ``max_steps`` (with ``solver``/``dt0`` for
        ``"ode"``) and ``adjoint`` for :func:`hamjax.relax`."""
        return dict(_steady_kwargs(self), adjoint=self.adjoint)

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


class Nudge(Synapse):
    """``E = β · cost(g)``: the cost of a task as an energy term on the output layer, so that the
    nudged dynamics receive the current ``−β ∂cost/∂g`` (equilibrium propagation; docs/maths.md
    §5.4, the nudged energy ``E_β = E + β C``). ``beta`` is a scalar or one value per sample.

    Fields: ``beta``; ``batch``, the prepared batch the cost reads its targets from; ``cost``, a
    per-sample ``cost(g, batch)``; ``shape``, the output layer's shape. :class:`EqProp` builds
    it."""

    # its batch (and a per-sample β) travel with the samples when relax splits a batch
    carries_batch: ClassVar[bool] = True
    beta: jax.Array
    batch: dict
    cost: Callable = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def energy(self, g):
        """``β · cost(g, batch)`` per sample.

        ``g``: ``(n, *shape)``, returns shape ``(n,)``; or one sample, ``shape`` (with
        ``batch`` one sample's, as :func:`hamjax.relax` splits it), returning a scalar: the
        task's cost is written for a batch, so the sample is given a batch axis of 1."""
        if g.ndim == len(self.shape):
            one = jax.tree.map(lambda v: v[None], self.batch)
            return (self.beta * self.cost(g[None], one))[0]
        return self.beta * self.cost(g, self.batch)

    def expected_shapes(self, shapes):
        """``(shape,)``: the output layer.

        ``shapes`` (the shapes offered) is not needed."""
        return (self.shape,)


def _linear_cost(g, batch):
    """``⟨d, g⟩`` per sample, ``d = batch["_cost_direction"]``: a cost linearised at the free
    state (its gradient there, scaled by :func:`_cost_direction`)."""
    d = batch["_cost_direction"]
    return jnp.sum((d * g).reshape(g.shape[0], -1), axis=-1)


def _cost_direction(task: Task, batch: dict, g0):
    """``(d, s)``: the gradient ``c_i = ∂C_i/∂g(g⁰_i)`` of each sample's cost at the free
    state's output activations ``g0`` (``(n, *shape)``), as ``d_i = c_i / s_i`` with
    ``s_i = max(1, |c_i|)`` (``(n,)``): a nudge current of norm at most β whatever the cost's
    slope (the negative log-likelihood's is ``1/g_y``, unbounded), undone by weighting sample
    ``i``'s estimate by ``s_i``."""
    c = jax.grad(lambda g: jnp.sum(task.cost(g, batch)))(g0)
    n = c.shape[0]
    s = jnp.maximum(jnp.sqrt(jnp.sum(c.reshape(n, -1) ** 2, axis=-1)), 1.0)
    return c / s.reshape((n,) + (1,) * (c.ndim - 1)), s


def _nudged(net: HAM, task: Task, batch: dict, beta, kind: str = "cost",
            direction=None) -> HAM:
    """``net`` with ``β · cost`` on the task's output layer (``kind``: ``"cost"``,
    ``"squared_error"`` or ``"linear"``, the latter ``β⟨direction, g⟩`` with ``direction``
    from :func:`_cost_direction`)."""
    out = task.output_layer
    cost = task.cost
    if kind == "squared_error":
        if not hasattr(task, "loss_kind"):
            raise ValueError(f"nudge='squared_error' needs a Classification task, got "
                             f"{type(task).__name__}")
        # the task's own squared error of the label activations, ½|g − onehot(y)|²
        cost = dataclasses.replace(task, loss_kind="mse").cost
    if kind == "linear":
        batch, cost = {**batch, "_cost_direction": direction}, _linear_cost
    nudge = Nudge(jnp.asarray(beta, jnp.float32), batch, cost, net.layers[out].shape)
    return HAM(net.layers, {**net.synapses, "_nudge": nudge}, {**net.edges, "_nudge": (out,)})


class EqProp(GradientEstimator):
    """Equilibrium propagation with nudging strength ``beta`` (Scellier & Bengio; docs/maths.md
    §5.4, eqs. (T5)–(T6)).

    ``beta``: small enough that the nudged steady states stay close and stable. The −β phase of
    a squared-error nudge adds up to ``β·max H_out²`` to the spectrum of ``CH`` (for the Softmax
    label, ``H ≤ β_softmax/4``), which brings a barely stable state towards the edge of
    stability: the larger β, the slower each nudged phase settles (timings in
    ``python -m benchmarks --only steady_state``), while the symmetric estimate's bias is only
    O(β²), so a small β costs little accuracy.

    ``variant``: ``"symmetric"`` (default: nudge by +β and −β, bias O(β²)), ``"one_sided"``
    (+β against the free state, bias O(β), one nudged phase) or ``"random_sign"`` (one-sided
    with the sign of β drawn per sample, Laborieux et al. 2021: the O(β) bias cancels in
    expectation; needs ``key``).

    ``nudge``: the cost added to the energy. ``"cost"``: the task's cost itself;
    ``"linear"``: the cost linearised at the free state, ``β ⟨∂C/∂g(g⁰), g⟩``, a constant
    current into the output layer. Only the cost's gradient at the free state enters (T5), so
    the estimate is the gradient of the task's own loss, to O(β²) for the symmetric variant.
    Each sample's current is scaled to norm at most β (its estimate scaled back,
    :func:`_cost_direction`), so both phases stay bounded and near the free state however
    steep the cost; ``"squared_error"``: ``½|g − onehot(y)|²`` on the label activations
    (classification): a different loss from the one reported, kept by name for comparison.
    ``"auto"`` (default): the cost itself, except for the negative log-likelihood
    (``Classification(loss_kind="nll")`` on a Softmax label), nudged ``"linear"``. The NLL
    itself cannot be the nudge: ``−β · (−log g_y)`` makes the energy unbounded below as
    ``g_y → 0`` (the −β phase runs away), and its current ``β/g_y`` is enormous where the
    network is confidently wrong. Cross-entropy on the label activations (``"ce"``) and squared
    errors are nudged by the cost itself: their currents are bounded, and the energy stays
    bounded below for both signs on bounded or quadratic output layers (docs/maths.md §5.4).

    Every phase relaxes to a steady state by ``method`` (as :class:`Implicit`, with its
    ``solver``, ``dt0`` and ``max_steps``): the free phase to residual ``atol``, the nudged
    phases, which start from the free steady state, to ``nudged_atol`` (default
    ``min(atol, 1e-5)``; the one-sided variants relax the free phase to it too, since their
    estimate uses it).
    The estimate is a difference of nudged states that differ by O(β), so they must be
    resolved well below that: on an untrained 784-512-10 classifier with β = 0.05 nudged
    phases relaxed to 1e-4 give an estimate at cosine 0.95 to the implicit gradient, to 1e-5
    at 0.999, for about twice the iterations. A sample any of whose needed phases did not
    converge is left out of the gradient;
    ``converged`` (free phase), ``converged_nudged`` and ``used`` report it per sample. Bad
    ``variant``, ``nudge``, ``method`` or a non-positive ``beta`` or ``atol`` raise
    ``ValueError``."""

    beta: float = eqx.field(static=True, default=0.05)
    variant: str = eqx.field(static=True, default="symmetric")
    nudge: str = eqx.field(static=True, default="auto")
    atol: float = eqx.field(static=True, default=1e-4)
    method: str = eqx.field(static=True, default="fixed_point")
    solver: str | None = eqx.field(static=True, default=None)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=1024)
    nudged_atol: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        _check_steady(self)
        if self.nudged_atol is not None and not self.nudged_atol > 0:
            raise ValueError(f"EqProp(nudged_atol=...) must be positive, got {self.nudged_atol}")
        if self.variant not in ("symmetric", "one_sided", "random_sign"):
            raise ValueError("EqProp variant must be 'symmetric', 'one_sided' or 'random_sign',"
                             f" got {self.variant!r}")
        if self.nudge not in ("auto", "cost", "linear", "squared_error"):
            raise ValueError(f"EqProp nudge must be 'auto', 'cost', 'linear' or "
                             f"'squared_error', got {self.nudge!r}")
        if not self.beta > 0:
            raise ValueError(f"EqProp beta must be positive, got {self.beta}")

    @property
    def steady_state(self):
        """True: the estimate holds only at converged steady states."""
        return True

    @property
    def nudged_tolerance(self) -> float:
        """The residual the nudged phases relax to: ``nudged_atol``, or ``min(atol, 1e-5)``."""
        return min(self.atol, 1e-5) if self.nudged_atol is None else self.nudged_atol

    @property
    def needs_key(self):
        """True for ``variant="random_sign"``, which draws the sign of β per sample."""
        return self.variant == "random_sign"

    def relax_kwargs(self):
        """``method``, ``stop=SteadyState(atol)`` and ``max_steps`` (with ``solver``/``dt0``
        for ``"ode"``) for :func:`hamjax.relax`: every phase relaxes the same way."""
        return _steady_kwargs(self)

    def _nudge(self, task: Task) -> str:
        if self.nudge != "auto":
            return self.nudge
        return "linear" if getattr(task, "loss_kind", None) == "nll" else "cost"

    def loss_and_grad(self, net, task, batch, *, key=None):
        """``(mean loss, grads, metrics)``: the free phase's loss, the estimate (T6) of the
        gradient over the samples ``used`` (divided by ``n``), and the metrics with
        ``converged``, ``converged_nudged`` and ``used``. ``key``: a PRNG key, required by
        ``variant="random_sign"`` (else ``ValueError``)."""
        net = jax.lax.stop_gradient(net)
        if self.variant == "symmetric":
            free = self.relax(net, task, batch)
        else:  # the free state enters the one-sided estimate: resolved like the nudged ones
            free = _relaxation(net, task, batch, **dict(
                self.relax_kwargs(), stop=SteadyState(atol=self.nudged_tolerance)))
        ev = task.evaluate(net, free.state, batch)
        loss = jnp.mean(ev["loss"])
        n = free.converged.shape[0]
        out = task.output_layer
        kind = self._nudge(task)
        direction, scale = None, jnp.ones((n,), jnp.float32)
        if kind == "linear":
            g0 = net.layers[out].activation(free.state[out])
            direction, scale = _cost_direction(task, batch, g0)

        def phase(beta):
            nudged = _nudged(net, task, batch, beta, kind, direction)
            kw = dict(self.relax_kwargs(), stop=SteadyState(atol=self.nudged_tolerance))
            return relax(nudged, free.state, clamp=task.clamp, freeze=task.frozen(batch),
                         on_nonfinite="flag", **kw)

        if self.variant == "symmetric":
            plus, minus = phase(self.beta), phase(-self.beta)
            nudged_ok = plus.converged & minus.converged
            used = nudged_ok
            coef = used * scale / (2.0 * self.beta * n)
            states = (plus.state, minus.state)
        else:
            if self.variant == "random_sign":
                if key is None:
                    raise ValueError("EqProp(variant='random_sign') draws the sign of β per "
                                     "sample: pass key= (fit and train_step do)")
                beta = self.beta * jax.random.rademacher(key, (n,), jnp.float32)
            else:
                beta = jnp.full((n,), self.beta, jnp.float32)
            plus = phase(beta)
            nudged_ok = plus.converged
            used = nudged_ok & free.converged
            coef = used * scale / (beta * n)
            states = (plus.state, free.state)

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
