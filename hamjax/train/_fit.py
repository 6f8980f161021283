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

from .. import data as hd
from .._ham import HAM
from ..sharding import ShardingError, replicate, shard_batch
from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ._gradients import BPTT, GradientEstimator
from ._tasks import Classification, Task

__all__ = ["fit", "train_step", "evaluate", "History", "ConvergenceWarning", "check_task",
           "default_task"]

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
               optimizer, *, key=None):
    """One optimiser step: ``(net, opt_state, loss, per-sample metrics)``. ``key``: a PRNG key
    for the estimators that draw random numbers (``gradient.needs_key``).

    ``batch``: a prepared batch of ``n`` samples (``task.prepare``, as JAX arrays); the loss is
    the mean over it (a scalar), the metrics ``(n,)`` arrays. The gradient is
    ``gradient.loss_and_grad`` and the update ``optimizer`` (an ``optax`` transformation) on the
    inexact arrays of ``net``. Compiled with ``eqx.filter_jit``."""
    loss, grads, metrics = gradient.loss_and_grad(net, task, batch, key=key)
    params = eqx.filter(net, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(net, updates), opt_state, loss, metrics


@eqx.filter_jit
def _eval_batch(net, batch, task, gradient):
    sol = gradient.relax(net, task, batch)
    ev = task.evaluate(net, sol.state, batch)
    ev["converged"] = sol.converged.astype(jnp.float32)
    return ev


def _to_jax(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def evaluate(net: HAM, x, y, task: Task, gradient: GradientEstimator, batch_size: int = 256,
             seed: int = 0, mesh=None) -> dict[str, float]:
    """Mean loss and metrics over ``(x, y)`` (``accuracy`` for classification, ``mse`` and
    ``psnr`` for image tasks, ``converged``: the fraction of relaxations that converged), each
    relaxed by ``gradient``'s own relaxation (:meth:`GradientEstimator.relax`). ``x``: ``(n,
    ...)`` images, ``y``: ``(n,)`` labels or None; returns ``{name: float}``.

    Batches keep one shape (the last is padded, and the padding ignored), so one compilation
    serves the whole set. Corruptions are drawn from ``seed``: the same every call. With a
    ``mesh`` each batch is split over its devices (replicated when its size does not divide)."""
    n = len(x)
    rng = np.random.default_rng((seed, 10**6))
    sums: dict[str, float] = {}
    if mesh is not None:
        net = replicate(net, mesh)
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        k = len(xb)
        if k < batch_size and n > batch_size:
            pad = batch_size - k
            xb = np.concatenate([xb, xb[:1].repeat(pad, axis=0)])
            yb = None if yb is None else np.concatenate([yb, yb[:1].repeat(pad, axis=0)])
        batch = _to_jax(task.prepare(xb, yb, rng, train=False))
        if mesh is not None:
            batch = (shard_batch(batch, mesh) if len(xb) % mesh.size == 0
                     else replicate(batch, mesh))
        ev = _eval_batch(net, batch, task, gradient)
        for name, v in ev.items():
            sums[name] = sums.get(name, 0.0) + float(jnp.sum(v[:k]))
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
    epochs: int = 10,
    batch_size: int = 64,
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

    ``task`` defaults to :func:`default_task`, ``gradient`` (the :class:`GradientEstimator`)
    to ``BPTT()`` and ``optimizer`` to ``optax.adam(1e-3)``.

    Batches are shuffled by ``(seed, epoch)`` and the last partial batch is dropped (one
    compiled step). With ``checkpoint``, the model, optimiser state, epoch, history and ``config``
    are written atomically after every epoch; with ``resume=True`` an existing checkpoint is
    loaded and training continues at the next epoch (so an interrupted run loses at most the
    epoch in progress). ``progress`` shows a bar per epoch, ``verbose`` prints each epoch's
    test figures, ``on_epoch(record, net)`` is called after each. Returns the trained model and
    the history (one dict per epoch: ``epoch``, ``train_*``, ``test_*``, ``epoch_seconds``).

    With ``mesh`` (:func:`hamjax.sharding.make_mesh`), data parallelism: the model and optimiser
    state are replicated on its devices and every batch is split over them (``batch_size`` must
    be a multiple of the device count); the jitted step is unchanged, XLA all-reduces the
    gradient, and the result equals the single-device run to float tolerance.
    """
    task = default_task(net, data.num_classes) if task is None else task
    check_task(net, task)
    gradient = BPTT() if gradient is None else gradient
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    _check_sizes(data, epochs, batch_size, mesh)
    net, opt_state, history, first = _initial_state(net, optimizer, checkpoint, resume)
    if mesh is not None:
        net, opt_state = replicate(net, mesh), replicate(opt_state, mesh)
    for epoch in range(first, epochs):
        t0 = time.perf_counter()
        net, opt_state, train = _train_epoch(
            net, opt_state, data, task, gradient, optimizer, epoch=epoch, epochs=epochs,
            batch_size=batch_size, seed=seed, mesh=mesh, progress=progress)
        train_seconds = time.perf_counter() - t0
        test = evaluate(net, data.x_test, data.y_test, task, gradient, eval_batch_size, seed,
                        mesh=mesh)
        record = {"epoch": epoch + 1, **train, **{f"test_{k}": v for k, v in test.items()},
                  "epoch_seconds": train_seconds}
        history.append(record)
        _warn_unconverged(record, gradient, epoch)
        if verbose:
            shown = {k: round(v, 4) for k, v in record.items() if k.startswith("test_")}
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, {shown}", flush=True)
        if checkpoint is not None:
            save_checkpoint(checkpoint, net, opt_state,
                            {"finished_epoch": epoch, "history": history, "config": config or {}})
        if on_epoch is not None:
            on_epoch(record, net)
    return net, history


def _check_sizes(data: hd.Dataset, epochs: int, batch_size: int, mesh) -> None:
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if batch_size > data.num_train:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.num_train} training examples")
    if mesh is not None and batch_size % mesh.size:
        raise ShardingError(f"batch_size {batch_size} is not divisible by the {mesh.size} devices "
                            f"of the mesh; use a multiple of {mesh.size}")


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
    (``train_acc`` or ``train_<task.main_metric>``) and convergence fractions (``train_converged``,
    ``train_converged_nudged``, ``train_used``, as the estimator reports them)."""
    steps_per_epoch = data.num_train // batch_size
    base_key = jax.random.PRNGKey(seed)
    rng = np.random.default_rng((seed, epoch))
    losses, mains = [], []
    conv: dict[str, list[float]] = {}
    main = task.main_metric
    bar = _bar(progress, steps_per_epoch, f"epoch {epoch + 1}/{epochs}")
    for xb, yb in hd.batches(data.x_train, data.y_train, batch_size, seed=seed, epoch=epoch,
                             drop_last=True):
        batch = _to_jax(task.prepare(xb, yb, rng))
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        key = (jax.random.fold_in(base_key, epoch * steps_per_epoch + len(losses))
               if gradient.needs_key else None)
        net, opt_state, loss, metrics = train_step(net, opt_state, batch, task, gradient,
                                                    optimizer, key=key)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {epoch + 1}, step {len(losses) + 1}; "
                "lower the learning rate or the relaxation step"
            )
        losses.append(loss)
        main = "correct" if "correct" in metrics else task.main_metric
        mains.append(float(jnp.mean(metrics[main])))
        for name in ("converged", "converged_nudged", "used"):
            if name in metrics:
                conv.setdefault(name, []).append(float(jnp.mean(metrics[name])))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}",
                            **{_label(main): f"{np.mean(mains):.4f}"})
    if bar is not None:
        bar.close()
    return net, opt_state, {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        f"train_{_label(main)}": float(np.mean(mains)) if mains else float("nan"),
        **{f"train_{k}": float(np.mean(v)) for k, v in conv.items()},
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
    return "acc" if key == "correct" else key


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

