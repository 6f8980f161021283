"""Steady-state solvers missing from optimistix and lineax, written as their solver objects.

* :class:`FixedPoint`: the plain fixed-point iteration ``x = f(x)``, per sample, at the cost of
  a hand-written loop (an ``optimistix.AbstractFixedPointSolver``).
* :class:`Anderson`: Anderson acceleration of a fixed-point iteration ``x = f(x)`` (an
  ``optimistix.AbstractFixedPointSolver``), per sample, with mixing (damping) and a safeguard.
  It is the forward solver of the DEQ libraries; ``history=1`` is the plain (damped) iteration.
* :func:`iterate`: either of them run per sample in one while loop (what :func:`hamjax.relax`
  does), without optimistix's batch-wide test for non-finite values at every iteration.
* :class:`Neumann`: the adjoint (or any) linear system ``A v = b`` with ``A = M − I`` and
  ``M`` a contraction, solved by the fixed-point iteration ``v ← M v − b`` (the Neumann series
  of ``(I − M)⁻¹``) with a per-sample tolerance, falling back to a Krylov solve when it does not
  contract (an ``lineax.AbstractLinearSolver``).
* :class:`PhantomGradient`: the same iteration truncated after ``steps`` terms, with damping:
  the cheap approximate gradient of the DEQ literature ("phantom gradients", Geng et al. 2021).

Why these fit a HAM: at a steady state of ``τ ẋ = F(x) = c(g(x)) + I − x`` the Jacobian is
``∂F/∂x = C H − I`` with ``H`` the Lagrangian Hessian and ``C = −∂²E_syn/∂g²``; at a stable
steady state ``CH`` has real eigenvalues below 1, and on trained networks they are typically
small in magnitude, so both the forward map ``x ← x + F(x)`` and the adjoint iteration
``v ← (CH)ᵀ v − b`` contract in a few steps (docs/maths.md §5.1, eq. (T4)). Dead neurons
(``H D = 0``) only add eigenvalues 0 to ``CH``: the iteration stays well defined there
(docs/maths.md §4.5).

"Per sample": the leading ``batch_ndim`` axes of every leaf index independent problems (a batch
of relaxations). Each sample is tested against its own tolerance and stops when it meets it;
the mixing coefficients of Anderson acceleration are per sample too, so one sample never
changes another's result.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, PyTree

__all__ = ["Anderson", "FixedPoint", "Neumann", "PhantomGradient", "LinearSolveWarning", "iterate"]


class LinearSolveWarning(RuntimeWarning):
    """Some samples of a linear solve did not meet its tolerance, and were given a zero
    solution (they drop out of a gradient) instead of failing the whole batch.

    Issued by :class:`Neumann` with ``throw=False`` (the default), e.g. for the adjoint
    system of a steady state that is unstable or nearly so. A ``RuntimeWarning``."""


# ------------------------------------------------------------------ per-sample flattening
def _num_samples(tree, batch_ndim: int) -> int:
    leaf = jax.tree_util.tree_leaves(tree)[0]
    return math.prod(leaf.shape[:batch_ndim])


def _flat(tree, batch_ndim: int) -> Array:
    """``(samples, features)``: each sample's leaves raveled and joined."""
    b = _num_samples(tree, batch_ndim)
    return jnp.concatenate([v.reshape(b, -1) for v in jax.tree_util.tree_leaves(tree)], axis=1)


