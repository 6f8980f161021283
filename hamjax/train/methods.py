"""Gradient methods: how the gradient of a loss on a relaxed state reaches the parameters.

* :class:`BPTT`: backpropagation through the solver's steps (``RecursiveCheckpointAdjoint``).
* :class:`Implicit`: implicit function theorem at the steady state ``F(x*; θ) = 0``:
  ``dℓ/dθ = −(∂ℓ/∂x*) (∂F/∂x)⁻¹ ∂F/∂θ``; memory independent of the number of steps.
* :class:`EqProp`: equilibrium propagation (Scellier & Bengio 2017). Relax freely to ``x⁰``,
  then with the cost added to the energy, ``E + β C``, to ``x^β`` (and ``x^{−β}``):
  ``dℓ/dθ ≈ [∂E/∂θ(x^β) − ∂E/∂θ(x^{−β})] / (2β)`` (symmetric nudging, error O(β²)), or
  ``[∂E/∂θ(x^β) − ∂E/∂θ(x⁰)] / β`` (one-sided). Only energies are differentiated: no backward
  pass through the dynamics.

Each method provides ``relax(net, task, batch)`` (its inference relaxation) and
``loss_and_grad(net, task, batch) -> (loss, grads, per-sample metrics)``; grads have the
structure of ``eqx.filter(net, eqx.is_inexact_array)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..ham import HAM
from ..relax import FixedSteps, SteadyState, relax
from ..synapses import Synapse
from .tasks import Task

__all__ = ["GradientMethod", "BPTT", "Implicit", "EqProp", "Nudge"]


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


class GradientMethod(eqx.Module):
    """Base class: a relaxation recipe plus a way to differentiate through it."""

    @abc.abstractmethod
    def relax_kwargs(self) -> dict:
        """Keyword arguments of :func:`hamjax.relax` for this method's relaxation."""

    def relax(self, net: HAM, task: Task, batch: dict):
        return _relaxation(net, task, batch, **self.relax_kwargs())

    @abc.abstractmethod
    def loss_and_grad(self, net: HAM, task: Task, batch: dict):
        """``(mean loss, grads, per-sample metrics)``."""


class BPTT(GradientMethod):
    """Backpropagation through time: ``steps`` steps of ``solver`` with step ``dt``; with
    ``steps=None``, an adaptive solve to a steady state (``atol``), still backpropagated
    through every step. ``residual_penalty`` ρ adds ``ρ·mean|τẋ|²`` at the final state to the
    loss, so that a fixed number of steps ends at (near) a fixed point: without it the network
    can learn to classify with a transient that later diverges."""

    steps: int | None = eqx.field(static=True, default=20)
    dt: float = eqx.field(static=True, default=0.25)
    solver: str = eqx.field(static=True, default="euler")
    atol: float = eqx.field(static=True, default=1e-3)
    max_steps: int = eqx.field(static=True, default=256)
    residual_penalty: float = eqx.field(static=True, default=0.0)

    def relax_kwargs(self):
        if self.steps is None:
            return dict(solver=self.solver, dt0=self.dt, stop=SteadyState(atol=self.atol),
                        max_steps=self.max_steps, adjoint="recursive")
        return dict(solver=self.solver, dt0=self.dt, stop=FixedSteps(self.steps),
                    adjoint="recursive")

    def loss_and_grad(self, net, task, batch):
        def f(net):
            sol = self.relax(net, task, batch)
            return _mean_loss_and_metrics(net, task, batch, sol, self.residual_penalty)

        (loss, metrics), grads = eqx.filter_value_and_grad(f, has_aux=True)(net)
        return loss, grads, metrics


class Implicit(GradientMethod):
    """Implicit differentiation at the steady state reached by an adaptive solve (``atol``)."""

    atol: float = eqx.field(static=True, default=1e-4)
    solver: str = eqx.field(static=True, default="tsit5")
    dt: float = eqx.field(static=True, default=0.25)
    max_steps: int = eqx.field(static=True, default=1024)
    dense: bool = eqx.field(static=True, default=False)

    def relax_kwargs(self):
        return dict(solver=self.solver, dt0=self.dt, stop=SteadyState(atol=self.atol),
                    max_steps=self.max_steps,
                    adjoint="implicit_dense" if self.dense else "implicit")

    def loss_and_grad(self, net, task, batch):
        def f(net):
            sol = self.relax(net, task, batch)
            return _mean_loss_and_metrics(net, task, batch, sol)

        (loss, metrics), grads = eqx.filter_value_and_grad(f, has_aux=True)(net)
        return loss, grads, metrics


class Nudge(Synapse):
    """``E = β · cost(g)``: the cost of a task as an energy term on the output layer, so that the
    nudged dynamics receive the current ``−β ∂cost/∂g`` (equilibrium propagation)."""

    beta: jax.Array
    batch: dict
    cost: Callable = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def energy(self, g):
        return self.beta * self.cost(g, self.batch)

    def expected_shapes(self, shapes):
        return (self.shape,)


def _nudged(net: HAM, task: Task, batch: dict, beta) -> HAM:
    out = task.output_layer
    nudge = Nudge(jnp.asarray(beta, jnp.float32), batch, task.cost, net.layers[out].shape)
    return HAM(net.layers, {**net.synapses, "_nudge": nudge}, {**net.edges, "_nudge": (out,)})


class EqProp(GradientMethod):
    """Equilibrium propagation with nudging strength ``beta``; ``symmetric=True`` nudges both
    ways (±β) and cancels the O(β) bias of the one-sided estimate. Each phase relaxes to a
    steady state (``atol``) with an adaptive solver; the nudged phases start from the free
    steady state."""

    beta: float = eqx.field(static=True, default=0.1)
    symmetric: bool = eqx.field(static=True, default=True)
    atol: float = eqx.field(static=True, default=1e-4)
    solver: str = eqx.field(static=True, default="tsit5")
    dt: float = eqx.field(static=True, default=0.25)
    max_steps: int = eqx.field(static=True, default=1024)

    def relax_kwargs(self):
        return dict(solver=self.solver, dt0=self.dt, stop=SteadyState(atol=self.atol),
                    max_steps=self.max_steps)

    def loss_and_grad(self, net, task, batch):
        net = jax.lax.stop_gradient(net)
        free = self.relax(net, task, batch)
        loss, metrics = _mean_loss_and_metrics(net, task, batch, free)

        def phase(beta):
            nudged = _nudged(net, task, batch, beta)
            return relax(nudged, free.state, clamp=task.clamp, freeze=task.frozen(batch),
                         on_nonfinite="flag", **self.relax_kwargs()).state

        def energy_grad(state):
            return eqx.filter_grad(lambda n: jnp.mean(n.energy(state)))(net)

        g_plus = energy_grad(phase(self.beta))
        if self.symmetric:
            g_minus = energy_grad(phase(-self.beta))
            scale = 1.0 / (2.0 * self.beta)
        else:
            g_minus = energy_grad(free.state)
            scale = 1.0 / self.beta
        grads = jax.tree.map(lambda a, b: (a - b) * scale, g_plus, g_minus)
        return loss, grads, metrics
