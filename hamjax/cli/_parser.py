"""The command line: argparse with one-line errors, number parsing, and the defaults that depend
on the model and task."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

MODELS = ("dense", "deep", "conv", "memory", "transformer")
TASKS = ("classify", "denoise", "complete", "store")
CORRUPTIONS = ("gaussian", "salt_and_pepper", "mask_bottom", "mask_patches", "mask_random")
_TASK_CORRUPTIONS = {"denoise": ("gaussian", "salt_and_pepper"),
                     "complete": ("mask_bottom", "mask_patches", "mask_random")}
GRADIENTS = ("bptt", "implicit", "eqprop")
# the keys of hamjax.data.DATASETS (a test keeps them equal), written out so that the parser
# and --help do not import JAX
DATASETS = ("digits", "mnist", "fashion-mnist", "idx", "cifar10", "cifar100", "cifar100-coarse",
            "folder")


class UsageError(Exception):
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


class _Unknown(argparse.Action):
    """A flag this command does not take, named with the one that does what it meant: a usage
    error (the one-line form of :class:`_Parser`), hidden from the help."""

    def __init__(self, option_strings, dest, instead: str = "", **kw):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"unrecognized argument {option_string}; {self.instead}")


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


def _image_size(s: str) -> list[int]:
    """``H,W`` (or one number for a square) as ``[H, W]``."""
    try:
        sizes = [int(p) for p in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W like 32,32, got {s!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W, two positive sizes, got {s!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The ``hamjax`` parser; ``parser.commands`` maps ``train``, ``eval`` and ``analyze`` to
    their subparsers."""
    p = _Parser(prog="hamjax", description="Hierarchical Associative Memories")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a HAM (default: a dense classifier on digits)",
                       formatter_class=_Help)
    _what_flags(t)
    _training_flags(t)
    _data_flags(t)
    _run_flags(t)

    e = sub.add_parser("eval", help="re-evaluate a saved run", formatter_class=_Help)
    e.add_argument("run_dir", type=Path)
    e.add_argument("--data-dir", type=Path, default=None,
                   help="data folder, when the one the run recorded has moved")

    a = sub.add_parser("analyze", help="stability and dead neurons of a trained run",
                       formatter_class=_Help)
    a.add_argument("run_dir", type=Path)
    a.add_argument("--samples", type=_positive_int, default=3,
                   help="test images to relax and analyse (at most the test set)")
    a.add_argument("--data-dir", type=Path, default=None,
                   help="data folder, when the one the run recorded has moved")

    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks (python -m benchmarks; needs the source tree): "
                        "hamjax bench [--quick|--full] [--out DIR] [--only NAME ...]")
    p.commands = {"train": t, "eval": e, "analyze": a}  # for given_flags
    return p


def _what_flags(t) -> None:
    """``train``: the data, the model, the task and the gradient estimator."""
    t.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's 8x8 digits (bundled); the others are read from "
                        "--data-dir (nothing is downloaded): mnist, fashion-mnist, idx (any set "
                        "in MNIST's four-IDX-file layout), cifar10, cifar100 (fine labels), "
                        "cifar100-coarse (its 20 superclasses), folder (PNG/JPEG images in one "
                        "subfolder per class)")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="the dataset's folder: the four IDX files (gzip or raw) for mnist, "
                        "fashion-mnist and idx; cifar-10-batches-py/ or cifar-100-python/ "
                        "(or the folder holding it) for cifar; for folder, one subfolder of "
                        "images per class, or train/ and test/ holding those")
    t.add_argument("--image-size", type=_image_size, default=None, metavar="H,W",
                   help="--dataset folder: resize every image to H x W (bilinear); without it "
                        "all images must have one size")
    t.add_argument("--model", choices=MODELS, default=None,
                   help="dense (default for classify; for denoise/complete/store: learned "
                        "tanh features, denoise with the noisy image clamped as evidence), "
                        "deep, conv, memory (default otherwise), transformer (Energy "
                        "Transformer; --task complete: masked patches)")
    t.add_argument("--task", choices=TASKS, default="classify",
                   help="classify: read the label layer; denoise, complete, store: restore "
                        "images with a memory or dense model (complete also with --model "
                        "transformer: masked patches)")
    t.add_argument("--gradient", choices=GRADIENTS, default=None,
                   help="gradient estimator: implicit differentiation at the steady state (the "
                        "network is trained and read at its attractor), equilibrium "
                        "propagation (also at the steady state), or backprop through a fixed "
                        "number of relaxation steps (default: implicit; bptt for --model "
                        "transformer, which reads its completion after a few steps of descent)")
    t.add_argument("--method", action=_Unknown,
                   instead="the gradient estimator is chosen by --gradient "
                           f"{{{','.join(GRADIENTS)}}}")


