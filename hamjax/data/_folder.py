"""A folder of image files, one subfolder per class, read with Pillow.

Layout: ``root/<class>/*.png|*.jpg|*.jpeg`` (split into train and test by seed, stratified by
class), or ``root/train/<class>/…`` and ``root/test/<class>/…`` (split as given). Class names are
the subfolder names, sorted; label ``k`` is the ``k``-th name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ._checks import DataError, DataFileNotFoundError, as_dir, as_limit
from ._dataset import Dataset
from ._split import split_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""The file endings :func:`load_image_folder` reads (in any letter case); other files are
skipped."""

_MODES = ("RGB", "L")


def _classes(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` of the class subfolders of ``root``, sorted by
    name (hidden folders skipped)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES][:3]
        found = f" (it holds images such as {', '.join(loose)})" if loose else ""
        raise DataFileNotFoundError(
            f"{root} holds no class folders{found}; expected one subfolder per class, "
            f"root/<class>/*.png|jpg|jpeg, or root/train/<class>/ and root/test/<class>/")
    classes = {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {folder} holds no images; expected files ending in "
                            f"{', '.join(IMAGE_SUFFIXES)} (any case)")
        classes[folder.name] = files
    return classes


# Pillow's own limit (MAX_IMAGE_PIXELS, 89 megapixels) where a user has switched it off
_MAX_PIXELS = 89_478_485


def _read(path: Path, mode: str | None, size):
    """One image as a ``uint8`` array ``(H, W, 3)`` (``mode`` None or ``"RGB"``) or
    ``(H, W, 1)`` (``"L"``), resized to ``size`` when given."""
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS or _MAX_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns of an image above its limit, which is refused below in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            # the header is read, the pixels are not yet: refuse a size no dataset image has
            # before decoding (a few kilobytes of PNG can declare gigabytes of pixels)
            w, h = img.size
            if w * h > limit:
                raise DataError(f"{path}: declares {w}×{h} pixels ({w * h / 1e6:.0f} "
                                f"megapixels), more than the {limit / 1e6:.0f} an image of a "
                                "dataset may have (a corrupt or hostile file?)")
            img.load()
            if img.mode.startswith("I;16"):
                # Pillow's conversion of 16-bit grey to 8 bits clips at 255 rather than
                # scaling: scale 0..65535 to 0..255 here
                wide = np.asarray(img).astype(np.uint32)
                img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
            elif img.mode in ("I", "F"):
                raise DataError(f"{path}: pixels of mode {img.mode} (32-bit integer or "
                                "floating point) have no fixed range; expected 8- or 16-bit "
                                "images (save them as 8-bit PNG or JPEG)")
            img = img.convert("L" if mode == "L" else "RGB")
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: declares more pixels than an image of a dataset may have "
                        f"(a corrupt or hostile file?): {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read it as an image (truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from e
    if size is not None and img.size != (size[1], size[0]):
        # bilinear, with Pillow's support widened when shrinking, so a smaller image averages
        # the pixels it covers rather than sampling some of them
        img = img.resize((size[1], size[0]), getattr(Image, "Resampling", Image).BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def _as_size(size):
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise DataError(f"size must be (H, W), two positive integers; got {size!r}") from e
    if h < 1 or w < 1:
        raise DataError(f"size must be (H, W), two positive integers; got {size!r}")
    return h, w


def _stack(files, mode, size) -> tuple[np.ndarray, bool]:
    """``(images uint8 (n, H, W, C), whether any is colour)`` of ``files``; without ``size``
    every image must have the first one's size."""
    arrays, colour = [], False
    for path in files:
        a = _read(path, mode, size)
        if arrays and a.shape[:2] != arrays[0].shape[:2]:
            (h0, w0), (h, w) = arrays[0].shape[:2], a.shape[:2]
            raise DataError(f"images differ in size: {files[0]} is {h0}×{w0} (H×W) but {path} "
                            f"is {h}×{w}; pass size=(H, W) (--image-size H,W) to resize every "
                            "image to one size")
        if mode is None and not colour:
            colour = bool(np.any(a[..., 0] != a[..., 1]) or np.any(a[..., 1] != a[..., 2]))
        arrays.append(a)
    return np.stack(arrays), colour


def load_image_folder(root, *, size=None, mode: str | None = None, test_fraction: float = 0.2,
                      seed: int = 0, limit_train: int | None = None,
                      limit_test: int | None = None) -> Dataset:
    """A dataset from image files (PNG or JPEG) sorted into one subfolder per class.

    ``root/<class>/*.png|*.jpg|*.jpeg`` is split into train and test by :func:`split_indices`
    (``test_fraction``, ``seed``, stratified by class); ``root/train/<class>/…`` beside
    ``root/test/<class>/…`` is used as split (every test class must also be a training class).
    Class names are the subfolder names, sorted; files are read in sorted order; other files
    are skipped.

    ``mode``: ``"RGB"`` (three channels), ``"L"`` (grey, Pillow's ITU-R 601-2 luma) or
    ``None`` (the default): ``"RGB"`` if any image has a pixel whose red, green and blue
    differ, else ``"L"``. Alpha is dropped. ``size=(H, W)`` resizes every image to ``H × W``
    with Pillow's bilinear filter (``Image.Resampling.BILINEAR``, which averages over the
    covered pixels when shrinking); without it every image must have the same size, and two
    that differ are a :class:`DataError` naming both files.

    Returns a :class:`Dataset` of ``float32`` images in ``[0, 1]``, shape ``(n, H, W, C)`` with
    ``C`` 3 or 1, ``int32`` labels and ``class_names``; named after ``root``'s folder.
    ``limit_train`` / ``limit_test`` keep at most the first that many examples of each part
    (after the split). Raises :class:`DataFileNotFoundError` for a missing ``root`` or one
    without class folders (or ``train/`` without ``test/``) and :class:`DataError` for an
    unreadable image, an empty class folder or a bad argument.
    """
    root = as_dir(root, "image folder", "one subfolder of images per class")
    size = _as_size(size)
    if mode is not None and mode not in _MODES:
        raise DataError(f"mode must be 'RGB', 'L' or None (RGB if any image is colour); got "
                        f"{mode!r}")
    limits = (as_limit(limit_train, "limit_train"), as_limit(limit_test, "limit_test"))
    split = [root / "train", root / "test"]
    if any(p.is_dir() for p in split):
        missing = [p for p in split if not p.is_dir()]
        if missing:
            other = "train" if missing[0].name == "test" else "test"
            raise DataFileNotFoundError(
                f"{missing[0]} not found: {root / other} is there, and a split folder needs "
                f"both train/ and test/, each with one subfolder per class (or put the class "
                f"folders directly in {root} to split by seed)")
        train, test = _classes(split[0]), _classes(split[1])
        extra = sorted(set(test) - set(train))
        if extra:
            raise DataError(f"{split[1]} has classes {', '.join(extra)} that {split[0]} lacks; "
                            "expected every test class among the training classes")
        names = sorted(train)
        parts = []
        for classes in (train, test):
            files = [f for c in names for f in classes.get(c, [])]
            labels = [k for k, c in enumerate(names) for _ in classes.get(c, [])]
            parts.append((files, np.asarray(labels, np.int32)))
        (f_tr, y_tr), (f_te, y_te) = parts
        files = f_tr + f_te
        is_train = np.arange(len(files)) < len(f_tr)
        y = np.concatenate([y_tr, y_te])
        train_idx, test_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    else:
        classes = _classes(root)
        names = sorted(classes)
        files = [f for c in names for f in classes[c]]
        y = np.asarray([k for k, c in enumerate(names) for _ in classes[c]], np.int32)
        train_idx = test_idx = None
    images, colour = _stack(files, mode, size)
    if train_idx is None:
        train_idx, test_idx = split_indices(y, test_fraction, seed, stratify=True)
    if mode is None and not colour:
        images = images[..., :1]  # every pixel grey: R = G = B, and that value is its luma
    x = images.astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    train_idx, test_idx = train_idx[:limits[0]], test_idx[:limits[1]]
    return Dataset(x[train_idx], y[train_idx], x[test_idx], y[test_idx], tuple(x.shape[1:]),
                   len(names), _printable(root.name) or "folder",
                   tuple(_printable(n) for n in names))


def _printable(name: str) -> str:
    """A file name as text that can be printed, written to JSON and drawn: bytes that are not
    UTF-8 (which Python keeps as lone surrogates, unencodable) become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")
