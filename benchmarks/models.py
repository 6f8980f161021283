"""The benchmark models, each written three ways: hamjax, hand-written closed-form updates in
plain ``jnp``, and hamux 0.2.2 (optional).

All three run the same Euler relaxation ``x ← x + dt·(c + I − x)`` on the free layers (every
``τ = 1``) from the same initial state with the same weights, so their outputs agree to float
rounding; the benchmarks check that before timing anything.

* ``dense``: ``image — hidden₁ — … — label`` (``hamjax.models.deep_dense_classifier``):
  identity image (clamped), tanh hidden layers with biases, identity label with bias.
* ``conv``: ``image —conv— features (softmax over channels, bias) —avgpool— pooled —dense—
  label`` (``hamjax.models.conv_classifier``), NHWC.

The hand-written versions know what autodiff has to discover: the clamped image's current
(``W₁ g_img`` or the convolution of the image) is computed once, the feedback of a dense synapse
is ``g @ W``, that of the average pooling an upsampling by 1/4, and activations are closed form.
The conv model's parameters, the feature softmax's inverse temperature β included, are arguments
of the hand-written relaxation as they are of hamjax's: a β folded into the code as the constant 1
would compare a cheaper function than the model's (XLA's CPU softmax fusion pays a full pass over
the feature maps for the multiplication by β).
hamux knows nothing of clamping: its user zeroes the update of the image layer, and every step
differentiates the whole energy (hamux's ``dEdact``), as its documentation does.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import hamjax as hj
from hamjax import FixedSteps
from hamjax import lagrangians as L


# ------------------------------------------------------------------------------ hamjax
def dense_net(key, sizes: tuple[int, ...]) -> hj.HAM:
    """``sizes = (n_image, n_hidden₁, …, n_label)``, with small random biases (so that the
    hand-written equations are checked on them too)."""
    # the Lagrangians are pinned (not the models' defaults, which may change): the hand-written
    # equations below are those of tanh hidden layers and an identity label
    net = hj.models.deep_dense_classifier((sizes[0],), sizes[-1], hidden=sizes[1:-1], key=key,
                                          hidden_lagrangian=L.Tanh(1.0),
                                          label_lagrangian=L.Identity())
    keys = jax.random.split(jax.random.fold_in(key, 1), len(net.layers))
    for k, (name, layer) in zip(keys, net.layers.items(), strict=True):
        if layer.bias is not None:
            net = eqx.tree_at(lambda n, name=name: n.layers[name].bias, net,
                              0.1 * jax.random.normal(k, layer.bias.shape))
    return net


def conv_net(key, image_shape=(28, 28, 1), channels: int = 16, kernel: int = 5,
             num_classes: int = 10) -> hj.HAM:
    net = hj.models.conv_classifier(image_shape, num_classes, channels=channels,
                                    kernel_size=kernel, pool=2, key=key,
                                    feature_lagrangian=L.Softmax(1.0, axis=-1))
    net = eqx.tree_at(lambda n: n.layers["label"].lagrangian, net, L.Identity())
    k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
    net = eqx.tree_at(lambda n: n.layers["features"].bias, net,
                      0.1 * jax.random.normal(k1, net.layers["features"].shape))
    net = eqx.tree_at(lambda n: n.layers["label"].bias, net,
                      0.1 * jax.random.normal(k2, (num_classes,)))
    return net


def initial_state(net: hj.HAM, image, key=None):
    x0 = net.init_state(batch=image.shape[:1])
    x0["image"] = image.reshape(x0["image"].shape)
    return x0


def hamjax_relax(net, x0, steps: int, dt: float):
    """``steps`` Euler steps of ``dt`` through ``hamjax.relax`` (image clamped)."""
    sol = hj.relax(net, x0, clamp="image", solver=diffrax.Euler(), stop=FixedSteps(steps),
                   dt0=dt)
    return {n: v for n, v in sol.state.items() if n != "image"}


# ------------------------------------------------------------------------------ hand-written
def chain_names(net: hj.HAM) -> tuple[str, ...]:
    """Layer names of a dense chain in order (``image``, hidden…, ``label``), read from the
    edges ``w1, w2, …`` (a dict of layers rebuilt by a pytree map is sorted by name)."""
    k = len(net.synapses)
    return (net.edges["w1"][0],) + tuple(net.edges[f"w{i + 1}"][1] for i in range(k))


def dense_params(net: hj.HAM):
    """``(names, weights, biases)``: ``weights[i]`` maps layer ``i`` to ``i+1`` (shape
    ``(n_{i+1}, n_i)``), ``biases[i]`` is the bias of free layer ``i+1``."""
    names = chain_names(net)
    ws = [net.synapses[f"w{i + 1}"].weight for i in range(len(names) - 1)]
    bs = [net.layers[n].bias for n in names[1:]]
    return names, ws, bs


def hand_dense_relax(ws, bs, image, x_free, steps: int, dt: float):
    """Closed-form Euler steps of the dense chain (image clamped)::

        x_i ← x_i + dt·(W_i g_{i−1} + W_{i+1}ᵀ g_{i+1} + b_i − x_i)

    with ``g = tanh`` on hidden layers, the identity on the label, ``W₁ g_img`` once."""
    n = len(ws)
    c0 = image @ ws[0].T

    def body(_, xs):
        gs = [jnp.tanh(x) for x in xs[:-1]] + [xs[-1]]
        new = []
        for i in range(n):
            drive = (c0 if i == 0 else gs[i - 1] @ ws[i].T) + bs[i] - xs[i]
            if i + 1 < n:
                drive = drive + gs[i + 1] @ ws[i + 1]
            new.append(xs[i] + dt * drive)
        return tuple(new)

    return jax.lax.fori_loop(0, steps, body, tuple(x_free))


def conv_params(net: hj.HAM):
    """``(kernel, b_f, W_r, b_ℓ, β)``: the arguments of :func:`hand_conv_relax` before the image."""
    return (net.synapses["conv"].kernel, net.layers["features"].bias,
            net.synapses["readout"].weight, net.layers["label"].bias,
            net.layers["features"].lagrangian.beta)


def _conv(img, kernel):
    return jax.lax.conv_general_dilated(img, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _avgpool2(g):
    b, h, w, c = g.shape
    return g.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _avgpool2_adjoint(p):
    return jnp.repeat(jnp.repeat(p, 2, axis=1), 2, axis=2) * 0.25


def hand_conv_relax(kernel, bf, wr, bl, beta, image, x_free, steps: int, dt: float):
    """Closed-form Euler steps of the convolutional HAM (image clamped)::

        f ← f + dt·(conv(img) + Pᵀ g_p + b_f − f)        g_f = softmax(β f) over channels
        p ← p + dt·(P g_f + W_rᵀ g_ℓ − p)                  P: 2×2 average pooling
        ℓ ← ℓ + dt·(W_r g_p + b_ℓ − ℓ)"""
    c0 = _conv(image, kernel)

    def body(_, xs):
        f, p, l = xs
        gf = jax.nn.softmax(beta * f, axis=-1)
        b = p.shape[0]
        f2 = f + dt * (c0 + _avgpool2_adjoint(p) + bf - f)
        p2 = p + dt * (_avgpool2(gf) + (l @ wr).reshape(p.shape) - p)
        l2 = l + dt * (p.reshape(b, -1) @ wr.T + bl - l)
        return f2, p2, l2

    return jax.lax.fori_loop(0, steps, body, tuple(x_free))


# ------------------------------------------------------------------------------ hamux
def hamux_available() -> str | None:
    """``None`` when hamux 0.2.2 imports, else the reason it does not."""
    try:
        import hamux  # noqa: F401
    except Exception as e:  # noqa: BLE001 - optional: ImportError, missing fastcore, ...
        return f"hamux not importable ({type(e).__name__}: {e}); pip install 'hamjax[bench]'"
    return None


def _hamux_synapses():
    """Synapses hamux 0.2.2 lacks, written the way its documentation asks users to: an
    ``eqx.Module`` whose ``__call__`` takes unbatched activations and returns an energy."""

    class FlatLinear(eqx.Module):
        W: jax.Array  # (n_in, n_out), hamux's LinearSynapse layout

        def __call__(self, g1, g2):
            return -jnp.einsum("c,d,cd->", g1.reshape(-1), g2.reshape(-1), self.W)

    class AvgPool(eqx.Module):
        def __call__(self, g1, g2):
            h, w, c = g1.shape
            pooled = g1.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))
            return -jnp.sum(g2 * pooled)

    return FlatLinear, AvgPool


def hamux_dense(net: hj.HAM):
    """The dense chain as a (vectorized) hamux HAM with the same weights."""
    import hamux as hmx

    names = chain_names(net)
    neurons, synapses, connections = {}, {}, []
    for n in names:
        lag = hmx.lagr_identity if n in ("image", "label") else hmx.lagr_tanh
        neurons[n] = hmx.NeuronLayer(lag, net.layers[n].shape)
    for i in range(len(names) - 1):
        synapses[f"w{i + 1}"] = hmx.LinearSynapse(net.synapses[f"w{i + 1}"].weight.T)
        connections.append(((names[i], names[i + 1]), f"w{i + 1}"))
    for n in names[1:]:
        synapses[f"b_{n}"] = hmx.BiasSynapse(net.layers[n].bias)
        connections.append(((n,), f"b_{n}"))
    return hmx.HAM(neurons, synapses, connections).vectorize()


def hamux_conv(net: hj.HAM):
    import hamux as hmx

    FlatLinear, AvgPool = _hamux_synapses()
    kernel = net.synapses["conv"].kernel  # HWIO -> hamux's OIHW
    conv = hmx.ConvSynapse(W=jnp.transpose(kernel, (3, 2, 0, 1)), window_strides=(1, 1),
                           padding="VALID")

    def lagr_softmax_channels(x):
        return hmx.lagr_softmax(x, axis=-1).sum()

    neurons = {
        "image": hmx.NeuronLayer(hmx.lagr_identity, net.layers["image"].shape),
        "features": hmx.NeuronLayer(lagr_softmax_channels, net.layers["features"].shape),
        "pooled": hmx.NeuronLayer(hmx.lagr_identity, net.layers["pooled"].shape),
        "label": hmx.NeuronLayer(hmx.lagr_identity, net.layers["label"].shape),
    }

    class MapBias(eqx.Module):
        b: jax.Array

        def __call__(self, g):
            return -jnp.sum(g * self.b)

    synapses = {
        "conv": conv,
        "pool": AvgPool(),
        "readout": FlatLinear(net.synapses["readout"].weight.T),
        "b_features": MapBias(net.layers["features"].bias),
        "b_label": hmx.BiasSynapse(net.layers["label"].bias),
    }
    connections = [(("image", "features"), "conv"), (("features", "pooled"), "pool"),
                   (("pooled", "label"), "readout"), (("features",), "b_features"),
                   (("label",), "b_label")]
    return hmx.HAM(neurons, synapses, connections).vectorize()


def hamux_relax(ham, x0, steps: int, dt: float, clamp=("image",)):
    """hamux's relaxation loop: ``x ← x − dt·∂E/∂g`` from ``ham.dEdact``, clamped layers held."""

    def body(_, xs):
        g = ham.activations(xs)
        dE = ham.dEdact(g, xs)
        return {k: v if k in clamp else v - dt * dE[k] for k, v in xs.items()}

    xs = jax.lax.fori_loop(0, steps, body, dict(x0))
    return {k: v for k, v in xs.items() if k not in clamp}


