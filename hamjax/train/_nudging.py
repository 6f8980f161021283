"""How equilibrium propagation nudges (docs/maths.md §5.4, eqs. (T5)–(T6)): which nudged phases
it relaxes and differences (:class:`SymmetricNudging`, :class:`OneSidedNudging`,
:class:`RandomSignNudging`), and which cost it adds to the energy with strength β
(:class:`TaskCost`, :class:`LinearisedCost`, :class:`SquaredErrorCost`). :class:`EqProp` holds
one of each; :class:`Nudge` is the cost as an energy term on the output layer.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._ham import HAM
from ..synapses import Synapse
from ._tasks import Task

__all__ = [
    "AbstractNudgeCost",
    "AbstractNudging",
    "LinearisedCost",
    "Nudge",
    "OneSidedNudging",
    "RandomSignNudging",
    "SquaredErrorCost",
    "SymmetricNudging",
    "TaskCost",
]


class AbstractNudging(eqx.Module):
    """Which two states the estimate (T6) of docs/maths.md §5.4 differences: ``x^{β_a}`` and
    ``x^{β_b}``, each the
    steady state of ``E + β C`` reached from the free state ``x⁰`` (``β_b = 0``: the free state
    itself, no second nudged phase), and

        ``dℓ/dθ ≈ [∂E/∂θ(x^{β_a}) − ∂E/∂θ(x^{β_b})] / (β_a − β_b)``,

    per sample. A subclass implements :meth:`strengths`; :attr:`needs_key` says whether it
    draws random numbers, :attr:`uses_free_state` whether ``β_b = 0`` (the free state then
    enters the estimate, and is resolved as tightly as the nudged states)."""

    needs_key: ClassVar[bool] = False
    uses_free_state: ClassVar[bool] = False

    @abc.abstractmethod
    def strengths(self, beta: float, n: int, key=None) -> tuple[Array, Array | None]:
        """``(β_a, β_b)``: per-sample nudging strengths, each of shape ``(n,)``, for nudging
        strength ``beta``; ``β_b`` is ``None`` where the second state is the free state
        (``β_b = 0``; docs/maths.md §5.4). ``key``: a PRNG key, used where :attr:`needs_key`
        holds."""


class SymmetricNudging(AbstractNudging):
    """Nudge by ``+β`` and ``−β`` (Laborieux et al. 2021): ``β_a = β``, ``β_b = −β``, the
    difference divided by ``2β``; the O(β) terms of the two phases cancel, bias O(β²)
    (docs/maths.md §5.4). Two nudged phases."""

    def strengths(self, beta, n, key=None):
        """``(β, −β)``: both of shape ``(n,)``, the same for every sample.

        ``key`` is not used."""
        b = jnp.full((n,), beta, jnp.float32)
        return b, -b


class OneSidedNudging(AbstractNudging):
    """Nudge by ``+β`` against the free state (Scellier & Bengio 2017; docs/maths.md §5.4):
    ``β_a = β``, ``β_b = 0``, bias O(β). One nudged phase."""

    uses_free_state: ClassVar[bool] = True

    def strengths(self, beta, n, key=None):
        """``(β, None)``: ``β`` of shape ``(n,)`` for every sample, against the free state.

        ``key`` is not used."""
        return jnp.full((n,), beta, jnp.float32), None


class RandomSignNudging(AbstractNudging):
    """One-sided nudging with the sign of β drawn per sample (Laborieux et al. 2021;
    docs/maths.md §5.4):
    ``β_a = ±β`` with equal odds, ``β_b = 0``; the O(β) bias cancels in expectation. One
    nudged phase; needs a PRNG key (:func:`hamjax.train.fit` and ``train_step`` pass one)."""

    needs_key: ClassVar[bool] = True
    uses_free_state: ClassVar[bool] = True

    def strengths(self, beta, n, key=None):
        """``(s β, None)`` with ``s`` a Rademacher sign per sample drawn from ``key`` (a
        ``ValueError`` without one)."""
        if key is None:
            raise ValueError("EqProp(nudging=RandomSignNudging()) draws the sign of β per "
                             "sample: pass key= (fit and train_step do)")
        return beta * jax.random.rademacher(key, (n,), jnp.float32), None


class AbstractNudgeCost(eqx.Module):
    """The cost ``C`` added to the energy in the nudged phases, ``E + β C``. A subclass
    implements :meth:`prepare`."""

    @abc.abstractmethod
    def prepare(self, net: HAM, task: Task, batch: dict, free: dict[str, Array]):
        """``(cost, batch, scale)``: the per-sample ``cost(g, batch) -> (n,)`` of the output
        layer's activations ``g`` (``(n, *shape)``), the batch it reads (``batch`` or an
        extension of it), and each sample's weight ``s`` in the estimate (``(n,)``), for the
        free steady state ``free`` of ``net`` on the prepared ``batch`` of ``task``."""


class TaskCost(AbstractNudgeCost):
    """The task's own cost, ``C = task.cost``: the estimate is the gradient of the loss the task
    reports. Suits bounded currents: cross-entropy on the label activations, squared errors
    (docs/maths.md §5.4); not the negative log-likelihood (:class:`LinearisedCost`)."""

    def prepare(self, net, task, batch, free):
        """``(task.cost, batch, 1)``: the task's cost as it is, every sample weighted 1.

        ``net`` and ``free`` are not needed but for the number of samples."""
        n = jax.tree.leaves(free)[0].shape[0]
        return task.cost, batch, jnp.ones((n,), jnp.float32)


class LinearisedCost(AbstractNudgeCost):
    """The task's cost linearised at the free state, ``C = ⟨∂C/∂g(g⁰), g⟩`` (docs/maths.md §5.4,
    eq. (T7)): a constant current
    into the output layer. Only the cost's gradient at the free state enters (T5), so the
    estimate is the gradient of the task's own loss (to O(β²) for symmetric nudging). Each
    sample's current is scaled to norm at most β (its estimate scaled back,
    :func:`_cost_direction`), so both phases stay bounded and near the free state however steep
    the cost: the nudge for the negative log-likelihood, whose ``−β · (−log g_y)`` makes the
    energy unbounded below as ``g_y → 0`` and whose current ``β/g_y`` is enormous where the
    network is confidently wrong."""

    def prepare(self, net, task, batch, free):
        """``(⟨d, g⟩, batch + d, s)`` with ``(d, s)`` from :func:`_cost_direction` at the free
        state's output activations."""
        out = task.output_layer
        g0 = net.layers[out].activation(free[out])
        direction, scale = _cost_direction(task, batch, g0)
        return _linear_cost, {**batch, "_cost_direction": direction}, scale


