"""A compatibility shim for one known bug of two dependencies, applied once at import.

Equinox (≤ 0.13.8) checks the inputs of a closure-converted function (lineax's Jacobian
operators, through which optimistix differentiates a fixed point) against the example inputs
including their shardings, and lineax (≤ 0.1.1) checks a linear solve's initial guess against
its right-hand side the same way. Inside ``jax.shard_map`` the manual mesh is attached to an
input's abstract value on one trace and not on the other, so the checks refuse identical arrays
and implicit differentiation fails under data parallelism ("Closure-converted function called
with different dynamic arguments", "`y0` must have the same structure, shape, and dtype as
`vector`"). Upstream: equinox pull request 1261, diffrax issue 765. The shim compares shapes and
dtypes only, as that pull request does; it replaces each private helper only where it exists.
"""

from __future__ import annotations

import jax


def _shape_and_dtype(tree):
    """Each ``jax.ShapeDtypeStruct`` of ``tree`` without its sharding and weak type; other
    leaves as they are (what the replaced helpers do, sharding aside)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
                        if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


def apply() -> bool:
    """Replace equinox's and lineax's comparison helpers; True when both were there."""
    import importlib

    # lineax binds its helper by name in each module that compares structures
    places = (("equinox._ad", "_strip_weak_dtype"), ("lineax._misc", "strip_weak_dtype"),
              ("lineax._solve", "strip_weak_dtype"), ("lineax._solver.misc", "strip_weak_dtype"),
              ("lineax._operator", "strip_weak_dtype"))
    done = 0
    for module, name in places:
        try:
            mod = importlib.import_module(module)
        except ImportError:  # pragma: no cover - a future release without the module
            continue
        if callable(getattr(mod, name, None)):
            setattr(mod, name, _shape_and_dtype)
            done += 1
    return done == len(places)


APPLIED = apply()
