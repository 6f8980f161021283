"""Synapses: scalar energies of the activations of the layers they connect.

A synapse on the edge ``(A, B, ...)`` is called as ``synapse.energy(g_A, g_B, ...)`` and returns one
energy per sample: every argument may carry the same leading batch dimensions, and contractions run
over the layers' own trailing axes only (batch-native; no ``vmap`` inside). The current a synapse
sends into layer ``A`` is ``−∂E_synapse/∂g_A``; autodiff derives the feedback path, e.g. the
transposed convolution of :class:`Conv2D` (docs/maths.md §3.3).

Every synapse declares :meth:`Synapse.expected_shapes`, used by :class:`hamjax.HAM` to validate the
graph before any tracing, and ``multilinear`` (linear in each argument separately): the current a
multilinear synapse sends into its only free layer is a constant of a relaxation, computed once.

Constructors take the sizes positionally and the rest by keyword (equinox style): either the
parameters themselves (``weight=``, ``kernel=``, ``memories=``, ...) or a PRNG key ``key=`` to draw
them from.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._axes import sum_trailing
from ._layer import as_shape
from .lagrangians import Lagrangian, ReLU, Softmax

__all__ = [
    "Synapse",
    "Dense",
    "Bias",
    "Lateral",
    "Conv2D",
    "AvgPool2D",
    "Memory",
    "Attention",
    "TokenMemory",
    "TokenDense",
]

Shape = tuple[int, ...]
ExpectedShape = tuple[int | None, ...]  # None: any size on that axis


def _flat(g: Array, shape: Shape) -> Array:
    """Collapse a layer's own trailing axes into one, keeping batch axes."""
    return g.reshape(g.shape[: g.ndim - len(shape)] + (math.prod(shape),))


def _images(g: Array) -> tuple[Array, tuple[int, ...]]:
    """Bring a batch of any leading shape of NHWC feature maps to one batch axis."""
    batch = g.shape[:-3]
    return g.reshape((-1,) + g.shape[-3:]), batch


def _is_key(v) -> bool:
    """A new-style typed key, or a legacy ``uint32`` key of shape ``(..., 2)`` / ``(..., 4)``."""
    dtype = getattr(v, "dtype", None)
    return dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
                                  or (dtype == jnp.uint32 and v.shape[-1:] in ((2,), (4,))))


def _check_key(key, who: str) -> None:
    """Reject a ``key=`` that is not a PRNG key with a message that says so. A common slip is
    ``key=0`` (a seed), which otherwise fails deep in ``jax.random`` with a message about key
    data."""
    if key is None or _is_key(key):
        return
    raise ValueError(
        f"{who} takes a PRNG key as key= (e.g. key=jax.random.PRNGKey(0)); "
        f"got {key!r} ({type(key).__name__}) as the key"
    )


def _not_a_key(v, name: str, who: str) -> None:
    """A key passed where a size goes is a call written for the key-first order: say so."""
    if _is_key(v):
        raise ValueError(
            f"{who} got a PRNG key as {name}: the key is keyword-only and comes last, "
            f"e.g. {who}(..., key=jax.random.PRNGKey(0))"
        )


def _given_or_drawn(who: str, what: str, given, key, shape: Shape, scale: float,
                    layout: str = "") -> Array:
    """``given`` as a float array of ``shape``, else ``scale · N(0, 1)`` of that shape drawn from
    ``key``; a ValueError names ``who`` and ``what`` when the shape is wrong or neither is there."""
    if given is not None:
        arr = jnp.asarray(given, dtype=jnp.result_type(float))
        if arr.shape != shape:
            raise ValueError(f"{who} expects {what} of shape {shape}{layout}, got {arr.shape}")
        return arr
    if key is None:
        raise ValueError(
            f"{who} needs a PRNG key, key= (e.g. key=jax.random.PRNGKey(0)), to draw its "
            f"{what}, or {what}= given"
        )
    return scale * jax.random.normal(key, shape)


def _size(v, name: str, who: str) -> int:
    """``v`` as a positive int, or a ValueError naming the argument."""
    _not_a_key(v, name, who)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{who} needs {name} to be a positive integer, got {v!r}")
    return int(v)