class SquaredErrorCost(AbstractNudgeCost):
    """``C = ½|g − onehot(y)|²`` on the label activations of a :class:`Classification` task:
    the cost of the original equilibrium-propagation experiments (docs/maths.md §5.4), a
    different loss from the one
    a negative log-likelihood task reports, kept for comparison. Another task raises
    ``ValueError``."""

    def prepare(self, net, task, batch, free):
        """``(the task's squared-error cost, batch, 1)``: ``Classification(loss_kind="mse")``'s
        cost on the same batch, every sample weighted 1."""
        if not hasattr(task, "loss_kind"):
            raise ValueError(f"EqProp(nudge=SquaredErrorCost()) needs a Classification task, "
                             f"got {type(task).__name__}")
        n = jax.tree.leaves(free)[0].shape[0]
        return (dataclasses.replace(task, loss_kind="mse").cost, batch,
                jnp.ones((n,), jnp.float32))


def default_nudge_cost(task: Task) -> AbstractNudgeCost:
    """The cost :class:`EqProp` nudges by when none is given: :class:`LinearisedCost` for the
    negative log-likelihood (``Classification(loss_kind="nll")``), else :class:`TaskCost`."""
    return LinearisedCost() if getattr(task, "loss_kind", None) == "nll" else TaskCost()


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


def _nudged(net: HAM, task: Task, batch: dict, beta, cost: Callable) -> HAM:
    """``net`` with ``β · cost(g, batch)`` on the task's output layer (``cost`` and ``batch``
    from :meth:`AbstractNudgeCost.prepare`)."""
    out = task.output_layer
    nudge = Nudge(jnp.asarray(beta, jnp.float32), batch, cost, net.layers[out].shape)
    return HAM(net.layers, {**net.synapses, "_nudge": nudge}, {**net.edges, "_nudge": (out,)})
