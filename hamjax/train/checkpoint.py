"""Checkpoints: model, optimiser state, epoch and config in one file, written atomically.

Layout: one line of JSON (``{"format": "hamjax-checkpoint", "version": 1, ...meta}``), then the
leaves of ``(model, opt_state)`` as written by ``eqx.tree_serialise_leaves``. Reading needs a
skeleton of the same structure (the model rebuilt from its config, ``optimizer.init`` of it).

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the
target (``os.replace`` is atomic on POSIX): a run killed mid-write leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import equinox as eqx

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint_meta", "CheckpointError"]

_FORMAT = "hamjax-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def save_checkpoint(path, model, opt_state, meta: dict) -> Path:
    """Atomically write ``(model, opt_state)`` and the JSON-serialisable ``meta`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"format": _FORMAT, "version": 1, **meta}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode() + b"\n")
            eqx.tree_serialise_leaves(f, (model, opt_state))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary output file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint_meta(path) -> dict:
    """The JSON header of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        line = f.readline()
    try:
        meta = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not a hamjax checkpoint (bad header)") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a hamjax checkpoint (format {meta!r:.60})")
    return meta


def load_checkpoint(path, model_like, opt_state_like):
    """Read ``(model, opt_state, meta)`` from ``path`` into skeletons of the same structure."""
    meta = read_checkpoint_meta(path)
    with open(path, "rb") as f:
        f.readline()
        try:
            model, opt_state = eqx.tree_deserialise_leaves(f, (model_like, opt_state_like))
        except Exception as e:  # equinox/numpy raise several kinds on a mismatch
            raise CheckpointError(
                f"{path} does not fit this model/optimiser (was it written with another "
                f"config?): {type(e).__name__}: {e}"
            ) from None
    return model, opt_state, meta
