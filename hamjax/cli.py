"""The ``hamjax`` command: ``train``, ``eval``, ``analyze``, ``bench``.

``hamjax train`` with no arguments trains a dense HAM classifier on the scikit-learn digits
(bundled: nothing is downloaded), shows a progress bar, prints the test accuracy and writes a
run folder: ``metrics.json``, ``history.csv``, ``checkpoint.eqx``, ``config.json`` and pictures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

MODELS = ("dense", "deep", "conv", "memory")
TASKS = ("classify", "denoise", "complete", "store")
METHODS = ("bptt", "implicit", "eqprop")


class _UsageError(Exception):
    """A flag combination or input that argparse cannot check: reported as one line on stderr,
    exit status 2, before the command writes anything."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem and where help is, without the usage block
    (argparse's own two-line form buries the message under a screen of flags)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default where it has a fixed one (those that depend on
    the model or task say so in their text and have no default here)."""

    def _get_help_string(self, action):
        text = action.help or ""
        fixed = action.default not in (None, False, argparse.SUPPRESS)
        if fixed and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


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


# floats must be finite: ``inf`` passes ``v > 0`` and trains to NaN (``nan`` fails every test)
_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive finite number")
_nonneg_float = _number(float, lambda v: 0 <= v < math.inf, "a non-negative finite number")


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
    p = _Parser(prog="hamjax", description="Hierarchical Associative Memories")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a HAM (default: a dense classifier on digits)",
                       formatter_class=_Help)
    t.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                   help="digits: scikit-learn's 8x8 digits (bundled); mnist: needs --data-dir")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the four MNIST IDX files (gzip or raw)")
    t.add_argument("--model", choices=MODELS, default=None,
                   help="dense (default for classify), deep, conv, memory (default otherwise)")
    t.add_argument("--task", choices=TASKS, default="classify",
                   help="classify: read the label layer; denoise, complete, store: restore "
                        "images with a memory model")
    t.add_argument("--method", choices=METHODS, default="bptt",
                   help="gradient method: backprop through time, implicit differentiation at "
                        "the steady state, or equilibrium propagation")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="passes over the training set (classify: 30, other tasks: 10); with "
                        "--resume, at least the run's own")
    t.add_argument("--batch-size", type=_positive_int, default=32,
                   help="training images per step (at most the training set)")
    t.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="peak learning rate of Adam, decayed to 0 by a cosine over the run")
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0,
                   help="decoupled weight decay (AdamW) per unit learning rate")
    t.add_argument("--seed", type=_nonneg_int, default=0,
                   help="initial weights, shuffling and noise")
    t.add_argument("--hidden", type=_sizes, default=None,
                   help="hidden sizes (dense: 256; deep: 256,128); channels for conv (32); "
                        "memories for memory (100)")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="relaxation steps for bptt (Euler; dense/conv: 40, deep: 100, memory "
                        "tasks: 10)")
    t.add_argument("--dt", type=_positive_float, default=None,
                   help="relaxation step size (dense/conv: 0.25, deep: 0.5; memory tasks: 1.0, "
                        "where one Euler step is the modern Hopfield update v <- ξᵀ softmax(β h))")
    t.add_argument("--residual-penalty", type=_nonneg_float, default=1.0,
                   help="bptt: weight of mean |τ dx/dt|² at the last step, so the readout sits "
                        "at a fixed point")
    t.add_argument("--shift", type=_nonneg_int, default=0,
                   help="classify: translate training images by up to N pixels (augmentation)")
    t.add_argument("--rotate", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="classify: rotate training images by up to ±DEG degrees (augmentation)")
    t.add_argument("--zoom", type=_nonneg_float, default=0.0, metavar="F",
                   help="classify: scale training images by 1±F (augmentation)")
    t.add_argument("--noise", type=_nonneg_float, default=None,
                   help="classify: training input noise std (0.1); denoise: corruption level "
                        "(0.3); complete: hidden fraction (0.5); store: noise (0.1)")
    t.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick trials)")
    t.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="evaluate on only the first N test images (quick trials)")
    t.add_argument("--out", type=Path, default=None,
                   help="run folder (default: a new runs/<dataset>-<task>-<model>-<method>-<time>)")
    t.add_argument("--resume", action="store_true",
                   help="continue --out's run from its checkpoint, with the config it was "
                        "started with (only --epochs, --data-dir and --devices may change)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="data parallelism over the first N devices: each batch is split over "
                        "them, parameters replicated (--batch-size must be a multiple of N). "
                        "On a CPU, create N host devices by setting "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N before running")

    e = sub.add_parser("eval", help="re-evaluate a saved run", formatter_class=_Help)
    e.add_argument("run_dir", type=Path)
    e.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder, when the one the run recorded has moved")

    a = sub.add_parser("analyze", help="stability and dead neurons of a trained run",
                       formatter_class=_Help)
    a.add_argument("run_dir", type=Path)
    a.add_argument("--samples", type=_positive_int, default=3,
                   help="test images to relax and analyse (at most the test set)")
    a.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder, when the one the run recorded has moved")

    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks (python -m benchmarks; needs the source tree): "
                        "hamjax bench [--quick|--full] [--out DIR] [--only NAME ...]")
    p.commands = {"train": t, "eval": e, "analyze": a}  # for _given_flags
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
        "eqprop": lambda: T.EqProp(),
    }[cfg["method"]]()
    return net, task, method


# ---------------------------------------------------------------------------------- run folders
_RUN_FILES = ("config.json", "checkpoint.eqx")  # either marks a folder as holding a run
# what --resume may change: where the data lives, how far to train, how many devices share a
# batch; everything else defines the run and must match its checkpoint
_RESUMABLE = ("epochs", "data_dir", "devices")
_NOT_CONFIG = ("command", "no_progress", "out", "resume")


def _given_flags(argv) -> set[str]:
    """The ``train`` options written on the command line (not defaulted): parsed again with
    every default replaced by a marker, so ``--model dense`` counts even though it is the
    default."""
    parser = build_parser()
    unset = object()
    train = parser.commands["train"]
    train.set_defaults(**{a.dest: unset for a in train._actions if a.dest != "help"})
    return {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}


def _flag(dest: str, value) -> str:
    """``dest`` and ``value`` as they are written on the command line."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"--{dest.replace('_', '-')} {value}"


