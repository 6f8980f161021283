"""Tests for hamjax.data: sources, IDX files, splits, batches, corruptions, PSNR."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamjax import data as hd

MNIST_DIR = Path(os.environ.get("HAMJAX_MNIST_DIR")
                 or Path(__file__).parents[1].parent / "shared" / "data" / "mnist")
FASHION_DIR = Path(os.environ.get("HAMJAX_FASHION_MNIST_DIR")
                   or Path(__file__).parents[1].parent / "shared" / "data" / "fashion-mnist")
# The complete official sets (class counts from the folders' READMEs and the published lists).
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
requires_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f"{name}.gz").is_file() or (MNIST_DIR / name).is_file()
            for name in hd.MNIST_FILES.values()),
    reason=f"real MNIST IDX files not found in {MNIST_DIR} (set HAMJAX_MNIST_DIR to a directory "
           "holding the four standard files)",
)


# ------------------------------------------------------------------------------------------
# digits


def _ids(x):
    """A hashable identity per image, to compare which examples landed in a split."""
    return {row.tobytes() for row in hd.flatten(x)}


def test_digits_shapes_ranges_and_dtypes():
    ds = hd.load_digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.y_train.shape == (1438,) and ds.y_test.shape == (359,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert ds.num_features == 64
    flat = ds.flat()
    assert flat.x_train.shape == (1438, 64) and flat.x_test.shape == (359, 64)
    np.testing.assert_array_equal(flat.images().x_test, ds.x_test)
    assert "digits" in repr(ds) and "(1438, 8, 8, 1)" in repr(ds)


def test_digits_split_is_deterministic_by_seed_and_disjoint():
    a, b, c = hd.load_digits(seed=0), hd.load_digits(seed=0), hd.load_digits(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert _ids(a.x_test) != _ids(c.x_test)
    # Same examples overall, each in exactly one part (digits has a few duplicate images, so
    # compare counts rather than sets).
    assert len(a.x_train) + len(a.x_test) == 1797
    everything = np.concatenate([hd.flatten(a.x_train), hd.flatten(a.x_test)])
    everything_c = np.concatenate([hd.flatten(c.x_train), hd.flatten(c.x_test)])
    np.testing.assert_array_equal(np.sort(everything.sum(1)), np.sort(everything_c.sum(1)))


def test_digits_split_is_stratified():
    for seed in (0, 3):
        ds = hd.load_digits(test_fraction=0.25, seed=seed)
        train = np.bincount(ds.y_train, minlength=10)
        test = np.bincount(ds.y_test, minlength=10)
        total = train + test
        assert test.sum() == round(0.25 * 1797)
        assert np.all(np.abs(test - total * 0.25) < 1.0)


def test_split_indices_partition_and_unstratified():
    y = np.repeat(np.arange(3), [10, 20, 30])
    for stratify in (True, False):
        tr, te = hd.split_indices(y, 0.3, seed=5, stratify=stratify)
        assert len(te) == 18
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(60))
    tr, te = hd.split_indices(y, 0.3, seed=5)
    np.testing.assert_array_equal(np.bincount(y[te]), [3, 6, 9])
    with pytest.raises(hd.DataError, match="strictly between 0 and 1"):
        hd.split_indices(y, 1.0)
    with pytest.raises(hd.DataError, match="both need at least 1"):
        hd.split_indices(np.arange(3), 0.01)


def test_split_indices_deterministic_per_seed_and_shuffled():
    y = np.repeat(np.arange(4), [7, 11, 13, 19])
    for stratify in (True, False):
        a = hd.split_indices(y, 0.25, seed=3, stratify=stratify)
        b = hd.split_indices(y, 0.25, seed=3, stratify=stratify)
        c = hd.split_indices(y, 0.25, seed=4, stratify=stratify)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
            assert u.dtype == np.int64
        assert not np.array_equal(a[1], c[1])
        assert len(a[1]) == round(0.25 * 50)
        assert not np.all(np.diff(a[0]) > 0)  # shuffled, not sorted
        assert not set(a[0]) & set(a[1])


def test_split_indices_stratified_with_rare_classes():
    # a class of one example, and more classes than test places: the quota is still proportional
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    tr, te = hd.split_indices(y, 0.3)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(7))
    assert np.all(np.abs(np.bincount(y[te], minlength=3) - np.bincount(y) * 2 / 7) < 1.0)
    y = np.repeat(np.arange(10), 2)
    tr, te = hd.split_indices(y, 0.2)
    assert len(te) == 4 and np.all(np.bincount(y[te], minlength=10) <= 1)


# ------------------------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(5, 3, 4), (7,)])
def test_idx_round_trip_uint8(tmp_path, suffix, shape):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = hd.write_idx(tmp_path / f"a-idx{len(shape)}-ubyte{suffix}", a)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    header = gzip.decompress(raw)[:4] if suffix else raw[:4]
    assert header == bytes([0, 0, 0x08, len(shape)])
    b = hd.read_idx(path)
    assert b.dtype == np.uint8 and b.shape == shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(hd.read_idx(path, dtype=np.uint8, ndim=len(shape)), a)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip_any_supported_dtype(dtype, shape, compress, seed):
    a = (np.random.default_rng(seed).normal(size=shape) * 100).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = hd.write_idx(Path(d) / "x.idx", a, compress=compress)
        b = hd.read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.shape == shape
    np.testing.assert_array_equal(a, b)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(hd.DataError, match="got dtype int64"):
        hd.write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(hd.DataError, match="1 to 255 dimensions"):
        hd.write_idx(tmp_path / "x", np.uint8(3))


# ------------------------------------------------------------------------------------------
# MNIST from small IDX files written here


def _write_mnist(root: Path, n_train=12, n_test=5, size=(6, 4), gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, a in arrays.items():
        hd.write_idx(root / (hd.MNIST_FILES[key] + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_small_files(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    ds = hd.load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.image_shape == (6, 4, 1)
    assert ds.x_train.shape == (12, 6, 4, 1) and ds.x_test.shape == (5, 6, 4, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    limited = hd.load_mnist(tmp_path, limit_train=3, limit_test=2)
    assert limited.num_train == 3 and limited.num_test == 2
    np.testing.assert_array_equal(limited.x_train, ds.x_train[:3])


def test_load_mnist_mixed_raw_and_gzip_and_env_var(tmp_path, monkeypatch):
    _write_mnist(tmp_path)
    name = hd.MNIST_FILES["test_labels"]
    (tmp_path / name).write_bytes(gzip.decompress((tmp_path / f"{name}.gz").read_bytes()))
    (tmp_path / f"{name}.gz").unlink()
    monkeypatch.setenv("HAMJAX_MNIST_DIR", str(tmp_path))
    assert hd.load_mnist().num_test == 5
    assert hd.load_dataset("MNIST").num_train == 12
    monkeypatch.delenv("HAMJAX_MNIST_DIR")
    with pytest.raises(hd.DataError, match="HAMJAX_MNIST_DIR"):
        hd.load_mnist()


def test_mnist_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(hd.DataFileNotFoundError, match=r"nowhere does not exist.*t10k-images"):
        hd.load_mnist(missing)
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        hd.load_dataset("mnist", data_dir=missing)


def test_mnist_missing_or_misnamed_file_lists_expected_names(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "t10k-images.idx3-ubyte.gz")
    with pytest.raises(hd.DataFileNotFoundError,
                       match=r"expected t10k-images-idx3-ubyte or t10k-images-idx3-ubyte\.gz"
                             r".*holds: .*t10k-images\.idx3-ubyte\.gz"):
        hd.load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_truncated_file(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    path = tmp_path / (hd.MNIST_FILES["train_images"] + (".gz" if gz else ""))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 10])
    pattern = (r"train-images-idx3-ubyte\.gz.*gzip stream is truncated" if gz else
               r"train-images-idx3-ubyte: truncated.*expected 288 bytes, got 278")
    with pytest.raises(hd.DataError, match=pattern):
        hd.load_mnist(tmp_path)


def test_idx_trailing_data_and_short_header(tmp_path):
    path = hd.write_idx(tmp_path / "a", np.zeros((2, 3), np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(hd.DataError, match="trailing data.*expected 6 bytes, got 7"):
        hd.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(hd.DataError, match="4-byte IDX magic number, got 2 bytes"):
        hd.read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(hd.DataError, match="truncated header: expected 16 bytes"):
        hd.read_idx(path)
    with pytest.raises(hd.DataFileNotFoundError, match="does not exist"):
        hd.read_idx(tmp_path / "nope")


def test_a_gzip_bomb_is_refused_with_bounded_memory(tmp_path):
    """An IDX header declaring 2×3 bytes, followed by 20 MB of zeros, gzip-compressed (about
    20 kB): refused, and reading it allocates a small fraction of the payload, both when the
    gzip trailer records the true size (refused before decompressing) and when it is forged to
    match the header (decompression stops one byte past the declared data)."""
    import tracemalloc

    raw = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    bomb = gzip.compress(raw + bytes(20_000_000), compresslevel=9)
    honest, forged = tmp_path / "honest.gz", tmp_path / "forged.gz"
    honest.write_bytes(bomb)
    forged.write_bytes(bomb[:-4] + (len(raw) + 6).to_bytes(4, "little"))
    for path, pattern in ((honest, "trailer records 20000012 uncompressed bytes"),
                          (forged, "trailing data.*goes on past")):
        tracemalloc.start()
        try:
            with pytest.raises(hd.DataError, match=pattern):
                hd.read_idx(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2_000_000, (path.name, peak)


def test_mnist_wrong_magic_number(tmp_path):
    _write_mnist(tmp_path)
    # Labels where images belong: a 1-D file under the images name.
    hd.write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(12, np.uint8))
    with pytest.raises(hd.DataError, match=r"train-images-idx3-ubyte\.gz: wrong magic number "
                                           r"0x00000801; expected 0x00000803"):
        hd.load_mnist(tmp_path)
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(hd.DataError, match="wrong magic number.*is this an IDX file"):
        hd.read_idx(path)


def test_mnist_image_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    hd.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(hd.DataError, match=r"holds 12 images but .*train-labels-idx1-ubyte\.gz "
                                           r"holds 11 labels"):
        hd.load_mnist(tmp_path)


def test_mnist_labels_out_of_range(tmp_path):
    _write_mnist(tmp_path)
    hd.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8))
    with pytest.raises(hd.DataError,
                       match=r"t10k-labels-idx1-ubyte\.gz: labels must lie in 0\.\.9"):
        hd.load_mnist(tmp_path)


# ------------------------------------------------------------------------------------------
# MNIST, the real files


@pytest.fixture(scope="module")
def mnist():
    return hd.load_mnist(MNIST_DIR)


@requires_mnist
def test_real_mnist_counts_shapes_and_values(mnist):
    assert mnist.x_train.shape == (60_000, 28, 28, 1)
    assert mnist.x_test.shape == (10_000, 28, 28, 1)
    assert mnist.y_train.shape == (60_000,) and mnist.y_test.shape == (10_000,)
    np.testing.assert_array_equal(np.bincount(mnist.y_train, minlength=10),
                                  MNIST_TRAIN_CLASS_COUNTS)
    np.testing.assert_array_equal(np.bincount(mnist.y_test, minlength=10),
                                  MNIST_TEST_CLASS_COUNTS)
    for x in (mnist.x_train, mnist.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    # Values are k / 255 for integers k.
    k = mnist.x_test[:100] * 255.0
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)


@pytest.mark.parametrize("folder", [MNIST_DIR, FASHION_DIR], ids=["mnist", "fashion-mnist"])
def test_real_checksums(folder):
    sums = folder / "MD5SUMS"
    if not sums.is_file():
        pytest.skip(f"no MD5SUMS in {folder}")
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        if (folder / name).is_file():
            assert hashlib.md5((folder / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.skipif(
    not all((FASHION_DIR / f"{name}.gz").is_file() for name in hd.MNIST_FILES.values()),
    reason=f"real Fashion-MNIST IDX files not found in {FASHION_DIR}")
def test_real_fashion_mnist_counts():
    fashion = hd.load_fashion_mnist(FASHION_DIR)
    assert fashion.x_train.shape == (60_000, 28, 28, 1)
    assert fashion.x_test.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(fashion.y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.y_test, minlength=10), [1000] * 10)
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"


# ------------------------------------------------------------------------------------------
# from_arrays and load_dataset


def test_from_arrays_shapes_and_scaling():
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (40, 5, 6), dtype=np.uint8)
    y = np.arange(40) % 4
    ds = hd.from_arrays(x8, y, test_fraction=0.25, seed=1)
    assert ds.image_shape == (5, 6, 1) and ds.num_classes == 4 and ds.name == "arrays"
    assert ds.num_train == 30 and ds.num_test == 10
    np.testing.assert_array_equal(np.bincount(ds.y_test), [3, 3, 2, 2])  # ties: low classes
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0
    again = hd.from_arrays(x8, y, test_fraction=0.25, seed=1)
    np.testing.assert_array_equal(ds.x_test, again.x_test)

    flat = hd.from_arrays(rng.random((10, 12)), y[:10], rng.random((4, 12)), y[:4])
    assert flat.image_shape == (12,) and flat.x_test.shape == (4, 12)
    shaped = hd.from_arrays(rng.random((10, 12)), y[:10], rng.random((4, 12)), y[:4],
                            image_shape=(3, 2, 2), num_classes=7)
    assert shaped.x_train.shape == (10, 3, 2, 2) and shaped.num_classes == 7
    nhwc = hd.from_arrays(rng.random((10, 2, 2, 3)), y[:10].astype(float), test_fraction=0.5)
    assert nhwc.image_shape == (2, 2, 3) and nhwc.y_train.dtype == np.int32


@pytest.mark.parametrize(
    "x, y, kw, pattern",
    [
        (np.zeros(5), np.zeros(5, int), {},
         r"x_train must have shape \(n, H, W\).*got shape \(5,\)"),
        (np.zeros((2, 2, 2, 2, 2)), np.zeros(2, int), {}, r"got shape \(2, 2, 2, 2, 2\)"),
        (np.zeros((0, 4)), np.zeros(0, int), {}, "x_train is empty"),
        (np.zeros((5, 4)), np.zeros(4, int), {}, "y_train holds 4 labels but the images hold 5"),
        (np.zeros((5, 4)), np.zeros((5, 3)), {}, r"1-D class indices.*y\.argmax"),
        (np.full((5, 4), 2.0), np.zeros(5, int), {}, r"values must lie in \[0, 1\].*x / x\.max"),
        (np.full((5, 4), np.nan), np.zeros(5, int), {}, "NaN or infinite"),
        (np.zeros((5, 4)), np.full(5, 0.5), {}, "integer class indices"),
        (np.zeros((5, 4)), np.full(5, -1), {}, "class indices >= 0"),
        (np.zeros((5, 4)), np.arange(5), {"num_classes": 3}, r"num_classes=3 but a label is 4"),
        (np.zeros((5, 4)), np.arange(5), {"image_shape": (3, 3)}, "needs 9"),
        (np.zeros((5, 4)), np.arange(5), {"x_test": np.zeros((2, 4))}, "both x_test and y_test"),
        (np.zeros((5, 4)), np.arange(5), {"x_test": np.zeros((2, 3)), "y_test": np.arange(2)},
         r"x_test examples have shape \(3,\) but x_train examples \(4,\)"),
        (np.array([["a"]]), np.arange(1), {}, "must be numeric"),
    ],
)
def test_from_arrays_bad_input(x, y, kw, pattern):
    with pytest.raises(hd.DataError, match=pattern):
        hd.from_arrays(x, y, **kw)


def test_load_dataset_dispatch_and_errors(tmp_path):
    assert hd.load_dataset("digits", seed=2).name == "digits"
    with pytest.raises(hd.DataError, match=r"unknown dataset 'cifar-11'; expected one of digits, "
                                           r"mnist, fashion-mnist, idx, cifar10"):
        hd.load_dataset("cifar-11")
    with pytest.raises(hd.DataError, match="takes no data_dir"):
        hd.load_dataset("digits", data_dir=tmp_path)
    with pytest.raises(hd.DataError, match=r"'cifar10' needs data_dir.*cifar-10-batches-py"):
        hd.load_dataset("cifar10")
    with pytest.raises(hd.DataError, match=r"'digits' takes no keyword 'size'; it takes "
                                           r"test_fraction, seed, limit_train, limit_test"):
        hd.load_dataset("digits", size=(4, 4))


def test_one_hot():
    np.testing.assert_array_equal(hd.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    assert hd.one_hot(np.array([1]), 4).dtype == np.float32
    with pytest.raises(hd.DataError, match=r"labels must lie in \[0, 3\)"):
        hd.one_hot([3], 3)


# ------------------------------------------------------------------------------------------
# batches


def test_batches_cover_each_example_once_and_differ_between_epochs():
    x = np.arange(103)[:, None] * np.ones((1, 2))
    y = np.arange(103)
    seen = []
    for epoch in (0, 1):
        parts = list(hd.batches(x, y, 10, seed=3, epoch=epoch))
        assert [len(b[1]) for b in parts] == [10] * 10 + [3]
        order = np.concatenate([b[1] for b in parts])
        np.testing.assert_array_equal(np.sort(order), y)
        for xb, yb in parts:
            np.testing.assert_array_equal(xb[:, 0], yb)
        seen.append(order)
    assert not np.array_equal(seen[0], seen[1])
    again = np.concatenate([b[1] for b in hd.batches(x, y, 10, seed=3, epoch=1)])
    np.testing.assert_array_equal(again, seen[1])
    other_seed = np.concatenate([b[1] for b in hd.batches(x, y, 10, seed=4, epoch=1)])
    assert not np.array_equal(other_seed, seen[1])


def test_batches_drop_last_no_shuffle_and_errors():
    x = np.arange(25)
    parts = list(hd.batches(x, None, 10, drop_last=True))
    assert len(parts) == 2 and all(yb is None and len(xb) == 10 for xb, yb in parts)
    ordered = np.concatenate([xb for xb, _ in hd.batches(x, None, 7, shuffle=False)])
    np.testing.assert_array_equal(ordered, x)
    with pytest.raises(hd.DataError, match="batch_size must be a positive integer"):
        hd.batches(x, None, 0)
    with pytest.raises(hd.DataError, match="x holds 25 examples but y holds 3"):
        hd.batches(x, np.arange(3), 5)
    with pytest.raises(hd.DataError, match="epoch must be a non-negative integer"):
        hd.batches(x, None, 5, epoch=-1)


# ------------------------------------------------------------------------------------------
# corruptions


@pytest.fixture(scope="module")
def gray():
    """A batch of mid-gray images: every corruption visibly changes the values it touches."""
    return np.full((50, 28, 28, 1), 0.5, np.float32)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 1.0])
def test_mask_random_fraction_mask_and_fill(gray, fraction):
    out, mask = hd.mask_random(gray, fraction, rng=0, fill=0.25)
    assert out.shape == gray.shape and mask.shape == gray.shape and mask.dtype == bool
    per_image = mask.reshape(50, -1).sum(1)
    assert np.all(per_image == round(fraction * 784))
    assert np.all(out[mask] == 0.25) and np.all(out[~mask] == 0.5)
    assert np.all(gray == 0.5)  # input untouched


def test_salt_and_pepper_fraction_and_values(gray):
    out, mask = hd.salt_and_pepper(gray, 0.2, np.random.default_rng(1))
    changed = out != gray
    np.testing.assert_array_equal(changed, mask)  # gray pixels always change
    assert abs(changed.mean() - 0.2) < 1e-3
    assert set(np.unique(out[mask])) == {0.0, 1.0}
    assert abs((out[mask] == 1.0).mean() - 0.5) < 0.02
    np.testing.assert_array_equal(out[~mask], 0.5)


def test_gaussian_noise_std_and_clipping(gray):
    out, mask = hd.gaussian_noise(gray, 0.1, rng=0, clip=False)
    assert mask.all() and out.dtype == np.float32
    assert abs((out - gray).std() - 0.1) < 0.002
    assert abs((out - gray).mean()) < 0.002
    clipped, _ = hd.gaussian_noise(gray, 2.0, rng=0)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    same, mask0 = hd.gaussian_noise(gray, 0.0, rng=0)
    np.testing.assert_array_equal(same, gray)
    assert not mask0.any()


@pytest.mark.parametrize("kind, level", [("gaussian", 0.3), ("salt_and_pepper", 0.3),
                                         ("mask_random", 0.3)])
def test_corruptions_deterministic_by_seed(gray, kind, level):
    a = hd.corrupt(gray[:5], kind, level, rng=7)
    b = hd.corrupt(gray[:5], kind, level, rng=np.random.default_rng(7))
    c = hd.corrupt(gray[:5], kind, level, rng=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.images, c.images)


def test_mask_region_named_and_tuple():
    x = np.ones((2, 8, 6, 1), np.float32)
    out, mask = hd.mask_region(x, "bottom_half")
    assert mask[:, 4:].all() and not mask[:, :4].any()
    np.testing.assert_array_equal(out, np.where(mask, 0.0, 1.0))
    expected_rows_cols = {
        "top_half": (slice(0, 4), slice(0, 6)),
        "left_half": (slice(0, 8), slice(0, 3)),
        "right_half": (slice(0, 8), slice(3, 6)),
        "center": (slice(2, 6), slice(1, 4)),  # offsets (8-4)//2, (6-3)//2
    }
    for region, (rows, cols) in expected_rows_cols.items():
        want = np.zeros_like(mask)
        want[:, rows, cols] = True
        np.testing.assert_array_equal(hd.mask_region(x, region).mask, want, err_msg=region)
    out, mask = hd.mask_region(x[..., 0], (1, 2, 3, 2), fill=0.5)
    assert out.shape == (2, 8, 6) and mask.sum() == 2 * 3 * 2
    assert mask[:, 1:4, 2:4].all() and np.all(out[mask] == 0.5)
    # Flat batches with an image shape come back flat.
    flat_out, flat_mask = hd.mask_region(x.reshape(2, -1), "top_half", image_shape=(8, 6))
    assert flat_out.shape == (2, 48) and flat_mask[:, :24].all() and not flat_mask[:, 24:].any()


def test_mask_patches_hides_whole_patches():
    x = np.random.default_rng(0).random((20, 8, 12, 2)).astype(np.float32)
    out, mask = hd.corrupt(x, "mask_patches", 0.5, rng=3, patch=4, fill=-1.0)
    # each 4×4 patch (all channels) is hidden whole or not at all: 3 of the 6, round(0.5·6)
    blocks = mask.reshape(20, 2, 4, 3, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(20, 6, -1)
    assert np.all(blocks.all(-1) | ~blocks.any(-1))
    np.testing.assert_array_equal(blocks.all(-1).sum(1), 3)
    np.testing.assert_array_equal(out, np.where(mask, -1.0, x))
    assert len({tuple(b) for b in blocks.all(-1)}) > 1  # drawn per image
    flat = hd.mask_patches(x.reshape(20, -1), 0.5, 3, patch=4, image_shape=(8, 12, 2))
    np.testing.assert_array_equal(flat.mask, mask.reshape(20, -1))  # same draws, flat
    with pytest.raises(hd.DataError, match="3x3 patches do not tile 8x12"):
        hd.mask_patches(x, 0.5, 0, patch=3)


def test_mask_region_errors():
    x = np.ones((2, 8, 6))
    with pytest.raises(hd.DataError, match="unknown region 'middle'"):
        hd.mask_region(x, "middle")
    with pytest.raises(hd.DataError, match=r"does not fit in 8×6 images"):
        hd.mask_region(x, (5, 0, 4, 6))
    with pytest.raises(hd.DataError, match="image_shape"):
        hd.mask_region(np.ones((2, 48)), "bottom_half")


def test_corrupt_dispatch_and_errors(gray):
    out, mask = hd.corrupt(gray[:3], "mask_bottom", 0.25)
    assert mask[:, 21:].all() and not mask[:, :21].any()
    region = hd.corrupt(gray[:3], "mask_region", "bottom_half")
    np.testing.assert_array_equal(region.mask, hd.corrupt(gray[:3], "mask_bottom", 0.5).mask)
    flat = hd.corrupt(gray[:3].reshape(3, -1), "mask_bottom", 0.5, image_shape=(28, 28, 1))
    np.testing.assert_array_equal(flat.mask, region.mask.reshape(3, -1))
    with pytest.raises(hd.DataError, match=r"unknown corruption kind 'blur'; expected one of "
                                           r"gaussian, salt_and_pepper"):
        hd.corrupt(gray, "blur", 0.1, rng=0)
    with pytest.raises(hd.DataError, match="numpy.random.Generator or a non-negative integer"):
        hd.corrupt(gray, "gaussian", 0.1)
    with pytest.raises(hd.DataError, match=r"fraction must lie in \[0, 1\]"):
        hd.corrupt(gray, "mask_random", 1.5, rng=0)


# ------------------------------------------------------------------------------------------
# PSNR


def test_psnr_against_hand_computation():
    clean = np.zeros((3, 2, 2))
    restored = clean.copy()
    restored[0, 0, 0] = 0.2  # MSE 0.04 / 4 = 0.01 -> 20 dB
    restored[1] = 0.5  # MSE 0.25 -> 10 log10(4) dB
    p = hd.psnr(clean, restored)
    assert p.shape == (3,)
    np.testing.assert_allclose(p[:2], [20.0, 10 * math.log10(4.0)])
    assert p[2] == np.inf
    np.testing.assert_allclose(hd.psnr(clean[:2] * 255, restored[:2] * 255, max_val=255.0),
                               p[:2])
    np.testing.assert_allclose(hd.psnr(np.zeros(4), np.full(4, 0.1)), 20.0)
    with pytest.raises(hd.DataError, match=r"clean has shape \(3, 2, 2\) but restored \(3, 4\)"):
        hd.psnr(clean, restored.reshape(3, 4))


def test_psnr_on_jax_arrays_and_under_jit():
    clean = np.zeros((2, 4), np.float32)
    restored = np.stack([np.full(4, 0.1, np.float32), np.full(4, 0.5, np.float32)])
    want = hd.psnr(clean, restored)
    np.testing.assert_allclose(want, [20.0, 10 * math.log10(4.0)], rtol=1e-6)
    np.testing.assert_allclose(hd.psnr(jnp.asarray(clean), jnp.asarray(restored)), want)
    np.testing.assert_allclose(jax.jit(hd.psnr)(clean, restored), want)


def test_psnr_of_digits_noise_roughly_matches_sigma():
    x = hd.load_digits().x_test
    noisy, _ = hd.gaussian_noise(x, 0.05, rng=0, clip=False)
    np.testing.assert_allclose(hd.psnr(x, noisy).mean(), 20 * math.log10(1 / 0.05), atol=0.5)


def test_random_shift_is_a_translation_within_bounds():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 12, 10, 1), np.float32)
    x[:, 3:9, 3:7, 0] = rng.random((40, 6, 4))  # zero border of 3 pixels: nothing falls off
    out = hd.random_shift(x, 1, 2)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for a, b in zip(x, out, strict=True):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(np.roll(a, (dy, dx), axis=(0, 1)), b)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 10  # offsets vary between images
    np.testing.assert_array_equal(hd.random_shift(x, 1, 2), out)  # deterministic by seed
    np.testing.assert_array_equal(hd.random_shift(x[..., 0], 1, 0), x[..., 0])
    # pixels pushed over the edge are lost, zeros come in
    edge = np.zeros((1, 4, 4), np.float32)
    edge[0, 0, 0] = 1.0
    moved = hd.random_shift(np.repeat(edge, 50, 0), 3, 1)
    assert set(np.unique(moved.sum((1, 2)))) == {0.0, 1.0}


def test_random_shift_errors():
    with pytest.raises(hd.DataError, match=r"max_shift must be in \[0, 3\]"):
        hd.random_shift(np.zeros((2, 4, 4)), 0, 4)
    with pytest.raises(hd.DataError, match=r"images \(n, H, W\)"):
        hd.random_shift(np.zeros((2, 16)), 0, 1)
    # the order of random_affine's (x, rng, setting): a generator where max_shift goes is named
    with pytest.raises(hd.DataError, match=r"random_shift\(x, rng, max_shift\): max_shift must "
                                           r"be an integer"):
        hd.random_shift(np.zeros((2, 4, 4)), 1, np.random.default_rng(0))


def test_classification_shift_only_when_training():
    from hamjax.train import Classification

    x = np.zeros((16, 8, 8, 1), np.float32)
    x[:, 3:5, 3:5] = 1.0
    y = np.arange(16) % 10
    task = Classification(shift=2)
    train = task.prepare(x, y, np.random.default_rng(0), train=True)["input"]
    test = task.prepare(x, y, np.random.default_rng(0), train=False)["input"]
    np.testing.assert_array_equal(test, x)
    assert not np.array_equal(train, x)
    np.testing.assert_allclose(train.sum((1, 2, 3)), x.sum((1, 2, 3)))


def test_random_elastic_displaces_by_a_smooth_bounded_field():
    """On a ramp image ``I(r, c) = r`` bilinear sampling is exact, so the interior of the
    output minus the input is ``Δy(r, c)``: the displacement itself. It is bounded by α (a
    Gaussian with unit sum over uniform noise in [−1, 1]), smooth (neighbours differ far less
    than the field varies), different per image and reproducible by seed; α = 0 is the
    identity."""
    h = w = 28
    ramp = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)  # (h, w): I = r
    x = np.repeat(ramp[None, :, :, None], 6, axis=0)
    np.testing.assert_array_equal(hd.random_elastic(x, 0, alpha=0.0), x)
    out = hd.random_elastic(x, 3, alpha=8.0, sigma=4.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(hd.random_elastic(x, 3, alpha=8.0), out)
    inner = (slice(None), slice(10, 18), slice(10, 18))
    dy = (out - x)[inner]  # interior: sampled rows stay inside the image
    assert np.abs(dy).max() <= 8.0 and dy.std() > 0.05
    # neighbouring pixels of a field smoothed over σ = 4 differ by ~0.2 of its spread (of
    # unsmoothed noise: ~1.4 times it)
    step = np.abs(np.diff(dy, axis=2)).mean()
    assert step < 0.5 * dy.std()
    assert not np.allclose(dy[0], dy[1])
    with pytest.raises(hd.DataError, match="alpha >= 0 and sigma > 0"):
        hd.random_elastic(x, 0, alpha=-1.0)


def test_random_flip_mirrors_about_half():
    x = np.random.default_rng(0).random((400, 5, 7, 1)).astype(np.float32)
    out = hd.random_flip(x, 1)
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(mirrored ^ kept)
    assert 150 < mirrored.sum() < 250
    np.testing.assert_array_equal(hd.random_flip(x, 1), out)


def _blob(h=21, w=21, at=(16.0, 10.0), sigma=1.2):
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.exp(-((r - at[0]) ** 2 + (c - at[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid_polar(img, center):
    r, c = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    m = img.sum()
    dy, dx = (img * r).sum() / m - center[0], (img * c).sum() / m - center[1]
    return np.hypot(dy, dx), np.degrees(np.arctan2(dx, dy))


def test_random_affine_rotates_and_zooms_about_the_centre():
    x = np.repeat(_blob()[None], 30, axis=0)  # a blob 6 pixels below the centre (10, 10)
    np.testing.assert_array_equal(hd.random_affine(x, 0), x)  # no rotation, no zoom: identity
    rot = hd.random_affine(x, 1, max_rotation=30.0)
    angles = []
    for img in rot:
        dist, ang = _centroid_polar(img, (10.0, 10.0))
        assert abs(dist - 6.0) < 0.1  # a rotation keeps the distance to the centre
        assert abs(ang) <= 30.5
        angles.append(ang)
    assert np.ptp(angles) > 20  # angles differ between images
    zoomed = hd.random_affine(x, 2, max_zoom=0.2)
    for img in zoomed:
        dist, ang = _centroid_polar(img, (10.0, 10.0))
        assert abs(ang) < 0.5 and 6.0 * 0.8 - 0.1 < dist < 6.0 * 1.2 + 0.1  # along the same ray
    np.testing.assert_array_equal(hd.random_affine(x[..., None], 1, 30.0)[..., 0], rot)
    with pytest.raises(hd.DataError, match="max_zoom"):
        hd.random_affine(x, 0, max_zoom=1.5)
