"""An Energy-Transformer block (Hoover et al. 2023) on image patches, and the patch helpers.

The block is a HAM of one token layer with two synapse energies (docs/maths.md §2.3): energy
attention (:class:`hamjax.synapses.Attention`) and a token-wise Hopfield memory
(:class:`hamjax.synapses.TokenMemory`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .. import lagrangians as L
from .._ham import HAM
from .._layer import Layer
from ..synapses import Attention, TokenMemory


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
        synapses={"attention": Attention(d, num_heads, head_dim, beta=beta, key=k1),
                  "hopfield": TokenMemory(d, num_memories, lagrangian=hl, key=k2)},
        edges={"attention": ("tokens",), "hopfield": ("tokens",)},
    )
