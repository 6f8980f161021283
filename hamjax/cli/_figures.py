"""The run's pictures (matplotlib, written as PNG files into the run folder): the first layer's
receptive fields, predictions, reconstructions or completions of test images, and the energy
during their relaxation."""

from __future__ import annotations

import os
from pathlib import Path

SHOWN = 10  # test images in predictions.png, reconstructions.png and energy.png


def pictures(out: Path, net, task, gradient, data, cfg) -> list[str]:
    """Write the run's PNGs into ``out``; return their names."""
    import jax.numpy as jnp
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from .. import SaveAt, relax

    # --limit-test may leave fewer than ten test images: show what there is
    k = min(SHOWN, data.num_test)
    xb, yb = data.x_test[:k], data.y_test[:k]
    batch = {n: jnp.asarray(v) for n, v in
             task.prepare(xb, yb, np.random.default_rng(0), train=False).items()}
    kw, kw_saving = _relax_kwargs(gradient)
    x0 = task.initial_state(net, batch)
    sol = relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch), save=SaveAt(energy=True),
                raise_nonfinite=False, **kw_saving)
    names = []
    if _weights_figure(out / "weights.png", net, cfg, data, sol):
        names.append("weights.png")
    if cfg["task"] == "classify":
        _predictions_figure(out / "predictions.png", net, task, data, xb, yb, sol, kw)
        names.append("predictions.png")
    elif cfg["model"] == "transformer":
        _completions_figure(out / "completions.png", net, task, data, xb, batch, sol, cfg)
        names.append("completions.png")
    else:
        _reconstructions_figure(out / "reconstructions.png", net, task, data, xb, batch, sol,
                                cfg)
        names.append("reconstructions.png")
    _energy_figure(out / "energy.png", net, task, batch, x0, sol, cfg)
    names.append("energy.png")
    return names


def _grey_squeezed(images):
    """``(n, H, W, 1)`` → ``(n, H, W)``; colour ``(n, H, W, 3)`` unchanged."""
    return images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images


def _show(ax, image, image_shape) -> None:
    """Draw one image with values in [0, 1]: grey as grey, colour (C = 3) as colour, clipped
    to [0, 1] (a restoration may overshoot)."""
    import numpy as np

    a = np.clip(np.asarray(image).reshape(image_shape), 0.0, 1.0)
    if a.ndim == 3 and a.shape[-1] == 3:
        ax.imshow(a)
    else:
        ax.imshow(a[..., 0] if a.ndim == 3 else a, cmap="gray", vmin=0, vmax=1)


def _label(data, label) -> str:
    """Class ``label`` as the pictures show it: its name, shortened, or its number."""
    name = data.label_name(label)
    return name if len(name) <= 10 else name[:9] + "…"


def _relax_kwargs(gradient) -> tuple[dict, dict]:
    """``(kw, kw_saving)``: :func:`hamjax.relax` keywords of the estimator's own relaxation,
    forward only, and of one that saves the energy along the way."""
    import diffrax

    from .. import SteadyState

    kw = dict(gradient.relax_kwargs())
    kw.pop("adjoint", None)  # forward only: an implicit adjoint matters only under grad
    if isinstance(kw.get("solver"), diffrax.AbstractSolver | None):
        return kw, kw
    # the energy picture follows the dynamics in time: the ODE to the same tolerance (a
    # steady-state method's iterations have no time axis)
    return kw, dict(stop=SteadyState(atol=gradient.tolerance), max_steps=4096)


def _save(fig, path: Path) -> None:
    """Save through a temporary name renamed over ``path`` (no half-drawn PNG), then close."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def receptive_fields(net, cfg, data, sol):
    """``(images, captions, title, colour-bar label, colour map, symmetric)`` for weights.png:
    what the model's first layer responds to, most used first; None for a model without."""
    if cfg["model"] in ("dense", "deep"):
        return _dense_fields(net, sol)
    if cfg["model"] == "conv":
        return _conv_fields(net, sol)
    if cfg["model"] == "memory":
        return _memory_fields(net, data)
    return None


