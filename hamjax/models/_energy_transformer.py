"""The Energy Transformer (Hoover et al. 2023) on image patches, and the patch helpers.

:func:`energy_transformer_block` is a HAM of one token layer with two synapse energies
(docs/maths.md §2.3): energy attention (:class:`hamjax.synapses.Attention`) and a token-wise
Hopfield memory (:class:`hamjax.synapses.TokenMemory`). :func:`energy_transformer` adds the patch
layer, the patch embedding, the mask token and the positional embedding as energies of the same
HAM, for masked patch completion (:class:`hamjax.train.PatchCompletion`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .. import lagrangians as L
from .._ham import HAM
from .._layer import Layer
from ..synapses import Attention, Bias, TokenDense, TokenMemory


def patchify(images, patch_size: int) -> Array:
    """``(*batch, H, W, C)`` images → ``(*batch, T, p·p·C)`` tokens, ``T = (H/p)(W/p)``, patches
    in row-major order, each flattened as ``(p, p, C)``; ``p = patch_size``.

    Raises ``ValueError`` when ``H`` or ``W`` is not a multiple of ``p``."""
    x = jnp.asarray(images)
    *batch, h, w, c = x.shape
    p = int(patch_size)
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    x = x.reshape(*batch, h // p, p, w // p, p, c)
    x = jnp.moveaxis(x, -4, -3)  # (..., H/p, W/p, p, p, C)
    return x.reshape(*batch, (h // p) * (w // p), p * p * c)


def unpatchify(tokens, image_shape: Sequence[int], patch_size: int) -> Array:
    """The inverse of :func:`patchify`: ``(*batch, T, p·p·C)`` tokens → ``(*batch, H, W, C)``
    images of ``image_shape = (H, W, C)``.

    ``p = patch_size``; ``T`` must be ``(H/p)(W/p)``."""
    h, w, c = image_shape
    p = int(patch_size)
    t = jnp.asarray(tokens)
    batch = t.shape[:-2]
    x = t.reshape(*batch, h // p, w // p, p, p, c)
    x = jnp.moveaxis(x, -3, -4)
    return x.reshape(*batch, h, w, c)


def _token_shape(image_shape, patch_size) -> tuple[int, int]:
    """``(T, P)``: the number of patches of ``image_shape`` and their size (:func:`patchify`)."""
    return patchify(jnp.zeros((1,) + tuple(image_shape)), patch_size).shape[1:]


def _hopfield_lagrangian(hopfield: str, beta: float):
    if hopfield == "relu":
        return L.ReLU()
    if hopfield == "softmax":
        return L.Softmax(beta)
    raise ValueError(f"hopfield must be 'relu' or 'softmax', got {hopfield!r}")


def energy_transformer_block(image_shape: Sequence[int] = (8, 8, 1), patch_size: int = 2,
                             *, num_heads: int = 4, head_dim: int = 8,
                             num_memories: int | None = None, beta: float | None = None,
                             hopfield: str = "relu", hopfield_beta: float = 1.0,
                             gamma: float = 1.0, tau: float = 1.0, key: PRNGKeyArray) -> HAM:
    """An Energy-Transformer-style block (Hoover et al. 2023) on image patches: one layer
    ``"tokens"`` of shape ``(T, D)`` (``T`` patches of ``D = p·p·C`` pixels, see
    :func:`patchify`) with a per-token LayerNorm Lagrangian, so ``g_C = γ (x_C − x̄_C)/σ_C``,
    and two synapses on it, their weights drawn from ``key``::

        E = Σ_C [x_C·g_C − L(x_C)]
            − (1/β) Σ_h Σ_C log Σ_{B≠C} exp(β K_hB·Q_hC)        "attention" (K = W^K g, Q = W^Q g)
            − ½ Σ_C Σ_μ relu(ξ_μ·g_C)²                           "hopfield" (hopfield="relu")
              or − (1/β_h) Σ_C log Σ_μ exp(β_h ξ_μ·g_C)           (hopfield="softmax")
        τ dx_C/dt = −∂E/∂g_C = (attention + Hopfield currents) − x_C

    ``β`` (``beta``) defaults to ``1/sqrt(head_dim)``; ``num_memories`` to ``4 D``;
    ``hopfield_beta`` is ``β_h``, ``gamma`` the LayerNorm gain, ``tau`` the time constant. The
    synapse energies are those of docs/maths.md §2.3, so the energy is a Lyapunov function.
    Raises ``ValueError`` for a ``hopfield`` other than ``"relu"`` or ``"softmax"``."""
    t, d = _token_shape(image_shape, patch_size)
    num_memories = 4 * d if num_memories is None else num_memories
    hl = _hopfield_lagrangian(hopfield, hopfield_beta)
    k1, k2 = jax.random.split(key)
    return HAM(
        layers={"tokens": Layer((t, d), L.LayerNorm(gamma, axis=-1), tau=tau)},
        synapses={"attention": Attention(d, num_heads, head_dim, beta=beta, key=k1),
                  "hopfield": TokenMemory(d, num_memories, lagrangian=hl, key=k2)},
        edges={"attention": ("tokens",), "hopfield": ("tokens",)},
    )


def energy_transformer(image_shape: Sequence[int] = (8, 8, 1), patch_size: int = 2, *,
                       dim: int = 32, num_heads: int = 4, head_dim: int | None = None,
                       num_memories: int | None = None, beta: float | None = None,
                       hopfield: str = "relu", hopfield_beta: float = 1.0, gamma: float = 1.0,
                       tau: float = 1.0, key: PRNGKeyArray) -> HAM:
    """The Energy Transformer for masked patch completion, every part of it an energy of one HAM.

    Three layers: ``"patches"`` ``(T, P)`` (identity Lagrangian: the pixels of the ``T`` patches,
    ``P = p·p·C``, :func:`patchify`), ``"mask"`` ``(T, 1)`` (identity: 1 on a masked patch, 0 on
    a visible one; clamped by the task) and ``"tokens"`` ``(T, D)`` (per-token LayerNorm, as in
    :func:`energy_transformer_block`). The energy (docs/maths.md eqs. ET1–ET3)::

        E = Σ_A [x_A·g_A − L_A(x_A)]
            − Σ_C g_C · (W_e p_C + u m_C + e_C)       "encode" (W_e), "mask_token" (u),
                                                       "position" (e_C)
            − Σ_C b_C · p_C                            "decode_bias"
            + E_att(g) + E_mem(g)                      "attention" (ET1), "hopfield" (ET2)

    with ``g_C`` the token activations, ``p_C`` the patch activations and ``m_C`` the mask. So

        τ ẋ_C = W_e p_C + u m_C + e_C + (attention + Hopfield currents) − x_C     (tokens)
        τ ẋ_p,C = W_eᵀ g_C + b_C − x_p,C                                          (patches)

    The linear encoder of each patch is the current ``W_e p_C`` into its token; the decoder is the
    feedback ``W_eᵀ g_C + b_C`` into the patch, the same matrix transposed (symmetric weights are
    what make ``E`` a Lyapunov function). A masked patch is a free neuron of ``"patches"`` that
    relaxes to its decoded value while its token, driven by the mask token ``u`` instead of
    pixels, attends to the visible ones; the visible patches are frozen
    (:class:`hamjax.train.PatchCompletion`). Because the patch layer is part of the HAM, BPTT,
    implicit differentiation and equilibrium propagation all train the encoder, the decoder,
    the mask token and the positional embedding with the block.

    ``image_shape`` ``(H, W, C)`` and ``patch_size`` ``p`` give ``T`` and ``P`` (``ValueError``
    when ``p`` does not divide ``H`` and ``W``); ``dim`` is ``D``; ``head_dim`` defaults to
    ``dim // num_heads``; ``num_memories`` to ``4 D``; ``beta``, ``hopfield``, ``hopfield_beta``,
    ``gamma`` and ``tau`` (of every layer) as for :func:`energy_transformer_block`. Weights are
    drawn from ``key``; the mask token and the positional embedding with standard deviations
    0.02 and 0.1, the decoder bias at zero."""
    image_shape = tuple(image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}; pass "
                             "head_dim= or a dim divisible by the heads")
        head_dim = dim // num_heads
    t, p = _token_shape(image_shape, patch_size)
    hl = _hopfield_lagrangian(hopfield, hopfield_beta)
    ka, km, ke, ku, kp = jax.random.split(key, 5)
    num_memories = 4 * dim if num_memories is None else num_memories
    return HAM(
        layers={"patches": Layer((t, p), L.Identity(), tau=tau),
                "mask": Layer((t, 1), L.Identity(), tau=tau),
                "tokens": Layer((t, dim), L.LayerNorm(gamma, axis=-1), tau=tau)},
        synapses={"encode": TokenDense(p, dim, key=ke),
                  "mask_token": TokenDense(1, dim, scale=0.02, key=ku),
                  "position": Bias((t, dim), scale=0.1, key=kp),
                  "decode_bias": Bias((t, p)),
                  "attention": Attention(dim, num_heads, head_dim, beta=beta, key=ka),
                  "hopfield": TokenMemory(dim, num_memories, lagrangian=hl, key=km)},
        edges={"encode": ("patches", "tokens"), "mask_token": ("mask", "tokens"),
               "position": ("tokens",), "decode_bias": ("patches",),
               "attention": ("tokens",), "hopfield": ("tokens",)},
    )
