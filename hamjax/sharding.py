"""Data parallelism over devices and hosts, with JAX's own SPMD machinery.

A one-axis :class:`jax.sharding.Mesh` (axis ``"batch"``) over the devices; the batch is split along
its leading axis (``NamedSharding(mesh, P("batch"))``) and the model's parameters and optimiser
state are replicated (``P()``). ``jit`` propagates these shardings through a relaxation and its
gradient; XLA's SPMD partitioner inserts the one collective that data parallelism needs, the
all-reduce of the mean loss's gradient. Samples do not interact in a HAM, so a sharded run computes
the same numbers as a single-device one (up to the order of that final sum).

Several hosts: call :func:`initialize_distributed` first on every host (it wraps
``jax.distributed.initialize``); :func:`make_mesh` then spans every host's devices, and each host
runs the same program on the same global batches (``fit`` draws them from the same seed).

On a CPU, test with forced host devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
set before JAX is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["make_mesh", "shard_batch", "replicate", "initialize_distributed", "ShardingError"]


class ShardingError(ValueError):
    """A mesh that cannot be built, or a batch that cannot be split over it.

    Raised for too few devices, an empty device list, a mesh with more than one axis, a scalar
    to split, and a batch size not divisible by the device count. A ``ValueError``."""


def make_mesh(devices: int | Sequence | None = None, axis: str = "batch") -> Mesh:
    """A one-axis mesh named ``axis`` over ``devices``: all devices (``None``, every host's),
    the first ``N`` of ``jax.devices()`` (an int), or the given device objects in their order.

    The axis is automatic (``AxisType.Auto``): ``jit`` propagates the batch's sharding through
    the relaxation and its gradient. Devices that JAX picks are laid out by
    :func:`jax.make_mesh`, which orders them along their interconnect (a ring on a TPU torus,
    so that the gradient's all-reduce takes the short links).

    Raises :class:`ShardingError` for fewer than one device, an empty list, or more devices
    than JAX sees (with the ``XLA_FLAGS`` that forces CPU devices in the message)."""
    auto = (AxisType.Auto,)
    available = jax.devices()
    count = isinstance(devices, int | np.integer) and not isinstance(devices, bool)
    if devices is not None and not count:
        chosen = list(devices)
        if not chosen:
            raise ShardingError("need at least one device, got an empty list")
        return Mesh(np.asarray(chosen, dtype=object), (axis,), axis_types=auto)
    n = len(available) if devices is None else int(devices)
    if n < 1:
        raise ShardingError(f"need at least one device, got devices={n}")
    if n > len(available):
        raise ShardingError(
            f"asked for {n} devices but JAX sees {len(available)} ({_describe(available)}); "
            "on a CPU, force host devices with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} set before JAX is imported"
        )
    chosen = available[:n]
    if len({getattr(d, "slice_index", 0) for d in chosen}) > 1:
        # jax.make_mesh refuses devices of several slices (hosts joined by the data-centre
        # network, as GPU nodes are); data parallelism is correct in any device order
        return Mesh(np.asarray(chosen, dtype=object), (axis,), axis_types=auto)
    return jax.make_mesh((n,), (axis,), axis_types=auto, devices=chosen)


def _describe(devs) -> str:
    kinds = sorted({d.platform for d in devs})
    return ", ".join(kinds) or "none"


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ShardingError(f"expected a one-axis mesh, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


def _place(v, sharding: NamedSharding):
    if isinstance(v, jax.core.Tracer):
        return jax.lax.with_sharding_constraint(v, sharding)
    if sharding.is_fully_addressable:
        return jax.device_put(v, sharding)
    # several hosts: every host holds the same global value; each keeps its devices' slices
    host = np.asarray(v)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(tree, mesh: Mesh):
    """Split every array leaf of ``tree`` along its leading (batch) axis over ``mesh``.

    The batch size must be divisible by the number of devices (no silent padding: a padded sample
    would change the mean loss). Non-array leaves are left as they are; shapes are unchanged
    (``(batch, ...)`` globally, ``(batch / devices, ...)`` on each device). Raises
    :class:`ShardingError` for a scalar leaf, an indivisible batch or a mesh of several axes."""
    axis = _axis(mesh)
    n = mesh.size
    sharding = NamedSharding(mesh, P(axis))

    def put(v):
        if not eqx.is_array(v):
            return v
        if v.ndim == 0:
            raise ShardingError("cannot split a scalar over devices: the batch needs a leading "
                                "batch axis")
        if v.shape[0] % n:
            raise ShardingError(
                f"batch size {v.shape[0]} is not divisible by the {n} devices of the mesh; "
                f"use a batch size that is a multiple of {n}"
            )
        return _place(v, sharding)

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Put a full copy of every array leaf of ``tree`` (a model, an optimiser state) on every
    device of ``mesh`` (``PartitionSpec()``). Non-array leaves are left as they are; shapes are
    unchanged."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda v: _place(v, sharding) if eqx.is_array(v) else v, tree)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Join a multi-host run: ``jax.distributed.initialize`` with the same arguments.

    Call it once per host before any other JAX call. ``coordinator_address`` is
    ``"host:port"`` of process 0; ``num_processes`` the number of hosts and ``process_id`` this
    host's rank. On Cloud TPU, SLURM and Open MPI clusters all three are detected and may be left
    out. Afterwards ``jax.devices()`` lists every host's devices, ``make_mesh()`` spans them, and
    every host runs the same script (same data, same seed): each feeds its own devices' slice of
    every global batch.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )
