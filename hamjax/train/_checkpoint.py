"""Checkpoints: model, optimiser state, epoch and config in one file, written atomically.

Layout: one line of JSON (``{"format": "hamjax-checkpoint", "version": 3, "payload_bytes": n,
"payload_sha256": h, ...meta}``), then the leaves of ``(model, opt_state)`` as written by
``eqx.tree_serialise_leaves``. Reading needs a skeleton of the same structure (the model rebuilt
from its config, ``optimizer.init`` of it).

The header records the length and SHA-256 of the leaves: a truncated file or flipped bytes are
reported as such (:class:`CheckpointError`) instead of loading NaN weights or failing inside
equinox with a message that blames the config. Files of earlier versions are refused: their HAMs
stored layers and synapses in sorted-name order, so their leaves would load into the wrong
layers.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the
target (``os.replace`` is atomic on POSIX): a run killed mid-write leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import equinox as eqx

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint_meta", "verify_checkpoint",
           "CheckpointError"]

_FORMAT = "hamjax-checkpoint"
_VERSION = 3
# header keys the file format owns; a caller's meta may not use them
_RESERVED = ("format", "version", "payload_bytes", "payload_sha256")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model.

    Raised for a missing file, a bad header, a truncated or corrupt payload (length or SHA-256
    mismatch), a file of an older format version, and leaves that do not fit the skeletons. A
    ``ValueError``."""


def save_checkpoint(path, model, opt_state, meta: dict, *, create_folders: bool = True
                    ) -> Path:
    """Atomically write ``(model, opt_state)`` and the JSON-serialisable ``meta`` to ``path``.

    Creates missing parent folders (unless ``create_folders`` is false: then a missing folder
    is a :class:`CheckpointError`, as for a training run whose folder was deleted under it)
    and returns the path. Raises ``ValueError`` when ``meta`` uses a key the header reserves
    (``format``, ``version``, ``payload_bytes``, ``payload_sha256``)."""
    path = Path(path)
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"checkpoint meta may not use the reserved keys {clash}")
    if create_folders:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise CheckpointError(f"cannot write the checkpoint {path}: its folder {path.parent} "
                              "no longer exists (deleted during training?)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # serialised in memory first: the header, written first, holds the payload's checksum
            buf = io.BytesIO()
            eqx.tree_serialise_leaves(buf, (model, opt_state))
            payload = buf.getvalue()
            header = json.dumps({"format": _FORMAT, "version": _VERSION,
                                 "payload_bytes": len(payload),
                                 "payload_sha256": hashlib.sha256(payload).hexdigest(), **meta},
                                sort_keys=True)
            f.write(header.encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary output file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint_meta(path, verify: bool = False) -> dict:
    """The JSON header of a checkpoint; with ``verify``, also check the leaves against the
    header's length and checksum (:func:`verify_checkpoint`).

    Returns a dict; raises :class:`CheckpointError` for a missing file or a bad header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        # bounded: a file with no line break is not read whole to find one
        line = f.readline(_MAX_HEADER + 1)
    if len(line) > _MAX_HEADER:
        raise CheckpointError(f"{path} is not a hamjax checkpoint (no header line within "
                              f"{_MAX_HEADER // 2**20} MiB)")
    try:
        meta = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a hamjax checkpoint (bad header)") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a hamjax checkpoint (format {meta!r:.60})")
    _check_header(path, meta)
    if verify:
        verify_checkpoint(path, meta)
    return meta


_MAX_HEADER = 64 * 2**20
_SHA256_HEX = frozenset("0123456789abcdef")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# the header's fields: the format's own, and those fit writes, each with what it must be
_FIELDS = {
    "version": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "payload_bytes": ("a non-negative integer", _is_count),
    "payload_sha256": ("64 hexadecimal digits",
                       lambda v: isinstance(v, str) and len(v) == 64 and set(v) <= _SHA256_HEX),
    "finished_epoch": ("a non-negative integer", _is_count),
    "history": ("a list of records (objects)",
                lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
    "config": ("an object", lambda v: isinstance(v, dict)),
}
_REQUIRED = ("version", "payload_bytes", "payload_sha256")


def _check_header(path: Path, meta: dict) -> None:
    """Each field of a checkpoint header of the type it must have, the format's own present:
    one :class:`CheckpointError` naming the first that is not, before anything uses it."""
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint header lacks {', '.join(missing)} (a "
                              "damaged or hand-edited file?)")
    for key, (what, ok) in _FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"{path}: the checkpoint header's {key} must be {what}, got "
                                  f"{meta[key]!r:.60} (a damaged or hand-edited file?)")


def _payload(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.readline()
        return f.read()


def verify_checkpoint(path, meta: dict | None = None) -> None:
    """Raise :class:`CheckpointError` ("truncated" or "corrupt") when the leaves of ``path`` do
    not have the length and SHA-256 its header records."""
    path = Path(path)
    meta = read_checkpoint_meta(path) if meta is None else meta
    if "payload_sha256" not in meta:
        raise CheckpointError(f"checkpoint {path} has no checksum in its header")
    payload = _payload(path)
    want = int(meta.get("payload_bytes", -1))
    if len(payload) < want:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(payload)} of {want} bytes "
                              "of weights (an interrupted copy?)")
    if len(payload) != want or hashlib.sha256(payload).hexdigest() != meta["payload_sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its weights do not match the "
                              "checksum in its header")


def load_checkpoint(path, model_like, opt_state_like):
    """Read ``(model, opt_state, meta)`` from ``path`` into skeletons of the same structure.

    ``model_like`` and ``opt_state_like``: a model built from the same config and
    ``optimizer.init`` of it. The payload is verified first; raises :class:`CheckpointError`
    for a missing, corrupt or older-version file and for leaves that do not fit."""
    meta = read_checkpoint_meta(path)
    if meta.get("version") != _VERSION:
        raise CheckpointError(
            f"{path} is a version {meta.get('version')} checkpoint; this hamjax reads version "
            f"{_VERSION} (earlier versions laid out a HAM's layers in another order): retrain")
    verify_checkpoint(path, meta)
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
