"""The model factory of the command line: a config (config.json's dict) becomes the data, the
model, the task, the gradient estimator and the optimiser that :mod:`hamjax.train` runs."""

from __future__ import annotations

from ._parser import UsageError
from ._runs import schedule_ends

__all__ = ["load_data", "build", "patch_size", "completion_baselines", "optimizer"]


def load_data(cfg: dict, data_dir=None):
    """The dataset ``cfg`` names (a key of :data:`hamjax.data.DATASETS`), cut to
    ``--limit-train`` / ``--limit-test``; ``--seed`` splits the sets without a test part,
    ``--image-size`` resizes an image folder. A missing or superfluous ``--data-dir``, or an
    ``--image-size`` for a dataset that cannot be resized, is a :class:`UsageError`; a file
    that is missing or unreadable a :class:`hamjax.data.DataError`."""
    from .. import data as hd

    source = hd.DATASETS[cfg["dataset"]]
    data_dir = data_dir or cfg.get("data_dir")
    # checked before anything is read: each flag takes effect or is refused
    if source.folder is not None and data_dir is None:
        raise UsageError(f"--dataset {cfg['dataset']} needs --data-dir DIR (a folder holding "
                         f"{source.folder}); nothing is downloaded")
    if source.folder is None and data_dir is not None:
        raise UsageError(f"--dataset {cfg['dataset']} is bundled and reads no --data-dir; "
                         f"drop it, or name the dataset the folder holds")
    if cfg.get("image_size") and "size" not in source.keywords():
        raise UsageError(f"--image-size resizes the images of --dataset folder; --dataset "
                         f"{cfg['dataset']} has images of one size already")
    kw = {"limit_train": cfg.get("limit_train"), "limit_test": cfg.get("limit_test")}
    if "seed" in source.keywords():
        kw["seed"] = cfg["seed"]
    if cfg.get("image_size"):
        kw["size"] = tuple(cfg["image_size"])
    return hd.load_dataset(cfg["dataset"], data_dir, **kw)


def build(cfg: dict, data):
    """``(net, task, gradient estimator)`` for ``cfg`` on ``data``."""
    return _model(cfg, data), _task(cfg, data), _gradient(cfg)


def _model(cfg: dict, data):
    import jax

    from .. import models

    key = jax.random.PRNGKey(cfg["seed"])
    h = cfg["hidden"]
    if cfg["model"] == "dense" and cfg["task"] != "classify":
        # the noisy image clamped beside the free one: a denoiser's attractor then moves with
        # its input (docs/maths.md §6.4); completion freezes the visible pixels instead
        return models.dense_memory(data.image_shape, hidden=h[0],
                                   evidence=cfg["task"] == "denoise", key=key)
    if cfg["model"] == "dense":
        return models.dense_classifier(data.image_shape, data.num_classes, hidden=h[0], key=key)
    if cfg["model"] == "deep":
        from ..lagrangians import Tanh

        # bounded hidden activations: two ReLU layers coupled by −g₁ᵀWg₂ make the energy
        # unbounded below once ‖W‖ > 1, and a trained relaxation can run away; with tanh the
        # energy is bounded below and every relaxation settles
        return models.deep_dense_classifier(data.image_shape, data.num_classes, hidden=h,
                                            hidden_lagrangian=Tanh(), key=key)
    if cfg["model"] == "transformer":
        return models.energy_transformer(data.image_shape, patch_size(data.image_shape),
                                         dim=h[0], num_memories=h[1] if len(h) > 1 else None,
                                         key=key)
    if cfg["model"] == "conv":
        from ..lagrangians import ReLU, Tanh

        # ReLU feature maps classify better than the HAM paper's softmax over channels. A 5×5
        # kernel at stride 2 on 28×28 or 32×32 images (12×12 or 14×14 feature maps; 3×3,
        # stride 1, 2×2 pooling on the 8×8 digits) keeps the feature maps small enough to train
        # on a CPU; larger images are pooled 2×2 as well. The kernel takes every input channel.
        # Further stages (--hidden C1,C2,…) are 3×3 convolutions with tanh maps: two coupled
        # ReLU maps make the energy unbounded below once the kernel grows past norm 1, and a
        # trained relaxation can run away; tanh keeps it bounded for any weights
        kernels, strides, pool = _conv_stages(data.image_shape, len(h))
        return models.conv_classifier(
            data.image_shape, data.num_classes, channels=h, kernel_size=kernels,
            stride=strides, pool=pool, feature_lagrangian=(ReLU(),) + (Tanh(),) * (len(h) - 1),
            key=key)
    # memories start as K training images (a modern Hopfield network storing them); from
    # small random vectors every softmax is flat and each image relaxes to the global mean
    import numpy as np

    idx = np.random.default_rng(cfg["seed"]).choice(data.num_train, h[0], replace=False)
    # Euclidean similarity: the overlap ξ·v grows with a memory's brightness, so the brightest
    # memories would capture every noisy image; the distance does not favour them
    return models.memory_model(data.image_shape, num_memories=h[0],
                               patterns=data.x_train[idx].reshape(h[0], -1),
                               similarity="distance", key=key)


def _conv_shape(image_shape) -> tuple[int, int, int]:
    """``(kernel size, stride, pooling)`` of the CLI's conv model for ``(H, W, C)`` images."""
    h, w = image_shape[:2]
    if min(h, w) <= 8:
        return 3, 1, 2
    features = (min(h, w) - 5) // 2 + 1
    return 5, 2, 2 if features > 16 else 1