# ------------------------------------------------------------------------------ sizes
def dense_flops_per_step(batch: int, sizes: tuple[int, ...], clamped_first: bool) -> float:
    """Matmul FLOPs of one Euler step of a dense chain: each synapse sends one current up and
    one down (2·B·n_in·n_out each), except the clamped image's, which is computed once."""
    total = 0.0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if not (i == 0 and clamped_first):
            total += 2 * (2.0 * batch * a * b)
    return total


def num_params(net) -> int:
    return sum(math.prod(v.shape) for v in jax.tree.leaves(eqx.filter(net, eqx.is_array)))


# ------------------------------------------------------------------------------ hand-written DEQ
def softmax_classifier_params(net: hj.HAM):
    """``(W₁, b_h, W₂, b_ℓ, β)`` of ``hj.models.dense_classifier``'s default (ReLU hidden,
    Softmax(β) label): the arguments of :func:`hand_deq_loss`."""
    return (net.synapses["w1"].weight, net.layers["hidden"].bias, net.synapses["w2"].weight,
            net.layers["label"].bias, net.layers["label"].lagrangian.beta)


def _deq_map(params, image, x):
    """``x ← c + I`` of the dense classifier with its image clamped, in closed form::

        h ← W₁ v + W₂ᵀ softmax(β ℓ) + b_h,     ℓ ← W₂ relu(h) + b_ℓ."""
    w1, bh, w2, bl, beta = params
    h, l = x
    return (image @ w1.T + jax.nn.softmax(beta * l, axis=-1) @ w2 + bh,
            jax.nn.relu(h) @ w2.T + bl)