def _normalised(dest: str, value):
    """A flag's value as config.json records it (so a given flag compares with a saved one)."""
    if dest == "hidden" and value is not None:
        return list(value)
    if dest == "data_dir" and value is not None:
        # absolute: `eval` may run from another folder than `train` did
        return str(Path(value).expanduser().resolve())
    return value


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader (or a
    killed writer) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, atomically, failing with FileExistsError when it
    exists: of two commands claiming one folder, exactly one wins."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.link(tmp, path)  # unlike rename, link refuses to replace an existing file
    finally:
        os.unlink(tmp)


def _new_folder(cfg: dict) -> Path:
    """A fresh ``runs/<dataset>-<task>-<model>-<method>-<time>`` folder, created here. The time
    has one-second resolution, so a second run in the same second gets ``-2`` (and so on):
    ``mkdir`` is atomic, so two commands never share a folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg['dataset']}-{cfg['task']}-{cfg['model']}-{cfg['method']}-{stamp}"
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _UsageError(f"cannot create the folder {base.parent}: {e.strerror}") from None
    for n in range(1, 10_000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
        except OSError as e:
            raise _UsageError(f"cannot create the run folder {out}: {e.strerror}") from None
    raise _UsageError(f"no free run folder name next to {base}; pass --out")


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder that already holds a run."""
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if any((out / f).exists() for f in _RUN_FILES):
        raise _UsageError(f"{out} already holds a run; pass --resume to "
                          "continue it or choose another --out")


def _claim(out: Path | None, cfg: dict) -> tuple[Path, bool, int | None]:
    """Create the run folder (if needed), lock it (:func:`_lock`) and create its config.json,
    exclusively: ``(folder, whether this command created it, the lock)``. Every failure is a
    one-line error."""
    if out is None:
        out, created = _new_folder(cfg), True
    else:
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _UsageError(f"cannot create the run folder {out}: {e.strerror}") from None
    lock = _lock(out)
    try:
        _create_exclusive(out / "config.json", json.dumps(cfg, indent=2))
    except BaseException as e:
        if lock is not None:
            os.close(lock)
        if isinstance(e, FileExistsError):
            raise _UsageError(f"{out} already holds a run; pass --resume to continue it or "
                              "choose another --out") from None
        if isinstance(e, OSError):
            _release(out, created, [])
            raise _UsageError(f"cannot write to the run folder {out}: {e.strerror}") from None
        raise
    return out, created, lock


