"""What happens when things go wrong around a run, each ending in one line and a non-zero exit:
``hamjax train`` stopped by SIGTERM behaves as Ctrl-C does (a resume hint, its checkpoint kept,
no temporary file left), and a later command clears what a killed one left; a full disk, a
device out of memory, pictures that cannot be drawn and a run folder deleted during training;
``python -m hamjax.launch`` passes SIGTERM on to every worker, no worker outlives it (``kill
-9`` included), and a dead worker is named in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hamjax import cli
from hamjax.cli import _commands, _runs

posix = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl")

# a run that takes many epochs: it is stopped long before its end
LONG = ["train", "--hidden", "8", "--gradient", "bptt", "--steps", "5", "--limit-train", "64",
        "--limit-test", "32", "--batch-size", "32", "--epochs", "500", "--no-progress"]


def _wait_for(cond, timeout=120.0, what="a condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _workers_of(launcher_pid: int) -> list[int]:
    """The processes whose environment names ``launcher_pid`` as their launcher."""
    key = f"HAMJAX_LAUNCHER_PID={launcher_pid}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if key in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@posix
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hamjax.cli", *LONG, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "checkpoint.eqx").exists(), what="the first checkpoint")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("hamjax train: stopped by SIGTERM; the checkpoint of epoch ")
    assert last.endswith(f"hamjax train --out {out} --resume continues it")
    assert "Traceback" not in err
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_command_clears_the_temporary_files_a_killed_one_left(tmp_path):
    """A killed write leaves ``<name>.<8 characters>.tmp``: the next command to lock the folder
    removes it; other files, ``.tmp`` ones of other shapes included, are left alone."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / "checkpoint.eqx.k3j_x9aZ.tmp", out / "metrics.json.abcdefgh.tmp",
             out / "energy.png.tmp.png"]
    kept = [out / "config.json", out / "notes.tmp", out / "mine.x.tmp"]
    for p in stale + kept:
        p.write_text("x")
    fd = _runs.lock(out)
    try:
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
    finally:
        if fd is not None:
            os.close(fd)


def _launch(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hamjax.launch", "-n", "2", "--", *LONG,
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.multiprocess
@linux
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])  # SIGHUP: the same handler
def test_no_worker_outlives_the_launcher(tmp_path, sig):
    """SIGTERM (and SIGHUP, by the same handler) reaches every worker through the launcher
    (each stops as by Ctrl-C); with SIGKILL the launcher cannot pass anything on, and the
    kernel's death signal stops them (they asked for it)."""
    out = tmp_path / "run"
    proc = _launch(out)
    try:
        _wait_for(lambda: len(_workers_of(proc.pid)) == 2, what="two workers")
        _wait_for(lambda: (out / "checkpoint.eqx").exists(), what="the first checkpoint")
        workers = _workers_of(proc.pid)
        proc.send_signal(getattr(signal, sig))
        proc.communicate(timeout=120)
        _wait_for(lambda: not any(Path(f"/proc/{w}").exists() and
                                  (Path(f"/proc/{w}/stat").read_text().split()[2] != "Z")
                                  for w in workers), timeout=60, what="the workers to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _workers_of(proc.pid):
            os.kill(w, signal.SIGKILL)
    assert proc.returncode != 0


@pytest.mark.slow
@pytest.mark.multiprocess
@linux
def test_a_dead_worker_is_named_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _launch(out)
    try:
        _wait_for(lambda: len(_workers_of(proc.pid)) == 2, what="two workers")
        _wait_for(lambda: (out / "checkpoint.eqx").exists(), what="the first checkpoint")
        victim = max(_workers_of(proc.pid))  # started second: process 1
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL
    assert ("python -m hamjax.launch: process 1 was killed by SIGKILL; stopping the other 1 "
            "(killed after 30 s)") in err


@pytest.mark.slow
@pytest.mark.multiprocess
@linux
@pytest.mark.parametrize("victim", [1, 0])  # a worker, and the process hosting the coordinator
def test_a_hand_started_process_whose_peer_died_stops_in_one_line(tmp_path, victim):
    """Two processes started by hand (no launcher to stop them): when one is killed, the other
    stops within seconds with one line naming what happened and what the run keeps, and exit
    status 1; not a traceback, and not JAX's C++ abort after its heartbeat timeout. Where the
    dead process hosted the coordinator, JAX's client logs its own lines first (C++ threads
    Python cannot silence): hamjax's line is then the last."""
    from hamjax.launch import free_port

    out = tmp_path / "run"
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "hamjax.cli", *LONG, "--out", str(out),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        _wait_for(lambda: (out / "checkpoint.eqx").exists(), what="the first checkpoint")
        procs[victim].kill()
        survivor = procs[1 - victim]
        t0 = time.monotonic()
        _, err = survivor.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert survivor.returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith(f"hamjax train: error: process {1 - victim} of 2: another "
                                "process of the run has stopped (Gloo"), lines[-1]
    if victim == 1:  # process 0 speaks for the run: what it keeps, how to continue
        assert len(lines) == 1, err[-2000:]
        assert "the checkpoint of epoch" in lines[0] and lines[0].endswith(
            "start every process again with --resume to continue")
    assert took < 30, took


TINY = ["train", "--hidden", "8", "--gradient", "bptt", "--steps", "5", "--limit-train", "64",
        "--limit-test", "32", "--batch-size", "32", "--no-progress"]


def _one_line_failure(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                  monkeypatch):
    """The second checkpoint cannot be written (ENOSPC): one line naming the problem and the
    checkpoint kept; the run folder holds its config and the first checkpoint, nothing half
    written."""
    import errno

    from hamjax.train import _fit

    real, calls = _fit.save_checkpoint, []

    def full(path, *a, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(_fit, "save_checkpoint", full)
    out = tmp_path / "run"
    line = _one_line_failure([*TINY, "--epochs", "3", "--out", str(out)], capsys)
    assert "No space left on device" in line and "the checkpoint of epoch 1" in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.eqx", "config.json"]


def test_a_device_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    from hamjax.train import _fit

    def exhausted(*a, **kw):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                           "17179869184 bytes.\n(pages of XLA detail)")

    monkeypatch.setattr(_fit, "_train_epoch", exhausted)
    out = tmp_path / "run"
    line = _one_line_failure([*TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert "the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory" in line
    assert "smaller --batch-size (now 32)" in line and "nothing was saved" in line
    assert not out.exists()  # a new run that saved nothing leaves nothing


def test_pictures_that_cannot_be_written_are_one_line(tmp_path, capsys, monkeypatch):
    def broken(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(_commands, "pictures", broken)
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main([*TINY, "--epochs", "1", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hamjax train: error: cannot write the pictures: OSError")
    assert "metrics.json and checkpoint" in err[-1]
    assert {"config.json", "metrics.json", "checkpoint.eqx"} <= {p.name for p in out.iterdir()}


def test_a_run_folder_deleted_during_training_is_noticed(tmp_path, capsys, monkeypatch):
    """The folder is removed after the first checkpoint: the second is refused (the folder is
    not made again without its config), in one line."""
    import shutil

    from hamjax.train import _fit

    real, calls = _fit.save_checkpoint, []
    out = tmp_path / "run"

    def then_delete(path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            shutil.rmtree(out)
        return real(path, *a, **kw)

    monkeypatch.setattr(_fit, "save_checkpoint", then_delete)
    line = _one_line_failure([*TINY, "--epochs", "3", "--out", str(out)], capsys)
    assert "no longer exists (deleted during training?)" in line and "is gone" in line
    assert not out.exists()
