"""The memory tasks' baselines: what an associative memory must beat, on the corruptions issue 26
names, measured by one piece of code (:mod:`hamjax.data`'s baselines).

For MNIST and Fashion-MNIST (the complete sets; ``cfg.data_dir`` is MNIST's folder, Fashion-MNIST
is looked for beside it) and four corruptions of the test images:

* completion, 50 % of the 4×4 patches hidden (set to 0), and the bottom half hidden: scored on
  the hidden pixels, the visible ones the evidence;
* denoising, Gaussian noise σ = 0.3 (clipped to [0, 1]) and salt-and-pepper on 20 % of the
  pixels: scored on every pixel, every pixel the evidence;

the PSNR of the corrupted input (hidden pixels at 0), the training mean image, the nearest
training image on the evidence, PCA (the least-squares fit of k components to the evidence) and
a modern Hopfield network storing the training set (one update, β); k and β chosen on a
validation split of 1,000 training images held out of the memory. Beside them, the HAM
(:func:`hamjax.models.dense_memory`) trained at the steady state on the stored images for that
corruption (:data:`HAM_RECIPE`) and restored from the same corrupted test images: the noisy
image clamped as evidence for denoising, the visible pixels frozen for completion; its
converged fraction is reported with it. Tiers: ``tiny`` (a few hundred images and a small HAM,
tests), ``quick`` (2,000 test images), ``full`` (all 10,000).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import hamjax as hj

from . import common as C

D = hj.data
T = hj.train
CORRUPTIONS = ("patches 50%", "bottom half", "gaussian 0.3", "salt-pepper 20%")
BASELINES = ("corrupted input", "training mean", "nearest", "PCA", "modern Hopfield")
METHODS = BASELINES + ("HAM",)
HAM_RECIPE = {"hidden": 1024, "epochs": 4, "learning_rate": 2e-3, "batch_size": 64}
"""How the HAM rows are trained (quick and full tiers): :func:`hamjax.models.dense_memory`
with ``hidden`` tanh features, Adam on a cosine from ``learning_rate`` over ``epochs`` epochs,
implicit differentiation at the steady state (:class:`hamjax.train.Implicit`)."""
TINY_RECIPE = {"hidden": 32, "epochs": 1, "learning_rate": 2e-3, "batch_size": 64}

# the task each corruption trains with: the same corruption :func:`_corrupt` applies
_TASKS = {
    "patches 50%": lambda: T.Completion(corruption="mask_patches", level=0.5),
    "bottom half": lambda: T.Completion(corruption="mask_bottom", level=0.5),
    "gaussian 0.3": lambda: T.Denoising(corruption="gaussian", level=0.3,
                                        evidence_layer="evidence"),
    "salt-pepper 20%": lambda: T.Denoising(corruption="salt_and_pepper", level=0.2,
                                           evidence_layer="evidence"),
}


def _corrupt(x, kind: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(corrupted, evidence, scored)`` of images ``x`` ``(n, 28, 28, 1)``, flat ``(n, 784)``."""
    n = len(x)
    flat = x.reshape(n, -1)
    if kind == "patches 50%":
        # 24 of the 49 4×4 patches, round(0.5 · 49): the task the HAM trains on draws the same
        hidden = D.mask_patches(x, 0.5, rng, patch=4).mask.reshape(n, -1)
    elif kind == "bottom half":
        hidden = D.mask_region(x, "bottom_half").mask.reshape(n, -1)
    else:
        c = (D.gaussian_noise(x, 0.3, rng) if kind == "gaussian 0.3"
             else D.salt_and_pepper(x, 0.2, rng))
        ones = np.ones_like(flat)
        return np.asarray(c.images).reshape(n, -1).astype(np.float32), ones, ones
    hidden = hidden.astype(np.float32)
    return flat * (1 - hidden), 1 - hidden, hidden


def _dataset(name: str, data_dir: Path | None, cfg):
    limit = cfg.pick(dict(limit_train=3000, limit_test=200), dict(limit_test=2000), {})
    if name == "mnist":
        return D.load_mnist(data_dir, **limit)
    return D.load_fashion_mnist(data_dir.parent / "fashion-mnist", **limit)


