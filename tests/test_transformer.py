"""The Energy Transformer on masked patch completion: the model's energy, the task's masked and
visible bookkeeping, its gradient, the no-network baselines and the command line."""

from __future__ import annotations

import json

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import hamjax as hj  # noqa: E402
from hamjax import cli  # noqa: E402
from hamjax import train as T  # noqa: E402
from hamjax.cli import _build  # noqa: E402

SHAPE = (4, 4, 1)  # 4 patches of 2x2 pixels


def _tiny(dim=8, key=0):
    return hj.models.energy_transformer(SHAPE, 2, dim=dim, num_heads=2,
                                        key=jax.random.PRNGKey(key))


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def _batch(task, x, seed=1):
    return {k: jnp.asarray(v) for k, v in
            task.prepare(x, None, np.random.default_rng(seed), train=False).items()}


TASK = T.PatchCompletion(patch_size=2, level=0.5)


def test_prepare_masks_the_drawn_fraction_and_freezes_the_rest():
    x = _images(6)
    b = TASK.prepare(x, None, np.random.default_rng(3))
    target = np.asarray(hj.models.patchify(x, 2))
    masked = b["mask"][..., 0] > 0
    assert b["input"].shape == target.shape == (6, 4, 4)
    np.testing.assert_array_equal(masked.sum(1), 2)  # round(0.5 · 4) per image
    np.testing.assert_array_equal(b["frozen"], np.broadcast_to(~masked[..., None], target.shape))
    np.testing.assert_array_equal(b["input"][~masked], target[~masked])
    np.testing.assert_array_equal(b["input"][masked], 0.0)
    np.testing.assert_array_equal(b["target"], target)
    # per image, not one mask for the batch
    assert len({tuple(m) for m in masked}) > 1
    with pytest.raises(ValueError, match="level"):
        T.PatchCompletion(level=1.0)


@pytest.mark.slow
def test_the_tokens_start_at_the_encoder_and_the_energy_decreases():
    net = _tiny()
    b = _batch(TASK, _images(3))
    x0 = TASK.initial_state(net, b)
    s = net.synapses
    expect = (jnp.einsum("nti,oi->nto", b["input"], s["encode"].weight)
              + b["mask"] * s["mask_token"].weight[:, 0] + s["position"].bias)
    np.testing.assert_allclose(x0["tokens"], expect, rtol=1e-5, atol=1e-6)
    sol = hj.relax(net, x0, clamp=TASK.clamp, freeze=TASK.frozen(b), solver=diffrax.Euler(),
                   dt0=0.1,
                   stop=hj.FixedSteps(40), save=hj.SaveAt(energy=True))
    e = np.asarray(sol.energy_trace())
    assert np.all(np.diff(e, axis=0) <= 1e-4 * np.abs(e[:-1]) + 1e-4)
    assert np.all(e[-1] < e[0] - 1e-2)  # it moved
    # the visible patches are frozen, the masked ones moved off their fill
    vis = np.asarray(b["frozen"])
    np.testing.assert_array_equal(np.asarray(sol.state["patches"])[vis],
                                  np.asarray(b["input"])[vis])
    assert np.abs(np.asarray(sol.state["patches"])[~vis]).max() > 1e-3


def test_the_loss_reads_only_the_masked_patches():
    b = _batch(TASK, _images(4))
    g = jnp.asarray(np.random.default_rng(5).random(b["target"].shape, dtype=np.float32))
    base = TASK.cost(g, b)
    vis = np.asarray(b["frozen"])
    moved_visible = {**b, "target": jnp.where(vis, b["target"] + 0.7, b["target"])}
    np.testing.assert_array_equal(TASK.cost(g, moved_visible), base)
    moved_masked = {**b, "target": jnp.where(vis, b["target"], b["target"] + 0.7)}
    assert np.all(np.asarray(TASK.cost(g, moved_masked)) != np.asarray(base))
    # the figures by hand: half the pixels of each image masked
    m = ~vis
    d2 = ((np.asarray(g) - np.asarray(b["target"])) ** 2 * m).reshape(4, -1).sum(1)
    np.testing.assert_allclose(base, 0.5 * d2, rtol=1e-6)
    mets = TASK.metrics(g, b)
    np.testing.assert_allclose(mets["mse"], d2 / 8, rtol=1e-6)
    np.testing.assert_allclose(mets["psnr"], -10 * np.log10(d2 / 8), rtol=1e-5)
    # an exact completion is capped at 8-bit quantisation noise, not infinite
    exact = TASK.metrics(b["target"], b)["psnr"]
    np.testing.assert_allclose(exact, 10 * np.log10(12 * 255.0**2), rtol=1e-5)


