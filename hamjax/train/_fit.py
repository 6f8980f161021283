"""The training loop: optax steps on the gradients of a task's loss on relaxed states.

``fit`` is a convenience (as optax intends): every piece under it — :func:`train_step`,
:func:`evaluate`, a task's loss, a gradient estimator's ``loss_and_grad`` — is callable alone.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .. import data as hd
from .._ham import HAM
from ..sharding import (
    ShardingError,
    barrier,
    gather_text,
    global_batch,
    is_main_process,
    local_rows,
    replicate,
)
from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._defaults import BATCH_SIZE, LEARNING_RATE, cosine_adam, default_epochs, default_gradient
from ._gradients import GradientEstimator
from ._tasks import Classification, Task

__all__ = ["fit", "train_step", "data_parallel", "evaluate", "History", "ConvergenceWarning",
           "check_classes", "check_task", "default_task", "sample_rng", "prepare_rows"]

History = list  # one dict per epoch


class ConvergenceWarning(UserWarning):
    """Training relaxations of a steady-state gradient estimator did not converge.

    Issued by :func:`fit` after an epoch in which fewer than 90 % of the training samples
    reached a steady state in every phase (they were left out of the gradient). A
    ``UserWarning``."""


def check_task(net: HAM, task: Task) -> None:
    """Raise a ValueError naming the layers when ``task`` reads or clamps a layer ``net`` lacks.

    Checks ``task.input_layer`` and ``task.output_layer`` against ``net.layers``; returns None."""
    names = {"input_layer": task.input_layer, "output_layer": task.output_layer}
    for what, name in names.items():
        if name not in net.layers:
            raise ValueError(
                f"{type(task).__name__}.{what} is {name!r}, but the HAM's layers are "
                f"{list(net.layers)}: pass task={type(task).__name__}(input_layer=..., "
                "output_layer=...) naming its layers")


def default_task(net: HAM, num_classes: int) -> Classification:
    """Classification of layer ``"image"`` into layer ``"label"``, with the loss that suits the
    label layer: ``"nll"`` (−log g_y) when its activations are already probabilities (a Softmax
    Lagrangian), ``"ce"`` (the activations as logits) otherwise.

    Raises ``ValueError`` (:func:`check_task`) when ``net`` lacks either layer."""
    from ..lagrangians import Softmax

    task = Classification(num_classes=num_classes)
    check_task(net, task)
    if isinstance(net.layers[task.output_layer].lagrangian, Softmax):
        task = Classification(num_classes=num_classes, loss_kind="nll")
    return task


def _strongly_typed(tree):
    """``tree`` with weakly typed arrays (a Lagrangian's ``β`` given as a Python float) made
    strongly typed, dtype kept. The first update turns such a leaf strong, and the next Adam
    update its moments: without this the jitted step compiles three times in every run."""
    return jax.tree.map(
        lambda v: jnp.asarray(v, v.dtype) if getattr(v, "weak_type", False) else v, tree)


@eqx.filter_jit
def train_step(net: HAM, opt_state, batch: dict, task: Task, gradient: GradientEstimator,
               optimizer, *, key=None, mesh=None):
    """One optimiser step: ``(net, opt_state, loss, per-sample metrics)``. ``key``: a PRNG key
    for the estimators that draw random numbers (``gradient.needs_key``).

    ``batch``: a prepared batch of ``n`` samples (``task.prepare``, as JAX arrays); the loss is
    the mean over it (a scalar), the metrics ``(n,)`` arrays. The gradient is
    ``gradient.loss_and_grad`` and the update ``optimizer`` (an ``optax`` transformation) on the
    inexact arrays of ``net``. Compiled with ``eqx.filter_jit``.

    With ``mesh`` (the batch split over it, the model replicated), data parallelism by
    :func:`jax.shard_map`: each device computes the loss and gradient of its own samples and
    one all-reduce averages them (:func:`data_parallel`)."""
    if mesh is None:
        loss, grads, metrics = gradient.loss_and_grad(net, task, batch, key=key)
    else:
        loss, grads, metrics = data_parallel(gradient, mesh)(net, task, batch, key=key)
    params = eqx.filter(net, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(net, updates), opt_state, loss, metrics


def data_parallel(gradient: GradientEstimator, mesh):
    """``gradient.loss_and_grad`` over a batch split along the one axis of ``mesh``: each device
    relaxes and differentiates its own ``n/d`` samples with no communication, then one
    all-reduce (``pmean``) averages the losses and gradients over the ``d`` devices. Returns a
    function with ``loss_and_grad``'s signature ``(net, task, batch, *, key) -> (mean loss,
    grads, (n,) metrics)``; call it under ``jit``.

    Left to XLA's automatic partitioner, the gradient of a relaxation is summed over devices
    inside the backward loop, once per solver step: free between devices of one process,
    costly between processes (a network round trip each). Here there is one per training step.
    Every loss of the library is a mean over the batch divided by ``n``, so the average of the
    devices' means is the batch's mean. A steady-state estimator stops each device's relaxation
    when its own samples have converged; an estimator that draws random numbers
    (``needs_key``) draws each device's from the key folded with the device's index, so those
    draws differ from a one-device run's."""
    from jax.sharding import PartitionSpec as P

    if len(mesh.axis_names) != 1:
        raise ShardingError(f"expected a one-axis mesh, got axes {mesh.axis_names}")

    def loss_and_grad(net, task, batch, *, key=None):
        def local(net, batch, key, axis):
            if key is not None:
                key = jax.random.fold_in(key, jax.lax.axis_index(axis))
            loss, grads, metrics = gradient.loss_and_grad(net, task, batch, key=key)
            # one buffer, one all-reduce: between processes each collective is a round trip
            flat, unravel = ravel_pytree((loss, grads))
            loss, grads = unravel(jax.lax.pmean(flat, axis))
            return loss, grads, metrics

        return _per_device(local, mesh, net, batch, key,
                           (P(), P(), P(mesh.axis_names[0])))

    return loss_and_grad


