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
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hamjax import cli  # noqa: E402
from hamjax import data as hd  # noqa: E402

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
HAVE_MNIST = MNIST_DIR.is_dir() and all(
    (MNIST_DIR / f"{name}.gz").is_file() or (MNIST_DIR / name).is_file()
    for name in hd.MNIST_FILES.values())

TINY = ["--hidden", "8", "--steps", "5", "--limit-train", "128", "--limit-test", "64",
        "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(out: Path, *extra: str) -> int:
    return cli.main(["train", "--epochs", "1", *TINY, "--out", str(out), *extra])


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
    assert (cfg["dataset"], cfg["model"], cfg["task"], cfg["method"]) == (
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


@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST IDX files not found in {MNIST_DIR}")
def test_tiny_mnist_run(tmp_path, capsys):
    out = tmp_path / "mnist"
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--epochs", "1",
                     "--hidden", "8", "--steps", "5", "--limit-train", "256",
                     "--limit-test", "128", "--no-progress", "--out", str(out)]) == 0
    assert "256 train / 128 test" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["config"]["data_dir"] == str(MNIST_DIR)
    _check_pngs(out, metrics["pictures"])


# ------------------------------------------------------------------------------------------
# errors


def _fails(argv, capsys):
    """Run ``argv``; it must exit with a non-zero status. Returns (status, message): argparse
    prints its message on stderr and exits 2; the command's own checks raise SystemExit with
    the message (which Python prints on stderr, exit status 1)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    code = e.value.code
    assert code not in (0, None)
    err = capsys.readouterr().err
    return code, code if isinstance(code, str) else err


@pytest.mark.parametrize("argv, flag", [
    (["train", "--model", "transformer"], "--model"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--batch-size", "abc"], "--batch-size"),
    (["train", "--hidden", "8,x"], "--hidden"),
    (["train", "--task", "dream"], "--task"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay"),
    (["train", "--shift", "-1"], "--shift"),
    (["train", "--rotate", "-5"], "--rotate"),
    (["frobnicate"], "frobnicate"),
    ([], "command"),
    (["eval"], "run_dir"),
])
def test_bad_flags_are_argparse_errors(argv, flag, capsys):
    code, err = _fails(argv, capsys)
    assert code == 2
    assert err.startswith("usage: hamjax")
    assert "error:" in err and flag in err


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
    (["train", "--task", "denoise", "--model", "dense"], ["--task denoise", "--model memory"]),
    (["train", "--resume"], ["--resume", "--out"]),
])
def test_inconsistent_flags_error(argv, words, capsys):
    _, msg = _fails(argv, capsys)
    for w in words:
        assert w in msg, (w, msg)


def test_eval_of_a_folder_that_is_not_a_run_errors(tmp_path, capsys):
    _, msg = _fails(["eval", str(tmp_path)], capsys)
    assert "not a run folder" in msg and str(tmp_path) in msg
