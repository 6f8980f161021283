"""Continuous Hopfield networks as HAMs: the classical one with a Tanh layer, the modern one
(attention over stored patterns), and the HAM paper's architectures (§4.1–4.3) with their deep
and pooled variants. Every docstring states the energy and the dynamics the model implements.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .. import lagrangians as L
from .._axes import stacked
from .._ham import HAM
from .._layer import Layer
from ..capacity import hebbian_weight
from ..synapses import AvgPool2D, Conv2D, Dense, Lateral, Memory


def continuous_hopfield(patterns, beta: float = 1.0, *, tau: float = 1.0) -> HAM:
    """The continuous classical Hopfield network storing ``patterns`` ``ξ`` (shape ``(K, N)``,
    ±1) with the Hebbian rule ``W = (1/N) Σ_μ ξ_μ ξ_μᵀ``, zero diagonal: a HAM with one layer
    ``"image"`` of ``N`` neurons, Lagrangian ``Tanh(β)``, and a
    :class:`~hamjax.synapses.Lateral` synapse ``"hebbian"`` (docs/maths.md §1.1)::

        E = Σ_i [x_i tanh(βx_i) − (1/β) log cosh(βx_i)] − ½ Σ_ij tanh(βx_i) W_ij tanh(βx_j)
        τ dx/dt = W tanh(βx) − x

    The binary network with sign updates is :func:`hamjax.capacity.classical_hopfield`."""
    w = hebbian_weight(patterns)
    n = w.shape[0]
    return HAM(
        layers={"image": Layer(n, L.Tanh(beta), tau=tau)},
        synapses={"hebbian": Lateral(n, weight=w)},
        edges={"hebbian": ("image",)},
    )


def fixed_point_step(net: HAM, x, *, clamp=()):
    """One synchronous fixed-point step of a HAM: ``x_A ← c_A(x) + I_A`` on the free layers
    (the Euler step of ``τ_A ẋ_A = c_A + I_A − x_A`` with ``dt = τ_A``; docs/maths.md §5.1);
    ``x`` is a state dict ``{name: (*batch, *shape)}``, the layers in ``clamp`` held fixed.
    Returns the full state after the step, same shapes. For :func:`modern_hopfield` this is
    ``v ← ξᵀ softmax(β ξ v)``: attention with queries ``v`` and keys = values = the stored
    patterns (§3.1)."""
    dyn = net.dynamics(x, clamp=clamp)
    return dyn.full_state(dyn.fixed_point_map(dyn.free_state(x)))


def modern_hopfield(patterns, beta: float = 1.0, *, tau: float = 1.0) -> HAM:
    """The modern Hopfield network (Ramsauer et al. 2020; docs/maths.md §3.1, adiabatic): one layer
    ``"image"`` (Identity) and a :class:`~hamjax.synapses.Memory` ``"memory"`` of the patterns::

        E(v) = ½|v|² − (1/β) log Σ_μ exp(β ξ_μ·v)
        τ dv/dt = ξᵀ softmax(β ξ v) − v;  one update (:func:`fixed_point_step`):
        v ← ξᵀ softmax(β ξ v) = Attention(Q=v, K=ξ, V=ξ) with inverse temperature β

    ``patterns`` has shape ``(K, *pattern_shape)``; the layer has the pattern shape. ``tau`` is
    its time constant. Raises ``ValueError`` for patterns with fewer than two axes."""
    xi = stacked(patterns)
    shape = tuple(xi.shape[1:])
    return HAM(
        layers={"image": Layer(shape, L.Identity(), tau=tau)},
        synapses={"memory": Memory(shape, xi.shape[0], beta=beta, memories=xi)},
        edges={"memory": ("image",)},
    )


def ham_1hidden(xi, beta: float = 1.0, *, adiabatic: bool = False, tau_visible: float = 1.0,
                tau_hidden: float = 0.1) -> HAM:
    """HAM paper §4.1 (docs/maths.md eqs. 13–15): visible ``"image"`` (Identity, ``N``) and hidden
    ``"hidden"`` (Softmax(β), ``K``) layers, coupled by the memories ``ξ`` (shape ``(K, N)``)::

        E = ½|v|² + [h·f − (1/β) log Σ_μ e^{βh_μ}] − fᵀ ξ v,      f = softmax(βh)
        τ_v dv/dt = ξᵀ f − v,    τ_h dh/dt = ξ v − h

    ``adiabatic=True`` eliminates the hidden layer (``h = ξv``): the modern Hopfield network,
    ``E = ½|v|² − (1/β) log Σ_μ exp(β ξ_μ·v)`` (:func:`modern_hopfield`). ``tau_visible`` and
    ``tau_hidden`` are the time constants (the hidden layer faster, eq. 12)."""
    xi = stacked(xi, "xi")
    if adiabatic:
        return modern_hopfield(xi, beta, tau=tau_visible)
    k, n = xi.shape
    return HAM(
        layers={"image": Layer(n, L.Identity(), tau=tau_visible),
                "hidden": Layer(k, L.Softmax(beta), tau=tau_hidden)},
        synapses={"xi": Dense(n, k, weight=xi)},
        edges={"xi": ("image", "hidden")},
    )


def ham_2hidden(xi, theta, beta: float = 1.0, gamma: float = 1.0, *, adiabatic_top: bool = False,
                taus: Sequence[float] = (1.0, 0.1, 0.01)) -> HAM:
    """HAM paper §4.2 (docs/maths.md eqs. 16–19): ``"image"`` (Identity, ``N``) —ξ— ``"hidden"``
    (Softmax(β), ``K``) —Θ— ``"top"`` (Softmax(γ), ``N_z``); ``ξ: (K, N)``, ``Θ: (N_z, K)``::

        E = ½|v|² + [h·f − (1/β) log Σ e^{βh}] + [z·g − (1/γ) log Σ e^{γz}] − fᵀξv − gᵀΘf
        τ_v v̇ = ξᵀf − v,   τ_h ḣ = ξv + Θᵀg − h,   τ_z ż = Θf − z

    ``adiabatic_top=True`` eliminates the top layer (``z = Θf``, eq. 19): a
    :class:`~hamjax.synapses.Memory` ``"theta"`` on the hidden layer with energy
    ``−(1/γ) log Σ_α exp(γ Σ_μ Θ_αμ f_μ)``. ``taus = (τ_v, τ_h, τ_z)``."""
    xi, theta = stacked(xi, "xi"), stacked(theta, "theta")
    k, n = xi.shape
    tv, th, tz = taus
    layers = {"image": Layer(n, L.Identity(), tau=tv),
              "hidden": Layer(k, L.Softmax(beta), tau=th)}
    synapses = {"xi": Dense(n, k, weight=xi)}
    edges = {"xi": ("image", "hidden")}
    _add_top(layers, synapses, edges, "hidden", theta, gamma, tz, adiabatic_top)
    return HAM(layers, synapses, edges)


def _add_top(layers, synapses, edges, below: str, theta, gamma: float, tau: float,
             adiabatic: bool) -> None:
    """Put the HAM paper's top layer ``"top"`` (Softmax(γ), ``N_z``) over layer ``below`` through
    ``Θ: (N_z, N_below)``, or, ``adiabatic``, eliminate it into a :class:`Memory` ``"theta"`` on
    ``below`` with energy ``−(1/γ) log Σ_α exp(γ Σ_μ Θ_αμ g_μ)`` (docs/maths.md eqs. 19, 23)."""
    shape, nz = layers[below].shape, theta.shape[0]
    if adiabatic:
        synapses["theta"] = Memory(shape, nz, lagrangian=L.Softmax(gamma), memories=theta)
        edges["theta"] = (below,)
    else:
        layers["top"] = Layer(nz, L.Softmax(gamma), tau=tau)
        synapses["theta"] = Dense(shape, nz, weight=theta)
        edges["theta"] = (below, "top")


def ham_conv(kernel, theta, image_shape: Sequence[int], beta: float = 1.0, gamma: float = 1.0,
             *, stride: int = 1, adiabatic_top: bool = False,
             taus: Sequence[float] = (1.0, 0.1, 0.01)) -> HAM:
    """HAM paper §4.3 (docs/maths.md eqs. 20–23): ``"image"`` (Identity, ``(N, N, C)``) —conv ξ—
    ``"features"`` (softmax over channels, ``(M, M, K)``) —Θ— ``"top"`` (Softmax(γ), ``N_z``).
    ``kernel`` is HWIO ``(w, w, C, K)``; ``Θ: (N_z, M·M·K)`` acts on the flattened feature map::

        E = ½Σv² + Σ_ab [h_ab·f_ab − (1/β) log Σ_k e^{βh_abk}] + [z·g − (1/γ) log Σ e^{γz}]
            − ⟨f, conv2d(v; ξ, s)⟩ − gᵀ Θ flatten(f)
        τ_v v̇ = conv2d_T(f) − v,  τ_h ḣ = conv2d(v) + reshape(Θᵀg) − h,  τ_z ż = Θ flatten(f) − z

    ``adiabatic_top=True`` eliminates ``"top"`` (eq. 23) into a Memory on the features.
    ``image_shape = (N, N, C)`` (any ``(H, W, C)``), ``stride`` is ``s``, ``taus = (τ_v, τ_h,
    τ_z)``. Raises ``ValueError`` for a kernel that is not 4-d."""
    image_shape = tuple(image_shape)
    kernel = jnp.asarray(kernel, dtype=jnp.result_type(float))
    if kernel.ndim != 4:
        raise ValueError(f"ham_conv needs an HWIO kernel (w, w, C, K), got shape {kernel.shape}")
    conv = Conv2D(kernel.shape[2], kernel.shape[3], kernel.shape[:2], stride=stride,
                  kernel=kernel)
    fshape = conv.output_shape(image_shape)
    theta = stacked(theta, "theta")
    tv, th, tz = taus
    layers = {"image": Layer(image_shape, L.Identity(), tau=tv),
              "features": Layer(fshape, L.Softmax(beta, axis=-1), tau=th)}
    synapses = {"conv": conv}
    edges = {"conv": ("image", "features")}
    _add_top(layers, synapses, edges, "features", theta, gamma, tz, adiabatic_top)
    return HAM(layers, synapses, edges)


def deep_dense_ham(sizes: Sequence[int] = (64, 128, 64, 10), *,
                   lagrangians: Sequence[L.Lagrangian] | None = None,
                   taus: Sequence[float] | None = None, beta: float = 1.0,
                   weights: Sequence | None = None, key: PRNGKeyArray | None = None) -> HAM:
    """A deep dense HAM (docs/maths.md eqs. 5–8): a chain of layers ``"layer0" — "layer1" — …`` with
    dense synapses ``"w1", "w2", …`` (``W_A: (N_A, N_{A−1})``)::

        E = Σ_A [x_A·g_A − L_A(x_A)] − Σ_A g_Aᵀ W_A g_{A−1}
        τ_A ẋ_A = W_A g_{A−1} + W_{A+1}ᵀ g_{A+1} − x_A

    Defaults: Identity on the input layer, Softmax(β) on the others, ``τ_A = 1, ½, ¼, …``
    (higher layers faster, eq. 12). The matrices are the given ``weights``, else drawn from
    ``key``. ``sizes``: the layer sizes ``N_0, N_1, …`` (at least two); ``lagrangians`` and
    ``taus``: one per layer. Raises ``ValueError`` for fewer than two layers, the wrong number
    of weights, or neither ``weights`` nor ``key``."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"deep_dense_ham needs at least two layers, got sizes {sizes}")
    if weights is None and key is None:
        raise ValueError("deep_dense_ham needs a PRNG key, key=, to draw its weights, or "
                         "weights= given")
    if weights is not None and len(weights) != len(sizes) - 1:
        raise ValueError(f"deep_dense_ham needs {len(sizes) - 1} weight matrices for sizes "
                         f"{sizes}, got {len(weights)}")
    if lagrangians is None:
        lagrangians = (L.Identity(),) + tuple(L.Softmax(beta) for _ in sizes[1:])
    taus = tuple(0.5 ** i for i in range(len(sizes))) if taus is None else tuple(taus)
    names = [f"layer{i}" for i in range(len(sizes))]
    layers = {nm: Layer(s, lg, tau=t)
              for nm, s, lg, t in zip(names, sizes, lagrangians, taus, strict=True)}
    none = [None] * (len(sizes) - 1)
    keys = none if weights is not None else jax.random.split(key, len(sizes) - 1)
    ws = none if weights is None else list(weights)
    synapses, edges = {}, {}
    for i in range(1, len(sizes)):
        synapses[f"w{i}"] = Dense(sizes[i - 1], sizes[i], key=keys[i - 1], weight=ws[i - 1])
        edges[f"w{i}"] = (names[i - 1], names[i])
    return HAM(layers, synapses, edges)