def _release(out: Path, created: bool, written) -> None:
    """Undo a new run that failed before its first checkpoint: remove the files it wrote, and
    the folder if this command created it and nothing else is in it."""
    for name in written:
        with _suppress_oserror():
            (out / name).unlink()
    if created:
        with _suppress_oserror():
            out.rmdir()  # only succeeds when empty: never removes what others put there


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def _lock(out: Path):
    """Hold an exclusive lock on the run folder while this command trains in it, so a second
    ``train --resume`` of the same folder cannot interleave its checkpoints with ours. The lock
    is ``flock`` on the folder itself (no lock file to clean up) and dies with the process,
    kill -9 included. Returns the descriptor to keep open; None where there is no flock."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders
        return None
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _UsageError(f"{out} is being trained by another hamjax command; wait for it to "
                          "finish or choose another --out") from None
    return fd


def _saved_config(out: Path) -> tuple[dict, dict] | None:
    """``(config, checkpoint header)`` of the run in ``out``: the config comes from the
    checkpoint (what the weights were trained with), or from config.json when no epoch has
    finished yet (header ``{}`` when there is no checkpoint); None when ``out`` holds no run.
    The checkpoint's checksum is verified here, so a corrupt file is reported before anything
    is written."""
    from . import train as T

    ckpt = out / "checkpoint.eqx"
    meta = {}
    if ckpt.exists():
        try:
            meta = T.read_checkpoint_meta(ckpt, verify=True)
        except T.CheckpointError as e:
            raise _UsageError(f"{e}") from None
        if meta.get("config"):
            return dict(meta["config"]), meta
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        try:
            return json.loads(cfg_path.read_text()), meta
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _UsageError(f"{cfg_path} is not valid JSON (edited by hand?)") from None
    return None


def _resumed_config(saved: dict, args, given: set[str], out: Path,
                    meta: dict) -> tuple[dict, list[str]]:
    """The saved config with what ``--resume`` may change applied, and notes for the user; a
    flag that contradicts the run is an error naming both values."""
    new = {k: _normalised(k, v) for k, v in vars(args).items() if k not in _NOT_CONFIG}
    clash = [d for d in sorted(given) if d in new and d not in _RESUMABLE
             and new[d] != saved.get(d)]
    if clash:
        was = " ".join(_flag(d, saved.get(d)) for d in clash)
        now = " ".join(_flag(d, new[d]) for d in clash)
        raise _UsageError(f"{out} was trained with {was}; --resume continues it as it was: "
                          f"drop {now} or choose another --out for a new run")
    cfg = dict(saved)
    for d in _RESUMABLE:
        if d in given:
            cfg[d] = new[d]
    planned = _schedule_ends(saved)
    notes = []
    if cfg["epochs"] < saved["epochs"]:
        raise _UsageError(f"--epochs {cfg['epochs']} is fewer than the {saved['epochs']} the run "
                          f"in {out} was planned for; drop --epochs to finish it")
    if cfg["epochs"] > planned[-1]:
        cfg["schedule"] = planned + [cfg["epochs"]]
        done = int(meta.get("finished_epoch", -1)) + 1
        extra = (f"epoch {cfg['epochs']} follows" if cfg["epochs"] == planned[-1] + 1
                 else f"epochs {planned[-1] + 1}-{cfg['epochs']} follow")
        notes.append(f"--epochs {cfg['epochs']} extends the {planned[-1]}-epoch run in {out} "
                     f"({done} done): its cosine learning rate reaches 0 at epoch "
                     f"{planned[-1]}; {extra} a new cosine from --lr {cfg['lr']} (a warm "
                     f"restart, not the same as training {cfg['epochs']} epochs from the start)")
    return cfg, notes


def _schedule_ends(cfg: dict) -> list[int]:
    """The epochs at which the run's cosine learning-rate segments end (one segment unless
    ``--resume`` extended the run)."""
    return list(cfg.get("schedule") or [cfg["epochs"]])


# ---------------------------------------------------------------------------------- commands
def _train(args, given: set[str]) -> int:
    out = args.out
    saved = None
    notes = []  # printed once every check has passed: a refused command prints one line
    if args.resume:
        if out is None:
            raise _UsageError("--resume needs --out RUN_DIR")
        if out.exists() and not out.is_dir():
            raise _UsageError(f"--out {out} is a file, not a folder")
        saved = _saved_config(out)
        if saved is None:
            notes.append(f"--resume: {out} holds no run; starting a new one")
        elif not saved[1]:
            notes.append(f"--resume: no epoch of the run in {out} had finished; starting it "
                         "from the beginning")
    elif out is not None:
        _check_out(out)
    if saved is None:
        fresh = {k: _normalised(k, v) for k, v in vars(args).items() if k not in _NOT_CONFIG}
        cfg = _defaults(fresh)
        cfg["schedule"] = [cfg["epochs"]]
    else:
        cfg, more = _resumed_config(saved[0], args, given, out, saved[1])
        notes += more
    if cfg["method"] != "bptt" and {"steps", "dt"} & given:
        raise _UsageError(f"--steps and --dt set the relaxation of --method bptt; --method "
                          f"{cfg['method']} relaxes to a steady state (residual 1e-4)")
    data, net, task, method, mesh = _prepare(cfg)

    # everything is checked: only now is anything written
    if saved is None:
        out, created, lock = _claim(out, cfg)
    else:
        created, lock = False, _lock(out)
    for note in notes:
        print(f"hamjax train: note: {note}", file=sys.stderr)
    try:
        if saved is not None:
            try:
                _write_atomic(out / "config.json", json.dumps(cfg, indent=2))
            except OSError as e:
                raise _UsageError(f"cannot write to the run folder {out}: {e.strerror}"
                                  ) from None
        _train_in(out, created, cfg, data, net, task, method, mesh,
                  resume=saved is not None, progress=not args.no_progress)
    finally:
        if lock is not None:
            os.close(lock)  # closing the descriptor releases the lock
    return 0


def _train_in(out: Path, created: bool, cfg: dict, data, net, task, method, mesh, *,
              resume: bool, progress: bool) -> None:
    """Train in the claimed folder ``out``, then write its results."""
    from . import train as T

    ckpt = out / "checkpoint.eqx"
    print(f"hamjax: {cfg['task']} on {data.name} ({data.num_train} train / {data.num_test} test) "
          f"with a {cfg['model']} HAM, {cfg['method']}, {cfg['epochs']} epochs -> {out}",
          flush=True)
    # the untrained model's test loss: the yardstick for "did this run learn anything"
    initial = T.evaluate(net, data.x_test, data.y_test, task, method, seed=cfg["seed"])
    t0 = time.perf_counter()
    try:
        net, history = T.fit(
            net, data, task=task, method=method, optimizer=_optimizer(cfg, data),
            epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=cfg["seed"],
            checkpoint=ckpt, resume=resume, config=cfg, progress=progress, mesh=mesh,
        )
    except (FloatingPointError, T.CheckpointError) as e:
        raise _UsageError(_failed(e, out, ckpt, cfg, created, not resume)) from None
    except KeyboardInterrupt:
        # Ctrl-C is how a run is paused: say how to continue, not where Python was
        kept = _kept(out, ckpt) if ckpt.exists() else "no epoch had finished"
        print(f"\nhamjax train: interrupted; {kept}; hamjax train --out {out} --resume "
              "continues it", file=sys.stderr)
        raise SystemExit(130) from None
    train_seconds = time.perf_counter() - t0
    _finish(out, net, history, initial, train_seconds, task, method, data, cfg)


def _prepare(cfg: dict):
    """Load the data and build the model for ``cfg``, checking what needs the data: the
    batch size and the number of memories against the training set."""
    from .data import DataError

    if cfg["dataset"] == "mnist" and cfg["data_dir"] is None:
        raise _UsageError("--dataset mnist needs --data-dir DIR (a folder "
                          "with the four MNIST IDX files); nothing is downloaded")
    mesh = _mesh(cfg)
    try:
        data = _load_data(cfg)
    except DataError as e:
        raise _UsageError(f"{e}") from None
    limited = " (--limit-train)" if cfg.get("limit_train") else ""
    if cfg["batch_size"] > data.num_train:
        raise _UsageError(f"--batch-size {cfg['batch_size']} exceeds the {data.num_train} "
                          f"training images{limited}; use at most {data.num_train}")
    if cfg["model"] == "memory" and cfg["hidden"][0] > data.num_train:
        raise _UsageError(f"--hidden {cfg['hidden'][0]}: the memory model starts its memories "
                          f"as distinct training images, and there are {data.num_train}"
                          f"{limited}; use --hidden {data.num_train} or fewer")
    net, task, method = _build(cfg, data)
    return data, net, task, method, mesh


def _kept(out: Path, ckpt: Path) -> str:
    """Which checkpoint a stopped run leaves behind."""
    from . import train as T

    done = int(T.read_checkpoint_meta(ckpt).get("finished_epoch", -1)) + 1
    return f"the checkpoint of epoch {done} in {out} is kept"


def _failed(e: Exception, out: Path, ckpt: Path, cfg: dict, created: bool, fresh: bool) -> str:
    """The one-line message for a run that stopped (diverged, or a checkpoint that does not
    fit); a new run (``fresh``: its config.json is this command's) that saved nothing is
    removed, so no half-written folder stays behind."""
    if ckpt.exists():
        kept = _kept(out, ckpt)
    else:
        _release(out, created, ["config.json"] if fresh else [])
        kept = "nothing was saved" + (f" ({out} removed)" if not out.exists() else "")
    if isinstance(e, FloatingPointError):
        return (f"training diverged: {str(e).split(';')[0]}; {kept}; start a new run with a "
                f"lower --lr (now {cfg['lr']:g}) or --dt (now {cfg['dt']:g})")
    return f"{e}; {kept}"


def _finish(out, net, history, initial, train_seconds, task, method, data, cfg) -> None:
    """Write history.csv and metrics.json (atomically, before the pictures, so a picture that
    fails loses no numbers), then the pictures, and report."""
    _write_history(out / "history.csv", history)
    last = history[-1] if history else {}
    metrics = {k: v for k, v in last.items() if k.startswith("test_")}
    metrics.update(
        initial_test_loss=initial["loss"],
        train_seconds=train_seconds,
        epochs=cfg["epochs"],
        steps=(data.num_train // cfg["batch_size"]) * cfg["epochs"],
        seconds_per_epoch=float(sum(h["epoch_seconds"] for h in history) / max(len(history), 1)),
        config=cfg,
    )
    warning = _stalled(metrics, initial, cfg)
    if warning:
        metrics["warning"] = warning
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    pics = _pictures(out, net, task, method, data, cfg)
    metrics["pictures"] = pics
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    _report(metrics, method)
    if warning:
        print(f"hamjax train: warning: {warning}", file=sys.stderr)
    files = [f for f in ("metrics.json", "history.csv", "checkpoint.eqx") if (out / f).is_file()]
    print(f"run folder: {out} ({', '.join(files + pics)})")


def _stalled(metrics: dict, initial: dict, cfg: dict) -> str | None:
    """A warning when the run learned nothing: the test loss did not fall below the untrained
    model's and no test relaxation converged (e.g. --lr 10: chance accuracy, exit 0). A loss
    that rose points at the learning rate; a flat one at too little training as well."""
    loss, before = metrics.get("test_loss"), initial["loss"]
    if loss is None or metrics.get("test_converged", 1.0) > 0:
        return None
    if math.isfinite(loss) and loss < before * (1 - 1e-3):
        return None
    head = "the run did not learn (no test relaxation converged): "
    if not math.isfinite(loss) or loss > before * (1 + 1e-3):
        return (head + f"the test loss rose from {before:.4g} untrained to {loss:.4g}; lower "
                f"--lr (now {cfg['lr']:g})")
    return (head + f"the test loss stayed at {loss:.4g} ({before:.4g} untrained) after "
            f"{metrics['steps']} steps; train longer (--epochs) or change --lr "
            f"(now {cfg['lr']:g})")


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
    # wandering by a percent of accuracy from epoch to epoch. A run extended by --resume gets a
    # second cosine over its new epochs (the first, finished one is kept exactly, so an
    # interrupted run resumes bit for bit)
    per_epoch = data.num_train // cfg["batch_size"]
    ends = _schedule_ends(cfg)
    starts = [0] + ends[:-1]
    parts = [optax.cosine_decay_schedule(cfg["lr"], max(1, per_epoch * (b - a)))
             for a, b in zip(starts, ends, strict=True)]
    schedule = parts[0] if len(parts) == 1 else optax.join_schedules(
        parts, [per_epoch * e for e in ends[:-1]])
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
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for h in history:
        w.writerow(h)
    _write_atomic(path, buf.getvalue())


def _load_run(run_dir: Path, data_dir=None):
    """Rebuild a run's model from the config its checkpoint holds and load the weights."""
    import equinox as eqx

    from . import train as T
    from .data import DataError

    saved = _saved_config(run_dir) if run_dir.is_dir() else None
    if saved is None:  # e.g. a checkpoint written by hamjax.train.fit without a config
        raise _UsageError(f"{run_dir} is not a run folder (no config.json)")
    cfg = saved[0]
    if data_dir is not None:
        cfg["data_dir"] = _normalised("data_dir", data_dir)
    try:
        data = _load_data(cfg)
    except DataError as e:
        raise _UsageError(f"{e} (the data folder this run recorded); pass --data-dir DIR"
                          ) from None
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
    from ._relax import SteadyState, relax

    cfg, data, net, task, method, meta = _load_run(args.run_dir, args.data_dir)
    if args.samples > data.num_test:
        raise _UsageError(f"--samples {args.samples} exceeds the {data.num_test} test images of "
                          f"this run; use at most {data.num_test}")
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
        report.append({
            "sample": i,
            "converged": bool(sol.converged[i]),
            "residual": float(sol.residual[i]),
            "verdict": rep.verdict,
            "reason": rep.reason,
            "dead_neurons": dead,
            "restricted_spectrum_max_real": float(np.max(np.real(spec))) if spec.size else None,
            "restricted_spectrum_min_real": float(np.min(np.real(spec))) if spec.size else None,
            "restricted_spectrum_size": int(spec.size),
        })
    path = args.run_dir / "stability.json"
    try:
        _write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
    except OSError as e:
        raise _UsageError(f"cannot write {path}: {e.strerror}") from None
    print(f"run {args.run_dir} (epoch {int(meta['finished_epoch']) + 1}): {args.samples} test "
          f"images relaxed to residual 1e-5, then the Jacobian at the steady state")
    for entry in report:
        print(_stability_line(entry))
    print(f"details: {path}")
    return 0


def _stability_line(e: dict) -> str:
    """One readable line per analysed sample."""
    state = "converged" if e["converged"] else "NOT converged"
    dead = ", ".join(f"{n} {k}" for k, n in e["dead_neurons"].items()) or "none"
    spec = ""
    if e["restricted_spectrum_size"]:
        spec = (f"; {e['restricted_spectrum_size']} eigenvalues, real parts in "
                f"[{e['restricted_spectrum_min_real']:.3g}, "
                f"{e['restricted_spectrum_max_real']:.3g}]")
    return (f"  sample {e['sample']}: {e['verdict']}, {state} (residual {e['residual']:.2g}); "
            f"dead neurons: {dead}{spec}\n    {e['reason']}")


# ---------------------------------------------------------------------------------- pictures
_SHOWN = 10  # test images in predictions.png, reconstructions.png and energy.png


def _pictures(out: Path, net, task, method, data, cfg) -> list[str]:
    """Write the run's PNGs; return their names."""
    import jax.numpy as jnp
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from ._relax import SteadyState, relax

    # --limit-test may leave fewer than ten test images: show what there is
    k = min(_SHOWN, data.num_test)
    xb, yb = data.x_test[:k], data.y_test[:k]
    batch = {n: jnp.asarray(v) for n, v in
             task.prepare(xb, yb, np.random.default_rng(0), train=False).items()}
    kw = dict(method.relax_kwargs())
    kw.pop("adjoint", None)  # forward only: an implicit adjoint matters only under grad
    if kw.get("method", "ode") == "ode":
        kw_saving = kw
    else:
        # the energy picture follows the dynamics in time: the ODE to the same tolerance (a
        # steady-state method's iterations have no time axis)
        kw_saving = dict(stop=SteadyState(atol=method.tolerance), max_steps=4096)
    x0 = task.initial_state(net, batch)
    sol = relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch), save="energy",
                on_nonfinite="flag", **kw_saving)
    names = []
    if _weights_figure(out / "weights.png", net, cfg, data, sol):
        names.append("weights.png")
    if cfg["task"] == "classify":
        _predictions_figure(out / "predictions.png", net, task, data, xb, yb, sol, kw)
        names.append("predictions.png")
    else:
        _reconstructions_figure(out / "reconstructions.png", net, task, data, xb, batch, sol,
                                cfg)
        names.append("reconstructions.png")
    _energy_figure(out / "energy.png", net, task, batch, x0, sol, cfg)
    names.append("energy.png")
    return names


