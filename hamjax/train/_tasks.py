"""Tasks: what the relaxed state of a HAM is asked to do, and the loss on it.

A task turns a batch of images (and labels) into the relaxation's initial state, says which
layers are clamped (or which neurons frozen), and scores the relaxed state. Every loss is written
as a per-sample ``cost(g_out, batch)`` of the output layer's *activations*, so that equilibrium
propagation can nudge the dynamics with ``−β ∂cost/∂g_out`` (a current, like any synapse's;
docs/maths.md §5.4).

* :class:`Classification`: image clamped, label layer read out; cross-entropy with the label
  activations as logits (or squared error on them).
* :class:`Denoising`: the corrupted image is the initial state of the (free) image layer; the
  loss is the squared error of the relaxed image (HAM paper §3.1, pattern completion).
* :class:`Completion`: part of the image hidden; the visible pixels are frozen at their values,
  the hidden ones relax; loss on the restored pixels.
* :class:`Storage`: unsupervised memory storage: each training image, lightly perturbed, must
  relax back to itself, so the memories move onto the data (as dense associative memory learns).
* :class:`PatchCompletion`: masked patch completion (the Energy Transformer's task): a fraction
  of each image's patches masked, the visible ones frozen, the loss on the masked ones.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .. import data as hd
from ..models import patchify

__all__ = ["Task", "Classification", "Denoising", "Completion", "Storage", "PatchCompletion"]


def _set_layer(net, x: dict[str, Array], name: str, images: Array) -> None:
    """Set ``x[name]`` to ``images`` (``(n, ...)``), reshaped to the layer's shape and cast to
    its state's dtype."""
    x[name] = images.reshape(images.shape[:1] + net.layers[name].shape).astype(x[name].dtype)


class Task(eqx.Module):
    """Base class for training tasks: what the relaxed state of a HAM must do, and the loss on it.

    A task names ``input_layer`` (whose initial state is the prepared input) and
    ``output_layer`` (whose activations the cost reads), says which layers are clamped
    (:attr:`clamp`) and which input neurons frozen (:meth:`frozen`), and turns NumPy batches
    into arrays (:meth:`prepare`). The loss is ``ℓ = cost(g_out(x*))`` per sample, a function of
    the output layer's activations at the relaxed state ``x*`` (docs/maths.md §5), so that
    equilibrium propagation can add it to the energy as a nudge (§5.4). A subclass implements
    :meth:`prepare`, :meth:`cost` and :meth:`metrics`. Batches hold ``n`` samples."""

    input_layer: eqx.AbstractVar[str]
    output_layer: eqx.AbstractVar[str]
    per_image_rngs: ClassVar[bool] = False
    """Whether :meth:`prepare` takes a list of generators, one per image (image ``i`` then
    prepared exactly as alone with generator ``i``): :func:`hamjax.train.prepare_rows` then
    prepares a batch in one call instead of one call per image."""

    @property
    def clamp(self) -> tuple[str, ...]:
        """The layers held fixed at their initial values during relaxation (none here)."""
        return ()

    @abc.abstractmethod
    def prepare(
        self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, train: bool = True
    ) -> dict:
        """NumPy batch → dict of arrays: ``"input"`` (initial state of the input layer) and
        ``"target"``, and ``"frozen"`` (bool mask of input neurons held fixed) when used.
        ``train=False`` at evaluation: no augmentation."""

    @abc.abstractmethod
    def cost(self, g_out: Array, batch: dict) -> Array:
        """Per-sample loss as a function of the output layer's activations.

        ``g_out``: ``(n, *output layer shape)``; ``batch``: the prepared batch (:meth:`prepare`,
        as arrays). Returns shape ``(n,)``."""

    @abc.abstractmethod
    def metrics(self, g_out: Array, batch: dict) -> dict[str, Array]:
        """Per-sample quality figures (``correct`` or ``mse``/``psnr``).

        Arguments as for :meth:`cost`; each figure has shape ``(n,)``."""

    @property
    def main_metric(self) -> str:
        """The figure :func:`hamjax.train.fit` reports as the task's headline (``"accuracy"``
        here, the mean of ``correct``)."""
        return "accuracy"

    def frozen(self, batch: dict) -> dict[str, Array] | None:
        """``{layer: bool mask}`` of neurons held at their initial values during relaxation
        (``freeze`` of :func:`hamjax.relax`), or None for none (here)."""
        return None

    def initial_state(self, net, batch: dict) -> dict[str, Array]:
        """Zero states, with the input layer set to ``batch["input"]`` (reshaped to its shape).

        Returns ``{name: (n, *shape)}`` for every layer of ``net``."""
        x = net.init_state(batch=batch["input"].shape[:1])
        _set_layer(net, x, self.input_layer, batch["input"])
        return x

    def loss(self, net, state: dict[str, Array], batch: dict) -> Array:
        """Per-sample loss of a relaxed state: ``cost(g_out)`` with ``g_out`` the activation of
        the output layer of ``state`` (``{name: (n, *shape)}``). Returns shape ``(n,)``."""
        g = net.layers[self.output_layer].activation(state[self.output_layer])
        return self.cost(g, batch)

    def evaluate(self, net, state: dict[str, Array], batch: dict) -> dict[str, Array]:
        """``{"loss": cost, **metrics}`` of a relaxed state, per sample.

        ``state``: ``{name: (n, *shape)}``; every entry has shape ``(n,)``."""
        g = net.layers[self.output_layer].activation(state[self.output_layer])
        return {"loss": self.cost(g, batch), **self.metrics(g, batch)}


