"""Ready-made HAMs.

Trainable models for images (used by ``hamjax train``):

* :func:`dense_classifier`: image → hidden → label, MATH.md eq. (5) with one hidden layer;
* :func:`deep_dense_classifier`: image → hidden₁ → … → hiddenₖ → label;
* :func:`conv_classifier`: image → conv feature map (softmax over channels, MATH.md eq. 20) →
  average pooling → label (HAM paper §4.3);
* :func:`memory_model`: a visible layer and ``K`` memories eliminated analytically (dense
  associative memory / modern Hopfield, MATH.md §3.1), for denoising, completion and storage.

Layer names are ``"image"``, ``"hidden"`` (``"hidden1"``, … for deep models), ``"features"``,
``"pooled"`` and ``"label"``: the tasks in :mod:`hamjax.train` read them.

Memories to compare (each docstring states its energy and update):

* :func:`classical_hopfield` (binary :class:`BinaryHopfield` with :func:`sign_update`, or a
  continuous Tanh HAM), :func:`dense_associative_memory` (rectified polynomial / exponential
  ``F``), :func:`modern_hopfield` (one :func:`fixed_point_step` is attention);
* the HAM paper's architectures :func:`ham_1hidden`, :func:`ham_2hidden`, :func:`ham_conv`;
  :func:`deep_dense_ham`, :func:`conv_pool_ham`; :func:`energy_transformer_block` on image
  patches (attention + per-token Hopfield synapses over layer-normed tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from . import lagrangians as L
from ._ham import HAM
from ._layer import Layer
from .synapses import Attention, AvgPool2D, Conv2D, Dense, Lateral, Memory, TokenMemory

__all__ = [
    "dense_classifier",
    "deep_dense_classifier",
    "conv_classifier",
    "memory_model",
    "BinaryHopfield",
    "DenseAssociativeMemory",
    "hebbian_weight",
    "classical_hopfield",
    "dense_associative_memory",
    "sign_update",
    "hopfield_step",
    "fixed_point_step",
    "modern_hopfield",
    "ham_1hidden",
    "ham_2hidden",
    "ham_conv",
    "deep_dense_ham",
    "conv_pool_ham",
    "patchify",
    "unpatchify",
    "energy_transformer_block",
]


def dense_classifier(
    key,
    image_shape: Sequence[int],
    num_classes: int,
    hidden: int = 256,
    *,
    hidden_lagrangian: L.Lagrangian | None = None,
    label_lagrangian: L.Lagrangian | None = None,
    tau_hidden: float = 1.0,
    tau_label: float = 1.0,
) -> HAM:
    """``image (Identity) —W₁— hidden (ReLU, bias) —W₂— label (Softmax β=4, bias)``.

    With the image clamped the steady state is ``h = W₁g_v + W₂ᵀ g_ℓ + b_h``,
    ``ℓ = W₂ g_h + b_ℓ``: a one-hidden-layer perceptron with symmetric feedback, read out as the
    label activations ``softmax(βℓ)`` (probabilities: train with ``Classification(loss_kind=
    "nll")``). The softmax keeps the top-down current ``W₂ᵀ g_ℓ`` bounded, so with the ReLU's
    quadratic Legendre term the energy is bounded below for any weights and every relaxation
    settles (an identity label layer lets the hidden–label loop run away)."""
    return deep_dense_classifier(
        key, image_shape, num_classes, (hidden,),
        hidden_lagrangian=hidden_lagrangian, label_lagrangian=label_lagrangian,
        tau_hidden=tau_hidden, tau_label=tau_label, names=("hidden",),
    )


def deep_dense_classifier(
    key,
    image_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (256, 128),
    *,
    hidden_lagrangian: L.Lagrangian | None = None,
    label_lagrangian: L.Lagrangian | None = None,
    tau_hidden: float = 1.0,
    tau_label: float = 1.0,
    names: Sequence[str] | None = None,
) -> HAM:
    """A chain ``image — hidden₁ — … — hiddenₖ — label`` of dense synapses (MATH.md eq. 5)."""
    hidden = tuple(hidden)
    names = (tuple(names) if names is not None
             else tuple(f"hidden{i + 1}" for i in range(len(hidden))))
    hl = L.ReLU() if hidden_lagrangian is None else hidden_lagrangian
    ll = L.Softmax(4.0) if label_lagrangian is None else label_lagrangian
    keys = jax.random.split(key, len(hidden) + 1)
    layers = {"image": Layer(tuple(image_shape), L.Identity())}
    for n, size in zip(names, hidden, strict=True):
        layers[n] = Layer(size, hl, tau=tau_hidden, bias=True)
    layers["label"] = Layer(num_classes, ll, tau=tau_label, bias=True)
    order = ["image", *names, "label"]
    synapses, edges = {}, {}
    for i, (a, b) in enumerate(zip(order[:-1], order[1:], strict=True)):
        synapses[f"w{i + 1}"] = Dense(keys[i], layers[a].shape, layers[b].shape)
        edges[f"w{i + 1}"] = (a, b)
    return HAM(layers, synapses, edges)


def conv_classifier(
    key,
    image_shape: Sequence[int],
    num_classes: int,
    channels: int = 32,
    kernel_size: int = 5,
    stride: int = 1,
    pool: int = 2,
    *,
    beta: float = 1.0,
    feature_lagrangian: L.Lagrangian | None = None,
) -> HAM:
    """``image —conv— features (softmax over channels) —avgpool— pooled —dense— label``.

    MATH.md eq. (20)–(21): the feature map's Lagrangian is ``(1/β) Σ_positions logsumexp_k``;
    feedback to the image is the transposed convolution and feedback through the pooling layer
    is the adjoint of average pooling, both by autodiff, so the energy is a Lyapunov function."""
    image_shape = tuple(image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"conv_classifier needs images (H, W, C), got shape {image_shape}")
    k1, k2 = jax.random.split(key)
    conv = Conv2D(k1, image_shape[2], channels, kernel_size, stride=stride)
    fshape = conv.output_shape(image_shape)
    pooler = AvgPool2D(pool) if pool > 1 else None
    fl = L.Softmax(beta, axis=-1) if feature_lagrangian is None else feature_lagrangian
    layers = {
        "image": Layer(image_shape, L.Identity()),
        "features": Layer(fshape, fl, bias=True),
    }
    synapses = {"conv": conv}
    edges = {"conv": ("image", "features")}
    top = "features"
    if pooler is not None:
        pshape = pooler.output_shape(fshape)
        layers["pooled"] = Layer(pshape, L.Identity())
        synapses["pool"] = pooler
        edges["pool"] = ("features", "pooled")
        top = "pooled"
    layers["label"] = Layer(num_classes, L.Softmax(4.0), bias=True)
    synapses["readout"] = Dense(k2, layers[top].shape, num_classes)
    edges["readout"] = (top, "label")
    return HAM(layers, synapses, edges)


def memory_model(
    key,
    image_shape: Sequence[int],
    num_memories: int = 100,
    *,
    beta: float = 4.0,
    hidden_lagrangian: L.Lagrangian | None = None,
    patterns=None,
    similarity: str = "dot",
) -> HAM:
    """A visible layer (Identity) and a :class:`~hamjax.synapses.Memory` of ``K`` memories:
    ``E = ½|v|² − (1/β) logsumexp(β ξ v)`` (MATH.md §3.1, adiabatic); one update is attention
    over the memories, ``v ← ξᵀ softmax(β ξ v)``. With ``similarity="distance"``,
    ``E = −(1/β) logsumexp(−β/2 |ξ − v|²)``: retrieval of the nearest memory."""
    image_shape = tuple(image_shape)
    mem = Memory(
        key, image_shape, num_memories, beta=beta, lagrangian=hidden_lagrangian,
        memories=patterns, similarity=similarity,
    )
    return HAM(
        layers={"image": Layer(image_shape, L.Identity())},
        synapses={"memory": mem},
        edges={"memory": ("image",)},
    )


# ============================================================================ associative memories
# Models to compare memories with (GitHub issue 7). Every docstring states the energy and the
# update the preset implements; tests/test_presets.py checks both against closed forms.


def _patterns(patterns, what: str = "patterns") -> Array:
    p = jnp.asarray(patterns, dtype=jnp.result_type(float))
    if p.ndim < 2:
        raise ValueError(f"{what} must have shape (K, *pattern_shape), got {p.shape}")
    return p


def hebbian_weight(patterns) -> Array:
    """``W = (1/N) Σ_μ ξ_μ ξ_μᵀ`` with a zero diagonal, for patterns ``ξ`` of shape ``(K, N)``."""
    xi = _patterns(patterns)
    xi = xi.reshape(xi.shape[0], -1)
    n = xi.shape[1]
    w = xi.T @ xi / n
    return w * (1.0 - jnp.eye(n, dtype=w.dtype))


def _sum_memories(d: Array) -> Array:
    """``Σ_μ d_{…μi}`` over axis −2, written as a contraction with ones: on XLA CPU (jax 0.10.2)
    the YNNPACK fusion of ``reduce_sum(broadcast(dot) + …)`` returns wrong sums (off by ~N for
    K = 800, N = 100), while the same sum as a dot is exact."""
    return jnp.einsum("...mi,m->...i", d, jnp.ones(d.shape[-2], d.dtype))


def _sign_keep(field: Array, sigma: Array) -> Array:
    """``sign(field)``, keeping ``σ`` where the field is exactly zero."""
    return jnp.where(field > 0, 1.0, jnp.where(field < 0, -1.0, sigma)).astype(sigma.dtype)


class BinaryHopfield(eqx.Module):
    """The classical (binary) Hopfield network on ``σ ∈ {−1, +1}^N``::

        E(σ) = −½ Σ_{i≠j} σ_i W_ij σ_j,        W = (1/N) Σ_μ ξ_μ ξ_μᵀ,  W_ii = 0
        σ_i ← sign(Σ_{j≠i} W_ij σ_j)

    The update is a discrete map (use :func:`sign_update`), not an ODE. Flipping ``σ_i`` against
    its field never raises the energy: ``E(σ_i=−1) − E(σ_i=+1) = 2 Σ_{j≠i} W_ij σ_j``."""

    weight: Array

    @property
    def num_neurons(self) -> int:
        return self.weight.shape[0]

    def _offdiag(self) -> Array:
        return self.weight * (1.0 - jnp.eye(self.num_neurons, dtype=self.weight.dtype))

    def energy(self, sigma: Array) -> Array:
        """``−½ σᵀWσ`` (diagonal excluded) per sample."""
        return -0.5 * jnp.sum(sigma * (sigma @ self._offdiag()), axis=-1)

    def field(self, sigma: Array) -> Array:
        """``Σ_{j≠i} W_ij σ_j``: the update is its sign."""
        return sigma @ self._offdiag().T

    def energy_gap(self, sigma: Array) -> Array:
        """``E(σ with σ_i=−1) − E(σ with σ_i=+1)`` for every ``i``: ``2 Σ_{j≠i} W_ij σ_j``."""
        return 2.0 * self.field(sigma)

    def neuron_field(self, sigma: Array, i) -> Array:
        """The field of neuron ``i`` alone (``O(N)``), for asynchronous updates."""
        return sigma @ self._offdiag()[i]


class DenseAssociativeMemory(eqx.Module):
    """Dense associative memory (Krotov & Hopfield 2016) on ``σ ∈ {−1, +1}^N``::

        E(σ) = −Σ_μ F(ξ_μ·σ)
        σ_i ← sign(Σ_μ [F(ξ_μ·σ|_{σ_i=+1}) − F(ξ_μ·σ|_{σ_i=−1})])

    ``F(x) = x^n`` (``kind="poly"``; ``max(x, 0)^n`` when ``rectified``, the default) or
    ``F(x) = exp(βx)`` (``kind="exp"``, Demircigil et al. 2017). ``n = 2`` without rectification
    is the classical Hopfield network (with the diagonal kept). The update never raises ``E``."""

    memories: Array
    kind: str = eqx.field(static=True, default="poly")
    n: int = eqx.field(static=True, default=3)
    rectified: bool = eqx.field(static=True, default=True)
    beta: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.kind not in ("poly", "exp"):
            raise ValueError(f"kind must be 'poly' or 'exp', got {self.kind!r}")
        if self.kind == "poly" and not self.n >= 1:
            raise ValueError(f"the polynomial degree n must be >= 1, got {self.n}")

    @property
    def num_neurons(self) -> int:
        return self.memories.shape[1]

    def F(self, x: Array) -> Array:
        """The interaction function ``F``."""
        if self.kind == "exp":
            return jnp.exp(self.beta * x)
        return (jax.nn.relu(x) if self.rectified else x) ** self.n

    def energy(self, sigma: Array) -> Array:
        """``−Σ_μ F(ξ_μ·σ)`` per sample (``kind="exp"`` overflows float32 once ``βξ·σ > 88``)."""
        return -jnp.sum(self.F(sigma @ self.memories.T), axis=-1)

    def _split(self, sigma: Array) -> tuple[Array, Array]:
        """``a_{μi} = ξ_μ·σ − ξ_μi σ_i`` (the overlap without neuron ``i``) and ``ξ_{μi}``,
        shapes ``(*batch, K, N)``."""
        h = sigma @ self.memories.T
        a = h[..., :, None] - self.memories * sigma[..., None, :]
        return a, jnp.broadcast_to(self.memories, a.shape)

    def _field_from(self, a: Array, xi: Array) -> Array:
        if self.kind == "exp":
            # log Σ_μ e^{β(a+ξ)} − log Σ_μ e^{β(a−ξ)}: the sign of the energy gap, overflow-free
            return (jax.nn.logsumexp(self.beta * (a + xi), axis=-2)
                    - jax.nn.logsumexp(self.beta * (a - xi), axis=-2))
        # F(x/N) = F(x)/N^n: the same sign, O(1) magnitudes in float32
        s = 1.0 / self.num_neurons
        return _sum_memories(self.F((a + xi) * s) - self.F((a - xi) * s))

    def field(self, sigma: Array) -> Array:
        """A quantity with the sign of the energy gap for every neuron (the update is its sign):
        ``Σ_μ F((ξ_μ·σ|_{σ_i=+1})/N) − F((ξ_μ·σ|_{σ_i=−1})/N)`` for ``poly``, the difference of
        the two log-sum-exps for ``exp``. Memory ``O(batch·K·N)``."""
        return self._field_from(*self._split(sigma))

    def energy_gap(self, sigma: Array) -> Array:
        """``E(σ with σ_i=−1) − E(σ with σ_i=+1) = Σ_μ F(a_μi + ξ_μi) − F(a_μi − ξ_μi)``."""
        a, xi = self._split(sigma)
        return _sum_memories(self.F(a + xi) - self.F(a - xi))

    def neuron_field(self, sigma: Array, i) -> Array:
        """The field of neuron ``i`` alone (``O(K·N)``), for asynchronous updates."""
        h = sigma @ self.memories.T
        xi_i = self.memories[:, i]
        a = h - xi_i * sigma[..., i, None]
        return self._field_from(a[..., :, None], jnp.broadcast_to(xi_i, a.shape)[..., :, None])[
            ..., 0
        ]


def classical_hopfield(patterns, *, continuous: bool = False, beta: float = 1.0,
                       tau: float = 1.0):
    """The classical Hopfield network storing ``patterns`` ``ξ`` (shape ``(K, N)``, ±1) with the
    Hebbian rule ``W = (1/N) Σ_μ ξ_μ ξ_μᵀ``, zero diagonal.

    ``continuous=False``: a :class:`BinaryHopfield`, ``E = −½ σᵀWσ``, ``σ_i ← sign((Wσ)_i)``
    (run it with :func:`sign_update`).

    ``continuous=True``: a HAM with one layer ``"image"`` of ``N`` neurons, Lagrangian
    ``Tanh(β)`` and a :class:`~hamjax.synapses.Lateral` synapse ``"hebbian"`` (MATH.md §1.1)::

        E = Σ_i [x_i tanh(βx_i) − (1/β) log cosh(βx_i)] − ½ Σ_ij tanh(βx_i) W_ij tanh(βx_j)
        τ dx/dt = W tanh(βx) − x
    """
    w = hebbian_weight(patterns)
    if not continuous:
        return BinaryHopfield(w)
    n = w.shape[0]
    return HAM(
        layers={"image": Layer(n, L.Tanh(beta), tau=tau)},
        synapses={"hebbian": Lateral(None, n, weight=w)},
        edges={"hebbian": ("image",)},
    )


def dense_associative_memory(patterns, n: int = 3, *, kind: str = "poly",
                             rectified: bool = True, beta: float = 1.0) -> DenseAssociativeMemory:
    """Dense associative memory (Krotov & Hopfield 2016) storing ``patterns`` (``(K, N)``, ±1)::

        E(σ) = −Σ_μ F(ξ_μ·σ),   F(x) = max(x, 0)^n  (kind="poly")  or  exp(βx)  (kind="exp")
        σ_i ← sign(Σ_μ [F(ξ_μ·σ|_{σ_i=+1}) − F(ξ_μ·σ|_{σ_i=−1})])

    See :class:`DenseAssociativeMemory`; run it with :func:`sign_update`."""
    xi = _patterns(patterns)
    return DenseAssociativeMemory(xi.reshape(xi.shape[0], -1), kind=kind, n=n,
                                  rectified=rectified, beta=beta)


def sign_update(model, sigma: Array, *, mode: str = "sync", key=None) -> Array:
    """One step of the binary dynamics of a :class:`BinaryHopfield` or
    :class:`DenseAssociativeMemory`: ``σ_i ← sign(field_i(σ))`` (a neuron with zero field keeps
    its state).

    ``mode="sync"`` updates all neurons at once from the same ``σ`` (may 2-cycle);
    ``mode="async"`` sweeps the neurons one after the other, each seeing the updates before it
    (in a random order when ``key`` is given, else ``0..N−1``), and never raises the energy.
    ``sigma`` may carry leading batch axes."""
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(float))
    if mode == "sync":
        return _sign_keep(model.field(sigma), sigma)
    if mode != "async":
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    n = sigma.shape[-1]
    order = jnp.arange(n) if key is None else jax.random.permutation(key, n)

    def body(k, s):
        i = order[k]
        new = _sign_keep(model.neuron_field(s, i), s[..., i])
        return s.at[..., i].set(new)

    return jax.lax.fori_loop(0, n, body, sigma)


hopfield_step = sign_update


def fixed_point_step(net: HAM, x, clamp=()):
    """One synchronous fixed-point step of a HAM: ``x_A ← c_A(x) + I_A`` on the free layers
    (the Euler step of ``τ_A ẋ_A = c_A + I_A − x_A`` with ``dt = τ_A``). For
    :func:`modern_hopfield` this is ``v ← ξᵀ softmax(β ξ v)``: attention with queries ``v`` and
    keys = values = the stored patterns."""
    dx = net.vector_field(x, clamp)
    return {n: x[n] + net.layers[n].tau * dx[n] for n in net.layers}


def modern_hopfield(patterns, beta: float = 1.0, *, tau: float = 1.0) -> HAM:
    """The modern Hopfield network (Ramsauer et al. 2020; MATH.md §3.1, adiabatic): one layer
    ``"image"`` (Identity) and a :class:`~hamjax.synapses.Memory` ``"memory"`` of the patterns::

        E(v) = ½|v|² − (1/β) log Σ_μ exp(β ξ_μ·v)
        τ dv/dt = ξᵀ softmax(β ξ v) − v;  one update (:func:`fixed_point_step`):
        v ← ξᵀ softmax(β ξ v) = Attention(Q=v, K=ξ, V=ξ) with inverse temperature β

    ``patterns`` has shape ``(K, *pattern_shape)``; the layer has the pattern shape."""
    xi = _patterns(patterns)
    shape = tuple(xi.shape[1:])
    mem = Memory(None, shape, xi.shape[0], beta=beta, memories=xi)
    return HAM(
        layers={"image": Layer(shape, L.Identity(), tau=tau)},
        synapses={"memory": mem},
        edges={"memory": ("image",)},
    )


def _dense(weight, in_shape, out_shape) -> Dense:
    """A :class:`Dense` synapse holding a given ``(out, in)`` weight matrix."""
    w = jnp.asarray(weight, dtype=jnp.result_type(float))
    syn = Dense(jax.random.PRNGKey(0), in_shape, out_shape)
    if w.shape != syn.weight.shape:
        raise ValueError(f"expected a weight of shape {syn.weight.shape}, got {w.shape}")
    return eqx.tree_at(lambda s: s.weight, syn, w)


def ham_1hidden(xi, beta: float = 1.0, *, adiabatic: bool = False, tau_visible: float = 1.0,
                tau_hidden: float = 0.1) -> HAM:
    """HAM paper §4.1 (MATH.md eqs. 13–15): visible ``"image"`` (Identity, ``N``) and hidden
    ``"hidden"`` (Softmax(β), ``K``) layers, coupled by the memories ``ξ`` (shape ``(K, N)``)::

        E = ½|v|² + [h·f − (1/β) log Σ_μ e^{βh_μ}] − fᵀ ξ v,      f = softmax(βh)
        τ_v dv/dt = ξᵀ f − v,    τ_h dh/dt = ξ v − h

    ``adiabatic=True`` eliminates the hidden layer (``h = ξv``): the modern Hopfield network,
    ``E = ½|v|² − (1/β) log Σ_μ exp(β ξ_μ·v)``."""
    xi = _patterns(xi, "xi")
    if adiabatic:
        return modern_hopfield(xi, beta, tau=tau_visible)
    k, n = xi.shape
    return HAM(
        layers={"image": Layer(n, L.Identity(), tau=tau_visible),
                "hidden": Layer(k, L.Softmax(beta), tau=tau_hidden)},
        synapses={"xi": _dense(xi, n, k)},
        edges={"xi": ("image", "hidden")},
    )


def ham_2hidden(xi, theta, beta: float = 1.0, gamma: float = 1.0, *, adiabatic_top: bool = False,
                taus: Sequence[float] = (1.0, 0.1, 0.01)) -> HAM:
    """HAM paper §4.2 (MATH.md eqs. 16–19): ``"image"`` (Identity, ``N``) —ξ— ``"hidden"``
    (Softmax(β), ``K``) —Θ— ``"top"`` (Softmax(γ), ``N_z``); ``ξ: (K, N)``, ``Θ: (N_z, K)``::

        E = ½|v|² + [h·f − (1/β) log Σ e^{βh}] + [z·g − (1/γ) log Σ e^{γz}] − fᵀξv − gᵀΘf
        τ_v v̇ = ξᵀf − v,   τ_h ḣ = ξv + Θᵀg − h,   τ_z ż = Θf − z

    ``adiabatic_top=True`` eliminates the top layer (``z = Θf``, eq. 19): a
    :class:`~hamjax.synapses.Memory` ``"theta"`` on the hidden layer with energy
    ``−(1/γ) log Σ_α exp(γ Σ_μ Θ_αμ f_μ)``."""
    xi, theta = _patterns(xi, "xi"), _patterns(theta, "theta")
    k, n = xi.shape
    nz = theta.shape[0]
    tv, th, tz = taus
    layers = {"image": Layer(n, L.Identity(), tau=tv),
              "hidden": Layer(k, L.Softmax(beta), tau=th)}
    synapses = {"xi": _dense(xi, n, k)}
    edges = {"xi": ("image", "hidden")}
    if adiabatic_top:
        synapses["theta"] = Memory(None, k, nz, memories=theta, lagrangian=L.Softmax(gamma))
        edges["theta"] = ("hidden",)
    else:
        layers["top"] = Layer(nz, L.Softmax(gamma), tau=tz)
        synapses["theta"] = _dense(theta, k, nz)
        edges["theta"] = ("hidden", "top")
    return HAM(layers, synapses, edges)


def ham_conv(kernel, theta, image_shape: Sequence[int], beta: float = 1.0, gamma: float = 1.0,
             *, stride: int = 1, adiabatic_top: bool = False,
             taus: Sequence[float] = (1.0, 0.1, 0.01)) -> HAM:
    """HAM paper §4.3 (MATH.md eqs. 20–23): ``"image"`` (Identity, ``(N, N, C)``) —conv ξ—
    ``"features"`` (softmax over channels, ``(M, M, K)``) —Θ— ``"top"`` (Softmax(γ), ``N_z``).
    ``kernel`` is HWIO ``(w, w, C, K)``; ``Θ: (N_z, M·M·K)`` acts on the flattened feature map::

        E = ½Σv² + Σ_ab [h_ab·f_ab − (1/β) log Σ_k e^{βh_abk}] + [z·g − (1/γ) log Σ e^{γz}]
            − ⟨f, conv2d(v; ξ, s)⟩ − gᵀ Θ flatten(f)
        τ_v v̇ = conv2d_T(f) − v,  τ_h ḣ = conv2d(v) + reshape(Θᵀg) − h,  τ_z ż = Θ flatten(f) − z

    ``adiabatic_top=True`` eliminates ``"top"`` (eq. 23) into a Memory on the features."""
    image_shape = tuple(image_shape)
    kernel = jnp.asarray(kernel, dtype=jnp.result_type(float))
    conv = Conv2D(jax.random.PRNGKey(0), kernel.shape[2], kernel.shape[3], kernel.shape[:2],
                  stride=stride)
    conv = eqx.tree_at(lambda c: c.kernel, conv, kernel)
    fshape = conv.output_shape(image_shape)
    theta = _patterns(theta, "theta")
    nz = theta.shape[0]
    tv, th, tz = taus
    layers = {"image": Layer(image_shape, L.Identity(), tau=tv),
              "features": Layer(fshape, L.Softmax(beta, axis=-1), tau=th)}
    synapses = {"conv": conv}
    edges = {"conv": ("image", "features")}
    if adiabatic_top:
        synapses["theta"] = Memory(None, fshape, nz, memories=theta, lagrangian=L.Softmax(gamma))
        edges["theta"] = ("features",)
    else:
        layers["top"] = Layer(nz, L.Softmax(gamma), tau=tz)
        synapses["theta"] = _dense(theta, fshape, nz)
        edges["theta"] = ("features", "top")
    return HAM(layers, synapses, edges)


def deep_dense_ham(key, sizes: Sequence[int] = (64, 128, 64, 10), *,
                   lagrangians: Sequence[L.Lagrangian] | None = None,
                   taus: Sequence[float] | None = None, beta: float = 1.0,
                   weights: Sequence | None = None) -> HAM:
    """A deep dense HAM (MATH.md eqs. 5–8): a chain of layers ``"layer0" — "layer1" — …`` with
    dense synapses ``"w1", "w2", …`` (``W_A: (N_A, N_{A−1})``)::

        E = Σ_A [x_A·g_A − L_A(x_A)] − Σ_A g_Aᵀ W_A g_{A−1}
        τ_A ẋ_A = W_A g_{A−1} + W_{A+1}ᵀ g_{A+1} − x_A

    Defaults: Identity on the input layer, Softmax(β) on the others, ``τ_A = 1, ½, ¼, …``
    (higher layers faster, eq. 12). Give ``weights`` to set the matrices, else they are drawn
    from ``key``."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"deep_dense_ham needs at least two layers, got sizes {sizes}")
    if lagrangians is None:
        lagrangians = (L.Identity(),) + tuple(L.Softmax(beta) for _ in sizes[1:])
    taus = tuple(0.5 ** i for i in range(len(sizes))) if taus is None else tuple(taus)
    names = [f"layer{i}" for i in range(len(sizes))]
    layers = {nm: Layer(s, lg, tau=t)
              for nm, s, lg, t in zip(names, sizes, lagrangians, taus, strict=True)}
    keys = jax.random.split(key, len(sizes) - 1)
    synapses, edges = {}, {}
    for i in range(1, len(sizes)):
        if weights is not None:
            syn = _dense(weights[i - 1], sizes[i - 1], sizes[i])
        else:
            syn = Dense(keys[i - 1], sizes[i - 1], sizes[i])
        synapses[f"w{i}"] = syn
        edges[f"w{i}"] = (names[i - 1], names[i])
    return HAM(layers, synapses, edges)


