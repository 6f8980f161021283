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
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from . import lagrangians as L
from .ham import HAM
from .layers import Layer
from .synapses import AvgPool2D, Conv2D, Dense, Memory

__all__ = ["dense_classifier", "deep_dense_classifier", "conv_classifier", "memory_model"]


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
    """``image (Identity) —W₁— hidden (Tanh, bias) —W₂— label (Identity, bias)``.

    With the image clamped the steady state is ``h = W₁g_v + W₂ᵀ g_ℓ + b_h``,
    ``ℓ = W₂ g_h + b_ℓ``: a one-hidden-layer perceptron with symmetric feedback. Tanh keeps the
    hidden activations bounded, so the energy is bounded below for any weights."""
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
    names = tuple(names) if names is not None else tuple(f"hidden{i + 1}" for i in range(len(hidden)))
    hl = L.Tanh(1.0) if hidden_lagrangian is None else hidden_lagrangian
    ll = L.Identity() if label_lagrangian is None else label_lagrangian
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
    layers["label"] = Layer(num_classes, L.Identity(), bias=True)
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
) -> HAM:
    """A visible layer (Identity) and a :class:`~hamjax.synapses.Memory` of ``K`` memories:
    ``E = ½|v|² − (1/β) logsumexp(β ξ v)`` (MATH.md §3.1, adiabatic); one update is attention
    over the memories, ``v ← ξᵀ softmax(β ξ v)``."""
    image_shape = tuple(image_shape)
    mem = Memory(
        key, image_shape, num_memories, beta=beta, lagrangian=hidden_lagrangian,
        memories=patterns,
    )
    return HAM(
        layers={"image": Layer(image_shape, L.Identity())},
        synapses={"memory": mem},
        edges={"memory": ("image",)},
    )
