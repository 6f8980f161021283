"""Analysis of HAMs at a state: Hessians and Jacobians by autodiff, dead neurons, stability of
steady states (with dead neurons told apart from genuine flat directions), steady-state recovery
from energy minimisers, and Lyapunov diagnostics (docs/maths.md §4, Fanaskov & Oseledets 2025);
and of an associative memory as a whole: the basins of attraction of its memories."""

from ._basins import Basins, basins, half_radius
from ._dead_neurons import DeadNeurons, dead_neurons, energy_along, is_flat, layer_spectrum
from ._hessians import (
    FlatIndex,
    FlatSystem,
    coupling,
    energy_hessian,
    extremal_eigenvalues,
    hessian,
    jacobian,
    lagrangian_hessian,
    lanczos,
)
from ._landscape import Slice, energy_slice
from ._lyapunov import LyapunovCheck, check_lyapunov, max_energy_increase, simulate
from ._post_activation import (
    HAMPostActivation,
    MatrixPostActivation,
    PostActivationDynamics,
    derivative_bound,
    layered_weights,
    numerical_abscissa,
    post_activation,
    residual_energy,
    residual_energy_abscissa,
    spectral_rescale,
)
from ._stability import (
    RecoveredState,
    StabilityReport,
    minimise_energy,
    recover_steady_state,
    stability,
)

__all__ = [
    "Basins",
    "DeadNeurons",
    "FlatIndex",
    "FlatSystem",
    "HAMPostActivation",
    "LyapunovCheck",
    "MatrixPostActivation",
    "PostActivationDynamics",
    "RecoveredState",
    "Slice",
    "StabilityReport",
    "basins",
    "check_lyapunov",
    "coupling",
    "dead_neurons",
    "half_radius",
    "derivative_bound",
    "energy_along",
    "energy_hessian",
    "energy_slice",
    "extremal_eigenvalues",
    "hessian",
    "is_flat",
    "jacobian",
    "lagrangian_hessian",
    "lanczos",
    "layer_spectrum",
    "layered_weights",
    "max_energy_increase",
    "minimise_energy",
    "numerical_abscissa",
    "post_activation",
    "recover_steady_state",
    "residual_energy",
    "residual_energy_abscissa",
    "simulate",
    "spectral_rescale",
    "stability",
]