def _shape(v, name: str, who: str) -> Shape:
    """An int or a sequence of ints as a shape of positive sizes, or a ValueError naming it."""
    _not_a_key(v, name, who)
    items = (v,) if not isinstance(v, Sequence) or isinstance(v, str) else tuple(v)
    if not items:
        raise ValueError(f"{who} needs {name} to be a positive integer or a shape, got {v!r}")
    for i in items:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1:
            raise ValueError(
                f"{who} needs {name} to be a positive integer or a shape of them, got {v!r}")
    return as_shape(tuple(int(i) for i in items))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v


def _padding(padding):
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f"padding must be 'VALID', 'SAME', an int or pairs, got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(_pair(p) for p in padding)


class Synapse(eqx.Module):
    """Base class: an energy ``E_s(g_{s_1}, g_{s_2}, …)`` of the activations of one or more layers
    (a hyperedge of the HAM; docs/maths.md §2.3). The current it sends into layer ``A`` is
    ``c_A = −∂E_s/∂g_A``, by autodiff.

    A subclass implements :meth:`energy` (per sample, batch-native) and :meth:`expected_shapes`,
    and sets the class attribute ``multilinear`` (default False) to True when the energy is
    linear in each argument separately: the current such a synapse sends into its only free
    layer is then a constant of a relaxation, computed once."""

    multilinear: ClassVar[bool] = False

    @abc.abstractmethod
    def energy(self, *activations: Array) -> Array:
        """Energy per sample, ``E_s(g_1, g_2, …)``, of the activations of the layers on the
        synapse's edge, in the edge's order (docs/maths.md §2.3).

        Each ``activations[i]``: ``(*batch, *shape_i)``, the same ``batch`` for all; returns
        shape ``batch``."""

    @abc.abstractmethod
    def expected_shapes(self, shapes: tuple[Shape, ...]) -> tuple[ExpectedShape, ...]:
        """The layer shapes this synapse takes, given the shapes it is offered (one per layer).

        Entries of ``None`` accept any size. The number of entries is the synapse's arity."""

    def __call__(self, *activations: Array) -> Array:
        """The same as :meth:`energy`: ``synapse(g_1, …)`` is ``E_s`` per sample.

        Each argument ``(*batch, *shape_i)``; returns shape ``batch``."""
        return self.energy(*activations)


class Dense(Synapse):
    """``E = −g_bᵀ W g_a``: a fully connected synapse from layer ``a`` (``in_features``) to layer
    ``b`` (``out_features``); docs/maths.md eq. (8), ``W = ξ^{(B,A)}``. Either side may be a
    multi-axis layer (e.g. a feature map), contracted over all its axes.

    The weight is the given ``weight`` matrix of shape ``(out size, in size)``, or drawn from
    ``key``: Gaussian with standard deviation ``scale`` (default ``1/sqrt(in size)``).
    ``in_features`` and ``out_features`` (an int or a shape) are kept as ``in_shape`` and
    ``out_shape``. The current into ``b`` is ``W g_a`` and the feedback into ``a`` is ``Wᵀ g_b``
    (tied weights by construction). Raises ``ValueError`` for a non-positive size, a weight of
    the wrong shape, or neither ``weight`` nor ``key``."""

    multilinear: ClassVar[bool] = True
    weight: Array
    in_shape: Shape = eqx.field(static=True)
    out_shape: Shape = eqx.field(static=True)

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        scale: float | None = None,
        weight: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "Dense")
        self.in_shape = _shape(in_features, "in_features", "Dense")
        self.out_shape = _shape(out_features, "out_features", "Dense")
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        scale = 1.0 / math.sqrt(n_in) if scale is None else scale
        self.weight = _given_or_drawn("Dense", "weight", weight, key, (n_out, n_in), scale,
                                      " (out, in)")

    def energy(self, g_a, g_b):
        """``E = −g_bᵀ W g_a`` per sample (docs/maths.md eq. 8).

        ``g_a``: ``(*batch, *in_shape)``, ``g_b``: ``(*batch, *out_shape)``; returns ``batch``."""
        # written as a dot_general against W itself, not against W.T: with `@ W.T` the feedback
        # current Wᵀg_b is transposed through the transpose, and XLA's CPU backend then
        # multiplies by a physically transposed W with the short axis innermost (slow in BPTT)
        current = jnp.einsum("...i,oi->...o", _flat(g_a, self.in_shape), self.weight)
        return -jnp.sum(_flat(g_b, self.out_shape) * current, axis=-1)

    def expected_shapes(self, shapes):
        """``(in_shape, out_shape)``: the edge is ``(a, b)``, input layer first.

        ``shapes`` (the shapes offered) is not needed."""
        return (self.in_shape, self.out_shape)


