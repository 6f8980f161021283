"""The HAM graph: named layers, named synapses, and the layers each synapse connects.

Energy (docs/maths.md eq. 8 with biases, generalised to hyperedges)::

    E(x) = Σ_A [x_A·g_A − L_A(x_A) − I_A·g_A] + Σ_s E_s(g_{s_1}, g_{s_2}, ...)

Dynamics: ``τ_A dx_A/dt = −∂E/∂g_A`` with states and activations independent, i.e.
``τ_A ẋ_A = c_A + I_A − x_A`` where ``c_A = −Σ_s ∂E_s/∂g_A`` is the current from the synapses
(eq. 5 for dense synapses). Then ``dE/dt = −Σ_A τ_A ẋ_Aᵀ H_A ẋ_A ≤ 0`` for PSD Lagrangian
Hessians ``H_A`` (eq. 9).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from . import _compat  # noqa: F401  (a dependency fix every relaxation relies on)
from ._axes import sum_trailing
from ._layer import Layer
from .synapses import Synapse

__all__ = ["HAM", "ClampedDynamics", "GraphError", "StateError"]

State = dict[str, Array]


class GraphError(ValueError):
    """The layers, synapses and edges of a HAM do not fit together.

    Raised when a :class:`HAM` is built (an edge naming an unknown layer or synapse, a synapse
    without an edge, a layer shape a synapse does not take) and for an unknown layer name in
    ``clamp``. A ``ValueError``."""


class StateError(ValueError):
    """A state (dict of arrays) does not fit the HAM's layers.

    Raised for a missing or unknown layer, an array that does not end in its layer's shape, a
    non-floating dtype, batch shapes that differ between layers, and by :func:`hamjax.relax`
    when every layer is clamped. A ``ValueError``."""


def _fmt_shape(shape) -> str:
    inner = ", ".join("*" if s is None else str(s) for s in shape)
    return "(" + inner + ("," if len(shape) == 1 else "") + ")"


def _shape_matches(expected, actual) -> bool:
    return len(expected) == len(actual) and all(
        e is None or e == a for e, a in zip(expected, actual, strict=True)
    )


class HAM(eqx.Module):
    """A Hierarchical Associative Memory: a hypergraph of layers (nodes) and synapses (edges).

    ``HAM(layers, synapses, edges)``: ``layers`` maps names to :class:`hamjax.Layer`,
    ``synapses`` names to :class:`hamjax.synapses.Synapse`, and ``edges[name]`` lists, in the
    order the synapse's ``energy`` takes them, the layers that the synapse ``synapses[name]``
    connects (a single name for a one-layer synapse). The graph is validated when it is built:
    every synapse has an edge and every edge a synapse, every named layer exists and has a shape
    the synapse takes (:meth:`hamjax.synapses.Synapse.expected_shapes`); a
    :class:`GraphError` says which does not.

    The energy (docs/maths.md eq. 8 with biases, generalised to hyperedges in §2.3) and the
    dynamics (eq. 5)::

        E(x) = Σ_A [x_A·g_A − L_A(x_A) − I_A·g_A] + Σ_s E_s(g_{s_1}, g_{s_2}, ...)
        τ_A ẋ_A = −∂E/∂g_A = c_A(g) + I_A − x_A,      c_A = −Σ_s ∂E_s/∂g_A

    States are dicts ``{layer name: array of shape (*batch, *layer.shape)}`` with the same batch
    shape in every layer; energies and rates are per sample, shape ``batch``.

    Stored as ``layer_names``/``layer_list`` and ``synapse_names``/``synapse_list`` (tuples in
    the order given) and ``edge_list`` (``(synapse name, layer names)`` pairs), so that the
    layer order survives ``jax.tree.map``; read them through :attr:`layers`, :attr:`synapses`
    and :attr:`edges`.
    """

    # Layers and synapses are kept as tuples in the order they were given, their names static:
    # a dict field would come back from every jax.tree.map with its keys sorted, and the layer
    # order (FlatIndex rows, init_state draws) would depend on whether the net was ever mapped.
    layer_names: tuple[str, ...] = eqx.field(static=True)
    layer_list: tuple[Layer, ...]
    synapse_names: tuple[str, ...] = eqx.field(static=True)
    synapse_list: tuple[Synapse, ...]
    edge_list: tuple[tuple[str, tuple[str, ...]], ...] = eqx.field(static=True)

    def __init__(
        self,
        layers: Mapping[str, Layer],
        synapses: Mapping[str, Synapse],
        edges: Mapping[str, Iterable[str] | str],
    ):
        layers, synapses = dict(layers), dict(synapses)
        if not layers:
            raise GraphError("a HAM needs at least one layer")
        for name, layer in layers.items():
            if not isinstance(layer, Layer):
                raise GraphError(
                    f"layer {name!r} must be a hamjax.Layer, got {type(layer).__name__}"
                )
        for name, syn in synapses.items():
            if not isinstance(syn, Synapse):
                raise GraphError(
                    f"synapse {name!r} must be a hamjax synapse, got {type(syn).__name__}"
                )
        edge_list = []
        for name, conn in dict(edges).items():
            conn = (conn,) if isinstance(conn, str) else tuple(conn)
            edge_list.append((name, conn))
        for name, _ in edge_list:
            if name not in synapses:
                raise GraphError(f"edge {name!r} has no synapse; synapses are {sorted(synapses)}")
        edge_names = {name for name, _ in edge_list}
        for name in synapses:
            if name not in edge_names:
                raise GraphError(
                    f"synapse {name!r} has no edge: say which layers it connects in edges[{name!r}]"
                )
        for name, conn in edge_list:
            syn = synapses[name]
            for lname in conn:
                if lname not in layers:
                    raise GraphError(
                        f"synapse {name!r} connects unknown layer {lname!r}; "
                        f"layers are {sorted(layers)}"
                    )
            shapes = tuple(layers[lname].shape for lname in conn)
            expected = syn.expected_shapes(shapes)
            if len(expected) != len(conn):
                raise GraphError(
                    f"synapse {name!r} ({type(syn).__name__}) connects {len(expected)} layer(s), "
                    f"but its edge names {len(conn)}: {conn}"
                )
            for i, (lname, exp, act) in enumerate(zip(conn, expected, shapes, strict=True)):
                if not _shape_matches(exp, act):
                    raise GraphError(
                        f"synapse {name!r} ({type(syn).__name__}) expects layer {lname!r} "
                        f"(argument {i}) to have shape {_fmt_shape(exp)}, "
                        f"but layer {lname!r} has shape {_fmt_shape(act)}"
                    )
        self.layer_names, self.layer_list = tuple(layers), tuple(layers.values())
        self.synapse_names, self.synapse_list = tuple(synapses), tuple(synapses.values())
        self.edge_list = tuple(edge_list)

    # ------------------------------------------------------------------ graph
    @property
    def layers(self) -> Mapping[str, Layer]:
        """``{name: Layer}`` in the order the layers were given: a read-only view (to replace
        layers, ``eqx.tree_at`` on ``net.layers[name]`` or on ``net.layer_list``)."""
        return MappingProxyType(dict(zip(self.layer_names, self.layer_list, strict=True)))

    @property
    def synapses(self) -> Mapping[str, Synapse]:
        """``{name: Synapse}`` in the order the synapses were given: a read-only view (replace
        one with ``eqx.tree_at`` on ``net.synapses[name]`` or on ``net.synapse_list``)."""
        return MappingProxyType(dict(zip(self.synapse_names, self.synapse_list, strict=True)))

    @property
    def edges(self) -> dict[str, tuple[str, ...]]:
        """``{synapse name: names of the layers it connects}``, in the order its energy takes
        them (a copy)."""
        return dict(self.edge_list)

    def check_clamp(self, clamp: Iterable[str] | str) -> tuple[str, ...]:
        """Normalise ``clamp`` (one layer name or several) to a tuple of layer names, repeats
        dropped; raises :class:`GraphError` for an unknown name."""
        clamp = (clamp,) if isinstance(clamp, str) else tuple(dict.fromkeys(clamp))
        for name in clamp:
            if name not in self.layers:
                raise GraphError(
                    f"cannot clamp unknown layer {name!r}; layers are {sorted(self.layers)}"
                )
        return clamp

    def check_state(self, x: Mapping[str, Array], what: str = "state") -> tuple[int, ...]:
        """Check that ``x`` has one floating array per layer, each ending in the layer's shape,
        all with the same leading batch shape; return that batch shape.

        ``what`` names the state in the messages. Raises :class:`StateError` for a non-dict, a
        missing or unknown layer, a wrong trailing shape, a non-floating dtype or differing
        batch shapes."""
        if not isinstance(x, Mapping):
            raise StateError(
                f"{what} must be a dict of arrays keyed by layer name, got {type(x).__name__}"
            )
        missing = [n for n in self.layers if n not in x]
        if missing:
            raise StateError(f"{what} is missing layer(s) {missing}")
        extra = [n for n in x if n not in self.layers]
        if extra:
            raise StateError(
                f"{what} has unknown layer(s) {extra}; layers are {sorted(self.layers)}"
            )
        batch = None
        for name, layer in self.layers.items():
            v = x[name]
            shape = tuple(jnp.shape(v))
            if len(shape) < layer.ndim or shape[len(shape) - layer.ndim :] != layer.shape:
                raise StateError(
                    f"{what}[{name!r}] has shape {shape}, "
                    f"expected (*batch, {', '.join(map(str, layer.shape))})"
                )
            dtype = jnp.result_type(v)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise StateError(
                    f"{what}[{name!r}] must be a floating-point array, got dtype {dtype}"
                )
            b = shape[: len(shape) - layer.ndim]
            if batch is None:
                batch = b
            elif b != batch:
                raise StateError(
                    f"{what}[{name!r}] has batch shape {b}, "
                    f"but other layers have batch shape {batch}"
                )
        return batch

    # ----------------------------------------------------------------- states
    def init_state(self, batch: tuple[int, ...] | int = (), *, scale: float = 0.01,
                   key=None) -> State:
        """Zero states (or small Gaussian ones, standard deviation ``scale``, when a PRNG key
        ``key`` is given) with leading batch shape ``batch`` (an int or a tuple; ``()`` for one
        sample): ``{name: (*batch, *layer.shape)}``."""
        batch = (batch,) if isinstance(batch, int) else tuple(batch)
        if key is None:
            return {n: jnp.zeros(batch + layer.shape) for n, layer in self.layers.items()}
        keys = jax.random.split(key, len(self.layers))
        return {
            n: scale * jax.random.normal(k, batch + layer.shape)
            for k, (n, layer) in zip(keys, self.layers.items(), strict=True)
        }

    def activations(self, x: Mapping[str, Array]) -> State:
        """The activations ``g_A = ∇L_A(x_A)`` of every layer (docs/maths.md eq. 7).

        ``x``: a state, ``{name: (*batch, *shape)}``; returns a dict of the same shapes."""
        return {n: layer.activation(x[n]) for n, layer in self.layers.items()}

    # ----------------------------------------------------------------- energy
    def synapse_energy(self, name: str, g: Mapping[str, Array]) -> Array:
        """The energy ``E_s`` of synapse ``name`` per sample, given the activations ``g`` of (at
        least) the layers it connects (docs/maths.md §2.3).

        ``g``: ``{layer name: (*batch, *shape)}``; returns shape ``batch``."""
        return self.synapses[name].energy(*(g[lname] for lname in self.edges[name]))

    def energy_terms(self, x: Mapping[str, Array]) -> dict[str, dict[str, Array]]:
        """The terms of :meth:`energy`, per sample: ``{"layers": {name: E_A}, "synapses":
        {name: E_s}}`` with ``E_A = x_A·g_A − L_A(x_A) − I_A·g_A`` the Legendre term with bias
        and ``E_s`` the synapse energies (docs/maths.md eq. 8, §2.3).

        ``x``: a state (checked, :class:`StateError`); every term has shape ``batch``."""
        self.check_state(x)
        g = self.activations(x)
        return {
            "layers": {n: layer.energy(x[n], g[n]) for n, layer in self.layers.items()},
            "synapses": {name: self.synapse_energy(name, g) for name, _ in self.edge_list},
        }

    def energy(self, x: Mapping[str, Array]) -> Array:
        """Total energy per sample (docs/maths.md eq. 8 with biases; §2.3 for any synapses)::

            E(x) = Σ_A [x_A·g_A − L_A(x_A) − I_A·g_A] + Σ_s E_s(g)

        ``x``: a state ``{name: (*batch, *shape)}`` (checked, :class:`StateError`); returns shape
        ``batch``, a scalar for an unbatched state."""
        terms = self.energy_terms(x)
        return sum(terms["layers"].values()) + sum(terms["synapses"].values(), 0.0)

    # --------------------------------------------------------------- dynamics
    def dynamics(self, x: Mapping[str, Array], *, clamp: Iterable[str] | str = (),
                 freeze: Mapping[str, Array] | None = None) -> ClampedDynamics:
        """The vector field on the free (unclamped) layers, with the layers named in ``clamp``
        held fixed at their values in ``x``, and the neurons of free layers marked ``True`` in
        ``freeze`` (``{layer: bool mask}``, broadcast against the layer's state) held at theirs:
        a :class:`ClampedDynamics`.

        Currents that the clamped layers send through multilinear synapses are computed here,
        once; calling the result only recomputes what the free layers change. Raises
        :class:`StateError` for a bad state or a ``freeze`` mask of a layer that is not free or
        of a shape that does not broadcast, and :class:`GraphError` for an unknown clamp."""
        self.check_state(x)
        return ClampedDynamics(self, x, clamp=self.check_clamp(clamp), freeze=freeze)

    def vector_field(self, x: Mapping[str, Array], *, clamp: Iterable[str] | str = ()) -> State:
        """The dynamics ``dx_A/dt = (−∂E/∂g_A)/τ_A = (c_A + I_A − x_A)/τ_A`` for every layer
        (docs/maths.md eq. 5, §2.3); zero on the layers in ``clamp``.

        ``x``: a state ``{name: (*batch, *shape)}``; returns a dict of the same shapes."""
        dyn = self.dynamics(x, clamp=clamp)
        dx = dyn(dyn.free_state(x))
        return {n: dx[n] if n in dx else jnp.zeros_like(x[n]) for n in self.layers}

    def energy_rate(self, x: Mapping[str, Array], *, clamp: Iterable[str] | str = ()) -> Array:
        """``dE/dt = −Σ_A τ_A ẋ_Aᵀ H_A ẋ_A`` per sample (docs/maths.md eq. 9), with ``H_A ẋ_A`` a
        Jacobian-vector product of the activation (no Hessian is formed).

        ``x``: a state ``{name: (*batch, *shape)}``, the layers in ``clamp`` held fixed (they
        contribute nothing); returns shape ``batch``. Non-positive for convex Lagrangians."""
        dx = self.vector_field(x, clamp=clamp)
        rate = 0.0
        for n, layer in self.layers.items():
            _, h_dx = jax.jvp(layer.activation, (x[n],), (dx[n],))
            rate = rate - layer.tau * sum_trailing(dx[n] * h_dx, layer.ndim)
        return rate


def _frozen_masks(free, x, freeze) -> dict[str, Array]:
    """``freeze`` (``{layer: bool mask}``) checked against the free layers and broadcast to
    their states in ``x``."""
    masks = {}
    for name, m in freeze.items():
        if name not in free:
            raise StateError(f"cannot freeze neurons of {name!r}: not a free layer of this "
                             f"relaxation (free layers: {list(free)})")
        m = jnp.asarray(m, dtype=bool)
        try:
            masks[name] = jnp.broadcast_to(m, jnp.shape(x[name]))
        except ValueError:
            raise StateError(f"freeze[{name!r}] has shape {m.shape}, which does not "
                             f"broadcast to the layer's state {jnp.shape(x[name])}") from None
    return masks


class ClampedDynamics(eqx.Module):
    """``τ_A ẋ_A = c_A + I_A − x_A`` on the free layers of a HAM whose clamped layers are fixed
    (docs/maths.md eq. 5, §2.3): the one implementation of a HAM's currents, used by
    :func:`hamjax.relax`, by :class:`hamjax.analysis.FlatSystem` and the post-activation systems.
    Built by :meth:`HAM.dynamics`; calling it, ``dyn(x_free)``, gives ``ẋ_A``.

    The currents ``c_A = −Σ_s ∂E_s/∂g_A`` split into constant ones (from multilinear synapses
    whose other layers are all clamped, computed once at construction) and dynamic ones (autodiff
    of the remaining synapse energies with respect to the free activations only). States are
    dicts over the free layers, ``(*batch, *shape)`` each.

    Fields: ``net`` (the :class:`HAM`), ``free`` (the free layer names, in the HAM's order),
    ``clamped_state`` and ``clamped_activations`` (the clamped layers' states and activations),
    ``constant_currents`` (``{free layer: current}`` from the multilinear synapses whose other
    layers are clamped), ``dynamic_synapses`` (the names of the synapses differentiated at
    every call) and ``frozen`` (``{free layer: bool mask of its state}``: neurons held where
    they start, ``ẋ = 0`` and residual 0 there; clamping at the grain of single neurons, for
    masked completion; ``freeze`` of :meth:`HAM.dynamics`)."""

    net: HAM
    clamped_state: dict[str, Array]
    clamped_activations: dict[str, Array]
    constant_currents: dict[str, Array]
    frozen: dict[str, Array]
    free: tuple[str, ...] = eqx.field(static=True)
    dynamic_synapses: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, net: HAM, x: Mapping[str, Array], *, clamp: tuple[str, ...],
                 freeze: Mapping[str, Array] | None = None):
        self.net = net
        self.free = tuple(n for n in net.layers if n not in clamp)
        self.frozen = _frozen_masks(self.free, x, freeze or {})
        self.clamped_state = {n: x[n] for n in clamp}
        g_clamped = {n: net.layers[n].activation(x[n]) for n in clamp}
        self.clamped_activations = g_clamped
        const: dict[str, Array] = {}
        dynamic = []
        for name, conn in net.edge_list:
            free_in = [lname for lname in conn if lname in self.free]
            if not free_in:
                continue  # a constant energy: no current into any free layer
            syn = net.synapses[name]
            if syn.multilinear and len(free_in) == 1 and conn.count(free_in[0]) == 1:
                f = free_in[0]
                probe = jnp.zeros_like(x[f])

                def e(gf, syn=syn, conn=conn, f=f):
                    args = (gf if lname == f else g_clamped[lname] for lname in conn)
                    return jnp.sum(syn.energy(*args))

                current = -jax.grad(e)(probe)
                const[f] = const[f] + current if f in const else current
            else:
                dynamic.append(name)
        self.constant_currents = const
        self.dynamic_synapses = tuple(dynamic)

    def _with_frozen(self, masks: Mapping[str, Array]) -> ClampedDynamics:
        """These dynamics with the neurons marked ``True`` in ``masks`` (``{free layer: bool
        mask of its state's full shape}``) held too, besides those already held."""
        frozen = {**self.frozen, **{n: self.frozen[n] | m if n in self.frozen else m
                                    for n, m in masks.items()}}
        return eqx.tree_at(lambda d: d.frozen, self, frozen)

    def _hold(self, tree: Mapping[str, Array]) -> State:
        """``tree`` with the frozen neurons' entries set to 0."""
        return {n: jnp.where(self.frozen[n], 0.0, v) if n in self.frozen else v
                for n, v in tree.items()}

    def free_state(self, x: Mapping[str, Array]) -> State:
        """The free layers of a full state ``x``: ``{name: x[name]}`` for the names in
        :attr:`free` (shapes unchanged)."""
        return {n: x[n] for n in self.free}

    def full_state(self, x_free: Mapping[str, Array]) -> State:
        """Free states joined with the clamped ones, in the HAM's layer order (the inverse of
        :meth:`free_state`); shapes unchanged."""
        return {n: x_free[n] if n in x_free else self.clamped_state[n] for n in self.net.layers}

    def activations(self, x_free: Mapping[str, Array]) -> State:
        """The activations ``g_A = ∇L_A(x_A)`` of the free layers (docs/maths.md eq. 7).

        ``x_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        return {n: self.net.layers[n].activation(x_free[n]) for n in self.free}

    def currents(self, g_free: Mapping[str, Array]) -> State:
        """The currents ``c_A(g) = −Σ_s ∂E_s/∂g_A`` into every free layer (bias excluded;
        docs/maths.md §2.3), given the free layers' activations ``g_free`` (the clamped ones are
        fixed). For dense synapses this is the bottom-up plus top-down current of eq. (5).

        ``g_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        net = self.net
        out = {n: self.constant_currents.get(n) for n in self.free}
        if self.dynamic_synapses:
            touched = sorted(
                {ln for s in self.dynamic_synapses for ln in net.edges[s] if ln in g_free}
            )

            def e(gt):
                # clamped activations are constants of the relaxation, computed once in __init__
                g = {**self.clamped_activations, **g_free, **gt}
                return sum(jnp.sum(net.synapse_energy(s, g)) for s in self.dynamic_synapses)

            # samples do not interact, so the gradient of the summed energy is per sample exact
            grads = jax.grad(e)({n: g_free[n] for n in touched})
            for n, gr in grads.items():
                out[n] = -gr if out[n] is None else out[n] - gr
        return {n: jnp.zeros_like(g_free[n]) if c is None else c for n, c in out.items()}

    def drive(self, g_free: Mapping[str, Array]) -> State:
        """``c_A(g) + I_A``: where the activations ``g`` drive each free layer's state; a steady
        state is ``x_A = drive_A(g(x))`` (docs/maths.md eq. (T1)).

        ``g_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        c = self.currents(g_free)
        return {n: c[n] if self.net.layers[n].bias is None else c[n] + self.net.layers[n].bias
                for n in self.free}

    def fixed_point_map(self, x_free: Mapping[str, Array]) -> State:
        """``x_A ← c_A(g(x)) + I_A``: the synchronous update whose fixed points are the steady
        states (an Euler step of the dynamics with ``dt = τ_A``; docs/maths.md §5.1).

        ``x_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        return self.drive(self.activations(x_free))

    def residual(self, x_free: Mapping[str, Array]) -> State:
        """``F_A(x) = τ_A ẋ_A = c_A + I_A − x_A``: how far each free layer is from its
        steady-state equation (docs/maths.md eq. (T1); independent of the time constants).

        ``x_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        target = self.fixed_point_map(x_free)
        return self._hold({n: target[n] - x_free[n] for n in self.free})

    def __call__(self, x_free: Mapping[str, Array]) -> State:
        """The vector field ``ẋ_A = F_A(x) / τ_A = (c_A + I_A − x_A) / τ_A`` on the free layers
        (docs/maths.md eq. 5).

        ``x_free``: ``{free name: (*batch, *shape)}``; returns a dict of the same shapes."""
        f = self.residual(x_free)
        return {n: f[n] / self.net.layers[n].tau if self.net.layers[n].tau != 1.0 else f[n]
                for n in self.free}
