"""Tests for the ``hamjax`` command, called in-process (``hamjax.cli.main([...])``) with tiny
settings: train writes a complete run folder, eval re-evaluates it, --resume continues it, bad
flags fail the way argparse does, and a tiny MNIST run works when the files are present.

One classification run is shared by the module (compiling the relaxation dominates the time);
tests that change a run work on a copy of its folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hamjax import cli  # noqa: E402
from hamjax import data as hd  # noqa: E402
from hamjax.cli import _build, _commands, _figures, _parser, _runs  # noqa: E402

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
HAVE_MNIST = MNIST_DIR.is_dir() and all(
    (MNIST_DIR / f"{name}.gz").is_file() or (MNIST_DIR / name).is_file()
    for name in hd.MNIST_FILES.values())

TINY = ["--hidden", "8", "--limit-train", "128", "--limit-test", "64",
        "--no-progress"]
# the run most tests share: BPTT through 5 steps (a transient, far from the steady state, which
# the pictures' tests need); the default estimator, Implicit, runs in the tests that use TINY
BPTT5 = ["--gradient", "bptt", "--steps", "5"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(out: Path, *extra: str) -> int:
    return cli.main(["train", "--epochs", "1", *TINY, *BPTT5, "--out", str(out), *extra])


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_pngs(run: Path, names) -> None:
    for name in names:
        path = run / name
        raw = path.read_bytes()
        assert raw[:8] == PNG_SIGNATURE, name
        assert len(raw) > 2000, (name, len(raw))  # a real picture, not an empty canvas
        img = plt.imread(path)
        assert img.ndim == 3 and min(img.shape[:2]) >= 100, (name, img.shape)
        assert float(np.std(img[..., :3])) > 0.01, name  # something is drawn


@pytest.fixture(scope="module")
def _run(tmp_path_factory):
    """A one-epoch classification run on 128 digits (a dense HAM, 8 hidden units, 5 steps):
    its folder and what it printed."""
    out = tmp_path_factory.mktemp("cli") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _train(out) == 0
    return out, printed.getvalue()


@pytest.fixture
def run(_run):
    return _run[0]


@pytest.fixture
def run_output(_run):
    return _run[1]


# ------------------------------------------------------------------------------------------
# train / eval / resume


def test_train_writes_a_complete_run_folder(run):
    for name in ("metrics.json", "history.csv", "checkpoint.eqx", "config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["train_seconds"] > 0
    assert metrics["steps"] == 128 // 32  # one epoch of the default batch size 32
    cfg = metrics["config"]
    assert cfg == json.loads((run / "config.json").read_text())
    assert (cfg["dataset"], cfg["model"], cfg["task"], cfg["gradient"]) == (
        "digits", "dense", "classify", "bptt")
    assert (cfg["hidden"], cfg["steps"], cfg["epochs"], cfg["limit_train"]) == ([8], 5, 1, 128)
    rows = _history(run)
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert float(rows[0]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    pictures = metrics["pictures"]
    assert {"weights.png", "energy.png"} <= set(pictures)
    _check_pngs(run, pictures)


def test_train_prints_the_test_accuracy(run, run_output):
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in run_output
    assert "128 train / 64 test" in run_output and str(run) in run_output


def test_train_into_an_existing_run_folder_errors(run, capsys):
    before = (run / "checkpoint.eqx").read_bytes()
    _, msg = _fails(["train", "--epochs", "1", *TINY, "--out", str(run)], capsys)
    assert "already holds a run" in msg and "--resume" in msg and str(run) in msg
    assert (run / "checkpoint.eqx").read_bytes() == before


def test_eval_reprints_the_saved_accuracy(run, capsys):
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in out
    printed = json.loads(out[out.index("{"):])
    assert printed["test_accuracy"] == metrics["test_accuracy"]
    assert printed["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)


def test_resume_continues_at_the_next_epoch(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    first = _history(run)[0]
    assert cli.main(["train", "--epochs", "2", *TINY, "--out", str(copy), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1:" not in out and "epoch 2:" in out  # epoch 1 was not trained again
    rows = _history(copy)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == first  # the first epoch's record comes from the checkpoint, unchanged
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 2
    assert metrics["test_accuracy"] == pytest.approx(float(rows[1]["test_accuracy"]))


@pytest.mark.slow
def test_denoising_run_writes_reconstructions_and_psnr(tmp_path):
    out = tmp_path / "denoise"
    assert cli.main(["train", "--model", "memory", "--task", "denoise", "--epochs", "1", *TINY,
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_psnr"]) and metrics["test_psnr"] > 0
    # σ = 0.3 Gaussian noise clipped to [0, 1] on digits: about 13 dB
    assert 11.0 < metrics["test_psnr_input"] < 15.0
    assert metrics["test_mse"] > 0 and "test_accuracy" not in metrics
    assert "reconstructions.png" in metrics["pictures"]
    _check_pngs(out, metrics["pictures"])
    assert metrics["config"]["noise"] == 0.3  # the denoising default corruption level
    # analyze measures the learned memories' basins: from a memory itself (σ = 0) the
    # relaxation ends at that memory's attractor, every time
    assert cli.main(["analyze", str(out), "--samples", "1"]) == 0
    basins = json.loads((out / "basins.json").read_text())
    assert basins["mean"][0] == 1.0 and basins["noise_sigma"][0] == 0.0
    assert len(basins["radius"]) == basins["memories"] and basins["trials"] >= 1
    assert all(0.0 <= p <= 1.0 for p in basins["mean"])
    _check_pngs(out, ["basins.png", "landscape.png"])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST IDX files not found in {MNIST_DIR}")
def test_tiny_mnist_run(tmp_path, capsys):
    out = tmp_path / "mnist"
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--epochs", "1",
                     "--hidden", "8", "--limit-train", "256",
                     "--limit-test", "128", "--no-progress", "--out", str(out)]) == 0
    assert "256 train / 128 test" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert Path(metrics["config"]["data_dir"]) == Path(MNIST_DIR).resolve()  # absolute
    _check_pngs(out, metrics["pictures"])


# ------------------------------------------------------------------------------------------
# errors


def _fails(argv, capsys):
    """Run ``argv``; it must exit with status 2 and one line on stderr, no traceback (argparse's
    checks and the command's own alike). Returns (status, that line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    code = e.value.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("hamjax") and "error: " in err and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize("argv, flag", [
    (["train", "--model", "vit"], "--model"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--batch-size", "abc"], "--batch-size"),
    (["train", "--hidden", "8,x"], "--hidden"),
    (["train", "--task", "dream"], "--task"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay"),
    (["train", "--shift", "-1"], "--shift"),
    (["train", "--rotate", "-5"], "--rotate"),
    (["train", "--lr", "inf"], "--lr"),  # passes `v > 0`, then trains to NaN
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--dt0", "inf"], "--dt0"),
    (["train", "--dt", "0.1"], "--dt0"),
    (["train", "--noise", "-1"], "--noise"),
    (["train", "--residual-penalty", "-1"], "--residual-penalty"),
    (["train", "--epochs", "0"], "--epochs"),  # would train nothing yet write a run
    (["train", "--method", "bptt"], "--gradient"),  # the flag that chooses the estimator
    (["train", "--method=implicit"], "--gradient"),
    (["analyze", "r", "--samples", "0"], "--samples"),
    (["frobnicate"], "frobnicate"),
    ([], "command"),
    (["eval"], "run_dir"),
])
def test_bad_flags_are_argparse_errors(argv, flag, capsys):
    code, err = _fails(argv, capsys)
    assert code == 2
    assert "error:" in err and flag in err and "--help" in err


def test_mnist_without_data_dir_errors(capsys, tmp_path):
    _, msg = _fails(["train", "--dataset", "mnist", "--out", str(tmp_path / "r")], capsys)
    assert "--data-dir" in msg and "mnist" in msg
    assert not (tmp_path / "r").exists()


def test_mnist_with_a_missing_data_dir_names_it(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    _, msg = _fails(["train", "--dataset", "mnist", "--data-dir", str(missing),
                     "--out", str(tmp_path / "r")], capsys)
    assert str(missing) in msg


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "memory"], ["--model memory", "--task"]),
    (["train", "--task", "denoise", "--model", "deep"],
     ["--task denoise", "--model memory or dense"]),
    (["train", "--resume"], ["--resume", "--out"]),
    (["train", "--gradient", "implicit", "--steps", "5"],
     ["--steps", "--gradient bptt", "--gradient implicit"]),
])
def test_inconsistent_flags_error(argv, words, capsys):
    _, msg = _fails(argv, capsys)
    for w in words:
        assert w in msg, (w, msg)


