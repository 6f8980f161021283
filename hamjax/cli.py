"""The ``hamjax`` command: ``train``, ``eval``, ``analyze``, ``bench``.

``hamjax train`` with no arguments trains a dense HAM classifier on the scikit-learn digits
(bundled: nothing is downloaded), shows a progress bar, prints the test accuracy and writes a
run folder: ``metrics.json``, ``history.csv``, ``checkpoint.eqx``, ``config.json`` and pictures.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

MODELS = ("dense", "deep", "conv", "memory")
TASKS = ("classify", "denoise", "complete", "store")
METHODS = ("bptt", "implicit", "eqprop")


class _UsageError(Exception):
    """A flag combination or input that argparse cannot check; reported like argparse's."""


def _number(cast, ok, what: str):
    """An argparse type: ``cast`` the text, then require ``ok(value)``; both failures say
    ``expected <what>``."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: v > 0, "a positive number")
_nonneg_float = _number(float, lambda v: v >= 0, "a non-negative number")


def _sizes(s: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes like 256 or 256,128, got {s!r}"
        ) from None
    if not sizes or any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {s!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hamjax", description="Hierarchical Associative Memories")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a HAM (default: a dense classifier on digits)")
    t.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the four MNIST IDX files (gzip or raw)")
    t.add_argument("--model", choices=MODELS, default=None,
                   help="dense (default for classify), deep, conv, memory (default otherwise)")
    t.add_argument("--task", choices=TASKS, default="classify")
    t.add_argument("--method", choices=METHODS, default="bptt",
                   help="gradient method: backprop through time, implicit differentiation at "
                        "the steady state, or equilibrium propagation")
    t.add_argument("--epochs", type=_nonneg_int, default=None)
    t.add_argument("--batch-size", type=_positive_int, default=32)
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0,
                   help="decoupled weight decay (AdamW) per unit learning rate")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--hidden", type=_sizes, default=None,
                   help="hidden sizes (dense: 256; deep: 256,128); channels for conv; "
                        "memories for memory")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="relaxation steps for bptt (Euler; dense/conv: 40, deep: 100, memory "
                        "tasks: 10)")
    t.add_argument("--dt", type=_positive_float, default=None,
                   help="relaxation step size (dense/conv: 0.25, deep: 0.5; memory tasks: 1.0, "
                        "where one Euler step is the modern Hopfield update v <- ξᵀ softmax(β h))")
    t.add_argument("--residual-penalty", type=float, default=1.0,
                   help="bptt: weight of mean |τ dx/dt|² at the last step, so the readout sits "
                        "at a fixed point")
    t.add_argument("--shift", type=_nonneg_int, default=0,
                   help="classify: translate training images by up to N pixels (augmentation)")
    t.add_argument("--rotate", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="classify: rotate training images by up to ±DEG degrees (augmentation)")
    t.add_argument("--zoom", type=_nonneg_float, default=0.0, metavar="F",
                   help="classify: scale training images by 1±F (augmentation)")
    t.add_argument("--noise", type=float, default=None,
                   help="classify: training input noise std; denoise: corruption level")
    t.add_argument("--limit-train", type=_positive_int, default=None)
    t.add_argument("--limit-test", type=_positive_int, default=None)
    t.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/<dataset>-<task>-<model>-<method>-<time>)")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out's checkpoint, at the epoch after the last finished")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="data parallelism over the first N devices: each batch is split over "
                        "them, parameters replicated (--batch-size must be a multiple of N). "
                        "On a CPU, create N host devices by setting "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N before running")

    e = sub.add_parser("eval", help="re-evaluate a saved run")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--data-dir", type=Path, default=None)

    a = sub.add_parser("analyze", help="stability and dead neurons of a trained run")
    a.add_argument("run_dir", type=Path)
    a.add_argument("--samples", type=_positive_int, default=3)
    a.add_argument("--data-dir", type=Path, default=None)

    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks (python -m benchmarks; needs the source tree): "
                        "hamjax bench [--quick|--full] [--out DIR] [--only NAME ...]")
    return p


# ---------------------------------------------------------------------------------- building
def _defaults(cfg: dict) -> dict:
    cfg = dict(cfg)
    if cfg.get("model") is None:
        cfg["model"] = "dense" if cfg["task"] == "classify" else "memory"
    if cfg["task"] == "classify" and cfg["model"] == "memory":
        raise _UsageError("--model memory has no label layer; use it with "
                         "--task denoise, complete or store")
    if cfg["task"] != "classify" and cfg["model"] != "memory":
        raise _UsageError(f"--task {cfg['task']} needs --model memory "
                         "(its image layer is free)")
    if cfg.get("hidden") is None:
        cfg["hidden"] = {"dense": (256,), "deep": (256, 128), "conv": (32,),
                         "memory": (100,)}[cfg["model"]]
    if cfg.get("epochs") is None:
        cfg["epochs"] = 30 if cfg["task"] == "classify" else 10
    # T = steps·dt: a deep chain needs longer to settle (on digits, 40 steps of 0.25 leave every
    # relaxation above residual 1e-4; 100 of 0.5 bring 80 % below it)
    if cfg.get("steps") is None:
        cfg["steps"] = {"memory": 10, "deep": 100}.get(cfg["model"], 40)
    if cfg.get("dt") is None:
        cfg["dt"] = {"memory": 1.0, "deep": 0.5}.get(cfg["model"], 0.25)
    if cfg.get("noise") is None:
        cfg["noise"] = {"classify": 0.1, "denoise": 0.3, "complete": 0.5, "store": 0.1}[
            cfg["task"]]
    cfg["hidden"] = list(cfg["hidden"])
    return cfg


def _load_data(cfg: dict, data_dir=None):
    from . import data as hd

    if cfg["dataset"] == "digits":
        d = hd.load_digits(seed=cfg["seed"])
    else:
        d = hd.load_mnist(data_dir or cfg.get("data_dir"), limit_train=cfg.get("limit_train"),
                          limit_test=cfg.get("limit_test"))
    if cfg["dataset"] == "digits" and (cfg.get("limit_train") or cfg.get("limit_test")):
        import dataclasses

        d = dataclasses.replace(
            d, x_train=d.x_train[: cfg.get("limit_train")], y_train=d.y_train[: cfg.get(
                "limit_train")], x_test=d.x_test[: cfg.get("limit_test")],
            y_test=d.y_test[: cfg.get("limit_test")])
    return d


def _build(cfg: dict, data):
    import jax

    from . import presets
    from . import train as T

    key = jax.random.PRNGKey(cfg["seed"])
    h = cfg["hidden"]
    if cfg["model"] == "dense":
        net = presets.dense_classifier(key, data.image_shape, data.num_classes, hidden=h[0])
    elif cfg["model"] == "deep":
        from .lagrangians import Tanh

        # bounded hidden activations: two ReLU layers coupled by −g₁ᵀWg₂ make the energy
        # unbounded below once ‖W‖ > 1, and trained relaxations ran away (steady-state accuracy
        # 0.77 on digits, none converged); with tanh every relaxation settles (0.98)
        net = presets.deep_dense_classifier(key, data.image_shape, data.num_classes, hidden=h,
                                            hidden_lagrangian=Tanh())
    elif cfg["model"] == "conv":
        from .lagrangians import ReLU

        # ReLU feature maps: on MNIST (3 epochs, 32 channels) they reach 0.977 where the HAM
        # paper's softmax over channels reaches 0.956. A 5×5 kernel at stride 2 on 28×28 images
        # (3×3, stride 1, 2×2 pooling on the 8×8 digits) keeps a BPTT step at ~0.1 s on 2 cores.
        small = data.image_shape[0] <= 8
        net = presets.conv_classifier(key, data.image_shape, data.num_classes, channels=h[0],
                                      kernel_size=3 if small else 5, stride=1 if small else 2,
                                      pool=2 if small else 1, feature_lagrangian=ReLU())
    else:
        # memories start as K training images (a modern Hopfield network storing them); from
        # small random vectors every softmax is flat and each image relaxes to the global mean
        import numpy as np

        idx = np.random.default_rng(cfg["seed"]).choice(data.num_train, h[0], replace=False)
        # Euclidean similarity: the overlap ξ·v lets the brightest memories capture every
        # noisy image (on MNIST, σ = 0.3 noise: 7 dB restored vs 13 dB corrupted, 14-16 dB
        # with distances)
        net = presets.memory_model(key, data.image_shape, num_memories=h[0],
                                   patterns=data.x_train[idx].reshape(h[0], -1),
                                   similarity="distance")
    task = {
        "classify": lambda: T.Classification(num_classes=data.num_classes, noise=cfg["noise"],
                                             loss_kind="nll", shift=cfg.get("shift", 0),
                                             rotate=cfg.get("rotate", 0.0),
                                             zoom=cfg.get("zoom", 0.0)),
        "denoise": lambda: T.Denoising(level=cfg["noise"]),
        "complete": lambda: T.Completion(level=cfg["noise"]),
        "store": lambda: T.Storage(level=cfg["noise"]),
    }[cfg["task"]]()
    method = {
        "bptt": lambda: T.BPTT(steps=cfg["steps"], dt=cfg["dt"],
                               residual_penalty=cfg.get("residual_penalty", 1.0)),
        # both relax to residual 1e-4 by Anderson acceleration (see hj.train.Implicit/EqProp)
        "implicit": lambda: T.Implicit(),
        "eqprop": lambda: T.EqProp(beta=0.2),
    }[cfg["method"]]()
    return net, task, method


# ---------------------------------------------------------------------------------- commands
def _train(args) -> int:

    from . import train as T
    from .data import DataError

    if args.method != "bptt" and (args.steps is not None or args.dt is not None):
        raise _UsageError(f"--steps and --dt set the relaxation of --method bptt; --method "
                          f"{args.method} relaxes to a steady state (residual 1e-4)")
    cfg = _defaults({k: v for k, v in vars(args).items() if k not in ("command", "no_progress")})
    if cfg["dataset"] == "mnist" and cfg["data_dir"] is None:
        raise _UsageError("--dataset mnist needs --data-dir DIR (a folder "
                         "with the four MNIST IDX files); nothing is downloaded")
    out = cfg.pop("out")
    if out is None:
        if cfg["resume"]:
            raise _UsageError("--resume needs --out RUN_DIR")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{cfg['dataset']}-{cfg['task']}-{cfg['model']}-{cfg['method']}-{stamp}"
        out = Path("runs") / name
    out = Path(out)
    ckpt = out / "checkpoint.eqx"
    if ckpt.exists() and not cfg["resume"]:
        raise _UsageError(f"{out} already holds a run; pass --resume to "
                         "continue it or choose another --out")
    cfg["data_dir"] = None if cfg["data_dir"] is None else str(cfg["data_dir"])
    mesh = _mesh(cfg)
    try:
        data = _load_data(cfg)
    except DataError as e:
        raise _UsageError(f"{e}") from None
    net, task, method = _build(cfg, data)
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = {k: v for k, v in cfg.items() if k != "resume"}
    (out / "config.json").write_text(json.dumps(cfg_json, indent=2))
    print(f"hamjax: {cfg['task']} on {data.name} ({data.num_train} train / {data.num_test} test) "
          f"with a {cfg['model']} HAM, {cfg['method']}, {cfg['epochs']} epochs -> {out}",
          flush=True)
    t0 = time.perf_counter()
    net, history = T.fit(
        net, data, task=task, method=method, optimizer=_optimizer(cfg, data),
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=cfg["seed"], checkpoint=ckpt,
        resume=cfg["resume"], config=cfg_json, progress=not args.no_progress, mesh=mesh,
    )
    train_seconds = time.perf_counter() - t0
    _write_history(out / "history.csv", history)
    last = history[-1] if history else {}
    metrics = {k: v for k, v in last.items() if k.startswith("test_")}
    metrics.update(
        train_seconds=train_seconds,
        epochs=cfg["epochs"],
        steps=(data.num_train // cfg["batch_size"]) * cfg["epochs"],
        seconds_per_epoch=float(sum(h["epoch_seconds"] for h in history) / max(len(history), 1)),
        config=cfg_json,
    )
    pics = _pictures(out, net, task, method, data, cfg)
    metrics["pictures"] = pics
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _report(metrics, method)
    print(f"run folder: {out} (metrics.json, history.csv, checkpoint.eqx, {', '.join(pics)})")
    return 0


def _mesh(cfg: dict):
    """The ``--devices N`` mesh (None without the flag), or a clear error."""
    if cfg.get("devices") is None:
        return None
    from .sharding import ShardingError, make_mesh

    n = cfg["devices"]
    if cfg["batch_size"] % n:
        raise _UsageError(f"--batch-size {cfg['batch_size']} is not "
                         f"divisible by --devices {n}; use a multiple of {n}")
    try:
        return make_mesh(n)
    except ShardingError as e:
        raise _UsageError(f"--devices {n}: {e}") from None


def _optimizer(cfg: dict, data):
    import optax

    # Adam with a cosine decay to zero over the whole run: the last epochs settle instead of
    # wandering by a percent of accuracy from epoch to epoch
    total = max(1, (data.num_train // cfg["batch_size"]) * cfg["epochs"])
    schedule = optax.cosine_decay_schedule(cfg["lr"], total)
    wd = cfg.get("weight_decay", 0.0)
    return optax.adamw(schedule, weight_decay=wd) if wd else optax.adam(schedule)


def _report(metrics: dict, method) -> None:
    if "test_accuracy" in metrics:
        print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    if "test_psnr" in metrics:
        base = (f"; corrupted input {metrics['test_psnr_input']:.2f} dB"
                if "test_psnr_input" in metrics else "")
        print(f"test PSNR: {metrics['test_psnr']:.2f} dB (mse {metrics['test_mse']:.5f}{base})")
    if "test_converged" in metrics:
        print(f"relaxations converged (residual <= {method.tolerance:g}): "
              f"{metrics['test_converged']:.3f}")


def _write_history(path: Path, history: list) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for h in history:
            w.writerow(h)


def _load_run(run_dir: Path, data_dir=None):
    import equinox as eqx

    from . import train as T

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise _UsageError(f"{run_dir} is not a run folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    if data_dir is not None:
        cfg["data_dir"] = str(data_dir)
    data = _load_data(cfg)
    net, task, method = _build(cfg, data)
    opt = _optimizer(cfg, data)
    try:
        net, _, meta = T.load_checkpoint(run_dir / "checkpoint.eqx", net,
                                         opt.init(eqx.filter(net, eqx.is_inexact_array)))
    except T.CheckpointError as e:
        raise _UsageError(f"{e}") from None
    return cfg, data, net, task, method, meta


def _eval(args) -> int:
    from . import train as T

    cfg, data, net, task, method, meta = _load_run(args.run_dir, args.data_dir)
    t0 = time.perf_counter()
    res = T.evaluate(net, data.x_test, data.y_test, task, method, seed=cfg["seed"])
    res = {f"test_{k}": v for k, v in res.items()}
    print(f"run {args.run_dir} (epoch {int(meta['finished_epoch']) + 1}), evaluated in "
          f"{time.perf_counter() - t0:.1f} s")
    _report(res, method)
    print(json.dumps(res, indent=2))
    return 0


def _analyze(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from . import analysis
    from . import train as T

    cfg, data, net, task, method, meta = _load_run(args.run_dir, args.data_dir)
    from .relax import SteadyState, relax

    batch = task.prepare(data.x_test[: args.samples], data.y_test[: args.samples],
                         np.random.default_rng(0), train=False)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    x0 = task.initial_state(net, batch)
    sol = relax(net, x0, clamp=task.clamp, stop=SteadyState(atol=1e-5), max_steps=20000,
                on_nonfinite="flag")
    report = []
    for i in range(args.samples):
        xi = {n: v[i] for n, v in sol.state.items()}
        rep = analysis.stability(net, xi, clamp=task.clamp)
        dead = {k: int(v) for k, v in rep.n_dead.items()} if hasattr(rep, "n_dead") else {}
        spec = np.asarray(rep.spectrum)
        entry = {
            "sample": i,
            "converged": bool(sol.converged[i]),
            "residual": float(sol.residual[i]),
            "verdict": rep.verdict,
            "reason": rep.reason,
            "dead_neurons": dead,
            "restricted_spectrum_max_real": float(np.max(np.real(spec))) if spec.size else None,
            "restricted_spectrum_min_real": float(np.min(np.real(spec))) if spec.size else None,
            "restricted_spectrum_size": int(spec.size),
        }
        report.append(entry)
        print(json.dumps(entry))
    (args.run_dir / "stability.json").write_text(json.dumps(report, indent=2))
    del T
    return 0


# ---------------------------------------------------------------------------------- pictures
def _pictures(out: Path, net, task, method, data, cfg) -> list[str]:
    """Write the run's PNGs; return their names."""
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .relax import SteadyState, relax

    names = []
    shape = data.image_shape
    # 1. learned weights / memories as images
    w = _input_filters(net, cfg)
    if w is not None:
        n = min(len(w), 64)
        cols = 8
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1))
        for i, ax in enumerate(np.atleast_1d(axes).ravel()):
            ax.axis("off")
            if i < n:
                img = w[i]
                ax.imshow(img, cmap="bwr" if cfg["task"] == "classify" else "gray",
                          vmin=-np.abs(img).max() if cfg["task"] == "classify" else None,
                          vmax=np.abs(img).max() if cfg["task"] == "classify" else None)
        fig.suptitle("learned " + ("memories" if cfg["model"] == "memory" else "input weights"))
        fig.tight_layout()
        fig.savefig(out / "weights.png", dpi=100)
        plt.close(fig)
        names.append("weights.png")

    # 2. original / corrupted / restored (or predictions for classification)
    k = 10
    rng = np.random.default_rng(0)
    xb, yb = data.x_test[:k], data.y_test[:k]
    batch = {key: jnp.asarray(v) for key, v in task.prepare(xb, yb, rng, train=False).items()}
    kw = method.relax_kwargs()
    if kw.get("method", "ode") == "ode":
        kw_saving = {k: v for k, v in kw.items() if k != "adjoint"}
    else:
        # the energy picture follows the dynamics in time: the ODE to the same tolerance (a
        # steady-state method's iterations have no time axis)
        kw_saving = dict(stop=SteadyState(atol=method.tolerance), max_steps=4096)
    sol = relax(net, task.initial_state(net, batch), clamp=task.clamp,
                freeze=task.frozen(batch), save="energy", on_nonfinite="flag", **kw_saving)
    if cfg["task"] == "classify":
        from . import data as hd

        noisy = hd.gaussian_noise(xb, 0.3, np.random.default_rng(1)).images
        nb = {"input": jnp.asarray(noisy), "target": jnp.asarray(yb)}
        sol_noisy = relax(net, task.initial_state(net, nb), clamp=task.clamp,
                          on_nonfinite="flag", **kw_saving)
        pred = np.argmax(np.asarray(sol.state["label"]).reshape(k, -1), -1)
        pred_noisy = np.argmax(np.asarray(sol_noisy.state["label"]).reshape(k, -1), -1)
        fig, axes = plt.subplots(2, k, figsize=(k * 1.1, 2.8))
        for i in range(k):
            for r, (img, p) in enumerate(((xb[i], pred[i]), (noisy[i], pred_noisy[i]))):
                ax = axes[r, i]
                ax.imshow(np.asarray(img).reshape(shape)[..., 0], cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{p}" + ("" if p == yb[i] else f" ({yb[i]})"),
                             color="black" if p == yb[i] else "red", fontsize=9)
                ax.axis("off")
        axes[0, 0].text(-0.3, 0.5, "clean", transform=axes[0, 0].transAxes, ha="right")
        axes[1, 0].text(-0.3, 0.5, "noisy", transform=axes[1, 0].transAxes, ha="right")
        fig.suptitle("predicted label after relaxation (true label in red when wrong)")
        fig.tight_layout()
        fig.savefig(out / "predictions.png", dpi=100)
        plt.close(fig)
        names.append("predictions.png")
    else:
        restored = np.asarray(net.layers["image"].activation(sol.state["image"]))
        fig, axes = plt.subplots(3, k, figsize=(k * 1.1, 3.6))
        for i in range(k):
            for r, img in enumerate((xb[i], np.asarray(batch["input"][i]), restored[i])):
                axes[r, i].imshow(np.clip(img.reshape(shape)[..., 0], 0, 1), cmap="gray",
                                  vmin=0, vmax=1)
                axes[r, i].axis("off")
        for r, lab in enumerate(("original", "corrupted", "restored")):
            axes[r, 0].text(-0.3, 0.5, lab, transform=axes[r, 0].transAxes, ha="right")
        fig.tight_layout()
        fig.savefig(out / "reconstructions.png", dpi=100)
        plt.close(fig)
        names.append("reconstructions.png")

    # 3. energy during relaxation
    e = sol.energy_trace()
    ts = np.asarray(sol.ts)
    ts = ts[np.isfinite(ts)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ts[: len(e)], e - e[-1:] + 1e-7)
    ax.set_yscale("log")
    ax.set_xlabel("time (units of τ)")
    ax.set_ylabel("E(t) − E(final)")
    ax.set_title("energy during relaxation (10 test images)")
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=100)
    plt.close(fig)
    names.append("energy.png")
    return names


