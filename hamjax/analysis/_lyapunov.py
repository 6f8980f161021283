"""Lyapunov diagnostics: the energy and its rate along a relaxation.

For PSD Lagrangian Hessians the energy is a Lyapunov function of the HAM dynamics,
``dE/dt = −Σ_A τ_A ẋ_Aᵀ H_A ẋ_A ≤ 0`` (docs/maths.md eq. 9). These helpers measure how well a
trajectory obeys that: the rate at every saved state (a Jacobian-vector product, no Hessian), the
largest increase of ``E`` between saved states, and :func:`check_lyapunov`, which integrates the
dynamics with :func:`hamjax.relax` and reports both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._convergence import FixedTime
from .._ham import HAM
from .._ode import SaveAt
from .._relax import relax
from .._results import RESULTS

__all__ = [
    "max_energy_increase",
    "simulate",
    "LyapunovCheck",
    "check_lyapunov",
]


def max_energy_increase(energies: Array, axis: int = 0) -> Array:
    """``max_k (E(t_{k+1}) − E(t_k))`` along ``axis`` (time): ≤ 0 on a Lyapunov trajectory
    (docs/maths.md eq. 9). Per sample when ``energies`` has batch axes after time:
    ``(T, *batch)`` gives ``batch``."""
    return jnp.max(jnp.diff(jnp.asarray(energies), axis=axis), axis=axis)


def simulate(
    net: HAM,
    x0: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    t1: float = 10.0,
    n_save: int = 64,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    max_steps: int = 100_000,
) -> tuple[Array, dict[str, Array]]:
    """The trajectory of ``τ_A ẋ_A = −∂E/∂g_A`` from ``x0`` over ``[0, t1]`` at ``n_save`` evenly
    spaced times: :func:`hamjax.relax` with ``FixedTime(t1)``, Tsit5 and an ``rtol``/``atol``
    step-size control. Returns the save times and the states (leading time axis, clamped
    layers repeated): ``(n_save,)`` and ``{name: (n_save, *batch, *shape)}`` (docs/maths.md
    eq. 5). Raises ``RuntimeError`` when the solve reaches ``max_steps`` before ``t1``."""
    ts = jnp.linspace(0.0, t1, n_save)
    sol = relax(net, x0, clamp=clamp, stop=FixedTime(t1), save=SaveAt(trajectory=True, ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                max_steps=max_steps)
    if (not isinstance(sol.result, jax.core.Tracer)
            and bool(jnp.any(sol.result == RESULTS.max_steps_reached))):
        raise RuntimeError(f"simulate: the solve reached max_steps={max_steps} before t1={t1} "
                           "(the saved states after that are inf); raise max_steps or loosen "
                           "rtol/atol")
    return ts, sol.trajectory


@dataclasses.dataclass(frozen=True)
class LyapunovCheck:
    """Result of :func:`check_lyapunov`: ``ok`` when the energy never rose by more than the
    tolerance between saved states and ``dE/dt`` never exceeded it; the evidence alongside.

    ``max_increase`` (the largest rise of ``E`` between saved states), ``max_rate`` (the largest
    ``dE/dt``, eq. 9 of docs/maths.md), ``tolerance`` (``atol + rtol·max|E|``), and the
    ``times`` ``(T,)``, ``energies`` and ``rates`` ``(T, *batch)`` they come from."""

    ok: bool
    max_increase: float
    max_rate: float
    tolerance: float
    times: Array
    energies: Array
    rates: Array

    def __str__(self) -> str:
        return (f"Lyapunov check {'passed' if self.ok else 'FAILED'}: max ΔE = "
                f"{self.max_increase:.3g}, max dE/dt = {self.max_rate:.3g} "
                f"(tol {self.tolerance:.3g})")


def check_lyapunov(
    net: HAM,
    x0: Mapping[str, Array] | None = None,
    *,
    clamp: Iterable[str] | str = (),
    trajectory: tuple[Array, Mapping[str, Array]] | None = None,
    t1: float = 10.0,
    n_save: int = 64,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> LyapunovCheck:
    """Whether ``E`` is non-increasing along the dynamics of ``net`` from ``x0`` (integrated with
    :func:`simulate`) or along a given ``trajectory = (times, states)``.

    Passes when ``max ΔE`` and ``max dE/dt`` are both ``≤ atol + rtol·max|E|``: round-off lets a
    converged trajectory's energy wobble by a few ulps, never by more (docs/maths.md eq. 9).
    ``trajectory``: ``(times (T,), {name: (T, *batch, *shape)})``; ``t1`` and ``n_save`` as for
    :func:`simulate`. Raises ``ValueError`` with neither ``x0`` nor ``trajectory``."""
    if trajectory is None:
        if x0 is None:
            raise ValueError("check_lyapunov needs an initial state x0 or a trajectory")
        ts, xs = simulate(net, x0, clamp=clamp, t1=t1, n_save=n_save)
    else:
        ts, xs = trajectory
    energies = net.energy(dict(xs))
    rates = net.energy_rate(dict(xs), clamp=clamp)
    tolerance = atol + rtol * float(jnp.max(jnp.abs(energies)))
    inc = float(jnp.max(max_energy_increase(energies)))
    rate = float(jnp.max(rates))
    ok = bool(np.isfinite(inc) and inc <= tolerance and rate <= tolerance)
    return LyapunovCheck(ok, inc, rate, tolerance, ts, energies, rates)

