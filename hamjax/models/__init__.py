"""Ready-made HAMs.

* trainable models for images, used by ``hamjax train``: :func:`dense_classifier`,
  :func:`deep_dense_classifier`, :func:`conv_classifier` (image → conv feature map → average
  pooling → label, HAM paper §4.3), :func:`memory_model` (``K`` memories eliminated
  analytically) and :func:`dense_memory` (learned tanh features, with a clamped evidence
  layer), for denoising, completion and storage;
* continuous Hopfield networks: :func:`continuous_hopfield` (Tanh layer, Hebbian weights),
  :func:`modern_hopfield` (one :func:`fixed_point_step` is attention);
* the HAM paper's architectures :func:`ham_1hidden`, :func:`ham_2hidden`, :func:`ham_conv`, and
  :func:`deep_dense_ham`, :func:`conv_pool_ham`;
* :func:`energy_transformer_block` on image patches (:func:`patchify`, :func:`unpatchify`), and
  :func:`energy_transformer`, the block with its patch layer, embedding and mask token, for
  masked patch completion.

Constructors that draw weights take a PRNG key as the keyword argument ``key=``; those built from
given patterns or weights need none. The binary memories with sign updates are in
:mod:`hamjax.capacity`.
"""

from ._classifiers import (
    conv_classifier,
    deep_dense_classifier,
    dense_classifier,
    dense_memory,
    memory_model,
)
from ._energy_transformer import (
    energy_transformer,
    energy_transformer_block,
    patchify,
    unpatchify,
)
from ._hopfield import (
    continuous_hopfield,
    conv_pool_ham,
    deep_dense_ham,
    fixed_point_step,
    ham_1hidden,
    ham_2hidden,
    ham_conv,
    modern_hopfield,
)

__all__ = [
    "dense_classifier",
    "deep_dense_classifier",
    "conv_classifier",
    "memory_model",
    "dense_memory",
    "continuous_hopfield",
    "modern_hopfield",
    "fixed_point_step",
    "ham_1hidden",
    "ham_2hidden",
    "ham_conv",
    "deep_dense_ham",
    "conv_pool_ham",
    "patchify",
    "unpatchify",
    "energy_transformer_block",
    "energy_transformer",
]
