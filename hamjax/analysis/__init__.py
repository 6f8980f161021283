"""Analysis of HAMs at a state: Hessians and Jacobians by autodiff, dead neurons, stability of
steady states (with dead neurons told apart from genuine flat directions), steady-state recovery
from energy minimisers, and Lyapunov diagnostics (MATH.md §4, Fanaskov & Oseledets 2025)."""

from .dead_neurons import DeadNeurons, dead_neurons, energy_along, is_flat, layer_spectrum
from .hessians import (
    FlatIndex,
    FlatSystem,
    coupling,
    energy_hessian,
    extremal_eigenvalues,
    flat_system,
    hessian,
    jacobian,
    lagrangian_hessian,
    lanczos,
)
from .lyapunov import LyapunovCheck, check_lyapunov, energy_rates, max_energy_increase, simulate
from .stability import (
    RecoveredState,
    StabilityReport,
    minimise_energy,
    recover_steady_state,
    stability,
)

__all__ = [
    "DeadNeurons",
    "FlatIndex",
    "FlatSystem",
    "LyapunovCheck",
    "RecoveredState",
    "StabilityReport",
    "check_lyapunov",
    "coupling",
    "dead_neurons",
    "energy_along",
    "energy_hessian",
    "energy_rates",
    "extremal_eigenvalues",
    "flat_system",
    "hessian",
    "is_flat",
    "jacobian",
    "lagrangian_hessian",
    "lanczos",
    "layer_spectrum",
    "max_energy_increase",
    "minimise_energy",
    "recover_steady_state",
    "simulate",
    "stability",
]