@pytest.mark.slow
def test_the_bptt_gradient_matches_finite_differences():
    # in float64: in float32 the relaxation's rounding, amplified through the LayerNorm, is
    # within a per cent of a central difference small enough to see past the loss's curvature
    with jax.enable_x64(True):
        net = _tiny()
        b = {k: v.astype(jnp.float64) if v.dtype == jnp.float32 else v
             for k, v in _batch(TASK, _images(3)).items()}
        grad = T.BPTT(hj.RelaxOptions(solver=diffrax.Euler(), stop=hj.FixedSteps(4), dt0=0.5))

        @eqx.filter_jit
        def loss(n):  # the forward pass alone, compiled once for both evaluations
            return jnp.mean(TASK.loss(n, grad.relax(n, TASK, b).state, b))

        _, grads, _ = grad.loss_and_grad(net, TASK, b)
        params, static = eqx.partition(net, eqx.is_inexact_array)
        leaves, tree = jax.tree.flatten(params)
        assert all(v.dtype == jnp.float64 for v in leaves)
        direction = [jax.random.normal(jax.random.PRNGKey(i), v.shape, v.dtype)
                     for i, v in enumerate(leaves)]
        analytic = sum(jnp.vdot(d, g) for d, g in
                       zip(direction, jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array)),
                           strict=True))

        def at(t):
            p = jax.tree.unflatten(tree, [v + t * d for v, d in
                                          zip(leaves, direction, strict=True)])
            return loss(eqx.combine(p, static))

        eps = 1e-5
        numeric = (at(eps) - at(-eps)) / (2 * eps)
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-5)
        # every part is trained: the encoder, the mask token, the positions, the decoder bias
        for name in ("encode", "mask_token", "position", "decode_bias", "attention",
                     "hopfield"):
            g = jax.tree.leaves(eqx.filter(grads.synapses[name], eqx.is_inexact_array))
            assert any(float(jnp.abs(v).max()) > 0 for v in g), name


def test_baselines_against_hand_computed_fills():
    # two reference images and one test image whose visible patches match reference 1
    ref = np.zeros((2, 4, 4), np.float32)
    ref[1] = 1.0
    ref[1, 3] = 0.25
    tgt = np.full((1, 4, 4), 0.9, np.float32)
    tgt[0, 2] = 0.4
    mask = np.array([[[0.0], [0.0], [1.0], [1.0]]], np.float32)  # patches 2 and 3 masked
    b = {"target": tgt, "mask": mask, "input": tgt * (1 - mask)}
    mean = ref.mean(0)
    out = TASK.baselines(b, mean, ref)
    # mean fill: patch 2 is 0.5 (vs 0.4), patch 3 is 0.125 (vs 0.9)
    mse_mean = (4 * 0.1**2 + 4 * 0.775**2) / 8
    # nearest by the visible patches 0, 1 (0.9): reference 1 (1.0) beats reference 0 (0.0)
    mse_near = (4 * 0.6**2 + 4 * 0.65**2) / 8
    np.testing.assert_allclose(out["psnr_mean"], [-10 * np.log10(mse_mean)], rtol=1e-5)
    np.testing.assert_allclose(out["psnr_nearest"], [-10 * np.log10(mse_near)], rtol=1e-5)


@pytest.mark.slow
def test_cli_completion_run_writes_baselines_and_pictures(tmp_path, capsys):
    out = tmp_path / "et"
    assert cli.main(["train", "--model", "transformer", "--task", "complete", "--epochs", "1",
                     "--hidden", "8", "--steps", "3", "--limit-train", "48", "--limit-test", "8",
                     "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("test_psnr", "test_mse", "test_psnr_mean_fill", "test_psnr_nearest"):
        assert np.isfinite(m[k]), k
    assert m["baseline_reference_images"] == 48
    assert m["config"]["noise"] == 0.5 and m["config"]["steps"] == 3
    assert {"completions.png", "energy.png"} <= set(m["pictures"])
    for name in m["pictures"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "nearest of 48 training images" in printed
    # the baselines are measured on the masks evaluate draws: recompute them here
    data = _build.load_data(m["config"])
    task = _build._task(m["config"], data)
    again = _build.completion_baselines(task, data, 0)
    assert again["test_psnr_nearest"] == pytest.approx(m["test_psnr_nearest"])


@pytest.mark.parametrize("argv, words", [
    (["--model", "transformer"], "--task complete"),
    (["--model", "transformer", "--task", "denoise"], "--task complete"),
    (["--model", "transformer", "--task", "complete", "--hidden", "10"], "multiple of its 4"),
    (["--model", "transformer", "--task", "complete", "--noise", "1"], "between 0 and 1"),
])
def test_transformer_usage_errors(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *argv, "--epochs", "1", "--limit-train", "16", "--batch-size", "8",
                  "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