def _dense_fields(net, sol):
    """The input weights of the 16 most active hidden units."""
    import numpy as np

    name = "hidden" if "hidden" in net.layers else "hidden1"
    # the dense synapse from the image into that layer: "w1" of the classifiers, "memory" of
    # hamjax.models.dense_memory
    syn = next(net.synapses[s] for s, e in net.edges.items() if e == ("image", name))
    w = _grey_squeezed(np.asarray(syn.weight).reshape((-1,) + syn.in_shape))
    act = np.asarray(net.layers[name].activation(sol.state[name])).reshape(
        len(sol.state[name]), -1)
    score = act.mean(0)
    order, caps = _most_active(score, "unit")
    title = (f"input weights of the {len(order)} most active of {w.shape[0]} hidden units "
             f"(ḡ: mean activation over {len(act)} test images)")
    return w[order], caps, title, "weight from pixel to unit", "RdBu_r", True


def _most_active(score, what: str, n: int = 16):
    """The indices of the ``n`` largest mean activations ``score`` and their captions."""
    import numpy as np

    order = np.argsort(-score)[:n]
    return order, [f"{what} {i}\nḡ={score[i]:.2f}" for i in order]


def _conv_fields(net, sol):
    """The kernels of the 16 most active feature maps."""
    import numpy as np

    # (kh, kw, C, maps) -> one (kh, kw, C) picture per feature map
    k = _grey_squeezed(np.moveaxis(np.asarray(net.synapses["conv"].kernel), -1, 0))
    act = np.asarray(net.layers["features"].activation(sol.state["features"]))
    score = act.reshape(-1, act.shape[-1]).mean(0)
    order, caps = _most_active(score, "map")
    title = (f"kernels of the {len(order)} most active of {k.shape[0]} feature maps "
             f"(ḡ: mean activation over test images and positions)")
    return k[order], caps, title, "kernel weight", "RdBu_r", True


def _memory_fields(net, data):
    """The 16 memories nearest to the most test images."""
    import numpy as np

    syn = net.synapses["memory"]
    mem = np.asarray(syn.memories)
    # which memory each test image is nearest to (the one its relaxation is drawn to)
    x = np.asarray(data.x_test, np.float32).reshape(data.num_test, -1)
    d = (x ** 2).sum(1)[:, None] - 2 * x @ mem.T + (mem ** 2).sum(1)[None, :]
    uses = np.bincount(np.argmin(d, 1), minlength=len(mem))
    order = np.argsort(-uses, kind="stable")[:16]
    caps = [f"memory {i}\nnearest to {uses[i]}" for i in order]
    title = (f"the {len(order)} of {len(mem)} memories nearest to most of the "
             f"{data.num_test} test images")
    imgs = _grey_squeezed(mem.reshape((-1,) + syn.shape))
    return imgs[order], caps, title, "pixel value", "gray", False


