"""Trainable HAMs for images, the ones ``hamjax train`` builds.

Layer names are ``"image"``, ``"hidden"`` (``"hidden1"``, … for deep models), ``"features"``,
``"pooled"`` and ``"label"``: the tasks in :mod:`hamjax.train` read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .. import lagrangians as L
from .._ham import HAM
from .._layer import Layer
from ..synapses import AvgPool2D, Conv2D, Dense, Memory


def dense_classifier(
    image_shape: Sequence[int],
    num_classes: int,
    hidden: int = 256,
    *,
    hidden_lagrangian: L.Lagrangian | None = None,
    label_lagrangian: L.Lagrangian | None = None,
    tau_hidden: float = 1.0,
    tau_label: float = 1.0,
    key: PRNGKeyArray,
) -> HAM:
    """``image (Identity) —W₁— hidden (ReLU, bias) —W₂— label (Softmax β=4, bias)``.

    With the image clamped the steady state (docs/maths.md eq. (T1), §4.1) is
    ``h = W₁g_v + W₂ᵀ g_ℓ + b_h``,
    ``ℓ = W₂ g_h + b_ℓ``: a one-hidden-layer perceptron with symmetric feedback, read out as the
    label activations ``softmax(βℓ)`` (probabilities: train with ``Classification(loss_kind=
    "nll")``). The softmax keeps the top-down current ``W₂ᵀ g_ℓ`` bounded, so with the ReLU's
    quadratic Legendre term the energy is bounded below for any weights and every relaxation
    settles (an identity label layer lets the hidden–label loop run away).

    Shapes: ``image_shape`` (any), ``hidden`` neurons, ``num_classes`` labels; ``W₁`` and ``W₂``
    are drawn from ``key``. ``hidden_lagrangian``/``label_lagrangian`` replace the ReLU and
    Softmax(4) Lagrangians, ``tau_hidden``/``tau_label`` the time constants (default 1).
    :func:`deep_dense_classifier` with one hidden layer named ``"hidden"``."""
    return deep_dense_classifier(
        image_shape, num_classes, (hidden,), key=key,
        hidden_lagrangian=hidden_lagrangian, label_lagrangian=label_lagrangian,
        tau_hidden=tau_hidden, tau_label=tau_label, names=("hidden",),
    )


def deep_dense_classifier(
    image_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (256, 128),
    *,
    hidden_lagrangian: L.Lagrangian | None = None,
    label_lagrangian: L.Lagrangian | None = None,
    tau_hidden: float = 1.0,
    tau_label: float = 1.0,
    names: Sequence[str] | None = None,
    key: PRNGKeyArray,
) -> HAM:
    """A chain ``image — hidden₁ — … — hiddenₖ — label`` of dense synapses ``"w1", "w2", …``
    (docs/maths.md eq. 5), ``W_A: (N_A, N_{A−1})`` drawn from ``key``; hidden layers ReLU with a
    bias, the label Softmax(4) with a bias, unless other Lagrangians are given.

    ``hidden``: the hidden layer sizes; ``names``: their names (default ``"hidden1"``, …);
    ``tau_hidden``/``tau_label``: time constants. The image layer (Identity, ``image_shape``)
    is meant to be clamped: :class:`hamjax.train.Classification` does."""
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
        synapses[f"w{i + 1}"] = Dense(layers[a].shape, layers[b].shape, key=keys[i])
        edges[f"w{i + 1}"] = (a, b)
    return HAM(layers, synapses, edges)


def conv_classifier(
    image_shape: Sequence[int],
    num_classes: int,
    channels: int | Sequence[int] = 32,
    kernel_size: int | Sequence[int] = 5,
    stride: int | Sequence[int] = 1,
    pool: int = 2,
    *,
    beta: float = 1.0,
    feature_lagrangian: L.Lagrangian | Sequence[L.Lagrangian] | None = None,
    key: PRNGKeyArray,
) -> HAM:
    """``image —conv— features —conv2— features2 … —avgpool— pooled —dense— label``: a
    hierarchy of convolutional feature maps (one stage per entry of ``channels``).

    docs/maths.md eq. (20)–(21): a feature map's Lagrangian is by default the HAM paper's
    ``(1/β) Σ_positions logsumexp_k`` (softmax over channels); feedback to the image and between
    stages is the transposed convolution and feedback through the pooling layer the adjoint of
    average pooling, both by autodiff, so the energy is a Lyapunov function.

    Shapes: ``image_shape = (H, W, C)``; stage ``i`` convolves the stage below with a kernel
    ``(kernel_size[i], kernel_size[i], C_{i−1}, channels[i])`` at ``stride[i]`` ("VALID"),
    each drawn from ``key`` (``kernel_size``/``stride``: one int for every stage, or one per
    stage). Stages above the first start at 0.3 times the usual scale ``1/sqrt(fan in)``:
    two feature maps coupled by a kernel of norm ``‖K‖`` form a loop of gain about
    ``‖K‖²·max g′``, and at the usual scale (``‖K‖ ≈ 2``) it is no contraction, so relaxations
    crawl (bounded Lagrangians) or run away (two ReLU maps: their energy is then unbounded
    below). The pooling (``pool > 1``) follows the last stage; the readout is drawn at half the
    usual scale ``0.5/sqrt(fan in)`` so that the untrained steady state is a contraction.

    Layers ``"image"`` (Identity), ``"features"``, ``"features2"``, … (each with a bias; their
    Lagrangians ``feature_lagrangian``: one for all, or one per stage; default
    ``Softmax(beta, axis=-1)``), ``"pooled"`` (Identity; only when ``pool > 1``) and ``"label"``
    (Softmax(4), with a bias); synapses ``"conv"``, ``"conv2"``, …, ``"pool"`` (when
    ``pool > 1``) and ``"readout"``. Raises ``ValueError`` when ``image_shape`` is not
    ``(H, W, C)``, for no stage, or for per-stage sequences of different lengths."""
    image_shape = tuple(image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"conv_classifier needs images (H, W, C), got shape {image_shape}")
    channels = (channels,) if isinstance(channels, int) else tuple(channels)
    if not channels:
        raise ValueError("conv_classifier needs at least one stage: channels=() given")
    stages = len(channels)
    kernels = _per_stage(kernel_size, stages, "kernel_size")
    strides = _per_stage(stride, stages, "stride")
    if feature_lagrangian is None or isinstance(feature_lagrangian, L.Lagrangian):
        fl = L.Softmax(beta, axis=-1) if feature_lagrangian is None else feature_lagrangian
        lagrangians = (fl,) * stages
    else:
        lagrangians = _per_stage(tuple(feature_lagrangian), stages, "feature_lagrangian")
    keys = jax.random.split(key, stages + 1)
    layers = {"image": Layer(image_shape, L.Identity())}
    synapses, edges = {}, {}
    below, shape = "image", image_shape
    for i in range(stages):
        suffix = "" if i == 0 else str(i + 1)
        fan_in = kernels[i] ** 2 * shape[2]
        conv = Conv2D(shape[2], channels[i], kernels[i], stride=strides[i], key=keys[i],
                      scale=None if i == 0 else 0.3 / math.sqrt(fan_in))
        shape = conv.output_shape(shape)
        layers[f"features{suffix}"] = Layer(shape, lagrangians[i], bias=True)
        synapses[f"conv{suffix}"] = conv
        edges[f"conv{suffix}"] = (below, f"features{suffix}")
        below = f"features{suffix}"
    if pool > 1:
        pooler = AvgPool2D(pool)
        layers["pooled"] = Layer(pooler.output_shape(shape), L.Identity())
        synapses["pool"] = pooler
        edges["pool"] = (below, "pooled")
        below = "pooled"
    layers["label"] = Layer(num_classes, L.Softmax(4.0), bias=True)
    # half the usual scale: the Softmax(4) label's Hessian reaches β/2 = 2, so with |W| ≈ 1
    # the loop top ↔ label has gain ≈ 2|W|² > 1 through the (linear) pooled layer and the
    # untrained steady state is no contraction (its adjoint then needs GMRES); at half the
    # scale the gain is about ½
    n_top = math.prod(layers[below].shape)
    synapses["readout"] = Dense(layers[below].shape, num_classes, scale=0.5 / math.sqrt(n_top),
                                key=keys[-1])
    edges["readout"] = (below, "label")
    return HAM(layers, synapses, edges)


def _per_stage(value, stages: int, name: str) -> tuple:
    """``value`` for each of ``stages`` conv stages: a single value repeated, or a sequence of
    one per stage."""
    if not isinstance(value, tuple | list):
        return (value,) * stages
    if len(value) != stages:
        raise ValueError(f"conv_classifier: {name} has {len(value)} entries for {stages} "
                         "stages (channels); give one value or one per stage")
    return tuple(value)


def dense_memory(
    image_shape: Sequence[int],
    hidden: int = 1024,
    *,
    evidence: bool = True,
    hidden_lagrangian: L.Lagrangian | None = None,
    key: PRNGKeyArray,
) -> HAM:
    """``evidence (Identity, clamped) —W_e— image (Identity, bias) —W— hidden (Tanh, bias)``: a
    dense associative memory of ``hidden`` learned features that restores images.

    The energy (docs/maths.md §6.4, eq. R1) is
    ``E = ½|v|² − b·v − eᵀW_e v + Σ_μ [h_μ g_μ − L_h(h)] − b_hᵀ g − gᵀ W v`` with ``g = tanh(h)``;
    its steady state is ``h = W v + b_h``, ``v = b + W_e e + Wᵀ tanh(h)``. The image layer ``v``
    relaxes from the corrupted image; with ``evidence`` the corrupted image is also held on the
    clamped ``evidence`` layer ``e`` (``hamjax.train.Denoising(evidence_layer="evidence")``), so
    the attractor is conditioned on it throughout instead of only through where it starts.
    ``W_e`` starts at ``½ I`` (the restoration starts as a shrunk copy of the input), ``W`` at
    half the usual scale ``0.5/sqrt(N)`` (the untrained loop ``v → h → v`` a contraction). The
    tanh keeps the energy bounded below for any weights (``log cosh h ≤ |h|`` against ``½|v|²``),
    so every relaxation settles.

    Shapes: ``image_shape`` (any, ``N`` pixels), ``hidden`` features ``K``; ``W: (K, N)`` and
    ``W_e: (N, N)``. Layers ``"evidence"`` (only with ``evidence``), ``"image"``, ``"hidden"``;
    synapses ``"evidence"`` and ``"memory"``. ``hidden_lagrangian`` replaces the Tanh (a
    bounded one keeps the energy bounded below). Raises ``ValueError`` for ``hidden < 1``."""
    image_shape = tuple(image_shape)
    if hidden < 1:
        raise ValueError(f"dense_memory needs at least one hidden neuron, got hidden={hidden}")
    n = math.prod(image_shape)
    hl = L.Tanh() if hidden_lagrangian is None else hidden_lagrangian
    layers = {"image": Layer(image_shape, L.Identity(), bias=True),
              "hidden": Layer(hidden, hl, bias=True)}
    synapses = {"memory": Dense(image_shape, hidden, scale=0.5 / math.sqrt(n), key=key)}
    edges = {"memory": ("image", "hidden")}
    if evidence:
        layers = {"evidence": Layer(image_shape, L.Identity()), **layers}
        synapses["evidence"] = Dense(image_shape, image_shape, weight=0.5 * jnp.eye(n))
        edges["evidence"] = ("evidence", "image")
    return HAM(layers, synapses, edges)


def memory_model(
    image_shape: Sequence[int],
    num_memories: int = 100,
    *,
    beta: float = 4.0,
    hidden_lagrangian: L.Lagrangian | None = None,
    patterns=None,
    similarity: str = "dot",
    key: PRNGKeyArray | None = None,
) -> HAM:
    """A visible layer (Identity) and a :class:`~hamjax.synapses.Memory` of ``K`` memories:
    ``E = ½|v|² − (1/β) logsumexp(β ξ v)`` (docs/maths.md §3.1, adiabatic); one update is attention
    over the memories, ``v ← ξᵀ softmax(β ξ v)``. With ``similarity="distance"``,
    ``E = −(1/β) logsumexp(−β/2 |ξ − v|²)``: retrieval of the nearest memory.

    ``ξ`` has shape ``(K, *image_shape)`` (``K = num_memories``): the given ``patterns``, or drawn
    from ``key`` (``ValueError`` when neither is given). One layer ``"image"`` and one synapse
    ``"memory"``; ``hidden_lagrangian`` replaces ``L_h = Softmax(beta)`` (e.g. ``RePU(n)``, the
    dense associative memory)."""
    if key is None and patterns is None:
        raise ValueError("memory_model needs a PRNG key, key=, to draw its memories, or "
                         "patterns= given")
    image_shape = tuple(image_shape)
    mem = Memory(
        image_shape, num_memories, beta=beta, lagrangian=hidden_lagrangian,
        similarity=similarity, key=key, memories=patterns,
    )
    return HAM(
        layers={"image": Layer(image_shape, L.Identity())},
        synapses={"memory": mem},
        edges={"memory": ("image",)},
    )
