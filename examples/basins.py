"""Basins of attraction of binary associative memories, against the classical capacity.

    python examples/basins.py [--out DIR] [--quick | --tiny]

Writes ``DIR/basins.png`` (default ``basins_out/``): for random ±1 patterns of N = 400 bits,

* left: the probability that asynchronous sign updates from a stored pattern with a fraction of
  its bits flipped end at that pattern's attractor (``hj.analysis.basins``), averaged over the
  patterns, for the classical Hopfield network at loads K/N below and above 0.138 and for a
  rectified cubic dense associative memory (Krotov & Hopfield 2016) far above it;
* right: the radius where that probability falls below one half, and the fraction of wrong bits
  of each pattern's own attractor, against K/N, with 0.138 marked: below it the patterns are
  retrieved and their basins shrink as the load grows; above it the attractors are not the
  patterns (a basin around a spurious state is no retrieval).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import hamjax as hj  # noqa: E402
from hamjax import capacity as C  # noqa: E402

SIZES = {
    "full": dict(n=400, loads=(0.02, 0.05, 0.08, 0.11, 0.14, 0.17, 0.2, 0.3), dense=0.4,
                 trials=8, levels=np.round(np.linspace(0.0, 0.6, 13), 3)),
    "quick": dict(n=200, loads=(0.02, 0.08, 0.14, 0.2), dense=0.4, trials=4,
                  levels=np.round(np.linspace(0.0, 0.6, 7), 3)),
    "tiny": dict(n=64, loads=(0.05, 0.3), dense=0.4, trials=2,
                 levels=np.array([0.0, 0.2, 0.4, 0.6])),
}


def measure(kind: str, n: int, k: int, levels, trials: int) -> hj.analysis.Basins:
    """The basins of ``k`` random patterns of ``n`` bits stored in a ``kind`` memory."""
    xi = C.random_patterns(k, n, key=jax.random.PRNGKey(k))
    model = C.make_memory(kind, xi, 3)

    def retrieve(x, key):
        return C.retrieve(model, x, steps=None, mode="async", key=key, max_steps=30,
                          chunk=64 if kind == "poly" else None)[0]

    return hj.analysis.basins(retrieve, xi, levels, corrupt=C.flip_fraction, trials=trials,
                              key=jax.random.PRNGKey(1))


def main(argv=None) -> dict:
    """Measure the curves, draw ``basins.png``; return the curves."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="basins_out")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    size = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, levels, trials = size["n"], size["levels"], size["trials"]
    curves = {}
    for load in size["loads"]:
        curves[("hebbian", load)] = measure("hebbian", n, max(2, round(load * n)), levels, trials)
    load = size["dense"]
    curves[("poly", load)] = measure("poly", n, round(load * n), levels, trials)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(size["loads"])))
    for c, load in zip(colours, size["loads"], strict=True):
        ax.plot(levels, curves[("hebbian", load)].mean, "o-", color=c, ms=3,
                label=f"Hopfield, K/N = {load:g}")
    ax.plot(levels, curves[("poly", size["dense"])].mean, "s--", color="crimson", ms=3,
            label=f"dense x³ (rectified), K/N = {size['dense']:g}")
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set(xlabel="fraction of bits flipped", ylabel="P(end at the pattern's attractor)",
           title=f"basins, N = {n}, {trials} corruptions per pattern and level")
    ax.legend(fontsize=7)
    loads = np.array(size["loads"])
    radius = [min(curves[("hebbian", x)].mean_radius, levels[-1]) for x in loads]
    wrong = [float((curves[("hebbian", x)].attractor_error ** 2 / 4).mean()) for x in loads]
    ax2.plot(loads, radius, "o-", label="radius (P falls below ½)")
    ax2.plot(loads, wrong, "s-", label="wrong bits of the pattern's own attractor")
    ax2.axvline(0.138, color="grey", ls=":", label="0.138 (Amit, Gutfreund & Sompolinsky)")
    ax2.set(xlabel="K / N", ylabel="fraction of N", title="classical Hopfield network")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "basins.png", dpi=100)
    plt.close(fig)
    print("mean radius:", {f"{k[0]} {k[1]:g}": round(v.mean_radius, 3)
                           for k, v in curves.items()})
    print(f"wrote {out}/basins.png")
    return {"levels": levels, "curves": curves}


if __name__ == "__main__":
    main()
