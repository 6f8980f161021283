"""Associative-memory capacity: binary memories with sign-update dynamics, retrieval experiments
on random ±1 patterns, and the theory to compare them with.

* binary memories (``σ ∈ {−1, +1}^N``, discrete updates): :func:`classical_hopfield`
  (:class:`BinaryHopfield`), :func:`dense_associative_memory`
  (:class:`DenseAssociativeMemory`), run with :func:`sign_update`;
* experiments: :func:`random_patterns`, :func:`flip_bits`, :func:`retrieve`, :func:`recovery`,
  :func:`capacity_curve`, and :func:`relax_retrieve` for continuous HAMs
  (:mod:`hamjax.models`);
* theory: the signal-to-noise bit-error rate and the capacities it implies.
"""

from ._binary import (
    BinaryHopfield,
    DenseAssociativeMemory,
    classical_hopfield,
    dense_associative_memory,
    hebbian_weight,
    sign_update,
)
from ._retrieval import (
    capacity_curve,
    flip_bits,
    flip_fraction,
    make_memory,
    one_step_errors,
    overlap,
    random_patterns,
    recovery,
    relax_retrieve,
    retrieve,
)
from ._theory import (
    double_factorial,
    hopfield_error_free_capacity,
    hopfield_small_error_capacity,
    polynomial_error_free_capacity,
    predicted_stable_fraction,
    snr_bit_error_rate,
)

__all__ = [
    "BinaryHopfield",
    "DenseAssociativeMemory",
    "classical_hopfield",
    "dense_associative_memory",
    "hebbian_weight",
    "sign_update",
    "random_patterns",
    "flip_bits",
    "flip_fraction",
    "overlap",
    "retrieve",
    "relax_retrieve",
    "one_step_errors",
    "recovery",
    "make_memory",
    "capacity_curve",
    "double_factorial",
    "hopfield_small_error_capacity",
    "hopfield_error_free_capacity",
    "polynomial_error_free_capacity",
    "snr_bit_error_rate",
    "predicted_stable_fraction",
]