def _per_device(fn, mesh, net, split, shared, out_specs):
    """``fn(net, split, shared, axis)`` on every device of the one-axis ``mesh`` under
    :func:`jax.shard_map`: ``net`` (its arrays; the rest stays static) and ``shared``
    replicated, ``split`` cut along its leading axis; ``out_specs`` as for ``shard_map``."""
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    params, static = eqx.partition(net, eqx.is_array)

    def local(params, split, shared):
        return fn(eqx.combine(params, static), split, shared, axis)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=out_specs,
                         check_vma=False)(params, split, shared)


def _eval_sums_local(net, batch, valid, task, gradient):
    sol = gradient.relax(net, task, batch)
    ev = task.evaluate(net, sol.state, batch)
    ev["converged"] = sol.converged.astype(jnp.float32)
    return {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in ev.items()}


@eqx.filter_jit
def _eval_sums(net, batch, valid, task, gradient, mesh=None):
    """The sums over the ``valid`` samples of the batch of every per-sample figure: scalars.
    With ``mesh``, each device relaxes its own samples and one ``psum`` adds the devices' sums
    (as in :func:`data_parallel`)."""
    if mesh is None:
        return _eval_sums_local(net, batch, valid, task, gradient)
    from jax.sharding import PartitionSpec as P

    def local(net, split, _, axis):
        return jax.lax.psum(_eval_sums_local(net, *split, task, gradient), axis)

    return _per_device(local, mesh, net, (batch, valid), None, P())


@eqx.filter_jit
def _means(metrics):
    return {k: jnp.mean(v) for k, v in metrics.items()}


def sample_rng(seed: int, *where: int) -> np.random.Generator:
    """The generator one sample is prepared with (noise, augmentation, corruption): a function
    of the run's ``seed`` and the sample's place only — ``(0, epoch, position in the epoch)``
    in training, ``(1, index)`` in evaluation. So a batch prepared whole, or in parts by several
    processes, holds the same numbers."""
    return np.random.default_rng((int(seed), *(int(w) for w in where)))