def _unflat(flat: Array, like) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out, start = [], 0
    for v in leaves:
        size = v.size // flat.shape[0]
        out.append(flat[:, start : start + size].reshape(v.shape).astype(v.dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _rms_rows(a: Array) -> Array:
    """Per-row root-mean-square, NaN for a row holding a NaN."""
    return jnp.sqrt(jnp.mean(a * a, axis=1))


def _is_zero(x) -> bool:
    """Whether ``x`` is a Python (or NumPy) zero, known when tracing: a term it multiplies can
    be left out of the computation."""
    return isinstance(x, int | float | np.number) and x == 0


def iterate(solver: optx.AbstractFixedPointSolver, fn, y0, args=None, *, max_steps: int):
    """``(y, stats)``: a per-sample fixed-point ``solver`` of this module (:class:`FixedPoint`,
    :class:`Anderson`) run from ``y0`` on ``fn(y, args) -> f(y)``, at most ``max_steps``
    iterations; ``stats`` are its ``postprocess``'s (per-sample ``residual``, ``done``, ``steps``).

    The solver's own ``init``/``step``/``terminate``/``postprocess`` in one ``lax.while_loop``:
    what ``optimistix.fixed_point`` runs, without its test of the whole state for non-finite
    values at every iteration, which stops every sample at the first non-finite one (these
    solvers hold such a sample and go on with the others) and costs a pass over the state an
    iteration. Not differentiable (``relax`` differentiates at the steady state instead)."""
    tags = frozenset()
    f = fn

    def fn(y, a):
        return f(y, a), None

    state = solver.init(fn, y0, args, {}, None, None, tags)

    def cond(c):
        k, y, s = c
        return (k < max_steps) & ~solver.terminate(fn, y, args, {}, s, tags)[0]

    def body(c):
        k, y, s = c
        y, s, _ = solver.step(fn, y, args, {}, s, tags)
        return k + 1, y, s

    _, y, state = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), y0, state))
    y, _, stats = solver.postprocess(fn, y, None, args, {}, state, tags, optx.RESULTS.successful)
    return y, stats


# ------------------------------------------------------------------ plain fixed-point iteration
class _FixedPointState(eqx.Module):
    # every per-sample record in one (samples, 6) array, columns _RES … _DONE: the iteration's
    # bookkeeping is then one fused pass a step, not one small kernel per record, which on a
    # CPU costs as much as the pass itself (counts are exact in it up to 2**24)
    book: Array


_RES, _BEST, _MARK, _STALLS, _STEPS, _DONE = range(6)
# residual at the current iterate; smallest residual seen; best at the start of the current
# window of `patience` steps; windows in a row without progress; iterations taken (evaluations
# of f) until done; 1 once converged, non-finite or given up (held where it is)


