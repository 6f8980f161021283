"""The restorations a user tries before an associative memory: the nearest training image, a PCA
projection and a modern Hopfield network storing the training set, each from the same evidence.

Every baseline restores a flattened corrupted batch ``x`` ``(n, D)`` from the pixels it may trust,
``evidence`` ``(n, D)`` (1 where a pixel is evidence, 0 where it is hidden: the visible pixels of a
masked image, every pixel of a noisy one), with the training images ``X`` ``(M, D)`` as its
memory:

* nearest: ``X_r`` with ``r = argmin_r Σ_d e_d (x_d − X_rd)²`` (the nearest training image on the
  evidence);
* PCA with ``k`` components (mean ``μ``, orthonormal components ``U`` ``(k, D)`` fitted on the
  training images): ``μ + Uᵀ z`` with ``z = argmin_z |e ⊙ (μ + Uᵀ z − x)|²``, the least-squares
  fit to the evidence (for ``e = 1`` the orthogonal projection ``Uᵀ U (x − μ)``);
* modern Hopfield (Ramsauer et al. 2020, one update of the distance form, hamjax's
  :class:`~hamjax.synapses.Memory`): ``Σ_r softmax_r(−β/2 Σ_d e_d (x_d − X_rd)²) X_r``; ``β → ∞``
  is the nearest image, ``β → 0`` the mean.

:func:`fit_baselines` chooses ``k`` and ``β`` on a validation split by the PSNR of the scored
pixels, so that the baselines are at their best on data the test never sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import DataError
from ._psnr import capped_psnr


def _flat(x) -> Array:
    x = jnp.asarray(x, jnp.float32)
    return x.reshape(x.shape[0], -1)


def _distances(x, evidence, memories, chunk: int) -> Array:
    """``(n, M)``: ``Σ_d e_d (x_d − X_rd)²`` as ``Σ e x² − 2 (e x)·X_r + e·X_r²`` (two matrix
    products), ``chunk`` memories at a time."""
    ex = evidence * x
    base = jnp.sum(ex * x, axis=1, keepdims=True)
    out = []
    for s in range(0, memories.shape[0], chunk):
        m = memories[s : s + chunk]
        out.append(base - 2.0 * ex @ m.T + evidence @ (m * m).T)
    return jnp.maximum(jnp.concatenate(out, axis=1), 0.0)


def nearest_fill(x, evidence, memories, *, chunk: int = 8192) -> Array:
    """The memory (row of ``memories`` ``(M, D)``) nearest to each row of ``x`` ``(n, D)`` on its
    evidence pixels: ``(n, D)``."""
    x, evidence, memories = _flat(x), _flat(evidence), _flat(memories)
    return memories[jnp.argmin(_distances(x, evidence, memories, chunk), axis=1)]


def hopfield_fill(x, evidence, memories, beta: float, *, chunk: int = 8192) -> Array:
    """One modern Hopfield update from ``x`` ``(n, D)``, the memories ``(M, D)`` compared on the
    evidence pixels: ``Σ_r softmax_r(−β/2 d_r) X_r`` with ``d_r = Σ_d e_d (x_d − X_rd)²``;
    ``(n, D)``. The distances are normalised per sample by their minimum (``softmax`` is shift
    invariant), so that a large ``β`` does not underflow."""
    x, evidence, memories = _flat(x), _flat(evidence), _flat(memories)
    return _hopfield_update(_distances(x, evidence, memories, chunk), memories, beta)


def _hopfield_update(d, memories, beta: float) -> Array:
    w = jax.nn.softmax(-0.5 * beta * (d - jnp.min(d, axis=1, keepdims=True)), axis=1)
    return w @ memories


class PCA(eqx.Module):
    """Principal components of the training images: ``mean`` ``(D,)`` and orthonormal
    ``components`` ``(K, D)``, largest variance first (:func:`fit_pca`)."""

    mean: Array
    components: Array

    def fill(self, x, evidence, k: int, ridge: float = 1e-6) -> Array:
        """``μ + U_kᵀ z``, ``z`` the least-squares fit of the first ``k`` components to the
        evidence pixels of each row of ``x`` (``(n, D)``; a ``ridge`` times the identity keeps the
        ``k × k`` normal equations solvable where the evidence is thin); ``(n, D)``."""
        x, evidence = _flat(x), _flat(evidence)
        u = self.components[:k]  # (k, D)
        r = evidence * (x - self.mean)
        a = jnp.einsum("kd,nd,ld->nkl", u, evidence, u) + ridge * jnp.eye(k)
        z = jnp.linalg.solve(a, (r @ u.T)[..., None])[..., 0]
        return self.mean + z @ u


def fit_pca(train, max_components: int) -> PCA:
    """The first ``max_components`` principal components of ``train`` ``(M, ...)`` (flattened), by
    an SVD of the centred images."""
    x = np.asarray(train, np.float64).reshape(len(train), -1)
    if not 1 <= max_components <= min(x.shape):
        raise DataError(f"fit_pca: max_components must be in [1, {min(x.shape)}], got "
                        f"{max_components}")
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return PCA(mean=jnp.asarray(mean, jnp.float32),
               components=jnp.asarray(vt[:max_components], jnp.float32))


def masked_psnr(clean, restored, scored) -> Array:
    """PSNR per sample over the ``scored`` pixels only (``(n, D)`` weights, 1 where scored):
    :func:`capped_psnr` of ``Σ s (x − y)² / Σ s``, pixel values in ``[0, 1]`` (at most 58.9 dB:
    a hidden region that is blank and restored blank does not make a mean infinite); ``(n,)``."""
    clean, restored, scored = _flat(clean), _flat(restored), _flat(scored)
    mse = jnp.sum(scored * (clean - restored) ** 2, axis=1) / jnp.sum(scored, axis=1)
    return capped_psnr(mse)


class Baselines(eqx.Module):
    """The three baselines with the settings :func:`fit_baselines` chose: ``memories`` (the
    training images, ``(M, D)``), ``pca`` and its ``k``, the Hopfield ``beta``, and the validation
    PSNR of every setting tried (``validation``: ``{"pca": {k: dB}, "hopfield": {β: dB},
    "nearest": dB}``)."""

    memories: Array
    pca: PCA
    k: int = eqx.field(static=True)
    beta: float = eqx.field(static=True)
    validation: dict = eqx.field(static=True)

    @property
    def at_grid_edge(self) -> list[str]:
        """The settings (``"k"``, ``"beta"``) chosen at the first or last value tried: the best
        may lie beyond the grid."""
        out = []
        for name, grid, chosen in (("k", self.validation["pca"], self.k),
                                   ("beta", self.validation["hopfield"], self.beta)):
            if len(grid) > 1 and chosen in (min(grid), max(grid)):
                out.append(name)
        return out

    def restore(self, x, evidence, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """``{"nearest", "pca", "hopfield": (n, D)}``: each baseline's restoration of ``x``
        ``(n, D)`` from its ``evidence`` pixels, ``batch_size`` rows at a time."""
        out = {"nearest": [], "pca": [], "hopfield": []}
        x, evidence = _flat(x), _flat(evidence)
        for s in range(0, x.shape[0], batch_size):
            xb, eb = x[s : s + batch_size], evidence[s : s + batch_size]
            d = _distances(xb, eb, self.memories, 8192)
            out["nearest"].append(np.asarray(self.memories[jnp.argmin(d, axis=1)]))
            out["pca"].append(np.asarray(self.pca.fill(xb, eb, self.k)))
            out["hopfield"].append(np.asarray(_hopfield_update(d, self.memories, self.beta)))
        return {k: np.concatenate(v) for k, v in out.items()}


def fit_baselines(train, valid_clean, valid_corrupted, valid_evidence, valid_scored, *,
                  ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
                  betas: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)
                  ) -> Baselines:
    """Fit the baselines on ``train`` ``(M, ...)`` and choose PCA's ``k`` (from ``ks``) and the
    Hopfield ``β`` (from ``betas``) by the mean PSNR of the ``valid_scored`` pixels of a
    validation split (``valid_clean``, ``valid_corrupted``, ``valid_evidence``, ``valid_scored``:
    ``(n, D)`` each, disjoint from ``train``). Returns :class:`Baselines`; a choice at the end of
    its grid (:attr:`Baselines.at_grid_edge`) says the grid should reach further."""
    memories = _flat(train)
    ks = sorted(k for k in ks if k <= min(memories.shape))
    if not ks or not betas:
        raise DataError("fit_baselines needs at least one k (at most the number of training "
                        "images and pixels) and one beta")
    pca = fit_pca(np.asarray(memories), max(ks))
    clean, xv, ev, sv = (_flat(a) for a in (valid_clean, valid_corrupted, valid_evidence,
                                            valid_scored))
    score = lambda y: float(jnp.mean(masked_psnr(clean, y, sv)))  # noqa: E731
    by_k = {int(k): score(pca.fill(xv, ev, k)) for k in ks}
    d = _distances(xv, ev, memories, 8192)  # once for every β and the nearest image
    by_beta = {float(b): score(_hopfield_update(d, memories, b)) for b in betas}
    validation = {"pca": by_k, "hopfield": by_beta,
                  "nearest": score(memories[jnp.argmin(d, axis=1)])}
    return Baselines(memories=memories, pca=pca, k=max(by_k, key=by_k.get),
                     beta=max(by_beta, key=by_beta.get), validation=validation)
