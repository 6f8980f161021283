"""Associative memory without dead-neuron flat directions: the modified dynamics of the
dead-neurons paper (DN §4, docs/maths.md §4.7–4.8, our reconstruction).

The Krotov–Hopfield energy is flat along dead neurons. Rewriting the dynamics in the
post-activation variable ``y`` (``x = c(y) + b``, with ``c`` the currents of the synapses, ``W y``
for a dense coupling) gives a system with the same steady states and a family of energies with no
such flat directions::

    (9)   dy/dt = M(y) G(y),     G(y) = g(c(y) + b) − y
    (10)  E_{α,β} = α E_1 + β E_2,
          E_1(y) = yᵀc(y) + E_syn(y) − L(c(y) + b)     (= ½ yᵀWy − L(Wy + b) for E_syn = −½yᵀWy)
          E_2(y) = ½ |G(y)|²
          ∇E = −Kᵀ G,   K = α C + β (I − Ĥ C),   C = ∂c/∂y,  Ĥ = H(c(y) + b)
          dE/dt = −Gᵀ K M G ≤ 0   whenever sym(K M) ⪰ 0     (11)
    (12)  ∇²E(y*) = Kᵀ (I − Ĥ C) ≻ 0   ⇒  y* stable

``M`` is "identity", "gradient" (``M = Kᵀ``: ``dy/dt = −∇E``, always a descent), "polar" (``M = Q``
from the polar decomposition ``Kᵀ = Q P``: orthogonal, so the steady states are kept and
``K M = P ⪰ 0``, Proposition 5.2) or any callable ``y ↦ matrix``. Nothing here needs ``H ⪰ 0``, and
the β-energy ``E_2`` needs no symmetry of ``W`` (DN Examples 6–7).

For the original dynamics ``dx/dt = F(x) = c(g(x)) + b − x`` the same energies in ``x`` (eqs. 13–14)
are ``α[½(x−b)ᵀW⁻¹(x−b) − L(x)] + β ½|F(x)|²``; ``½|F|²`` (:func:`residual_energy`) has no flat
directions and decreases along ``dx/dt = F`` whenever ``ω(C H − I) ≤ 0`` (numerical abscissa).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from .._axes import sum_trailing
from .._ham import HAM
from ..lagrangians import Identity, Lagrangian, ReLU, Sigmoid, SmoothLeakyReLU, Tanh
from ._hessians import FlatIndex, FlatSystem, coupling, lagrangian_hessian

__all__ = [
    "PostActivationDynamics",
    "MatrixPostActivation",
    "HAMPostActivation",
    "post_activation",
    "residual_energy",
    "numerical_abscissa",
    "residual_energy_abscissa",
    "layered_weights",
    "derivative_bound",
    "spectral_rescale",
]

Vector = Float[Array, " n"]


def _polar_factor(a: Array) -> tuple[Array, Array]:
    """``a = Q P`` with ``Q`` orthogonal and ``P = (aᵀa)^{1/2} ⪰ 0`` (by SVD: ``a = UΣVᵀ`` gives
    ``Q = UVᵀ``, ``P = VΣVᵀ``)."""
    u, s, vt = jnp.linalg.svd(a)
    return u @ vt, (vt.T * s) @ vt


class PostActivationDynamics(eqx.Module):
    """The post-activation system (DN9)–(DN12) on a flat vector ``y`` (docs/maths.md §4.7–4.8);
    subclasses say what the currents ``c(y)``, the bias, the activation and the Lagrangian are
    (:class:`MatrixPostActivation`, :class:`HAMPostActivation`; :func:`post_activation` builds
    either). Every vector has ``N`` entries, one per free neuron. The system holds its choice
    of dynamics: ``alpha`` and ``beta`` weigh the two energies (α, β of eq. (DN10); defaults 0
    and 1, the β-energy alone) and ``m`` is the matrix ``M`` of eq. (DN9): ``"identity"``,
    ``"gradient"`` (default), ``"polar"`` or a callable ``y ↦ M`` (:meth:`mobility`). Another
    choice is another system: ``post_activation(..., alpha=..., beta=..., m=...)``."""

    alpha: float = eqx.field(static=True, default=0.0, kw_only=True)
    beta: float = eqx.field(static=True, default=1.0, kw_only=True)
    m: object = eqx.field(static=True, default="gradient", kw_only=True)

    def __check_init__(self):
        if not (callable(self.m) or self.m in ("identity", "gradient", "polar")):
            raise ValueError(f"M must be 'identity', 'gradient', 'polar' or a callable, got "
                             f"{self.m!r}")

    @abc.abstractmethod
    def currents(self, y: Vector) -> Vector:
        """``c(y)``: the input currents the synapses send when the activations are ``y``
        (``W y`` for a dense coupling). ``y``: ``(N,)``; returns ``(N,)``."""

    @property
    @abc.abstractmethod
    def bias(self) -> Vector:
        """``b``, the constant input currents, ``(N,)``."""

    @abc.abstractmethod
    def activation(self, x: Vector) -> Vector:
        """``g(x) = ∇L(x)``, the activation of the pre-activations ``x``.

        ``x``: ``(N,)``; returns ``(N,)``."""

    @abc.abstractmethod
    def lagrangian(self, x: Vector) -> Array:
        """``L(x)`` (a scalar), whose gradient is :meth:`activation`.

        ``x``: ``(N,)``."""

    @abc.abstractmethod
    def interaction(self, y: Vector) -> Array:
        """``yᵀc(y) + E_syn(y)``, the quadratic first term of ``E_1`` (``½ yᵀWy`` for dense W);
        only defined for symmetric couplings."""

    # --------------------------------------------------------------- maps and residuals
    def to_x(self, y: Vector) -> Vector:
        """``x = c(y) + b``: the affine map from post- to pre-activations (``W y + b``;
        docs/maths.md §4.7). ``y``: ``(N,)``; returns ``(N,)``."""
        return self.currents(y) + self.bias

    def to_y(self, x: Vector) -> Vector:
        """``y = g(x)``: a steady state ``x*`` of the original system maps to one of (DN9).

        ``x``: ``(N,)``; returns ``(N,)``."""
        return self.activation(x)

    def residual(self, y: Vector) -> Vector:
        """``G(y) = g(c(y) + b) − y``, zero exactly at steady states (docs/maths.md eq. (DN9)).

        ``y``: ``(N,)``; returns ``(N,)``."""
        return self.activation(self.to_x(y)) - y

    # ------------------------------------------------------------------------ energies
    def e1(self, y: Vector) -> Array:
        """``E_1 = yᵀc(y) + E_syn(y) − L(c(y) + b)`` (``½yᵀWy − L(Wy + b)``); ``∇E_1 = −C G``
        (docs/maths.md eq. (DN10)). ``y``: ``(N,)``; returns a scalar. Defined for symmetric
        couplings only (a :class:`MatrixPostActivation` with ``W ≠ Wᵀ`` raises ``ValueError``)."""
        return self.interaction(y) - self.lagrangian(self.to_x(y))

    def e2(self, y: Vector) -> Array:
        """``E_2 = ½|G(y)|²``; ``∇E_2 = (ĤC − I)ᵀ G`` (docs/maths.md eq. (DN10)).

        ``y``: ``(N,)``; returns a scalar."""
        r = self.residual(y)
        return 0.5 * jnp.vdot(r, r)

    def energy(self, y: Vector) -> Array:
        """``E_{α,β} = α E_1 + β E_2`` (docs/maths.md eq. (DN10)); a term whose weight is zero
        is not evaluated. ``y``: ``(N,)``; returns a scalar."""
        out = jnp.zeros((), y.dtype)
        if self.alpha != 0.0:
            out = out + self.alpha * self.e1(y)
        if self.beta != 0.0:
            out = out + self.beta * self.e2(y)
        return out

    # ------------------------------------------------------------------ linearisations
    def coupling(self, y: Vector) -> Array:
        """``C = ∂c/∂y`` (dense ``W``) by autodiff of the currents.

        ``y``: ``(N,)``; returns ``(N, N)``."""
        return jax.jacfwd(self.currents)(y)

    def hessian(self, y: Vector) -> Array:
        """``Ĥ = H(c(y) + b)``, the Lagrangian Hessian at the pre-activation (dense).

        ``y``: ``(N,)``; returns ``(N, N)``."""
        return jax.jacfwd(self.activation)(self.to_x(y))

    def k_matrix(self, y: Vector) -> Array:
        """``K = α C + β (I − Ĥ C)``, so that ``∇E_{α,β} = −Kᵀ G`` (docs/maths.md §4.7).

        ``y``: ``(N,)``; returns ``(N, N)``."""
        c = self.coupling(y)
        eye = jnp.eye(c.shape[0], dtype=c.dtype)
        return self.alpha * c + self.beta * (eye - self.hessian(y) @ c)

    def mobility(self, y: Vector) -> Array:
        """The matrix ``M(y)`` of (DN9), by :attr:`m`: "identity", "gradient" (``Kᵀ``), "polar"
        (``Q`` with ``Kᵀ = QP``, Proposition 5.2 of docs/maths.md §4.7), or a callable
        ``y ↦ M``. ``y``: ``(N,)``; returns ``(N, N)``."""
        if callable(self.m):
            return self.m(y)
        if self.m == "identity":
            return jnp.eye(y.shape[0], dtype=y.dtype)
        if self.m == "gradient":
            return self.k_matrix(y).T
        return _polar_factor(self.k_matrix(y).T)[0]

    def field(self, y: Vector) -> Vector:
        """``dy/dt = M(y) G(y)`` (docs/maths.md eq. (DN9)). ``"gradient"`` is ``−∇E`` by autodiff
        (matrix-free). ``y``: ``(N,)``; returns ``(N,)``."""
        if self.m == "gradient":
            return -jax.grad(self.energy)(y)
        if self.m == "identity":
            return self.residual(y)
        return self.mobility(y) @ self.residual(y)

    def energy_rate(self, y: Vector) -> Array:
        """``dE/dt = ∇E · M G = −Gᵀ K M G`` along (DN9) (docs/maths.md §4.7): non-positive under
        condition (DN11). ``y``: ``(N,)``; returns a scalar."""
        return jnp.vdot(jax.grad(self.energy)(y), self.field(y))

    def condition(self, y: Vector) -> Array:
        """``λ_min(sym(K M))``: condition (DN11) holds at ``y`` when it is ``≥ 0``
        (docs/maths.md eq. (DN11)). ``y``: ``(N,)``; returns a scalar."""
        km = self.k_matrix(y) @ self.mobility(y)
        return jnp.linalg.eigvalsh(0.5 * (km + km.T))[0]

    def stability_matrix(self, y: Vector) -> Array:
        """``∇²E(y*) = Kᵀ(I − ĤC) = α(C − CĤC) + β(I − CĤ)(I − ĤC)`` at a steady state
        (docs/maths.md eq. (DN12)); positive definite ⇒ ``y*`` is a stable steady state of
        (DN9). ``y``: ``(N,)``; returns ``(N, N)``."""
        c = self.coupling(y)
        eye = jnp.eye(c.shape[0], dtype=c.dtype)
        return self.k_matrix(y).T @ (eye - self.hessian(y) @ c)

    def solve(
        self,
        y0: Vector,
        t1: float = 10.0,
        *,
        n_save: int = 64,
        rtol: float = 1e-6,
        atol: float = 1e-7,
        max_steps: int = 100_000,
    ) -> tuple[Array, Array]:
        """Integrate (DN9) from ``y0`` to ``t1`` with diffrax (Tsit5, adaptive, ``rtol``/``atol``,
        at most ``max_steps`` steps); returns the ``n_save`` save times ``(n_save,)`` and the
        states ``(n_save, N)``. Compiled once per system structure and choice of ``M``, α, β
        (the weights are traced, not baked in). docs/maths.md eq. (DN9)."""
        return _solve(self, jnp.asarray(y0), jnp.asarray(t1, y0.dtype), n_save, rtol, atol,
                      max_steps)

    def energies(self, ys: Float[Array, "t n"]) -> Array:
        """``E_{α,β}`` (docs/maths.md eq. (DN10)) at every row of ``ys`` (e.g. a trajectory from
        :meth:`solve`). ``ys``: ``(T, N)``; returns ``(T,)``."""
        return _energies(self, ys)

    # ------------------------------------------------- the original dynamics (eqs. 13–14)
    def original_residual(self, x: Vector) -> Vector:
        """``F(x) = c(g(x)) + b − x``: the original field (DN1) (``W g(x) − x + b``;
        docs/maths.md eq. (DN1)). ``x``: ``(N,)``; returns ``(N,)``."""
        return self.to_x(self.activation(x)) - x

    def residual_energy(self, x: Vector) -> Array:
        """``½|F(x)|²``: the β-term of (DN14), a Lyapunov function of ``dx/dt = F`` when
        ``ω(C H − I) ≤ 0``, with no flat directions (``F`` shifts by ``−Dα`` along dead ones;
        docs/maths.md §4.8). ``x``: ``(N,)``; returns a scalar."""
        f = self.original_residual(x)
        return 0.5 * jnp.vdot(f, f)

    def x_energy(self, x: Vector) -> Array:
        """docs/maths.md eq. (DN14): ``α[½(x−b)ᵀC⁻¹(x−b) − L(x)] + β ½|F(x)|²``, i.e. (DN10) at
        ``y = C⁻¹(x − b)``. The α-term needs linear, invertible currents (solved with lineax).
        ``x``: ``(N,)``; returns a scalar."""
        out = jnp.zeros((), x.dtype)
        if self.alpha != 0.0:
            d = x - self.bias
            c = self.coupling(jnp.zeros_like(x))
            y = lx.linear_solve(lx.MatrixLinearOperator(c), d).value
            out = out + self.alpha * (0.5 * jnp.vdot(d, y) - self.lagrangian(x))
        if self.beta != 0.0:
            out = out + self.beta * self.residual_energy(x)
        return out


@eqx.filter_jit
def _solve(system, y0, t1, n_save, rtol, atol, max_steps):
    # (9) is an ODE in the activations y with a mobility M, not the dynamics of a HAM, so it is
    # integrated here and not by hj.relax (whose states are a HAM's layer states)
    ts = jnp.linspace(0.0, 1.0, n_save) * t1
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: args.field(y)),
        diffrax.Tsit5(),
        t0=0.0,
        t1=t1,
        dt0=None,
        y0=y0,
        args=system,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    return ts, sol.ys


@eqx.filter_jit
def _energies(system, ys):
    return jax.vmap(system.energy)(ys)


class MatrixPostActivation(PostActivationDynamics):
    """(DN9)–(DN14) for one coupling matrix: ``x = W y + b``, ``g = ∇L`` of a (vector)
    Lagrangian (docs/maths.md §4.7–4.8). ``W`` may be non-symmetric (then only ``E_2``,
    β-energies, are defined: DN Example 6).

    ``MatrixPostActivation(weight, bias, lagrangian, *, alpha, beta, m)``: ``weight`` is ``W``,
    ``(N, N)`` (a
    non-square one raises ``ValueError``); ``bias`` is ``b``, broadcast to ``(N,)`` and kept
    as ``bias_vector``; ``lagrangian`` (kept as ``lagrangian_fn``) a
    :class:`hamjax.lagrangians.Lagrangian` on ``(N,)`` vectors. ``symmetric`` records whether
    ``W = Wᵀ`` (to float tolerance)."""

    weight: Array
    bias_vector: Array
    lagrangian_fn: Lagrangian
    symmetric: bool = eqx.field(static=True)

    def __init__(self, weight, bias, lagrangian: Lagrangian, *, alpha: float = 0.0,
                 beta: float = 1.0, m="gradient"):
        self.alpha, self.beta, self.m = alpha, beta, m
        self.weight = jnp.asarray(weight, dtype=jnp.result_type(float))
        n = self.weight.shape[0]
        if self.weight.shape != (n, n):
            raise ValueError(f"W must be square, got shape {self.weight.shape}")
        self.bias_vector = jnp.broadcast_to(jnp.asarray(bias, self.weight.dtype), (n,))
        self.lagrangian_fn = lagrangian
        w = np.asarray(self.weight)
        self.symmetric = bool(np.allclose(w, w.T, rtol=1e-6, atol=1e-7))

    def currents(self, y):
        """``c(y) = W y``.

        ``y``: ``(N,)``; returns ``(N,)``."""
        return self.weight @ y

    @property
    def bias(self):
        """``b`` (``bias_vector``), ``(N,)``."""
        return self.bias_vector

    def activation(self, x):
        """``g(x) = ∇L(x)`` of the Lagrangian.

        ``x``: ``(N,)``; returns ``(N,)``."""
        return self.lagrangian_fn.activation(x)

    def lagrangian(self, x):
        """``L(x)``, a scalar.

        ``x``: ``(N,)``."""
        return self.lagrangian_fn(x)

    def interaction(self, y):
        """``½ yᵀ W y``, the first term of ``E_1`` (docs/maths.md eq. (DN10)).

        ``y``: ``(N,)``; returns a scalar. Raises ``ValueError`` for a non-symmetric ``W``."""
        if not self.symmetric:
            raise ValueError("E_1 needs a symmetric W (DN Example 6: only E_2 exists for W ≠ Wᵀ); "
                             "use alpha=0")
        return 0.5 * jnp.vdot(y, self.weight @ y)

    def coupling(self, y):
        """``C = W``, whatever ``y``.

        Returns ``(N, N)``."""
        return self.weight


class HAMPostActivation(PostActivationDynamics):
    """(DN9)–(DN14) for a HAM: ``y`` are the activations of its free layers (flattened in
    :class:`hamjax.analysis.FlatIndex` order), ``c(y) = −∂E_syn/∂y`` its synaptic currents with the
    clamped layers fixed, ``b`` its layer biases: the HAM's :class:`FlatSystem`, read in the
    post-activation variable (docs/maths.md §4.7). Works for any synapse (for nonlinear ones
    such as Memory, ``C(y)`` is the synapse Hessian and ``E_1`` is still exact). ``E_1(y*)``
    equals the HAM energy of ``x* = c(y*) + b`` less the constant Legendre terms of the clamped
    layers.

    ``HAMPostActivation(net, x, clamp=..., alpha=..., beta=..., m=...)``: ``x`` supplies the
    values of the clamped layers
    (required when ``clamp`` is not empty, else ``ValueError``); ``system`` is the underlying
    :class:`FlatSystem`."""

    system: FlatSystem

    def __init__(self, net: HAM, x: Mapping[str, Array] | None = None, *,
                 clamp: Iterable[str] | str = (), alpha: float = 0.0, beta: float = 1.0,
                 m="gradient"):
        self.alpha, self.beta, self.m = alpha, beta, m
        clamp = net.check_clamp(clamp)
        if clamp and x is None:
            raise ValueError("clamped layers need a state x to hold them at")
        # the free layers' values do not matter (every method takes y): only clamped ones are read
        state = net.init_state()
        state.update({n: jnp.asarray(x[n]) for n in clamp})
        self.system = FlatSystem(net, state, clamp=clamp)

    @property
    def index(self) -> FlatIndex:
        """The :class:`FlatIndex` of the free layers: the layout of every vector."""
        return self.system.index

    def unflatten(self, v: Vector) -> dict[str, Array]:
        """A flat vector as a dict over the free layers (:meth:`FlatIndex.unflatten`).

        ``v``: ``(N,)``; returns ``{name: array of the layer's shape}``."""
        return self.index.unflatten(v)

    def flatten(self, state: Mapping[str, Array]) -> Vector:
        """A dict over the free layers as a flat vector (:meth:`FlatIndex.flatten`).

        ``state``: ``{name: array of the layer's shape}``; returns ``(N,)``."""
        return self.index.flatten(state)

    def currents(self, y):
        """``c(y) = −∂E_syn/∂y``, the synaptic currents into the free layers (docs/maths.md
        §1.3). ``y``: ``(N,)``; returns ``(N,)``."""
        return self.system.currents(y)

    def to_x(self, y):
        """``x = c(y) + b`` (:meth:`FlatSystem.drive`).

        ``y``: ``(N,)``; returns ``(N,)``."""
        return self.system.drive(y)

    @property
    def bias(self):
        """``b``, the free layers' biases (zero where a layer has none), ``(N,)``."""
        return self.system.bias

    def activation(self, x):
        """``g(x)`` of the free layers (:meth:`FlatSystem.activation`).

        ``x``: ``(N,)``; returns ``(N,)``."""
        return self.system.activation(x)

    def lagrangian(self, x):
        """``L(x) = Σ_A L_A(x_A)`` over the free layers, a scalar.

        ``x``: ``(N,)``."""
        return self.system.lagrangian(x)

    def interaction(self, y):
        """``yᵀc(y) + E_syn(y)``, the first term of ``E_1`` (docs/maths.md §4.7).

        ``y``: ``(N,)``; returns a scalar."""
        return jnp.vdot(y, self.currents(y)) + self.system.synapse_energy(y)


def post_activation(net_or_weight, bias=None, lagrangian: Lagrangian | None = None, *,
                    x=None, clamp=(), alpha: float = 0.0, beta: float = 1.0,
                    m="gradient") -> PostActivationDynamics:
    """The modified system (DN9) of a HAM (``post_activation(net, x=x, clamp=...)``) or of a
    matrix (``post_activation(W, b, lagrangian)``): a :class:`HAMPostActivation` or a
    :class:`MatrixPostActivation` (docs/maths.md §4.7), with the energy ``α E_1 + β E_2`` of
    eq. (DN10) (``alpha``, ``beta``; default the β-energy alone) and the matrix ``M`` of (DN9)
    (``m``: ``"gradient"``, ``"identity"``, ``"polar"`` or a callable). For a matrix, ``bias``
    defaults to 0 and a ``lagrangian`` is required (else ``ValueError``); an unknown ``m``
    raises ``ValueError``."""
    choice = {"alpha": alpha, "beta": beta, "m": m}
    if isinstance(net_or_weight, HAM):
        return HAMPostActivation(net_or_weight, x, clamp=clamp, **choice)
    if lagrangian is None:
        raise ValueError("a matrix system needs a Lagrangian")
    return MatrixPostActivation(net_or_weight, 0.0 if bias is None else bias, lagrangian,
                                **choice)


# ------------------------------------------------------------------------- helpers
def residual_energy(net: HAM, x: Mapping[str, Array], *, clamp: Iterable[str] | str = ()) -> Array:
    """``½ Σ_A |F_A(x)|²`` per sample, ``F_A = τ_A ẋ_A = c_A + I_A − x_A`` (docs/maths.md
    eq. (DN14) with α = 0, β = 1): a diagnostic energy of the original dynamics without
    dead-neuron flat directions. Batch-native: ``x`` is ``{name: (*batch, *shape)}`` and the
    result has shape ``batch``; the layers in ``clamp`` are held fixed and contribute nothing."""
    dyn = net.dynamics(x, clamp=clamp)
    f = dyn.residual(dyn.free_state(x))
    return sum(0.5 * sum_trailing(v * v, net.layers[n].ndim) for n, v in f.items())


def numerical_abscissa(a: Array) -> Array:
    """The numerical abscissa ``ω(A) = λ_max((A + Aᵀ)/2)``: ``d|v|²/dt ≤ 2ω|v|²`` along
    ``v' = A v`` (docs/maths.md §0). ``a``: a square matrix; returns a scalar."""
    a = jnp.asarray(a)
    return jnp.linalg.eigvalsh(0.5 * (a + a.T))[-1]


def residual_energy_abscissa(net: HAM, x: Mapping[str, Array], *,
                             clamp: Iterable[str] | str = ()) -> Array:
    """``ω((C H − I) T⁻¹)`` at ``x``: where it is ``≤ 0``,
    ``d(½|F|²)/dt = Fᵀ(C H − I)T⁻¹F ≤ 0``, so the residual energy is a Lyapunov function there
    (for τ = 1, ``‖C‖₂ sup g' ≤ 1`` suffices: DN Example 6.2; docs/maths.md §4.8).
    ``x``: one unbatched state; returns a scalar."""
    sys = FlatSystem(net, x, clamp=clamp)
    j = coupling(net, x, clamp=clamp) @ lagrangian_hessian(net, x, clamp=clamp)
    j = j - jnp.eye(sys.n, dtype=j.dtype)
    return numerical_abscissa(j / sys.tau[None, :])


def layered_weights(ws: Sequence[Array], vs: Sequence[Array] | None = None) -> Array:
    """The block matrix of DN Examples 1 and 7 for layers ``x_1 … x_L``: feedforward blocks
    ``W_k`` (layer k → k+1, shape ``(n_{k+1}, n_k)``) below the diagonal and feedback blocks
    ``V_k`` (k+1 → k, default ``W_kᵀ``: symmetric, Example 1) above it (docs/maths.md §4.1).
    Returns ``(Σ n_k, Σ n_k)``; blocks of inconsistent shapes raise ``ValueError``."""
    ws = [jnp.asarray(w) for w in ws]
    vs = [w.T for w in ws] if vs is None else [jnp.asarray(v) for v in vs]
    sizes = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    for k, (w, v) in enumerate(zip(ws, vs, strict=True)):
        if w.shape != (sizes[k + 1], sizes[k]) or v.shape != (sizes[k], sizes[k + 1]):
            raise ValueError(f"block {k}: W has shape {w.shape}, V has shape {v.shape}; expected "
                             f"{(sizes[k + 1], sizes[k])} and {(sizes[k], sizes[k + 1])}")
    off = np.cumsum([0] + sizes)
    out = jnp.zeros((off[-1], off[-1]), ws[0].dtype)
    for k, (w, v) in enumerate(zip(ws, vs, strict=True)):
        out = out.at[off[k + 1] : off[k + 2], off[k] : off[k + 1]].set(w)
        out = out.at[off[k] : off[k + 1], off[k + 1] : off[k + 2]].set(v)
    return out


def derivative_bound(lagrangian: Lagrangian) -> float:
    """``sup_x |g'(x)|`` for an elementwise Lagrangian with known bounds (the tight SMU bound
    ``½(1+a) + 0.62891(1−a)`` of docs/maths.md §4.7 for :class:`SmoothLeakyReLU`; 1 for
    Identity and ReLU, ``β`` for Tanh, ``β/4`` for Sigmoid). Returns a Python float; another
    Lagrangian raises ``ValueError``."""
    if isinstance(lagrangian, SmoothLeakyReLU):
        lo, hi = lagrangian.derivative_bounds()
        return float(max(abs(float(lo)), abs(float(hi))))
    if isinstance(lagrangian, Identity | ReLU):
        return 1.0
    if isinstance(lagrangian, Tanh):
        return float(lagrangian.beta)
    if isinstance(lagrangian, Sigmoid):
        return float(lagrangian.beta) / 4.0
    raise ValueError(f"no known bound on g' for {type(lagrangian).__name__}; pass c directly")


def spectral_rescale(w_hat: Array, lagrangian: Lagrangian | None = None, *, c: float | None = None,
                     eps: float = 0.05) -> Array:
    """``W = Ŵ / (c ‖Ŵ‖₂ (1 + ε))`` with ``c = sup|g'|`` (DN Example 7): then
    ``‖Ĥ W‖₂ ≤ 1/(1+ε) < 1`` everywhere, so ``I − Ĥ W`` is never singular (no false memories) and
    gradient flow on ``E_2`` keeps ``M = (I − ĤW)ᵀ`` invertible (docs/maths.md §4.7). Block
    structure is preserved; returns ``Ŵ``'s shape. Neither ``lagrangian`` nor ``c`` raises
    ``ValueError``."""
    if c is None:
        if lagrangian is None:
            raise ValueError("spectral_rescale needs the Lagrangian or the bound c")
        c = derivative_bound(lagrangian)
    w_hat = jnp.asarray(w_hat)
    return w_hat / (c * jnp.linalg.norm(w_hat, 2) * (1.0 + eps))

