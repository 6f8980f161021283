"""Several processes for real: ``hamjax train`` as 2 processes joined over 127.0.0.1 (JAX's
distributed runtime, gloo collectives) against the same run in one process.

The 2-process runs are started by the launcher (``python -m hamjax.launch -n 2 -- train ...``)
exactly as a user starts them; the one-process reference runs in this process. Marked
``multiprocess``: skipped where no TCP port on 127.0.0.1 can be opened.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from hamjax import data as hd
from hamjax import sharding
from hamjax import train as T
from hamjax.cli import main as cli_main
from hamjax.cli._commands import load_run
from hamjax.launch import free_port


def _loopback_ok() -> bool:
    try:
        with socket.create_server(("127.0.0.1", 0)):
            return True
    except OSError:
        return False


multiprocess = pytest.mark.multiprocess
needs_loopback = pytest.mark.skipif(not _loopback_ok(), reason="no TCP port on 127.0.0.1")

# noise and shifts on: each process draws its own rows' noise, so this checks that the data
# stream does not depend on how a batch is divided
TINY = ["--hidden", "16", "--gradient", "bptt", "--steps", "5", "--limit-train", "128",
        "--limit-test", "48",
        "--batch-size", "32", "--shift", "1", "--no-progress"]


def _launch(args, cwd, n=2, timeout=240):
    return subprocess.run([sys.executable, "-m", "hamjax.launch", "-n", str(n), "--", "train",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _params(run):
    net = load_run(run)[2]
    return [np.asarray(v) for v in jax.tree.leaves(net) if hasattr(v, "dtype")]


def _same_run(a, b):
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb, strict=True):
        for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-5, atol=1e-6,
                                       err_msg=k)
    for pa, pb in zip(_params(a), _params(b), strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-epoch run in one process and in two, then both resumed to 3 epochs."""
    root = tmp_path_factory.mktemp("multihost")
    one, two = root / "one", root / "two"
    assert cli_main(["train", *TINY, "--epochs", "2", "--out", str(one)]) == 0
    first = _launch([*TINY, "--epochs", "2", "--out", str(two)], cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    snapshot = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    files_after_two = sorted(p.name for p in root.iterdir())
    history_two = _history(two)
    assert cli_main(["train", "--resume", "--epochs", "3", "--no-progress", "--out",
                     str(one)]) == 0
    resumed = _launch(["--resume", "--epochs", "3", "--no-progress", "--out", str(two)],
                      cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"root": root, "one": one, "two": two, "first": first, "resumed": resumed,
            "snapshot": snapshot, "files": files_after_two, "history_two": history_two}


@multiprocess
@needs_loopback
def test_two_processes_train_as_one(runs):
    assert len(_history(runs["two"])) == 3
    _same_run(runs["one"], runs["two"])


@multiprocess
@needs_loopback
def test_two_processes_write_one_run_folder_once(runs):
    # one run folder (besides the reference); no temporary or second checkpoint left behind
    assert runs["files"] == ["one", "two"]
    names = set(runs["snapshot"])
    assert "checkpoint.eqx" in names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith("checkpoint.eqx.")]
    assert {"config.json", "history.csv", "metrics.json"} <= names
    # only process 0 printed: the run's header, epochs and result appear once
    out = runs["first"].stdout
    assert out.count("hamjax: classify on digits") == 1
    assert out.count("epoch 2:") == 1
    assert out.count("test accuracy:") == 1


@multiprocess
@needs_loopback
def test_two_processes_resume_from_the_checkpoint(runs):
    hist = _history(runs["two"])
    for before, after in zip(runs["history_two"], hist[:2], strict=True):
        assert before == after  # the finished epochs are kept, not re-trained
    assert hist[2]["epoch"] == "3"
    assert "epoch 3:" in runs["resumed"].stdout and "epoch 1:" not in runs["resumed"].stdout


@multiprocess
@needs_loopback
def test_batch_not_divisible_over_the_processes(tmp_path):
    res = _launch([*TINY, "--epochs", "1", "--batch-size", "33", "--out", str(tmp_path / "r")],
                  cwd=tmp_path)
    assert res.returncode == 2
    assert "--batch-size 33 is not divisible by the 2 devices of the 2 processes" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


@multiprocess
@needs_loopback
def test_unreachable_coordinator_is_a_bounded_wait(tmp_path):
    port = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "hamjax.cli", "train", *TINY, "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1", "--join-timeout",
         "3", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "did not start within 3 s" in last and f"127.0.0.1:{port}" in last
    assert not (tmp_path / "r").exists()


