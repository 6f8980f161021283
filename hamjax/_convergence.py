"""When a relaxation stops and whether it converged.

Convergence is judged per sample: sample ``i`` has converged when the root-mean-square over the
free neurons of ``F_A = τ_A ẋ_A = c_A + I_A − x_A`` (the residual of the steady-state equations,
:meth:`hamjax.ClampedDynamics.residual`) is at most ``atol + rtol·rms(x_i)``. Every stopping rule
carries the ``atol``/``rtol`` it is judged by.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._axes import sum_trailing
from ._ham import HAM, ClampedDynamics
from .solvers import _is_zero

__all__ = ["AbstractStop", "FixedSteps", "FixedTime", "NonFiniteStateError", "SteadyState",
           "residual_norm"]


class NonFiniteStateError(FloatingPointError):
    """A relaxation produced (or was given) a NaN or infinite state.

    Raised by :func:`hamjax.relax` with ``raise_nonfinite=True`` (or the default ``None`` on an
    unbatched state); the message names the layers, samples and step. A ``FloatingPointError``."""


# ------------------------------------------------------------------ stopping rules
class AbstractStop(eqx.Module):
    """A stopping rule of :func:`hamjax.relax`: when a relaxation ends, and the tolerance
    ``atol + rtol·rms(x)`` by which :attr:`Relaxation.converged` is judged at its end (the
    per-sample root-mean-square of ``F = τ ẋ = c + I − x``, docs/maths.md §5.1). Each rule
    owns its ``atol`` and ``rtol``: nothing else of a relaxation carries them.

    A rule says, for the ODE path, when the integration ends (:meth:`end_time`), which
    samples are finished (:meth:`finished`: the solve stops when all are), and two facts the
    solve is built from: :attr:`at_steady_state` (it ends where ``F = 0``: what the implicit
    adjoint and the steady-state solvers need) and :attr:`constant_steps` (a fixed number of
    constant steps)."""

    atol: eqx.AbstractVar[float]
    rtol: eqx.AbstractVar[float]
    at_steady_state: ClassVar[bool] = False
    constant_steps: ClassVar[bool] = False

    @abc.abstractmethod
    def end_time(self, dt0: float) -> float:
        """The model time the ODE path integrates to at most (``dt0``: its initial step);
        ``inf`` where only :meth:`finished` ends it."""

    def finished(self, dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> Array:
        """Per sample: whether the ODE path may stop for this sample at state ``x_free``. By
        default only a non-finite sample is finished early (it cannot recover)."""
        return ~_finite(dyn.net, x_free)


class SteadyState(AbstractStop):
    """Stop once every sample's residual ``rms(τ dx/dt) ≤ atol + rtol·rms(x)``, or at ``t1``
    (model time; the ODE path only).

    The residual is ``F = τ ẋ = c + I − x`` of docs/maths.md eq. (T1), its root-mean-square
    taken over the free neurons of each sample (§5.1). ``atol`` (default ``1e-4``) and ``rtol``
    (default 0) set the tolerance; ``t1`` (default ``inf``) bounds the model time. The
    default stopping rule of :func:`hamjax.relax` and the only one of its steady-state
    methods."""

    atol: float = 1e-4
    rtol: float = 0.0
    t1: float = math.inf
    at_steady_state: ClassVar[bool] = True

    def end_time(self, dt0: float) -> float:
        """``t1``: the ODE path stops earlier, where every sample is :meth:`finished`
        (converged or non-finite)."""
        return self.t1

    def finished(self, dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> Array:
        """Per sample: converged (``rms(F) ≤ atol + rtol·rms(x)``, docs/maths.md §5.1) or
        non-finite."""
        return _within(dyn, dyn.residual(x_free), x_free, self) | ~_finite(dyn.net, x_free)

class FixedTime(AbstractStop):
    """Integrate from 0 to ``t1`` (model time, in units of the layers' ``tau``). ``atol`` and
    ``rtol`` only judge :attr:`Relaxation.converged` at the end (``rms(F) ≤ atol +
    rtol·rms(x)`` per sample, docs/maths.md §5.1). The ODE path only (a diffrax ``solver``)."""

    t1: float
    # keyword-only: the abstract tolerances come first in the field order
    atol: float = eqx.field(default=1e-4, kw_only=True)
    rtol: float = eqx.field(default=0.0, kw_only=True)

    def end_time(self, dt0: float) -> float:
        """``t1``, whatever ``dt0``: the ODE path integrates to it (a non-finite sample alone
        does not stop the others)."""
        return self.t1

class FixedSteps(AbstractStop):
    """Take exactly ``n`` steps of size ``dt0`` (constant step size): the classic unrolled loop.
    ``atol`` and ``rtol`` only judge :attr:`Relaxation.converged` at the end (``rms(F) ≤ atol +
    rtol·rms(x)`` per sample, docs/maths.md §5.1). The ODE path only (a diffrax ``solver``)."""

    n: int
    # keyword-only: the abstract tolerances come first in the field order
    atol: float = eqx.field(default=1e-4, kw_only=True)
    rtol: float = eqx.field(default=0.0, kw_only=True)
    constant_steps: ClassVar[bool] = True

    def __check_init__(self):
        if not self.n >= 1:
            raise ValueError(f"FixedSteps needs n >= 1, got {self.n}")

    def end_time(self, dt0: float) -> float:
        """``n · dt0``: ``n`` constant steps of ``dt0`` (a non-finite sample alone does not stop
        the others)."""
        return self.n * dt0

def _stop(stop) -> AbstractStop:
    if isinstance(stop, AbstractStop):
        return stop
    raise ValueError(f"stop must be a stopping rule (SteadyState(...), FixedTime(t1), "
                     f"FixedSteps(n)), got {stop!r}")


# ------------------------------------------------------------------ per-sample tests
def _batch_ndim(dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> int:
    n = dyn.free[0]
    return x_free[n].ndim - dyn.net.layers[n].ndim


def _per_sample_sq(dyn: ClampedDynamics, tree: Mapping[str, Array]) -> Array:
    return sum(sum_trailing(v * v, dyn.net.layers[n].ndim) for n, v in tree.items())


def _num_free(dyn: ClampedDynamics) -> int:
    return sum(dyn.net.layers[n].size for n in dyn.free)


def residual_norm(dyn: ClampedDynamics, x_free: Mapping[str, Array]) -> Array:
    """Per-sample root-mean-square over the free neurons of ``F = τ ẋ = c + I − x``: the
    residual of the steady-state equations (docs/maths.md eq. (T1)), independent of the time
    constants. NaN for a non-finite sample.

    ``dyn``: a :class:`hamjax.ClampedDynamics` (:meth:`hamjax.HAM.dynamics`); ``x_free``: its
    free layers' states, ``{name: (*batch, *shape)}``. Returns shape ``batch``."""
    return _rms(dyn, dyn.residual(x_free))


def _rms(dyn, tree):
    ms = _per_sample_sq(dyn, tree) / _num_free(dyn)
    # sqrt with a zero gradient at zero: a memory model lands exactly on a stored pattern (a
    # hard softmax in float32), where d sqrt = inf would turn a residual penalty's gradient NaN.
    # A NaN stays NaN (a non-finite sample must never read as residual 0).
    pos = ms > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ms, 1.0)), jnp.where(ms == 0, 0.0, ms))



