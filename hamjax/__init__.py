"""hamjax: Hierarchical Associative Memories in JAX.

A HAM (:class:`HAM`) is a hypergraph of layers (:class:`Layer`: a shape, a Lagrangian ``L_A`` whose
gradient is the activation ``g_A = ∇L_A(x_A)``, a time constant ``τ_A``) and synapses (scalar
energies of the activations they connect, :mod:`hamjax.synapses`). It has one energy
(docs/maths.md eq. 8, generalised in §2.3)::

    E(x) = Σ_A [x_A·g_A − L_A(x_A) − I_A·g_A] + Σ_s E_s(g_{s_1}, g_{s_2}, ...)

and its dynamics ``τ_A ẋ_A = −∂E/∂g_A`` (eq. 5) follow by autodiff; the energy never rises along
them for convex Lagrangians (eq. 9). :func:`relax` runs the dynamics to a steady state with
diffrax (or straight to it by fixed-point, Anderson, Newton or energy minimisation) and returns a
:class:`Relaxation`. States are dicts ``{layer name: array of shape (*batch, *layer.shape)}``;
energies and norms come per sample, shape ``batch``.

Subpackages: :mod:`hamjax.lagrangians`, :mod:`hamjax.synapses`, :mod:`hamjax.models`,
:mod:`hamjax.train`, :mod:`hamjax.analysis`, :mod:`hamjax.capacity`, :mod:`hamjax.data`,
:mod:`hamjax.solvers`, :mod:`hamjax.sharding`.
"""

from . import (  # _compat first: a dependency fix the rest relies on
    _compat,  # noqa: F401
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
from ._convergence import (
    AbstractStop,
    FixedSteps,
    FixedTime,
    NonFiniteStateError,
    SteadyState,
    residual_norm,
)
from ._ham import HAM, ClampedDynamics, GraphError, StateError
from ._implicit import ImplicitSteadyState, UnconvergedGradientWarning
from ._layer import Layer
from ._ode import SaveAt
from ._relax import Relaxation, RelaxOptions, relax
from ._results import RESULTS

__version__ = "0.1.0"

__all__ = [
    "HAM",
    "AbstractStop",
    "ClampedDynamics",
    "GraphError",
    "Layer",
    "StateError",
    "FixedSteps",
    "FixedTime",
    "ImplicitSteadyState",
    "NonFiniteStateError",
    "RESULTS",
    "RelaxOptions",
    "Relaxation",
    "SaveAt",
    "SteadyState",
    "UnconvergedGradientWarning",
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
