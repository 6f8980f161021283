"""The outcome of a relaxation, per sample: hamjax's own enumeration, so that a code means the
same whichever solver (diffrax's or optimistix's) produced it, jitted or not."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array

__all__ = ["RESULTS"]


class RESULTS(eqx.Enumeration):
    """How each sample's relaxation ended: the ``result`` of a :class:`hamjax.Relaxation`, shape
    ``batch``.

    * ``successful``: the solver stopped as asked (at the steady state, ``t1`` or after ``n``
      steps); whether the state is a steady state is ``converged``;
    * ``max_steps_reached``: out of steps (``max_steps``) first;
    * ``nonfinite``: the state became (or started) NaN or infinite;
    * ``solver_failed``: the solver gave up otherwise: diffrax's step size underflowed or its
      implicit step failed, optimistix's Newton step was singular or diverged, a line search
      failed. Compare with ``==``: ``sol.result == hj.RESULTS.max_steps_reached``."""

    successful = ""
    max_steps_reached = ("the relaxation ran out of steps (max_steps) before it stopped: raise "
                         "max_steps, or check that the dynamics settle")
    nonfinite = "the state became NaN or infinite"
    solver_failed = ("the solver gave up (a step size too small, a singular or diverging "
                     "Newton step, a failed line search)")


def _code(value: Array) -> RESULTS:
    """A :data:`RESULTS` item holding the per-sample integer codes ``value``."""
    return eqx.tree_at(lambda r: r._value, RESULTS.successful, jnp.asarray(value, jnp.int32))


def _select(cases, default: RESULTS) -> RESULTS:
    """Per sample, the code of the first ``(pred, code)`` whose ``pred`` holds, else
    ``default``."""
    value = jnp.asarray(default._value)
    for pred, code in reversed(cases):
        value = jnp.where(pred, code._value, value)
    return _code(value)


def from_diffrax(result) -> RESULTS:
    """diffrax's outcome as hamjax's: stopped by its event (a steady state) or at ``t1``:
    successful; out of steps: ``max_steps_reached``; anything else: ``solver_failed``. A
    non-finite state is flagged by :func:`hamjax.relax` itself."""
    ok = (result == diffrax.RESULTS.successful) | (result == diffrax.RESULTS.event_occurred)
    return _select([(ok, RESULTS.successful),
                    (result == diffrax.RESULTS.max_steps_reached, RESULTS.max_steps_reached)],
                   RESULTS.solver_failed)


def from_optimistix(result) -> RESULTS:
    """optimistix's outcome as hamjax's: successful, ``max_steps_reached``, or
    ``solver_failed`` (singular, diverged, a failed line search, ...)."""
    return _select([(result == optx.RESULTS.successful, RESULTS.successful),
                    (result == optx.RESULTS.max_steps_reached, RESULTS.max_steps_reached)],
                   RESULTS.solver_failed)


def results_where(pred: Array, a: RESULTS, b: RESULTS) -> RESULTS:
    """Per sample, ``a`` where ``pred`` else ``b`` (``RESULTS.where`` takes one predicate for
    the whole batch)."""
    return _select([(pred, a)], b)


def broadcast_result(result: RESULTS, shape) -> RESULTS:
    """An outcome broadcast to one per sample, ``shape``."""
    return _code(jnp.broadcast_to(result._value, shape))