def prepare_rows(task: Task, x, y, idx, seed: int, where, train: bool = True) -> dict:
    """``task.prepare`` of the samples ``x[idx]`` (labels ``y[idx]``; ``y`` may be None), each
    with its own :func:`sample_rng` ``(seed, *where[k])``: a dict of NumPy arrays with
    ``len(idx)`` rows. ``where``: one tuple of ints per sample."""
    rngs = [sample_rng(seed, *w) for w in where]
    if len(rngs) != len(idx):
        raise ValueError(f"prepare_rows: {len(idx)} rows but {len(rngs)} places")
    if task.per_image_rngs:  # one call, each image from its own generator: the same numbers
        return task.prepare(x[idx], None if y is None else y[idx], rngs, train=train)
    parts = [task.prepare(x[i:i + 1], None if y is None else y[i:i + 1], g, train=train)
             for i, g in zip(idx, rngs, strict=True)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate(net: HAM, x, y, task: Task, gradient: GradientEstimator, *, batch_size: int = 256,
             seed: int = 0, mesh=None) -> dict[str, float]:
    """Mean loss and metrics over ``(x, y)`` (``accuracy`` for classification, ``mse`` and
    ``psnr`` for image tasks, ``converged``: the fraction of relaxations that converged), each
    relaxed by ``gradient``'s own relaxation (:meth:`GradientEstimator.relax`). ``x``: ``(n,
    ...)`` images, ``y``: ``(n,)`` labels or None; returns ``{name: float}``.

    Batches keep one shape (the last is padded, and the padding ignored), so one compilation
    serves the whole set. Sample ``i``'s corruption is drawn from ``sample_rng(seed, 1, i)``:
    the same every call. With a ``mesh`` each batch (rounded up to a multiple of its devices)
    is split over them; under several processes each prepares its own rows and the sums are
    reduced across processes."""
    n = len(x)
    size = min(batch_size, n)
    if mesh is not None:
        net = replicate(net, mesh)
        size = -(-size // mesh.size) * mesh.size
    rows = local_rows(mesh, size)
    sums: dict[str, float] = {}
    for start in range(0, n, size):
        idx = start + rows
        valid = idx < n
        idx = np.where(valid, idx, start)  # padding: a copy of the batch's first sample
        local = prepare_rows(task, x, y, idx, seed, [(1, i) for i in idx], train=False)
        batch, ok = global_batch((local, valid), mesh, rows, size)
        for name, v in _eval_sums(net, batch, ok, task, gradient, mesh).items():
            sums[name] = sums.get(name, 0.0) + float(v)
    out = {name: s / n for name, s in sums.items()}
    if "correct" in out:
        out["accuracy"] = out.pop("correct")
    return out


def fit(
    net: HAM,
    data: hd.Dataset,
    *,
    task: Task | None = None,
    gradient: GradientEstimator | None = None,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    config: dict | None = None,
    progress: bool = True,
    verbose: bool = True,
    eval_batch_size: int = 256,
    on_epoch: Callable[[dict, HAM], None] | None = None,
    mesh=None,
) -> tuple[HAM, History]:
    """Train ``net`` on ``data`` for ``epochs`` epochs; evaluate on the test part after each.

    The defaults are ``hamjax train``'s (:mod:`hamjax.train`'s ``_defaults``): ``task``
    :func:`default_task`; ``gradient`` (the :class:`GradientEstimator`) ``Implicit()``, so the
    network is trained, and read, at its steady state; ``optimizer`` Adam with the learning
    rate on a cosine from 1e-3 to 0 over the run (:func:`cosine_adam`); ``epochs`` 30 for
    classification, 10 for the image tasks; ``batch_size`` 32. ``BPTT()`` is one argument
    away.

    Batches are shuffled by ``(seed, epoch)`` and the last partial batch is dropped (one
    compiled step); each sample is prepared (noise, augmentation) with its own generator,
    :func:`sample_rng` ``(seed, 0, epoch, position)``, so the numbers do not depend on how a
    batch is divided among devices or processes. With ``checkpoint``, the model, optimiser
    state, epoch, history and ``config`` are written atomically after every epoch; with
    ``resume=True`` an existing checkpoint is loaded and training continues at the next epoch
    (so an interrupted run loses at most the epoch in progress). ``progress`` shows a bar per
    epoch, ``verbose`` prints each epoch's test figures, ``on_epoch(record, net)`` is called
    after each. Returns the trained model and the history (one dict per epoch: ``epoch``,
    ``train_*``, ``test_*``, ``epoch_seconds``).

    With ``mesh`` (:func:`hamjax.sharding.make_mesh`), data parallelism: the model and optimiser
    state are replicated on its devices and every batch is split over them (``batch_size`` must
    be a multiple of the device count); each device relaxes and differentiates its own samples
    under ``jax.shard_map`` and one all-reduce per step averages the gradients
    (:func:`data_parallel`), so the result equals the single-device run to float tolerance.

    Several processes (:func:`hamjax.sharding.initialize_distributed`, a mesh over every
    process's devices): every process calls ``fit`` with the same arguments; each prepares only
    its own rows of every batch (:func:`hamjax.sharding.local_rows`), evaluation sums across
    processes, and only process 0 shows the progress bar, prints, and writes the checkpoint
    (every process waits until it is written, so each can ``resume`` from it: the checkpoint
    path must be on a file system all processes see). The returned model is replicated across
    the processes; :func:`hamjax.sharding.local_replica` gives this process's copy.
    """
    task = default_task(net, data.num_classes) if task is None else task
    check_task(net, task)
    gradient = default_gradient() if gradient is None else gradient
    epochs = default_epochs(task) if epochs is None else epochs
    _check_sizes(data, epochs, batch_size, mesh)
    check_classes(data, task)
    if optimizer is None:
        optimizer = cosine_adam(LEARNING_RATE, data.num_train // batch_size, max(1, epochs))
    net, opt_state, history, first = _initial_state(net, optimizer, checkpoint, resume)
    _same_start(first, checkpoint)
    if checkpoint is not None and is_main_process():
        # made once, here: a folder that goes away during training is not made again
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    progress, verbose = progress and main, verbose and main
    if mesh is not None:
        net, opt_state = replicate(net, mesh), replicate(opt_state, mesh)
    for epoch in range(first, epochs):
        t0 = time.perf_counter()
        net, opt_state, train = _train_epoch(
            net, opt_state, data, task, gradient, optimizer, epoch=epoch, epochs=epochs,
            batch_size=batch_size, seed=seed, mesh=mesh, progress=progress)
        train_seconds = time.perf_counter() - t0
        test = evaluate(net, data.x_test, data.y_test, task, gradient,
                        batch_size=eval_batch_size, seed=seed, mesh=mesh)
        record = {"epoch": epoch + 1, **train, **{f"test_{k}": v for k, v in test.items()},
                  "epoch_seconds": train_seconds}
        history.append(record)
        if main:
            _warn_unconverged(record, gradient, epoch)
        if verbose:
            shown = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in record.items()
                            if k.startswith("test_"))
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}{shown}", flush=True)
        if checkpoint is not None:
            if main:
                save_checkpoint(checkpoint, net, opt_state, {
                    "finished_epoch": epoch, "history": history, "config": config or {}},
                    create_folders=False)
            # no process runs ahead of a checkpoint it may have to resume from
            barrier(f"hamjax checkpoint of epoch {epoch + 1}")
        if on_epoch is not None:
            on_epoch(record, net)
    return net, history


def check_classes(data: hd.Dataset, task: Task) -> None:
    """A classification task needs at least two classes among the training labels: on one,
    every loss is minimised by answering it, and accuracy means nothing. Raises
    :class:`hamjax.data.DataError` (a ``ValueError``) naming the dataset and the class."""
    if not isinstance(task, Classification) or data.y_train is None:
        return
    classes = np.unique(np.asarray(data.y_train))
    if classes.size < 2:
        raise hd.DataError(f"{data.name}: every training label is class {int(classes[0])}; a "
                           "classifier needs at least two classes to learn anything")


def _check_sizes(data: hd.Dataset, epochs: int, batch_size: int, mesh) -> None:
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if batch_size > data.num_train:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.num_train} training examples")
    if mesh is not None and batch_size % mesh.size:
        raise ShardingError(f"batch_size {batch_size} is not divisible by the {mesh.size} devices "
                            f"of the mesh; use a multiple of {mesh.size}")