def _rows_rms(tree, batch_ndim: int) -> Array:
    """Per-sample root-mean-square over every leaf, without joining the leaves (a copy of the
    whole state each iteration is what this solver avoids)."""
    leaves = jax.tree_util.tree_leaves(tree)
    b = _num_samples(tree, batch_ndim)
    sq = sum(jnp.sum((v * v).reshape(b, -1), axis=1) for v in leaves)
    n = sum(v.size // b for v in leaves)
    return jnp.sqrt(sq / n)


class FixedPoint(optx.AbstractFixedPointSolver):
    """The plain fixed-point iteration ``x ← f(x)``, per sample (docs/maths.md §5.1; for a HAM
    ``f(x) = c(g(x)) + I``, ``relax(..., solver=FixedPoint())``).

    A sample has converged when ``rms(f(x) − x) ≤ atol + rtol · rms(x)`` (root-mean-square over
    its features); it is then held where it is while the others go on. Its state is the iterate
    alone (no history, no best iterate kept): one evaluation of ``f`` and one pass over the
    state per iteration, what a hand-written loop costs. A sample is given up (held where it
    is, unconverged, so that the caller can finish it otherwise: :func:`hamjax.relax` runs the
    ODE from there) when its residual exceeds ``safeguard`` times the best it reached (the
    synchronous update diverges: an eigenvalue of ``CH`` below −1) or after ``max_stalls``
    windows in a row of ``patience`` iterations that each took less than 1 % off its best
    residual (it cycles between the linear pieces of a ReLU network). A non-finite sample
    counts as done and keeps its value, so the caller sees it.

    Unlike :class:`Anderson`, it cannot converge to an unstable fixed point: the iteration
    repels one. ``batch_ndim``: the leading axes of every leaf that index independent
    samples; :func:`hamjax.relax` sets it and the tolerances ``rtol`` and ``atol`` from its
    ``SteadyState`` (used alone, give both: without them a step raises ``ValueError``).
    ``norm`` is the field every optimistix solver carries; the per-sample test above is used
    instead."""

    rtol: float | None = None
    atol: float | None = None
    safeguard: float = 100.0
    patience: int = eqx.field(static=True, default=10)
    max_stalls: int = eqx.field(static=True, default=10)
    batch_ndim: int = eqx.field(static=True, default=0)
    norm: Callable = optx.max_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _FixedPointState:
        del fn, args, options, f_struct, aux_struct, tags
        b = _num_samples(y, self.batch_ndim)
        dtype = jnp.promote_types(jax.tree_util.tree_leaves(y)[0].dtype, jnp.float32)
        inf, zero = jnp.full((b,), jnp.inf, dtype), jnp.zeros((b,), dtype)
        return _FixedPointState(jnp.stack([inf, inf, inf, zero, zero, zero], axis=1))

    def step(self, fn, y, args, options, state: _FixedPointState, tags):
        del options, tags
        if self.atol is None or self.rtol is None:
            raise ValueError("FixedPoint needs rtol and atol (hamjax.relax sets them from its "
                             "SteadyState)")
        fy, aux = fn(y, args)
        g = jax.tree.map(lambda a, b: a - b, fy, y)
        book = state.book
        res = _rows_rms(g, self.batch_ndim).astype(book.dtype)
        was_done = book[:, _DONE] > 0
        # a non-finite iterate makes its residual non-finite too: one test for both
        finite = jnp.isfinite(res)
        tol = self.atol
        if not _is_zero(self.rtol):
            tol = tol + self.rtol * _rows_rms(y, self.batch_ndim)
        converged = finite & (res <= tol)
        blowup = finite & (res > self.safeguard * book[:, _BEST])
        best_res = jnp.minimum(res, book[:, _BEST])
        steps = book[:, _STEPS] + jnp.where(was_done, 0.0, 1.0)
        # windows of `patience` of the sample's own iterations (all its iterations until done)
        window_end = jnp.mod(steps, self.patience) == 0
        progress = best_res <= 0.99 * book[:, _MARK]
        stalls = jnp.where(window_end, jnp.where(progress, 0.0, book[:, _STALLS] + 1),
                           book[:, _STALLS])
        give_up = ~converged & finite & (blowup | (stalls >= self.max_stalls))
        done = was_done | converged | ~finite | give_up
        mark_res = jnp.where(window_end, best_res, book[:, _MARK])
        # a sample done now stays at this iterate: the one its residual was measured at
        hold = _broadcast_rows(done, y, self.batch_ndim)
        new_y = jax.tree.map(lambda a, b, k: jnp.where(k, a, b), y, fy, hold)
        book = jnp.stack([jnp.where(was_done, book[:, _RES], res), best_res, mark_res, stalls,
                          steps, done.astype(book.dtype)], axis=1)
        return new_y, _FixedPointState(book), aux

    def terminate(self, fn, y, args, options, state: _FixedPointState, tags):
        del fn, y, args, options, tags
        return jnp.all(state.book[:, _DONE] > 0), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        book = state.book
        return y, aux, {"residual": book[:, _RES], "done": book[:, _DONE] > 0,
                        "steps": book[:, _STEPS].astype(jnp.int32)}


# ------------------------------------------------------------------ Anderson acceleration
class _AndersonState(eqx.Module):
    xs: Array  # (samples, history, features): past iterates x_i
    gs: Array  # (samples, history, features): their residuals g_i = f(x_i) − x_i
    gram: Array  # (samples, history, history): g_i · g_j, one row and column new per step
    count: Array  # (samples,) how many of the newest history slots are valid
    slot: Array  # () where the next pair is written (a ring buffer)
    best_res: Array  # (samples,) smallest residual seen
    best_x: Array  # (samples, features)
    best_g: Array
    mark_res: Array  # (samples,) best_res when the current window of `patience` steps began
    since: Array  # (samples,) iterations into the current window
    done: Array  # (samples,) converged, non-finite or given up: held where it is
    residual: Array  # (samples,) rms residual at the current iterate
    restarts: Array  # (samples,) safeguard restarts taken
    mix: Array  # (samples,) the mixing in use: halved at every restart
    stalls: Array  # (samples,) windows in a row without progress
    steps: Array  # (samples,) iterations taken (evaluations of f) until done


class Anderson(optx.AbstractFixedPointSolver):
    """Anderson acceleration (Anderson 1965; Walker & Ni 2011) of ``x ← f(x)``, per sample: the
    accelerated steady-state iteration of docs/maths.md §5.1 (``solver=Anderson()`` of
    :func:`hamjax.relax`, where ``f(x) = c(g(x)) + I``).

    With ``g_i = f(x_i) − x_i`` over the last ``m = history`` iterates, each sample solves
    ``min_α |Σ_i α_i g_i|²`` subject to ``Σ_i α_i = 1`` (regularised normal equations
    ``(GGᵀ + λ·max diag(GGᵀ)·I) α ∝ 1``, ``m × m``) and steps to

        x_{k+1} = Σ_i α_i (x_i + β g_i)        (β = ``mixing``; β = 1: Σ α_i f(x_i)).

    ``history=1`` is the damped fixed-point iteration ``x ← x + β (f(x) − x)``. ``history``
    (static, default 5) is ``m``; ``mixing`` (default 1) is β, in ``(0, 1]``;
    ``regularisation`` (default ``1e-5``) is λ.

    A sample has converged when ``rms(f(x) − x) ≤ atol + rtol · rms(x)`` (root-mean-square over
    its features); it is then held where it is while the others go on. Safeguards, per sample:
    a residual above ``safeguard`` times the best it reached (a blow-up) sends the sample back
    to its best iterate with its mixing halved and its history cleared; a window of
    ``patience`` iterations that takes less than 1 % off its best residual (a stall: a cycle,
    or a transient the plain update climbs through before converging) clears its history and
    goes on from where it is. A sample with more than ``max_restarts`` blow-ups, or
    ``max_stalls`` stalled windows in a row, is given up (an iteration can cycle between the
    linear pieces of a ReLU network where the dynamics settle): held at its best iterate,
    unconverged, so that the others can finish and the caller can finish it otherwise
    (:func:`hamjax.relax` runs the ODE from there). A non-finite sample counts as done and keeps
    its non-finite value, so the caller sees it.

    Anderson acceleration converges to *a* fixed point, not necessarily one the plain
    iteration (or the dynamics) would reach: its extrapolation can land on an unstable fixed
    point. On a small ReLU chain it can settle a sample on a saddle of the energy (a Jacobian
    eigenvalue with positive real part, at a higher energy than the attractor the dynamics
    reach). The plain iteration cannot converge to such a point (it repels it), which is why
    hamjax's training methods default to ``history=1``.

    ``batch_ndim``: the leading axes of every leaf that index independent samples (0: one
    problem). :func:`hamjax.relax` sets it, and the tolerances ``rtol`` and ``atol`` from its
    ``SteadyState`` (used alone, give both: without them a step raises ``ValueError``).
    ``norm`` is the field every optimistix solver carries; the per-sample test above is used
    instead. ``history < 1`` or ``mixing`` outside ``(0, 1]`` raises ``ValueError``.
    """

    rtol: float | None = None
    atol: float | None = None
    history: int = eqx.field(static=True, default=5)
    mixing: float = 1.0
    regularisation: float = 1e-5
    safeguard: float = 100.0
    patience: int = eqx.field(static=True, default=10)
    max_restarts: int = eqx.field(static=True, default=3)
    max_stalls: int = eqx.field(static=True, default=10)
    batch_ndim: int = eqx.field(static=True, default=0)
    # optimistix's solvers carry a norm; the test here is the per-sample rms above
    norm: Callable = optx.max_norm

    def __check_init__(self):
        if self.history < 1:
            raise ValueError(f"Anderson needs history >= 1, got {self.history}")
        if isinstance(self.mixing, int | float) and not 0 < self.mixing <= 1:
            raise ValueError(f"Anderson mixing must be in (0, 1], got {self.mixing}")

    def _tol(self, x: Array) -> Array:
        if self.atol is None or self.rtol is None:
            raise ValueError("Anderson needs rtol and atol (hamjax.relax sets them from its "
                             "SteadyState)")
        return self.atol + self.rtol * _rms_rows(x)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _AndersonState:
        del fn, args, options, f_struct, aux_struct, tags
        x = _flat(y, self.batch_ndim)
        b, n = x.shape
        hist = jnp.zeros((b, self.history, n), x.dtype)
        inf = jnp.full((b,), jnp.inf, x.dtype)
        zero_i = jnp.zeros((b,), jnp.int32)
        return _AndersonState(
            xs=hist, gs=hist, gram=jnp.zeros((b, self.history, self.history), x.dtype),
            count=zero_i, slot=jnp.asarray(0, jnp.int32), best_res=inf,
            best_x=x, best_g=jnp.zeros_like(x), mark_res=inf, since=zero_i,
            done=jnp.zeros((b,), bool), residual=inf, restarts=zero_i,
            mix=jnp.full((b,), self.mixing, x.dtype), stalls=zero_i, steps=zero_i,
        )

    def step(self, fn, y, args, options, state: _AndersonState, tags):
        del options, tags
        fy, aux = fn(y, args)
        x = _flat(y, self.batch_ndim)
        g = _flat(fy, self.batch_ndim) - x
        res = _rms_rows(g)
        finite = jnp.isfinite(res) & jnp.all(jnp.isfinite(x), axis=1)
        converged = finite & (res <= self._tol(x))
        give_up = ~state.done & ~converged & finite & (
            (state.restarts > self.max_restarts) | (state.stalls >= self.max_stalls))
        done = state.done | converged | ~finite | give_up

        improved = res < state.best_res
        best_res = jnp.where(improved, res, state.best_res)
        best_x = jnp.where(improved[:, None], x, state.best_x)
        best_g = jnp.where(improved[:, None], g, state.best_g)
        # a blow-up: back to the best iterate with half the step (the damped step x + β g is
        # Euler with step βτ, which settles wherever the dynamics do once β is small enough: a
        # divergent synchronous update has an eigenvalue of CH below −1, and β < 2/(1 − λ)
        # removes it)
        blowup = ~done & (res > self.safeguard * best_res)
        # a stall: a window of `patience` steps that took less than 1 % off the best residual
        # (a cycle, or a transient: the plain update can climb for a while and then converge).
        # Anderson's history is cleared and the iteration goes on from where it is;
        # `max_stalls` windows in a row without progress give the sample up
        since = state.since + 1
        window_end = since >= self.patience
        progress = best_res <= 0.99 * state.mark_res
        stalled = ~done & window_end & ~progress
        stalls = jnp.where(window_end, jnp.where(progress, 0, state.stalls + 1), state.stalls)
        new_window = window_end | blowup
        mark_res = jnp.where(new_window, best_res, state.mark_res)
        since = jnp.where(new_window, 0, since)

        # push (x, g) into the ring buffer; a blow-up empties the history, a stall keeps only
        # the newest pair (a plain step from here)
        xs = state.xs.at[:, state.slot].set(x)
        gs = state.gs.at[:, state.slot].set(g)
        dots = jnp.einsum("bhn,bn->bh", gs, g)
        gram = state.gram.at[:, state.slot, :].set(dots).at[:, :, state.slot].set(dots)
        count = jnp.minimum(state.count + 1, self.history)
        count = jnp.where(blowup, 0, jnp.where(stalled, 1, count))
        slot = (state.slot + 1) % self.history

        # which slots hold one of each sample's `count` newest pairs
        age = (slot - 1 - jnp.arange(self.history)) % self.history  # 0 = newest
        valid = age[None, :] < count[:, None]  # (samples, history)
        alpha = _anderson_weights(gram, valid, state.slot, self.regularisation)
        mixed = (jnp.einsum("bh,bhn->bn", alpha, xs)
                 + state.mix[:, None] * jnp.einsum("bh,bhn->bn", alpha, gs))
        mix = jnp.where(blowup, 0.5 * state.mix, state.mix)
        plain = best_x + mix[:, None] * best_g
        # a sample given up is left at its best iterate, the closest it came
        held = jnp.where(give_up[:, None], best_x, x)
        new_x = jnp.where(done[:, None], held, jnp.where(blowup[:, None], plain, mixed))

        new_state = _AndersonState(
            xs=xs, gs=gs, gram=gram, count=count, slot=slot, best_res=best_res, best_x=best_x,
            best_g=best_g, mark_res=mark_res, since=since, done=done, residual=res,
            restarts=state.restarts + blowup.astype(jnp.int32), mix=mix, stalls=stalls,
            steps=state.steps + ~state.done,
        )
        return _unflat(new_x, y), new_state, aux

    def terminate(self, fn, y, args, options, state: _AndersonState, tags):
        del fn, y, args, options, tags
        return jnp.all(state.done), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return y, aux, {"residual": state.residual, "done": state.done,
                        "restarts": state.restarts, "steps": state.steps}


def _anderson_weights(gram: Array, valid: Array, newest, reg: float) -> Array:
    """``α`` (samples, history): ``(GGᵀ + λ I) α = 1`` per sample, normalised to sum 1, over
    the valid slots (invalid ones get α = 0: their rows and columns are those of the identity,
    right side 0). ``newest``: the slot of the newest pair, used alone if the solve degenerates."""
    both = valid[:, :, None] & valid[:, None, :]
    gram = jnp.where(both, gram, 0.0)
    scale = jnp.max(jnp.where(valid, jnp.diagonal(gram, axis1=1, axis2=2), 0.0), axis=1)
    scale = jnp.where(scale > 0, scale, 1.0)
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
    diag = jnp.where(valid, reg * scale[:, None], 1.0)
    a = _spd_solve(gram + eye * diag[:, :, None], valid.astype(gram.dtype))
    total = jnp.sum(a, axis=1, keepdims=True)
    # a degenerate solve (total ≈ 0 or NaN) falls back to the newest iterate alone
    ok = jnp.isfinite(total) & (jnp.abs(total) > 1e-12)
    only_newest = jnp.broadcast_to(jnp.arange(a.shape[1]) == newest, a.shape).astype(a.dtype)
    return jnp.where(ok, a / jnp.where(ok, total, 1.0), only_newest)


def _spd_solve(a: Array, b: Array) -> Array:
    """Solve the batched symmetric positive definite systems ``a x = b`` (``a``: (batch, m, m),
    ``b``: (batch, m)) by a Cholesky factorisation unrolled over the small static ``m``: on a
    CPU, LAPACK's batched solve costs more than the rest of an Anderson step together."""
    m = a.shape[-1]
    low = [[None] * m for _ in range(m)]
    for j in range(m):
        d = a[:, j, j] - sum((low[j][k] ** 2 for k in range(j)), jnp.zeros_like(a[:, 0, 0]))
        low[j][j] = jnp.sqrt(jnp.maximum(d, jnp.finfo(a.dtype).tiny))
        for i in range(j + 1, m):
            off = a[:, i, j] - sum((low[i][k] * low[j][k] for k in range(j)),
                                   jnp.zeros_like(d))
            low[i][j] = off / low[j][j]
    y = []
    for i in range(m):
        y.append((b[:, i] - sum((low[i][k] * y[k] for k in range(i)), jnp.zeros_like(b[:, 0])))
                 / low[i][i])
    x = [None] * m
    for i in reversed(range(m)):
        back = sum((low[k][i] * x[k] for k in range(i + 1, m)), jnp.zeros_like(y[i]))
        x[i] = (y[i] - back) / low[i][i]
    return jnp.stack(x, axis=-1)


# ------------------------------------------------------------------ linear solves
def _sample_rms(tree, batch_ndim: int) -> Array:
    return _rms_rows(_flat(tree, batch_ndim))


def _richardson(operator, b, v0, damping, steps_max, tol_fn, batch_ndim, until_converged):
    """``v ← v + λ (A v − b)`` (for ``A = M − I``: ``v ← ((1 − λ) I + λ M) v − λ b``), each
    sample held once ``rms(A v − b) ≤ tol``; stops early when a sample's residual grows a
    thousandfold (it does not contract). Returns ``(v, per-sample ok, steps)``."""
    tol = tol_fn(b)
    r0 = jax.tree.map(lambda av, bb: av - bb, operator.mv(v0), b)
    res0 = _sample_rms(r0, batch_ndim)

    def cond(c):
        k, _, _, res, diverged = c
        more = k < steps_max
        if until_converged:
            more = more & ~jnp.all(res <= tol) & ~diverged
        return more

    def body(c):
        k, v, r, res, _ = c
        hold = res <= tol if until_converged else jnp.zeros_like(res, bool)
        keep = _broadcast_rows(hold, v, batch_ndim)
        v = jax.tree.map(lambda vv, rr, kk: jnp.where(kk, vv, vv + damping * rr), v, r, keep)
        r = jax.tree.map(lambda av, bb: av - bb, operator.mv(v), b)
        res = _sample_rms(r, batch_ndim)
        diverged = jnp.any(~jnp.isfinite(res) | (res > 1e3 * jnp.maximum(res0, tol)))
        return k + 1, v, r, res, diverged

    init = (jnp.asarray(0, jnp.int32), v0, r0, res0, jnp.asarray(False))
    k, v, _, res, _ = jax.lax.while_loop(cond, body, init)
    return v, res <= tol, k


def _broadcast_rows(flags: Array, tree, batch_ndim: int):
    """A per-sample flag as a tree of masks broadcastable against ``tree``'s leaves."""
    lead = jax.tree_util.tree_leaves(tree)[0].shape[:batch_ndim]
    f = flags.reshape(lead)
    return jax.tree.map(lambda v: f.reshape(lead + (1,) * (v.ndim - batch_ndim)), tree)


class Neumann(lx.AbstractLinearSolver):
    """Solve ``A v = b`` for ``A = M − I`` with ``M`` a contraction by ``v ← M v − b``
    (Richardson iteration with step −1; ``v = −Σ_k M^k b``, the Neumann series), optionally
    damped: ``v ← v + λ (A v − b)``.

    Each sample stops once ``rms(A v − b) ≤ atol + rtol · rms(b)``. When some sample does not
    get there in ``max_steps`` iterations, or its residual grows (``M`` does not contract),
    the solve falls back to ``fallback``, started from the iterate reached: by default the same
    iteration Anderson-accelerated (:class:`Anderson`, history 5), per sample, for at most
    ``fallback_steps`` more products (at a steady state whose slowest mode is near ±1, where
    the plain series needs hundreds of terms, it needs tens: on the adjoints of a HAM's steady
    states it takes less time than the plain series, hence the small default
    ``max_steps``); a lineax solver instead (GMRES, which treats the batch as one system) or
    ``None`` to fail. One matrix-vector product per iteration.
    Samples that meet the tolerance neither way get, with ``throw=False`` (default), a
    zero solution and a :class:`LinearSolveWarning` (in a gradient they drop out, and the rest
    of the batch stands: the samples of a relaxation are independent systems); with
    ``throw=True`` the solve fails (lineax raises under its default ``throw=True``).

    The transposed system (what reverse-mode differentiation solves) is iterated the same
    way with ``Mᵀ``, whose spectrum is that of ``M``. For the adjoint of a steady state,
    ``M = (CH)ᵀ`` and the iteration is the Neumann series of docs/maths.md eq. (T4), the
    default linear solver of :class:`hamjax.ImplicitSteadyState`.

    Fields: ``rtol`` (default ``1e-4``), ``atol`` (default ``1e-9``), ``max_steps`` (static,
    default 20: the terms of the plain series before the fallback), ``damping`` λ (default 1:
    the plain series), ``fallback`` (an :class:`Anderson`, a lineax solver or ``None``),
    ``fallback_steps`` (static, default 300: the Anderson fallback's cap), ``throw`` (static,
    a bool, else ``ValueError``) and ``batch_ndim`` (the leading axes that index samples;
    :func:`hamjax.relax` sets it).
    """

    rtol: float = 1e-4
    atol: float = 1e-9
    max_steps: int = eqx.field(static=True, default=20)
    damping: float = 1.0
    fallback: Anderson | lx.AbstractLinearSolver | None = Anderson(history=5)
    fallback_steps: int = eqx.field(static=True, default=300)
    throw: bool = eqx.field(static=True, default=False)
    batch_ndim: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not isinstance(self.throw, bool):
            raise ValueError(f"Neumann(throw=...) must be True or False, got {self.throw!r}")

    def init(self, operator, options):
        del options
        if eqx.tree_equal(operator.in_structure(), operator.out_structure()) is not True:
            raise ValueError("Neumann needs a square operator")
        return lx.linearise(operator)

    def compute(self, state, vector, options):
        operator = state
        v0 = options.get("y0", jax.tree.map(jnp.zeros_like, vector))

        def tol_fn(b):
            return self.atol + self.rtol * _sample_rms(b, self.batch_ndim)

        v, ok0, steps = _richardson(operator, vector, v0, self.damping, self.max_steps, tol_fn,
                                    self.batch_ndim, until_converged=True)
        all_ok = jnp.all(ok0)
        if self.fallback is None:
            result = lx.RESULTS.where(all_ok, lx.RESULTS.successful,
                                      lx.RESULTS.max_steps_reached)
            return v, result, {"num_steps": steps, "fallback_steps": jnp.asarray(0)}

        fb = self.fallback

        def krylov(v):
            if isinstance(fb, Anderson):
                # the same iteration, accelerated, per sample: v ← v + (Av − b) is the plain
                # series; Anderson mixes its last iterates (what GMRES does, without treating
                # the batch as one system); samples already solved stay where they are
                def g(y, _):
                    return jax.tree.map(lambda yy, av, bb: yy + av - bb, y, operator.mv(y),
                                        vector)

                acc = dataclasses.replace(fb, atol=tol_fn(vector), rtol=0.0,
                                          batch_ndim=self.batch_ndim)
                sol, stats = iterate(acc, g, v, max_steps=self.fallback_steps)
                stats = {"num_steps": jnp.max(stats["steps"])}
            else:
                # the Krylov solver's own verdict is not used: lineax's GMRES reports
                # "breakdown" on these systems even with residuals far below tolerance; the
                # per-sample test is the same as the iteration's
                sol, _, stats = fb.compute(fb.init(operator, {}), vector, {"y0": v})
            # samples the iteration solved keep its solution: a Krylov solve treats the batch
            # as one system, where one hard sample can spoil the others
            sol = jax.tree.map(lambda a, b, k: jnp.where(k, b, a), sol, v,
                               _broadcast_rows(ok0, sol, self.batch_ndim))
            r = jax.tree.map(lambda av, bb: av - bb, operator.mv(sol), vector)
            ok = _sample_rms(r, self.batch_ndim) <= tol_fn(vector)
            if not self.throw:
                # samples are independent: give those that failed a zero solution (they drop
                # out of a gradient) and say so, rather than fail the whole batch
                sol = jax.tree.map(lambda a, k: jnp.where(k, a, 0.0), sol,
                                   _broadcast_rows(ok, sol, self.batch_ndim))
                jax.lax.cond(jnp.all(ok), lambda n: None,
                             lambda n: jax.debug.callback(_warn_failed, n),
                             jnp.sum(~ok))
                ok = jnp.ones_like(ok)
            return sol, jnp.all(ok), jnp.asarray(stats.get("num_steps", -1), jnp.int32)

        def done(v):
            return v, jnp.asarray(True), jnp.asarray(0, jnp.int32)

        v, ok, fb_steps = jax.lax.cond(all_ok, done, krylov, v)
        result = lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.max_steps_reached)
        return v, result, {"num_steps": steps, "fallback_steps": fb_steps}

    def transpose(self, state, options):
        return state.transpose(), {k: v for k, v in options.items() if k != "y0"}

    def conj(self, state, options):
        return lx.conj(state), {k: v for k, v in options.items() if k != "y0"}

    def assume_full_rank(self):
        return True