class Bias(Synapse):
    """``E = −b·g``: a constant input current ``b`` into one layer (docs/maths.md §2, bias
    extension).

    ``b`` has the layer's ``shape``: the given ``bias``, else zero, or Gaussian with standard
    deviation ``scale`` drawn from ``key`` when ``scale`` is not zero. The current it sends is
    ``b`` itself, a constant. (A :class:`hamjax.Layer`'s own ``bias`` does the same.)"""

    multilinear: ClassVar[bool] = True
    bias: Array
    shape: Shape = eqx.field(static=True)

    def __init__(
        self,
        shape: int | Sequence[int],
        *,
        scale: float = 0.0,
        bias: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "Bias")
        self.shape = _shape(shape, "shape", "Bias")
        if bias is None and scale == 0.0:
            self.bias = jnp.zeros(self.shape)
        else:
            self.bias = _given_or_drawn("Bias", "bias", bias, key, self.shape, scale)

    def energy(self, g):
        """``E = −b·g`` per sample (docs/maths.md §2, bias extension).

        ``g``: ``(*batch, *shape)``; returns shape ``batch``."""
        return -sum_trailing(self.bias * g, len(self.shape))

    def expected_shapes(self, shapes):
        """``(shape,)``: one layer of the bias's shape.

        ``shapes`` (the shapes offered) is not needed."""
        return (self.shape,)


class Lateral(Synapse):
    """``E = −½ gᵀ W g`` with ``W`` symmetrised (and a zero diagonal unless ``zero_diagonal`` is
    False): symmetric lateral connections inside one layer, as in the classical Hopfield
    network ``E = −½ Σ_IJ g_I W_IJ g_J`` (docs/maths.md eq. 3).

    ``W`` of shape ``(N, N)``, ``N`` the layer's size: the given ``weight`` (e.g. the Hebbian
    ``W = (1/N) Σ_μ ξ_μ ξ_μᵀ`` of a classical Hopfield network), or drawn from ``key`` with
    standard deviation ``scale`` (default ``1/sqrt(N)``). ``features`` (an int or a shape) is
    kept as ``shape``. Not multilinear: the energy is quadratic in ``g``, its current
    ``W g`` depends on the layer's own state."""

    weight: Array
    shape: Shape = eqx.field(static=True)
    zero_diagonal: bool = eqx.field(static=True)

    def __init__(
        self,
        features: int | Sequence[int],
        *,
        zero_diagonal: bool = True,
        scale: float | None = None,
        weight: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "Lateral")
        self.shape = _shape(features, "features", "Lateral")
        n = math.prod(self.shape)
        scale = 1.0 / math.sqrt(n) if scale is None else scale
        self.weight = _given_or_drawn("Lateral", "weight", weight, key, (n, n), scale)
        self.zero_diagonal = zero_diagonal

    @property
    def symmetric_weight(self) -> Array:
        """``sym(W) = (W + Wᵀ)/2``, its diagonal zeroed when ``zero_diagonal``: ``(N, N)``."""
        w = 0.5 * (self.weight + self.weight.T)
        if self.zero_diagonal:
            w = w * (1.0 - jnp.eye(w.shape[0], dtype=w.dtype))
        return w

    def energy(self, g):
        """``E = −½ gᵀ sym(W) g`` per sample (docs/maths.md eq. 3); its current is
        ``sym(W) g``. ``g``: ``(*batch, *shape)``; returns shape ``batch``."""
        f = _flat(g, self.shape)
        return -0.5 * jnp.sum(f * (f @ self.symmetric_weight), axis=-1)

    def expected_shapes(self, shapes):
        """``(shape,)``: one layer of ``N`` neurons in the given shape.

        ``shapes`` (the shapes offered) is not needed."""
        return (self.shape,)