def test_eval_of_a_folder_that_is_not_a_run_errors(run, tmp_path, capsys):
    _, msg = _fails(["eval", str(tmp_path)], capsys)
    assert "not a run folder" in msg and str(tmp_path) in msg
    # a checkpoint without a config (hamjax.train.fit's own, config=None) is not a run either
    from hamjax import train as T

    cfg, data, net, task, gradient, _ = _commands.load_run(run)
    bare = tmp_path / "bare"
    bare.mkdir()
    opt = _build.optimizer(cfg, data)
    import equinox as eqx

    T.save_checkpoint(bare / "checkpoint.eqx", net,
                      opt.init(eqx.filter(net, eqx.is_inexact_array)), {"finished_epoch": 0})
    _, msg = _fails(["eval", str(bare)], capsys)
    assert "not a run folder" in msg and str(bare) in msg


# ------------------------------------------------------------------------------------------
# a run is never lost, a mistake is one line, a silent failure is named


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _snapshot(folder: Path) -> dict:
    """Every file of ``folder`` and its bytes: to show a command changed nothing."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("flags, words, absent", [
    (["--model", "deep"], ["--model dense", "--model deep"], []),
    (["--hidden", "16", "--lr", "0.01"], ["--hidden 8", "--lr 0.001", "--hidden 16", "--lr 0.01"],
     ["--model"]),
    (["--model", "dense", "--hidden", "9"], ["--hidden 8", "--hidden 9"], ["--model"]),
])
def test_resume_with_conflicting_flags_changes_nothing(run, tmp_path, capsys, flags, words,
                                                       absent):
    """The checkpoint's config is the run's, and a --resume flag that contradicts it is
    refused before anything is written, so eval and analyze of the folder keep working
    (--model dense counts although it is the default)."""
    copy = _copy(run, tmp_path)
    before = _snapshot(copy)
    _, msg = _fails(["train", "--out", str(copy), "--resume", "--no-progress", *flags], capsys)
    for w in words:
        assert w in msg, (w, msg)
    for w in absent:  # a flag that agrees with the run is not named
        assert w not in msg, (w, msg)
    assert _snapshot(copy) == before


def test_resume_takes_the_config_from_the_checkpoint(run, tmp_path, capsys):
    """`train --out DIR --resume --epochs 2` with none of the run's flags (it was trained with
    --hidden 8, --steps 5, --limit-* ...): the model is rebuilt from the checkpoint's config;
    extending the run says that the learning-rate schedule restarts."""
    copy = _copy(run, tmp_path)
    assert cli.main(["train", "--out", str(copy), "--resume", "--epochs", "2",
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "epoch 1:" not in captured.out and "epoch 2:" in captured.out
    assert "extends the 1-epoch run" in captured.err and "warm restart" in captured.err
    cfg = json.loads((copy / "config.json").read_text())
    assert (cfg["hidden"], cfg["steps"], cfg["limit_train"], cfg["epochs"]) == ([8], 5, 128, 2)
    assert cfg["schedule"] == [1, 2]
    assert [r["epoch"] for r in _history(copy)] == ["1", "2"]
    assert cli.main(["eval", str(copy)]) == 0  # the folder still evaluates


def test_an_extended_run_restarts_the_cosine_schedule_and_keeps_the_first():
    """The schedule of a run extended from 3 to 5 epochs: identical to the 3-epoch cosine for
    the first 3 epochs (so an interrupted run resumes bit for bit), then a new cosine from
    --lr over epochs 4-5 (documented by the note checked above, not a silent jump)."""
    import jax.numpy as jnp
    import optax

    data = hd.load_digits(seed=0)
    per_epoch = data.num_train // 32
    cfg = {"lr": 1e-3, "batch_size": 32, "epochs": 5, "schedule": [3, 5]}
    opt = _build.optimizer(cfg, data)
    plain = optax.cosine_decay_schedule(1e-3, 3 * per_epoch)
    lrs = []
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    for _ in range(5 * per_epoch):  # Adam's step is -lr·sign(g) on its first steps: read lr
        upd, state = opt.update({"w": jnp.ones(())}, state, params)
        lrs.append(-float(upd["w"]))
    lrs = np.array(lrs)
    first = np.array([float(plain(i)) for i in range(3 * per_epoch)])
    np.testing.assert_allclose(lrs[: 3 * per_epoch], first, rtol=1e-4, atol=1e-12)
    assert lrs[3 * per_epoch - 1] < 1e-5 and lrs[3 * per_epoch] == pytest.approx(1e-3, rel=1e-3)
    assert lrs[-1] < 1e-5


def test_default_run_folders_are_unique(tmp_path, monkeypatch):
    """Names have one-second resolution: runs started in the same second get -2, -3 ... and
    the folder is created by mkdir (atomic), never shared."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_runs.time, "strftime", lambda fmt: "20260101-000000")
    cfg = {"dataset": "digits", "task": "classify", "model": "dense", "gradient": "bptt"}
    made = [_runs.new_folder(cfg) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert [p.name for p in made] == [f"digits-classify-dense-bptt-20260101-000000{s}"
                                      for s in ("", "-2", "-3")]
    # two commands claiming one --out: while the first trains, its lock stops the second;
    # after it, its config.json does
    _, created, lock = _runs.claim(tmp_path / "shared", dict(cfg, epochs=1))
    assert created
    with pytest.raises(_parser.UsageError, match="being trained by another hamjax command"):
        _runs.claim(tmp_path / "shared", dict(cfg, epochs=2))
    os.close(lock)
    with pytest.raises(_parser.UsageError, match="already holds a run"):
        _runs.claim(tmp_path / "shared", dict(cfg, epochs=2))
    assert json.loads((tmp_path / "shared" / "config.json").read_text())["epochs"] == 1


def test_resume_of_a_folder_in_training_is_refused(run, tmp_path, capsys):
    """A second `train --resume` of a folder another command is training in would interleave
    checkpoints; the folder lock refuses it, and nothing is written."""
    copy = _copy(run, tmp_path)
    before = _snapshot(copy)
    lock = _runs.lock(copy)
    try:
        _, msg = _fails(["train", "--out", str(copy), "--resume", "--epochs", "2"], capsys)
    finally:
        os.close(lock)
    assert f"{copy} is being trained by another hamjax command" in msg
    assert _snapshot(copy) == before


@pytest.mark.parametrize("damage, word", [("flip", "is corrupt"), ("cut", "is truncated")])
def test_a_damaged_checkpoint_is_named_by_eval_and_resume(run, tmp_path, capsys, damage, word):
    """Flipped bytes in the weights and a cut-off file are each named as such by eval (not a
    NaN loss with exit 0, nor an error blaming the config), and --resume writes nothing."""
    copy = _copy(run, tmp_path)
    ckpt = copy / "checkpoint.eqx"
    raw = bytearray(ckpt.read_bytes())
    start = raw.index(b"\n") + 100
    if damage == "flip":
        raw[start : start + 64] = bytes(b ^ 0x5A for b in raw[start : start + 64])
    else:
        raw = raw[:start]
    ckpt.write_bytes(bytes(raw))
    before = _snapshot(copy)
    _, msg = _fails(["eval", str(copy)], capsys)
    assert word in msg and str(ckpt) in msg
    _, msg = _fails(["train", "--out", str(copy), "--resume", "--epochs", "2"], capsys)
    assert word in msg
    assert _snapshot(copy) == before


def test_resume_with_fewer_epochs_than_planned_is_refused(tmp_path):
    """--epochs below the run's own would end it mid-schedule: refused, naming both."""
    saved = _parser.defaults({"dataset": "digits", "task": "classify", "model": None,
                           "epochs": 5, "hidden": None, "steps": None, "dt0": None,
                           "noise": None, "lr": 1e-3})
    args = _parser.build_parser().parse_args(["train", "--epochs", "3", "--resume"])
    with pytest.raises(_parser.UsageError, match="--epochs 3 is fewer than the 5 the run"):
        _runs.resumed_config(saved, args, {"epochs", "resume"}, tmp_path, {})
    cfg, notes = _runs.resumed_config(saved, _parser.build_parser().parse_args(
        ["train", "--epochs", "8", "--resume"]), {"epochs", "resume"}, tmp_path, {})
    assert cfg["schedule"] == [5, 8] and "epochs 6-8 follow a new cosine" in notes[0]


def test_a_run_that_records_method_reads_as_gradient(run, tmp_path, capsys):
    """Run folders written before the flags --gradient and --dt0 record the estimator as
    ``method`` and the step as ``dt``: the saved config reads them as ``gradient`` and ``dt0``,
    so eval works and --resume compares them with the flags."""
    from hamjax import train as T

    copy = _copy(run, tmp_path)
    ckpt = copy / "checkpoint.eqx"
    raw = ckpt.read_bytes()
    cut = raw.index(b"\n")
    meta = json.loads(raw[:cut])
    meta["config"]["method"] = meta["config"].pop("gradient")
    meta["config"]["dt"] = meta["config"].pop("dt0")  # and --dt0 was --dt
    ckpt.write_bytes(json.dumps(meta).encode() + raw[cut:])
    T.verify_checkpoint(ckpt)
    cfg, _ = _runs.saved_config(copy)
    assert cfg["gradient"] == "bptt" and "method" not in cfg
    assert cfg["dt0"] == 0.25 and "dt" not in cfg
    _, msg = _fails(["train", "--out", str(copy), "--resume", "--gradient", "eqprop"], capsys)
    assert "was trained with --gradient bptt" in msg and "drop --gradient eqprop" in msg
    assert cli.main(["eval", str(copy)]) == 0


def test_python_m_hamjax_cli_runs_the_command():
    """``python -m hamjax.cli`` is the ``hamjax`` command (here: its one-line usage error)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hamjax.cli", "train", "--method", "eqprop"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])})
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr == ("hamjax train: error: unrecognized argument --method; the gradient "
                        "estimator is chosen by --gradient {bptt,implicit,eqprop} (see hamjax "
                        "train --help)\n")


def test_eval_of_a_run_whose_data_folder_moved_is_one_line(run, tmp_path, capsys):
    """A run whose recorded data folder is not found (a relative folder, seen from elsewhere):
    simulated by pointing an (MNIST) run's checkpoint config at a relative folder, eval names
    it and says to pass --data-dir."""
    from hamjax import train as T

    copy = _copy(run, tmp_path)
    ckpt = copy / "checkpoint.eqx"
    raw = ckpt.read_bytes()
    cut = raw.index(b"\n")
    meta = json.loads(raw[:cut])
    meta["config"].update(dataset="mnist", data_dir="data/mnist")
    ckpt.write_bytes(json.dumps(meta).encode() + raw[cut:])
    T.verify_checkpoint(ckpt)  # the weights' checksum still holds: only the folder is wrong
    _, msg = _fails(["eval", str(copy)], capsys)
    assert "data/mnist" in msg and "pass --data-dir DIR" in msg


def test_mistakes_are_one_line_and_write_nothing(run, tmp_path, capsys):
    """Each ordinary mistake: exit 2, one line naming the problem, no folder or file made."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out = tmp_path / "new"
    cases = [
        (["--batch-size", "200", "--out", str(out)],
         ["--batch-size 200 exceeds the 128 training images", "at most 128"]),
        (["--task", "denoise", "--hidden", "200", "--out", str(out)],
         ["--hidden 200", "there are 128", "--hidden 128 or fewer"]),
        (["--out", str(a_file)], [str(a_file), "is a file"]),
        (["--out", str(a_file / "run")], ["cannot create the run folder", str(a_file)]),
        (["--out", str(run)], ["already holds a run", "--resume"]),
    ]
    for flags, words in cases:
        _, msg = _fails(["train", "--epochs", "1", *TINY, *flags], capsys)
        for w in words:
            assert w in msg, (w, msg)
        assert not out.exists(), flags
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _, msg = _fails(["train", "--epochs", "1", *TINY, "--out", str(ro)], capsys)
        assert "cannot write to the run folder" in msg and str(ro) in msg
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_a_diverged_run_is_one_line_and_removes_its_folder(tmp_path, capsys):
    """--lr 1e30: the loss is NaN in the first epoch. One line says so (no FloatingPointError
    traceback) and the new folder, which held only config.json, is removed."""
    out = tmp_path / "diverged"
    _, msg = _fails(["train", "--epochs", "1", *TINY, *BPTT5, "--lr", "1e30", "--out",
                     str(out)], capsys)
    assert "training diverged" in msg and "nan" in msg and "--lr" in msg
    assert "nothing was saved" in msg and not out.exists()
    # into an existing empty folder: the folder is the user's and stays, config.json goes
    out.mkdir()
    _, msg = _fails(["train", "--epochs", "1", *TINY, *BPTT5, "--lr", "1e30", "--out",
                     str(out)], capsys)
    assert "nothing was saved" in msg and "removed" not in msg
    assert out.is_dir() and list(out.iterdir()) == []


def test_divergence_after_an_epoch_keeps_its_checkpoint(run, tmp_path, capsys, monkeypatch):
    """A loss that turns NaN in epoch 2 of a resumed run: the message names the checkpoint
    that is kept (epoch 1), and that checkpoint is untouched."""
    from hamjax import train as T

    copy = _copy(run, tmp_path)
    before = (copy / "checkpoint.eqx").read_bytes()

    def nan_in_epoch_2(*a, **kw):
        raise FloatingPointError("training loss became nan at epoch 2, step 3; lower the "
                                 "learning rate or the relaxation step")

    monkeypatch.setattr(T, "fit", nan_in_epoch_2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--out", str(copy), "--resume", "--epochs", "2"])
    assert e.value.code == 2
    note, msg = capsys.readouterr().err.splitlines()  # the extension note, then the error
    assert "extends the 1-epoch run" in note and msg.startswith("hamjax train: error: ")
    assert "training diverged: training loss became nan at epoch 2, step 3" in msg
    assert f"the checkpoint of epoch 1 in {copy} is kept" in msg
    assert (copy / "checkpoint.eqx").read_bytes() == before


def test_ctrl_c_says_how_to_continue(run, tmp_path, capsys, monkeypatch):
    """Ctrl-C during training: exit 130 and a line naming the kept checkpoint and the resume
    command, instead of a KeyboardInterrupt traceback."""
    from hamjax import train as T

    copy = _copy(run, tmp_path)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "fit", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--out", str(copy), "--resume", "--epochs", "2"])
    assert e.value.code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"hamjax train: interrupted; the checkpoint of epoch 1 in {copy} is kept; "
                    f"hamjax train --out {copy} --resume continues it")


def test_a_stalled_run_says_so(tmp_path, capsys):
    """--lr 10 trains to chance with no relaxation converging: a warning says the run did not
    learn (and metrics.json records it), though the exit status is 0. --resume into a folder
    that does not exist says it starts a new run."""
    out = tmp_path / "stalled"
    assert cli.main(["train", "--epochs", "1", *TINY, *BPTT5, "--lr", "10", "--out", str(out),
                     "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"--resume: {out} holds no run; starting a new one" in err
    assert "warning: the run went wrong" in err and "lower --lr (now 10)" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_loss"] > metrics["initial_test_loss"] * 1.5
    assert "went wrong" in metrics["warning"] and "rose" in metrics["warning"]


def test_stall_warning_cases():
    """Rose (learning rate), flat (too little training), fell (no warning), and any converged
    relaxation (no warning)."""
    cfg, before = {"lr": 0.5}, {"loss": 2.0}
    rose = _commands.stalled({"test_loss": 9.0, "test_converged": 0.0, "steps": 4}, before, cfg)
    assert "rose from 2 untrained to 9" in rose and "lower --lr (now 0.5)" in rose
    nan = _commands.stalled({"test_loss": float("nan"), "test_converged": 0.0, "steps": 4}, before,
                       cfg)
    assert "rose" in nan
    flat = _commands.stalled({"test_loss": 1.9995, "test_converged": 0.0, "steps": 4}, before, cfg)
    assert "stayed at 2" in flat and "after 4 steps" in flat and "--epochs" in flat
    fell = {"test_loss": 1.9, "test_converged": 0.0, "steps": 4}
    assert _commands.stalled(fell, before, cfg) is None
    # every relaxation converged and yet the run means nothing: said all the same
    far = _commands.stalled({"test_loss": 3.5, "test_converged": 1.0, "steps": 4}, before, cfg)
    assert "went wrong" in far and "rose from 2 untrained to 3.5" in far
    below = {"test_loss": 1.9, "test_accuracy": 0.05, "test_converged": 1.0, "steps": 4}
    said = _commands.stalled(below, before, cfg, 10, 10_000)
    assert "below chance: test accuracy 0.0500 < 1/10" in said and "10000 test images" in said
    # a little worse (not 1.5x); above chance; below it by less than two standard errors of 64
    # guesses (0.05 > 0.1 − 2·0.0375): no warning
    for quiet, n in (({"test_loss": 2.9, "test_converged": 0.1, "steps": 4}, 10_000),
                     ({"test_loss": 1.9, "test_accuracy": 0.11, "test_converged": 1.0,
                       "steps": 4}, 10_000), (below, 64)):
        assert _commands.stalled(quiet, before, cfg, 10, n) is None


def test_a_training_set_of_one_class_is_refused(tmp_path, capsys):
    """An image folder with a single class: refused before any training, in one line, by the
    command line (exit 2) and by fit (DataError, a ValueError); nothing is written."""
    import jax
    from PIL import Image

    import hamjax as hj

    (tmp_path / "one" / "cats").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(
            tmp_path / "one" / "cats" / f"{i}.png")
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "one"),
                  "--epochs", "1", "--batch-size", "2", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "every training label is class 0" in err[0] and "two classes" in err[0]
    assert not out.exists()
    data = hd.load_image_folder(tmp_path / "one", test_fraction=0.34, seed=0)
    net = hj.models.dense_classifier(data.image_shape, 2, hidden=4, key=jax.random.PRNGKey(0))
    with pytest.raises(hd.DataError, match="two classes"):
        hj.train.fit(net, data, epochs=1, batch_size=2, progress=False, verbose=False)


def test_the_tiny_run_has_no_stall_warning(run, run_output):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_loss"] < metrics["initial_test_loss"] and "warning" not in metrics


@pytest.mark.slow
def test_few_test_images_and_a_relative_data_dir(tmp_path, capsys, monkeypatch):
    """--limit-test 2: the pictures show the two test images there are; the data folder is
    recorded absolute (eval from elsewhere finds it); analyze refuses more samples than test
    images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)  # a tiny set in MNIST's IDX layout
    for name, shape in (("train_images", (70, 8, 8)), ("train_labels", (70,)),
                        ("test_images", (4, 8, 8)), ("test_labels", (4,))):
        hd.write_idx(tmp_path / "data" / hd.MNIST_FILES[name],
                     rng.integers(0, 10 if "labels" in name else 256, shape, dtype=np.uint8))
    assert cli.main(["train", "--dataset", "idx", "--epochs", "1", "--hidden", "8",
                     "--limit-train", "64", "--limit-test", "2", "--no-progress",
                     "--data-dir", "data", "--out", "small"]) == 0
    out = tmp_path / "small"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["data_dir"] == str(tmp_path / "data")
    _check_pngs(out, metrics["pictures"])
    assert "64 train / 2 test" in capsys.readouterr().out
    _, msg = _fails(["analyze", "small", "--samples", "3"], capsys)
    assert "--samples 3 exceeds the 2 test images" in msg
    assert not (out / "stability.json").exists()


def test_analyze_prints_a_readable_summary(run, tmp_path, capsys):
    """One line per sample (verdict, convergence, dead neurons, spectrum) and its reason, not
    raw JSON with an escaped τ; the JSON goes to the run folder."""
    copy = _copy(run, tmp_path)
    capsys.readouterr()
    assert cli.main(["analyze", str(copy), "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((copy / "stability.json").read_text(encoding="utf-8"))
    assert [r["sample"] for r in report] == [0, 1]
    for r in report:
        assert f"sample {r['sample']}: {r['verdict']}, " in printed
        assert r["reason"] in printed
    assert "{" not in printed and "\\u" not in printed
    assert f"details: {copy / 'stability.json'}" in printed
    assert f"landscape: {copy / 'landscape.png'}" in printed
    assert (copy / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if any("τ" in r["reason"] for r in report):
        assert "τ" in (copy / "stability.json").read_text(encoding="utf-8")


def test_help_shows_defaults_and_describes_every_option():
    text = _parser.build_parser().commands["train"].format_help()
    flat = " ".join(text.split())
    for default in ("--batch-size BATCH_SIZE training images per step (at most the training set) "
                    "(default: 32)", "(default: 0.001)", "(default: digits)",
                    "(default: implicit;"):
        assert default in flat, default
    assert "--limit-train N use only the first N training images" in flat
    assert "--limit-test N evaluate on only the first N test images" in flat
    for action in _parser.build_parser().commands["train"]._actions:
        assert action.help, action.dest


def test_weights_figure_shows_the_most_active_units(run):
    """weights.png: the receptive fields of the most active hidden units, most active first,
    each captioned with its unit and mean activation, on one colour scale."""
    cfg, data, net, task, gradient, _ = _commands.load_run(run)
    import jax.numpy as jnp

    from hamjax import relax

    batch = {k: jnp.asarray(v) for k, v in
             task.prepare(data.x_test[:10], data.y_test[:10], None, train=False).items()}
    sol = relax(net, task.initial_state(net, batch), clamp=task.clamp, raise_nonfinite=False,
                **gradient.relax_kwargs())
    imgs, caps, title, label, cmap, symmetric = _figures.receptive_fields(net, cfg, data, sol)
    act = np.asarray(net.layers["hidden"].activation(sol.state["hidden"])).mean(0)
    order = np.argsort(-act)
    assert [int(c.split()[1]) for c in caps] == list(order[: len(caps)])
    w = np.asarray(net.synapses["w1"].weight).reshape(-1, 8, 8)
    np.testing.assert_array_equal(imgs, w[order[: len(caps)]])
    assert "most active" in title and label and symmetric


def test_energy_baseline_is_the_steady_state(run):
    """energy.png measures E(t) against the steady state of an adaptive solve: the tiny run's
    5 Euler steps end well above it (none converged); measured against E at the last step,
    every curve would end at 0."""
    import jax.numpy as jnp

    from hamjax import SaveAt, relax

    cfg, data, net, task, gradient, _ = _commands.load_run(run)
    batch = {k: jnp.asarray(v) for k, v in
             task.prepare(data.x_test[:10], data.y_test[:10], None, train=False).items()}
    x0 = task.initial_state(net, batch)
    kw = gradient.relax_kwargs()
    kw.pop("adjoint", None)  # as energy.png relaxes them: its compiled solves are reused
    sol = relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch), save=SaveAt(energy=True),
                raise_nonfinite=False, **kw)
    ts, gap, ok, found = _figures.energy_gaps(net, task, batch, x0, sol)
    assert found.all() and not ok.any()
    assert np.all(gap[-1] > 1e-4)  # not converged: visibly above the steady state
    assert np.all(np.diff(gap, axis=0) <= 1e-6)  # and falling (a Lyapunov function)
    assert len(ts) == len(gap) and ts[-1] == pytest.approx(5 * cfg["dt0"])


def test_reconstructions_title_names_the_task_and_psnr():
    ev = {"psnr": np.array([15.0, 17.0]), "psnr_input": np.array([12.0, 13.0])}
    title = _figures.reconstructions_title(ev, {"task": "denoise", "noise": 0.3}, 2)
    assert title == ("denoise (level 0.3) on 2 test images: mean PSNR 12.5 dB corrupted → "
                     "16.0 dB restored")


def test_a_diverged_steady_state_run_names_only_its_own_flags(tmp_path):
    """The divergence message suggests --dt0 only where the run has one (BPTT); a steady-state
    run records none, and formatting it must not fail."""
    out = tmp_path / "run"
    out.mkdir()
    e = FloatingPointError("training loss became nan at epoch 1, step 2; lower the rate")
    msg = _commands._failed(e, out, out / "checkpoint.eqx", {"lr": 1e-3, "dt0": None}, False,
                            False)
    assert "lower --lr (now 0.001)" in msg and "--dt0" not in msg
    msg = _commands._failed(e, out, out / "checkpoint.eqx", {"lr": 1e-3, "dt0": 0.25}, False,
                            False)
    assert "or --dt0 (now 0.25)" in msg


def test_commands_keep_compiled_programs_in_the_folder_asked_for(tmp_path, monkeypatch, capsys):
    """HAMJAX_COMPILATION_CACHE names the folder of JAX's persistent compilation cache (made if
    missing); ``off`` keeps none; a folder that cannot be written is said in one line and the
    command goes on without it; a folder set for JAX itself is left alone."""
    import jax

    from hamjax.cli import _main

    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("HAMJAX_COMPILATION_CACHE", "off")
        _main._persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
        blocked = tmp_path / "file"
        blocked.write_text("")
        monkeypatch.setenv("HAMJAX_COMPILATION_CACHE", str(blocked / "cache"))
        _main._persistent_compilation_cache()
        err = capsys.readouterr().err
        assert jax.config.jax_compilation_cache_dir is None
        assert err.count("\n") == 1 and "cannot write" in err and str(blocked) in err
        monkeypatch.setenv("HAMJAX_COMPILATION_CACHE", str(tmp_path / "new" / "cache"))
        _main._persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "new" / "cache")
        assert (tmp_path / "new" / "cache").is_dir()
        monkeypatch.setenv("HAMJAX_COMPILATION_CACHE", str(tmp_path / "other"))
        _main._persistent_compilation_cache()  # JAX's own setting stands
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "new" / "cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("task, evidence", [("denoise", True), ("complete", False),
                                            ("store", False)])
def test_dense_model_restores_images_with_evidence_for_denoising(task, evidence):
    """``--model dense`` on an image task is hamjax.models.dense_memory: for denoising the noisy
    image is clamped on its evidence layer (the task names it), for completion and storage
    there is none (the frozen pixels, or nothing, are the evidence)."""
    cfg = _parser.defaults({"dataset": "digits", "task": task, "model": "dense", "hidden": [16],
                            "epochs": None, "steps": None, "dt0": None, "noise": None,
                            "lr": 1e-3, "seed": 0, "gradient": None})
    digits = hd.load_digits()
    net, t, _ = _build.build(cfg, digits)
    assert ("evidence" in net.layers) is evidence and net.layers["hidden"].shape == (16,)
    assert t.clamp == (("evidence",) if evidence else ())
    assert "label" not in net.layers
    # weights.png shows the image-to-feature weights of the most active features
    import types

    import jax.numpy as jnp

    batch = {k: jnp.asarray(v) for k, v in
             t.prepare(digits.x_test[:4], None, np.random.default_rng(0), train=False).items()}
    sol = types.SimpleNamespace(state=t.initial_state(net, batch))
    images, captions, *_ = _figures.receptive_fields(net, cfg, digits, sol)
    assert images.shape == (16, 8, 8) and len(captions) == 16
    w = np.asarray(net.synapses["memory"].weight).reshape(16, 8, 8)
    assert all(any(np.array_equal(i, v) for v in w) for i in images)


def test_corruption_flag_takes_effect_or_is_refused(capsys):
    """--corruption picks the kind the task corrupts with (--noise its level), within the
    kinds of that task; elsewhere it is refused before anything is read."""
    base = {"dataset": "digits", "model": "dense", "hidden": [8], "epochs": None,
            "steps": None, "dt0": None, "noise": None, "lr": 1e-3, "seed": 0, "gradient": None}
    digits = hd.load_digits()
    for task, kind, default in [("denoise", "salt_and_pepper", "gaussian"),
                                ("complete", "mask_patches", "mask_bottom")]:
        assert _parser.defaults({**base, "task": task})["corruption"] == default
        cfg = _parser.defaults({**base, "task": task, "corruption": kind})
        _, t, _ = _build.build(cfg, digits)
        assert t.corruption == kind and t.level == cfg["noise"]
    for argv, words in [(["--task", "denoise", "--corruption", "mask_bottom"],
                         ["--task denoise takes --corruption gaussian or salt_and_pepper"]),
                        (["--corruption", "gaussian"], ["--task classify takes no --corruption"]),
                        (["--task", "complete", "--model", "transformer", "--corruption",
                          "mask_patches"], ["--model transformer takes no --corruption"])]:
        _, msg = _fails(["train", *argv], capsys)
        for w in words:
            assert w in msg, (w, msg)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--bogus"],
                                  ["bench", "--help"], ["bench", "--only", "bogus"]])
def test_help_and_usage_errors_do_not_import_jax(argv):
    """``import hamjax`` is lazy (names are imported on first use), so ``hamjax --help`` and an
    unknown flag answer at once instead of after JAX's import (seconds); ``hamjax bench``'s
    likewise, and its usage error is one line naming itself."""
    import subprocess
    import sys

    code = ("import sys\nfrom hamjax.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nprint('jax imported:', 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "jax imported: False", out.stderr
    if "bogus" in argv:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"hamjax{' bench' if argv[0] == 'bench' else ''}: error")


def test_lazy_exports_agree():
    """``hamjax``'s lazy table, ``__all__`` and the names type checkers read (its
    ``TYPE_CHECKING`` imports) list the same names, and each resolves to the object its module
    defines."""
    import ast
    import importlib

    import hamjax

    lazy = set(hamjax._EXPORTS) | set(hamjax._SUBPACKAGES)
    assert set(hamjax.__all__) == lazy
    tree = ast.parse(open(hamjax.__file__).read())
    checked = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", None) == "TYPE_CHECKING"
               for stmt in node.body if isinstance(stmt, ast.ImportFrom) for a in stmt.names}
    assert checked == lazy
    for name, module in hamjax._EXPORTS.items():
        assert getattr(hamjax, name) is getattr(importlib.import_module(f"hamjax.{module}"), name)