def _same_start(first: int, checkpoint) -> None:
    """Several processes must start at the same epoch: one that cannot see process 0's
    checkpoint would train from scratch beside the others (and wait for them forever)."""
    if jax.process_count() == 1:
        return
    starts = [int(t) for t in gather_text(str(first))]
    if len(set(starts)) > 1:
        each = ", ".join(f"process {i}: epoch {e + 1}" for i, e in enumerate(starts))
        raise CheckpointError(
            f"the processes would start at different epochs ({each}): they read different "
            f"checkpoints at {checkpoint}; put it on a file system every process sees")


def _initial_state(net: HAM, optimizer, checkpoint, resume: bool):
    """``(net, opt_state, history, first epoch)``: a fresh optimiser state, or, with ``resume``
    and an existing ``checkpoint``, the state, history and next epoch it holds."""
    net = _strongly_typed(net)
    opt_state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    if checkpoint is None or not resume or not Path(checkpoint).exists():
        return net, opt_state, [], 0
    net, opt_state, meta = load_checkpoint(checkpoint, net, opt_state)
    if meta.get("finished_epoch") is None:
        raise CheckpointError(f"{checkpoint} has no finished epoch")
    return net, opt_state, list(meta.get("history", [])), int(meta["finished_epoch"]) + 1