def _rms_rows(x):
    return jnp.sqrt(sum(jnp.mean(v * v, axis=-1) for v in x) / len(x))


def _iterate(step, x, tol, max_iter):
    """``x ← step(x)`` until every sample's ``rms(step(x) − x) ≤ tol`` (or ``max_iter``)."""
    def cond(c):
        k, _, res = c
        return (k < max_iter) & jnp.any(res > tol)

    def body(c):
        k, x, _ = c
        new = step(x)
        return k + 1, new, _rms_rows(tuple(a - b for a, b in zip(new, x, strict=True)))

    _, x, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), x, jnp.full(x[0].shape[:1],
                                                                            jnp.inf)))
    return x


def hand_deq_loss(atol: float = 1e-4, rtol: float = 1e-4, max_iter: int = 1024):
    """A hand-written deep-equilibrium loss of the dense classifier: ``loss(params, image,
    target)`` = mean NLL of ``softmax(β ℓ*)`` at the fixed point ``x* = f(x*)`` found by the plain
    iteration from zero (to residual ``atol``, every sample), differentiated by a ``custom_vjp``
    whose backward pass iterates the adjoint ``v ← (∂f/∂x)ᵀ v + ḡ`` (the Neumann series, to
    ``rtol`` of ``ḡ``) and pulls ``v`` back to the parameters. What a DEQ library's training
    step does, with nothing per sample beyond the stopping test: the reachable limit for
    ``hj.train.Implicit()``."""

    @jax.custom_vjp
    def fixed_point(params, image):
        n = image.shape[0]
        x0 = (jnp.zeros((n, params[0].shape[0])), jnp.zeros((n, params[2].shape[0])))
        return _iterate(lambda x: _deq_map(params, image, x), x0, atol, max_iter)

    def fwd(params, image):
        x = fixed_point(params, image)
        return x, (params, image, x)

    def bwd(res, g):
        params, image, x = res
        _, vjp_x = jax.vjp(lambda x: _deq_map(params, image, x), x)
        tol = rtol * _rms_rows(g)
        # v ← Jᵀ v + g until every sample's residual is within rtol of its right-hand side
        def cond(c):
            k, _, r = c
            return (k < max_iter) & jnp.any(r > tol)

        def body(c):
            k, v, _ = c
            new = tuple(a + b for a, b in zip(vjp_x(v)[0], g, strict=True))
            return k + 1, new, _rms_rows(tuple(a - b for a, b in zip(new, v, strict=True)))

        _, v, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), g,
                                                   jnp.full(g[0].shape[:1], jnp.inf)))
        _, vjp_p = jax.vjp(lambda p, i: _deq_map(p, i, x), params, image)
        return vjp_p(v)

    fixed_point.defvjp(fwd, bwd)

    def loss(params, image, target):
        _, l = fixed_point(params, image)
        logp = jax.nn.log_softmax(params[4] * l, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=-1))

    return loss
