"""Data parallelism over devices and hosts, with JAX's own SPMD machinery.

A one-axis :class:`jax.sharding.Mesh` (axis ``"batch"``) over the devices; the batch is split along
its leading axis (``NamedSharding(mesh, P("batch"))``) and the model's parameters and optimiser
state are replicated (``P()``). A training step (:func:`hamjax.train.train_step` with ``mesh``)
runs under ``jax.shard_map``: each device relaxes and differentiates its own samples, and one
all-reduce of one buffer per step averages the losses and gradients
(:func:`hamjax.train.data_parallel`); left to XLA's partitioner, that sum would sit inside the
backward loop, once per solver step. :func:`hamjax.relax` with ``mesh`` lets ``jit`` propagate
the shardings instead. Samples do not interact in a HAM, so a sharded run computes the same
numbers as a single-device one (up to the order of that final sum).

Several processes (one per host, or several on one machine): every process calls
:func:`initialize_distributed` first (it wraps ``jax.distributed.initialize`` with a bounded wait
and a check that all processes agree); :func:`make_mesh` then spans every process's devices. Each
process prepares only its own rows of every global batch (:func:`local_rows`) and
:func:`global_batch` joins them into one array split over the mesh, so no process holds the whole
batch; parameters are replicated, and the step's one all-reduce spans the processes as it spans
devices. :func:`is_main_process` picks the process that prints and writes files,
:func:`barrier` waits for every process, and :func:`local_replica` turns a replicated result
back into an ordinary array of this process. On CPUs the processes talk through gloo
(``jax_cpu_collectives_implementation``), so a multi-process run can be tried on one machine over
127.0.0.1 (``python -m hamjax.launch``).

On a CPU, test with forced host devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
set before JAX is imported.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["make_mesh", "shard_batch", "replicate", "initialize_distributed", "ShardingError",
           "DistributedError", "local_rows", "global_batch", "local_replica", "is_main_process",
           "barrier", "gather_text", "lost_peer"]


class ShardingError(ValueError):
    """A mesh that cannot be built, or a batch that cannot be split over it.

    Raised for too few devices, an empty device list, a mesh with more than one axis, a scalar
    to split, and a batch size not divisible by the device count. A ``ValueError``."""


class DistributedError(RuntimeError):
    """A multi-process run that cannot start: arguments that do not describe one process of a
    run (a rank outside ``[0, num_processes)``, a coordinator address that is not
    ``host:port``, some but not all of the three given), a second initialisation, or processes
    that disagree on the number of processes. A ``RuntimeError``."""


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
    if sharding.is_fully_addressable or (isinstance(v, jax.Array)
                                         and not v.is_fully_addressable):
        return jax.device_put(v, sharding)  # a global array already: re-laid out by JAX
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


def local_rows(mesh: Mesh | None, n: int) -> np.ndarray:
    """The rows of an ``n``-sample global batch that this process's devices hold when the batch
    is split over ``mesh`` (all ``n`` rows without a mesh, or when every device is local):
    ascending ``int64`` indices into ``[0, n)``.

    A process prepares only these rows of each batch and passes them to :func:`global_batch`.
    Raises :class:`ShardingError` when ``n`` is not divisible by the mesh's device count."""
    if mesh is None:
        return np.arange(n)
    axis = _axis(mesh)
    if n % mesh.size:
        raise ShardingError(f"batch size {n} is not divisible by the {mesh.size} devices of the "
                            f"mesh; use a multiple of {mesh.size}")
    spans = NamedSharding(mesh, P(axis)).addressable_devices_indices_map((n,)).values()
    rows = set()
    for idx in spans:
        rows.update(range(*idx[0].indices(n)))
    return np.array(sorted(rows), dtype=np.int64)


def global_batch(local, mesh: Mesh | None, rows, n: int):
    """One global batch of ``n`` samples from this process's ``rows`` of it (:func:`local_rows`):
    every array leaf of ``local`` holds those rows, in that order, ``(len(rows), ...)``; each
    becomes a ``(n, ...)`` array split along its first axis over ``mesh``, every device taking
    its slice from the process that holds it. Without a mesh the leaves become ordinary JAX
    arrays (``rows`` must then be all ``n``). Non-array leaves are left as they are.

    Raises :class:`ShardingError` when a leaf has not ``len(rows)`` rows, or when a device
    needs a row this process does not hold."""
    rows = np.asarray(rows, dtype=np.int64)
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))

    def put(v):
        if not eqx.is_array(v) and not isinstance(v, np.ndarray):
            return v
        v = np.asarray(v)
        if v.ndim == 0 or len(v) != len(rows):
            raise ShardingError(f"a leaf of shape {v.shape} does not hold the {len(rows)} local "
                                "rows of the batch along its first axis")
        if mesh is None:
            if len(rows) != n:
                raise ShardingError(f"without a mesh the batch needs all {n} rows, got "
                                    f"{len(rows)}")
            return jax.numpy.asarray(v)

        def fetch(idx):
            where = position[np.arange(n)[idx[0]]]
            if (where < 0).any():
                raise ShardingError("a device of this process needs rows of the batch that "
                                    "the process did not prepare; use local_rows(mesh, n)")
            return v[where]

        return jax.make_array_from_callback((n, *v.shape[1:]), NamedSharding(mesh, P(_axis(
            mesh))), fetch)

    return jax.tree.map(put, local, is_leaf=lambda v: isinstance(v, np.ndarray))