def conv_pool_ham(key, image_shape: Sequence[int] = (8, 8, 1), channels: int = 8,
                  kernel_size: int = 3, stride: int = 1, pool: int = 2, num_top: int = 10, *,
                  beta: float = 1.0, gamma: float = 1.0,
                  taus: Sequence[float] = (1.0, 0.2, 0.2, 0.05)) -> HAM:
    """A convolutional HAM with average pooling (HAM paper §4.3, pooling remark): ``"image"``
    (Identity) —conv ξ— ``"features"`` (Softmax(β) over channels) —avgpool P— ``"pooled"``
    (Identity) —Θ— ``"top"`` (Softmax(γ))::

        E = Σ_A [x_A·g_A − L_A(x_A)] − ⟨f, conv(v)⟩ − ⟨p, P f⟩ − gᵀ Θ flatten(p)
        τ_h ḣ = conv(v) + Pᵀ p − h,   τ_p ṗ = P f + reshape(Θᵀ g) − p,   τ_z ż = Θ p − z

    ``P`` is linear, so its feedback ``Pᵀ`` (autodiff) keeps the energy a Lyapunov function."""
    image_shape = tuple(image_shape)
    k1, k2 = jax.random.split(key)
    conv = Conv2D(k1, image_shape[2], channels, kernel_size, stride=stride)
    fshape = conv.output_shape(image_shape)
    pooler = AvgPool2D(pool)
    pshape = pooler.output_shape(fshape)
    tv, tf, tp, tz = taus
    return HAM(
        layers={"image": Layer(image_shape, L.Identity(), tau=tv),
                "features": Layer(fshape, L.Softmax(beta, axis=-1), tau=tf),
                "pooled": Layer(pshape, L.Identity(), tau=tp),
                "top": Layer(num_top, L.Softmax(gamma), tau=tz)},
        synapses={"conv": conv, "pool": pooler, "theta": Dense(k2, pshape, num_top)},
        edges={"conv": ("image", "features"), "pool": ("features", "pooled"),
               "theta": ("pooled", "top")},
    )


