"""Hessians, Jacobians and extremal eigenvalues of a HAM at a state, all by autodiff.

A HAM with free layers ``A`` (clamped layers are constants and excluded) is, locally, the
Krotov–Hopfield system of docs/maths.md §1.3 written for a flat vector ``x`` (all free neurons,
layer after layer):

* ``g(x)`` the activations, ``H(x) = ∂g/∂x`` the Lagrangian Hessian, block-diagonal over layers;
* ``c(g) = −∂E_syn/∂g`` the currents from the synapses and ``C(g) = ∂c/∂g = −∂²E_syn/∂g²`` their
  coupling: the symmetric "W" of docs/maths.md §4 (constant for Dense/Conv2D/pooling, state
  dependent for a Memory synapse);
* ``b`` the layer biases ``I_A``, ``T = diag(τ)``, and the residual ``F(x) = c(g(x)) + b − x`` so
  that ``dx/dt = T⁻¹ F(x)``;
* ``∇E = −H F`` and, at a fixed point, ``∇²E = H − H C H`` (docs/maths.md eq. (DN6)); the
  Jacobian of the field is ``T⁻¹(C H − I)``.

Dense matrices are for small networks; every quantity also comes as a matrix-free
``lineax.FunctionLinearOperator`` (Hessian-vector products by ``jax.jvp``), and
:func:`extremal_eigenvalues` runs Lanczos on such operators for layers too large for ``eigh``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from .._ham import HAM, ClampedDynamics
from ..lagrangians import ElementwiseLagrangian

__all__ = [
    "FlatIndex",
    "FlatSystem",
    "lagrangian_hessian",
    "coupling",
    "energy_hessian",
    "jacobian",
    "hessian",
    "lanczos",
    "extremal_eigenvalues",
]

State = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class FlatIndex:
    """The map between dict states of some layers and one flat vector, and back from a flat
    position to ``(layer name, neuron index)``. Layers are laid out in ``names`` order, each
    flattened in C order; ``shapes`` are the layers' shapes. The flat vector has length
    ``N = Σ_A N_A`` (:attr:`size`): the stacked state ``x`` of docs/maths.md §1.3."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The layers' sizes ``N_A``, in ``names`` order."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each layer starts in the flat vector, in ``names`` order."""
        return tuple(int(o) for o in np.cumsum((0,) + self.sizes[:-1]))

    @property
    def size(self) -> int:
        """The flat vector's length ``N = Σ_A N_A``."""
        return sum(self.sizes)

    def slice(self, name: str) -> slice:
        """Positions of layer ``name`` in the flat vector: a ``slice`` of length ``N_A``.

        Raises ``ValueError`` for a name not indexed."""
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def flatten(self, state: Mapping[str, Array]) -> Float[Array, " n"]:
        """Concatenate ``state[name]`` (unbatched) for the indexed layers.

        ``state``: ``{name: array of the layer's shape}`` (other keys ignored); returns ``(N,)``."""
        return jnp.concatenate([jnp.reshape(state[n], (-1,)) for n in self.names])

    def unflatten(self, v: Float[Array, " n"]) -> State:
        """The dict state whose flattening is ``v``: the inverse of :meth:`flatten`.

        ``v``: ``(N,)``; returns ``{name: array of the layer's shape}``."""
        return {
            n: jnp.reshape(v[o : o + s], shape)
            for n, shape, o, s in zip(
                self.names, self.shapes, self.offsets, self.sizes, strict=True
            )
        }

    def locate(self, i: int) -> tuple[str, tuple[int, ...]]:
        """``(layer name, neuron index inside the layer's shape)`` of flat position ``i``.

        Raises ``IndexError`` unless ``0 ≤ i < N``."""
        if not 0 <= i < self.size:
            raise IndexError(f"flat index {i} out of range for {self.size} neurons")
        k = int(np.searchsorted(np.asarray(self.offsets), i, side="right")) - 1
        local = i - self.offsets[k]
        return self.names[k], tuple(int(j) for j in np.unravel_index(local, self.shapes[k]))

    def layer_of(self) -> np.ndarray:
        """For every flat position, the position of its layer in ``names``: an integer NumPy
        array of shape ``(N,)``."""
        return np.repeat(np.arange(len(self.names)), self.sizes)

    def labels(self) -> list[str]:
        """Human-readable names ``layer[i, j]`` of every flat position: a list of ``N``
        strings, e.g. to label the rows of a Hessian."""
        out = []
        for i in range(self.size):
            name, idx = self.locate(i)
            out.append(f"{name}[{', '.join(map(str, idx))}]")
        return out


