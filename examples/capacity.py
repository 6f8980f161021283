"""Capacity and retrieval of associative memories, measured against theory.

    python examples/capacity.py [--out DIR] [--quick | --tiny]

Writes to DIR (default ``capacity_out/``):

* ``capacity_random.png``: random ±1 patterns, N = 100, 200, 400. Classical Hopfield (exact fixed
  points and small-error retrieval vs K/N, with 0.138 N and N/(2 ln N)); rectified x³ dense
  associative memory (exact fixed points vs K/(N²/(3 ln N)) with the SNR theory); one-step
  bit-error rates against Φ(−sqrt(c N^(n−1)/((2n−3)!! K))); the exponential memory at K = 20 N,
  far beyond N, recovering in one update from a growing fraction of flipped bits.
* ``capacity_images.png``: binarised 14×14 MNIST (or 8×8 digits without MNIST): the fraction of
  stored images that are fixed points, against the random-pattern theory.
* ``modern_hopfield_beta.png``: the modern Hopfield preset on digits relaxed (hj.relax) from a
  half-masked digit as β sweeps: global average → metastable mixtures → single patterns, with the
  effective number of patterns exp(entropy of softmax(β ξ v*)).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import hamjax as hj  # noqa: E402
from hamjax import capacity as C  # noqa: E402
from hamjax import models as M  # noqa: E402

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


# points per curve and repeats: the full figure, a quicker one, and a smoke test (--tiny)
SIZES = {
    "full": dict(ns=(100, 200, 400), hebbian=12, poly=9, exp=20,
                 flips=(0.1, 0.2, 0.3, 0.35, 0.4, 0.45), trials=2, probe=20,
                 images=[2, 5, 10, 20, 50, 100, 200, 500], betas=12),
    "quick": dict(ns=(100, 200), hebbian=8, poly=6, exp=20, flips=(0.1, 0.3, 0.4, 0.45),
                  trials=2, probe=20, images=[2, 5, 10, 50, 200], betas=9),
    "tiny": dict(ns=(64,), hebbian=2, poly=2, exp=2, flips=(0.1, 0.4), trials=2, probe=8,
                 images=[40], betas=3),
}


def random_curves(size):
    key = jax.random.PRNGKey(0)
    res = {"hebbian": {}, "poly": {}, "exp": {}}
    probe, trials = size["probe"], size["trials"]
    for n in size["ns"]:
        ks = np.unique(np.round(np.linspace(0.02, 0.3, size["hebbian"]) * n).astype(int))
        fixed = C.capacity_curve("hebbian", n, ks, key=key, probe=None, steps=1, trials=trials)
        small = C.capacity_curve("hebbian", n, ks, key=key, probe=probe, flips=n // 20,
                                 steps=None, mode="async", tolerance=0.05, max_steps=20,
                                 trials=trials)
        res["hebbian"][n] = {"K": fixed["K"], "fixed": fixed["fraction"], "ber": fixed["ber"],
                             "small_error": small["fraction"]}
        kef = float(C.polynomial_error_free_capacity(n, 3, rectified=True))
        kp = np.unique(np.round(np.geomspace(0.25, 3.0, size["poly"]) * kef).astype(int))
        poly = C.capacity_curve("poly", n, kp, key=key, n=3, probe=probe, steps=1, chunk=2)
        res["poly"][n] = {"K": poly["K"], "fixed": poly["fraction"], "ber": poly["ber"],
                          "K_error_free": kef}
        # K = exp·N patterns, far beyond the polynomial memories' capacity: how much
        # corruption does one update still undo?
        ke = size["exp"] * n
        rec = [C.capacity_curve("exp", n, [ke], key=key, probe=probe, flips=round(f * n),
                                steps=1, chunk=2)["fraction"][0] for f in size["flips"]]
        res["exp"][n] = {"K": ke, "flipped": list(size["flips"]), "recovered": rec}
    return res


def plot_random(res, path):
    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    colors = {n: f"C{i}" for i, n in enumerate(res["hebbian"])}
    a = ax[0, 0]
    for n, r in res["hebbian"].items():
        k = np.asarray(r["K"])
        kk = np.linspace(k.min(), k.max(), 200)
        a.plot(k / n, r["fixed"], "o", color=colors[n], label=f"N={n} exact fixed points")
        a.plot(k / n, r["small_error"], "s", mfc="none", color=colors[n],
               label=f"N={n} retrieved, ≤5% errors")
        a.plot(kk / n, C.predicted_stable_fraction(n, kk, 2), "-", color=colors[n], lw=1)
        a.axvline(C.hopfield_error_free_capacity(n) / n, color=colors[n], ls=":", lw=1)
    a.axvline(0.138, color="k", ls="--", label="0.138 N")
    a.set(xlabel="K / N", ylabel="fraction of stored patterns",
          title="Classical Hopfield (lines: (1−Φ(−√(N/K)))^N; dotted: N/(2 ln N))")
    a.legend(fontsize=7)
    a = ax[0, 1]
    for n, r in res["poly"].items():
        k = np.asarray(r["K"])
        kk = np.geomspace(k.min(), k.max(), 200)
        x = k / r["K_error_free"]
        a.semilogx(x, r["fixed"], "o", color=colors[n], label=f"N={n}")
        a.semilogx(kk / r["K_error_free"], C.predicted_stable_fraction(n, kk, 3, True), "-",
                   color=colors[n], lw=1)
        a.semilogx(kk / r["K_error_free"], C.predicted_stable_fraction(n, kk, 3, False), "--",
                   color=colors[n], lw=1)
    a.axvline(1.0, color="k", ls=":")
    a.set(xlabel="K / (N² / (3 ln N))  [rectified error-free capacity]",
          ylabel="fraction exact fixed points",
          title="Dense AM, rectified x³ (solid: (C5), rectified SNR;\n"
                "dashed: (C5) for the plain x³ of Krotov & Hopfield 2016)")
    a.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.25, 0.5, 1, 2, 3]))
    a.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.legend(fontsize=7)
    a = ax[1, 0]
    for n in res["hebbian"]:
        rh, rp = res["hebbian"][n], res["poly"][n]
        kh, kp = np.asarray(rh["K"]), np.asarray(rp["K"])
        a.loglog(kh, np.maximum(rh["ber"], 1e-5), "o", color=colors[n])
        a.loglog(kh, C.snr_bit_error_rate(n, kh, 2), "-", color=colors[n], lw=1)
        a.loglog(kp, np.maximum(rp["ber"], 1e-5), "^", color=colors[n])
        a.loglog(kp, C.snr_bit_error_rate(n, kp, 3, True), "-", color=colors[n], lw=1)
        a.loglog(kp, C.snr_bit_error_rate(n, kp, 3, False), "--", color=colors[n], lw=1)
    a.set(xlabel="K", ylabel="one-step bit-error rate (1e-5 = none seen)", ylim=(5e-6, 0.5),
          title="BER: ○ Hebbian, △ rectified x³; lines Φ(−√(c N^(n−1)/((2n−3)!! K)))")
    a = ax[1, 1]
    for n, r in res["exp"].items():
        a.plot(r["flipped"], r["recovered"], "o-", color=colors[n], label=f"N={n}, K={r['K']}")
    k_over_n = next(iter(res["exp"].values()))["K"] // next(iter(res["exp"]))
    a.set(xlabel="fraction of bits flipped", ylabel="recovered in one step",
          ylim=(-0.05, 1.05), title=f"Exponential dense AM, K = {k_over_n} N (far beyond N):\n"
                                    "recovery against corruption")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_patterns():
    try:
        ds = hj.data.load_mnist(MNIST_DIR, limit_train=3000, limit_test=10)
        x = ds.x_train[..., 0].reshape(-1, 14, 2, 14, 2).mean((2, 4))  # 14×14
        name = "MNIST 14×14"
    except (hj.data.DataError, FileNotFoundError):
        x = hj.data.load_digits().x_train[..., 0]
        name = "digits 8×8"
    x = x.reshape(len(x), -1)
    return np.where(x > x.mean(1, keepdims=True), 1.0, -1.0).astype(np.float32), name


def image_curves(size):
    xi, name = image_patterns()
    n = xi.shape[1]
    rng = np.random.default_rng(0)
    xi = xi[rng.permutation(len(xi))]
    ks = size["images"]
    out = {"name": name, "N": n, "K": ks}
    for kind in ("hebbian", "poly", "exp"):
        r = C.capacity_curve(kind, n, ks, key=jax.random.PRNGKey(0), n=3, probe=2 * size["probe"],
                             steps=1, chunk=4, patterns=xi)
        out[kind] = r["fraction"]
    return out


def plot_images(res, path):
    fig, a = plt.subplots(figsize=(6.5, 4.5))
    n, k = res["N"], np.asarray(res["K"])
    kk = np.geomspace(k.min(), k.max(), 200)
    for kind, c, lab in (("hebbian", "C0", "Hebbian"), ("poly", "C1", "rectified x³"),
                         ("exp", "C2", "exp")):
        a.semilogx(k, res[kind], "o-", color=c, label=f"{lab} ({res['name']})")
    a.semilogx(kk, C.predicted_stable_fraction(n, kk, 2), ":", color="C0",
               label=f"Hebbian theory, random patterns N={n}")
    a.semilogx(kk, C.predicted_stable_fraction(n, kk, 3, True), ":", color="C1",
               label="x³ theory, random patterns")
    a.set(xlabel="K stored images", ylabel="fraction that are fixed points",
          title=f"Binarised {res['name']}: correlated patterns")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def beta_sweep(path, size):
    ds = hj.data.load_digits()
    x = ds.x_train.reshape(len(ds.x_train), -1)
    idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:2] for c in range(10)])
    xi = jnp.asarray(x[idx])  # 20 stored digits, two per class
    queries = x[idx[[0, 6, 13]]].copy()
    queries[:, 32:] = 0.0  # bottom half masked
    betas = np.geomspace(0.1, 5.0, size["betas"])
    rows, neff = [], []
    for b in betas:
        net = M.modern_hopfield(xi, float(b))
        v, sol = C.relax_retrieve(net, jnp.asarray(queries), binarize=False,
                                  stop=hj.SteadyState(atol=1e-4, t1=200.0))
        p = jax.nn.softmax(b * (v @ xi.T), axis=-1)
        neff.append(np.asarray(jnp.exp(-jnp.sum(p * jnp.log(p + 1e-30), -1))))
        rows.append(np.asarray(v))
    neff = np.asarray(neff)
    fig = plt.figure(figsize=(15, 6))
    gs = fig.add_gridspec(3, len(betas) + 2, width_ratios=[1] * (len(betas) + 1) + [4])
    for q in range(3):
        a = fig.add_subplot(gs[q, 0])
        a.imshow(queries[q].reshape(8, 8), cmap="gray", vmin=0, vmax=1)
        a.set_xticks([]), a.set_yticks([])
        a.set_title("query" if q == 0 else "", fontsize=8)
        for j, b in enumerate(betas):
            a = fig.add_subplot(gs[q, j + 1])
            a.imshow(rows[j][q].reshape(8, 8), cmap="gray")
            a.set_xticks([]), a.set_yticks([])
            a.set_title(f"β={b:.3g}\nN_eff={neff[j, q]:.1f}", fontsize=7)
    a = fig.add_subplot(gs[:, -1])
    for q in range(3):
        a.semilogx(betas, neff[:, q], "o-", label=f"query {q}")
    a.axhline(1, color="k", ls=":")
    a.set(xlabel="β", ylabel="effective # patterns")
    a.legend(fontsize=7)
    fig.suptitle("Modern Hopfield on digits, fixed point vs β: global average → metastable "
                 "mixtures → single patterns (20 stored digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"betas": betas.tolist(), "effective_patterns": neff.tolist()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="capacity_out")
    tier = ap.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="N = 100, 200 and fewer points")
    tier.add_argument("--tiny", action="store_true",
                      help="N = 48 and a few points: seconds, checks that everything runs")
    return ap


def main(argv=None) -> dict:
    """Write the three figures; return the curves and the β sweep they show."""
    args = build_parser().parse_args(argv)
    size = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    random = random_curves(size)
    plot_random(random, out / "capacity_random.png")
    images = image_curves(size)
    plot_images(images, out / "capacity_images.png")
    sweep = beta_sweep(out / "modern_hopfield_beta.png", size)
    print("effective number of patterns vs beta:", np.round(sweep["effective_patterns"], 2))
    print(f"wrote {out}/capacity_random.png, capacity_images.png, modern_hopfield_beta.png")
    return {"random": random, "images": images, "beta_sweep": sweep}


if __name__ == "__main__":
    main()
