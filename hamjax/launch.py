"""Start a multi-process ``hamjax train`` on this machine, the processes joined over 127.0.0.1.

    python -m hamjax.launch -n 2 -- train --epochs 3 --out runs/two

starts ``n`` processes of ``hamjax train ARGS --coordinator 127.0.0.1:PORT --num-processes n
--process-id i`` (a free port unless ``--port``), each with its own CPU device, and waits for
them. It is how the multi-host path is tried (and tested) without a cluster: the processes talk
through JAX's distributed runtime (gloo on CPUs) exactly as processes on different hosts do. On
a cluster, start one ``hamjax train`` per host yourself, with the same flags and
``--process-id`` 0..n−1 (or ``--distributed`` where SLURM, Open MPI or Cloud TPU set the
environment).

Process 0's output is shown as it is; the other processes' error output is shown with a
``[process i]`` prefix. When a process fails, one line names it and how it ended, the others
are stopped (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S` seconds), and the exit status is
the failed process's (``128 + signal`` for a killed one). Ctrl-C, SIGTERM and SIGHUP to the
launcher are passed to every process as Ctrl-C (so process 0 says how to resume); should the
launcher itself be killed, each process is sent SIGTERM by the kernel (Linux), so none
outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ["main", "free_port", "stop_signals_raise"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the system's choice), for the
    coordinator. Another program may take it before the coordinator binds it: rare, and then
    process 0 stops with one line naming the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hamjax.launch",
                description="run hamjax train as N processes on this machine, joined over "
                            "127.0.0.1",
                usage="python -m hamjax.launch [-n N] [--port PORT] -- train [ARGS ...]")
    p.add_argument("-n", "--num-processes", type=int, default=2,
                   help="processes to start (default: 2)")
    p.add_argument("--port", type=int, default=None,
                   help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: the hamjax command, which must be train")
    return p


def _relay(stream, prefix: str) -> None:
    """Copy a process's error output to ours, each line prefixed."""
    for line in iter(stream.readline, b""):
        sys.stderr.write(prefix + line.decode(errors="replace"))
        sys.stderr.flush()
    stream.close()


def main(argv=None) -> int:
    """Start the processes, wait for them, and return the exit status (the first failed
    process's, 0 when all succeed, 2 for a usage error)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    prog = "python -m hamjax.launch"
    if command[:1] != ["train"]:
        print(f"{prog}: error: expected -- train ARGS (only hamjax train runs as several "
              f"processes), got {' '.join(command) or 'nothing'}", file=sys.stderr)
        return 2
    taken = [f for f in ("--coordinator", "--num-processes", "--process-id", "--distributed")
             if any(a == f or a.startswith(f + "=") for a in command)]
    if taken:
        print(f"{prog}: error: the launcher sets {' '.join(taken)} itself; drop it",
              file=sys.stderr)
        return 2
    n = args.num_processes
    if n < 1:
        print(f"{prog}: error: -n must be at least 1, got {n}", file=sys.stderr)
        return 2
    port = free_port() if args.port is None else args.port
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # each worker asks to be sent SIGTERM should this launcher die, even by kill -9
    env["HAMJAX_LAUNCHER_PID"] = str(os.getpid())
    procs, relays = [], []
    for i in range(n):
        argv_i = [sys.executable, "-m", "hamjax.cli", *command, "--coordinator",
                  f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]
        if i > 0:
            argv_i.append("--no-progress")
        p = subprocess.Popen(argv_i, env=env, stderr=None if i == 0 else subprocess.PIPE)
        procs.append(p)
        if i > 0:
            t = threading.Thread(target=_relay, args=(p.stderr, f"[process {i}] "), daemon=True)
            t.start()
            relays.append(t)
    try:
        with stop_signals_raise():
            status = _wait(procs)
    except KeyboardInterrupt as e:
        # Ctrl-C, SIGTERM or SIGHUP to the launcher: each worker is interrupted as by Ctrl-C
        # (it stops between steps, keeps its checkpoint); none outlives the launcher
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        status = _wait(procs, stopping=True)
        status = status or (128 + e.args[0] if e.args else 130)
    for t in relays:
        t.join(timeout=5)
    return status


STOP_GRACE_S = 30.0
"""Seconds a worker has to stop after the launcher asks it to (SIGINT, or SIGTERM when a peer
died) before it is killed."""


@contextlib.contextmanager
def stop_signals_raise(interrupt: type[KeyboardInterrupt] = KeyboardInterrupt):
    """While inside (in the main thread), SIGTERM and SIGHUP raise ``interrupt(signum)``, as
    SIGINT raises ``KeyboardInterrupt``: a stop by the system or a closed terminal takes the
    path of Ctrl-C. The handlers before are put back on leaving."""
    def handler(signum, frame):
        raise interrupt(signum)

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    before = {n: signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        for n, old in before.items():
            signal.signal(getattr(signal, n), old)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _wait(procs, grace: float = STOP_GRACE_S, stopping: bool = False) -> int:
    """Wait for every process; when one fails, say which and how in one line and stop the
    others (SIGTERM, then SIGKILL after ``grace`` seconds: a process whose peer died would
    otherwise wait for JAX's heartbeat timeout). ``stopping``: the processes were asked to stop
    already; those still running ``grace`` seconds from now are killed (one blocked in a
    collective whose peer has stopped never returns to Python to handle the request). The
    first failure's status (``128 + signal`` for a killed one), or 0."""
    failed = 0
    deadline = time.monotonic() + grace if stopping else None
    while True:
        codes = [p.poll() for p in procs]
        # a killed process first: its peers then fail too, each saying its peer stopped
        bad = sorted(((i, c) for i, c in enumerate(codes) if c not in (None, 0)),
                     key=lambda ic: ic[1] >= 0)
        if bad and not failed:
            i, code = bad[0]
            failed = 128 - code if code < 0 else code
            running = [p for p in procs if p.poll() is None]
            if not stopping:
                deadline = time.monotonic() + grace
                if running:
                    print(f"python -m hamjax.launch: process {i} {_how(code)}; stopping the "
                          f"other {len(running)} (killed after {grace:g} s)", file=sys.stderr,
                          flush=True)
                for p in running:
                    p.terminate()
        if all(c is not None for c in codes):
            return failed
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