def _train_epoch(net: HAM, opt_state, data: hd.Dataset, task: Task, gradient: GradientEstimator,
                 optimizer, *, epoch: int, epochs: int, batch_size: int, seed: int, mesh,
                 progress: bool):
    """One pass over the training set, shuffled by ``(seed, epoch)``: ``(net, opt_state,
    figures)``, the figures being the epoch's mean loss (``train_loss``), main metric
    (``train_accuracy`` or ``train_<task.main_metric>``) and convergence fractions
    (``train_converged``, ``train_converged_nudged``, ``train_used``, as the estimator reports
    them).

    The next batch is prepared on the host while the device runs the current step (the step is
    dispatched asynchronously; its loss is read only afterwards)."""
    parts = hd.batch_indices(data.num_train, batch_size, seed=seed, epoch=epoch, drop_last=True)
    steps_per_epoch = len(parts)
    base_key = jax.random.PRNGKey(seed)
    rows = local_rows(mesh, batch_size)
    losses = []
    sums: dict[str, list[float]] = {}
    main = "correct"
    bar = _bar(progress, steps_per_epoch, f"epoch {epoch + 1}/{epochs}")

    def batch(step):
        idx = parts[step][rows]
        where = [(0, epoch, step * batch_size + r) for r in rows]
        local = prepare_rows(task, data.x_train, data.y_train, idx, seed, where)
        return global_batch(local, mesh, rows, batch_size)

    upcoming = batch(0) if steps_per_epoch else None
    for step in range(steps_per_epoch):
        current = upcoming
        key = (jax.random.fold_in(base_key, epoch * steps_per_epoch + step)
               if gradient.needs_key else None)
        net, opt_state, loss, metrics = train_step(net, opt_state, current, task, gradient,
                                                    optimizer, key=key, mesh=mesh)
        means = _means(metrics)
        if step + 1 < steps_per_epoch:
            upcoming = batch(step + 1)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                "lower the learning rate or the relaxation step"
            )
        losses.append(loss)
        main = "correct" if "correct" in means else task.main_metric
        for name in (main, "converged", "converged_nudged", "used"):
            if name in means:
                sums.setdefault(name, []).append(float(means[name]))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}",
                            **{_label(main): f"{np.mean(sums[main]):.4f}"})
    if bar is not None:
        bar.close()
    mains = sums.pop(main, [])
    return net, opt_state, {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        f"train_{_label(main)}": float(np.mean(mains)) if mains else float("nan"),
        **{f"train_{k}": float(np.mean(v)) for k, v in sums.items()},
    }


def _warn_unconverged(record: dict, gradient: GradientEstimator, epoch: int) -> None:
    """A steady-state estimator's gradient leaves out the samples whose relaxations did not
    converge: when many do not, training is running on a fraction of the data. Say so."""
    if not gradient.steady_state:
        return
    used = record.get("train_used", record.get("train_converged"))
    if used is not None and used < 0.9:
        parts = [f"{record[k]:.0%} {k.removeprefix('train_').replace('_', ' ')}"
                 for k in ("train_converged", "train_converged_nudged") if k in record]
        warnings.warn(
            f"epoch {epoch + 1}: only {used:.0%} of the training samples reached a steady state "
            f"within residual {gradient.tolerance:g} in every phase ({', '.join(parts)}); the "
            "others were left out of the gradient. Lower the learning rate, or raise max_steps",
            ConvergenceWarning, stacklevel=3)


def _label(key: str) -> str:
    return "accuracy" if key == "correct" else key


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