def _train_ham(kind: str, memory: np.ndarray, valid: np.ndarray, recipe: dict, seed: int = 0):
    """``(net, task, gradient, seconds)``: a :func:`hamjax.models.dense_memory` trained at the
    steady state on ``memory`` (images ``(n, 28, 28, 1)``) for ``kind``'s task, evaluated on
    ``valid`` after each epoch."""
    task = _TASKS[kind]()
    data = D.from_arrays(memory, np.zeros(len(memory), int), valid, np.zeros(len(valid), int),
                         num_classes=1, name="memories")
    net = hj.models.dense_memory(data.image_shape, hidden=recipe["hidden"],
                                 evidence=task.clamp != (), key=jax.random.PRNGKey(seed))
    gradient = T.Implicit()
    steps = len(memory) // recipe["batch_size"]
    t0 = time.perf_counter()
    net, _ = T.fit(net, data, task=task, gradient=gradient, epochs=recipe["epochs"],
                   batch_size=recipe["batch_size"], seed=seed, progress=False, verbose=False,
                   optimizer=T.cosine_adam(recipe["learning_rate"], steps, recipe["epochs"]))
    return net, task, gradient, time.perf_counter() - t0


def _restore_ham(net, task, gradient, clean, corrupted, evidence, chunk: int = 250):
    """``(restored (n, 784), converged (n,))``: the HAM relaxed from the corrupted images of
    :func:`_corrupt`, the visible pixels (``evidence``) frozen for completion."""
    shape = (-1, 28, 28, 1)

    @eqx.filter_jit
    def one(net, batch):
        sol = gradient.relax(net, task, batch)
        g = net.layers[task.output_layer].activation(sol.state[task.output_layer])
        return g.reshape(g.shape[0], -1), sol.converged

    outs, conv = [], []
    for i in range(0, len(clean), chunk):
        sl = slice(i, i + chunk)
        batch = {"input": jnp.asarray(corrupted[sl].reshape(shape)),
                 "target": jnp.asarray(clean[sl].reshape(shape))}
        if isinstance(task, T.Completion):
            batch["frozen"] = jnp.asarray(evidence[sl].reshape(shape) > 0)
        g, c = one(net, batch)
        outs.append(np.asarray(g))
        conv.append(np.asarray(c))
    return np.concatenate(outs), np.concatenate(conv)