@multiprocess
@needs_loopback
def test_processes_started_with_different_counts(tmp_path):
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "hamjax.cli", "train", *TINY, "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
         "--join-timeout", "60", "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, n in ((0, 2), (1, 3))]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 2, err[-2000:]
        assert "different process counts (process 0: 2, process 1: 3)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:5"], "needs --num-processes --process-id as well"),
    (["--distributed", "--process-id", "0"], "--distributed reads the coordinator"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "is not HOST:PORT"),
    (["--coordinator", "127.0.0.1:5", "--num-processes", "2", "--process-id", "2"],
     "process id 2 is outside [0, 2)"),
])
def test_distributed_flag_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", *TINY, *flags, "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_launcher_usage_errors(capsys):
    from hamjax.launch import main

    assert main(["-n", "2", "--", "eval", "runs/x"]) == 2
    assert "only hamjax train runs as several processes" in capsys.readouterr().err
    assert main(["-n", "2", "--", "train", "--process-id", "1"]) == 2
    assert "the launcher sets --process-id itself" in capsys.readouterr().err


# ------------------------------------------------------------------ the pieces, in one process
def test_prepared_rows_do_not_depend_on_the_division():
    d = hd.load_digits()
    task = T.Classification(noise=0.3, shift=1, rotate=10.0)
    idx = np.arange(10, 26)
    where = [(0, 4, k) for k in range(16)]
    whole = T.prepare_rows(task, d.x_train, d.y_train, idx, 7, where)
    halves = [T.prepare_rows(task, d.x_train, d.y_train, idx[s], 7, where[s])
              for s in (slice(0, 8), slice(8, 16))]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([h[k] for h in halves]))
    # each row is the task's own preparation of that sample with its generator
    alone = task.prepare(d.x_train[12:13], d.y_train[12:13], T.sample_rng(7, 0, 4, 2))
    np.testing.assert_array_equal(whole["input"][2:3], alone["input"])
    other = T.prepare_rows(task, d.x_train, d.y_train, idx, 8, where)
    assert not np.array_equal(other["input"], whole["input"])  # the seed matters


def test_local_rows_and_global_batch_in_one_process():
    np.testing.assert_array_equal(sharding.local_rows(None, 6), np.arange(6))
    mesh = sharding.make_mesh(1)
    np.testing.assert_array_equal(sharding.local_rows(mesh, 6), np.arange(6))
    local = {"input": np.arange(12.0).reshape(6, 2), "target": np.arange(6)}
    out = sharding.global_batch(local, mesh, np.arange(6), 6)
    np.testing.assert_array_equal(np.asarray(out["input"]), local["input"])
    assert out["input"].sharding.mesh.shape == {"batch": 1}
    with pytest.raises(sharding.ShardingError, match="does not hold the 5 local rows"):
        sharding.global_batch(local, mesh, np.arange(5), 6)
    with pytest.raises(sharding.ShardingError, match="needs all 6 rows"):
        sharding.global_batch({"input": local["input"][:3]}, None, np.arange(3), 6)
    assert sharding.is_main_process()
    assert sharding.gather_text("hello") == ["hello"]
    sharding.barrier("one process: returns at once")
    arr = jax.numpy.ones(3)
    assert sharding.local_replica({"a": arr})["a"] is arr


_UNSHARED = r"""
import sys
from hamjax import data as hd, sharding, train as T
import jax, optax
rank, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sharding.initialize_distributed(f"127.0.0.1:{port}", 2, rank, timeout=60)
import hamjax as hj
d = hd.load_digits()
net = hj.models.dense_classifier(d.image_shape, 10, hidden=8, key=jax.random.PRNGKey(0))
ckpt = f"{folder}/ckpt-of-process-{rank}.eqx"  # as if each saw a different file system
import diffrax
steps = hj.RelaxOptions(solver=diffrax.Euler(), stop=hj.FixedSteps(2), dt0=0.25)
kw = dict(gradient=T.BPTT(steps), batch_size=64, checkpoint=ckpt, progress=False,
          verbose=False, mesh=sharding.make_mesh())
T.fit(net, d, epochs=1, **kw)
try:
    T.fit(net, d, epochs=2, resume=True, **kw)
except T.CheckpointError as e:
    print("REFUSED", e)
"""


@multiprocess
@needs_loopback
def test_processes_that_see_different_checkpoints_are_refused(tmp_path):
    script = tmp_path / "unshared.py"
    script.write_text(_UNSHARED)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "REFUSED the processes would start at different epochs (process 0: epoch 2, " \
               "process 1: epoch 1)" in out
    # only process 0 wrote
    assert sorted(f.name for f in tmp_path.glob("*.eqx")) == ["ckpt-of-process-0.eqx"]


_LONG_TEXT = r"""
import sys
from hamjax import sharding
rank, port = int(sys.argv[1]), sys.argv[2]
sharding.initialize_distributed(f"127.0.0.1:{port}", 2, rank, timeout=60)
mine = ("é" if rank else "a") * (20_000 + 7 * rank)  # past any fixed buffer, unequal lengths
said = sharding.gather_text(mine)
assert said == ["a" * 20_000, "é" * 20_007], [len(s) for s in said]
print("GATHERED", len(said[0]), len(said[1]))
"""


@multiprocess
@needs_loopback
def test_texts_of_any_length_are_gathered_whole(tmp_path):
    """Two processes exchange texts of 20 000 and 40 014 bytes (a config of any size): each
    gets both whole, in process order."""
    script = tmp_path / "long.py"
    script.write_text(_LONG_TEXT)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "GATHERED 20000 20007" in out