def _save(fig, path: Path) -> None:
    """Save through a temporary name renamed over ``path`` (no half-drawn PNG), then close."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def _receptive_fields(net, cfg, data, sol):
    """``(images, captions, title, colour-bar label, colour map, symmetric)`` for weights.png:
    what the model's first layer responds to, most used first; None for a model without."""
    import numpy as np

    if cfg["model"] in ("dense", "deep"):
        name = "hidden" if "hidden" in net.layers else "hidden1"
        syn = net.synapses["w1"]
        w = np.asarray(syn.weight).reshape((-1,) + syn.in_shape)[..., 0]
        act = np.asarray(net.layers[name].activation(sol.state[name])).reshape(
            len(sol.state[name]), -1)
        score = act.mean(0)
        order = np.argsort(-score)[:16]
        caps = [f"unit {i}\nḡ={score[i]:.2f}" for i in order]
        title = (f"input weights of the {len(order)} most active of {w.shape[0]} hidden units "
                 f"(ḡ: mean activation over {len(act)} test images)")
        return w[order], caps, title, "weight from pixel to unit", "RdBu_r", True
    if cfg["model"] == "conv":
        k = np.moveaxis(np.asarray(net.synapses["conv"].kernel)[:, :, 0, :], -1, 0)
        act = np.asarray(net.layers["features"].activation(sol.state["features"]))
        score = act.reshape(-1, act.shape[-1]).mean(0)
        order = np.argsort(-score)[:16]
        caps = [f"map {i}\nḡ={score[i]:.2f}" for i in order]
        title = (f"kernels of the {len(order)} most active of {k.shape[0]} feature maps "
                 f"(ḡ: mean activation over test images and positions)")
        return k[order], caps, title, "kernel weight", "RdBu_r", True
    if cfg["model"] == "memory":
        syn = net.synapses["memory"]
        mem = np.asarray(syn.memories)
        # which memory each test image is nearest to (the one its relaxation is drawn to)
        x = np.asarray(data.x_test, np.float32).reshape(data.num_test, -1)
        d = (x ** 2).sum(1)[:, None] - 2 * x @ mem.T + (mem ** 2).sum(1)[None, :]
        uses = np.bincount(np.argmin(d, 1), minlength=len(mem))
        order = np.argsort(-uses, kind="stable")[:16]
        caps = [f"memory {i}\nnearest to {uses[i]}" for i in order]
        title = (f"the {len(order)} of {len(mem)} memories nearest to most of the "
                 f"{data.num_test} test images")
        imgs = mem.reshape((-1,) + syn.shape)[..., 0]
        return imgs[order], caps, title, "pixel value", "gray", False
    return None


