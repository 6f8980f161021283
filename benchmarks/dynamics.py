"""1. Dynamics cost: a compiled relaxation of Euler steps (image clamped), hamjax against
hand-written closed-form updates of the same model and against hamux 0.2.2.

Contenders, all compiled with ``jax.jit``, same weights, same initial state, same steps:

* ``hamjax.relax``: ``hj.relax(net, x0, clamp="image", solver=diffrax.Euler(),
  stop=FixedSteps(n))``;
* ``hamjax field``: the library's vector field (``net.dynamics``) in a plain ``fori_loop``:
  separates the cost of the field from that of the diffrax loop around it;
* ``hand-written``: closed-form update equations in ``jnp`` (:mod:`benchmarks.models`);
* ``hamux``: hamux 0.2.2's ``dEdact`` in a ``fori_loop`` (skipped when hamux is missing).

Targets (DESIGN.md): hamjax.relax ≤ 1.05× hand-written and ≤ 1.0× hamux.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import common as C
from . import models as M

NAME = "dynamics"


def _field_loop(net, x0, steps, dt):
    dyn = net.dynamics(x0, clamp="image")
    x = dyn.free_state(x0)

    def body(_, x):
        dx = dyn(x)
        return {n: x[n] + dt * dx[n] for n in x}

    return jax.lax.fori_loop(0, steps, body, x)


def model_specs(cfg: C.Config):
    b = cfg.pick(8, 128, 128)
    if cfg.tier == "tiny":
        return [
            ("dense 64-32-10", "dense", (64, 32, 10), b),
            ("deep dense 64-32-16-8-10", "dense", (64, 32, 16, 8, 10), b),
            ("conv 12×12, 4 ch, 3×3", "conv", dict(image_shape=(12, 12, 1), channels=4,
                                                   kernel=3), b),
        ]
    return [
        ("dense 784-512-10", "dense", (784, 512, 10), b),
        ("deep dense 784-512-256-128-10", "dense", (784, 512, 256, 128, 10), b),
        ("conv 28×28, 16 ch, 5×5, pool 2", "conv", dict(image_shape=(28, 28, 1), channels=16,
                                                        kernel=5), b),
    ]


def contenders(kind, spec, batch, steps, dt, key):
    """``(net, x0, {name: (fn, args)})`` for one model."""
    k1, k2 = jax.random.split(key)
    if kind == "dense":
        net = M.dense_net(k1, spec)
        image = jax.random.uniform(k2, (batch, spec[0]))
    else:
        net = M.conv_net(k1, **spec)
        image = jax.random.uniform(k2, (batch,) + tuple(spec["image_shape"]))
    x0 = M.initial_state(net, image)
    order = M.chain_names(net) if kind == "dense" else ("image", "features", "pooled", "label")
    free0 = [x0[n] for n in order[1:]]
    fns = {
        "hamjax.relax": (lambda net, x0: M.hamjax_relax(net, x0, steps, dt), (net, x0)),
        "hamjax field": (lambda net, x0: _field_loop(net, x0, steps, dt), (net, x0)),
    }
    if kind == "dense":
        names, ws, bs = M.dense_params(net)
        names = names[1:]

        def hand(ws, bs, image, free0):
            out = M.hand_dense_relax(ws, bs, image, free0, steps, dt)
            return dict(zip(names, out, strict=True))

        fns["hand-written"] = (hand, (ws, bs, image, free0))
    else:
        names = ["features", "pooled", "label"]

        def hand(params, image, free0):
            out = M.hand_conv_relax(*params, image, free0, steps, dt)
            return dict(zip(names, out, strict=True))

        fns["hand-written"] = (hand, (M.conv_params(net), image, free0))
    if M.hamux_available() is None:
        ham = M.hamux_dense(net) if kind == "dense" else M.hamux_conv(net)
        fns["hamux 0.2.2"] = (lambda ham, x0: M.hamux_relax(ham, x0, steps, dt), (ham, x0))
    return net, x0, fns


def run(cfg: C.Config) -> dict:
    steps, dt = cfg.pick(5, 50, 50), 0.1
    key = jax.random.PRNGKey(0)
    rows, data, notes = [], {}, []
    why = M.hamux_available()
    if why:
        notes.append(f"hamux columns skipped: {why}")
    for i, (label, kind, spec, batch) in enumerate(model_specs(cfg)):
        net, x0, fns = contenders(kind, spec, batch, steps, dt, jax.random.fold_in(key, i))
        compiled = [C.compile_fn(name, f, *args) for name, (f, args) in fns.items()]
        ref = compiled[[c.name for c in compiled].index("hand-written")].call()
        errs = {c.name: C.check_close(f"{label}: {c.name}", c.call(), ref, tol=2e-3)
                for c in compiled}
        times = C.time_side_by_side(compiled, cfg)
        r_hand = C.ratio(times, "hamjax.relax", "hand-written")
        r_field = C.ratio(times, "hamjax field", "hand-written")
        r_hamux = C.ratio(times, "hamjax.relax", "hamux 0.2.2") if "hamux 0.2.2" in times \
            else None
        data[label] = {"kind": kind, "spec": spec, "batch": batch, "steps": steps, "dt": dt,
                       "times": times, "max_abs_diff": errs,
                       "ratio_relax_vs_hand": r_hand, "ratio_field_vs_hand": r_field,
                       "ratio_relax_vs_hamux": r_hamux}
        rows.append([
            label, batch, steps,
            C.fmt_time(times["hamjax.relax"]["median_s"]),
            C.fmt_time(times["hand-written"]["median_s"]),
            C.fmt_time(times["hamux 0.2.2"]["median_s"]) if r_hamux else "n/a",
            C.fmt_ratio(r_hand), C.fmt_ratio(r_field), C.fmt_ratio(r_hamux),
            _verdict(r_hand, 1.05) + " / " + (_verdict(r_hamux, 1.0) if r_hamux else "n/a"),
        ])
    compile_rows = [[label] + [C.fmt_time(d["times"][n]["compile_s"]) if n in d["times"]
                               else "n/a" for n in ("hamjax.relax", "hand-written",
                                                    "hamux 0.2.2")]
                    for label, d in data.items()]
    tables = [
        C.table("Relaxation of Euler steps, image clamped: time per relaxation and ratios",
                ["model", "batch", "steps", "hamjax.relax", "hand-written", "hamux",
                 "relax / hand (≤1.05)", "field loop / hand", "relax / hamux (≤1.0)",
                 "targets"], rows),
        C.table("Compile time (excluded above)",
                ["model", "hamjax.relax", "hand-written", "hamux"], compile_rows),
    ]
    plots = [_plot(cfg, data)]
    figures = {}
    for label, d in data.items():
        figures[f"{label}: relax / hand"] = C.ratio_figure(
            f"relax, {d['steps']} Euler steps, {label}: hamjax / hand-written",
            d["ratio_relax_vs_hand"], 1.05)
        figures[f"{label}: field / hand"] = C.ratio_figure(
            f"field loop, {d['steps']} Euler steps, {label}: hamjax / hand-written",
            d["ratio_field_vs_hand"])
        if d["ratio_relax_vs_hamux"] is not None:
            figures[f"{label}: relax / hamux"] = C.ratio_figure(
                f"relax, {d['steps']} Euler steps, {label}: hamjax / hamux",
                d["ratio_relax_vs_hamux"], 1.0)
    return C.section(tables, data, notes, plots, figures)


def _verdict(r, target):
    if r is None:
        return "n/a"
    return "met" if r["median"] <= target else "MISSED"


def _plot(cfg, data):
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = list(data)
    series = [("relax / hand", "ratio_relax_vs_hand"), ("relax / hamux", "ratio_relax_vs_hamux")]
    w = 0.38
    for j, (name, key) in enumerate(series):
        med = [data[m][key]["median"] if data[m][key] else jnp.nan for m in labels]
        lo = [data[m][key]["median"] - data[m][key]["q25"] if data[m][key] else 0 for m in labels]
        hi = [data[m][key]["q75"] - data[m][key]["median"] if data[m][key] else 0 for m in labels]
        xs = [i + (j - 0.5) * w for i in range(len(labels))]
        ax.bar(xs, med, w, yerr=[lo, hi], label=name, capsize=3)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.05, color="r", lw=0.8, ls="--", label="1.05× target")
    ax.set_xticks(range(len(labels)), [m.split(" ")[0] + " " + m.split(" ")[1] for m in labels])
    ax.set_ylabel("time ratio (lower is better)")
    ax.set_yscale("log")
    ax.set_title("Relaxation cost, hamjax vs hand-written and hamux")
    ax.legend(fontsize=8)
    return C.save_plot(fig, cfg, "dynamics.png")
