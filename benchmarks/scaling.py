"""4. Scaling: time per relaxation step against batch size, layer width and depth.

The model is a chain of ``depth`` dense layers of equal ``width`` (tanh hidden layers; nothing
clamped, so every synapse sends a current both ways each step). One Euler step's matmul work is
``2 · (depth − 1) · 2·B·W²`` FLOPs. Each point is compared side by side with a plain ``jnp``
computation of exactly those matmuls (same shapes, same count), which measures the throughput this
machine achieves on them: ``fraction = t_matmuls / t_step`` is how close a relaxation step comes
to the matmul roofline (1.0 = all its time is matmul at the achieved rate).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

import hamjax as hj
from hamjax import lagrangians as L

from . import common as C

NAME = "scaling"


def _chain(key, width, depth):
    return hj.models.deep_dense_classifier((width,), width, hidden=(width,) * (depth - 2),
                                           key=key, hidden_lagrangian=L.Tanh(1.0),
                                           label_lagrangian=L.Identity())


def _step_fn(steps):
    def f(net, x0):
        return hj.relax(net, x0, solver=diffrax.Euler(), stop=hj.FixedSteps(steps), dt0=0.1).state

    return f


def _matmul_fn(steps, depth):
    def f(ws, xs):
        def body(_, x):
            # per synapse one current up and one down; chained, so that nothing is loop-invariant
            for w in ws:
                x = (x @ w.T) @ w
            return x

        return jnp.sum(jax.lax.fori_loop(0, steps, body, xs))

    return f


def _point(cfg, batch, width, depth, steps, key):
    net = _chain(key, width, depth)
    x0 = net.init_state(batch=(batch,), key=key, scale=0.5)
    ws = [s.weight for s in net.synapses.values()]
    xs = jax.random.normal(key, (batch, width))
    comps = [C.compile_fn("relax", _step_fn(steps), net, x0),
             C.compile_fn("matmuls", _matmul_fn(steps, depth), ws, xs)]
    t = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
    flops = 2 * (depth - 1) * 2.0 * batch * width * width
    step_s = t["relax"]["median_s"] / steps
    mm_s = t["matmuls"]["median_s"] / steps
    frac = C.ratio(t, "matmuls", "relax")
    return {"batch": batch, "width": width, "depth": depth, "steps": steps,
            "step_s": step_s, "matmul_s": mm_s, "flops_per_step": flops,
            "gflops_step": flops / step_s / 1e9, "gflops_matmul": flops / mm_s / 1e9,
            "fraction_of_matmul": frac, "times": t}


def run(cfg: C.Config) -> dict:
    key = jax.random.PRNGKey(4)
    steps = cfg.pick(3, 10, 20)
    base_b, base_w, base_d = cfg.pick((8, 32, 3), (128, 512, 3), (1024, 1024, 3))
    sweeps = {
        "batch": [(b, base_w, base_d) for b in cfg.pick((4, 16), (1, 16, 128, 1024),
                                                        (1, 16, 128, 1024, 8192))],
        "width": [(base_b, w, base_d) for w in cfg.pick((16, 64), (128, 512, 2048, 4096),
                                                        (128, 512, 2048, 4096, 8192))],
        "depth": [(base_b, base_w, d) for d in cfg.pick((2, 4), (2, 3, 5, 9), (2, 3, 5, 9, 17))],
    }
    data, rows = {}, []
    for sweep, pts in sweeps.items():
        data[sweep] = []
        for i, (b, w, d) in enumerate(pts):
            n = steps if w < 4096 else max(2, steps // 4)
            p = _point(cfg, b, w, d, n, jax.random.fold_in(key, i))
            data[sweep].append(p)
            rows.append([sweep, b, w, d, C.fmt_time(p["step_s"]), C.fmt_time(p["matmul_s"]),
                         f"{p['gflops_step']:.1f}", f"{p['gflops_matmul']:.1f}",
                         C.fmt_ratio(p["fraction_of_matmul"])])
    tab = C.table("Time per Euler step (hj.relax, nothing clamped) and fraction of the matmul "
                  "throughput of this machine", ["sweep", "batch", "width", "depth",
                                                 "time/step", "matmuls alone", "GFLOP/s step",
                                                 "GFLOP/s matmul", "fraction of matmul"], rows)
    fracs = [p["fraction_of_matmul"]["median"] for pts in data.values() for p in pts]
    figures = {"fraction of matmul, lowest": C.figure(
                   "Euler step throughput / plain matmuls of the same shapes, lowest over the "
                   "sweeps", min(fracs), unit="×", better="higher"),
               "fraction of matmul, highest": C.figure(
                   "Euler step throughput / plain matmuls of the same shapes, highest over the "
                   "sweeps", max(fracs), unit="×", better="higher")}
    return C.section([tab], data, [f"base point: batch {base_b}, width {base_w}, depth "
                                   f"{base_d}"], [_plot(cfg, data)], figures)


def _plot(cfg, data):
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, (sweep, pts) in zip(axes, data.items(), strict=True):
        xs = [p[sweep] for p in pts]
        ax.plot(xs, [p["step_s"] for p in pts], "o-", label="relax step")
        ax.plot(xs, [p["matmul_s"] for p in pts], "s--", label="matmuls alone")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(sweep)
        ax.set_ylabel("seconds per step")
        for p, x in zip(pts, xs, strict=True):
            ax.annotate(f"{p['fraction_of_matmul']['median']:.2f}", (x, p["step_s"]),
                        fontsize=7, textcoords="offset points", xytext=(0, 5))
        ax.legend(fontsize=7)
    fig.suptitle("Scaling (labels: fraction of matmul throughput)")
    return C.save_plot(fig, cfg, "scaling.png")
