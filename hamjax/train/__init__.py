"""Training HAMs: tasks (what the relaxed state must do), gradient estimators (BPTT, implicit
differentiation, equilibrium propagation), checkpoints and the ``fit`` loop."""

from ._checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    verify_checkpoint,
)
from ._defaults import (
    BATCH_SIZE,
    LEARNING_RATE,
    cosine_adam,
    default_epochs,
    default_gradient,
)
from ._fit import (
    ConvergenceWarning,
    check_classes,
    check_task,
    data_parallel,
    default_task,
    evaluate,
    fit,
    prepare_rows,
    sample_rng,
    train_step,
)
from ._gradients import BPTT, EqProp, GradientEstimator, Implicit, Nudge
from ._tasks import Classification, Completion, Denoising, PatchCompletion, Storage, Task

__all__ = [
    "BATCH_SIZE",
    "BPTT",
    "CheckpointError",
    "Classification",
    "ConvergenceWarning",
    "Completion",
    "Denoising",
    "EqProp",
    "GradientEstimator",
    "Implicit",
    "LEARNING_RATE",
    "Nudge",
    "PatchCompletion",
    "Storage",
    "Task",
    "check_classes",
    "check_task",
    "cosine_adam",
    "data_parallel",
    "default_epochs",
    "default_gradient",
    "default_task",
    "evaluate",
    "fit",
    "load_checkpoint",
    "prepare_rows",
    "read_checkpoint_meta",
    "sample_rng",
    "save_checkpoint",
    "train_step",
    "verify_checkpoint",
]