def patchify(images, patch_size: int) -> Array:
    """``(*batch, H, W, C)`` images → ``(*batch, T, p·p·C)`` tokens, ``T = (H/p)(W/p)``, patches
    in row-major order, each flattened as ``(p, p, C)``."""
    x = jnp.asarray(images)
    *batch, h, w, c = x.shape
    p = int(patch_size)
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    x = x.reshape(*batch, h // p, p, w // p, p, c)
    x = jnp.moveaxis(x, -4, -3)  # (..., H/p, W/p, p, p, C)
    return x.reshape(*batch, (h // p) * (w // p), p * p * c)


def unpatchify(tokens, image_shape: Sequence[int], patch_size: int) -> Array:
    """The inverse of :func:`patchify`."""
    h, w, c = image_shape
    p = int(patch_size)
    t = jnp.asarray(tokens)
    batch = t.shape[:-2]
    x = t.reshape(*batch, h // p, w // p, p, p, c)
    x = jnp.moveaxis(x, -3, -4)
    return x.reshape(*batch, h, w, c)


def energy_transformer_block(key, image_shape: Sequence[int] = (8, 8, 1), patch_size: int = 2,
                             *, num_heads: int = 4, head_dim: int = 8,
                             num_memories: int | None = None, beta: float | None = None,
                             hopfield: str = "relu", hopfield_beta: float = 1.0,
                             gamma: float = 1.0, tau: float = 1.0) -> HAM:
    """An Energy-Transformer-style block (Hoover et al. 2023) on image patches: one layer
    ``"tokens"`` of shape ``(T, D)`` (``T`` patches of ``D = p·p·C`` pixels, see
    :func:`patchify`) with a per-token LayerNorm Lagrangian, so ``g_C = γ (x_C − x̄_C)/σ_C``,
    and two synapses on it::

        E = Σ_C [x_C·g_C − L(x_C)]
            − (1/β) Σ_h Σ_C log Σ_{B≠C} exp(β K_hB·Q_hC)        "attention" (K = W^K g, Q = W^Q g)
            − ½ Σ_C Σ_μ relu(ξ_μ·g_C)²                           "hopfield" (hopfield="relu")
              or − (1/β_h) Σ_C log Σ_μ exp(β_h ξ_μ·g_C)           (hopfield="softmax")
        τ dx_C/dt = −∂E/∂g_C = (attention + Hopfield currents) − x_C

    ``β`` defaults to ``1/sqrt(head_dim)``; ``num_memories`` to ``4 D``."""
    image_shape = tuple(image_shape)
    toks = patchify(jnp.zeros((1,) + image_shape), patch_size).shape[1:]
    t, d = toks
    num_memories = 4 * d if num_memories is None else num_memories
    if hopfield == "relu":
        hl = L.ReLU()
    elif hopfield == "softmax":
        hl = L.Softmax(hopfield_beta)
    else:
        raise ValueError(f"hopfield must be 'relu' or 'softmax', got {hopfield!r}")
    k1, k2 = jax.random.split(key)
    return HAM(
        layers={"tokens": Layer((t, d), L.LayerNorm(gamma, axis=-1), tau=tau)},
        synapses={"attention": Attention(k1, d, num_heads, head_dim, beta=beta),
                  "hopfield": TokenMemory(k2, d, num_memories, lagrangian=hl)},
        edges={"attention": ("tokens",), "hopfield": ("tokens",)},
    )