def _pictures(cfg: C.Config, name: str, shown: dict) -> str:
    """One figure per dataset: for each corruption, two test images as the original, the
    corrupted one, each baseline's restoration and the HAM's."""
    plt = C.pyplot()
    cols = ["original", "corrupted input", "nearest", "PCA", "modern Hopfield", "HAM"]
    rows = [(kind, j) for kind in shown for j in range(len(shown[kind]["original"]))]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.3 * len(cols), 1.3 * len(rows)),
                             squeeze=False)
    for r, (kind, j) in enumerate(rows):
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(shown[kind][col][j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=7)
            if c == 0:
                ax.set_ylabel(kind, fontsize=7)
    return C.save_plot(fig, cfg, f"memories-{name}.png")


CELLS = "memories-cells.json"
"""The finished cells of a run, kept in its results folder after each one: a run stopped part way
(a session's end) goes on from there when started again with the same ``--out``; a cell is
reused only under the same tier, recipe and test set."""


def _load_cells(out: Path) -> dict:
    try:
        return json.loads((out / CELLS).read_text())
    except (OSError, ValueError):
        return {}


def _save_cells(out: Path, cells: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CELLS + ".tmp")
    tmp.write_text(json.dumps(cells))
    tmp.replace(out / CELLS)


def _cell(kind, memory, valid, test, recipe) -> dict:
    """One corruption on one dataset: every method's restorations of the same corrupted test
    images, scored; the record kept in :data:`CELLS` (JSON: the two images shown as lists)."""
    n_valid = len(valid)
    rng = np.random.default_rng(0)
    vc, ve, vs = _corrupt(valid, kind, rng)
    b = D.fit_baselines(memory, valid.reshape(n_valid, -1), vc, ve, vs)
    clean = test.reshape(len(test), -1)
    tc, te, ts = _corrupt(test, kind, rng)
    restored = b.restore(tc, te)
    mean = np.broadcast_to(memory.reshape(len(memory), -1).mean(0), clean.shape)
    net, task, gradient, seconds = _train_ham(kind, memory, valid, recipe)
    ham, converged = _restore_ham(net, task, gradient, clean, tc, te)
    outs = {"corrupted input": tc, "training mean": mean,
            "nearest": restored["nearest"], "PCA": restored["pca"],
            "modern Hopfield": restored["hopfield"], "HAM": ham}
    psnr = {m: float(jnp.mean(D.masked_psnr(clean, y, ts))) for m, y in outs.items()}
    best = max((m for m in METHODS if m != "corrupted input"), key=psnr.get)
    best_baseline = max((m for m in BASELINES if m != "corrupted input"), key=psnr.get)
    record = {
        "psnr": psnr, "pca_k": b.k, "hopfield_beta": b.beta, "validation": b.validation,
        "best": best, "chosen_at_grid_edge": list(b.at_grid_edge),
        "ham_converged": float(converged.mean()), "ham_train_seconds": seconds,
        "ham_margin_db": psnr["HAM"] - psnr[best_baseline],
        "best_baseline": best_baseline}
    shown = {"original": clean[:2], **{m: outs[m][:2] for m in
                                       ("corrupted input", "nearest", "PCA",
                                        "modern Hopfield", "HAM")}}
    return {"record": record,
            "shown": {k: np.asarray(v, np.float32).tolist() for k, v in shown.items()}}


def run(cfg: C.Config) -> dict:
    data_dir = cfg.data_dir or C.default_data_dir()
    if data_dir is None:
        return C.section(notes=["no MNIST folder found: give --data-dir"])
    rows, data, plots = [], {}, []
    cells = _load_cells(cfg.out)
    for name in ("mnist", "fashion-mnist"):
        try:
            ds = _dataset(name, Path(data_dir), cfg)
        except D.DataError as e:
            rows.append([name, "-", "-", f"not measured: {e}", "", ""])
            continue
        x_train = np.asarray(ds.x_train, np.float32)
        n_valid = cfg.pick(200, 1000, 1000)
        memory, valid = x_train[:-n_valid], x_train[-n_valid:]
        recipe = cfg.pick(TINY_RECIPE, HAM_RECIPE, HAM_RECIPE)
        data[name] = {"train_images_stored": len(memory), "validation_images": n_valid,
                      "test_images": len(ds.x_test), "ham_recipe": recipe, "corruptions": {}}
        test = np.asarray(ds.x_test, np.float32)
        shown = {}
        for kind in CORRUPTIONS:
            key = f"{name}/{kind}"
            same = {"tier": cfg.tier, "recipe": recipe, "stored": len(memory),
                    "test": len(test)}
            if cells.get(key, {}).get("setting") != same:
                cells[key] = {"setting": same, **_cell(kind, memory, valid, test, recipe)}
                _save_cells(cfg.out, cells)
            rec = cells[key]["record"]
            b_k, b_beta, edges = rec["pca_k"], rec["hopfield_beta"], rec["chosen_at_grid_edge"]
            psnr, best = rec["psnr"], rec["best"]
            data[name]["corruptions"][kind] = rec
            shown[kind] = {k: np.asarray(v, np.float32) for k, v in cells[key]["shown"].items()}
            for m in METHODS:
                setting = (f"k = {b_k}" if m == "PCA" else f"β = {b_beta:g}"
                           if m == "modern Hopfield" else "")
                edge = {"PCA": "k", "modern Hopfield": "beta"}.get(m)
                if edge in edges:
                    setting += " (grid edge)"
                if m == "HAM":
                    setting = f"{rec['ham_converged']:.1%} converged"
                rows.append([name, kind, m, f"{psnr[m]:.2f}", setting,
                             "best" if m == best else ""])
        plots.append(_pictures(cfg, name, shown))
    tab = C.table("Memory tasks: the baselines a HAM must beat (PSNR in dB of the scored pixels: "
                  "the hidden ones for completion, all for denoising; test images)",
                  ["dataset", "corruption", "method", "PSNR (dB)",
                   "chosen on validation (HAM: converged)", ""], rows)
    notes = ["k (PCA components) and β (modern Hopfield) chosen on 1,000 training images held "
             "out of the stored set; the nearest image and the modern Hopfield network store "
             "the other training images",
             "HAM: hamjax.models.dense_memory trained at the steady state on the stored "
             f"images ({HAM_RECIPE}), the noisy image clamped as evidence for denoising, the "
             "visible pixels frozen for completion",
             "python -m benchmarks --only memories; hamjax.data.fit_baselines"]
    return C.section([tab], data=data, notes=notes, plots=plots)
