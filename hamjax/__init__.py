"""hamjax: Hierarchical Associative Memories in JAX."""

from . import (
    analysis,
    capacity,
    data,
    lagrangians,
    models,
    sharding,
    solvers,
    synapses,
    train,
)
from ._convergence import FixedSteps, FixedTime, NonFiniteStateError, SteadyState, residual_norm
from ._ham import HAM, ClampedDynamics, GraphError, StateError
from ._implicit import ImplicitSteadyState
from ._layer import Layer
from ._relax import Relaxation, relax

__version__ = "0.1.0"

__all__ = [
    "HAM",
    "ClampedDynamics",
    "GraphError",
    "Layer",
    "StateError",
    "FixedSteps",
    "FixedTime",
    "ImplicitSteadyState",
    "NonFiniteStateError",
    "Relaxation",
    "SteadyState",
    "relax",
    "residual_norm",
    "analysis",
    "capacity",
    "data",
    "lagrangians",
    "models",
    "sharding",
    "solvers",
    "train",
    "synapses",
]
