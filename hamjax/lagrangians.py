"""Lagrangians: convex scalar functions of a layer's state whose gradient is the activation.

A layer with state ``x`` and Lagrangian ``L`` has activation ``g = ∇L(x)`` (docs/maths.md eq. 7)
and energy ``x·g − L(x)`` (the Legendre transform); the Hessian ``H = ∇²L = ∂g/∂x`` must be
positive semi-definite for the energy to decrease along the dynamics (eq. 9). Every Lagrangian
here is an ``eqx.Module`` with

* ``__call__(x, ndim=None)``: ``L(x)`` summed over the layer's own axes, the last ``ndim`` axes of
  ``x`` (all of them when ``ndim`` is None), leading batch axes kept;
* ``activation(x, ndim=None)``: the closed form of ``∇L(x)``, so that dynamics and BPTT never pay
  for differentiating ``L`` by autodiff.

Parameters such as ``beta`` are stored as JAX arrays, so they are trained like any weight
(``eqx.filter_grad`` reaches them). Degrees, axes and epsilons are fixed hyperparameters.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, ArrayLike

from ._axes import sum_trailing

__all__ = [
    "Lagrangian",
    "ElementwiseLagrangian",
    "Identity",
    "ReLU",
    "RePU",
    "Exp",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "LayerNorm",
    "SphericalNorm",
    "SmoothLeakyReLU",
]


def _param(value: ArrayLike) -> Array:
    """A trainable floating-point parameter."""
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    # strongly typed: a weakly typed Python-float parameter turns strong after the first optax
    # update, and every jitted step that sees both compiles again
    return jnp.asarray(value, dtype=value.dtype)


def _absolute_axis(axis: int, x: Array, ndim: int | None) -> int:
    """Resolve a layer axis (counted inside the layer's own shape) to an axis of ``x``."""
    layer_ndim = x.ndim if ndim is None else ndim
    if not -layer_ndim <= axis < layer_ndim:
        # a negative axis past the layer's own axes would silently reduce over a batch axis
        raise ValueError(f"axis {axis} is out of range for a layer with {layer_ndim} axes")
    if axis < 0:
        return x.ndim + axis
    return x.ndim - layer_ndim + axis


def _along(p: Array, x: Array, axis: int) -> Array:
    """Broadcast a scalar or a vector parameter along ``axis`` (absolute) of ``x``."""
    if p.ndim == 0:
        return p
    return p.reshape(p.shape + (1,) * (x.ndim - axis - 1))


class Lagrangian(eqx.Module):
    """Base class: a convex function ``L`` of a layer's state; its gradient is the layer's
    activation, ``g = ∇L(x)`` (docs/maths.md eqs. 1, 7).

    A subclass implements ``__call__`` (``L`` per sample) and ``activation`` (``∇L`` in closed
    form). ``ndim`` is the number of the layer's own (trailing) axes of ``x``, so that ``x`` of
    shape ``(*batch, *layer shape)`` gives one value of ``L`` per sample; ``None`` treats all of
    ``x`` as one sample."""

    @abc.abstractmethod
    def __call__(self, x: Array, ndim: int | None = None) -> Array:
        """``L(x)``, summed over the last ``ndim`` axes (all when None).

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)``; returns shape
        ``batch`` (a scalar when ``ndim`` is None)."""

    @abc.abstractmethod
    def activation(self, x: Array, ndim: int | None = None) -> Array:
        """The activation ``g = ∂L/∂x`` in closed form (docs/maths.md eq. 7).

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)`` (None: all axes are
        the layer's); returns the same shape as ``x``."""


class ElementwiseLagrangian(Lagrangian):
    """Base class of the additive Lagrangians ``L(x) = Σ_i F(x_i)`` (docs/maths.md eq. 10):
    ``g_i = f(x_i) = F'(x_i)``, Hessian ``diag(f'(x_i))`` (eq. 11).

    A subclass implements ``elementwise`` (``F``), ``activation`` (``f``) and ``derivative``
    (``f'``), all acting neuron by neuron on arrays of any shape. ``H ⪰ 0`` means ``f``
    non-decreasing; a neuron with ``f'(x_i) = 0`` is dead (§4.3)."""

    @abc.abstractmethod
    def elementwise(self, x: Array) -> Array:
        """``F(x)`` for every neuron, so that ``L(x) = Σ_i F(x_i)`` (docs/maths.md eq. 10).

        ``x``: any shape; returns the same shape."""

    @abc.abstractmethod
    def activation(self, x: Array, ndim: int | None = None) -> Array:
        """The activation ``f(x) = F'(x)``, neuron by neuron (docs/maths.md eq. 11).

        ``x``: any shape (``ndim`` is not needed and ignored); returns the same shape."""

    @abc.abstractmethod
    def derivative(self, x: Array) -> Array:
        """``f'(x)``: the diagonal of the Lagrangian Hessian ``H = diag(f'(x_i))``, in closed
        form (docs/maths.md §2.1). ``x``: any shape; returns the same shape."""

    def __call__(self, x: Array, ndim: int | None = None) -> Array:
        """``L(x) = Σ_i F(x_i)`` over the last ``ndim`` axes (all when None; docs/maths.md
        eq. 10). ``x``: ``(*batch, *layer shape)``; returns shape ``batch``."""
        return sum_trailing(self.elementwise(x), ndim)


class Identity(ElementwiseLagrangian):
    """``L = ½ Σ x²``, ``g = x``: the linear (visible) neurons of HAM eq. (13) (docs/maths.md
    eqs. 13, L1).

    No parameters. ``H = I``: no neuron is ever dead. The default Lagrangian of a
    :class:`hamjax.Layer`."""

    def elementwise(self, x):
        """``F(x) = ½x²`` for every neuron.

        ``x``: any shape; returns the same shape."""
        return 0.5 * x * x

    def activation(self, x, ndim=None):
        """``g = x``: the identity.

        ``x``: any shape (``ndim`` ignored); returned as it is."""
        return x

    def derivative(self, x):
        """``f'(x) = 1``: the diagonal of ``H = I``.

        ``x``: any shape; returns ones of the same shape."""
        return jnp.ones_like(x)


class ReLU(ElementwiseLagrangian):
    """``L = ½ Σ relu(x)²``, ``g = relu(x)`` (DN Example 2; docs/maths.md eq. L2, §4.2).

    No parameters. Dead neurons where ``x < 0``: there ``f' = 0`` and the energy is flat along
    the neuron's axis, on an unbounded region (§4.2–4.3)."""

    def elementwise(self, x):
        """``F(x) = ½ relu(x)² = ½ max(x, 0)²`` for every neuron.

        ``x``: any shape; returns the same shape."""
        r = jax.nn.relu(x)
        return 0.5 * r * r

    def activation(self, x, ndim=None):
        """``g = relu(x) = max(x, 0)``.

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        return jax.nn.relu(x)

    def derivative(self, x):
        """``f'(x) = 1`` where ``x > 0``, else 0 (0 at ``x = 0``): the diagonal of ``H``.

        ``x``: any shape; returns the same shape and dtype."""
        return (x > 0).astype(x.dtype)


class RePU(ElementwiseLagrangian):
    """Rectified polynomial ``L = (1/n) Σ relu(x)^n``, ``g = relu(x)^(n−1)``; ``n ≥ 2``.

    The dense associative memory energy ``F(x) = relu(x)^n`` of Krotov & Hopfield (2016), model A
    of docs/maths.md §1.2 (eq. L3). ``n``: the degree (a static hyperparameter, default 2; ``n < 2``
    raises ``ValueError``, the Lagrangian would not be convex). Dead neurons where ``x < 0``."""

    n: float = eqx.field(static=True, default=2.0)

    def __check_init__(self):
        if not self.n >= 2:
            raise ValueError(f"RePU needs degree n >= 2 for a convex Lagrangian, got n={self.n}")

    def elementwise(self, x):
        """``F(x) = relu(x)^n / n`` for every neuron.

        ``x``: any shape; returns the same shape."""
        return jax.nn.relu(x) ** self.n / self.n

    def activation(self, x, ndim=None):
        """``g = relu(x)^(n−1)``.

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        return jax.nn.relu(x) ** (self.n - 1)

    def derivative(self, x):
        """``f'(x) = (n−1) relu(x)^(n−2)`` where ``x > 0``, else 0: the diagonal of ``H``.

        ``x``: any shape; returns the same shape."""
        return (self.n - 1) * jax.nn.relu(x) ** (self.n - 2) * (x > 0)


class Exp(ElementwiseLagrangian):
    """``L = (1/β) Σ exp(βx)``, ``g = exp(βx)``: the exponential dense associative memory
    (docs/maths.md eq. L4; model A of §1.2 with an exponential interaction function, §6.2).

    ``beta``: the inverse temperature β (a trainable array, default 1; positive for a convex
    ``L``)."""

    beta: Array = eqx.field(converter=_param, default=1.0)

    def elementwise(self, x):
        """``F(x) = e^{βx} / β`` for every neuron.

        ``x``: any shape; returns the same shape."""
        return jnp.exp(self.beta * x) / self.beta

    def activation(self, x, ndim=None):
        """``g = e^{βx}``.

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        return jnp.exp(self.beta * x)

    def derivative(self, x):
        """``f'(x) = β e^{βx}``: the diagonal of ``H``.

        ``x``: any shape; returns the same shape."""
        return self.beta * jnp.exp(self.beta * x)


def _log_cosh(y):
    # log cosh y = |y| + log1p(e^{-2|y|}) − log 2, finite for every float y
    a = jnp.abs(y)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - math.log(2.0)


class Tanh(ElementwiseLagrangian):
    """``L = (1/β) Σ log cosh(βx)``, ``g = tanh(βx)``: the graded-response neurons of the
    continuous Hopfield network (docs/maths.md eq. L5, §1.1;
    :func:`hamjax.models.continuous_hopfield`).

    ``beta``: the gain β (a trainable array, default 1; positive for a convex ``L``). Saturates
    for large ``|x|``, where ``f'`` falls to zero in floating point (dead neurons, §4.2)."""

    beta: Array = eqx.field(converter=_param, default=1.0)

    def elementwise(self, x):
        """``F(x) = log cosh(βx) / β`` for every neuron (computed without overflow).

        ``x``: any shape; returns the same shape."""
        return _log_cosh(self.beta * x) / self.beta

    def activation(self, x, ndim=None):
        """``g = tanh(βx)``.

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        return jnp.tanh(self.beta * x)

    def derivative(self, x):
        """``f'(x) = β (1 − tanh²(βx))``: the diagonal of ``H``.

        ``x``: any shape; returns the same shape."""
        t = jnp.tanh(self.beta * x)
        return self.beta * (1.0 - t * t)


class Sigmoid(ElementwiseLagrangian):
    """``L = (1/β) Σ log(1 + e^{βx})``, ``g = σ(βx)`` (DN Example 3; docs/maths.md eq. L6, §4.2).

    ``beta``: the gain β (a trainable array, default 1; positive for a convex ``L``). Where
    ``σ(βx)`` saturates in floating point, ``f' = 0``: dead neurons (§4.2)."""

    beta: Array = eqx.field(converter=_param, default=1.0)

    def elementwise(self, x):
        """``F(x) = log(1 + e^{βx}) / β`` (softplus) for every neuron.

        ``x``: any shape; returns the same shape."""
        return jax.nn.softplus(self.beta * x) / self.beta

    def activation(self, x, ndim=None):
        """``g = σ(βx) = 1 / (1 + e^{−βx})``.

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        return jax.nn.sigmoid(self.beta * x)

    def derivative(self, x):
        """``f'(x) = β σ(βx) (1 − σ(βx))``: the diagonal of ``H``.

        ``x``: any shape; returns the same shape."""
        s = jax.nn.sigmoid(self.beta * x)
        return self.beta * s * (1.0 - s)


class Softmax(Lagrangian):
    """``L = (1/β) Σ_{other axes} log Σ_axis exp(βx)``, ``g = softmax(βx, axis)``.

    HAM eq. (13)/(16); along the channel axis of a feature map it is the convolutional hidden layer
    of eq. (20) (docs/maths.md eqs. 13, 16, 20, L7). ``L(x + α·1) = L(x) + α``: the shift
    direction is a dead direction (DN Example 4; docs/maths.md §4.2).

    ``beta``: the inverse temperature β (a trainable array, default 1). ``axis``: the axis the
    softmax runs along (static, default −1), counted inside the layer's own shape; a negative
    axis counts from the end. An axis outside the layer's axes raises ``ValueError`` when the
    Lagrangian is evaluated."""

    beta: Array = eqx.field(converter=_param, default=1.0)
    axis: int = eqx.field(static=True, default=-1)

    def __call__(self, x, ndim=None):
        """``L(x) = (1/β) log Σ_axis exp(βx)``, summed over the layer's other axes.

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)``; returns shape
        ``batch``."""
        axis = _absolute_axis(self.axis, x, ndim)
        lse = jax.nn.logsumexp(self.beta * x, axis=axis) / self.beta
        return sum_trailing(lse, None if ndim is None else ndim - 1)

    def activation(self, x, ndim=None):
        """``g = softmax(βx)`` along ``axis``: non-negative, summing to 1 along that axis.

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)``; same shape out."""
        return jax.nn.softmax(self.beta * x, axis=_absolute_axis(self.axis, x, ndim))


class _Normalisation(Lagrangian):
    """``L = γ·norm(x) + Σ δ·x`` along ``axis``, summed over the other axes: the shared form of
    the normalising Lagrangians, whose activation is ``γ ∇norm + δ``."""

    gamma: Array = eqx.field(converter=_param, default=1.0)
    delta: Array = eqx.field(converter=_param, default=0.0)
    axis: int = eqx.field(static=True, default=-1)
    eps: float = eqx.field(static=True, default=1e-5)

    @abc.abstractmethod
    def _norm(self, x: Array, axis: int) -> Array:
        """The norm along ``axis`` (reduced)."""

    def __call__(self, x, ndim=None):
        axis = _absolute_axis(self.axis, x, ndim)
        bias_term = jnp.sum(_along(self.delta, x, axis) * x, axis=axis)
        return sum_trailing(self.gamma * self._norm(x, axis) + bias_term,
                            None if ndim is None else ndim - 1)


class LayerNorm(_Normalisation):
    """``L = γ D sqrt(var(x) + ε) + Σ δ·x`` along ``axis`` (D its length), summed over other axes.

    ``g = γ (x − mean x) / sqrt(var(x) + ε) + δ``: layer normalisation as a gradient
    (the Energy Transformer's token norm; docs/maths.md eq. L8). ``γ`` is a learnable scalar
    gain (a per-neuron gain is not the gradient of any Lagrangian), ``δ`` a learnable bias broadcast
    along ``axis``.

    Fields: ``gamma`` (γ, default 1), ``delta`` (δ, a scalar or a vector of the axis' length,
    default 0), ``axis`` (static, default −1, counted inside the layer's shape) and ``eps``
    (ε, static, default ``1e-5``)."""

    def _norm(self, x, axis):
        xc = x - jnp.mean(x, axis=axis, keepdims=True)
        return x.shape[axis] * jnp.sqrt(jnp.mean(xc * xc, axis=axis) + self.eps)

    def activation(self, x, ndim=None):
        """``g = γ (x − mean x) / sqrt(var(x) + ε) + δ`` along ``axis``.

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)``; same shape out."""
        axis = _absolute_axis(self.axis, x, ndim)
        xc = x - jnp.mean(x, axis=axis, keepdims=True)
        var = jnp.mean(xc * xc, axis=axis, keepdims=True)
        return self.gamma * xc / jnp.sqrt(var + self.eps) + _along(self.delta, x, axis)


class SphericalNorm(_Normalisation):
    """``L = γ sqrt(Σ x² + ε) + Σ δ·x`` along ``axis``: divisive normalisation, model C of
    Krotov & Hopfield (docs/maths.md eq. L9, §1.2); ``g = γ x / sqrt(Σ x² + ε) + δ``.

    Fields: ``gamma`` (γ, default 1), ``delta`` (δ, a scalar or a vector of the axis' length,
    default 0), ``axis`` (static, default −1, counted inside the layer's shape) and ``eps``
    (ε, static, default ``1e-5``)."""

    def _norm(self, x, axis):
        return jnp.sqrt(jnp.sum(x * x, axis=axis) + self.eps)

    def activation(self, x, ndim=None):
        """``g = γ x / sqrt(Σ x² + ε) + δ`` along ``axis``.

        ``x``: ``(*batch, *layer shape)`` with ``ndim = len(layer shape)``; same shape out."""
        axis = _absolute_axis(self.axis, x, ndim)
        norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + self.eps)
        return self.gamma * x / norm + _along(self.delta, x, axis)


class SmoothLeakyReLU(ElementwiseLagrangian):
    """Smooth leaky ReLU (SMU), DN Example 7 (docs/maths.md §4.7), leak ``a ∈ [0, 1)``,
    smoothness μ:

        g(x) = ½[(1+a) x + (1−a) x erf(c x)],  c = μ(1−a)
        L(x) = ¼(1+a) x² + ½(1−a) [(x²/2 − 1/(4c²)) erf(c x) + x e^{−c²x²} / (2c√π)]

    ``g'`` dips below zero for ``a < 0.1142``: the Hessian is then not PSD (bounds in
    :meth:`derivative_bounds`).

    Fields: ``a`` (the leak, a trainable array, default 0) and ``mu`` (the smoothness μ, a
    trainable array, default 1)."""

    a: Array = eqx.field(converter=_param, default=0.0)
    mu: Array = eqx.field(converter=_param, default=1.0)

    def elementwise(self, x):
        """``F(x) = L(x)`` of the class formula, per neuron (``F(0) = 0``).

        ``x``: any shape; returns the same shape."""
        c = self.mu * (1.0 - self.a)
        inner = (0.5 * x * x - 0.25 / (c * c)) * erf(c * x) + x * jnp.exp(-((c * x) ** 2)) / (
            2.0 * c * math.sqrt(math.pi)
        )
        # the constant 1/(4c²)·erf(0)=0 at x=0, so L(0) = 0
        return 0.25 * (1.0 + self.a) * x * x + 0.5 * (1.0 - self.a) * inner

    def activation(self, x, ndim=None):
        """``g(x) = ½[(1+a) x + (1−a) x erf(c x)]`` with ``c = μ(1−a)`` (docs/maths.md §4.7).

        ``x``: any shape (``ndim`` ignored); returns the same shape."""
        c = self.mu * (1.0 - self.a)
        return 0.5 * ((1.0 + self.a) * x + (1.0 - self.a) * x * erf(c * x))

    def derivative(self, x):
        """``g'(x) = ½(1+a) + ½(1−a) erf(cx) + (1−a) c x e^{−c²x²} / √π``: the diagonal of
        ``H``. ``x``: any shape; returns the same shape."""
        c = self.mu * (1.0 - self.a)
        return (
            0.5 * (1.0 + self.a)
            + 0.5 * (1.0 - self.a) * erf(c * x)
            + (1.0 - self.a) * c * x / math.sqrt(math.pi) * jnp.exp(-((c * x) ** 2))
        )

    def derivative_bounds(self) -> tuple[Array, Array]:
        """Tight bounds on ``g'``: ``½(1+a) ± ½(1−a) φ(1)``, ``φ(1) = erf(1) + 2/(e√π)``,
        attained at ``x = ±1/(μ(1−a))`` (docs/maths.md §4.7).

        Returns ``(lower, upper)``, scalars of the parameters' dtype."""
        phi1 = math.erf(1.0) + 2.0 / (math.e * math.sqrt(math.pi))
        return (
            0.5 * (1.0 + self.a) - 0.5 * (1.0 - self.a) * phi1,
            0.5 * (1.0 + self.a) + 0.5 * (1.0 - self.a) * phi1,
        )