def _weights_figure(path: Path, net, cfg, data, sol) -> bool:
    """Receptive fields on one shared, labelled colour scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    fields = _receptive_fields(net, cfg, data, sol)
    if fields is None:
        return False
    imgs, caps, title, label, cmap, symmetric = fields
    cols = min(8, len(imgs))
    rows = int(np.ceil(len(imgs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3 + 1.2, rows * 1.5 + 0.8),
                             squeeze=False, layout="constrained")
    # one scale for every field, so their strengths compare; symmetric around 0 for weights
    hi = float(np.max(np.abs(imgs)) if symmetric else np.max(imgs))
    lo = -hi if symmetric else float(np.min(imgs))
    im = None
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(imgs):
            im = ax.imshow(imgs[i], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(caps[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    _save(fig, path)
    return True


def _predictions_figure(path, net, task, data, xb, yb, sol, kw) -> None:
    """Predicted labels for clean and noisy test images."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from . import data as hd
    from ._relax import relax

    k = len(xb)
    noisy = hd.gaussian_noise(xb, 0.3, np.random.default_rng(1)).images
    nb = {"input": jnp.asarray(noisy), "target": jnp.asarray(yb)}
    sol_noisy = relax(net, task.initial_state(net, nb), clamp=task.clamp, on_nonfinite="flag",
                      **kw)
    pred = np.argmax(np.asarray(sol.state["label"]).reshape(k, -1), -1)
    pred_noisy = np.argmax(np.asarray(sol_noisy.state["label"]).reshape(k, -1), -1)
    fig, axes = plt.subplots(2, k, figsize=(max(k, 4) * 1.1, 2.8), squeeze=False)
    for i in range(k):
        for r, (img, p) in enumerate(((xb[i], pred[i]), (noisy[i], pred_noisy[i]))):
            ax = axes[r, i]
            ax.imshow(np.asarray(img).reshape(data.image_shape)[..., 0], cmap="gray", vmin=0,
                      vmax=1)
            ax.set_title(f"{p}" + ("" if p == yb[i] else f" ({yb[i]})"),
                         color="black" if p == yb[i] else "red", fontsize=9)
            ax.axis("off")
    axes[0, 0].text(-0.3, 0.5, "clean", transform=axes[0, 0].transAxes, ha="right")
    axes[1, 0].text(-0.3, 0.5, "noisy", transform=axes[1, 0].transAxes, ha="right")
    fig.suptitle("predicted label after relaxation (true label in red when wrong)")
    fig.tight_layout()
    _save(fig, path)


