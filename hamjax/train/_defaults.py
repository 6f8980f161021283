"""The defaults that ``hj.train.fit`` and ``hamjax train`` share: one place for each.

By default a HAM is trained at its attractor: the gradient is implicit differentiation at the
steady state (:class:`~hamjax.train.Implicit`), so the answer the trained network gives is read
at a fixed point, not from a transient of its dynamics. The optimiser is Adam with the learning
rate on a cosine from ``LEARNING_RATE`` to 0 over the run, batches of ``BATCH_SIZE``.
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

from ._gradients import GradientEstimator, Implicit
from ._tasks import Classification, Task

__all__ = ["BATCH_SIZE", "LEARNING_RATE", "default_epochs", "default_gradient", "cosine_adam"]

BATCH_SIZE = 32
"""Training images per optimiser step."""
LEARNING_RATE = 1e-3
"""Adam's peak learning rate, at the start of the cosine."""
CLASSIFICATION_EPOCHS = 30
OTHER_EPOCHS = 10


def default_epochs(task: Task) -> int:
    """Passes over the training set for ``task``: 30 for classification
    (:class:`~hamjax.train.Classification`), 10 for the image tasks."""
    return CLASSIFICATION_EPOCHS if isinstance(task, Classification) else OTHER_EPOCHS


def default_gradient() -> GradientEstimator:
    """``Implicit()``: implicit differentiation at the steady state (residual 1e-4), so that
    the network is trained, and its answer read, at a fixed point of its dynamics."""
    return Implicit()


def cosine_adam(learning_rate: float, steps_per_epoch: int, epochs: int | Sequence[int],
                weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam (AdamW when ``weight_decay`` > 0, decoupled, per unit learning rate) with the
    learning rate on a cosine from ``learning_rate`` to 0 over ``epochs`` epochs of
    ``steps_per_epoch`` steps: the last epochs settle instead of wandering.

    ``epochs`` may be a list of increasing epoch counts ``[e₁, e₂, …]``: one cosine over
    ``[0, e₁)``, a second over ``[e₁, e₂)``, … (a run extended by resuming keeps the schedule of
    its finished part exactly and decays again over the new epochs)."""
    ends = [int(epochs)] if isinstance(epochs, int) else [int(e) for e in epochs]
    if not ends or any(b <= a for a, b in zip([0, *ends[:-1]], ends, strict=True)):
        raise ValueError(f"epochs must be a positive count or increasing counts, got {epochs}")
    per_epoch = max(1, int(steps_per_epoch))
    starts = [0, *ends[:-1]]
    parts = [optax.cosine_decay_schedule(learning_rate, max(1, per_epoch * (b - a)))
             for a, b in zip(starts, ends, strict=True)]
    schedule = parts[0] if len(parts) == 1 else optax.join_schedules(
        parts, [per_epoch * e for e in ends[:-1]])
    if weight_decay:
        return optax.adamw(schedule, weight_decay=weight_decay)
    return optax.adam(schedule)
