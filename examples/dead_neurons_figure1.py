"""The dead-neurons paper's Figure 1 situation on a two-neuron ReLU network.

Left: the vector field of ``dx/dt = W relu(x) − x + b`` with the isolines of the Krotov–Hopfield
energy (DN eq. 4). Where neuron 0 is dead (``x_0 < 0``) the energy does not depend on ``x_0``: its
isolines run parallel to the ``x_0`` axis, and in the quadrant where both neurons are dead it is
constant. The energy cannot locate the steady state there.
Right: the same field with the residual energy ``½|F(x)|²`` (DN eq. 14 with α = 0, β = 1), which
decreases along the same dynamics (``‖W‖₂ ≤ 1``) and has no flat directions: one bowl around the
steady state.

    python examples/dead_neurons_figure1.py [--out dead_neurons_figure1.png] [--grid N]
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import hamjax as hj  # noqa: E402
from hamjax import analysis as an  # noqa: E402


def two_neuron_relu():
    """``W = [[0, ½], [½, ¼]]``, ``b = (−2, 1.5)``: steady state ``x* = (−1, 2)``, neuron 0 dead."""
    w = jnp.array([[0.0, 0.5], [0.5, 0.25]])
    lateral = hj.synapses.Lateral(2, zero_diagonal=False, key=jax.random.PRNGKey(0))
    lateral = eqx.tree_at(lambda s: s.weight, lateral, w)
    layer = hj.Layer(2, hj.lagrangians.ReLU(), bias=jnp.array([-2.0, 1.5]))
    return hj.HAM({"x": layer}, {"w": lateral}, {"w": ("x",)})


def main(out: str = "dead_neurons_figure1.png", grid: int = 201) -> dict:
    """Draw the figure; return its path, the stability report at ``x*`` and the two energies
    on the ``grid × grid`` mesh of ``[−4, 4]²`` (rows along ``x₁``, columns along ``x₀``)."""
    net = two_neuron_relu()
    x_star = {"x": jnp.array([-1.0, 2.0])}
    report = an.stability(net, x_star)
    print(report)

    lo, hi, n = -4.0, 4.0, grid
    g0, g1 = jnp.meshgrid(jnp.linspace(lo, hi, n), jnp.linspace(lo, hi, n))
    grid = {"x": jnp.stack([g0, g1], axis=-1)}  # batch (n, n) of two-neuron states
    e_kh = np.asarray(net.energy(grid))
    e_res = np.asarray(an.residual_energy(net, grid))
    q0, q1 = jnp.meshgrid(jnp.linspace(lo, hi, 21), jnp.linspace(lo, hi, 21))
    field = np.asarray(net.vector_field({"x": jnp.stack([q0, q1], axis=-1)})["x"])
    g0, g1, q0, q1 = (np.asarray(a) for a in (g0, g1, q0, q1))

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    # levels concentrated near the minimum so the flat isolines of the dead region show
    panels = [
        (axes[0], e_kh, np.linspace(e_kh.min(), 3.0, 25),
         "Krotov–Hopfield energy (flat where neurons die)"),
        (axes[1], np.log10(e_res + 1e-3), 30,
         "residual energy log₁₀(½|F|² + 10⁻³) (no flat region)"),
    ]
    for ax, e, levels, title in panels:
        cs = ax.contourf(g0, g1, e, levels=levels, cmap="viridis", extend="max")
        ax.contour(g0, g1, e, levels=levels, colors="k", linewidths=0.4)
        fig.colorbar(cs, ax=ax, shrink=0.85)
        ax.streamplot(q0, q1, field[..., 0], field[..., 1], color="w", density=1.0,
                      linewidth=0.8, arrowsize=0.8)
        ax.plot(*np.asarray(x_star["x"]), "r*", ms=14, label="steady state x* = (−1, 2)")
        ax.axvline(0.0, color="r", ls="--", lw=0.8)
        ax.axhline(0.0, color="r", ls="--", lw=0.8)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="x₀", ylabel="x₁", title=title)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].text(-3.8, -3.6, "both neurons dead:\nE constant", color="w", fontsize=9)
    verdict = {True: "stable", False: "unstable", None: "undecided"}[report.stable]
    fig.suptitle(f"dx/dt = W relu(x) − x + b; stability: {verdict} "
                 f"({report.n_dead['x']} dead neuron at x*)")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return {"out": out, "report": report, "grid": (g0, g1), "energy": e_kh,
            "residual_energy": e_res}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dead_neurons_figure1.png")
    parser.add_argument("--grid", type=int, default=201,
                        help="energy evaluations per axis of the contour plots")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    main(args.out, args.grid)