def _input_filters(net, cfg):
    import numpy as np

    if cfg["model"] in ("dense", "deep"):
        syn = net.synapses["w1"]
        return np.asarray(syn.weight).reshape((-1,) + syn.in_shape)[..., 0]
    if cfg["model"] == "conv":
        k = np.asarray(net.synapses["conv"].kernel)  # (kh, kw, cin, cout)
        return np.moveaxis(k[:, :, 0, :], -1, 0)
    if cfg["model"] == "memory":
        syn = net.synapses["memory"]
        return np.asarray(syn.memories).reshape((-1,) + syn.shape)[..., 0]
    return None


def _bench(argv) -> int:
    # benchmarks/ lives beside the package in the source tree, not inside the installed package
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        here = Path(__file__).resolve().parent.parent
        if (here / "benchmarks" / "__main__.py").is_file():
            sys.path.insert(0, str(here))
            from benchmarks.__main__ import main as bench_main
        else:
            print("hamjax bench: error: the benchmarks are not installed with the package; run "
                  "it from a source checkout of hamjax (python -m benchmarks)", file=sys.stderr)
            return 2
    return bench_main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _train, "eval": _eval, "analyze": _analyze}
    try:
        return commands[args.command](args)
    except _UsageError as e:
        # exit status 2 with the usage line, as argparse does for its own checks
        parser.exit(2, f"{parser.format_usage()}hamjax {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
