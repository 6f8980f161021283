"""Layers: a group of neurons with a shape, a Lagrangian, a time constant and an optional bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._axes import sum_trailing
from .lagrangians import Identity, Lagrangian

__all__ = ["Layer"]


def as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise an int or a sequence of ints to a shape tuple, rejecting non-positive sizes."""
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"a shape needs positive sizes, got {shape}")
    return shape


class Layer(eqx.Module):
    """A layer ``A`` of a HAM: state ``x_A`` of shape ``shape``, Lagrangian ``L_A``, time constant
    ``τ_A > 0`` and an optional bias (input current) ``I_A``.

    Activation ``g_A = ∇L_A(x_A)`` (docs/maths.md eq. 7). Energy, with state and activation
    treated as independent variables (the HAMUX partial-derivative trick)::

        E_A(x, g) = x·g − L_A(x) − I_A·g,        ∂E_A/∂g = x − I_A

    so the dynamics ``τ_A ẋ_A = −∂E/∂g_A`` give the leak ``−x_A`` and the bias ``+I_A`` of
    docs/maths.md eq. (5) with no autodiff through ``L_A``. At ``g = ∇L(x)`` this is the Legendre
    term of eq. (8) plus the bias term of docs/maths.md §2.

    Fields (and constructor arguments): ``shape``, the layer's own shape (an int or a tuple of
    positive ints; a state of the layer is ``(*batch, *shape)``); ``lagrangian``, a
    :class:`hamjax.lagrangians.Lagrangian` (default ``Identity``, ``L = ½|x|²``); ``tau``, the
    time constant ``τ_A`` (positive, finite; default 1); ``bias``, the input current ``I_A`` of
    shape ``shape``: ``None``/``False`` for none, ``True`` for a trainable one starting at zero,
    or an array.

    Raises ``TypeError`` for a ``lagrangian`` that is not a hamjax Lagrangian and ``ValueError``
    for a non-positive size, a non-positive or infinite ``tau`` or a bias of the wrong shape.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    lagrangian: Lagrangian
    tau: float = eqx.field(static=True)
    bias: Array | None

    def __init__(
        self,
        shape: int | Sequence[int],
        lagrangian: Lagrangian | None = None,
        tau: float = 1.0,
        bias: ArrayLike | bool | None = None,
    ):
        self.shape = as_shape(shape)
        lagrangian = Identity() if lagrangian is None else lagrangian
        if not isinstance(lagrangian, Lagrangian):
            raise TypeError(
                f"Layer lagrangian must be a hamjax Lagrangian, got {type(lagrangian).__name__}"
            )
        self.lagrangian = lagrangian
        tau = float(tau)
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"Layer time constant tau must be positive and finite, got {tau}")
        self.tau = tau
        if bias is None or bias is False:
            self.bias = None
        elif bias is True:
            self.bias = jnp.zeros(self.shape)
        else:
            bias = jnp.asarray(bias, dtype=jnp.result_type(float))
            if bias.shape != self.shape:
                raise ValueError(
                    f"Layer bias must have the layer's shape {self.shape}, got {bias.shape}"
                )
            self.bias = bias

    @property
    def ndim(self) -> int:
        """The number of the layer's own axes, ``len(shape)``."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of neurons ``N_A``, the product of ``shape``."""
        return math.prod(self.shape)

    def batch_shape(self, x: Array) -> tuple[int, ...]:
        """The leading batch dimensions of a state of this layer: ``batch`` for ``x`` of shape
        ``(*batch, *shape)``. Raises ``ValueError`` when ``x`` does not end in ``shape``."""
        if x.ndim < self.ndim or tuple(x.shape[x.ndim - self.ndim :]) != self.shape:
            raise ValueError(f"expected a state ending in shape {self.shape}, got {x.shape}")
        return tuple(x.shape[: x.ndim - self.ndim])

    def activation(self, x: Array) -> Array:
        """The activation ``g_A = ∇L_A(x_A)`` (docs/maths.md eq. 7), in closed form.

        ``x``: ``(*batch, *shape)``; returns the same shape."""
        return self.lagrangian.activation(x, self.ndim)

    def lagrangian_value(self, x: Array) -> Array:
        """The Lagrangian ``L_A(x_A)`` per sample (summed over the layer's own axes).

        ``x``: ``(*batch, *shape)``; returns shape ``batch``."""
        return self.lagrangian(x, self.ndim)

    def energy(self, x: Array, g: Array | None = None) -> Array:
        """The layer's energy ``E_A = x·g − L(x) − I·g`` per sample (docs/maths.md eq. 8, the
        Legendre term, with the bias term of §2).

        ``x`` and ``g``: ``(*batch, *shape)``; ``g`` defaults to the activation of ``x`` (pass it
        to treat state and activation as independent variables, as the dynamics do). Returns
        shape ``batch``."""
        g = self.activation(x) if g is None else g
        e = sum_trailing(x * g, self.ndim) - self.lagrangian_value(x)
        if self.bias is not None:
            e = e - sum_trailing(self.bias * g, self.ndim)
        return e