class Classification(Task):
    """Image clamped, label read out after relaxation.

    ``loss_kind="ce"`` (default): cross-entropy ``−log softmax(g_label)_y`` (label activations
    as logits); ``loss_kind="nll"``: ``−log g_label,y`` (label activations already
    probabilities: a Softmax label layer); ``loss_kind="mse"``: ``½|g_label − onehot(y)|²``
    (another value raises ``ValueError``). The cost of docs/maths.md §5, ``ℓ = C(g_out(x*))``.
    ``noise``: std of Gaussian noise added to training images (augmentation; none at test);
    ``shift``: training images translated by up to that many pixels
    (:func:`hamjax.data.random_shift`); ``rotate`` (degrees) and ``zoom``: random rotations and
    scalings (:func:`hamjax.data.random_affine`), applied before the shift; ``elastic``: the
    strength α of Simard et al.'s elastic distortions (σ = 4 pixels,
    :func:`hamjax.data.random_elastic`), applied first; ``flip``: mirror left to right with
    probability ½ (:func:`hamjax.data.random_flip`), applied last.

    ``input_layer`` (default ``"image"``) is clamped to the images, ``output_layer`` (default
    ``"label"``) holds ``num_classes`` (default 10) label neurons."""

    input_layer: str = "image"
    output_layer: str = "label"
    per_image_rngs: ClassVar[bool] = True
    loss_kind: str = eqx.field(static=True, default="ce")
    num_classes: int = eqx.field(static=True, default=10)
    noise: float = eqx.field(static=True, default=0.0)
    shift: int = eqx.field(static=True, default=0)
    rotate: float = eqx.field(static=True, default=0.0)
    zoom: float = eqx.field(static=True, default=0.0)
    elastic: float = eqx.field(static=True, default=0.0)
    flip: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.loss_kind not in ("ce", "nll", "mse"):
            raise ValueError(
                f"Classification loss must be 'ce', 'nll' or 'mse', got {self.loss_kind!r}"
            )

    @property
    def clamp(self):
        """``(input_layer,)``: the image is clamped."""
        return (self.input_layer,)

    def prepare(self, x, y, rng, train=True):
        """``{"input": images, "target": labels}``: ``x`` (``(n, H, W, C)`` or ``(n, D)``, values
        in ``[0, 1]``) augmented when ``train`` (elastic, affine, shift, flip, noise, drawn
        from ``rng``: a generator, or one per image, :attr:`per_image_rngs`), and
        ``y`` (``(n,)``) as ``int32``. Raises ``ValueError`` without labels."""
        if y is None:
            raise ValueError("Classification needs labels")
        x = np.asarray(x, np.float32)
        if self.elastic and train:
            x = hd.random_elastic(x, rng, self.elastic)
        if (self.rotate or self.zoom) and train:
            x = hd.random_affine(x, rng, self.rotate, self.zoom)
        if self.shift and train:
            x = hd.random_shift(x, rng, self.shift)
        if self.flip and train:
            x = hd.random_flip(x, rng)
        if self.noise > 0 and train:
            # Gaussian input noise: augmentation during training only
            z = hd.per_image(rng, len(x), lambda g, k: g.standard_normal(
                (k, *x.shape[1:]), dtype=np.float32))
            x = np.clip(x + self.noise * z, 0, 1)
        return {"input": x, "target": np.asarray(y, np.int32)}

    def cost(self, g_out, batch):
        """The ``loss_kind`` cost of the label activations against ``batch["target"]``.

        ``g_out``: ``(n, num_classes)``; returns shape ``(n,)``."""
        flat = g_out.reshape(g_out.shape[0], -1)
        onehot = jax.nn.one_hot(batch["target"], flat.shape[-1], dtype=flat.dtype)
        if self.loss_kind == "ce":
            return -jnp.sum(onehot * jax.nn.log_softmax(flat, axis=-1), axis=-1)
        if self.loss_kind == "nll":
            return -jnp.sum(onehot * jnp.log(jnp.clip(flat, 1e-12, None)), axis=-1)
        return 0.5 * jnp.sum((flat - onehot) ** 2, axis=-1)

    def metrics(self, g_out, batch):
        """``{"correct": 1.0 where argmax g_out is the label, else 0.0}``.

        ``g_out``: ``(n, num_classes)``; ``correct`` has shape ``(n,)``."""
        flat = g_out.reshape(g_out.shape[0], -1)
        return {"correct": (jnp.argmax(flat, axis=-1) == batch["target"]).astype(jnp.float32)}