def _training_flags(t) -> None:
    """``train``: the optimiser, the seed, the model's size and its relaxation."""
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
                   help="hidden sizes (dense: 1024; deep: 256,128); channels for conv (32; "
                        "C1,C2,… a hierarchy of conv stages); "
                        "memories for memory (100); transformer: D or D,K, the token width D "
                        "(32, a multiple of its 4 heads) and the Hopfield memories K (4D)")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="relaxation steps for bptt (Euler; dense/conv: 40, deep: 100, memory "
                        "tasks: 10, transformer: 4)")
    t.add_argument("--dt0", type=_positive_float, default=None,
                   help="relaxation step size, dt0 as in hamjax.RelaxOptions (dense/conv: 0.25, "
                        "deep: 0.5, transformer: 0.25; memory tasks: 1.0, where one Euler step "
                        "is the modern Hopfield update v <- ξᵀ softmax(β h))")
    t.add_argument("--dt", action=_Unknown, instead="the step size is --dt0 (dt0, as in "
                                                    "hamjax.RelaxOptions)")
    t.add_argument("--residual-penalty", type=_nonneg_float, default=1.0,
                   help="bptt: weight of mean |τ dx/dt|² at the last step, so the readout sits "
                        "at a fixed point")


def _data_flags(t) -> None:
    """``train``: augmentation, noise and how much of the data to use."""
    t.add_argument("--shift", type=_nonneg_int, default=0,
                   help="classify: translate training images by up to N pixels (augmentation)")
    t.add_argument("--rotate", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="classify: rotate training images by up to ±DEG degrees (augmentation)")
    t.add_argument("--zoom", type=_nonneg_float, default=0.0, metavar="F",
                   help="classify: scale training images by 1±F (augmentation)")
    t.add_argument("--elastic", type=_nonneg_float, default=0.0, metavar="ALPHA",
                   help="classify: elastic distortions of strength ALPHA (Simard et al. 2003; "
                        "34 on MNIST), smoothed over 4 pixels (augmentation)")
    t.add_argument("--flip", action="store_true",
                   help="classify: mirror training images left to right with probability 1/2 "
                        "(augmentation for Fashion-MNIST or CIFAR, not digits)")
    t.add_argument("--noise", type=_nonneg_float, default=None,
                   help="classify: training input noise std (0.1); denoise: corruption level "
                        "(0.3); complete: hidden fraction (0.5; transformer: of the patches); "
                        "store: noise (0.1)")
    t.add_argument("--corruption", choices=CORRUPTIONS, default=None,
                   help="denoise: gaussian (default) or salt_and_pepper; complete: mask_bottom "
                        "(default: the bottom rows), mask_patches (4x4 patches) or "
                        "mask_random (pixels); --noise is its level")
    t.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick trials)")
    t.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="evaluate on only the first N test images (quick trials)")


def _run_flags(t) -> None:
    """``train``: the run folder, resuming, the progress bar and the devices."""
    t.add_argument("--out", type=Path, default=None,
                   help="run folder (default: a new "
                        "runs/<dataset>-<task>-<model>-<gradient>-<time>)")
    t.add_argument("--resume", action="store_true",
                   help="continue --out's run from its checkpoint, with the config it was "
                        "started with (only --epochs, --data-dir and --devices may change)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="data parallelism over the first N devices: each batch is split over "
                        "them, parameters replicated (--batch-size must be a multiple of N). "
                        "On a CPU, create N host devices by setting "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N before running")
    t.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="several processes (one per host): join the run whose process 0 listens "
                        "at HOST:PORT; with --num-processes and --process-id. Each batch is "
                        "split over every device of every process (python -m hamjax.launch "
                        "starts N processes on this machine)")
    t.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                   help="the number of processes of the run (with --coordinator)")
    t.add_argument("--process-id", type=_nonneg_int, default=None, metavar="I",
                   help="this process's rank in [0, N) (with --coordinator); process 0 prints "
                        "and writes the run folder, which all processes must see")
    t.add_argument("--distributed", action="store_true",
                   help="several processes, the coordinator, count and rank read from the "
                        "cluster's environment (SLURM, Open MPI, Cloud TPU)")
    t.add_argument("--join-timeout", type=_positive_float, default=120.0, metavar="S",
                   help="seconds to wait for every process to join before giving up")


def given_flags(argv) -> set[str]:
    """The ``train`` options written on the command line (not defaulted): parsed again with
    every default replaced by a marker, so ``--model dense`` counts even though it is the
    default."""
    parser = build_parser()
    unset = object()
    train = parser.commands["train"]
    train.set_defaults(**{a.dest: unset for a in train._actions
                          if a.dest not in ("help", argparse.SUPPRESS)})
    return {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}


