"""Tests for hamjax.sharding: data parallelism over forced CPU host devices equals one device.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX is imported, so the
multi-device runs happen in one subprocess (started once per module: importing JAX and compiling
dominate). It trains a tiny classifier a few steps with no mesh, a 2-device and a 4-device mesh,
relaxes a batch with and without a mesh, provokes the errors, and prints JSON that the tests
below check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hamjax import sharding
from hamjax.cli import main as cli_main

SNIPPET = textwrap.dedent(
    r"""
    import dataclasses, json, time
    t0 = time.perf_counter()
    import diffrax, equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
    import hamjax as hj
    from hamjax import data as hd, sharding, train as T

    assert len(jax.devices()) == 4, jax.devices()
    out = {"seconds": {"import": time.perf_counter() - t0}}
    key = jax.random.PRNGKey(0)
    net0 = hj.models.dense_classifier((8, 8, 1), 10, hidden=16, key=key)
    # a weak-typed leaf (the softmax's beta) turns strong after one Adam step and would make
    # every config compile train_step twice more: start with strong types
    net0 = jax.tree.map(lambda v: jnp.array(v, dtype=v.dtype) if eqx.is_array(v) else v, net0)
    d = hd.load_digits()
    batch_np = T.Classification(num_classes=10).prepare(d.x_train[:8], d.y_train[:8],
                                                        np.random.default_rng(0), train=False)
    task = T.Classification(num_classes=10, loss_kind="nll", noise=0.0)
    gradient = T.BPTT(hj.RelaxOptions(solver=diffrax.Euler(), stop=hj.FixedSteps(6), dt0=0.25),
                      residual_penalty=0.5)

    def stash_gradient():
        # passes the gradient on unchanged and keeps it as its state: train_step's own gradient
        return optax.GradientTransformation(lambda p: p, lambda g, s, p=None: (g, g))

    opt = optax.chain(stash_gradient(), optax.adam(1e-2))
    tiny = dataclasses.replace(d, x_train=d.x_train[:32], y_train=d.y_train[:32],
                               x_test=d.x_test[:12], y_test=d.y_test[:12])

    def flat(tree):
        leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in leaves]).tolist()

    def placed(mesh):
        # the untrained net, a fresh optimiser state and the batch, on the mesh's devices
        net, opt_state = net0, opt.init(eqx.filter(net0, eqx.is_inexact_array))
        batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
        if mesh is not None:
            net, opt_state = sharding.replicate(net, mesh), sharding.replicate(opt_state, mesh)
            batch = sharding.shard_batch(batch, mesh)
        return net, opt_state, batch

    for n in (None, 2, 4):
        mesh = None if n is None else sharding.make_mesh(n)
        net, opt_state, batch = placed(mesh)
        losses, grads = [], []
        for _ in range(3):
            net, opt_state, loss, _ = T.train_step(net, opt_state, batch, task, gradient, opt)
            losses.append(float(loss))
            grads.append(flat(opt_state[0]))
        out["seconds"][f"steps_{n}"] = time.perf_counter() - t0
        w = net.synapses["w1"].weight
        trained, hist = T.fit(net0, tiny, task=task, gradient=gradient, optimizer=opt, epochs=1,
                              batch_size=8, progress=False, verbose=False, eval_batch_size=8,
                              mesh=mesh)
        out["seconds"][f"fit_{n}"] = time.perf_counter() - t0
        out[str(n)] = dict(
            grads=grads, losses=losses, params=flat(net),
            fit_params=flat(trained), fit_loss=hist[0]["train_loss"],
            fit_test_acc=hist[0]["test_accuracy"],
            batch_spec=list(batch["input"].sharding.spec) if mesh is not None else None,
            param_replicated=bool(w.sharding.is_fully_replicated),
            param_devices=len(w.sharding.device_set),
        )

    mesh4 = sharding.make_mesh(4)

    # the default estimator, implicit differentiation at the steady state: its adjoint goes
    # through lineax's closure-converted operators, which must accept shard_map's arrays
    implicit = T.Implicit()
    for n in (None, 4):
        mesh = None if n is None else mesh4
        net, opt_state, batch = placed(mesh)
        net, opt_state, loss, metrics = T.train_step(net, opt_state, batch, task, implicit, opt,
                                                     mesh=mesh)
        out[f"implicit_{n}"] = dict(loss=float(loss), grad=flat(opt_state[0]),
                                    used=float(jnp.mean(metrics["used"])))

    class OtherSlice:  # a device as JAX describes one of a multi-host (multi-slice) run
        def __init__(self, device, slice_index):
            self._device, self.slice_index = device, slice_index

        def __getattr__(self, name):
            return getattr(self._device, name)

    two_slices = [OtherSlice(d, i // 2) for i, d in enumerate(jax.devices())]
    real_devices, jax.devices = jax.devices, lambda: two_slices
    try:
        try:
            jax.make_mesh((4,), ("batch",), devices=two_slices)
            refused = False
        except ValueError:
            refused = True
        multi = sharding.make_mesh()
    finally:
        jax.devices = real_devices
    out["mesh"] = dict(
        axis_types=[t.name for t in mesh4.axis_types],
        first_two=[d.id for d in sharding.make_mesh(2).devices.flat],
        given=[d.id for d in sharding.make_mesh(jax.devices()[::-1]).devices.flat],
        jax_refuses_two_slices=refused,
        two_slices=[d.slice_index for d in multi.devices.flat],
    )

    # batched relax to a steady state: each sample stops on its own, so the split batch takes
    # the same steps, sample by sample
    x0 = task.initial_state(net0, {"input": jnp.asarray(batch_np["input"])})
    rel = {}
    for name, kw in (("steady", dict(solver=diffrax.Euler(), stop=hj.SteadyState(atol=1e-3),
                                     dt0=0.25,
                                     max_steps=256)),):
        a = hj.relax(net0, x0, clamp=("image",), **kw)
        b = hj.relax(net0, x0, clamp=("image",), mesh=mesh4, **kw)
        rel[name] = dict(
            max_abs_diff=max(float(jnp.max(jnp.abs(a.state[k] - b.state[k]))) for k in a.state),
            converged_equal=bool(jnp.all(a.converged == b.converged)),
            steps=[a.steps.tolist(), b.steps.tolist()],
            spec=list(b.state["hidden"].sharding.spec),
        )
    out["relax"] = rel
    out["seconds"]["relax"] = time.perf_counter() - t0

    errors = {}
    for label, fn in (
        ("too_many", lambda: sharding.make_mesh(8)),
        ("zero", lambda: sharding.make_mesh(0)),
        ("indivisible", lambda: sharding.shard_batch({"x": jnp.zeros((6, 3))}, mesh4)),
        ("relax_indivisible", lambda: hj.relax(net0, task.initial_state(
            net0, {"input": jnp.asarray(batch_np["input"][:6])}), clamp=("image",),
            mesh=mesh4)),
        ("fit_indivisible", lambda: T.fit(net0, tiny, task=task, gradient=gradient, epochs=1,
                                          batch_size=6, progress=False, verbose=False,
                                          mesh=mesh4)),
    ):
        try:
            fn()
            errors[label] = None
        except Exception as e:
            errors[label] = [type(e).__name__, str(e)]
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded_run():
    # the device count added to the flags conftest.py sets (the compile settings of the tests)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


RTOL, ATOL = 1e-4, 1e-5  # float32, sums reordered across devices


@pytest.mark.slow
@pytest.mark.parametrize("n", ["2", "4"])
def test_shard_loss_and_gradients_match_single_device(sharded_run, n):
    one, many = sharded_run["None"], sharded_run[n]
    np.testing.assert_allclose(many["losses"][0], one["losses"][0], rtol=RTOL)
    for g_many, g_one in zip(many["grads"], one["grads"], strict=True):  # every step's gradient
        np.testing.assert_allclose(g_many, g_one, rtol=RTOL, atol=ATOL)
    assert np.abs(one["grads"][0]).max() > 1e-3  # not vacuous


@pytest.mark.slow
def test_implicit_train_step_under_data_parallelism_matches_single_device(sharded_run):
    """Implicit differentiation (the default estimator) under shard_map: each device's
    relaxations stop per sample, so the gradient equals one device's."""
    one, four = sharded_run["implicit_None"], sharded_run["implicit_4"]
    assert one["used"] == four["used"] == 1.0
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=RTOL)
    np.testing.assert_allclose(four["grad"], one["grad"], rtol=RTOL, atol=ATOL)
    assert np.abs(one["grad"]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("n", ["2", "4"])
def test_shard_train_steps_match_single_device(sharded_run, n):
    one, many = sharded_run["None"], sharded_run[n]
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=RTOL)
    np.testing.assert_allclose(many["params"], one["params"], rtol=RTOL, atol=ATOL)
    assert one["losses"][-1] < one["losses"][0]  # the steps did train


@pytest.mark.slow
@pytest.mark.parametrize("n", ["2", "4"])
def test_shard_fit_matches_single_device(sharded_run, n):
    one, many = sharded_run["None"], sharded_run[n]
    np.testing.assert_allclose(many["fit_loss"], one["fit_loss"], rtol=RTOL)
    np.testing.assert_allclose(many["fit_params"], one["fit_params"], rtol=RTOL, atol=ATOL)
    assert many["fit_test_acc"] == pytest.approx(one["fit_test_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("n", ["2", "4"])
def test_shard_batch_split_and_params_replicated(sharded_run, n):
    run = sharded_run[n]
    assert run["batch_spec"] == ["batch"]
    assert run["param_replicated"] and run["param_devices"] == int(n)


@pytest.mark.slow
def test_shard_relax_matches_single_device(sharded_run):
    # a solve to a steady state: each sample takes its own steps, split over devices or not
    r = sharded_run["relax"]["steady"]
    assert r["max_abs_diff"] <= 1e-5
    assert r["converged_equal"]
    assert r["steps"][0] == r["steps"][1]
    assert r["spec"] == ["batch"]


@pytest.mark.slow
def test_shard_errors_are_clear(sharded_run):
    e = sharded_run["errors"]
    assert e["too_many"][0] == "ShardingError"
    assert "asked for 8 devices but JAX sees 4" in e["too_many"][1]
    assert "xla_force_host_platform_device_count=8" in e["too_many"][1]
    assert e["zero"][0] == "ShardingError"
    for k in ("indivisible", "relax_indivisible", "fit_indivisible"):
        assert e[k][0] == "ShardingError", e[k]
        assert "not divisible by the 4 devices" in e[k][1]


@pytest.mark.slow
def test_shard_make_mesh_layout(sharded_run):
    """Automatic axes (jit propagates the batch's sharding); ``N`` picks the first ``N``
    devices, a list is kept in its order, and devices of several slices (several hosts), which
    ``jax.make_mesh`` refuses, still make a mesh."""
    m = sharded_run["mesh"]
    assert m["axis_types"] == ["Auto"]
    assert sorted(m["first_two"]) == [0, 1]
    assert m["given"] == [3, 2, 1, 0]
    assert m["jax_refuses_two_slices"]
    assert m["two_slices"] == [0, 0, 1, 1]


# ------------------------------------------------------------------ in this process (1+ devices)
def test_shard_make_mesh_in_process():
    n = len(jax.devices())
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("batch",) and mesh.size == n
    with pytest.raises(sharding.ShardingError, match="xla_force_host_platform_device_count"):
        sharding.make_mesh(n + 1)
    with pytest.raises(sharding.ShardingError, match="scalar"):
        sharding.shard_batch({"x": np.float32(1.0)}, mesh)
    placed = sharding.shard_batch({"x": np.zeros((2 * n, 3), np.float32), "tag": "keep"}, mesh)
    assert placed["tag"] == "keep" and tuple(placed["x"].sharding.spec) == ("batch",)


def test_shard_cli_devices_errors(capsys, tmp_path):
    n = len(jax.devices())
    out = tmp_path / "should-not-be-created"
    # input errors exit with status 2 and the message on stderr, as argparse's own do
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--devices", str(n + 1), "--batch-size", str(4 * (n + 1)),
                  "--out", str(out), "--epochs", "1"])
    assert exc.value.code == 2
    assert f"--devices {n + 1}: asked for {n + 1} devices" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--devices", "3", "--batch-size", "8", "--epochs", "1",
                  "--out", str(out)])
    assert exc.value.code == 2
    assert "not divisible by --devices 3" in capsys.readouterr().err
    assert not out.exists()