class PhantomGradient(lx.AbstractLinearSolver):
    """The truncated, damped Neumann series: ``steps`` iterations of ``v ← v + λ (A v − b)``
    from ``v = 0`` (Geng et al. 2021, "On training implicit models": the phantom gradient;
    docs/maths.md eq. (T4) truncated). An approximation by design, so it reports success
    whatever the residual: use it for a cheap gradient whose direction, not precision, matters.
    ``steps`` matrix-vector products.

    Fields: ``steps`` (static, default 5; below 1 raises ``ValueError``), ``damping`` λ
    (default 1) and ``batch_ndim`` (the leading axes that index samples; :func:`hamjax.relax`
    sets it). ``adjoint="phantom"`` of :func:`hamjax.relax` uses the defaults."""

    steps: int = eqx.field(static=True, default=5)
    damping: float = 1.0
    batch_ndim: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        if self.steps < 1:
            raise ValueError(f"PhantomGradient needs steps >= 1, got {self.steps}")

    def init(self, operator, options):
        del options
        return lx.linearise(operator)

    def compute(self, state, vector, options):
        v0 = jax.tree.map(jnp.zeros_like, vector)
        v, _, k = _richardson(state, vector, v0, self.damping, self.steps,
                              lambda b: 0.0, self.batch_ndim,
                              until_converged=False)
        return v, lx.RESULTS.successful, {"num_steps": k}

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options

    def assume_full_rank(self):
        return True


def _warn_failed(n):
    # under vmap (relax splits a batch) the cond above runs both branches: a count of 0 (or
    # one per sample) arrives here, and only failed samples are worth a warning
    n = int(np.sum(np.asarray(n)))
    if n == 0:
        return
    warnings.warn(f"{n} sample(s) of an adjoint linear solve did not reach its tolerance "
                  "(their steady state may be unstable or nearly so); they were left out of the "
                  "gradient", LinearSolveWarning, stacklevel=2)


def with_batch_ndim(solver: Any, batch_ndim: int) -> Any:
    """``solver`` told how many leading axes index samples (for the solvers of this module;
    others are returned as they are)."""
    if isinstance(solver, Anderson | FixedPoint | Neumann | PhantomGradient):
        return dataclasses.replace(solver, batch_ndim=batch_ndim)
    return solver