def defaults(cfg: dict) -> dict:
    """``cfg`` with the defaults that depend on the model and task filled in; a model that
    cannot do the task is a :class:`UsageError`."""
    cfg = dict(cfg)
    if cfg.get("model") is None:
        cfg["model"] = "dense" if cfg["task"] == "classify" else "memory"
    if cfg.get("gradient") is None:
        cfg["gradient"] = "bptt" if cfg["model"] == "transformer" else "implicit"
    augment = [f for f in ("shift", "rotate", "zoom", "elastic", "flip") if cfg.get(f)]
    if augment and cfg["task"] != "classify":
        raise UsageError(f"--{augment[0]} augments the training images of --task classify; "
                         f"--task {cfg['task']} corrupts its images with --noise instead")
    if cfg.get("rotate", 0) > 180 or cfg.get("zoom", 0) >= 1:
        raise UsageError(f"--rotate must be at most 180 degrees and --zoom below 1; got "
                         f"{cfg.get('rotate', 0):g} and {cfg.get('zoom', 0):g}")
    if cfg["task"] == "classify" and cfg["model"] == "memory":
        raise UsageError("--model memory has no label layer; use it with "
                         "--task denoise, complete or store")
    kinds = _TASK_CORRUPTIONS.get(cfg["task"], ())
    if cfg.get("corruption") is not None and (cfg["corruption"] not in kinds
                                             or cfg["model"] == "transformer"):
        takes = (f"--task {cfg['task']} takes --corruption {' or '.join(kinds)}" if kinds
                 and cfg["model"] != "transformer" else
                 f"--task {cfg['task']}" + (" --model transformer" if kinds else "")
                 + " takes no --corruption")
        raise UsageError(f"--corruption {cfg['corruption']}: {takes}")
    if cfg.get("corruption") is None and kinds and cfg["model"] != "transformer":
        cfg["corruption"] = kinds[0]
    if cfg["model"] == "transformer":
        _transformer_defaults(cfg)
    elif cfg["task"] != "classify" and cfg["model"] not in ("memory", "dense"):
        raise UsageError(f"--task {cfg['task']} needs --model memory or dense "
                         "(their image layer is free)")
    if cfg.get("hidden") is None:
        cfg["hidden"] = {"dense": (1024,), "deep": (256, 128), "conv": (32,),
                         "memory": (100,)}[cfg["model"]]
    if cfg.get("epochs") is None:
        cfg["epochs"] = 30 if cfg["task"] == "classify" else 10
    # T = steps·dt0: a deep chain takes longer to settle, so it gets more and longer steps. The
    # steady-state estimators take neither (a config records only what takes effect)
    if cfg.get("gradient", "bptt") != "bptt":
        cfg["steps"] = cfg["dt0"] = None
    if cfg.get("steps") is None and cfg.get("gradient", "bptt") == "bptt":
        cfg["steps"] = {"memory": 10, "deep": 100}.get(cfg["model"], 40)
    if cfg.get("dt0") is None and cfg.get("gradient", "bptt") == "bptt":
        cfg["dt0"] = {"memory": 1.0, "deep": 0.5}.get(cfg["model"], 0.25)
    if cfg.get("noise") is None:
        cfg["noise"] = {"classify": 0.1, "denoise": 0.3, "complete": 0.5, "store": 0.1}[
            cfg["task"]]
    cfg["hidden"] = list(cfg["hidden"])
    return cfg


def _transformer_defaults(cfg: dict) -> None:
    """``--model transformer``: masked patch completion only; token width 32 (``--hidden D`` or
    ``D,K``, ``D`` a multiple of the 4 heads), 4 Euler steps of 0.25 (the Energy Transformer's
    few steps of descent on the energy, read out on the way: BPTT's cost grows with the steps,
    and the completion need not wait for the steady state)."""
    if cfg["task"] != "complete":
        raise UsageError(f"--model transformer does masked patch completion; use --task "
                         f"complete (not {cfg['task']})")
    hidden = cfg.get("hidden") or (32,)
    if len(hidden) > 2 or hidden[0] % 4:
        raise UsageError(f"--hidden {','.join(map(str, hidden))}: the transformer takes D or "
                         "D,K (token width D, a multiple of its 4 heads; K Hopfield memories)")
    cfg["hidden"] = hidden
    cfg.setdefault("steps", None)
    cfg.setdefault("dt0", None)
    if cfg["steps"] is None:
        cfg["steps"] = 4
    if cfg["dt0"] is None:
        cfg["dt0"] = 0.25
