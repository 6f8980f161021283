"""Datasets, splits, batches, augmentation, corruptions and PSNR (NumPy; PSNR in jax.numpy).

The modules follow the data flow: the errors and argument checks (``_checks``), the
:class:`Dataset` container and :func:`from_arrays` (``_dataset``), IDX files (``_idx``), the
digits and the IDX datasets (``_loaders``), CIFAR (``_cifar``), image folders (``_folder``), the
names :func:`load_dataset` knows (``_registry``), train/test splits and batches (``_split``),
augmentation (``_augment``), corruptions (``_corrupt``) and the restoration score (``_psnr``).

Sources, each returning a :class:`Dataset` of ``float32`` images in ``[0, 1]`` of shape
``(n, H, W, C)`` (NHWC; ``C`` 1 for grey, 3 for colour), ``int32`` labels in
``[0, num_classes)`` and, where the source names them, ``class_names``; nothing is downloaded:

- :func:`load_digits`: the scikit-learn digits (1,797 8×8 images, bundled with scikit-learn; the
  default), split into train and test deterministically by seed, stratified by class.
- :func:`load_mnist`, :func:`load_fashion_mnist` and :func:`load_idx_dataset` (any set in the
  same layout): a directory holding the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each
  gzip-compressed (``.gz``) or raw.
- :func:`load_cifar10`, :func:`load_cifar100`: the official Python-pickle batches, the
  extracted ``cifar-10-batches-py/`` or ``cifar-100-python/`` folder (or its parent); 32×32
  colour images.
- :func:`load_image_folder`: PNG/JPEG files in one subfolder per class, read with Pillow,
  optionally resized to one size.
- :func:`from_arrays`: any NumPy arrays.

:func:`load_dataset` loads any of them by name (the keys of :data:`DATASETS`).

Corruptions (:func:`gaussian_noise`, :func:`salt_and_pepper`, :func:`mask_region`,
:func:`mask_random`, :func:`mask_patches`, dispatched by :func:`corrupt`) return a
:class:`Corrupted` pair ``(images, mask)`` with ``mask`` ``True`` where a value was corrupted
or hidden. Randomness comes only from an explicit ``np.random.Generator`` or integer seed.
:func:`psnr` scores a restoration.

Bad input raises :class:`DataError` (a ``ValueError``) naming the file or argument and what was
expected; a missing file or directory raises :class:`DataFileNotFoundError`, which is both a
``DataError`` and a ``FileNotFoundError``.
"""

from ._augment import per_image, random_affine, random_elastic, random_flip, random_shift
from ._baselines import (
    PCA,
    Baselines,
    fit_baselines,
    fit_pca,
    hopfield_fill,
    masked_psnr,
    nearest_fill,
)
from ._checks import DataError, DataFileNotFoundError
from ._cifar import CIFAR10_FILES, CIFAR100_FILES, load_cifar10, load_cifar100
from ._corrupt import (
    CORRUPTIONS,
    REGIONS,
    Corrupted,
    corrupt,
    gaussian_noise,
    mask_patches,
    mask_random,
    mask_region,
    salt_and_pepper,
)
from ._dataset import Dataset, flatten, from_arrays, one_hot, unflatten
from ._folder import IMAGE_SUFFIXES, load_image_folder
from ._idx import read_idx, write_idx
from ._loaders import (
    FASHION_MNIST_CLASSES,
    MNIST_FILES,
    load_digits,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
)
from ._psnr import QUANTISATION_MSE, capped_psnr, psnr
from ._registry import DATASETS, DatasetSource, load_dataset
from ._split import batch_indices, batches, split_indices

__all__ = [
    "PCA",
    "Baselines",
    "fit_baselines",
    "fit_pca",
    "hopfield_fill",
    "masked_psnr",
    "capped_psnr",
    "QUANTISATION_MSE",
    "nearest_fill",
    "CIFAR10_FILES",
    "CIFAR100_FILES",
    "CORRUPTIONS",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "MNIST_FILES",
    "REGIONS",
    "Corrupted",
    "DataError",
    "DataFileNotFoundError",
    "Dataset",
    "DatasetSource",
    "batch_indices",
    "batches",
    "corrupt",
    "flatten",
    "from_arrays",
    "gaussian_noise",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist",
    "mask_patches",
    "mask_random",
    "mask_region",
    "one_hot",
    "psnr",
    "per_image",
    "random_affine",
    "random_elastic",
    "random_flip",
    "random_shift",
    "read_idx",
    "salt_and_pepper",
    "split_indices",
    "unflatten",
    "write_idx",
]