class Conv2D(Synapse):
    """``E = −⟨g_out, conv2d(g_in; ξ, stride, padding)⟩`` on NHWC feature maps
    (docs/maths.md eqs. 20–21).

    The current into ``g_in`` is ``conv2d_T(g_out)``, the transposed convolution with the same
    kernel, obtained by autodiff: the HAM paper's symmetric-weight condition for convolutions.
    Kernel layout HWIO: ``(kh, kw, in_channels, out_channels)``: the given ``kernel``, or drawn
    from ``key`` with standard deviation ``scale`` (default ``1/sqrt(kh·kw·in_channels)``).
    ``stride`` (an int or a pair) and ``padding`` (``"VALID"``, ``"SAME"``, an int or pairs)
    are those of ``lax.conv_general_dilated``. Feature maps are ``(*batch, H, W, C)``; the
    output size is ``M = ⌊(N − w)/s⌋ + 1`` per spatial axis for ``"VALID"`` (eq. 22). Raises
    ``ValueError`` for non-positive sizes, a bad padding, a kernel of the wrong shape, or
    neither ``kernel`` nor ``key``."""

    multilinear: ClassVar[bool] = True
    kernel: Array
    stride: tuple[int, int] = eqx.field(static=True)
    padding: str | tuple = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence = "VALID",
        scale: float | None = None,
        kernel: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "Conv2D")
        in_channels = _size(in_channels, "in_channels", "Conv2D")
        out_channels = _size(out_channels, "out_channels", "Conv2D")
        kh, kw = _pair(kernel_size)
        _shape((kh, kw), "kernel_size", "Conv2D")
        self.stride = _pair(stride)
        _shape(self.stride, "stride", "Conv2D")
        self.padding = _padding(padding)
        fan_in = kh * kw * in_channels
        scale = 1.0 / math.sqrt(fan_in) if scale is None else scale
        self.kernel = _given_or_drawn("Conv2D", "kernel", kernel, key,
                                      (kh, kw, in_channels, out_channels), scale, " (HWIO)")

    @property
    def in_channels(self) -> int:
        """The input layer's channel count, ``kernel.shape[2]``."""
        return self.kernel.shape[2]

    @property
    def out_channels(self) -> int:
        """The output layer's channel count, ``kernel.shape[3]``."""
        return self.kernel.shape[3]

    def convolve(self, g_in: Array) -> Array:
        """``conv2d(g_in; ξ, stride, padding)``: the current this synapse sends into its output
        layer. ``g_in``: ``(*batch, H, W, in_channels)``; returns ``(*batch, H', W',
        out_channels)`` (:meth:`output_shape`)."""
        imgs, batch = _images(g_in)
        out = lax.conv_general_dilated(
            imgs,
            self.kernel,
            window_strides=self.stride,
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out.reshape(batch + out.shape[1:])

    def energy(self, g_in, g_out):
        """``E = −⟨g_out, conv2d(g_in)⟩`` per sample (docs/maths.md eq. 23's coupling term).

        ``g_in``: ``(*batch, H, W, in_channels)``, ``g_out``: ``(*batch, H', W', out_channels)``;
        returns shape ``batch``."""
        return -sum_trailing(g_out * self.convolve(g_in), 3)

    def output_shape(self, in_shape: Shape) -> Shape:
        """The output layer's shape ``(H', W', out_channels)`` for an input layer of shape
        ``in_shape = (H, W, in_channels)`` (no batch axes)."""
        struct = jax.ShapeDtypeStruct(tuple(in_shape), self.kernel.dtype)
        return tuple(jax.eval_shape(self.convolve, struct).shape)

    def expected_shapes(self, shapes):
        """``((H, W, in_channels), output_shape)``: any image size with the kernel's input
        channels, and the output shape that size gives (only the channels when unknown)."""
        expected_in = (None, None, self.in_channels)
        s = shapes[0] if shapes else ()
        if len(s) == 3 and s[2] == self.in_channels:
            try:
                return (expected_in, self.output_shape(s))
            except (TypeError, ValueError):
                pass
        return (expected_in, (None, None, self.out_channels))


class AvgPool2D(Synapse):
    """``E = −⟨g_out, avgpool(g_in)⟩``: average pooling is a fixed linear operator ``P``; its
    feedback is ``Pᵀ`` by autodiff, so the energy stays a Lyapunov function (HAM paper §4.3,
    docs/maths.md §3.3; max-pooling has no adjoint and is not offered).

    ``window`` (an int or a pair, default 2), ``stride`` (default: the window) and ``padding``
    (``"VALID"``, ``"SAME"``, an int or pairs) of the pooling over the spatial axes of NHWC
    feature maps; no parameters to train. Raises ``ValueError`` for non-positive sizes or a bad
    padding."""

    multilinear: ClassVar[bool] = True
    window: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    padding: str | tuple = eqx.field(static=True)

    def __init__(
        self,
        window: int | Sequence[int] = 2,
        stride: int | Sequence[int] | None = None,
        padding: str | int | Sequence = "VALID",
    ):
        self.window = _shape(_pair(window), "window", "AvgPool2D")
        self.stride = self.window if stride is None else _shape(_pair(stride), "stride",
                                                                "AvgPool2D")
        self.padding = _padding(padding)

    def pool(self, g_in: Array) -> Array:
        """``P g_in``: the average over every window, channel by channel.

        ``g_in``: ``(*batch, H, W, C)``; returns ``(*batch, H', W', C)`` (:meth:`output_shape`)."""
        imgs, batch = _images(g_in)
        if self.window == self.stride and self.padding == "VALID":
            # Non-overlapping windows: a reshape and a mean. Same numbers as reduce_window, but
            # its transpose (the feedback Pᵀ) is a broadcast, where reduce_window's is a padded
            # scatter that XLA's CPU backend runs several times slower than the convolution.
            (wh, ww), (n, h, w, c) = self.window, imgs.shape
            oh, ow = h // wh, w // ww
            cropped = imgs[:, : oh * wh, : ow * ww, :]
            out = cropped.reshape(n, oh, wh, ow, ww, c).mean(axis=(2, 4))
            return out.reshape(batch + out.shape[1:])
        pad = self.padding if isinstance(self.padding, str) else ((0, 0),) + self.padding + (
            (0, 0),
        )
        summed = lax.reduce_window(
            imgs, 0.0, lax.add, (1,) + self.window + (1,), (1,) + self.stride + (1,), pad
        )
        out = summed / (self.window[0] * self.window[1])
        return out.reshape(batch + out.shape[1:])

    def energy(self, g_in, g_out):
        """``E = −⟨g_out, P g_in⟩`` per sample (docs/maths.md §3.3, pooling).

        ``g_in``: ``(*batch, H, W, C)``, ``g_out``: ``(*batch, H', W', C)``; returns ``batch``."""
        return -sum_trailing(g_out * self.pool(g_in), 3)

    def output_shape(self, in_shape: Shape) -> Shape:
        """The pooled shape ``(H', W', C)`` of an input layer of shape ``in_shape = (H, W, C)``
        (no batch axes)."""
        struct = jax.ShapeDtypeStruct(tuple(in_shape), jnp.float32)
        return tuple(jax.eval_shape(self.pool, struct).shape)

    def expected_shapes(self, shapes):
        """``((H, W, C), output_shape)``: any feature map, and the pooled shape it gives (any
        size when the input shape is unknown)."""
        s = shapes[0] if shapes else ()
        if len(s) == 3:
            try:
                return ((None, None, None), self.output_shape(s))
            except (TypeError, ValueError):
                pass
        return ((None, None, None), (None, None, None))


class Memory(Synapse):
    """A layer of ``K`` memories ``ξ_μ`` eliminated analytically (the adiabatic limit of a hidden
    layer with Lagrangian ``L_h``, docs/maths.md §2.2 and §3.1)::

        E = −L_h(ξ g)      default L_h = (1/β) log Σ_μ exp(h_μ β):  E = −(1/β) logsumexp(β ξ g)

    With ``L_h`` = Softmax this is the modern Hopfield network / Ramsauer energy (its update is
    attention over the memories); with RePU(n) or Exp it is the dense associative memory.

    ``similarity="distance"`` scores ``h_μ = ξ_μ·g − ½|ξ_μ|²`` instead of ``ξ_μ·g``. With an
    Identity visible layer (Legendre term ``½|v|²``) the energy becomes
    ``E = −(1/β) log Σ_μ exp(−β/2 |ξ_μ − v|²)``: the nearest memory in Euclidean distance wins,
    where the overlap ``ξ·v`` favours memories of large norm (bright, thick images attract every
    noisy probe). Its update ``v ← ξᵀ softmax(β h)`` is mean shift over the memories.

    ``ξ`` of shape ``(K, *features)`` (or ``(K, N)`` flattened): the given ``memories``, or drawn
    from ``key`` with standard deviation ``scale`` (default ``1/sqrt(N)``); stored flattened,
    ``(K, N)``. ``features`` (an int or a shape) is kept as ``shape``; ``num_memories`` is
    ``K``. ``lagrangian`` (kept as ``hidden``, default ``Softmax(beta)``) is ``L_h``;
    ``similarity`` is ``"dot"`` (default) or ``"distance"``. Not multilinear. Raises
    ``ValueError`` for an unknown ``similarity``, non-positive sizes, memories of the wrong
    shape, or neither ``memories`` nor ``key``."""

    memories: Array
    hidden: Lagrangian
    shape: Shape = eqx.field(static=True)
    similarity: str = eqx.field(static=True, default="dot")

    def __init__(
        self,
        features: int | Sequence[int],
        num_memories: int,
        *,
        beta: float = 1.0,
        lagrangian: Lagrangian | None = None,
        similarity: str = "dot",
        scale: float | None = None,
        memories: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        if similarity not in ("dot", "distance"):
            raise ValueError(f"Memory similarity must be 'dot' or 'distance', got {similarity!r}")
        _check_key(key, "Memory")
        self.shape = _shape(features, "features", "Memory")
        num_memories = _size(num_memories, "num_memories", "Memory")
        self.similarity = similarity
        n = math.prod(self.shape)
        full = (num_memories,) + self.shape
        if memories is not None:
            memories = jnp.asarray(memories, dtype=jnp.result_type(float))
            if memories.shape == (num_memories, n):
                memories = memories.reshape(full)
        scale = 1.0 / math.sqrt(n) if scale is None else scale
        self.memories = _given_or_drawn("Memory", "memories", memories, key, full,
                                        scale).reshape(num_memories, n)
        self.hidden = Softmax(beta) if lagrangian is None else lagrangian

    @property
    def num_memories(self) -> int:
        """The number of memories ``K``."""
        return self.memories.shape[0]

    def similarities(self, g: Array) -> Array:
        """``h_μ = ξ_μ · g`` (or ``ξ_μ · g − ½|ξ_μ|²``), the hidden layer's equilibrium state
        (docs/maths.md §3.1). ``g``: ``(*batch, *features)``; returns ``(*batch, K)``."""
        h = _flat(g, self.shape) @ self.memories.T
        if self.similarity == "distance":
            h = h - 0.5 * jnp.sum(self.memories**2, axis=-1)
        return h

    def energy(self, g):
        """``E = −L_h(h(g))`` per sample, ``h`` the :meth:`similarities` (docs/maths.md §2.2).

        ``g``: ``(*batch, *features)``; returns shape ``batch``."""
        return -self.hidden(self.similarities(g), 1)

    def expected_shapes(self, shapes):
        """``(features,)``: one layer of the memories' pattern shape.

        ``shapes`` (the shapes offered) is not needed."""
        return (self.shape,)


class Attention(Synapse):
    """Energy attention over the tokens of one layer ``g`` of shape ``(T, D)`` (Hoover et al.
    2023, *Energy Transformer*)::

        K_{hαB} = Σ_j W^K_{hαj} g_{Bj},   Q_{hαC} = Σ_j W^Q_{hαj} g_{Cj}
        E = −(1/β) Σ_h Σ_C log Σ_{B≠C} exp(β Σ_α K_{hαB} Q_{hαC})

    ``h`` runs over heads, ``α`` over the head dimension, ``B`` (keys) and ``C`` (queries) over
    tokens. A token does not attend to itself. The current ``−∂E/∂g`` carries both the query and
    the key path (the Energy Transformer's two attention terms); autodiff derives both. A
    synapse energy of one layer in the sense of docs/maths.md §2.3 (eq. ET1), so the HAM energy
    stays a Lyapunov function.

    ``W^K`` and ``W^Q`` of shape ``(num_heads, head_dim, dim)``: the given ``key_weight`` /
    ``query_weight``, or drawn from ``key`` with standard deviation ``scale`` (default
    ``1/sqrt(dim)``). ``beta`` (β) defaults to ``1/sqrt(head_dim)``. ``dim`` is ``D``, the
    token width. Not multilinear. Raises ``ValueError`` for non-positive sizes, weights of the
    wrong shape, or neither weights nor ``key``."""

    key_weight: Array
    query_weight: Array
    beta: Array
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        head_dim: int = 16,
        *,
        beta: float | None = None,
        scale: float | None = None,
        key_weight: ArrayLike | None = None,
        query_weight: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "Attention")
        self.dim = _size(dim, "dim", "Attention")
        num_heads = _size(num_heads, "num_heads", "Attention")
        head_dim = _size(head_dim, "head_dim", "Attention")
        shape = (num_heads, head_dim, self.dim)
        scale = 1.0 / math.sqrt(self.dim) if scale is None else scale
        kk, kq = jax.random.split(key) if key is not None else (None, None)
        self.key_weight = _given_or_drawn("Attention", "key_weight", key_weight, kk, shape, scale)
        self.query_weight = _given_or_drawn("Attention", "query_weight", query_weight, kq, shape,
                                            scale)
        self.beta = jnp.asarray(1.0 / math.sqrt(head_dim) if beta is None else beta,
                                dtype=jnp.result_type(float))

    @property
    def num_heads(self) -> int:
        """The number of heads, ``key_weight.shape[0]``."""
        return self.key_weight.shape[0]

    def scores(self, g: Array) -> Array:
        """``A_{hBC} = Σ_α K_{hαB} Q_{hαC}``, shape ``(*batch, heads, T_keys, T_queries)``.

        ``g``: ``(*batch, T, dim)``. The self-scores ``B = C`` are included (the energy masks
        them)."""
        k = jnp.einsum("had,...bd->...hba", self.key_weight, g)
        q = jnp.einsum("had,...cd->...hca", self.query_weight, g)
        return jnp.einsum("...hba,...hca->...hbc", k, q)

    def energy(self, g):
        """``E = −(1/β) Σ_h Σ_C log Σ_{B≠C} exp(β A_{hBC})`` per sample (:meth:`scores`).

        ``g``: ``(*batch, T, dim)`` with ``T ≥ 2`` (else ``ValueError``); returns ``batch``."""
        t = g.shape[-2]
        if t < 2:
            raise ValueError(f"Attention needs at least two tokens, got {t}")
        a = self.beta * self.scores(g)
        a = jnp.where(jnp.eye(t, dtype=bool), -jnp.inf, a)
        lse = jax.nn.logsumexp(a, axis=-2)  # over keys B ≠ C
        return -jnp.sum(lse, axis=(-2, -1)) / self.beta

    def expected_shapes(self, shapes):
        """``((T, dim),)``: one layer of any number of tokens of width ``dim``.

        ``shapes`` (the shapes offered) is not needed."""
        return ((None, self.dim),)


class TokenMemory(Synapse):
    """A Hopfield (memory) synapse applied to every token of a ``(T, D)`` layer separately, the
    Energy Transformer's Hopfield module::

        E = −Σ_tokens L_h(ξ g_token)

    default ``L_h = ReLU``: ``E = −½ Σ_tokens Σ_μ relu(ξ_μ·g_token)²``; with ``Softmax(β)``:
    ``E = −(1/β) Σ_tokens logsumexp_μ(β ξ_μ·g_token)``. (:class:`Memory` on a ``(T, D)`` layer
    instead flattens all tokens into one pattern.)

    ``ξ`` of shape ``(K, D)``: the given ``memories``, or drawn from ``key`` with standard
    deviation ``scale`` (default ``1/sqrt(D)``). ``dim`` is ``D``; ``lagrangian`` (kept as
    ``hidden``) is ``L_h``. The token-wise form of the eliminated hidden layer of
    docs/maths.md §2.2 (eq. ET2). Not multilinear. Raises ``ValueError`` for non-positive sizes,
    memories of the wrong shape, or neither ``memories`` nor ``key``."""

    memories: Array
    hidden: Lagrangian
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_memories: int,
        *,
        lagrangian: Lagrangian | None = None,
        scale: float | None = None,
        memories: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "TokenMemory")
        self.dim = _size(dim, "dim", "TokenMemory")
        num_memories = _size(num_memories, "num_memories", "TokenMemory")
        scale = 1.0 / math.sqrt(self.dim) if scale is None else scale
        self.memories = _given_or_drawn("TokenMemory", "memories", memories, key,
                                        (num_memories, self.dim), scale)
        self.hidden = ReLU() if lagrangian is None else lagrangian

    def similarities(self, g: Array) -> Array:
        """``h_{Cμ} = ξ_μ·g_C`` for every token ``C``: shape ``(*batch, T, K)``.

        ``g``: ``(*batch, T, D)``."""
        return g @ self.memories.T

    def energy(self, g):
        """``E = −Σ_C L_h(h_C)`` per sample, ``h`` the :meth:`similarities`.

        ``g``: ``(*batch, T, D)``; returns shape ``batch``."""
        # the hidden Lagrangian acts on each token's row (a softmax along the memories axis)
        return -self.hidden(self.similarities(g), 2)

    def expected_shapes(self, shapes):
        """``((T, D),)``: one layer of any number of tokens of width ``D``.

        ``shapes`` (the shapes offered) is not needed."""
        return ((None, self.dim),)