def _weights_figure(path: Path, net, cfg, data, sol) -> bool:
    """Receptive fields on one shared, labelled colour scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    fields = receptive_fields(net, cfg, data, sol)
    if fields is None:
        return False
    imgs, caps, title, label, cmap, symmetric = fields
    cols = min(8, len(imgs))
    rows = int(np.ceil(len(imgs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3 + 1.2, rows * 1.5 + 0.8),
                             squeeze=False, layout="constrained")
    # one scale for every field, so their strengths compare; symmetric around 0 for weights
    hi = float(np.max(np.abs(imgs)) if symmetric else np.max(imgs))
    lo = -hi if symmetric else float(np.min(imgs))
    colour = imgs.ndim == 4
    if colour and symmetric:
        # an RGB picture has no colour map: each channel's weight is mapped to [0, 1] on the
        # shared scale, 0 to mid-grey
        imgs = np.clip((imgs - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        title += f"\ncolour: each channel's {label} from {lo:.3g} (dark) to {hi:.3g} (bright)"
    elif colour:
        imgs = np.clip(imgs, 0.0, 1.0)  # images: their own colours
        title += f"\n{label}s in their own colours, clipped to [0, 1]"
    im = None
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(imgs):
            im = (ax.imshow(imgs[i]) if colour else
                  ax.imshow(imgs[i], cmap=cmap, vmin=lo, vmax=hi))
            ax.set_title(caps[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    if not colour:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    _save(fig, path)
    return True


def _predictions_figure(path, net, task, data, xb, yb, sol, kw) -> None:
    """Predicted labels for clean and noisy test images."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from .. import data as hd
    from .. import relax

    k = len(xb)
    noisy = hd.gaussian_noise(xb, 0.3, np.random.default_rng(1)).images
    nb = {"input": jnp.asarray(noisy), "target": jnp.asarray(yb)}
    sol_noisy = relax(net, task.initial_state(net, nb), clamp=task.clamp, raise_nonfinite=False,
                      **kw)
    pred = np.argmax(np.asarray(sol.state["label"]).reshape(k, -1), -1)
    pred_noisy = np.argmax(np.asarray(sol_noisy.state["label"]).reshape(k, -1), -1)
    fig, axes = plt.subplots(2, k, figsize=(max(k, 4) * 1.1, 3.3), squeeze=False)
    for i in range(k):
        for r, (img, p) in enumerate(((xb[i], pred[i]), (noisy[i], pred_noisy[i]))):
            ax = axes[r, i]
            _show(ax, img, data.image_shape)
            ax.set_title(_label(data, p) + ("" if p == yb[i] else f"\n({_label(data, yb[i])})"),
                         color="black" if p == yb[i] else "red", fontsize=8)
            ax.axis("off")
    axes[0, 0].text(-0.3, 0.5, "clean", transform=axes[0, 0].transAxes, ha="right")
    axes[1, 0].text(-0.3, 0.5, "noisy", transform=axes[1, 0].transAxes, ha="right")
    fig.suptitle("predicted label after relaxation (red when wrong, the true label below it)")
    fig.tight_layout()
    _save(fig, path)


