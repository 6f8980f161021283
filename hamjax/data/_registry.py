"""The dataset names :func:`load_dataset` accepts, each with its loader (:data:`DATASETS`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

from ._checks import DataError
from ._cifar import load_cifar10, load_cifar100
from ._dataset import Dataset
from ._folder import load_image_folder
from ._loaders import load_digits, load_fashion_mnist, load_idx_dataset, load_mnist


class DatasetSource(NamedTuple):
    """One entry of :data:`DATASETS`: the loader and what its ``data_dir`` holds.

    ``load``: the function returning the :class:`Dataset` (its first argument the directory,
    when ``folder`` is not ``None``). ``folder``: what the directory must hold, in words;
    ``None`` for a dataset bundled with a dependency (it takes no directory)."""

    load: Callable[..., Dataset]
    folder: str | None

    def keywords(self) -> tuple[str, ...]:
        """The names of the keyword arguments ``load`` takes, in its signature's order (the
        directory, its first argument when ``folder`` is set, excluded)."""
        params = list(inspect.signature(self.load).parameters.values())
        if self.folder is not None:
            params = params[1:]
        return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                          p.KEYWORD_ONLY))


def _load_cifar100_coarse(data_dir, limit_train: int | None = None,
                          limit_test: int | None = None) -> Dataset:
    return load_cifar100(data_dir, "coarse", limit_train=limit_train, limit_test=limit_test)


_IDX = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, " \
       "t10k-labels-idx1-ubyte (each raw or .gz)"

DATASETS: dict[str, DatasetSource] = {
    "digits": DatasetSource(load_digits, None),
    "mnist": DatasetSource(load_mnist, f"MNIST's four IDX files, {_IDX}"),
    "fashion-mnist": DatasetSource(load_fashion_mnist,
                                   f"Fashion-MNIST's four IDX files, {_IDX}"),
    "idx": DatasetSource(load_idx_dataset, f"four IDX files named like MNIST's, {_IDX}"),
    "cifar10": DatasetSource(load_cifar10, "cifar-10-batches-py/ (extracted from "
                                           "cifar-10-python.tar.gz), or that folder itself"),
    "cifar100": DatasetSource(load_cifar100, "cifar-100-python/ (extracted from "
                                             "cifar-100-python.tar.gz), or that folder itself"),
    "cifar100-coarse": DatasetSource(_load_cifar100_coarse,
                                     "cifar-100-python/ (extracted from "
                                     "cifar-100-python.tar.gz), or that folder itself"),
    "folder": DatasetSource(load_image_folder, "one subfolder of PNG/JPEG images per class "
                                               "(or train/ and test/, each holding those)"),
}
"""The datasets :func:`load_dataset` loads by name: ``{name: DatasetSource(load, folder)}``.

``digits`` (:func:`load_digits`, bundled), ``mnist`` (:func:`load_mnist`), ``fashion-mnist``
(:func:`load_fashion_mnist`), ``idx`` (:func:`load_idx_dataset`: any set in MNIST's four-file
IDX layout), ``cifar10`` (:func:`load_cifar10`), ``cifar100`` and ``cifar100-coarse``
(:func:`load_cifar100` with ``label_kind`` ``"fine"`` or ``"coarse"``) and ``folder``
(:func:`load_image_folder`)."""


def load_dataset(name: str = "digits", data_dir=None, **kwargs) -> Dataset:
    """Load a dataset by name (a key of :data:`DATASETS`, in any letter case).

    ``data_dir`` is the directory the loader reads (``None`` for ``"digits"``, which is
    bundled; ``"mnist"`` falls back to ``HAMJAX_MNIST_DIR``); ``kwargs`` go to the loader.
    Raises :class:`DataError` for an unknown name, a ``data_dir`` missing or given where none is
    read, or a keyword the loader does not take (naming those it does)."""
    key = str(name).lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                        "(or build one from arrays with hamjax.data.from_arrays)")
    source = DATASETS[key]
    unknown = sorted(set(kwargs) - set(source.keywords()))
    if unknown:
        raise DataError(f"dataset {key!r} takes no keyword {', '.join(map(repr, unknown))}; it "
                        f"takes {', '.join(source.keywords()) or 'none'}")
    if source.folder is None:
        if data_dir is not None:
            raise DataError(f"dataset {key!r} is bundled and takes no data_dir (got "
                            f"{data_dir!r}); for files on disk use one of "
                            f"{', '.join(k for k, s in DATASETS.items() if s.folder)}")
        return source.load(**kwargs)
    if data_dir is None and key != "mnist":
        raise DataError(f"dataset {key!r} needs data_dir, a directory holding {source.folder}; "
                        "nothing is downloaded")
    return source.load(data_dir, **kwargs)