def _conv_stages(image_shape, stages: int) -> tuple[list[int], list[int], int]:
    """``(kernel sizes, strides, pooling)`` of a conv model of ``stages`` stages: the first as
    :func:`_conv_shape`, each further one 3×3 at stride 2 while its input is at least 7 wide
    (stride 1 below), pooled only when there is one stage. Raises :class:`UsageError` when a
    stage's input is narrower than its kernel."""
    kernel, stride, pool = _conv_shape(image_shape)
    kernels, strides = [kernel], [stride]
    side = (min(image_shape[:2]) - kernel) // stride + 1
    for i in range(1, stages):
        if side < 3:
            raise UsageError(f"--hidden: conv stage {i + 1} would convolve a {side}x{side} map "
                             f"with a 3x3 kernel; use at most {i} stage(s) for images of "
                             f"{image_shape[0]}x{image_shape[1]}")
        step = 2 if side >= 7 else 1
        kernels.append(3)
        strides.append(step)
        side = (side - 3) // step + 1
    return kernels, strides, pool if stages == 1 else 1


def _task(cfg: dict, data):
    from .. import train as T

    if cfg["task"] == "classify":
        return T.Classification(num_classes=data.num_classes, noise=cfg["noise"],
                                loss_kind="nll", shift=cfg.get("shift", 0),
                                rotate=cfg.get("rotate", 0.0), zoom=cfg.get("zoom", 0.0),
                                elastic=cfg.get("elastic", 0.0), flip=cfg.get("flip", False))
    if cfg["model"] == "transformer":
        if not 0 < cfg["noise"] < 1:
            raise UsageError(f"--noise {cfg['noise']:g}: the masked fraction of the patches "
                             "must lie strictly between 0 and 1")
        return T.PatchCompletion(patch_size=patch_size(data.image_shape), level=cfg["noise"])
    kw = {"level": cfg["noise"]}
    if cfg.get("corruption") is not None:  # runs saved before --corruption: the task's own
        kw["corruption"] = cfg["corruption"]
    if cfg["task"] == "denoise" and cfg["model"] == "dense":
        kw["evidence_layer"] = "evidence"
    return {"denoise": T.Denoising, "complete": T.Completion,
            "store": T.Storage}[cfg["task"]](**kw)


def patch_size(image_shape) -> int:
    """The transformer's patch side for images ``(H, W, C)``: 2 up to 16 pixels (a 2×2 patch of
    an 8×8 digit is already a stroke segment), else 4 (49 tokens of 16 pixels on MNIST, 64 on
    32×32 images: few enough tokens for attention on a CPU). Sides it does not divide are a
    :class:`UsageError`."""
    h, w = image_shape[:2]
    p = 2 if max(h, w) <= 16 else 4
    if h % p or w % p:
        raise UsageError(f"--model transformer cuts images into {p}x{p} patches, which do not "
                         f"tile {h}x{w} images")
    return p


def completion_baselines(task, data, seed: int, batch_size: int = 256,
                         reference: int = 10000) -> dict[str, float]:
    """Mean PSNR on the masked test patches of the two fills that need no network
    (:meth:`hamjax.train.PatchCompletion.baselines`): the training mean image
    (``test_psnr_mean_fill``) and the nearest of the first ``reference`` training images by the
    visible patches (``test_psnr_nearest``). The masks are the ones
    :func:`hamjax.train.evaluate` draws with the same ``seed`` and ``batch_size`` (the same
    generator, the same padded batches), so the figures stand beside the model's on the same
    masked patches."""
    import jax.numpy as jnp
    import numpy as np

    from ..models import patchify

    train = np.asarray(patchify(np.asarray(data.x_train, np.float32), task.patch_size))
    mean, ref = train.mean(0), jnp.asarray(train[:reference])
    x, n = data.x_test, data.num_test
    rng = np.random.default_rng((seed, 10**6))
    sums = {"psnr_mean": 0.0, "psnr_nearest": 0.0}
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        k = len(xb)
        if k < batch_size and n > batch_size:  # evaluate's padding: the same draws
            xb = np.concatenate([xb, xb[:1].repeat(batch_size - k, axis=0)])
        b = task.baselines(task.prepare(xb, None, rng, train=False), mean, ref)
        for name, v in b.items():
            sums[name] += float(jnp.sum(v[:k]))
    return {"test_psnr_mean_fill": sums["psnr_mean"] / n,
            "test_psnr_nearest": sums["psnr_nearest"] / n,
            "baseline_reference_images": int(min(reference, data.num_train))}


def _gradient(cfg: dict):
    from .. import train as T

    if cfg["gradient"] == "bptt":
        import diffrax

        from .. import FixedSteps, RelaxOptions

        steps = RelaxOptions(solver=diffrax.Euler(), stop=FixedSteps(cfg["steps"]),
                             dt0=cfg["dt0"])
        return T.BPTT(steps, residual_penalty=cfg.get("residual_penalty", 1.0))
    # both relax to a steady state by their own defaults (see hj.train.Implicit/EqProp)
    return {"implicit": T.Implicit, "eqprop": T.EqProp}[cfg["gradient"]]()


def optimizer(cfg: dict, data):
    """Adam (AdamW with ``--weight-decay``) on the run's cosine learning-rate schedule
    (:func:`hamjax.train.cosine_adam`, as ``fit``'s default); a run extended by ``--resume``
    gets a second cosine over its new epochs, the finished part kept exactly, so an
    interrupted run resumes bit for bit."""
    from .. import train as T

    return T.cosine_adam(cfg["lr"], data.num_train // cfg["batch_size"], schedule_ends(cfg),
                         weight_decay=cfg.get("weight_decay", 0.0))