def _reconstructions_figure(path, net, task, data, xb, batch, sol, cfg) -> None:
    """Original, corrupted and restored test images, each corrupted and restored one with its
    PSNR, and the means in the title."""
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(xb)
    ev = {n: np.asarray(v) for n, v in task.evaluate(net, sol.state, batch).items()}
    restored = np.asarray(net.layers["image"].activation(sol.state["image"]))
    fig, axes = plt.subplots(3, k, figsize=(max(k, 4) * 1.1, 4.4), squeeze=False)
    rows = ((xb, None), (np.asarray(batch["input"]), ev.get("psnr_input")),
            (restored, ev.get("psnr")))
    for i in range(k):
        for r, (imgs, psnr) in enumerate(rows):
            ax = axes[r, i]
            _show(ax, imgs[i], data.image_shape)
            ax.axis("off")
            if psnr is not None:
                ax.set_title(f"{psnr[i]:.1f} dB", fontsize=8)
    for r, lab in enumerate(("original", "corrupted", "restored")):
        axes[r, 0].text(-0.3, 0.5, lab, transform=axes[r, 0].transAxes, ha="right")
    fig.suptitle(reconstructions_title(ev, cfg, k), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _completions_figure(path, net, task, data, xb, batch, sol, cfg) -> None:
    """Masked patch completion: the original test images, the masked ones (masked patches
    grey) and the completed ones (the relaxed patch layer), each completion with its PSNR on
    the masked patches, the means in the title."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..models import unpatchify

    k = len(xb)
    ev = {n: np.asarray(v) for n, v in task.evaluate(net, sol.state, batch).items()}
    p, shape = task.patch_size, data.image_shape
    mask = np.asarray(batch["mask"])
    masked_view = np.where(mask > 0, 0.5, np.asarray(batch["input"]))
    done = np.asarray(net.layers[task.output_layer].activation(sol.state[task.output_layer]))
    rows = ((np.asarray(xb), None), (np.asarray(unpatchify(masked_view, shape, p)), None),
            (np.asarray(unpatchify(done, shape, p)), ev["psnr"]))
    fig, axes = plt.subplots(3, k, figsize=(max(k, 4) * 1.1, 4.4), squeeze=False)
    for i in range(k):
        for r, (imgs, psnr) in enumerate(rows):
            ax = axes[r, i]
            img = np.clip(imgs[i].reshape(shape), 0, 1)
            ax.imshow(img[..., 0] if shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            if psnr is not None:
                ax.set_title(f"{psnr[i]:.1f} dB", fontsize=8)
    for r, lab in enumerate(("original", "masked", "completed")):
        axes[r, 0].text(-0.3, 0.5, lab, transform=axes[r, 0].transAxes, ha="right")
    fig.suptitle(f"{cfg['noise']:g} of the {p}x{p} patches masked (grey), {k} test images: "
                 f"mean PSNR on the masked patches {ev['psnr'].mean():.1f} dB", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def reconstructions_title(ev: dict, cfg: dict, k: int) -> str:
    """The task, its corruption (kind, where the run names one, and level) and the mean PSNR of
    the corrupted and restored images."""
    kind = f"{cfg['corruption']} " if cfg.get("corruption") else ""
    title = f"{cfg['task']} ({kind}level {cfg['noise']:g}) on {k} test images"
    if "psnr_input" in ev:
        return title + (f": mean PSNR {ev['psnr_input'].mean():.1f} dB corrupted → "
                        f"{ev['psnr'].mean():.1f} dB restored")
    return title + f": mean PSNR {ev['psnr'].mean():.1f} dB restored"


def energy_gaps(net, task, batch, x0, sol):
    """``(ts, E(t) − E*, converged, found)``: the energy along the run's own relaxation ``sol``
    above ``E*``, the energy of the steady state an adaptive solve reaches from the same start
    ``x0`` (per sample; ``found`` False where that solve did not converge either), and whether
    ``sol`` itself ended within residual 1e-4. Measuring against the last saved step instead
    would make every curve plunge to zero and an unconverged relaxation look converged."""
    import numpy as np

    from .. import SteadyState, relax

    steady = relax(net, x0, clamp=task.clamp, freeze=task.frozen(batch),
                   stop=SteadyState(atol=1e-4), max_steps=20000, raise_nonfinite=False)
    e_star = np.asarray(net.energy(steady.state))
    e = sol.energy_trace()  # (saved steps, samples)
    ts = np.asarray(sol.ts)
    ts = ts[np.isfinite(ts)][: len(e)]
    return ts, e - e_star[None, :], np.asarray(sol.converged), np.asarray(steady.converged)


def _energy_figure(path, net, task, batch, x0, sol, cfg) -> None:
    """``E(t) − E*`` per test image (:func:`energy_gaps`); relaxations that end above
    residual 1e-4 are dotted and counted in the title."""
    import matplotlib.pyplot as plt

    ts, gap, ok, found = energy_gaps(net, task, batch, x0, sol)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in range(gap.shape[1]):
        if found[i]:  # without a steady state there is nothing to measure against
            ax.plot(ts, gap[:, i], color=f"C{i % 10}", lw=1.2, ls="-" if ok[i] else ":")
    # E − E* may dip below 0 (the run's Euler relaxation and the adaptive solve land a float
    # tolerance apart), so a symmetric log scale instead of clipping to a positive floor
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("time (units of τ)")
    ax.set_ylabel("E(t) − E*   (E*: steady-state energy)")
    n = gap.shape[1]
    note = [f"{int(ok.sum())} of {n} relaxations reached residual 1e-4 by t = {ts[-1]:.3g}"]
    if not ok.all():
        note.append(f"dotted: the {int((~ok).sum())} that did not")
    if not found.all():
        note.append(f"{int((~found).sum())} without a steady state (not drawn)")
    ax.set_title(f"energy during the {cfg['gradient']} relaxation, {n} test images\n"
                 + "; ".join(note), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def landscape_figure(path: Path, net, clamp, x_star, report) -> str:
    """``landscape.png``: the energy and the residual energy ``½|F|²`` on a plane through the
    steady state ``x_star`` (one sample, full state), with the dynamics' vector field drawn
    over both (:func:`hamjax.analysis.energy_slice`; the dead-neurons paper's Figure 1, for the
    trained network). The plane is spanned by a dead neuron's direction (into its flat region)
    and the stiffest live direction of the same layer, where the layer has a dead neuron;
    otherwise by its softest and stiffest live directions. Returns the plane's description."""
    import jax.numpy as jnp
    import numpy as np

    from .. import analysis

    dead = report.dead
    layer = next((n for n in dead.index.names if dead.counts[n] > 0), dead.index.names[0])
    shape = dead.index.shapes[dead.index.names.index(layer)]
    live, eig = dead.live[layer], dead.live_eigenvalues[layer]
    order = np.argsort(eig)  # softest first; equal eigenvalues (an Identity layer): any two
    stiff = live[:, int(order[-1])]
    if dead.counts[layer] > 0:
        first, what = dead.directions[layer][:, 0], f"a dead neuron of {layer!r}"
    else:
        first, what = live[:, int(order[0])], f"the softest live direction of {layer!r}"
    dyn = net.dynamics(x_star, clamp=clamp)
    free = dyn.free_state(x_star)

    def direction(vec):
        return {n: jnp.asarray(vec.reshape(shape)) if n == layer else jnp.zeros_like(v)
                for n, v in free.items()}

    # far enough to see the dead neuron come alive: past |x_i| along its direction and back
    i = int(np.argmax(np.abs(first)))
    reach = max(1.0, 3.0 * float(abs(np.asarray(free[layer]).ravel()[i])))
    kw = dict(extent=reach, grid=41)
    energy = analysis.energy_slice(lambda f: net.energy(dyn.full_state(f)), free,
                                   direction(first), direction(stiff), vector_field=dyn, **kw)
    resid = analysis.energy_slice(
        lambda f: analysis.residual_energy(net, dyn.full_state(f), clamp=clamp), free,
        direction(first), direction(stiff), **kw)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    field = energy.field
    for ax, sl, title in ((axes[0], energy, "energy E (DN eq. 4)"),
                          (axes[1], resid, "residual energy ½|F|² (DN eq. 14, α = 0)")):
        vals = sl.values if sl is energy else np.log10(sl.values + 1e-12)
        cs = ax.contourf(sl.a, sl.b, vals, levels=30, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="E" if sl is energy else "log10 ½|F|²")
        ax.streamplot(sl.a, sl.b, field[0], field[1], color="white", density=0.9,
                      linewidth=0.6, arrowsize=0.7)
        ax.plot(0, 0, "r*", ms=10, label="steady state")
        ax.set(title=title, xlabel=f"along {what}", ylabel=f"along the stiffest direction of "
               f"{layer!r}")
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle("the plane through a test image's steady state; white: the dynamics' flow",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return f"{what} and the stiffest live direction of {layer!r}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def basins_figure(path: Path, basins, memories) -> None:
    """``basins.png``: a memory model's basin curves (:func:`hamjax.analysis.basins` against the
    noise level: each memory thin, the mean thick, one half dashed) beside the memories whose
    basins are the widest and the narrowest."""
    import numpy as np

    plt = _pyplot()
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    for col in basins.returned.T:
        ax.plot(basins.levels, col, color="grey", lw=0.5, alpha=0.5)
    ax.plot(basins.levels, basins.mean, "o-", color="C0", lw=2, label="mean over memories")
    ax.axhline(0.5, color="k", ls="--", lw=0.7)
    ax.set(xlabel="Gaussian noise σ added to a memory",
           ylabel="P(relaxation ends at its attractor)",
           title=f"basins of {basins.returned.shape[1]} learned memories, "
                 f"{basins.trials} draws each")
    ax.legend(fontsize=8)
    r = np.where(np.isfinite(basins.radius), basins.radius, basins.levels[-1] * 1.05)
    order = np.argsort(-r)
    pick = list(order[:4]) + list(order[-4:])
    mem = np.asarray(memories)
    for j, i in enumerate(pick):
        a = fig.add_subplot(2, 8, 4 + (j // 4) * 8 + (j % 4) + 1)
        img = mem[i]
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        a.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None)
        radius = (f"> {basins.levels[-1]:g}" if not np.isfinite(basins.radius[i])
                  else f"{basins.radius[i]:.2f}")
        a.set_title(f"{'widest' if j < 4 else 'narrowest'}\nradius {radius}", fontsize=7)
        a.axis("off")
    fig.tight_layout()
    _save(fig, path)
