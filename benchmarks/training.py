"""2. Training cost.

(a) A BPTT gradient (cross-entropy of the label after ``n`` Euler steps, image clamped, with
    respect to every weight and bias) through ``hamjax.relax`` (BPTT:
    ``adjoint=diffrax.RecursiveCheckpointAdjoint()``),
    against the same gradient of the hand-written loop and of hamux. Target ≤ 1.10× hand-written.
(b) Implicit differentiation at the relaxed state (``adjoint=hj.ImplicitSteadyState()``) against
    BPTT as the number of relaxation steps grows: time per gradient and the compiled temporary
    memory
    (``memory_analysis().temp_size_in_bytes``: the buffers the gradient needs besides its inputs
    and outputs; on a GPU the allocator's peak is recorded too). Implicit must stay flat.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import hamjax as hj

from . import common as C
from . import models as M

NAME = "training"


def _ce(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * jax.nn.log_softmax(
        logits, axis=-1), axis=-1))


def _weights_and_biases(net: hj.HAM):
    """A filter spec selecting the synapses' weights and the layers' biases: the parameters
    the hand-written model has. (The tanh Lagrangians' β is trainable in hamjax; its gradient
    is one more reduction over every hidden state per step, work the hand-written BPTT does
    not do, so it is held fixed here as a user who does not train it would.)"""
    def where(n):
        return [s.weight for s in n.synapses.values()] + [
            la.bias for la in n.layers.values() if la.bias is not None]

    spec = jax.tree.map(lambda _: False, net)
    return eqx.tree_at(where, spec, replace=[True] * len(where(net)))


def _hamjax_grad(steps, dt, adjoint="recursive"):
    def f(net, x0, labels):
        params, static = eqx.partition(net, _weights_and_biases(net))

        def loss(params):
            net = eqx.combine(params, static)
            if adjoint == "recursive":
                sol = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(),
                               stop=hj.FixedSteps(steps), dt0=dt)
            else:
                # SteadyState(atol=0) never stops early: exactly `steps` Euler steps, then the
                # implicit function theorem at the state reached
                sol = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), dt0=dt,
                               stop=hj.SteadyState(atol=0.0), max_steps=steps,
                               adjoint=hj.ImplicitSteadyState())
            return _ce(sol.state["label"], labels)

        return jax.grad(loss)(params)

    return f


def _hand_grad(steps, dt):
    def f(ws, bs, image, free0, labels):
        def loss(ws, bs):
            out = M.hand_dense_relax(ws, bs, image, free0, steps, dt)
            return _ce(out[-1], labels)

        return jax.grad(loss, argnums=(0, 1))(ws, bs)

    return f


def _hamux_grad(steps, dt):
    def f(ham, x0, labels):
        params, static = eqx.partition(ham, eqx.is_inexact_array)

        def loss(params):
            out = M.hamux_relax(eqx.combine(params, static), x0, steps, dt)
            return _ce(out["label"], labels)

        return jax.grad(loss)(params)

    return f


def _setup(sizes, batch, key):
    k1, k2, k3 = jax.random.split(key, 3)
    net = M.dense_net(k1, sizes)
    image = jax.random.uniform(k2, (batch, sizes[0]))
    labels = jax.random.randint(k3, (batch,), 0, sizes[-1])
    x0 = M.initial_state(net, image)
    return net, image, labels, x0


def bptt(cfg: C.Config):
    sizes = cfg.pick((64, 32, 10), (784, 512, 10), (784, 512, 10))
    batch, steps, dt = cfg.pick(8, 128, 128), cfg.pick(5, 20, 20), 0.25
    net, image, labels, x0 = _setup(sizes, batch, jax.random.PRNGKey(1))
    names, ws, bs = M.dense_params(net)
    free0 = [x0[n] for n in names[1:]]
    comps = [
        C.compile_fn("hamjax.relax BPTT", _hamjax_grad(steps, dt), net, x0, labels),
        C.compile_fn("hand-written", _hand_grad(steps, dt), ws, bs, image, free0, labels),
    ]
    # the gradients must agree before their costs are compared
    g_h = comps[0].call()
    gw, gb = comps[1].call()
    ref_w = [g_h.synapses[f"w{i + 1}"].weight for i in range(len(ws))]
    ref_b = [g_h.layers[n].bias for n in names[1:]]
    err = C.check_close("BPTT gradient", (ref_w, ref_b), (gw, gb), tol=1e-4)
    if M.hamux_available() is None:
        comps.append(C.compile_fn("hamux 0.2.2", _hamux_grad(steps, dt), M.hamux_dense(net),
                                  x0, labels))
    times = C.time_side_by_side(comps, cfg)
    r_hand = C.ratio(times, "hamjax.relax BPTT", "hand-written")
    r_hamux = C.ratio(times, "hamjax.relax BPTT", "hamux 0.2.2") if len(comps) > 2 else None
    row = [f"dense {'-'.join(map(str, sizes))}", batch, steps,
           C.fmt_time(times["hamjax.relax BPTT"]["median_s"]),
           C.fmt_time(times["hand-written"]["median_s"]),
           C.fmt_time(times["hamux 0.2.2"]["median_s"]) if r_hamux else "n/a",
           C.fmt_ratio(r_hand), C.fmt_ratio(r_hamux),
           ("met" if r_hand["median"] <= 1.10 else "MISSED")]
    data = {"sizes": sizes, "batch": batch, "steps": steps, "dt": dt, "times": times,
            "max_abs_grad_diff": err, "ratio_vs_hand": r_hand, "ratio_vs_hamux": r_hamux}
    tab = C.table("BPTT gradient (all weights and biases) through Euler steps",
                  ["model", "batch", "steps", "hamjax", "hand-written", "hamux",
                   "hamjax / hand (≤1.10)", "hamjax / hamux", "target"], [row])
    return tab, data


def implicit_vs_bptt(cfg: C.Config):
    sizes = cfg.pick((64, 32, 10), (784, 512, 10), (784, 512, 10))
    batch, dt = cfg.pick(8, 32, 128), 0.1
    step_counts = cfg.pick((4,), (10, 100, 1000), (10, 100, 1000))
    net, image, labels, x0 = _setup(sizes, batch, jax.random.PRNGKey(2))
    rows, data = [], []
    for n in step_counts:
        comps = [C.compile_fn(f"bptt {n}", _hamjax_grad(n, dt), net, x0, labels),
                 C.compile_fn(f"implicit {n}", _hamjax_grad(n, dt, "implicit"), net, x0,
                              labels)]
        times = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
        peak = C.device_peak_bytes()
        rec = {"steps": n, "times": times, "device_peak_bytes_so_far": peak}
        for c in comps:
            rec[c.name.split()[0] + "_temp_bytes"] = c.temp_bytes
        data.append(rec)
        rows.append([n, C.fmt_time(times[f"bptt {n}"]["median_s"]),
                     C.fmt_time(times[f"implicit {n}"]["median_s"]),
                     C.fmt_bytes(rec["bptt_temp_bytes"]), C.fmt_bytes(rec["implicit_temp_bytes"]),
                     C.fmt_time(times[f"bptt {n}"]["compile_s"]),
                     C.fmt_time(times[f"implicit {n}"]["compile_s"])])
    imp = [d["implicit_temp_bytes"] for d in data if d["implicit_temp_bytes"] is not None]
    flat = bool(imp) and max(imp) <= 1.1 * min(imp) + 65536
    tab = C.table(
        f"Implicit differentiation vs BPTT as steps grow (dense {'-'.join(map(str, sizes))}, "
        f"batch {batch}, Euler dt {dt})",
        ["steps", "BPTT time", "implicit time", "BPTT temp memory", "implicit temp memory",
         "BPTT compile", "implicit compile"], rows)
    return tab, {"sizes": sizes, "batch": batch, "points": data, "implicit_memory_flat": flat}


def run(cfg: C.Config) -> dict:
    notes = []
    if (why := M.hamux_available()) is not None:
        notes.append(f"hamux columns skipped: {why}")
    t1, d1 = bptt(cfg)
    t2, d2 = implicit_vs_bptt(cfg)
    notes.append("implicit-gradient memory is flat in the number of steps: "
                 + ("yes" if d2["implicit_memory_flat"] else "NO"))
    notes.append("memory = compiled temporary buffers of the gradient "
                 "(`jax.jit(grad).lower(...).compile().memory_analysis().temp_size_in_bytes`)")
    plots = [_plot(cfg, d2)]
    model = f"dense {'-'.join(map(str, d1['sizes']))}"
    figures = {"bptt: hamjax / hand": C.ratio_figure(
        f"BPTT gradient, {d1['steps']} Euler steps, {model}: hamjax / hand-written",
        d1["ratio_vs_hand"], 1.10)}
    if d1["ratio_vs_hamux"] is not None:
        figures["bptt: hamjax / hamux"] = C.ratio_figure(
            f"BPTT gradient, {d1['steps']} Euler steps, {model}: hamjax / hamux",
            d1["ratio_vs_hamux"], 1.0)
    for p in d2["points"]:
        for kind in ("bptt", "implicit"):
            if p[f"{kind}_temp_bytes"] is not None:
                figures[f"{kind} memory at {p['steps']} steps"] = C.figure(
                    f"{'BPTT' if kind == 'bptt' else 'implicit'} gradient at {p['steps']} steps: "
                    "compiled temporary memory", p[f"{kind}_temp_bytes"] / 2**20, unit="MiB")
    return C.section([t1, t2], {"bptt": d1, "implicit_vs_bptt": d2}, notes, plots, figures)


def _plot(cfg, d):
    plt = C.pyplot()
    pts = d["points"]
    ns = [p["steps"] for p in pts]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for kind in ("bptt", "implicit"):
        a1.plot(ns, [p["times"][f"{kind} {p['steps']}"]["median_s"] for p in pts], "o-",
                label=kind)
        mem = [p[f"{kind}_temp_bytes"] for p in pts]
        if all(m is not None for m in mem):
            a2.plot(ns, [m / 2**20 for m in mem], "o-", label=kind)
    for a, yl in ((a1, "seconds per gradient"), (a2, "temp memory (MiB)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("relaxation steps")
        a.set_ylabel(yl)
        a.legend(fontsize=8)
    fig.suptitle("Implicit differentiation vs BPTT")
    return C.save_plot(fig, cfg, "training_implicit_vs_bptt.png")
