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

import importlib
from typing import TYPE_CHECKING

# Names are imported on first use (PEP 562): `import hamjax` costs nothing until a name is read,
# so the command line answers --help and argument errors without importing JAX (seconds)
_SUBPACKAGES = ("analysis", "capacity", "data", "lagrangians", "models", "sharding", "solvers",
                "synapses", "train")
_EXPORTS = {
    "AbstractStop": "_convergence", "FixedSteps": "_convergence", "FixedTime": "_convergence",
    "NonFiniteStateError": "_convergence", "SteadyState": "_convergence",
    "residual_norm": "_convergence",
    "HAM": "_ham", "ClampedDynamics": "_ham", "GraphError": "_ham", "StateError": "_ham",
    "ImplicitSteadyState": "_implicit", "UnconvergedGradientError": "_implicit",
    "UnconvergedGradientWarning": "_implicit",
    "Layer": "_layer", "SaveAt": "_ode",
    "Relaxation": "_relax", "RelaxOptions": "_relax", "relax": "_relax",
    "RESULTS": "_results",
}

if TYPE_CHECKING:  # what type checkers and the documentation read
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
    from ._convergence import (
        AbstractStop,
        FixedSteps,
        FixedTime,
        NonFiniteStateError,
        SteadyState,
        residual_norm,
    )
    from ._ham import HAM, ClampedDynamics, GraphError, StateError
    from ._implicit import (
        ImplicitSteadyState,
        UnconvergedGradientError,
        UnconvergedGradientWarning,
    )
    from ._layer import Layer
    from ._ode import SaveAt
    from ._relax import Relaxation, RelaxOptions, relax
    from ._results import RESULTS


def __getattr__(name: str):
    """``hamjax.<name>``: a subpackage or a re-exported name, imported on first use and then
    kept as a module attribute. ``AttributeError`` for any other name."""
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes with every lazily imported name (``dir(hamjax)``)."""
    return sorted(set(globals()) | set(__all__))


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
    "UnconvergedGradientError",
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
