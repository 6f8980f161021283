"""Data-parallel throughput: samples per second of training steps and batched relaxations on 1, 2
and 4 devices (``hamjax.sharding``: batch split over a mesh, parameters replicated), and on 2
processes of one device each, joined over 127.0.0.1 as hosts of a cluster are.

On a CPU the devices are forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX is imported,
so every device count runs in its own subprocess). They share the same cores, so on a CPU this
measures the *overhead* of SPMD partitioning and the gradient all-reduce, not a speed-up. The
2-process row adds what several hosts add: JAX's distributed runtime, and the all-reduce going
through gloo over TCP between processes. When the default backend is a GPU/TPU, the same is
measured on 1..N of its devices as well.

``python -m benchmarks.sharding [--full] [--out DIR]``, or ``run(quick=True, out=DIR)``, writes
``sharding.json`` and ``sharding.md`` into ``out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NAME = "sharding"
DEVICE_COUNTS = (1, 2, 4)
PROCESSES = 2  # the multi-process row: processes of one CPU device each


# ------------------------------------------------------------------ worker (one device count)
def _worker(n: int, batch: int, width: int, steps: int, repeats: int, processes: int = 1,
            rank: int = 0, port: int = 0) -> dict:
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import hamjax as hj
    from hamjax import sharding
    from hamjax import train as T

    if processes > 1:
        sharding.initialize_distributed(f"127.0.0.1:{port}", processes, rank, timeout=120)
        mesh = sharding.make_mesh()  # every device of every process
        n = mesh.size
    else:
        mesh = sharding.make_mesh(n) if n > 1 else None  # 1 device: the plain single-device run
    key = jax.random.PRNGKey(0)
    net = hj.models.dense_classifier((784,), 10, hidden=width, key=key)
    net = jax.tree.map(lambda v: jnp.array(v, dtype=v.dtype) if eqx.is_array(v) else v, net)
    task = T.Classification(num_classes=10, loss_kind="nll", noise=0.0)
    gradient = T.BPTT(hj.RelaxOptions(solver=diffrax.Euler(), stop=hj.FixedSteps(steps),
                                      dt0=0.25), residual_penalty=1.0)
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    b = {"input": jnp.asarray(rng.random((batch, 784), dtype=np.float32)),
         "target": jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))}
    opt_state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    if mesh is not None:
        net, opt_state = sharding.replicate(net, mesh), sharding.replicate(opt_state, mesh)
        # each process holds only its rows of the batch, as fit feeds it
        rows = sharding.local_rows(mesh, batch)
        b = sharding.global_batch({k: np.asarray(v)[rows] for k, v in b.items()}, mesh, rows,
                                  batch)

    def timed(call, min_s=0.3):
        t0 = time.perf_counter()
        jax.block_until_ready(call())  # compile
        compile_s = time.perf_counter() - t0
        # processes run the same number of calls (each is a collective): calibrate once on
        # process 0's clock and share the count
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        once = time.perf_counter() - t0
        k = max(1, int(min_s / max(once, 1e-6)))
        if processes > 1:
            k = int(sharding.gather_text(str(k))[0])
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(k):
                jax.block_until_ready(call())
            samples.append((time.perf_counter() - t0) / k)
        return float(np.median(samples)), compile_s

    state = {"net": net, "opt": opt_state}

    def step():
        state["net"], state["opt"], loss, _ = T.train_step(state["net"], state["opt"], b, task,
                                                           gradient, opt, mesh=mesh)
        return loss

    step_s, step_compile = timed(step)
    x0 = task.initial_state(net, b)
    if mesh is not None:
        x0 = sharding.shard_batch(x0, mesh)

    @eqx.filter_jit  # the compiled relaxation (eager relax adds per-call Python/dispatch costs)
    def relaxed(net, x0):
        return hj.relax(net, x0, clamp=task.clamp, solver=diffrax.Euler(),
                        stop=hj.FixedSteps(steps), dt0=0.25, raise_nonfinite=False, mesh=mesh).state

    relax_s, relax_compile = timed(lambda: relaxed(net, x0))
    return {
        "devices": n, "platform": jax.devices()[0].platform, "batch": batch, "width": width,
        "relax_steps": steps, "step_s": step_s, "fit_samples_per_s": batch / step_s,
        "relax_s": relax_s, "relax_samples_per_s": batch / relax_s,
        "step_compile_s": step_compile, "relax_compile_s": relax_compile,
        "processes": processes,
    }


def _spawn(n: int, platform: str, args: dict) -> dict:
    env = dict(os.environ)
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.sharding", "--worker", str(n),
           *(f"--{k}={v}" for k, v in args.items())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"sharding worker ({platform}, {n} devices) failed:\n"
                           f"{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _spawn_processes(p: int, args: dict) -> dict:
    """``p`` CPU worker processes of one device each, joined over 127.0.0.1: process 0's
    result."""
    from hamjax.launch import free_port

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sharding", "--worker", "1", "--processes", str(p),
         "--rank", str(i), "--port", str(port), *(f"--{k}={v}" for k, v in args.items())],
        env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(p)]
    outs = [proc.communicate(timeout=1800) for proc in procs]
    for i, (proc, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        if proc.returncode != 0:
            raise RuntimeError(f"sharding worker (process {i} of {p}) failed:\n{err[-3000:]}")
    line = [ln for ln in outs[0][0].splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------ the benchmark
def _tier(quick):
    """``run(cfg)`` from the suite runner, or ``run(quick=..., out=...)``."""
    if hasattr(quick, "tier"):
        return quick.tier, getattr(quick, "out", None)
    if isinstance(quick, str):
        return quick, None
    return ("quick" if quick else "full"), None


def run(quick=True, out: Path | None = None) -> dict:
    tier, cfg_out = _tier(quick)
    out = Path(out if out is not None else cfg_out if cfg_out is not None else "results")
    args = {"tiny": dict(batch=32, width=64, steps=5, repeats=2),
            "quick": dict(batch=128, width=256, steps=20, repeats=5),
            "full": dict(batch=512, width=512, steps=40, repeats=7)}[tier]
    import jax

    runs = [("cpu", n) for n in DEVICE_COUNTS]
    backend = jax.default_backend()
    if backend != "cpu":
        runs += [(backend, n) for n in DEVICE_COUNTS if n <= jax.device_count()]
    results = []
    for platform, n in runs:
        print(f"[sharding] {platform}, {n} device(s) ...", flush=True)
        r = _spawn(n, platform, args)
        r["kind"] = "forced host devices" if platform == "cpu" else platform
        results.append(r)
    print(f"[sharding] cpu, {PROCESSES} processes over 127.0.0.1 ...", flush=True)
    r = _spawn_processes(PROCESSES, args)
    r["kind"] = f"{PROCESSES} processes, gloo over 127.0.0.1"
    results.append(r)
    rows = []
    for r in results:
        base = next(x for x in results if x["platform"] == r["platform"] and x["devices"] == 1
                    and x.get("processes", 1) == 1)
        where = (f"{r['devices']} ({r['processes']} processes)" if r.get("processes", 1) > 1
                 else r["devices"])
        rows.append([r["platform"], where, f"{r['fit_samples_per_s']:.0f}",
                     f"{r['fit_samples_per_s'] / base['fit_samples_per_s']:.2f}×",
                     f"{r['relax_samples_per_s']:.0f}",
                     f"{r['relax_samples_per_s'] / base['relax_samples_per_s']:.2f}×",
                     f"{r['step_compile_s']:.1f} s"])
    cols = ["platform", "devices", "train step samples/s", "vs 1", "relax samples/s", "vs 1",
            "step compile"]
    title = (f"data parallelism: 784-{args['width']}-10 dense HAM, batch {args['batch']}, "
             f"BPTT/relax {args['steps']} Euler steps")
    notes = [f"{os.cpu_count()} CPU cores. Forced host devices share those cores: on a CPU the "
             "ratios show the overhead of SPMD partitioning and the gradient all-reduce, not a "
             "speed-up. 1 device = the plain single-device run (no mesh).",
             f"{PROCESSES} processes: one CPU device each, joined by JAX's distributed runtime "
             "over 127.0.0.1, each holding only its rows of the batch; the gradient all-reduce "
             "goes through gloo. Both processes share this machine's cores."]
    if backend == "cpu":
        notes.append("no GPU/TPU on this machine: accelerator rows absent")
    elif jax.device_count() == 1:
        notes.append(f"only one {backend} device: multi-device {backend} rows absent")
    md = [f"# {title}", "", "| " + " | ".join(cols) + " |",
          "|" + "---|" * len(cols)] + ["| " + " | ".join(str(c) for c in row) + " |"
                                       for row in rows] + [""] + [f"- {n}" for n in notes]
    out.mkdir(parents=True, exist_ok=True)
    (out / "sharding.json").write_text(json.dumps({"tier": tier, "config": args,
                                                   "results": results, "notes": notes},
                                                  indent=2))
    (out / "sharding.md").write_text("\n".join(md) + "\n")
    try:
        from . import common as C

        figures = {}
        for r in results:
            base = next(x for x in results if x["platform"] == r["platform"]
                        and x["devices"] == 1 and x.get("processes", 1) == 1)
            many = r.get("processes", 1) > 1
            for what in ("fit", "relax"):
                name = (f"{r['platform']} {r['processes']} processes: {what}" if many
                        else f"{r['platform']} {r['devices']} devices: {what}")
                figures[name] = C.figure(
                    f"{'train step' if what == 'fit' else 'relax'} throughput, {r['kind']}, "
                    f"{r['devices']} device(s) / 1 device",
                    r[f"{what}_samples_per_s"] / base[f"{what}_samples_per_s"], unit="×",
                    better="higher")
        return C.section([C.table(title, cols, rows)], {"results": results}, notes,
                         figures=figures)
    except ImportError:
        return {"tables": [{"title": title, "columns": cols, "rows": rows}],
                "data": {"results": results}, "notes": notes, "plots": []}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sharding")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--full", action="store_true", help="larger model and batch")
    p.add_argument("--tiny", action="store_true", help="seconds: checks that it runs")
    p.add_argument("--out", type=Path, default=Path("results"))
    a = p.parse_args(argv)
    if a.worker is not None:
        r = _worker(a.worker, a.batch, a.width, a.steps, a.repeats, a.processes, a.rank,
                    a.port)
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    sec = run(quick="tiny" if a.tiny else not a.full, out=a.out)
    print((a.out / "sharding.md").read_text())
    del sec
    return 0


if __name__ == "__main__":
    sys.exit(main())