class TokenDense(Synapse):
    """``E = −Σ_C g_{b,C} · W g_{a,C}``: one weight matrix shared by every token ``C``, from a
    layer ``a`` of shape ``(T, in_features)`` to a layer ``b`` of shape ``(T, out_features)``
    (docs/maths.md eq. ET3). The Energy Transformer's patch embedding as an energy: the current
    into ``b`` is ``W g_{a,C}`` (the linear encoder of each token) and the feedback into ``a`` is
    ``Wᵀ g_{b,C}`` (the decoder, tied to it).

    ``W`` of shape ``(out_features, in_features)``: the given ``weight``, or drawn from ``key``
    with standard deviation ``scale`` (default ``1/sqrt(in_features)``); ``in_features`` and
    ``out_features`` are kept as given. Multilinear. Raises
    ``ValueError`` for non-positive sizes, a weight of the wrong shape, or neither ``weight``
    nor ``key``."""

    multilinear: ClassVar[bool] = True
    weight: Array
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        scale: float | None = None,
        weight: ArrayLike | None = None,
        key: PRNGKeyArray | None = None,
    ):
        _check_key(key, "TokenDense")
        self.in_features = _size(in_features, "in_features", "TokenDense")
        self.out_features = _size(out_features, "out_features", "TokenDense")
        scale = 1.0 / math.sqrt(self.in_features) if scale is None else scale
        self.weight = _given_or_drawn("TokenDense", "weight", weight, key,
                                      (self.out_features, self.in_features), scale,
                                      " (out, in)")

    def energy(self, g_a, g_b):
        """``E = −Σ_C g_{b,C} · W g_{a,C}`` per sample (docs/maths.md eq. ET3).

        ``g_a``: ``(*batch, T, in_features)``, ``g_b``: ``(*batch, T, out_features)``; returns
        ``batch``."""
        current = jnp.einsum("...ti,oi->...to", g_a, self.weight)
        return -jnp.sum(g_b * current, axis=(-2, -1))

    def expected_shapes(self, shapes):
        """``((T, in_features), (T, out_features))`` with ``T`` the token count of the first
        layer offered: both layers hold the same tokens."""
        t = shapes[0][0] if shapes and len(shapes[0]) == 2 else None
        return ((t, self.in_features), (t, self.out_features))