def conv_pool_ham(image_shape: Sequence[int] = (8, 8, 1), channels: int = 8,
                  kernel_size: int = 3, stride: int = 1, pool: int = 2, num_top: int = 10, *,
                  beta: float = 1.0, gamma: float = 1.0,
                  taus: Sequence[float] = (1.0, 0.2, 0.2, 0.05), key: PRNGKeyArray) -> HAM:
    """A convolutional HAM with average pooling (HAM paper §4.3, pooling remark; docs/maths.md
    §3.3): ``"image"``
    (Identity, ``(H, W, C)``) —conv ξ— ``"features"`` (Softmax(β) over channels) —avgpool P—
    ``"pooled"`` (Identity) —Θ— ``"top"`` (Softmax(γ), ``num_top``), ξ and Θ drawn from
    ``key``::

        E = Σ_A [x_A·g_A − L_A(x_A)] − ⟨f, conv(v)⟩ − ⟨p, P f⟩ − gᵀ Θ flatten(p)
        τ_h ḣ = conv(v) + Pᵀ p − h,   τ_p ṗ = P f + reshape(Θᵀ g) − p,   τ_z ż = Θ p − z

    ``P`` is linear, so its feedback ``Pᵀ`` (autodiff) keeps the energy a Lyapunov function.
    ``image_shape = (H, W, C)``; the kernel is ``(kernel_size, kernel_size, C, channels)``,
    the pooling window ``pool``; ``taus = (τ_v, τ_h, τ_p, τ_z)``."""
    image_shape = tuple(image_shape)
    k1, k2 = jax.random.split(key)
    conv = Conv2D(image_shape[2], channels, kernel_size, stride=stride, key=k1)
    fshape = conv.output_shape(image_shape)
    pooler = AvgPool2D(pool)
    pshape = pooler.output_shape(fshape)
    tv, tf, tp, tz = taus
    return HAM(
        layers={"image": Layer(image_shape, L.Identity(), tau=tv),
                "features": Layer(fshape, L.Softmax(beta, axis=-1), tau=tf),
                "pooled": Layer(pshape, L.Identity(), tau=tp),
                "top": Layer(num_top, L.Softmax(gamma), tau=tz)},
        synapses={"conv": conv, "pool": pooler, "theta": Dense(pshape, num_top, key=k2)},
        edges={"conv": ("image", "features"), "pool": ("features", "pooled"),
               "theta": ("pooled", "top")},
    )