def _finite(net: HAM, tree: Mapping[str, Array]) -> Array:
    """Per sample: every layer of ``tree`` (a state of some of ``net``'s layers) finite.

    Written ``isfinite(Σ 0·v)`` (``0·v`` is NaN exactly where ``v`` is not finite) rather than
    ``all(isfinite(v))``: on a state XLA knows to be constant (the zeros a relaxation starts
    from) it folds a boolean reduction of the whole state at compile time, for seconds, with
    an alarm on stderr; the sum of zeros it simplifies."""
    out = None
    for n, v in tree.items():
        f = jnp.isfinite(sum_trailing(v * 0, net.layers[n].ndim))
        out = f if out is None else out & f
    return out


def _within(dyn, force, x, stop) -> Array:
    """Per sample: ``rms(force) ≤ atol + rtol·rms(x)`` (False for a NaN residual)."""
    return _rms(dyn, force) <= _tolerance(dyn, x, stop)


def _tolerance(dyn, x, stop) -> Array:
    """Per sample (or a scalar where ``rtol`` is a Python zero, the default: no pass over the
    state for a term that vanishes): ``atol + rtol·rms(x)``."""
    if _is_zero(stop.rtol):
        return jnp.asarray(stop.atol)
    return stop.atol + stop.rtol * _rms(dyn, x)


def _rows(flags: Array, v: Array, layer_ndim: int) -> Array:
    """A per-sample flag broadcast against a layer's batched state."""
    return flags.reshape(flags.shape + (1,) * layer_ndim)


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


def _each_sample(fn, dyn, x_free: Mapping[str, Array], batch_ndim: int):
    """``fn(dyn_i, x_i)`` for every sample ``i`` on its own: vmapped over the (flattened) batch,
    so each sample keeps its own step sizes, stopping test and iteration count, and its result
    does not depend on its batch-mates. ``dyn``: a batched :class:`ClampedDynamics` (or frozen
    dynamics around one): the network is shared, its clamped states, currents and masks are
    split per sample, and so are the batch-shaped arrays of synapses that declare
    ``carries_batch`` (their ``energy`` then also takes one sample, without batch axes).
    ``fn`` returns a pytree whose array leaves come back with the batch axes in front,
    ``(*batch, ...)``."""
    if batch_ndim == 0:
        return fn(dyn, x_free)
    batch = next(iter(x_free.values())).shape[:batch_ndim]
    size = math.prod(batch)
    # the network is shared, except the per-sample data a synapse may carry (an EqProp nudge's
    # targets: ``carries_batch``), split with the samples where it has the batch's shape
    shared = {id(v) for v in jax.tree.leaves(dyn.net)}
    for syn in dyn.net.synapses.values():
        if getattr(syn, "carries_batch", False):
            shared -= {id(v) for v in jax.tree.leaves(syn)
                       if eqx.is_array(v) and v.shape[:batch_ndim] == batch}
    axes = jax.tree.map(lambda v: 0 if eqx.is_array(v) and id(v) not in shared else None, dyn)

    def flat(v):
        return v.reshape((size,) + v.shape[batch_ndim:])

    dyn_flat = jax.tree.map(lambda a, v: v if a is None else flat(v), axes, dyn,
                            is_leaf=lambda a: a is None)
    out = eqx.filter_vmap(fn, in_axes=(axes, 0))(dyn_flat, jax.tree.map(flat, x_free))
    return jax.tree.map(lambda v: v.reshape(batch + v.shape[1:]) if eqx.is_array(v) else v, out)