def _reconstructions_figure(path, net, task, data, xb, batch, sol, cfg) -> None:
    """Original, corrupted and restored test images, each corrupted and restored one with its
    PSNR, and the means in the title."""
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(xb)
    ev = {n: np.asarray(v) for n, v in task.evaluate(net, sol.state, batch).items()}
    restored = np.asarray(net.layers["image"].activation(sol.state["image"]))
    fig, axes = plt.subplots(3, k, figsize=(max(k, 4) * 1.1, 4.4), squeeze=False)
    rows = ((xb, None), (np.asarray(batch["input"]), ev.get("psnr_input")),
            (restored, ev.get("psnr")))
    for i in range(k):
        for r, (imgs, psnr) in enumerate(rows):
            ax = axes[r, i]
            ax.imshow(np.clip(imgs[i].reshape(data.image_shape)[..., 0], 0, 1), cmap="gray",
                      vmin=0, vmax=1)
            ax.axis("off")
            if psnr is not None:
                ax.set_title(f"{psnr[i]:.1f} dB", fontsize=8)
    for r, lab in enumerate(("original", "corrupted", "restored")):
        axes[r, 0].text(-0.3, 0.5, lab, transform=axes[r, 0].transAxes, ha="right")
    fig.suptitle(_reconstructions_title(ev, cfg, k), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _reconstructions_title(ev: dict, cfg: dict, k: int) -> str:
    """The task, its corruption level and the mean PSNR of the corrupted and restored images."""
    title = f"{cfg['task']} (level {cfg['noise']:g}) on {k} test images"
    if "psnr_input" in ev:
        return title + (f": mean PSNR {ev['psnr_input'].mean():.1f} dB corrupted → "
                        f"{ev['psnr'].mean():.1f} dB restored")
    return title + f": mean PSNR {ev['psnr'].mean():.1f} dB restored"


def _energy_gaps(net, task, batch, x0, sol):
    """``(ts, E(t) − E*, converged, found)``: the energy along the run's own relaxation ``sol``
    above ``E*``, the energy of the steady state an adaptive solve reaches from the same start
    ``x0`` (per sample; ``found`` False where that solve did not converge either), and whether
    ``sol`` itself ended within residual 1e-4. Measuring against the last saved step instead
    would make every curve plunge to zero and an unconverged relaxation look converged."""
    import numpy as np

    from ._relax import SteadyState, relax

    steady = relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch),
                   stop=SteadyState(atol=1e-4), max_steps=20000, on_nonfinite="flag")
    e_star = np.asarray(net.energy(steady.state))
    e = sol.energy_trace()  # (saved steps, samples)
    ts = np.asarray(sol.ts)
    ts = ts[np.isfinite(ts)][: len(e)]
    return ts, e - e_star[None, :], np.asarray(sol.converged), np.asarray(steady.converged)


