"""hamjax: Hierarchical Associative Memories in JAX."""

from . import (
    analysis,
    capacity,
    data,
    dead_neurons,
    lagrangians,
    presets,
    sharding,
    synapses,
    train,
)
from .ham import HAM, ClampedDynamics, GraphError, StateError
from .layers import Layer
from .relax import (
    FixedSteps,
    FixedTime,
    NonFiniteStateError,
    Relaxation,
    SteadyState,
    relax,
)

__version__ = "0.1.0"

__all__ = [
    "HAM",
    "ClampedDynamics",
    "GraphError",
    "Layer",
    "StateError",
    "FixedSteps",
    "FixedTime",
    "NonFiniteStateError",
    "Relaxation",
    "SteadyState",
    "relax",
    "analysis",
    "capacity",
    "data",
    "dead_neurons",
    "lagrangians",
    "presets",
    "sharding",
    "train",
    "synapses",
]