def local_replica(tree):
    """``tree`` with every replicated array that spans several processes replaced by this
    process's own copy (an ordinary array on its first device), for work one process does
    alone (pictures, analysis). Arrays this process fully holds are returned as they are."""
    def local(v):
        if isinstance(v, jax.Array) and not v.is_fully_addressable:
            if not v.is_fully_replicated:
                raise ShardingError(f"an array of shape {v.shape} is split over several "
                                    "processes; only replicated arrays have a local copy")
            return v.addressable_data(0)
        return v

    return jax.tree.map(local, tree)


def is_main_process() -> bool:
    """True on process 0 (always in a single-process run): the one that prints, shows progress
    and writes files, so that N processes do not write the same file N times."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier ``name`` (nothing in a one-process
    run). ``name`` must be the same string on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_text(text: str) -> list[str]:
    """Every process's ``text``, in process order (``[text]`` in a one-process run): how the
    processes of a run compare their configurations and report each other's errors. Texts of
    any length: the processes first exchange their lengths, then the texts padded to the
    longest."""
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int64)))
    sizes = sizes.reshape(-1)
    buf = np.zeros(max(int(sizes.max()), 1), dtype=np.uint8)
    buf[:raw.size] = raw
    got = np.asarray(multihost_utils.process_allgather(buf))
    return [row[:int(k)].tobytes().decode(errors="replace")
            for row, k in zip(got, sizes, strict=True)]


# what gloo says when the other end of a collective's connection has gone away
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "Connection refused", "Socket closed", "EOF")


def lost_peer(error: BaseException) -> str | None:
    """Whether ``error``, raised by a computation of a multi-process run, says that another
    process of the run has gone (killed, crashed, or stopped): then a short description of
    it, from gloo's message without its source location (``"Gloo all-reduce failed: read
    error [127.0.0.1]:25764: Connection reset by peer"``), else ``None``. Always ``None`` in a
    one-process run.

    A process whose peer died gets this error from its next collective; if it let Python end
    normally, JAX's shutdown would then wait for the dead process until the coordination
    service's heartbeat timeout and abort with a C++ error, so the command line ends such a
    process at once (``os._exit``) after one line."""
    if not jax.distributed.is_initialized() or jax.process_count() < 2:
        return None
    text = str(error)
    if "gloo" not in text.lower() or not any(w in text for w in _PEER_GONE):
        return None
    line = next((ln for ln in text.splitlines() if "gloo" in ln.lower()), text.splitlines()[0])
    line = re.sub(r"^[A-Z_]+: ", "", line.strip())  # XLA's status code
    return re.sub(r"\[[^\]]*\.(?:cc|h):\d+\] ", "", line)[:300]


def _address(coordinator_address: str) -> tuple[str, int]:
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"coordinator address {coordinator_address!r} is not HOST:PORT "
                               "(e.g. 127.0.0.1:12355)")
    return host.strip("[]"), int(port)


def _check_port_free(host: str, port: int) -> None:
    """Process 0 hosts the coordinator: a port already taken would abort JAX with a C++ error."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise DistributedError(f"process 0 cannot host the coordinator at {host}:{port}: "
                               f"{e.strerror}; choose a free port") from None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float = 300.0,
    **kwargs,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with the same arguments, a
    bounded wait, and a check that the processes agree.

    Call it once per process before any other JAX call. ``coordinator_address`` is
    ``"host:port"`` of process 0 (which hosts the coordinator there); ``num_processes`` the
    number of processes and ``process_id`` this one's rank in ``[0, num_processes)``. Give all
    three, or none: on Cloud TPU, SLURM and Open MPI clusters JAX reads them from the
    environment. Afterwards ``jax.devices()`` lists every process's devices and
    :func:`make_mesh` spans them; every process runs the same program on the same data and
    seed.

    On CPUs the processes' collectives go through gloo. When not every process has joined
    within ``timeout`` seconds, JAX would abort the process with a C++ error that Python cannot
    catch; this function ends the process first, with exit status 2 and one line on stderr
    saying what it waited for. Raises :class:`DistributedError` for arguments that describe no
    process of a run, a port process 0 cannot listen on, a second call, and processes started
    with different process counts (each raises it, naming every process's count)."""
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise DistributedError("give the coordinator address, the number of processes and this "
                               "process's id together, or none of them (cluster detection)")
    if jax.distributed.is_initialized():
        raise DistributedError("this process has already joined a multi-process run")
    if all(given):
        host, port = _address(coordinator_address)
        if int(num_processes) < 1:
            raise DistributedError(f"the number of processes must be at least 1, got "
                                   f"{num_processes}")
        if not 0 <= int(process_id) < int(num_processes):
            raise DistributedError(f"process id {process_id} is outside [0, {num_processes}) "
                                   f"for {num_processes} processes")
        if int(process_id) == 0:
            _check_port_free(host, port)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = f"the coordinator at {coordinator_address}" if coordinator_address else (
        "the coordinator the cluster environment names")

    def expire():
        rank = "" if process_id is None else f"process {process_id} of {num_processes}: "
        sys.stderr.write(
            f"hamjax: error: {rank}the multi-process run did not start within {timeout:g} s: "
            f"waited for {where} and for every process to join; check that all processes were "
            "started with the same process count and that the coordinator is reachable from "
            "this host\n")
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        # JAX's own deadline comes later, so that the watchdog speaks first
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout) + 30,
            **kwargs,
        )
        asked = gather_text(str(num_processes if num_processes is not None else
                                jax.process_count()))
    finally:
        watchdog.cancel()
    if len(set(asked)) > 1:
        each = ", ".join(f"process {i}: {a}" for i, a in enumerate(asked))
        raise DistributedError(f"the processes were started with different process counts "
                               f"({each}); the coordinator runs {jax.process_count()}")
