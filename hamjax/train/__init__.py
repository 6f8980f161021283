"""Training HAMs: tasks (what the relaxed state must do), gradient estimators (BPTT, implicit
differentiation, equilibrium propagation), checkpoints and the ``fit`` loop."""

from ._checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    verify_checkpoint,
)
from ._fit import (
    ConvergenceWarning,
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
    "BPTT",
    "CheckpointError",
    "Classification",
    "ConvergenceWarning",
    "Completion",
    "Denoising",
    "EqProp",
    "GradientEstimator",
    "Implicit",
    "Nudge",
    "PatchCompletion",
    "Storage",
    "Task",
    "check_task",
    "data_parallel",
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