def _image_mse(g_out, target):
    d = (g_out.reshape(g_out.shape[0], -1) - target.reshape(target.shape[0], -1)) ** 2
    return jnp.mean(d, axis=-1)


def _image_psnr(g_out, target):
    """:func:`hamjax.data.psnr` per sample, for images of any shape ``(n, ...)``."""
    n = target.shape[0]
    return hd.psnr(target.reshape(n, -1), g_out.reshape(n, -1))


class Denoising(Task):
    """The corrupted image is the initial state of the free image layer; loss
    ``½ Σ (g_image − clean)²`` per sample (reported as per-pixel MSE and PSNR).

    ``corruption`` (default ``"gaussian"``) and ``level`` (default 0.3) are a kind and level of
    :func:`hamjax.data.corrupt`; ``input_layer`` and ``output_layer`` are both ``"image"`` by
    default. ``evidence_layer`` names a layer that also holds the corrupted image, clamped
    (:func:`hamjax.models.dense_memory`'s ``"evidence"``, docs/maths.md §6.4): the attractor is
    then conditioned on the input, not only started from it. By default (None) no layer is
    clamped."""

    input_layer: str = "image"
    output_layer: str = "image"
    corruption: str = eqx.field(static=True, default="gaussian")
    level: float = eqx.field(static=True, default=0.3)
    evidence_layer: str | None = eqx.field(static=True, default=None)

    @property
    def clamp(self):
        """``(evidence_layer,)`` when the task has one, else none."""
        return () if self.evidence_layer is None else (self.evidence_layer,)

    def initial_state(self, net, batch):
        """:meth:`Task.initial_state`, with the evidence layer (when named) also set to the
        corrupted image; ``ValueError`` when ``net`` has no layer of that name.

        Returns ``{name: (n, *shape)}`` for every layer of ``net``."""
        x = super().initial_state(net, batch)
        ev = self.evidence_layer
        if ev is not None:
            if ev not in net.layers:
                raise ValueError(f"{type(self).__name__}: evidence_layer {ev!r} is not a layer "
                                 f"of the HAM (its layers: {list(net.layers)})")
            _set_layer(net, x, ev, batch["input"])
        return x

    def prepare(self, x, y, rng, train=True):
        """``{"input": corrupted images, "target": clean images}``, both of ``x``'s shape
        ``(n, ...)``; the corruption is drawn from ``rng``, the labels ``y`` are not used."""
        x = np.asarray(x, np.float32)
        corrupted = hd.corrupt(x, self.corruption, self.level, rng)
        return {"input": corrupted.images.astype(np.float32), "target": x}

    def cost(self, g_out, batch):
        """``½ Σ (g_out − target)²`` over each sample's pixels.

        ``g_out``: ``(n, *image shape)``; returns shape ``(n,)``."""
        t = batch["target"]
        return 0.5 * jnp.sum(
            (g_out.reshape(g_out.shape[0], -1) - t.reshape(t.shape[0], -1)) ** 2, axis=-1
        )

    def metrics(self, g_out, batch):
        """``mse`` (per-pixel mean squared error), ``psnr`` of the restored image and
        ``psnr_input`` of the corrupted input (the baseline), each of shape ``(n,)``."""
        mse = _image_mse(g_out, batch["target"])
        # the corrupted input's PSNR beside the restored one's: the baseline to beat
        return {"mse": mse, "psnr": _image_psnr(g_out, batch["target"]),
                "psnr_input": _image_psnr(batch["input"], batch["target"])}

    @property
    def main_metric(self):
        """``"psnr"``: the restoration's peak signal-to-noise ratio (dB)."""
        return "psnr"


