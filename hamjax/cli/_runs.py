"""Run folders: claiming one (created exclusively, locked while training), atomic writes, and
the config a run was saved with and resumed under."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

from ._parser import UsageError

RUN_FILES = ("config.json", "checkpoint.eqx")  # either marks a folder as holding a run
# what --resume may change: where the data lives, how far to train, how many devices share a
# batch; everything else defines the run and must match its checkpoint
RESUMABLE = ("epochs", "data_dir", "devices")
# how this command runs, not what it trains: never saved, free to differ on --resume
NOT_CONFIG = ("command", "no_progress", "out", "resume", "coordinator", "num_processes",
              "process_id", "distributed", "join_timeout")


def config_of(args) -> dict:
    """The parsed ``train`` flags as config.json records them."""
    return {k: normalised(k, v) for k, v in vars(args).items() if k not in NOT_CONFIG}


def normalised(dest: str, value):
    """A flag's value as config.json records it (so a given flag compares with a saved one)."""
    if dest == "hidden" and value is not None:
        return list(value)
    if dest == "data_dir" and value is not None:
        # absolute: `eval` may run from another folder than `train` did
        return str(Path(value).expanduser().resolve())
    return value


def _flag(dest: str, value) -> str:
    """``dest`` and ``value`` as they are written on the command line."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"--{dest.replace('_', '-')} {value}"


def write_atomic(path: Path, text: str) -> None:
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


def write_history(path: Path, history: list) -> None:
    """``history`` (one dict per epoch) as a CSV file, written atomically; nothing when empty."""
    if not history:
        return
    keys = list(dict.fromkeys(k for h in history for k in h))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for h in history:
        w.writerow(h)
    write_atomic(path, buf.getvalue())


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


def new_folder(cfg: dict) -> Path:
    """A fresh ``runs/<dataset>-<task>-<model>-<gradient>-<time>`` folder, created here. The
    time has one-second resolution, so a second run in the same second gets ``-2`` (and so on):
    ``mkdir`` is atomic, so two commands never share a folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / (f"{cfg['dataset']}-{cfg['task']}-{cfg['model']}-{cfg['gradient']}-"
                           f"{stamp}")
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the folder {base.parent}: {e.strerror}") from None
    for n in range(1, 10_000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot create the run folder {out}: {e.strerror}") from None
    raise UsageError(f"no free run folder name next to {base}; pass --out")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder that already holds a run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if any((out / f).exists() for f in RUN_FILES):
        raise UsageError(f"{out} already holds a run; pass --resume to "
                         "continue it or choose another --out")


def claim(out: Path | None, cfg: dict) -> tuple[Path, bool, int | None]:
    """Create the run folder (if needed), lock it (:func:`lock`) and create its config.json,
    exclusively: ``(folder, whether this command created it, the lock)``. Every failure is a
    one-line error."""
    if out is None:
        out, created = new_folder(cfg), True
    else:
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the run folder {out}: {e.strerror}") from None
    held = lock(out)
    try:
        _create_exclusive(out / "config.json", json.dumps(cfg, indent=2))
    except BaseException as e:
        if held is not None:
            os.close(held)
        if isinstance(e, FileExistsError):
            raise UsageError(f"{out} already holds a run; pass --resume to continue it or "
                             "choose another --out") from None
        if isinstance(e, OSError):
            release(out, created, [])
            raise UsageError(f"cannot write to the run folder {out}: {e.strerror}") from None
        raise
    return out, created, held


def release(out: Path, created: bool, written) -> None:
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


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) received by a command: handled as Ctrl-C is, so a run
    stops between steps the same way, its temporary files removed and a resume hint printed;
    the exit status is ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def stop_signals_interrupt():
    """While inside: SIGTERM and SIGHUP raise :class:`Terminated` (a ``KeyboardInterrupt``) in
    the main thread, as SIGINT raises ``KeyboardInterrupt``; where a launcher started this
    process (``HAMJAX_LAUNCHER_PID``), it is also sent SIGTERM should the launcher die, even by
    ``kill -9`` (Linux), so that no worker outlives it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ..launch import stop_signals_raise

    with stop_signals_raise(Terminated):
        _die_with_launcher()
        yield


def _die_with_launcher() -> None:
    """Ask the kernel for SIGTERM when the launcher that started this process dies
    (``prctl(PR_SET_PDEATHSIG)``, Linux); if it has died already, stop now."""
    launcher = os.environ.get("HAMJAX_LAUNCHER_PID")
    if not launcher or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != launcher:  # it died before the request was made
        raise Terminated(signal.SIGTERM)


# an atomic write's temporary name: mkstemp's (files) or the pictures' (_figures._save)
_TEMPORARY = re.compile(r".+\.(?:[A-Za-z0-9_]{8}\.tmp|png\.tmp\.png)")


def clear_stale(out: Path) -> list[str]:
    """Remove the temporary files a killed command left in the run folder ``out`` (the
    ``<name>.<8 characters>.tmp`` of an atomic write that never got renamed, or a picture's
    ``<name>.png.tmp.png``), for the holder of
    its lock, whom no other writer can race. Returns their names."""
    gone = []
    for p in out.iterdir():
        if p.is_file() and _TEMPORARY.fullmatch(p.name):
            with _suppress_oserror():
                p.unlink()
                gone.append(p.name)
    return gone


def lock(out: Path):
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
        raise UsageError(f"{out} is being trained by another hamjax command; wait for it to "
                         "finish or choose another --out") from None
    # no other command writes here now: what a killed one left half-written can go
    clear_stale(out)
    return fd


def saved_config(out: Path) -> tuple[dict, dict] | None:
    """``(config, checkpoint header)`` of the run in ``out``: the config comes from the
    checkpoint (what the weights were trained with), or from config.json when no epoch has
    finished yet (header ``{}`` when there is no checkpoint); None when ``out`` holds no run.
    The checkpoint's checksum is verified here, so a corrupt file is reported before anything
    is written."""
    from .. import train as T

    ckpt = out / "checkpoint.eqx"
    meta = {}
    if ckpt.exists():
        try:
            meta = T.read_checkpoint_meta(ckpt, verify=True)
        except T.CheckpointError as e:
            raise UsageError(f"{e}") from None
        if meta.get("config"):
            return _current(dict(meta["config"])), meta
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        try:
            return _current(json.loads(cfg_path.read_text())), meta
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{cfg_path} is not valid JSON (edited by hand?)") from None
    return None


def _current(cfg: dict) -> dict:
    """A saved config under the keys of today's flags: run folders written before the flags
    ``--gradient`` and ``--dt0`` record the gradient estimator as ``method`` and the step size
    as ``dt``."""
    if "method" in cfg and "gradient" not in cfg:
        cfg["gradient"] = cfg.pop("method")
    if "dt" in cfg and "dt0" not in cfg:
        cfg["dt0"] = cfg.pop("dt")
    return cfg


def resumed_config(saved: dict, args, given: set[str], out: Path,
                   meta: dict) -> tuple[dict, list[str]]:
    """The saved config with what ``--resume`` may change applied, and notes for the user; a
    flag that contradicts the run is an error naming both values."""
    new = config_of(args)
    clash = [d for d in sorted(given) if d in new and d not in RESUMABLE
             and new[d] != saved.get(d)]
    if clash:
        was = " ".join(_flag(d, saved.get(d)) for d in clash)
        now = " ".join(_flag(d, new[d]) for d in clash)
        raise UsageError(f"{out} was trained with {was}; --resume continues it as it was: "
                         f"drop {now} or choose another --out for a new run")
    cfg = dict(saved)
    for d in RESUMABLE:
        if d in given:
            cfg[d] = new[d]
    planned = schedule_ends(saved)
    notes = []
    if cfg["epochs"] < saved["epochs"]:
        raise UsageError(f"--epochs {cfg['epochs']} is fewer than the {saved['epochs']} the run "
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


def schedule_ends(cfg: dict) -> list[int]:
    """The epochs at which the run's cosine learning-rate segments end (one segment unless
    ``--resume`` extended the run)."""
    return list(cfg.get("schedule") or [cfg["epochs"]])


def stop_for_lost_peer(command: str, peer: str, then: str = "") -> NoReturn:
    """End this process of a multi-process run whose peer has gone (``peer``: what
    :func:`hamjax.sharding.lost_peer` made of the error) with one line on stderr and exit
    status 1, at once: left to Python's normal exit, JAX's shutdown would wait for the dead
    process until the coordination service's heartbeat timeout and then abort with a C++
    error. ``then``: what the line adds (what the run leaves, how to continue)."""
    import jax

    sys.stdout.flush()
    sys.stderr.write(f"hamjax {command}: error: process {jax.process_index()} of "
                     f"{jax.process_count()}: another process of the run has stopped ({peer})"
                     f"{then}\n")
    sys.stderr.flush()
    os._exit(1)