def _energy_figure(path, net, task, batch, x0, sol, cfg) -> None:
    """``E(t) − E*`` per test image (:func:`_energy_gaps`); relaxations that end above
    residual 1e-4 are dotted and counted in the title."""
    import matplotlib.pyplot as plt

    ts, gap, ok, found = _energy_gaps(net, task, batch, x0, sol)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in range(gap.shape[1]):
        if found[i]:  # without a steady state there is nothing to measure against
            ax.plot(ts, gap[:, i], color=f"C{i % 10}", lw=1.2, ls="-" if ok[i] else ":")
    # E − E* may dip below 0 (the run's Euler relaxation and the adaptive solve land a float
    # tolerance apart), so a symmetric log scale instead of clipping to a positive floor
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("time (units of τ)")
    ax.set_ylabel("E(t) − E*   (E*: steady-state energy)")
    n = gap.shape[1]
    note = [f"{int(ok.sum())} of {n} relaxations reached residual 1e-4 by t = {ts[-1]:.3g}"]
    if not ok.all():
        note.append(f"dotted: the {int((~ok).sum())} that did not")
    if not found.all():
        note.append(f"{int((~found).sum())} without a steady state (not drawn)")
    ax.set_title(f"energy during the {cfg['method']} relaxation, {n} test images\n"
                 + "; ".join(note), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


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
    commands = {"train": lambda: _train(args, _given_flags(argv)),
                "eval": lambda: _eval(args), "analyze": lambda: _analyze(args)}
    try:
        return commands[args.command]()
    except _UsageError as e:
        # exit status 2 as for argparse's own checks, but one line: the problem, not the usage
        parser.exit(2, f"hamjax {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