class Completion(Denoising):
    """Part of the image hidden (``mask_bottom``: that fraction of the rows, or ``mask_random``);
    the visible pixels are frozen at their values, the hidden ones relax from ``fill``.

    ``corruption`` (default ``"mask_bottom"``) and ``level`` (default 0.5) as for
    :class:`Denoising`; ``input_layer`` and ``output_layer`` are both ``"image"`` by default."""

    corruption: str = eqx.field(static=True, default="mask_bottom")
    level: float = eqx.field(static=True, default=0.5)

    def prepare(self, x, y, rng, train=True):
        """``{"input": masked images, "target": clean images, "frozen": visible-pixel mask}``,
        each of ``x``'s shape ``(n, ...)``; ``frozen`` is True where a pixel was not hidden."""
        x = np.asarray(x, np.float32)
        corrupted = hd.corrupt(x, self.corruption, self.level, rng)
        return {
            "input": corrupted.images.astype(np.float32),
            "target": x,
            "frozen": ~corrupted.mask,
        }

    def frozen(self, batch):
        """``{input_layer: batch["frozen"]}``: the visible pixels are held at their values.

        The mask has shape ``(n, *image shape)``."""
        return {self.input_layer: batch["frozen"]}


class Storage(Denoising):
    """Unsupervised storage: each image, perturbed by Gaussian noise of std ``level``, must relax
    back to itself; the memories move onto the data.

    :class:`Denoising` with ``corruption="gaussian"`` and a small ``level`` (default 0.1);
    ``input_layer`` and ``output_layer`` are both ``"image"`` by default."""

    corruption: str = eqx.field(static=True, default="gaussian")
    level: float = eqx.field(static=True, default=0.1)


# 8-bit pixels: an error below their quantisation noise, (1/255)²/12, is not measurable. An
# exact fill (masked patches that are all background, filled with background) would otherwise
# be +inf and make every mean over samples infinite
def _masked_psnr(sq_err_sum, count):
    """:func:`hamjax.data.capped_psnr` of ``MSE = sq_err_sum / count``."""
    return hd.capped_psnr(sq_err_sum / count)


