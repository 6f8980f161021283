"""3. Solvers: vector-field evaluations and time to reach a residual tolerance.

A dense ``784-512-10`` HAM relaxes from noisy MNIST digits (image clamped) until every sample's
residual ``rms(τ dx/dt)`` over the free neurons is at most ``tol`` (``hj.relax``'s
``SteadyState``), by:

* ``adaptive default``: ``hj.relax(net, x0, clamp="image")`` (Tsit5, PID controller tied to the
  tolerance, ``SteadyState(atol=tol)``);
* ``Euler dt=0.1 (hj.relax)``: ``solver=diffrax.Euler(), dt0=0.1`` with the same stop;
* ``Euler dt=0.1 loop``: the leanest fixed-step loop, hand-written around the library's field:
  one evaluation per step, the residual read off the same evaluation (``steps + 1`` in all);
* ``fixed point (hj.relax)``: ``hj.relax(..., solver=hj.solvers.FixedPoint())``, i.e.
  ``optx.fixed_point`` of ``x ← x + τẋ = c + I`` (the synchronous update), each sample stopped
  once its RMS residual is at most ``tol`` (ODE fallback for samples the
  iteration gives up on, its evaluations counted)
  (reported; its evaluations count one per iteration plus the final residual's);
* ``Anderson (hj.relax)``: ``solver=hj.solvers.Anderson()``, Anderson acceleration (history 5)
  of the same iteration, same test and count.

``evaluations`` counts vector-field calls, those of the stopping test included (``hj.relax``'s
``sol.evaluations``). Run on a random model and on one trained for a few hundred BPTT steps.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hamjax as hj
from hamjax import data as hd

from . import common as C
from . import models as M

NAME = "solvers"


def _data(cfg: C.Config):
    if cfg.tier == "tiny":
        return hd.load_digits()
    d = cfg.data_dir or C.default_data_dir()
    if d is None:
        return None
    return hd.load_mnist(d, limit_train=cfg.pick(0, 4096, 22699), limit_test=1024)


def _trained(net, data, cfg):
    task = hj.train.Classification(num_classes=data.num_classes, noise=0.2)
    net, hist = hj.train.fit(net, data, task=task, gradient=hj.train.BPTT(),
                             optimizer=optax.adam(2e-3), epochs=cfg.pick(1, 2, 5),
                             batch_size=64, progress=False, eval_batch_size=256)
    return net, hist[-1]


def _relax_fn(tol, **kw):
    def f(net, x0):
        sol = hj.relax(net, x0, clamp="image", stop=hj.SteadyState(atol=tol), **kw)
        return (jnp.max(sol.evaluations), jnp.max(sol.steps), jnp.max(sol.residual),
                jnp.all(sol.converged))

    return f


def _euler_loop(tol, dt, max_steps):
    def f(net, x0):
        dyn = net.dynamics(x0, clamp="image")

        def cond(c):
            i, _, r = c
            return (i < max_steps) & (r > tol)

        def body(c):
            i, x, _ = c
            dx = dyn(x)
            x = {n: x[n] + dt * dx[n] for n in x}
            return i + 1, x, jnp.max(hj.residual_norm(dyn, x))

        x = dyn.free_state(x0)
        n, x, r = jax.lax.while_loop(cond, body, (0, x, jnp.max(hj.residual_norm(dyn, x))))
        # the residual test re-uses the evaluation of the next step: steps + 1 in all
        return n + 1, n, r, r <= tol

    return f


def _fixed_point(tol, max_steps, solver):
    def f(net, x0):
        sol = hj.relax(net, x0, clamp="image", solver=solver,
                       stop=hj.SteadyState(atol=tol), max_steps=max_steps)
        return (jnp.max(sol.evaluations) + 1, jnp.max(sol.steps), jnp.max(sol.residual),
                jnp.all(sol.converged))

    return f


def run(cfg: C.Config, tol: float = 1e-4) -> dict:
    data = _data(cfg)
    notes = []
    if data is None:
        return C.section(notes=["MNIST not found: pass --data-dir (solvers section skipped)"])
    sizes = (data.num_features, cfg.pick(32, 512, 512), data.num_classes)
    batches = cfg.pick((8,), (1, 128), (1, 128, 1024))
    rng = np.random.default_rng(0)
    base = M.dense_net(jax.random.PRNGKey(3), sizes)
    base = jax.tree.map(lambda v: v * 0 if v.ndim == 1 else v, base)  # zero biases, as trained
    models = [("random", base)]
    if cfg.tier != "tiny":
        trained, rec = _trained(base, data.flat(), cfg)
        models.append(("trained", trained))
        notes.append(f"trained model: {rec['epoch']} epochs of BPTT on {data.num_train} "
                     f"{data.name} images, test accuracy "
                     f"{rec.get('test_accuracy', float('nan')):.3f}")
    max_steps = cfg.pick(300, 8192, 16384)
    methods = {
        "adaptive default (Tsit5+PID)": _relax_fn(tol, max_steps=cfg.pick(100, 4096, 4096)),
        "Euler dt=0.1 (hj.relax)": _relax_fn(tol, solver=diffrax.Euler(), dt0=0.1,
                                             max_steps=max_steps),
        "Euler dt=0.1 loop": _euler_loop(tol, 0.1, max_steps),
        "fixed point (hj.relax)": _fixed_point(tol, max_steps, hj.solvers.FixedPoint()),
        "Anderson (hj.relax)": _fixed_point(tol, max_steps, hj.solvers.Anderson()),
    }
    rows, out = [], {}
    for model_name, net in models:
        for b in batches:
            x = data.flat().x_test[:b]
            noisy = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
            x0 = M.initial_state(net, jnp.asarray(noisy))
            comps = [C.compile_fn(n, f, net, x0) for n, f in methods.items()]
            counts = {c.name: [np.asarray(v).item() for v in c.call()] for c in comps}
            times = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
            key = f"{model_name}, batch {b}"
            out[key] = {"times": times, "counts": {
                n: dict(zip(("evaluations", "steps", "max_residual", "converged"), v,
                            strict=True)) for n, v in counts.items()}}
            ref = times["adaptive default (Tsit5+PID)"]["median_s"]
            for n in methods:
                out[key].setdefault("ratios", {})[n] = C.ratio(
                    times, n, "adaptive default (Tsit5+PID)")
                ev, st, res, conv = counts[n]
                rows.append([model_name, b, n, int(ev), int(st), f"{res:.2e}", bool(conv),
                             C.fmt_time(times[n]["median_s"]),
                             f"{times[n]['median_s'] / ref:.2f}"])
    tab = C.table(f"Relaxing noisy digits to residual ≤ {tol:g} ({'-'.join(map(str, sizes))}, "
                  "image clamped)", ["model", "batch", "method", "evaluations", "steps",
                                     "max residual", "converged", "time", "time / adaptive"],
                  rows)
    notes.append("evaluations include the stopping test's (hj.relax: one per step); the Euler "
                 "loop reuses each step's evaluation for its test")
    figures = {}
    for key, rec in out.items():
        for n, r in rec["ratios"].items():
            if n != "adaptive default (Tsit5+PID)":
                figures[f"{key}: {n} / adaptive"] = C.ratio_figure(
                    f"to residual {tol:g}, {key}: {n} / adaptive (time)", r)
            figures[f"{key}: {n} evaluations"] = C.figure(
                f"to residual {tol:g}, {key}: {n}, vector-field evaluations",
                rec["counts"][n]["evaluations"])
    return C.section([tab], {"tol": tol, "sizes": sizes, "runs": out}, notes, [_plot(cfg, out)],
                     figures)


def _plot(cfg, out):
    plt = C.pyplot()
    keys = list(out)
    methods = list(next(iter(out.values()))["counts"])
    fig, ax = plt.subplots(figsize=(8, 3.2))
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ax.bar([i + j * w for i in range(len(keys))],
               [out[k]["counts"][m]["evaluations"] for k in keys], w, label=m)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(keys))], keys, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("vector-field evaluations")
    ax.set_title("Evaluations to reach the residual tolerance")
    ax.legend(fontsize=7)
    return C.save_plot(fig, cfg, "solvers.png")
