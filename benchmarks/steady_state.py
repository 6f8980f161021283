"""8. Training at the steady state: one optax step of each gradient estimator, the forward solve to
the steady state and the adjoint linear solve, side by side.

A ``784-512-10`` dense classifier (ReLU hidden, Softmax label, the models' default; NLL loss)
on a batch of 64 MNIST digits, at initialisation and after some training (``Implicit`` steps,
the regime a training run spends its time in):

(a) ``hj.train.train_step`` (Adam) with BPTT through 40 Euler steps of 0.25, ``Implicit()`` and
    ``EqProp()`` (β = 0.05; β = 0.2 too) — and, for the record, the configurations these
    replaced: the adaptive ODE forward with GMRES (restart 100) for the adjoint, and EqProp
    (β = 0.2) with the ODE and the NLL itself as the nudge. The step's outputs are the new
    parameters and optimiser state, so nothing of it can be compiled away. Ratios are per
    repeat against the BPTT step timed beside it; a target is met when the upper quartile of
    the ratio meets it (implicit ≤ 1×; EqProp ≤ 1× trained, ≤ 1.5× untrained: issue 25).
    Beside them a hand-written DEQ step of the same model (``benchmarks.models.hand_deq_loss``:
    while-loop fixed point, custom_vjp Neumann adjoint, same tolerances), the reachable limit:
    implicit ≤ 1.10× it.
(b) The forward solve to residual 1e-4: the adaptive ODE (Tsit5), the fixed-point iteration
    and Anderson acceleration; evaluations, time, whether every sample converged, and whether
    each reached the same steady state as the ODE (Anderson can settle on an unstable one).
    Beside them the hand-written forward of the DEQ step (a plain while loop): the fixed point's
    time per iteration ≤ 1.10× its.
(c) The adjoint system at that steady state, ``(CH − I)ᵀ v = ∂ℓ/∂x``: matrix-vector products
    and time for GMRES with restart 100 (the former default), restart 20 and the Neumann
    iteration (the default: 20 plain terms, then Anderson-accelerated), and their difference
    from a tight reference solve.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax

import hamjax as hj
from hamjax import data as hd
from hamjax import train as T

from . import common as C

NAME = "steady_state"
def _target(name: str, label: str) -> float | None:
    """Issue 25's targets for a step as a multiple of the BPTT-40 step: implicit at most 1.0×,
    untrained and trained; EqProp at most 1.0× trained, 1.5× untrained."""
    if name == "implicit":
        return 1.0
    if name == "eqprop":
        return 1.0 if label.startswith("trained") else 1.5
    return None


def _data(cfg: C.Config):
    if cfg.tier == "tiny":
        return hd.load_digits().flat()
    d = cfg.data_dir or C.default_data_dir()
    if d is None:
        return None
    return hd.load_mnist(d, limit_train=cfg.pick(0, 4096, 22699), limit_test=256).flat()


def _estimators(cfg: C.Config) -> dict:
    steady = hj.SteadyState(atol=1e-4)
    old_gmres = hj.ImplicitSteadyState(lx.GMRES(rtol=1e-5, atol=1e-6, restart=100,
                                                stagnation_iters=100))
    ms = {
        "BPTT 40 steps": T.BPTT(hj.RelaxOptions(solver=diffrax.Euler(), stop=hj.FixedSteps(40),
                                                dt0=0.25)),
        "implicit": T.Implicit(),
        "eqprop": T.EqProp(),
        "eqprop β = 0.2": T.EqProp(beta=0.2),
        "implicit, before (Tsit5 + GMRES 100)": T.Implicit(hj.RelaxOptions(
            solver=diffrax.Tsit5(), stop=steady, max_steps=1024, dt0=0.25, adjoint=old_gmres)),
        "eqprop β = 0.2, before (Tsit5, NLL nudge)": T.EqProp(beta=0.2, nudge=T.TaskCost(),
                                                              relaxation=hj.RelaxOptions(
            solver=diffrax.Tsit5(), stop=steady, max_steps=1024, dt0=0.25)),
    }
    if cfg.tier == "tiny":
        ms = {k: v for k, v in ms.items() if "before" not in k}
    return ms


def _batch(task, data, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.choice(data.num_train, n, replace=False)
    b = task.prepare(data.x_train[idx], data.y_train[idx], rng, train=False)
    return {k: jnp.asarray(v) for k, v in b.items()}


def _models(cfg, data, task, hidden):
    net = hj.models.dense_classifier((data.num_features,), data.num_classes, hidden=hidden,
                                     key=jax.random.PRNGKey(0))
    out = [("initial", net, None)]
    epochs = cfg.pick(0, 1, 3)
    if epochs:
        trained, hist = T.fit(net, data, task=task, gradient=T.Implicit(),
                              optimizer=optax.adam(1e-3), epochs=epochs, batch_size=64,
                              progress=False, verbose=False)
        out.append(("trained", trained, hist[-1]))
    return out


def train_steps(cfg, models, task, batch, suffix=""):
    opt = optax.adam(1e-3)
    estimators = _estimators(cfg)
    if suffix:  # the replaced configurations are measured at batch 64 only
        estimators = {k: v for k, v in estimators.items() if "before" not in k}
    rows, data = [], {}
    for label, net, _ in models:
        label += suffix
        opt_state = opt.init(eqx.filter(net, eqx.is_inexact_array))
        comps, metrics = [], {}
        for name, m in estimators.items():
            def f(net, opt_state, batch, m=m):
                # the updated parameters and optimiser state are outputs: a step that returned
                # only its loss and metrics would let XLA drop the whole backward pass
                new, state, loss, mets = T.train_step(net, opt_state, batch, task, m, opt)
                return (eqx.filter(new, eqx.is_inexact_array), state, loss,
                        {k: jnp.mean(v) for k, v in mets.items()})

            comps.append(C.compile_fn(name, f, net, opt_state, batch))
            _, _, loss, mets = comps[-1].call()
            metrics[name] = {"loss": float(loss), **{k: float(v) for k, v in mets.items()}}
        comps.append(_hand_deq_step(net, batch, opt))
        metrics[HAND] = {"loss": float(comps[-1].call()[2])}
        times = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
        ref = "BPTT 40 steps"
        data[label] = {"times": times, "metrics": metrics, "ratios": {}}
        hand = C.ratio(times, "implicit", HAND)
        data[label]["implicit_over_hand_deq"] = hand
        rows.append([label, f"implicit / {HAND}", C.fmt_time(times[HAND]["median_s"]),
                     C.fmt_ratio(hand), f"≤ {HAND_TARGET:g}",
                     "met" if hand["q75"] <= HAND_TARGET else "MISSED", ""])
        for name in estimators:
            r = C.ratio(times, name, ref)
            data[label]["ratios"][name] = r
            target = _target(name, label)
            met = "" if target is None else ("met" if r["q75"] <= target else "MISSED")
            mt = metrics[name]
            conv = f"{mt.get('converged', float('nan')):.2f}"
            if "converged_nudged" in mt:
                conv += f" / {mt['converged_nudged']:.2f}"
            rows.append([label, name, C.fmt_time(times[name]["median_s"]), C.fmt_ratio(r),
                         "" if target is None else f"≤ {target:g}", met, conv])
    tab = C.table("One Adam step on a batch of MNIST digits (784-512-10, NLL): time and ratio to "
                  "the 40-step BPTT step timed beside it",
                  ["model", "method", "time", "ratio to BPTT [IQR]", "target", "",
                   "converged (free / nudged)"], rows)
    return tab, data


HAND = "hand-written DEQ"
HAND_TARGET = 1.10


def _hand_deq_step(net, batch, opt):
    """One Adam step of :func:`benchmarks.models.hand_deq_loss` on the same weights and batch:
    a while-loop fixed point and a custom_vjp Neumann adjoint, to the same tolerances as
    ``Implicit()`` (residual 1e-4, adjoint rtol 1e-4)."""
    from . import models as M

    loss = M.hand_deq_loss()
    params = M.softmax_classifier_params(net)
    state = opt.init(params)

    def step(params, state, image, target):
        value, grads = jax.value_and_grad(loss)(params, image, target)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return C.compile_fn(HAND, step, params, state, batch["input"], batch["target"])


def _relax(solver, **kw):
    def f(net, x0):
        s = hj.relax(net, x0, clamp="image", solver=solver, stop=hj.SteadyState(atol=1e-4),
                     raise_nonfinite=False, **kw)
        # what the batch cost: as many evaluations as its slowest sample
        return (s.state, jnp.max(s.evaluations), jnp.max(s.steps), jnp.all(s.converged),
                jnp.max(s.residual))

    return f


def _hand_forward(net, batch):
    """The fixed point of :func:`benchmarks.models._deq_map` (the same network in closed form)
    by a plain while loop from zero to residual 1e-4, every sample (what
    :func:`benchmarks.models.hand_deq_loss` runs forward): outputs shaped as :func:`_relax`'s,
    the iterations the loop ran as its evaluations."""
    from . import models as M

    params = M.softmax_classifier_params(net)
    n = batch["input"].shape[0]

    def f(params, image):
        x0 = (jnp.zeros((n, params[0].shape[0])), jnp.zeros((n, params[2].shape[0])))
        step = lambda x: M._deq_map(params, image, x)  # noqa: E731

        def cond(c):
            k, _, res = c
            return (k < 1024) & jnp.any(res > 1e-4)

        def body(c):
            k, x, _ = c
            new = step(x)
            return k + 1, new, M._rms_rows(tuple(a - b for a, b in zip(new, x, strict=True)))

        k, (h, lab), res = jax.lax.while_loop(cond, body, (jnp.asarray(0), x0,
                                                           jnp.full((n,), jnp.inf)))
        return ({"image": image, "hidden": h, "label": lab}, k, k, jnp.all(res <= 1e-4),
                jnp.max(res))

    return C.compile_fn(HAND_FORWARD, f, params, batch["input"])


HAND_FORWARD = "hand-written fixed point"
FORWARD_TARGET = 1.10


def forward(cfg, models, task, batch):
    rows, per_rows, data = [], [], {}
    kinds = {"adaptive ODE (Tsit5)": _relax(diffrax.Tsit5(), dt0=0.25),
             "fixed point": _relax(hj.solvers.FixedPoint()),
             "Anderson (m=5)": _relax(hj.solvers.Anderson())}
    for label, net, _ in models:
        x0 = task.initial_state(net, batch)
        comps = [C.compile_fn(n, f, net, x0) for n, f in kinds.items()]
        comps.append(_hand_forward(net, batch))
        outs = {c.name: c.call() for c in comps}
        times = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
        ode_state = outs["adaptive ODE (Tsit5)"][0]
        data[label] = {"times": times, "runs": {}}
        # per iteration: the batch's loop runs as many iterations as its slowest sample
        its = int(outs["fixed point"][1]) / int(outs[HAND_FORWARD][1])
        r = C.ratio(times, "fixed point", HAND_FORWARD)
        per_it = {k: v / its for k, v in r.items()}
        data[label]["fixed_point_over_hand_per_iteration"] = per_it
        for name, (state, ev, st, conv, res) in outs.items():
            # a sample reached another steady state than the dynamics when its label or hidden
            # state is far off the ODE's (both within the residual tolerance of their own)
            diff = jnp.maximum(*(jnp.max(jnp.abs(state[n] - ode_state[n]), axis=-1)
                                 for n in ("hidden", "label")))
            other = int(jnp.sum(diff > 1e-2))
            rec = {"evaluations": int(ev), "steps": int(st), "all_converged": bool(conv),
                   "max_residual": float(res), "samples_at_another_steady_state": other,
                   "ratio_to_ode": C.ratio(times, name, "adaptive ODE (Tsit5)")}
            data[label]["runs"][name] = rec
            rel = times[name]["median_s"] / times["adaptive ODE (Tsit5)"]["median_s"]
            rows.append([label, name, rec["evaluations"], C.fmt_time(times[name]["median_s"]),
                         f"{rel:.2f}",
                         "yes" if rec["all_converged"] else "NO", f"{rec['max_residual']:.1e}",
                         other])
        per_rows.append([label, int(outs["fixed point"][1]), int(outs[HAND_FORWARD][1]),
                         C.fmt_ratio(per_it), f"≤ {FORWARD_TARGET:g}",
                         "met" if per_it["q75"] <= FORWARD_TARGET else "MISSED"])
    tab = C.table(f"Forward to residual ≤ 1e-4 (batch {len(batch['target'])})",
                  ["model", "solver", "evaluations", "time", "time / ODE", "all converged",
                   "max residual", "samples at another steady state than the ODE"], rows)
    per = C.table(f"The fixed point's time per iteration / the {HAND_FORWARD}'s (batch "
                  f"{len(batch['target'])}; the loop runs as long as its slowest sample)",
                  ["model", "iterations (hamjax)", "iterations (hand-written)",
                   "ratio per iteration [IQR]", "target", ""], per_rows)
    return [tab, per], data


def adjoint(cfg, models, task, batch):
    rows, data = [], {}
    solvers = {
        "GMRES restart 100 (former default)": lx.GMRES(rtol=1e-5, atol=1e-6, restart=100,
                                                       stagnation_iters=100),
        "GMRES restart 20": lx.GMRES(rtol=1e-5, atol=1e-6, restart=20, stagnation_iters=20),
        "Neumann (default)": hj.solvers.Neumann(batch_ndim=1),
    }
    for label, net, _ in models:
        times, outs, ref = _adjoint_runs(cfg, net, task, batch, solvers)
        flat = lambda t: jnp.concatenate([v.ravel() for v in jax.tree.leaves(t)])  # noqa: E731
        data[label] = {"times": times, "runs": {}}
        for name, (v, steps) in outs.items():
            err = float(jnp.linalg.norm(flat(v) - flat(ref)) / jnp.linalg.norm(flat(ref)))
            restart = getattr(solvers[name], "restart", None)
            # GMRES counts restart cycles of `restart` Arnoldi steps (one product each)
            matvecs = int(steps) * restart if restart else int(steps)
            data[label]["runs"][name] = {"iterations": int(steps), "matvecs": matvecs,
                                         "relative_difference": err,
                                         "seconds": times[name]["median_s"]}
            rows.append([label, name, int(steps), matvecs, C.fmt_time(times[name]["median_s"]),
                         f"{err:.1e}"])
    tab = C.table("The adjoint system at the steady state, (CH − I)ᵀ v = ∂ℓ/∂x",
                  ["model", "linear solver", "iterations (GMRES: restart cycles)",
                   "matrix-vector products (at most)", "time",
                   "relative difference to a tight solve"], rows)
    return tab, data


def _adjoint_runs(cfg, net, task, batch, solvers):
    """``(times, {solver: (v, iterations)}, reference v)`` for the adjoint system of ``net``'s
    steady state on ``batch`` (the fixed-point iteration to residual 1e-5)."""
    x0 = task.initial_state(net, batch)
    sol = hj.relax(net, x0, clamp="image", solver=hj.solvers.FixedPoint(),
                   stop=hj.SteadyState(atol=1e-5))
    dyn = net.dynamics(x0, clamp="image")
    xs = dyn.free_state(sol.state)
    b = jax.grad(lambda x: jnp.mean(task.loss(net, dyn.full_state(x), batch)))(xs)

    def operator(xs):
        return lx.JacobianLinearOperator(lambda x, _: dyn.residual(x), xs).transpose()

    def solve_with(s):
        def f(xs, b):
            out = lx.linear_solve(operator(xs), b, s, throw=False)
            # Neumann's plain terms and its (Anderson) fallback's products
            return out.value, out.stats["num_steps"] + out.stats.get("fallback_steps", 0)

        return f

    tight = lx.GMRES(rtol=1e-7, atol=1e-12, restart=200, stagnation_iters=200)
    ref = lx.linear_solve(operator(xs), b, tight, throw=False).value
    comps = [C.compile_fn(n, solve_with(s), xs, b) for n, s in solvers.items()]
    outs = {c.name: c.call() for c in comps}
    times = C.time_side_by_side(comps, cfg, repeats=max(3, cfg.repeats // 2))
    return times, outs, ref


def run(cfg: C.Config) -> dict:
    data = _data(cfg)
    if data is None:
        return C.section(notes=["MNIST not found: pass --data-dir (steady_state skipped)"])
    task = T.Classification(num_classes=data.num_classes, loss_kind="nll")
    hidden = cfg.pick(32, 512, 512)
    batch = _batch(task, data, cfg.pick(8, 64, 64), seed=0)
    models = _models(cfg, data, task, hidden)
    notes = [f"{data.name}: {data.num_features}-{hidden}-{data.num_classes} dense classifier, "
             f"batch {len(batch['target'])}"]
    for label, _, rec in models:
        if rec is not None:
            notes.append(f"'{label}': {rec['epoch']} epoch(s) of Implicit training on "
                         f"{data.num_train} images, test accuracy {rec['test_accuracy']:.3f}")
    t1, d1 = train_steps(cfg, models, task, batch)
    if cfg.tier != "tiny":  # the Neumann adjoint's cap was hit at batch 512: measure there too
        big = _batch(task, data, 512, seed=1)
        t1b, d1b = train_steps(cfg, models, task, big, suffix=", batch 512")
        t1["rows"] += t1b["rows"]
        d1.update(d1b)
    t2, d2 = forward(cfg, models, task, batch)
    t3, d3 = adjoint(cfg, models, task, batch)
    notes.append("a GMRES cycle builds a Krylov space of `restart` vectors, one matrix-vector "
                 "product each; a Neumann iteration is one product")
    return C.section([t1, *t2, t3], {"train_steps": d1, "forward": d2, "adjoint": d3}, notes,
                     figures=_figures(d1, d2, d3))


def _figures(steps, fwd, adj) -> dict:
    """The quotable numbers: each gradient's step cost relative to BPTT, the forward solvers'
    evaluations and time relative to the ODE, the adjoint solvers' products and time."""
    figures = {}
    for label, d in steps.items():
        figures[f"{label}: implicit / {HAND}"] = C.ratio_figure(
            f"training step, {label} model: implicit / {HAND}", d["implicit_over_hand_deq"],
            HAND_TARGET)
        for name, r in d["ratios"].items():
            if name != "BPTT 40 steps":
                figures[f"{label}: {name} / BPTT"] = C.ratio_figure(
                    f"training step, {label} model: {name} / BPTT 40 steps", r,
                    _target(name, label))
    for label, d in fwd.items():
        figures[f"{label}: forward fixed point / {HAND_FORWARD} per iteration"] = C.ratio_figure(
            f"forward to 1e-4, {label} model: fixed point / {HAND_FORWARD}, per iteration",
            d["fixed_point_over_hand_per_iteration"], FORWARD_TARGET)
        for name, rec in d["runs"].items():
            figures[f"{label}: forward {name} evaluations"] = C.figure(
                f"forward to 1e-4, {label} model: {name}, evaluations", rec["evaluations"])
            if name != "adaptive ODE (Tsit5)":
                figures[f"{label}: forward {name} / ODE"] = C.ratio_figure(
                    f"forward to 1e-4, {label} model: {name} / adaptive ODE (time)",
                    rec["ratio_to_ode"])
    for label, d in adj.items():
        for name, rec in d["runs"].items():
            figures[f"{label}: adjoint {name} products"] = C.figure(
                f"adjoint, {label} model: {name}, matrix-vector products (at most)",
                rec["matvecs"])
            figures[f"{label}: adjoint {name} time"] = C.figure(
                f"adjoint, {label} model: {name}, time", rec["seconds"] * 1e3, unit="ms")
    return figures