class PatchCompletion(Task):
    """Masked patch completion, the Energy Transformer's image task (Hoover et al. 2023), for a
    HAM with a patch layer, a mask layer and a token layer
    (:func:`hamjax.models.energy_transformer`).

    Each image ``(H, W, C)`` is cut into ``T`` patches of ``P = p·p·C`` pixels
    (:func:`hamjax.models.patchify`, ``p = patch_size``); ``round(level · T)`` of them (at least
    one, at most ``T − 1``), drawn per image from the task's rng, are masked. The patch layer
    starts at the patches with the masked ones set to ``fill`` and the visible ones frozen; the
    mask layer (clamped) holds ``m_C = 1`` on masked patches, 0 elsewhere; the token layer starts
    at the currents the linear synapses send into it at zero token activation, ``W_e p_C + u m_C
    + e_C`` (the encoder of docs/maths.md eq. ET3, the Energy Transformer's embedded tokens).

    The cost is ``½ Σ_C m_C |p_C − target_C|²`` over the masked patches only; the metrics are
    the per-pixel ``mse`` and ``psnr`` on the masked patches, and ``psnr_input`` of the ``fill``
    (each PSNR capped at 58.9 dB, that of 8-bit quantisation noise: a blank masked patch filled
    with 0 is exact, and one infinite sample would make the mean infinite).
    ``level`` must lie in ``(0, 1)`` (else ``ValueError``). Layers: ``input_layer`` and
    ``output_layer`` (both ``"patches"``), ``mask_layer`` (``"mask"``) and ``token_layer``
    (``"tokens"``); ``patch_size`` is ``p`` (default 2)."""

    input_layer: str = "patches"
    output_layer: str = "patches"
    mask_layer: str = eqx.field(static=True, default="mask")
    token_layer: str = eqx.field(static=True, default="tokens")
    patch_size: int = eqx.field(static=True, default=2)
    level: float = eqx.field(static=True, default=0.5)
    fill: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if not 0 < self.level < 1:
            raise ValueError(f"PatchCompletion level (the masked fraction of patches) must lie "
                             f"in (0, 1), got {self.level}")

    @property
    def clamp(self):
        """``(mask_layer,)``: the mask is an input of the relaxation."""
        return (self.mask_layer,)

    def num_masked(self, num_patches: int) -> int:
        """Patches masked per image: ``round(level · T)``, within ``[1, T − 1]``.

        ``num_patches``: ``T``, the patches of one image; returns an int."""
        return int(min(max(round(self.level * num_patches), 1), num_patches - 1))

    def prepare(self, x, y, rng, train=True):
        """``{"input", "target", "mask", "frozen"}`` from images ``x`` of shape ``(n, H, W,
        C)``: the patches ``(n, T, P)`` with the masked ones at ``fill``, the clean patches, the
        mask ``(n, T, 1)`` (1.0 on masked patches) and the frozen neurons ``(n, T, P)`` (True on
        visible patches). The masked patches are drawn from ``rng`` (the labels ``y`` are not
        used). Raises ``ValueError`` for images not of rank 4 or not divisible into patches."""
        x = np.asarray(x, np.float32)
        if x.ndim != 4:
            raise ValueError(f"PatchCompletion needs images (n, H, W, C), got shape {x.shape}")
        target = np.asarray(patchify(x, self.patch_size))
        n, t, _ = target.shape
        k = self.num_masked(t)
        # k distinct patches per image: the first k of a random permutation of each row
        order = np.argsort(rng.random((n, t)), axis=1)
        masked = np.zeros((n, t), bool)
        np.put_along_axis(masked, order[:, :k], True, axis=1)
        inp = np.where(masked[..., None], np.float32(self.fill), target)
        return {"input": inp, "target": target, "mask": masked[..., None].astype(np.float32),
                "frozen": np.broadcast_to(~masked[..., None], target.shape).copy()}

    def frozen(self, batch):
        """``{input_layer: batch["frozen"]}``: the visible patches are held at their pixels.

        The mask has shape ``(n, T, P)``."""
        return {self.input_layer: batch["frozen"]}

    def initial_state(self, net, batch):
        """The patches and the mask from ``batch``; the tokens at the currents of the linear
        (multilinear) synapses into them at zero token activation, plus the token layer's bias:
        ``W_e p_C + u m_C + e_C`` for :func:`hamjax.models.energy_transformer`. Raises
        ``ValueError`` when ``net`` lacks one of the task's layers.

        Returns ``{name: (n, *shape)}`` for every layer of ``net``."""
        names = (self.input_layer, self.mask_layer, self.token_layer)
        missing = [m for m in names if m not in net.layers]
        if missing:
            raise ValueError(f"PatchCompletion needs layers {list(names)}; the HAM has "
                             f"{list(net.layers)} (missing {missing})")
        n = batch["input"].shape[0]
        x = net.init_state(batch=(n,))
        x[self.input_layer] = batch["input"].astype(x[self.input_layer].dtype)
        x[self.mask_layer] = batch["mask"].astype(x[self.mask_layer].dtype)
        tok = self.token_layer
        linear = [s for s, syn in net.synapses.items()
                  if syn.multilinear and tok in net.edges[s]]
        g = {name: net.layers[name].activation(v) for name, v in x.items()}

        def e(gt):
            return sum(jnp.sum(net.synapse_energy(s, {**g, tok: gt})) for s in linear)

        x0 = -jax.grad(e)(jnp.zeros_like(x[tok])) if linear else x[tok]
        bias = net.layers[tok].bias
        x[tok] = x0 if bias is None else x0 + bias
        return x

    def _masked_sq_err(self, g_out, batch):
        d = (g_out - batch["target"]) ** 2 * batch["mask"]
        return jnp.sum(d.reshape(d.shape[0], -1), axis=-1)

    def _masked_pixels(self, batch):
        p = batch["target"].shape[-1]
        return jnp.sum(batch["mask"].reshape(batch["mask"].shape[0], -1), axis=-1) * p

    def cost(self, g_out, batch):
        """``½ Σ_C m_C |g_C − target_C|²``: the masked patches only.

        ``g_out``: ``(n, T, P)``; returns shape ``(n,)``."""
        return 0.5 * self._masked_sq_err(g_out, batch)

    def metrics(self, g_out, batch):
        """``mse`` (per masked pixel), ``psnr`` on the masked patches and ``psnr_input`` of the
        ``fill`` they started from, each of shape ``(n,)``."""
        count = self._masked_pixels(batch)
        se = self._masked_sq_err(g_out, batch)
        return {"mse": se / count, "psnr": _masked_psnr(se, count),
                "psnr_input": _masked_psnr(self._masked_sq_err(batch["input"], batch), count)}

    @property
    def main_metric(self):
        """``"psnr"``: the peak signal-to-noise ratio of the masked patches (dB)."""
        return "psnr"

    def baselines(self, batch, mean_patches, reference) -> dict[str, Array]:
        """Per-sample PSNR on the masked patches of two fills that need no network:

        * ``psnr_mean``: the masked patches of ``mean_patches`` ``(T, P)`` (the training mean
          image, patchified);
        * ``psnr_nearest``: those of the ``reference`` image ``(M, T, P)`` nearest to the
          sample on its visible patches: ``argmin_r Σ_visible (x − r)²``
          (:func:`hamjax.data.nearest_fill`).

        ``batch``: a prepared batch (:meth:`prepare`); returns two ``(n,)`` arrays."""
        tgt = jnp.asarray(batch["target"])
        n = tgt.shape[0]
        m = jnp.broadcast_to(jnp.asarray(batch["mask"]), tgt.shape)
        count = self._masked_pixels(batch)
        mean_fill = jnp.broadcast_to(jnp.asarray(mean_patches), tgt.shape)
        ref = jnp.asarray(reference).reshape(len(reference), -1)
        vis = (1.0 - m).reshape(n, -1)
        nearest = hd.nearest_fill(tgt.reshape(n, -1), vis, ref).reshape(tgt.shape)
        return {"psnr_mean": _masked_psnr(self._masked_sq_err(mean_fill, batch), count),
                "psnr_nearest": _masked_psnr(self._masked_sq_err(nearest, batch), count)}