def _single_sample(net: HAM, x: Mapping[str, Array]) -> None:
    batch = net.check_state(x)
    if batch != ():
        raise ValueError(
            f"analysis works on one sample; got a state with batch shape {batch}. "
            "Index one sample (x = {k: v[i] for k, v in x.items()}) or jax.vmap over samples."
        )


class FlatSystem(eqx.Module):
    """A HAM at a state, seen as the flat Krotov–Hopfield system ``dx/dt = T⁻¹(c(g(x)) + b − x)``
    on its free layers (clamped layers fixed at their values in ``x``; docs/maths.md §1.3).

    The currents are those of :class:`hamjax.ClampedDynamics` (``dynamics``), read through
    :class:`FlatIndex`: every method takes and returns flat vectors over ``index``, of length
    ``N`` (:attr:`n`). A PyTree (``eqx.Module``), so the module-level jitted helpers reuse their
    compilation for every state of the same network.

    ``FlatSystem(net, x, clamp=...)``: ``x`` one unbatched state
    (a batch raises ``ValueError``, as does clamping every layer). Fields: ``state`` (the state
    given, every layer), ``x`` (its free part flattened, ``(N,)``), ``tau`` (``τ`` of every
    free neuron, the diagonal of ``T``, ``(N,)``), ``bias`` (``b``, the layer biases, zero
    where a layer has none, ``(N,)``), ``clamp`` (the clamped layer names), ``index`` and
    ``dynamics``.
    """

    dynamics: ClampedDynamics
    state: dict[str, Array]
    x: Array
    tau: Array
    bias: Array
    clamp: tuple[str, ...] = eqx.field(static=True)
    index: FlatIndex = eqx.field(static=True)

    def __init__(self, net: HAM, x: Mapping[str, Array], *, clamp: Iterable[str] | str = ()):
        _single_sample(net, x)
        clamp = net.check_clamp(clamp)
        if len(clamp) == len(net.layers):
            raise ValueError("every layer is clamped: nothing to analyse")
        self.state = {n: jnp.asarray(x[n]) for n in net.layers}
        self.dynamics = net.dynamics(self.state, clamp=clamp)
        self.clamp = clamp
        free = self.dynamics.free
        self.index = FlatIndex(free, tuple(net.layers[n].shape for n in free))
        self.x = self.index.flatten(self.state)
        dtype = self.x.dtype
        self.tau = jnp.asarray(
            np.concatenate([np.full(net.layers[n].size, net.layers[n].tau) for n in free]), dtype)
        self.bias = jnp.concatenate(
            [
                jnp.zeros((net.layers[n].size,), dtype)
                if net.layers[n].bias is None
                else jnp.reshape(net.layers[n].bias, (-1,)).astype(dtype)
                for n in free
            ]
        )

    @property
    def net(self) -> HAM:
        """The :class:`hamjax.HAM` analysed."""
        return self.dynamics.net

    @property
    def free(self) -> tuple[str, ...]:
        """The free layer names, in the HAM's order (the order of :attr:`index`)."""
        return self.dynamics.free

    @property
    def clamped_state(self) -> State:
        """``{name: state}`` of the clamped layers, as given."""
        return {n: self.state[n] for n in self.clamp}

    # ------------------------------------------------------------ functions of flat vectors
    @property
    def n(self) -> int:
        """The number of free neurons ``N``, the length of every flat vector."""
        return self.index.size

    def full_state(self, z: Float[Array, " n"]) -> State:
        """The full dict state: free layers from ``z``, clamped ones as given.

        ``z``: ``(N,)``; returns ``{name: array of the layer's shape}`` for every layer."""
        return self.dynamics.full_state(self.index.unflatten(z))

    def activation(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """``g(x)`` of the free layers (docs/maths.md eq. 7), flat.

        ``z``: ``(N,)``; returns ``(N,)``."""
        return self.index.flatten(self.dynamics.activations(self.index.unflatten(z)))

    def lagrangian(self, z: Float[Array, " n"]) -> Array:
        """``L(x) = Σ_A L_A(x_A)`` over the free layers.

        ``z``: ``(N,)``; returns a scalar."""
        s = self.index.unflatten(z)
        return sum(self.net.layers[n].lagrangian_value(s[n]) for n in self.free)

    def synapse_energy(self, gz: Float[Array, " n"]) -> Array:
        """``E_syn(g) = Σ_s E_s(g)`` with the free activations ``gz`` and the clamped ones fixed
        (docs/maths.md §2.3). ``gz``: ``(N,)``; returns a scalar."""
        g = {**self.dynamics.clamped_activations, **self.index.unflatten(gz)}
        return sum((self.net.synapse_energy(s, g) for s, _ in self.net.edge_list), jnp.zeros(()))

    def currents(self, gz: Float[Array, " n"]) -> Float[Array, " n"]:
        """``c(g) = −∂E_syn/∂g``: the input currents of the free layers (bias excluded;
        docs/maths.md §1.3). ``gz``: ``(N,)``; returns ``(N,)``."""
        return self.index.flatten(self.dynamics.currents(self.index.unflatten(gz)))

    def drive(self, gz: Float[Array, " n"]) -> Float[Array, " n"]:
        """``c(g) + b``: where the activations ``g`` drive the free states (a steady state is
        ``x = c(g(x)) + b``). ``gz``: ``(N,)``; returns ``(N,)``."""
        return self.index.flatten(self.dynamics.drive(self.index.unflatten(gz)))

    def fixed_point_map(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """``x ← c(g(x)) + b``; its fixed points are the steady states (docs/maths.md §5.1).

        ``z``: ``(N,)``; returns ``(N,)``."""
        return self.index.flatten(self.dynamics.fixed_point_map(self.index.unflatten(z)))

    def residual(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """``F(x) = c(g(x)) + b − x`` (the field times τ); zero exactly at steady states
        (docs/maths.md eq. (T1)). ``z``: ``(N,)``; returns ``(N,)``."""
        return self.index.flatten(self.dynamics.residual(self.index.unflatten(z)))

    def field(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """``dx/dt = T⁻¹ F(x)`` (equal to ``net.vector_field`` on the free layers;
        docs/maths.md §1.3). ``z``: ``(N,)``; returns ``(N,)``."""
        return self.residual(z) / self.tau

    def energy(self, z: Float[Array, " n"]) -> Array:
        """``E(x)`` (docs/maths.md eq. 8 with biases) as a function of the free neurons.

        ``z``: ``(N,)``; returns a scalar."""
        return self.net.energy(self.full_state(z))

    def energies(self, zs: Float[Array, "m n"]) -> Float[Array, " m"]:
        """``E`` (docs/maths.md eq. 8) at each row of ``zs``.

        ``zs``: ``(m, N)``; returns ``(m,)``."""
        return jax.vmap(self.energy)(zs)

    # ---------------------------------------------------------------- linearisations
    def hessian_mv(self, z: Float[Array, " n"], v: Float[Array, " n"]) -> Float[Array, " n"]:
        """``H(x) v``: a Jacobian-vector product of the activation (no matrix is formed).

        ``z``, ``v``: ``(N,)``; returns ``(N,)``."""
        return jax.jvp(self.activation, (z,), (v,))[1]

    def dense_lagrangian_hessian(self) -> Array:
        """``H(x) = ∂g/∂x`` at the system's own state ``x`` as a dense block-diagonal matrix
        over the free layers, ``(N, N)`` (diagonal blocks in closed form for elementwise
        Lagrangians, docs/maths.md eq. 11)."""
        blocks = [_layer_hessian_dense(self.net.layers[n], self.state[n]) for n in self.free]
        return jax.scipy.linalg.block_diag(*blocks)

    def coupling_mv(self, gz: Float[Array, " n"], v: Float[Array, " n"]) -> Float[Array, " n"]:
        """``C(g) v = ∂c/∂g · v``, the coupling ``C = −∂²E_syn/∂g²`` (docs/maths.md §1.3)
        applied to ``v`` by a Jacobian-vector product. ``gz``, ``v``: ``(N,)``; returns ``(N,)``."""
        return jax.jvp(self.currents, (gz,), (v,))[1]


@eqx.filter_jit
def _jacfwd(sys: FlatSystem, method: str, z: Array) -> Array:
    return jax.jacfwd(getattr(sys, method))(z)


@eqx.filter_jit
def _hessian(sys: FlatSystem, method: str, z: Array) -> Array:
    return jax.hessian(getattr(sys, method))(z)


@eqx.filter_jit
def _call(sys: FlatSystem, method: str, *args):
    """``sys.method(*args)``, compiled once per network structure."""
    return getattr(sys, method)(*args)


@eqx.filter_jit
def _jvp(sys: FlatSystem, method: str, z: Array, v: Array) -> Array:
    return jax.jvp(getattr(sys, method), (z,), (v,))[1]


@eqx.filter_jit
def _hvp(sys: FlatSystem, method: str, z: Array, v: Array) -> Array:
    return jax.jvp(jax.grad(getattr(sys, method)), (z,), (v,))[1]


@eqx.filter_jit
def _fixed_point_hvp(sys: FlatSystem, v: Array) -> Array:
    gz = sys.activation(sys.x)
    hv = sys.hessian_mv(sys.x, v)
    return hv - sys.hessian_mv(sys.x, sys.coupling_mv(gz, hv))


def _operator(fn: Callable, n: int, dtype, symmetric: bool) -> lx.FunctionLinearOperator:
    tags = (lx.symmetric_tag,) if symmetric else ()
    return lx.FunctionLinearOperator(fn, jax.ShapeDtypeStruct((n,), dtype), tags=tags)


def _layer_hessian_dense(layer, x: Array) -> Array:
    n = layer.size
    lag = layer.lagrangian
    if isinstance(lag, ElementwiseLagrangian):
        # elementwise Lagrangians know f' in closed form: the Hessian is diagonal
        # (docs/maths.md eq. (11))
        return jnp.diag(jnp.reshape(lag.derivative(x), (n,)))
    flat = lambda v: jnp.reshape(layer.activation(jnp.reshape(v, layer.shape)), (n,))  # noqa: E731
    return jax.jacfwd(flat)(jnp.reshape(x, (n,)))


def lagrangian_hessian(
    net: HAM,
    x: Mapping[str, Array],
    layer: str | None = None,
    *,
    clamp: Iterable[str] | str = (),
    dense: bool = True,
):
    """The Lagrangian Hessian ``H = ∂²L/∂x∂x = ∂g/∂x`` at ``x`` (docs/maths.md §0, §2.1).

    With ``layer`` given: that layer's ``(N_A, N_A)`` Hessian (its state flattened in C order).
    Without: the block-diagonal Hessian over all free layers in :class:`FlatIndex` order.
    ``dense=False`` returns a symmetric ``lineax.FunctionLinearOperator`` whose ``mv`` is a
    Jacobian-vector product of the activation, for layers too large to hold ``N²`` numbers.
    ``x``: one unbatched state (else ``ValueError``); an unknown ``layer`` raises ``KeyError``.
    """
    _single_sample(net, x)
    if layer is not None:
        if layer not in net.layers:
            raise KeyError(f"unknown layer {layer!r}; layers are {sorted(net.layers)}")
        lay = net.layers[layer]
        xa = jnp.asarray(x[layer])
        if dense:
            return _layer_hessian_dense(lay, xa)
        n = lay.size

        def mv(v):
            _, hv = jax.jvp(lay.activation, (xa,), (jnp.reshape(v, lay.shape),))
            return jnp.reshape(hv, (n,))

        return _operator(mv, n, xa.dtype, symmetric=True)
    sys = FlatSystem(net, x, clamp=clamp)
    if dense:
        return _call(sys, "dense_lagrangian_hessian")
    return _operator(lambda v: _jvp(sys, "activation", sys.x, v), sys.n, sys.x.dtype, True)


def coupling(net: HAM, x: Mapping[str, Array], *, clamp: Iterable[str] | str = (), dense=True):
    """``C = ∂c/∂g = −∂²E_syn/∂g²`` at the activations of ``x``: the symmetric coupling ("W" of
    docs/maths.md §4) that the synapses of ``net`` imply between free neurons.

    ``x``: one unbatched state; returns an ``(N, N)`` matrix in :class:`FlatIndex` order, or a
    symmetric ``lineax`` operator with ``dense=False``."""
    sys = FlatSystem(net, x, clamp=clamp)
    gz = _call(sys, "activation", sys.x)
    if dense:
        return _jacfwd(sys, "currents", gz)
    return _operator(lambda v: _jvp(sys, "currents", gz, v), sys.n, sys.x.dtype, True)


def energy_hessian(
    net: HAM,
    x: Mapping[str, Array],
    *,
    clamp: Iterable[str] | str = (),
    dense: bool = True,
    at_fixed_point: bool = False,
):
    """``∇²E(x)`` with respect to the free states.

    By default the exact Hessian (autodiff: ``jax.hessian``, or Hessian-vector products
    ``jvp(grad E)`` when ``dense=False``). With ``at_fixed_point=True`` the closed form of
    docs/maths.md eq. (DN6), ``H − H C H``, which drops the term ``Σ_k ∂H/∂x · F_k`` that
    vanishes at a steady state (so it is exact only there).

    ``x``: one unbatched state; returns an ``(N, N)`` matrix in :class:`FlatIndex` order, or a
    symmetric ``lineax`` operator (Hessian-vector products) with ``dense=False``.
    """
    sys = FlatSystem(net, x, clamp=clamp)
    if at_fixed_point:
        if dense:
            h = _call(sys, "dense_lagrangian_hessian")
            c = _jacfwd(sys, "currents", _call(sys, "activation", sys.x))
            return h - h @ c @ h
        return _operator(lambda v: _fixed_point_hvp(sys, v), sys.n, sys.x.dtype, True)
    if dense:
        return _hessian(sys, "energy", sys.x)
    return _operator(lambda v: _hvp(sys, "energy", sys.x, v), sys.n, sys.x.dtype, True)


def jacobian(net: HAM, x: Mapping[str, Array], *, clamp: Iterable[str] | str = (), dense=True):
    """The Jacobian of the vector field on the free layers, ``∂ẋ/∂x = T⁻¹(C H − I)``
    (by autodiff of the field: exact for any synapse, e.g. ``C`` state-dependent for Memory;
    docs/maths.md §4.5). ``x``: one unbatched state; returns an ``(N, N)`` matrix, or a
    (non-symmetric) ``lineax`` operator with ``dense=False``."""
    sys = FlatSystem(net, x, clamp=clamp)
    if dense:
        return _jacfwd(sys, "field", sys.x)
    return _operator(lambda v: _jvp(sys, "field", sys.x, v), sys.n, sys.x.dtype, False)


def hessian(net: HAM, x: Mapping[str, Array], of: str = "energy", *, clamp=()) -> Array:
    """Dense Hessian for small nets: ``of="lagrangian"`` gives ``H`` (block-diagonal over free
    layers), ``of="energy"`` gives ``∇²E``; rows and columns in :class:`FlatIndex` order
    (``FlatSystem(net, x, clamp=clamp).index`` maps them back to layers and neurons).
    Shape ``(N, N)``; another ``of`` raises ``ValueError``."""
    if of == "lagrangian":
        return lagrangian_hessian(net, x, clamp=clamp)
    if of == "energy":
        return energy_hessian(net, x, clamp=clamp)
    raise ValueError(f"hessian(of=...) must be 'lagrangian' or 'energy', got {of!r}")


# ------------------------------------------------------------------------------- Lanczos
def _as_operator(op) -> lx.AbstractLinearOperator:
    if isinstance(op, lx.AbstractLinearOperator):
        return op
    op = jnp.asarray(op)
    if op.ndim != 2 or op.shape[0] != op.shape[1]:
        raise ValueError(f"expected a square matrix or a lineax operator, got shape {op.shape}")
    return lx.MatrixLinearOperator(op, lx.symmetric_tag)


def lanczos(op, steps: int, *, key=None) -> tuple[Array, Array]:
    """``steps`` Lanczos iterations with full reorthogonalisation on a symmetric matrix or
    ``lineax`` operator.

    Returns the Ritz values (ascending) and Ritz vectors (columns) of the Krylov space. With full
    reorthogonalisation the extremal Ritz values converge to the extremal eigenvalues without the
    ghost copies plain Lanczos makes; on breakdown (an invariant subspace found) the iteration
    restarts from a fresh random vector orthogonal to the basis, so ``steps = n`` is exact.
    ``op``: an ``(n, n)`` symmetric matrix (a non-square one raises ``ValueError``) or a
    symmetric operator on vectors of ``n`` entries; ``steps`` is capped at ``n``; ``key`` draws
    the start vector (default ``PRNGKey(0)``). Shapes: ``(steps,)`` and ``(n, steps)``.

    Written here rather than taken from a library: lineax has no eigensolver, and SciPy's
    ARPACK (``eigsh`` on a ``LinearOperator``) iterates on the host, one device round trip per
    product; this loop is compiled whole and runs where the operator lives.
    """
    op = _as_operator(op)
    n = math.prod(op.in_structure().shape)
    key = jax.random.PRNGKey(0) if key is None else key
    return _lanczos(op, int(min(steps, n)), key)


@eqx.filter_jit
def _lanczos(op: lx.AbstractLinearOperator, steps: int, key) -> tuple[Array, Array]:
    struct = op.in_structure()
    n, dtype = math.prod(struct.shape), struct.dtype
    k0, kr = jax.random.split(key)
    v0 = jax.random.normal(k0, (n,), dtype)
    basis = jnp.zeros((steps + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    eps = jnp.finfo(dtype).eps

    def orth(b, w):
        # twice is enough (Kahan–Parlett); rows not yet filled are zero and drop out
        w = w - b.T @ (b @ w)
        return w - b.T @ (b @ w)

    def body(j, carry):
        b, alpha, beta = carry
        v = b[j]
        w = op.mv(v)
        a = jnp.vdot(v, w)
        w = orth(b, w)
        nb = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.abs(a), 1.0)
        fresh = orth(b, jax.random.normal(jax.random.fold_in(kr, j), (n,), dtype))
        broke = nb <= 100 * eps * scale
        nxt = jnp.where(broke, fresh / jnp.linalg.norm(fresh), w / jnp.where(broke, 1.0, nb))
        b = b.at[j + 1].set(nxt)
        return b, alpha.at[j].set(a), beta.at[j].set(jnp.where(broke, 0.0, nb))

    basis, alpha, beta = jax.lax.fori_loop(
        0, steps, body, (basis, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype))
    )
    tri = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    vals, vecs = jnp.linalg.eigh(tri)
    return vals, basis[:steps].T @ vecs


def extremal_eigenvalues(op, num: int = 1, which: str = "largest", steps: int | None = None,
                         *, key=None) -> Array:
    """The ``num`` largest (``which="largest"``) or smallest eigenvalues of a symmetric matrix or
    ``lineax`` operator, matrix-free by Lanczos (:func:`lanczos`, ``steps`` defaulting to
    ``min(n, max(4·num, 40))``). Largest first for "largest", smallest first for "smallest".
    Returns shape ``(num,)``; another ``which`` raises ``ValueError``. ``key`` as for
    :func:`lanczos`."""
    n = math.prod(_as_operator(op).in_structure().shape)
    steps = min(n, max(4 * num, 40)) if steps is None else steps
    vals, _ = lanczos(op, steps, key=key)
    if which == "largest":
        return vals[::-1][:num]
    if which == "smallest":
        return vals[:num]
    raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
