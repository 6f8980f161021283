"""Quality: the training results the README quotes, each from one ``hamjax train`` command.

Every run is the command a user types, executed in a fresh Python process
(``python -m hamjax.cli train ARGS --out TMP``, this checkout's ``hamjax`` first on the path) and
timed by the wall clock around that process: start-up, compilation, training, evaluation and
pictures. Its run folder's ``metrics.json``, ``config.json`` and ``history.csv`` are read back.

Tiers: ``tiny`` (tests: one digits run of one epoch on a few images), ``quick`` (the digits runs
of the README: ``hamjax train``, ``--model deep``, ``--gradient implicit``, ``--gradient
eqprop``, ``--task denoise``) and ``full`` (quick + the MNIST runs, which need the MNIST folder:
``--data-dir`` or the project's shared copy; without it they are skipped with a note).

Each run writes ``<out>/quality/<name>.json`` (schema in :func:`record`) and copies its three
text files to ``<out>/quality/runs/<name>/``. Both are replaced only once the new run has
finished and its record is complete (temporary names, then renames), so an interrupted run
leaves the previous record as it was. A run that fails is recorded as failed, with the tail of
its stderr, and the next run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common as C

NAME = "quality"
ROOT = Path(__file__).resolve().parent.parent  # the checkout whose hamjax is measured
RUN_FILES = ("metrics.json", "config.json", "history.csv")  # small text: the record keeps them
STDERR_TAIL = 2000  # characters of a failed run's stderr kept in its record


@dataclasses.dataclass(frozen=True)
class Spec:
    """One quoted result: ``hamjax train *args``. ``name`` is the stable slug of its files,
    ``title`` the README's task column, ``description`` the architecture and settings in words,
    ``anchor`` the published numbers it answers (with their sources), shown beside it;
    ``seeds``: further seeds the same command is run with (``--seed S``), whose headline
    figures the record keeps beside seed 0's, so that a row on a small test set shows its
    spread; ``target``: the headline figure the project aims at (issue 24), shown beside the
    result with whether it was met."""

    name: str
    title: str
    description: str
    args: tuple[str, ...]
    anchor: str = ""
    seeds: tuple[int, ...] = ()
    target: float | None = None


_DENSE = "dense HAM {n}-{h}-10 (identity image, ReLU hidden, softmax label)"
_BPTT = "BPTT through {steps} Euler steps of {dt}"
_ADAM = ("Adam, peak learning rate 1e-3 on a cosine to 0, batch {b}, training input noise "
         "{noise}{aug}")
_IMPLICIT = ("implicit differentiation at the steady state (fixed-point forward to residual "
             "1e-4, Neumann-series adjoint)")
_EQPROP = ("equilibrium propagation at the steady state (beta 0.05, symmetric nudges by the "
           "negative log-likelihood linearised at the free state, free phase to residual 1e-4, "
           "nudged phases to 1e-5)")
_MNIST_AUG = ("; training images rotated by up to 10 degrees, scaled by 1±0.1 and shifted by up "
              "to 1 pixel")
_FASHION_AUG = "; training images mirrored with probability 1/2 and shifted by up to 1 pixel"
_CONV = ("conv HAM: {c} ReLU feature maps from a 5x5 kernel at stride 2 (12x12), dense softmax "
         "readout")
_CONV2 = ("conv HAM, two stages: {c1} ReLU feature maps from a 5x5 kernel at stride 2 (12x12), "
          "{c2} tanh maps from a 3x3 kernel at stride 2 over them (5x5), dense softmax readout")
_FULL_SET = "; the complete set (60,000 training images), the official 10,000 test images"

# the published numbers the rows answer (issue 24's anchors)
_A_MNIST_DENSE = ("Dense Associative Memory 0.984 (Krotov & Hopfield 2016); EqProp 0.97–0.98 "
                  "(Scellier & Bengio 2017); monDEQ fully connected 0.981 (Winston & Kolter "
                  "2020); MLP 0.972 (Xiao et al. 2017)")
_A_MNIST_EQPROP = "EqProp, 1–3 hidden layers: 0.97–0.98 (Scellier & Bengio 2017)"
_A_MNIST_CONV = ("monDEQ single convolution 0.991 (Winston & Kolter 2020); two-conv CNNs "
                 "0.992–0.993 (Fashion-MNIST benchmark)")
_A_FASHION_DENSE = "MLP 0.871, SVC (RBF) 0.897 (Xiao et al. 2017)"
_A_FASHION_CONV = "two-conv CNNs 0.916–0.925 (Fashion-MNIST benchmark)"


def _digits() -> list[Spec]:
    dense = _DENSE.format(n=64, h=1024)
    adam = _ADAM.format(b=32, noise=0.1, aug="")
    return [
        Spec("digits-dense-implicit",
             "digits classification (the default: trained at the steady state)",
             f"{dense}; {_IMPLICIT}; {adam}; scikit-learn 8x8 digits", (), seeds=(1, 2),
             target=0.97),
        Spec("digits-dense-bptt", "digits classification, BPTT",
             f"{dense}; {_BPTT.format(steps=40, dt=0.25)}, residual penalty 1; {adam}; "
             "scikit-learn 8x8 digits", ("--gradient", "bptt")),
        Spec("digits-deep-implicit", "digits, deep dense",
             "deep dense HAM 64-256-128-10 (tanh hidden layers, softmax label); "
             f"{_IMPLICIT}; {adam}; scikit-learn 8x8 digits", ("--model", "deep")),
        Spec("digits-dense-eqprop", "digits classification, equilibrium propagation",
             f"{dense}; {_EQPROP}; {adam}; scikit-learn 8x8 digits",
             ("--gradient", "eqprop")),
        Spec("digits-denoise-memory", "digits denoising, Gaussian σ = 0.3",
             "memory model: 100 memories started as training images, distance similarity, "
             f"{_IMPLICIT}; Adam 1e-3 cosine, batch 32; "
             "corruption: Gaussian noise of std 0.3 clipped to [0, 1]; scikit-learn 8x8 digits",
             ("--task", "denoise")),
    ]


def _mnist(data_dir: Path) -> list[Spec]:
    d = str(data_dir)
    mnist = ("--dataset", "mnist", "--data-dir", d)
    aug = ("--rotate", "10", "--zoom", "0.1", "--shift", "1")
    dense_args = (*mnist, "--hidden", "1024", *aug, "--batch-size", "64", "--epochs", "40")
    dense = _DENSE.format(n=784, h=1024)
    adam = _ADAM.format(b=64, noise=0.1, aug=_MNIST_AUG)
    one_epoch = ("equal budgets: one epoch on the first 10,240 training images, batch 32, "
                 "dense HAM 784-2048-10")
    return [
        Spec("mnist-dense-implicit", "MNIST classification, dense",
             f"{dense}; {_IMPLICIT}; {adam}{_FULL_SET}", dense_args, _A_MNIST_DENSE, target=0.988),
        Spec("mnist-dense-eqprop", "MNIST classification, dense, equilibrium propagation",
             f"{dense}; {_EQPROP}; {adam}{_FULL_SET}",
             (*dense_args, "--gradient", "eqprop"), _A_MNIST_EQPROP, target=0.985),
        Spec("mnist-conv-implicit", "MNIST classification, conv",
             f"{_CONV.format(c=64)}; {_IMPLICIT}; {adam}{_FULL_SET}",
             (*mnist, "--model", "conv", "--hidden", "64", *aug, "--batch-size", "64",
              "--epochs", "15"), _A_MNIST_CONV, target=0.991),
        Spec("mnist-dense-implicit-h2048-1epoch",
             "MNIST, 2048 hidden, one epoch on 10,240 images, implicit",
             f"{one_epoch}; {_IMPLICIT}",
             (*mnist, "--hidden", "2048", "--limit-train", "10240", "--epochs", "1"),
             "EqProp's yardstick: the same budget, implicit differentiation"),
        Spec("mnist-dense-eqprop-h2048-1epoch",
             "MNIST, 2048 hidden, one epoch on 10,240 images, equilibrium propagation",
             f"{one_epoch}; {_EQPROP}",
             (*mnist, "--hidden", "2048", "--limit-train", "10240", "--epochs", "1",
              "--gradient", "eqprop"),
             "within 0.5 points of the implicit row above (issue 24)"),
        Spec("mnist-complete-transformer", "MNIST masked patch completion, Energy Transformer",
             "Energy Transformer: 49 tokens (4x4 patches) of width 32, 4 attention heads of 8, "
             "128 ReLU Hopfield memories per token, tied linear patch encoder/decoder, learned "
             "mask token and positions, all one energy; half the patches masked per image; "
             "BPTT through 4 Euler steps of 0.25; Adam 3e-3 cosine, batch 64; baselines on the "
             "same masks: training mean image, nearest of 10,000 training images by the "
             f"visible patches{_FULL_SET}",
             (*mnist, "--model", "transformer", "--task", "complete", "--lr", "3e-3",
              "--residual-penalty", "0", "--batch-size", "64", "--epochs", "7")),
        Spec("mnist-denoise-memory", "MNIST denoising, Gaussian σ = 0.3",
             "memory model: 1000 memories started as training images, distance similarity, "
             f"{_IMPLICIT}; Adam 1e-3 cosine, batch 64; "
             f"corruption: Gaussian noise of std 0.3 clipped to [0, 1]{_FULL_SET}",
             (*mnist, "--task", "denoise", "--hidden", "1000", "--batch-size", "64",
              "--epochs", "3")),
        Spec("mnist-denoise-dense", "MNIST denoising, Gaussian σ = 0.3, dense memory",
             "hj.models.dense_memory: 1024 tanh features, the noisy image clamped as evidence "
             f"(docs/maths.md §6.4); {_IMPLICIT}; Adam 1e-3 cosine, batch 64; corruption: "
             f"Gaussian noise of std 0.3 clipped to [0, 1]{_FULL_SET}",
             (*mnist, "--task", "denoise", "--model", "dense", "--batch-size", "64",
              "--epochs", "8"),
             "the baselines of the memory table below, on the same corruption: nearest "
             "training image, PCA, a modern Hopfield network storing the training set"),
    ]


def _fashion(data_dir: Path) -> list[Spec]:
    fashion = ("--dataset", "fashion-mnist", "--data-dir", str(data_dir))
    aug = ("--flip", "--shift", "1")
    adam = _ADAM.format(b=64, noise=0.1, aug=_FASHION_AUG)
    # Fashion-MNIST's classes differ in fine texture that input noise blurs: the dense row,
    # which underfits with it (train accuracy 0.899), trains without
    quiet = _ADAM.format(b=64, noise=0, aug=_FASHION_AUG)
    return [
        Spec("fashion-mnist-dense-implicit", "Fashion-MNIST classification, dense",
             f"{_DENSE.format(n=784, h=1024)}; {_IMPLICIT}; {quiet}{_FULL_SET}",
             (*fashion, "--hidden", "1024", *aug, "--noise", "0", "--batch-size", "64",
              "--epochs", "40"),
             _A_FASHION_DENSE, target=0.90),
        Spec("fashion-mnist-conv-implicit", "Fashion-MNIST classification, conv",
             f"{_CONV.format(c=64)}; {_IMPLICIT}; {adam}{_FULL_SET}",
             (*fashion, "--model", "conv", "--hidden", "64", *aug, "--batch-size", "64",
              "--epochs", "15"), _A_FASHION_CONV, target=0.915),
        Spec("fashion-mnist-conv-implicit-two-stages",
             "Fashion-MNIST classification, two conv stages",
             f"{_CONV2.format(c1=32, c2=64)}; {_IMPLICIT}; {quiet}{_FULL_SET}",
             (*fashion, "--model", "conv", "--hidden", "32,64", *aug, "--noise", "0",
              "--batch-size", "64", "--epochs", "6"), _A_FASHION_CONV, target=0.915),
    ]


def _tiny() -> list[Spec]:
    return [Spec("tiny-digits-dense-implicit", "digits classification (tiny check)",
                 "dense HAM 64-16-10 (ReLU hidden, softmax label); implicit differentiation at "
                 "the steady state; one epoch on 64 training and 32 test digits: checks the "
                 "pipeline, not a result",
                 ("--hidden", "16", "--epochs", "1", "--limit-train", "64",
                  "--limit-test", "32"), seeds=(1,))]


def every_spec() -> list[Spec]:
    """Every run of the full tier, whether or not its data is here (names, order, anchors)."""
    return _digits() + _mnist(Path("mnist")) + _fashion(Path("fashion-mnist"))


def fashion_dir(data_dir: Path | None) -> Path | None:
    """The Fashion-MNIST folder beside the MNIST one (the shared layout ``data/mnist``,
    ``data/fashion-mnist``), when it holds the test images."""
    if data_dir is None:
        return None
    cand = Path(data_dir).resolve().parent / "fashion-mnist"
    return cand if any((cand / f).exists() for f in ("t10k-images-idx3-ubyte.gz",
                                                     "t10k-images-idx3-ubyte")) else None


def specs(tier: str, data_dir: Path | None) -> list[Spec]:
    """The runs of ``tier``; the MNIST runs of ``full`` only when ``data_dir`` (MNIST's folder)
    is given, and the Fashion-MNIST runs when its folder stands beside it."""
    if tier not in C.TIERS:
        raise ValueError(f"tier must be one of {C.TIERS}, got {tier!r}")
    if tier == "tiny":
        return _tiny()
    runs = _digits()
    if tier == "full" and data_dir is not None:
        runs += _mnist(Path(data_dir).resolve())
        fashion = fashion_dir(data_dir)
        if fashion is not None:
            runs += _fashion(fashion)
    return runs


def command(spec: Spec) -> str:
    """The command as a user types it from the repository root (no ``--out``): a data folder
    is written relative to the root, as the README writes ``../shared/data/mnist``."""
    shown = []
    for i, a in enumerate(spec.args):
        if i and spec.args[i - 1] == "--data-dir":
            a = os.path.relpath(a, ROOT)
        shown.append(a)
    return shlex.join(["hamjax", "train", *shown])


def parse(args) -> dict:
    """The config ``hamjax train *args`` runs with (the CLI's own parser and defaults);
    raises ``ValueError`` naming the problem when the CLI would refuse the flags."""
    from hamjax.cli import UsageError, train_config

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return train_config(list(args))
    except SystemExit:
        raise ValueError(err.getvalue().strip() or f"hamjax train {shlex.join(args)}: "
                         "refused by the parser") from None
    except UsageError as e:
        raise ValueError(f"hamjax train: {e}") from None


# ------------------------------------------------------------------------------ one run
def _execute(argv: list[str], cwd: Path) -> tuple[int, float, str]:
    """Run ``argv`` in ``cwd`` with this checkout first on ``PYTHONPATH``: ``(exit status, wall
    seconds, stderr)``. Output goes to files, not pipes: a long run's progress bar is large."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, check=False)
        wall = time.perf_counter() - t0
    return proc.returncode, wall, (cwd / "stderr.txt").read_text(errors="replace")


def _argv(spec: Spec, run_dir: Path, *extra: str) -> list[str]:
    """``hamjax train`` with ``spec``'s flags (then ``extra``) into ``run_dir``, in this Python."""
    return [sys.executable, "-m", "hamjax.cli", "train", *spec.args, *extra, "--out",
            str(run_dir)]


def run_files(run_dir: Path) -> tuple[dict, dict]:
    """The ``metrics.json`` and ``config.json`` a run wrote (``{}`` for a missing one)."""
    return tuple(json.loads((run_dir / f).read_text()) if (run_dir / f).is_file() else {}
                 for f in ("metrics.json", "config.json"))


def _tail(text: str, n: int = STDERR_TAIL) -> str:
    """The last ``n`` characters of ``text`` as a terminal shows them: a progress bar redraws
    its line with carriage returns, so only each line's last drawing is kept."""
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(ln for ln in lines if ln.strip())[-n:]


def shown_stdout(text: str, run_dir: Path, keep: int = 2) -> str:
    """What the command printed, as the README shows it: the temporary run folder written
    ``runs/...``, and the epochs between the first ``keep`` lines and the last three elided."""
    lines = _tail(text, len(text)).replace(str(run_dir), "runs/...").splitlines()
    if len(lines) > keep + 4:
        lines = lines[:keep] + ["..."] + lines[-3:]
    return "\n".join(lines) + "\n"


def headline(metrics: dict, task: str | None) -> dict:
    """The figure the README quotes: ``test_accuracy`` (classify) or ``test_psnr`` with the
    corrupted input's ``test_psnr_input`` as ``baseline`` (image tasks; for masked patch
    completion the nearest training image's ``test_psnr_nearest``, with the training mean's
    ``test_psnr_mean_fill`` as ``mean_fill``). ``value`` is None when the metrics lack it."""
    if task == "classify" or (task is None and "test_accuracy" in metrics):
        return {"name": "test_accuracy", "value": metrics.get("test_accuracy")}
    if task is None and "test_psnr" not in metrics:  # a run refused before it had a config
        return {"name": None, "value": None}
    h = {"name": "test_psnr", "value": metrics.get("test_psnr")}
    if "test_psnr_nearest" in metrics:
        # masked completion: the no-network fill to beat is the nearest training image's
        h["baseline"] = metrics["test_psnr_nearest"]
        h["baseline_name"] = "test_psnr_nearest"
        h["mean_fill"] = metrics.get("test_psnr_mean_fill")
    elif "test_psnr_input" in metrics:
        h["baseline"] = metrics["test_psnr_input"]
        h["baseline_name"] = "test_psnr_input"
    return h


def record(spec: Spec, tier: str, run_dir: Path, returncode: int, wall: float, stderr: str,
           started: str, load: tuple[float, float], machine: dict, git: dict) -> dict:
    """The result file of one run::

        {"name", "title", "description", "anchor", "command", "argv", "tier", "seed", "epochs",
         "task",
         "dataset", "model", "gradient", "started", "wall_s", "train_seconds", "returncode",
         "metrics", "headline": {"name", "value"[, "baseline", "baseline_name", "mean_fill"]},
         "converged",
         "loadavg": [before, after], "machine", "git_commit", "git_dirty", "status": "ok" |
         "failed", "error": None | why, "stderr_tail": None | the failed run's stderr}

    The run's identity (seed, epochs, task, ...) comes from the config.json it wrote, or from
    the CLI's parser when it wrote none; a run that exits 0 without its headline figure is
    failed too."""
    error = None
    metrics, cfg = run_files(run_dir)
    if not cfg:
        with contextlib.suppress(ValueError):
            cfg = parse(spec.args)
    head = headline(metrics, cfg.get("task"))
    if returncode != 0:
        error = f"exit status {returncode}"
    elif not metrics:
        error = "no metrics.json in the run folder"
    elif not isinstance(head["value"], int | float) or not math.isfinite(head["value"]):
        error = f"metrics.json has no finite {head['name']}"
    train_s = metrics.get("train_seconds")
    return {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description,
        "anchor": spec.anchor,
        "command": command(spec),
        "argv": ["hamjax", "train", *spec.args],
        "tier": tier,
        "seed": cfg.get("seed"),
        "epochs": cfg.get("epochs"),
        "task": cfg.get("task"),
        "dataset": cfg.get("dataset"),
        "model": cfg.get("model"),
        "gradient": cfg.get("gradient"),
        "started": started,
        "wall_s": wall,
        "train_seconds": train_s,
        "returncode": returncode,
        "metrics": metrics,
        "headline": head,
        "converged": metrics.get("test_converged"),
        "loadavg": list(load),
        "machine": machine,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "status": "failed" if error else "ok",
        "error": error,
        "stderr_tail": _tail(stderr) if error else None,
    }


def _serialise(rec: dict) -> str:
    return json.dumps(rec, indent=1, ensure_ascii=False) + "\n"


def commit(qdir: Path, rec: dict, run_dir: Path) -> Path:
    """Write ``rec`` to ``qdir/<name>.json`` and the run's text files to ``qdir/runs/<name>/``.
    Everything is staged under temporary names first; the old record is replaced only when the
    new one is complete (the folder is swapped, then the JSON renamed over the old one)."""
    name = rec["name"]
    runs = qdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    final_json, final_dir = qdir / f"{name}.json", runs / name
    tmp_json = staged = old = None  # old: the previous record's folder, moved aside
    swapped = False
    try:
        fd, tmp_json = tempfile.mkstemp(dir=qdir, prefix=f".{name}.", suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            f.write(_serialise(rec))
        staged = Path(tempfile.mkdtemp(dir=runs, prefix=f".{name}.", suffix=".tmp"))
        for fname in RUN_FILES:
            if (run_dir / fname).is_file():
                shutil.copyfile(run_dir / fname, staged / fname)
        # a folder cannot be renamed over a non-empty one: move the old aside first
        if final_dir.exists():
            old = Path(tempfile.mkdtemp(dir=runs, prefix=f".{name}.", suffix=".old"))
            os.replace(final_dir, old / name)
        os.replace(staged, final_dir)
        swapped = True
        os.replace(tmp_json, final_json)
    except BaseException:
        # put the previous record's folder back: the JSON and its files stay a pair
        if swapped:
            os.replace(final_dir, staged)
        if old is not None and (old / name).exists():
            os.replace(old / name, final_dir)
        if tmp_json is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_json)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final_json


def run_one(spec: Spec, cfg: C.Config, machine: dict, git: dict) -> dict:
    """Run ``spec`` in a fresh process into a temporary folder, then commit its record."""
    qdir = cfg.out
    qdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"hamjax-quality-{spec.name}-") as tmp:
        tmp = Path(tmp)
        run_dir = tmp / "run"
        started = C.now()
        before = os.getloadavg()[0]
        code, wall, stderr = _execute(_argv(spec, run_dir), tmp)
        after = os.getloadavg()[0]
        rec = record(spec, cfg.tier, run_dir, code, wall, stderr, started, (before, after),
                     machine, git)
        rec["stdout_tail"] = shown_stdout((tmp / "stdout.txt").read_text(errors="replace"),
                                          run_dir)
        rec["other_seeds"] = [other_seed(spec, s, tmp) for s in spec.seeds]
        commit(qdir, rec, run_dir)
    return rec


def other_seed(spec: Spec, seed: int, tmp: Path) -> dict:
    """``spec``'s command again with ``--seed seed``: ``{"seed", "value", "converged",
    "wall_s", "status"}`` (``value``: its headline figure; ``status`` "failed" with no value
    when the run did not produce one)."""
    run_dir = tmp / f"seed-{seed}"
    code, wall, _ = _execute(_argv(spec, run_dir, "--seed", str(seed)), tmp)
    metrics, cfg = run_files(run_dir)
    value = headline(metrics, cfg.get("task"))["value"]
    ok = code == 0 and isinstance(value, int | float) and math.isfinite(value)
    return {"seed": seed, "value": value if ok else None,
            "converged": metrics.get("test_converged"), "wall_s": wall,
            "status": "ok" if ok else "failed"}


def git_state() -> dict:
    """The checkout's commit and whether tracked files differ from it (None outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


# ------------------------------------------------------------------------------ the section
def _fmt_headline(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"failed ({rec['error']})"
    h = rec["headline"]
    if h["name"] == "test_psnr":
        what = "nearest" if h.get("baseline_name") == "test_psnr_nearest" else "input"
        base = f" ({what} {h['baseline']:.2f} dB)" if "baseline" in h else ""
        return f"PSNR {h['value']:.2f} dB{base}"
    return f"accuracy {h['value']:.4f}"


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def run(cfg: C.Config) -> dict:
    data_dir = cfg.data_dir or C.default_data_dir()
    notes = [f"tier {cfg.tier}: " + {
        "tiny": "one tiny digits run (checks the pipeline; not a result)",
        "quick": "the digits runs the README quotes",
        "full": "the digits, MNIST and Fashion-MNIST runs the README quotes"}[cfg.tier]]
    if cfg.tier == "full" and data_dir is None:
        notes.append("MNIST not found (pass --data-dir DIR with the four IDX files): the MNIST "
                     "runs were skipped")
    machine, git = C.machine(), git_state()
    rows, data = [], {}
    chosen = specs(cfg.tier, data_dir)
    if cfg.runs is not None:
        known = [s.name for s in chosen]
        unknown = [n for n in cfg.runs if n not in known]
        if unknown:
            raise ValueError(f"--runs {' '.join(unknown)}: the {cfg.tier} tier runs "
                             f"{', '.join(known)}")
        chosen = [s for s in chosen if s.name in cfg.runs]
        notes.append(f"only {', '.join(cfg.runs)} (--runs); the other records were kept")
    for spec in chosen:
        print(f"[quality] {command(spec)}", flush=True)
        rec = run_one(spec, cfg, machine, git)
        data[spec.name] = {k: v for k, v in rec.items() if k != "machine"}
        print(f"[quality] {spec.name}: {_fmt_headline(rec)}, {rec['wall_s']:.1f} s", flush=True)
        rows.append([rec["title"], f"`{rec['command']}`", _fmt_headline(rec),
                     _fmt(rec["converged"], ".3f"), rec["epochs"], C.fmt_time(rec["wall_s"]),
                     C.fmt_time(rec["train_seconds"])])
        if rec["status"] != "ok":
            notes.append(f"{spec.name} failed ({rec['error']}): {rec['stderr_tail'][-300:]}")
        elif rec["metrics"].get("warning"):
            notes.append(f"{spec.name}: {rec['metrics']['warning']}")
    notes.append(f"one file per run in {NAME}/<name>.json, the run's metrics.json, config.json "
                 f"and history.csv in {NAME}/runs/<name>/; wall time is the whole command "
                 "(start-up, compilation and pictures included)")
    tab = C.table(f"Training results ({cfg.tier} tier): one `hamjax train` command each",
                  ["task", "command", "headline", "converged", "epochs", "wall time",
                   "train seconds"], rows)
    sec = C.section([tab], data, notes)
    failed = [n for n, r in data.items() if r["status"] != "ok"]
    if failed:  # recorded and reported, and the suite's exit status says so
        sec["error"] = f"runs failed: {', '.join(failed)}"
    return sec
