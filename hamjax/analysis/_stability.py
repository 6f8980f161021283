"""Stability of steady states with dead neurons, and steady-state recovery (docs/maths.md §4.5–4.6).

At a steady state ``x*`` write ``H = A Λ Aᵀ`` (``A`` orthonormal columns spanning ``range(H)``,
per layer, since ``H`` is block-diagonal) and ``D`` for the dead directions (``ker H``). In the
basis ``[A D]`` the Jacobian ``J = T⁻¹(C H − I)`` is block-triangular::

    J A = A·T_a⁻¹(S Λ − I) + D(…),   J D = −T⁻¹ D,      S = Aᵀ C A

so its spectrum is that of ``J_a = T_a⁻¹(S Λ − I)`` (the motion in ``range(H)``, DN eq. 8) plus
``−1/τ`` for every dead direction: dead neurons never destabilise. For ``Λ ≻ 0``, ``J_a`` is
similar to the symmetric ``T_a^{-1/2}(Λ^{1/2} S Λ^{1/2} − I)T_a^{-1/2}``, so its spectrum is real
and, by Sylvester's law of inertia, ``J_a ≺ 0 ⇔ Aᵀ(H − H C H)A ≻ 0``: the energy Hessian (eq. 6)
restricted to ``range(H)`` decides (Proposition 4.2), whatever the τ's. A zero eigenvalue of that
restricted Hessian is a flat direction of the energy *not* caused by dead neurons: a real danger
the linearisation cannot settle.

Proposition 4.3: at a minimiser ``x̃`` of the energy (anywhere on its flat set),
``x* = (I − P) x̃ + P (c(g(x̃)) + b) = c(g(x̃)) + b`` with ``P`` the projector onto ``ker H(x̃)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array

from .._ham import HAM
from .._steady import _minimise_energy as _minimise
from ..lagrangians import ElementwiseLagrangian
from ._dead_neurons import DeadNeurons, dead_neurons
from ._hessians import (
    FlatIndex,
    FlatSystem,
    _call,
    _jacfwd,
    _operator,
    extremal_eigenvalues,
)

__all__ = [
    "StabilityReport",
    "stability",
    "RecoveredState",
    "recover_steady_state",
    "minimise_energy",
]


_WORDS = {True: "stable", False: "unstable", None: "undecided"}


@dataclasses.dataclass(frozen=True)
class StabilityReport:
    """The verdict on a steady state and the evidence for it, as returned by :func:`stability`
    (docs/maths.md §4.5). ``N`` is the number of free neurons.

    * ``stable``: True, False, or None when undecided; ``reason`` says why.
    * ``spectrum``: eigenvalues of the Jacobian restricted to ``range(H)`` (real when ``H ⪰ 0``),
      largest real part first. With ``dense=False`` the top Ritz values of the symmetrised
      Jacobian, which include ``−1/τ`` for dead directions.
    * ``energy_spectrum``: eigenvalues of ``Aᵀ(H − H C H)A`` (ascending; ``dense=True`` only).
    * ``n_dead``: dead neurons per free layer; ``dead`` the full :class:`DeadNeurons`.
    * ``flat_directions``: ``(N, m)`` flat directions of the energy in ``range(H)`` (not dead
      neurons), flat over the free layers; ``index`` maps rows back to layers and neurons.
    * ``residual``: ``max|F(x*)|``, how far ``x*`` is from being a steady state.
    * ``hessian_psd``: whether every Lagrangian Hessian is positive definite on its range (the
      energy is then a Lyapunov function and the spectrum real).
    * ``jacobian_spectrum``: all eigenvalues of the full Jacobian (``dense=True`` only).
    """

    stable: bool | None
    reason: str
    spectrum: np.ndarray
    energy_spectrum: np.ndarray | None
    n_dead: dict[str, int]
    flat_directions: np.ndarray
    residual: float
    hessian_psd: bool
    dead: DeadNeurons
    index: FlatIndex
    jacobian_spectrum: np.ndarray | None = None

    def __str__(self) -> str:
        dead = ", ".join(f"{k}: {v}" for k, v in self.n_dead.items())
        top = np.real(self.spectrum[0]) if len(self.spectrum) else float("nan")
        return (
            f"{_WORDS[self.stable]}: {self.reason}\n"
            f"  dead neurons per layer: {dead}\n"
            f"  largest Re λ on range(H): {top:.4g}; other flat directions: "
            f"{self.flat_directions.shape[1]}; residual |F| = {self.residual:.3g}"
        )


def _column_taus(net: HAM, dn: DeadNeurons, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.full(blocks[n].shape[1], net.layers[n].tau) for n in dn.index.names])


def stability(
    net: HAM,
    x_star: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    dense: bool = True,
    rtol: float = 1e-5,
    tol: float = 1e-5,
    steady_tol: float = 1e-4,
) -> StabilityReport:
    """Linear stability of the steady state ``x_star`` of ``net`` (clamped layers fixed), with dead
    neurons told apart from genuine flat directions (docs/maths.md §4.5, DN Proposition 4).

    ``rtol`` is the dead-neuron tolerance (:func:`dead_neurons`); ``tol`` the relative size below
    which an eigenvalue counts as zero (relative to ``max(1/τ, |spectrum|)``); ``steady_tol``
    bounds ``max|F(x*)| / (1 + max|x*|)`` for ``x_star`` to count as a steady state.
    ``dense=False`` never forms an ``N×N`` matrix: it finds the largest eigenvalues of the
    symmetrised Jacobian ``T^{-1/2}(H^{1/2} C H^{1/2} − I)T^{-1/2}`` matrix-free (needs ``H ⪰ 0``,
    else ``ValueError``). ``x_star``: one unbatched state. Returns a :class:`StabilityReport`
    whose ``stable`` is None when ``x_star`` is not a steady state or a zero eigenvalue leaves
    the linearisation undecided.
    """
    sys = FlatSystem(net, x_star, clamp=clamp)
    dn = dead_neurons(net, x_star, clamp=clamp, rtol=rtol)
    f = np.asarray(_call(sys, "residual", sys.x), dtype=np.float64)
    residual = float(np.max(np.abs(f)))
    steady = residual <= steady_tol * (1.0 + float(np.max(np.abs(np.asarray(sys.x)))))
    lam = np.concatenate([dn.live_eigenvalues[n] for n in dn.index.names])
    psd = bool(np.all(lam > 0))
    gz = _call(sys, "activation", sys.x)
    energy_spectrum = jac_spectrum = None
    flat = np.zeros((sys.n, 0))
    if dense:
        spec, energy_spectrum, ev, jac_spectrum = _dense_spectra(net, sys, dn, gz, lam, psd)
        if len(energy_spectrum):
            e_scale = max(1.0, float(np.max(np.abs(energy_spectrum))))
            flat = dn.live_basis() @ ev[:, np.abs(energy_spectrum) <= tol * e_scale]
    else:
        if not psd:
            raise ValueError("dense=False (Lanczos) needs PSD Lagrangian Hessians; use dense=True")
        spec = _lanczos_spectrum(net, sys, dn, gz)
    scale = max(1.0 / min(layer.tau for layer in net.layers.values()),
                float(np.max(np.abs(spec), initial=0.0)))
    stable, reason = _verdict(spec, tol * scale, steady, residual, sys.n - dn.total, dn.total,
                              flat, energy_spectrum if psd else None)
    if not psd and steady:
        reason += ("; H has negative eigenvalues, so E is not a Lyapunov function here; "
                   "the verdict rests on the linearisation alone")
    return StabilityReport(
        stable=stable,
        reason=reason,
        spectrum=np.asarray(spec),
        energy_spectrum=energy_spectrum,
        n_dead=dict(dn.counts),
        flat_directions=flat,
        residual=residual,
        hessian_psd=psd,
        dead=dn,
        index=dn.index,
        jacobian_spectrum=jac_spectrum,
    )


def _dense_spectra(net, sys, dn: DeadNeurons, gz, lam, psd):
    """``(spectrum on range(H), energy spectrum on range(H), its eigenvectors, full Jacobian
    spectrum)`` from dense matrices, in the live basis ``A`` of the dead-neuron split."""
    a = dn.live_basis()
    c = np.asarray(_jacfwd(sys, "currents", gz), dtype=np.float64)
    s = a.T @ c @ a
    tau_a = _column_taus(net, dn, dn.live)
    e_r = np.diag(lam) - lam[:, None] * s * lam[None, :]  # Aᵀ(H − HCH)A, docs/maths.md eq. (DN6)
    if len(lam) and psd:
        r = np.sqrt(lam)
        n_sym = r[:, None] * s * r[None, :] - np.eye(len(lam))
        spec = np.linalg.eigvalsh(n_sym / np.sqrt(np.outer(tau_a, tau_a)))[::-1]
    elif len(lam):
        j_a = (s * lam[None, :] - np.eye(len(lam))) / tau_a[:, None]
        spec = np.linalg.eigvals(j_a)
        spec = spec[np.argsort(-spec.real)]
    else:
        spec = np.zeros(0)
    if len(lam):
        eh, ev = np.linalg.eigh(0.5 * (e_r + e_r.T))
    else:
        eh, ev = np.zeros(0), np.zeros((0, 0))
    jac = np.linalg.eigvals(np.asarray(_jacfwd(sys, "field", sys.x), np.float64))
    return spec, eh, ev, jac[np.argsort(-jac.real)]


def _verdict(spec, zero, steady, residual, n_live, k, flat, energy_spectrum):
    """``(stable, reason)`` from the spectrum on range(H): unstable above ``zero``, stable below
    ``−zero``, undecided in between or away from a steady state."""
    top = float(np.max(spec.real)) if len(spec) else -np.inf
    if not steady:
        return None, (f"not a steady state: max|F(x)| = {residual:.3g}; relax further, or use "
                      "recover_steady_state() on an energy minimiser")
    if n_live == 0:
        return True, ("every neuron is dead: the currents are constant near x*, and every "
                      "direction decays at rate 1/τ")
    if top > zero:
        reason = (f"the Jacobian restricted to range(H) has an eigenvalue with real part {top:.4g} "
                  f"> 0 (an unstable direction of the {n_live} live ones)")
        if energy_spectrum is not None and len(energy_spectrum):
            reason += (f"; the energy Hessian on range(H) has eigenvalue "
                       f"{energy_spectrum[0]:.4g} < 0")
        return False, reason
    if top < -zero:
        reason = (f"all {n_live} eigenvalues of the Jacobian restricted to range(H) have negative "
                  f"real part (largest {top:.4g})")
        if k:
            reason += (f"; the {k} dead direction(s) are harmless zero modes of the energy Hessian "
                       "and decay at rate 1/τ, so the whole flat region is in the basin")
        return True, reason
    return None, (f"the largest eigenvalue on range(H) is {top:.3g} ≈ 0: the energy has "
                  f"{max(flat.shape[1], 1)} flat direction(s) that are not dead neurons, and "
                  "linearisation cannot decide")


def _lanczos_spectrum(net: HAM, sys, dn: DeadNeurons, gz: Array, num: int = 6) -> np.ndarray:
    """Top eigenvalues of ``T^{-1/2}(H^{1/2} C H^{1/2} − I)T^{-1/2}``: its spectrum is that of the
    Jacobian on range(H) plus ``−1/τ`` per dead direction, so the largest one decides stability."""
    sqrt_blocks = []
    for name in sys.free:
        layer = net.layers[name]
        xa = sys.state[name]
        if isinstance(layer.lagrangian, ElementwiseLagrangian):
            d = jnp.sqrt(jnp.maximum(jnp.reshape(layer.lagrangian.derivative(xa), (-1,)), 0.0))
            sqrt_blocks.append(("diag", d))
        else:
            a = jnp.asarray(dn.live[name], sys.x.dtype)
            r = jnp.sqrt(jnp.asarray(dn.live_eigenvalues[name], sys.x.dtype))
            sqrt_blocks.append(("dense", (a, r)))

    def sqrt_h(v):
        parts = []
        for name, (kind, data) in zip(sys.free, sqrt_blocks, strict=True):
            va = v[sys.index.slice(name)]
            if kind == "diag":
                parts.append(data * va)
            else:
                a, r = data
                parts.append(a @ (r * (a.T @ va)))
        return jnp.concatenate(parts)

    inv_sqrt_tau = 1.0 / jnp.sqrt(sys.tau)

    def mv(v):
        u = sqrt_h(inv_sqrt_tau * v)
        return inv_sqrt_tau * (sqrt_h(sys.coupling_mv(gz, u)) - inv_sqrt_tau * v)

    op = _operator(jax.jit(mv), sys.n, sys.x.dtype, symmetric=True)
    return np.asarray(extremal_eigenvalues(op, num=min(num, sys.n), which="largest"), np.float64)


@dataclasses.dataclass(frozen=True)
class RecoveredState:
    """Proposition 4.3 (docs/maths.md §4.6), as returned by :func:`recover_steady_state`:
    ``state`` is the steady state ``x* = c(g(x̃)) + b`` (clamped layers kept);
    ``projected`` the same by the projector form ``(I − P)x̃ + P(c(g(x̃)) + b)``; ``projector`` the
    dense ``P`` onto ``ker H(x̃)`` (flat free coordinates, ``(N, N)``); ``residual`` is
    ``max|F(x*)|``; ``dead`` the :class:`DeadNeurons` at ``x̃``."""

    state: dict[str, Array]
    projected: dict[str, Array]
    projector: np.ndarray
    residual: float
    dead: DeadNeurons


def recover_steady_state(
    net: HAM,
    x_tilde: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    rtol: float = 1e-5,
) -> RecoveredState:
    """The dynamical steady state behind an energy minimiser ``x_tilde`` (docs/maths.md §4.6).

    Minimising ``E`` fixes only the live part of the state: along dead directions ``E`` is flat and
    the minimiser may sit anywhere (e.g. ``x̃_0 = −42`` where the steady state has
    ``x*_0 = −1``). One fixed-point step ``x* = c(g(x̃)) + b`` restores it, since
    ``g(x*) = g(x̃)``. ``x_tilde``: one unbatched state; ``rtol`` is the dead-neuron tolerance
    of :func:`dead_neurons`. Returns a :class:`RecoveredState`."""
    sys = FlatSystem(net, x_tilde, clamp=clamp)
    dn = dead_neurons(net, x_tilde, clamp=clamp, rtol=rtol)
    target = _call(sys, "fixed_point_map", sys.x)
    p = dn.projector()
    pj = jnp.asarray(p, sys.x.dtype)
    projected = sys.x - pj @ sys.x + pj @ target
    residual = float(jnp.max(jnp.abs(_call(sys, "residual", target))))
    return RecoveredState(
        state=sys.full_state(target),
        projected=sys.full_state(projected),
        projector=p,
        residual=residual,
        dead=dn,
    )


def minimise_energy(
    net: HAM,
    x0: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    solver: optx.AbstractMinimiser | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-7,
    max_steps: int = 2000,
) -> dict[str, Array]:
    """A local minimiser of ``E`` over the free layers, found directly with optimistix (BFGS by
    default) from ``x0``. Dead coordinates have zero gradient, so they stay where ``x0`` put them:
    follow with :func:`recover_steady_state` to get the dynamical steady state (docs/maths.md
    §4.6). ``x0``: a state (any batch axes; samples are minimised together, their energies
    summed); returns the full state, same shapes, clamped layers unchanged. ``solver``: an
    optimistix minimiser (default ``BFGS(rtol, atol)``), at most ``max_steps`` steps."""
    dyn = net.dynamics(x0, clamp=clamp)
    solver = optx.BFGS(rtol=rtol, atol=atol) if solver is None else solver
    sol = _minimise(dyn, dyn.free_state(x0), solver, max_steps)
    return dyn.full_state(sol.value)
