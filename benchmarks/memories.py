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
validation split of 1,000 training images held out of the memory. Tiers: ``tiny`` (a few hundred
images, tests), ``quick`` (2,000 test images), ``full`` (all 10,000).
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

import hamjax as hj

from . import common as C

D = hj.data
CORRUPTIONS = ("patches 50%", "bottom half", "gaussian 0.3", "salt-pepper 20%")
METHODS = ("corrupted input", "training mean", "nearest", "PCA", "modern Hopfield")


def _corrupt(x, kind: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(corrupted, evidence, scored)`` of images ``x`` ``(n, 28, 28, 1)``, flat ``(n, 784)``."""
    n = len(x)
    flat = x.reshape(n, -1)
    if kind == "patches 50%":
        grid = np.zeros((n, 49), bool)
        for i in range(n):
            grid[i, rng.permutation(49)[:24]] = True  # 24 of 49 patches: half, rounded down
        hidden = np.repeat(np.repeat(grid.reshape(n, 7, 7), 4, 1), 4, 2).reshape(n, -1)
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


def run(cfg: C.Config) -> dict:
    data_dir = cfg.data_dir or C.default_data_dir()
    if data_dir is None:
        return C.section(notes=["no MNIST folder found: give --data-dir"])
    rows, data = [], {}
    for name in ("mnist", "fashion-mnist"):
        try:
            ds = _dataset(name, Path(data_dir), cfg)
        except D.DataError as e:
            rows.append([name, "-", "-", f"not measured: {e}", "", ""])
            continue
        x_train = np.asarray(ds.x_train, np.float32)
        n_valid = cfg.pick(200, 1000, 1000)
        memory, valid = x_train[:-n_valid], x_train[-n_valid:]
        data[name] = {"train_images_stored": len(memory), "validation_images": n_valid,
                      "test_images": len(ds.x_test), "corruptions": {}}
        for kind in CORRUPTIONS:
            rng = np.random.default_rng(0)
            vc, ve, vs = _corrupt(valid, kind, rng)
            b = D.fit_baselines(memory, valid.reshape(n_valid, -1), vc, ve, vs)
            test = np.asarray(ds.x_test, np.float32)
            clean = test.reshape(len(test), -1)
            tc, te, ts = _corrupt(test, kind, rng)
            restored = b.restore(tc, te)
            mean = np.broadcast_to(memory.reshape(len(memory), -1).mean(0), clean.shape)
            outs = {"corrupted input": tc, "training mean": mean,
                    "nearest": restored["nearest"], "PCA": restored["pca"],
                    "modern Hopfield": restored["hopfield"]}
            psnr = {m: float(jnp.mean(D.masked_psnr(clean, y, ts))) for m, y in outs.items()}
            best = max((m for m in METHODS if m != "corrupted input"), key=psnr.get)
            data[name]["corruptions"][kind] = {"psnr": psnr, "pca_k": b.k, "hopfield_beta": b.beta,
                                               "validation": b.validation, "best": best,
                                               "chosen_at_grid_edge": b.at_grid_edge}
            for m in METHODS:
                setting = (f"k = {b.k}" if m == "PCA" else f"β = {b.beta:g}"
                           if m == "modern Hopfield" else "")
                edge = {"PCA": "k", "modern Hopfield": "beta"}.get(m)
                if edge in b.at_grid_edge:
                    setting += " (grid edge)"
                rows.append([name, kind, m, f"{psnr[m]:.2f}", setting,
                             "best" if m == best else ""])
    tab = C.table("Memory tasks: the baselines a HAM must beat (PSNR in dB of the scored pixels: "
                  "the hidden ones for completion, all for denoising; test images)",
                  ["dataset", "corruption", "method", "PSNR (dB)", "chosen on validation",
                   ""], rows)
    notes = ["k (PCA components) and β (modern Hopfield) chosen on 1,000 training images held "
             "out of the stored set; the nearest image and the modern Hopfield network store "
             "the other training images",
             "python -m benchmarks --only memories; hamjax.data.fit_baselines"]
    return C.section([tab], data=data, notes=notes)
