"""The dataset formats users bring: Fashion-MNIST and other IDX sets, CIFAR-10/100 pickle
batches and folders of PNG/JPEG images. Every test writes small files in the official format
itself (nothing is downloaded) and checks values, shapes, names and errors against them."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hamjax import data as hd

# ------------------------------------------------------------------------------------------
# IDX sets


def _write_idx_set(root: Path, labels=(10, 10), size=(5, 3), prefix="", channels=None, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shape = size if channels is None else (*size, channels)
    arrays = {
        "train_images": rng.integers(0, 256, (12, *shape), dtype=np.uint8),
        "train_labels": rng.integers(0, labels[0], 12, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (4, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, labels[1], 4, dtype=np.uint8),
    }
    arrays["train_labels"][0] = labels[0] - 1  # the largest label occurs
    for key, a in arrays.items():
        hd.write_idx(root / f"{prefix}{hd.MNIST_FILES[key]}.gz", a)
    return arrays


def test_fashion_mnist_values_and_class_names(tmp_path):
    arrays = _write_idx_set(tmp_path)
    ds = hd.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10 and ds.image_shape == (5, 3, 1)
    assert ds.class_names == hd.FASHION_MNIST_CLASSES
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.label_name(7) == "Sneaker"
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["test_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    same = hd.load_dataset("Fashion-MNIST", tmp_path, limit_train=3)
    assert same.num_train == 3 and same.class_names == ds.class_names
    np.testing.assert_array_equal(same.x_train, ds.x_train[:3])
    # MNIST reads the same files: one reader, its own names
    assert hd.load_mnist(tmp_path).class_names == tuple("0123456789")


def test_idx_set_prefixed_names_inferred_classes_and_colour(tmp_path):
    # EMNIST-style names and labels 0..25: the class count comes from the labels
    arrays = _write_idx_set(tmp_path / "letters", labels=(26, 26), prefix="emnist-letters-")
    ds = hd.load_dataset("idx", tmp_path / "letters")
    assert ds.name == "idx" and ds.num_classes == 26 and ds.class_names is None
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.label_name(25) == "25"
    named = hd.load_idx_dataset(tmp_path / "letters", class_names=[chr(65 + k) for k in range(26)],
                                name="letters")
    assert named.name == "letters" and named.label_name(25) == "Z"
    with pytest.raises(hd.DataError, match=r"train-labels-idx1-ubyte\.gz: labels must lie in "
                                           r"0\.\.9; found 25"):
        hd.load_idx_dataset(tmp_path / "letters", num_classes=10)
    # colour IDX images (n, H, W, 3)
    colour = _write_idx_set(tmp_path / "rgb", channels=3)
    ds = hd.load_idx_dataset(tmp_path / "rgb")
    assert ds.image_shape == (5, 3, 3)
    np.testing.assert_allclose(ds.x_train, colour["train_images"] / 255.0, rtol=1e-6)
    # two files end in the same standard name: which one is meant is unclear
    _write_idx_set(tmp_path / "letters", labels=(26, 26), prefix="emnist-digits-")
    with pytest.raises(hd.DataError, match=r"2 files end in train-images-idx3-ubyte: "
                                           r"emnist-digits-.*emnist-letters-"):
        hd.load_idx_dataset(tmp_path / "letters")


def test_idx_set_errors_name_the_file(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(hd.DataFileNotFoundError, match=r"Fashion-MNIST file missing in .*: "
                                                       r"expected t10k-labels-idx1-ubyte or"):
        hd.load_fashion_mnist(tmp_path)
    _write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(hd.DataError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        hd.load_dataset("idx", tmp_path)
    hd.write_idx(path, np.zeros((12, 5, 3, 2), np.uint8))  # two channels: not an image
    with pytest.raises(hd.DataError, match=r"train-images-idx3-ubyte\.gz: images of shape "
                                           r"\(12, 5, 3, 2\)"):
        hd.load_idx_dataset(tmp_path)


# ------------------------------------------------------------------------------------------
# CIFAR


def _pickle(path: Path, obj) -> None:
    # protocol 2, as the official files (written by Python 2) are
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _planes(n: int, rng) -> np.ndarray:
    """``n`` CIFAR rows ``(n, 3072)``: red plane, green plane, blue plane."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _expected_nhwc(rows: np.ndarray) -> np.ndarray:
    """The NHWC images of CIFAR rows, built pixel by pixel from the format's definition:
    value (i, h, w, c) is byte c·1024 + h·32 + w of row i."""
    n = len(rows)
    out = np.empty((n, 32, 32, 3), np.float32)
    for c in range(3):
        for h in range(32):
            out[:, h, :, c] = rows[:, c * 1024 + h * 32: c * 1024 + h * 32 + 32] / 255.0
    return out


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def _write_cifar10(root: Path, per_batch=3, n_test=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in hd.CIFAR10_FILES[:6]:
        n = n_test if name == "test_batch" else per_batch
        rows = _planes(n, rng)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels,
                                b"data": rows, b"filenames": [b"x.png"] * n})
        written[name] = (rows, labels)
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch,
                                      b"label_names": [s.encode() for s in CIFAR10_NAMES],
                                      b"num_vis": 3072})
    return written


def test_cifar10_values_channel_order_and_names(tmp_path):
    written = _write_cifar10(tmp_path)
    ds = hd.load_cifar10(tmp_path)  # the parent of cifar-10-batches-py
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.class_names == tuple(CIFAR10_NAMES)
    train_rows = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    train_labels = sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    np.testing.assert_allclose(ds.x_train, _expected_nhwc(train_rows), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, train_labels)
    np.testing.assert_allclose(ds.x_test, _expected_nhwc(written["test_batch"][0]), rtol=1e-6)
    # the folder itself works as well, and limits keep the first examples
    inner = hd.load_dataset("cifar10", tmp_path / "cifar-10-batches-py", limit_train=4,
                            limit_test=1)
    np.testing.assert_array_equal(inner.x_train, ds.x_train[:4])
    assert inner.num_test == 1


def test_cifar_a_red_pixel_is_red(tmp_path):
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0 * 1024 + 5 * 32 + 7] = 255  # red plane, row 5, column 7
    row[0, 2 * 1024 + 0 * 32 + 31] = 128  # blue plane, row 0, column 31
    _pickle(folder / "test_batch", {b"labels": [3], b"data": row})
    x = hd.load_cifar10(folder).x_test[0]
    np.testing.assert_array_equal(x[5, 7], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(x[0, 31], [0.0, 0.0, 128 / 255], rtol=1e-6)
    assert np.count_nonzero(x) == 2


def test_cifar10_missing_truncated_and_wrong_files(tmp_path):
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").rename(tmp_path / "moved")
    with pytest.raises(hd.DataFileNotFoundError,
                       match=r"cifar-10-batches-py/data_batch_3 not found"):
        hd.load_cifar10(tmp_path)
    (tmp_path / "moved").rename(folder / "data_batch_3")
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(hd.DataError, match=r"data_batch_2: not a readable CIFAR batch "
                                           r"\(truncated or corrupt\?\)"):
        hd.load_cifar10(folder)
    _pickle(folder / "data_batch_2", {b"labels": [1, 2], b"data": np.zeros((2, 1024), np.uint8)})
    with pytest.raises(hd.DataError, match=r"data_batch_2: b'data' is uint8 of shape \(2, 1024\); "
                                           r"expected uint8 of shape \(n, 3072\)"):
        hd.load_cifar10(folder)
    _pickle(folder / "data_batch_2", {b"labels": [1, 12], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(hd.DataError, match=r"data_batch_2: b'labels' must lie in 0\.\.9"):
        hd.load_cifar10(folder)
    _pickle(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(hd.DataError, match=r"data_batch_2: no key b'labels'"):
        hd.load_cifar10(folder)
    # a folder without the archive's folder or files names the file it expected
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(hd.DataFileNotFoundError,
                       match=r"empty/cifar-10-batches-py/data_batch_1 not found.*extract it "
                             r"first"):
        hd.load_cifar10(empty)
    with pytest.raises(hd.DataFileNotFoundError, match="does not exist"):
        hd.load_cifar10(tmp_path / "nowhere")


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    _pickle(tmp_path / "cifar-10-batches-py" / "batches.meta",
            {b"label_names": _Payload(str(marker))})
    with pytest.raises(hd.DataError, match=r"batches\.meta: .*refusing to load it"):
        hd.load_cifar10(tmp_path)
    assert not marker.exists()


class _HugeArray:
    """Pickles as numpy's own ``_reconstruct(ndarray, shape, dtype)`` with a shape of 100 GB:
    only allowed constructors, a few bytes of file."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (10**11,), b"b")


def test_cifar_refuses_a_pickle_declaring_a_huge_array_or_ragged_labels(tmp_path):
    """A batch whose pickle asks numpy's allowed constructor for an array of 100 GB is refused
    before it is allocated; labels that are a ragged list are refused before NumPy sees them."""
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    _pickle(folder / "data_batch_1", {b"labels": [0], b"data": _HugeArray()})
    with pytest.raises(hd.DataError, match=r"data_batch_1: .*declares an array of shape "
                                           r"\(100000000000,\).*refusing to allocate"):
        hd.load_cifar10(tmp_path)
    rows = _planes(2, np.random.default_rng(0))
    _pickle(folder / "data_batch_1", {b"labels": [[1, 2], [3]], b"data": rows})
    with pytest.raises(hd.DataError, match=r"b'labels' is a list of 2 entries of list; expected "
                                           r"2 integer labels"):
        hd.load_cifar10(tmp_path)


def _write_cifar100(root: Path, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", 6), ("test", 3)):
        rows = _planes(n, rng)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        _pickle(folder / name, {b"filenames": [b"a.png"] * n, b"batch_label": b"x",
                                b"fine_labels": fine, b"coarse_labels": coarse, b"data": rows})
        written[name] = (rows, fine, coarse)
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                              b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]})
    return written


def test_cifar100_fine_and_coarse(tmp_path):
    written = _write_cifar100(tmp_path)
    fine = hd.load_cifar100(tmp_path)
    assert fine.name == "cifar100" and fine.num_classes == 100
    assert fine.class_names[42] == "fine42"
    np.testing.assert_array_equal(fine.y_train, written["train"][1])
    np.testing.assert_allclose(fine.x_test, _expected_nhwc(written["test"][0]), rtol=1e-6)
    coarse = hd.load_dataset("cifar100-coarse", tmp_path / "cifar-100-python")
    assert coarse.name == "cifar100-coarse" and coarse.num_classes == 20
    assert coarse.class_names[3] == "coarse3"
    np.testing.assert_array_equal(coarse.y_test, written["test"][2])
    np.testing.assert_array_equal(coarse.x_train, fine.x_train)
    with pytest.raises(hd.DataError, match="label_kind must be 'fine'"):
        hd.load_cifar100(tmp_path, label_kind="superclass")
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(hd.DataFileNotFoundError, match=r"cifar-100-python/meta not found"):
        hd.load_cifar100(tmp_path)


# ------------------------------------------------------------------------------------------
# Image folders


def _save(path: Path, array: np.ndarray, fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _image_folder(root: Path, per_class=(4, 3, 5), size=(6, 5), seed=0) -> dict:
    """Colour PNGs in three class folders, written out of alphabetical order."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in zip(("zebra", "ant", "moth"), per_class, strict=True):
        written[name] = []
        for i in range(n):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            _save(root / name / f"{i:02d}.png", a)
            written[name].append(a)
    (root / "ant" / "notes.txt").write_text("not an image")  # skipped
    return written


def test_image_folder_values_classes_and_split(tmp_path):
    written = _image_folder(tmp_path / "bugs")
    ds = hd.load_image_folder(tmp_path / "bugs", test_fraction=0.25, seed=3)
    assert ds.name == "bugs" and ds.class_names == ("ant", "moth", "zebra")
    assert ds.num_classes == 3 and ds.image_shape == (6, 5, 3)
    assert ds.num_train + ds.num_test == 12 and ds.num_test == 3
    # the split is split_indices on the labels in sorted-file order
    y = np.repeat([0, 1, 2], [3, 5, 4])
    train, test = hd.split_indices(y, 0.25, 3)
    every = np.concatenate([np.stack(written[c]) for c in ("ant", "moth", "zebra")]) / 255.0
    np.testing.assert_allclose(ds.x_train, every[train], rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, every[test], rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, y[test])
    assert set(ds.y_test) == {0, 1, 2}  # stratified: every class in the test part
    again = hd.load_dataset("folder", tmp_path / "bugs", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    other = hd.load_image_folder(tmp_path / "bugs", test_fraction=0.25, seed=4)
    assert not np.array_equal(other.y_train, ds.y_train) or not np.array_equal(
        other.x_train, ds.x_train)


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A PNG of a few dozen bytes whose header declares ``width × height`` pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 60_000])  # above Pillow's limit, and above twice it
def test_an_image_declaring_a_huge_size_is_one_line(tmp_path, side):
    """A tiny file whose header declares 144 or 3600 megapixels: refused before its pixels
    are decoded, with a DataError naming the file and its declared size."""
    _image_folder(tmp_path / "bugs")
    _png_declaring(tmp_path / "bugs" / "ant" / "zz.png", side, side)
    with pytest.raises(hd.DataError, match=r"zz\.png: declares .*pixels.*hostile"):
        hd.load_image_folder(tmp_path / "bugs", test_fraction=0.25, seed=0)


def test_image_folder_red_pixel_modes_and_jpeg(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[1, 2] = (255, 0, 0)
    _save(tmp_path / "c" / "a" / "red.png", red)
    _save(tmp_path / "c" / "b" / "grey.png", np.full((4, 4, 3), 90, np.uint8))
    ds = hd.load_image_folder(tmp_path / "c", test_fraction=0.5)
    x = np.concatenate([ds.x_train, ds.x_test])[np.argsort(np.concatenate([ds.y_train,
                                                                         ds.y_test]))]
    np.testing.assert_array_equal(x[0, 1, 2], [1.0, 0.0, 0.0])
    assert np.count_nonzero(x[0]) == 1
    grey = hd.load_image_folder(tmp_path / "c", mode="L", test_fraction=0.5)
    assert grey.image_shape == (4, 4, 1)
    # only grey pixels: the default reads one channel, exactly the stored values
    for name, fmt in (("g1.png", "PNG"), ("g2.jpg", "JPEG")):
        _save(tmp_path / "g" / name[:2] / name, np.full((8, 8), 200, np.uint8), fmt)
    g = hd.load_image_folder(tmp_path / "g", test_fraction=0.5)
    assert g.image_shape == (8, 8, 1)
    values = np.concatenate([g.x_train, g.x_test]).ravel() * 255
    np.testing.assert_allclose(values, 200, atol=1.5)  # JPEG may round a grey level
    with pytest.raises(hd.DataError, match="mode must be 'RGB', 'L' or None"):
        hd.load_image_folder(tmp_path / "g", mode="CMYK")


def test_image_folder_sizes_resize_and_train_test_layout(tmp_path):
    _save(tmp_path / "s" / "a" / "big.png", np.full((10, 8, 3), (0, 255, 0), np.uint8))
    _save(tmp_path / "s" / "b" / "small.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(hd.DataError, match=r"a/big\.png is 10×8 \(H×W\) but .*b/small\.png is "
                                           r"4×4; pass size=\(H, W\)"):
        hd.load_image_folder(tmp_path / "s")
    ds = hd.load_image_folder(tmp_path / "s", size=(5, 3), test_fraction=0.5)
    assert ds.image_shape == (5, 3, 3)
    green = (ds.x_train if ds.y_train[0] == 0 else ds.x_test)[0]
    np.testing.assert_allclose(green, np.broadcast_to([0.0, 1.0, 0.0], (5, 3, 3)))
    with pytest.raises(hd.DataError, match="size must be"):
        hd.load_image_folder(tmp_path / "s", size=(0, 3))
    # given train/ and test/ folders are used as they are
    for part, n in (("train", 3), ("test", 1)):
        for c in ("x", "y"):
            for i in range(n):
                _save(tmp_path / "tt" / part / c / f"{i}.png", np.full((3, 3, 3), 10 * i,
                                                                       np.uint8))
    ds = hd.load_image_folder(tmp_path / "tt")
    assert ds.num_train == 6 and ds.num_test == 2 and ds.class_names == ("x", "y")
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [0, 1])
    assert ds.image_shape == (3, 3, 1)  # grey pixels only
    (tmp_path / "tt" / "test").rename(tmp_path / "tt" / "val")
    with pytest.raises(hd.DataFileNotFoundError, match=r"tt/test not found: .*tt/train is there"):
        hd.load_image_folder(tmp_path / "tt")


def test_image_folder_errors_name_the_file(tmp_path):
    _image_folder(tmp_path / "f")
    bad = tmp_path / "f" / "moth" / "02.png"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(hd.DataError, match=r"moth/02\.png: cannot read it as an image"):
        hd.load_image_folder(tmp_path / "f")
    bad.write_bytes(b"not a png at all")
    with pytest.raises(hd.DataError, match=r"moth/02\.png: cannot read it as an image"):
        hd.load_image_folder(tmp_path / "f")
    bad.unlink()
    for p in (tmp_path / "f" / "moth").iterdir():
        p.unlink()
    with pytest.raises(hd.DataError, match=r"class folder .*moth holds no images"):
        hd.load_image_folder(tmp_path / "f")
    _save(tmp_path / "loose" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(hd.DataFileNotFoundError, match=r"loose holds no class folders \(it "
                                                       r"holds images such as a\.png\)"):
        hd.load_image_folder(tmp_path / "loose")
    with pytest.raises(hd.DataFileNotFoundError, match="image folder directory .* does not exist"):
        hd.load_image_folder(tmp_path / "nowhere")


def test_dataset_class_names_are_checked():
    x = np.zeros((4, 2, 2), np.uint8)
    ds = hd.from_arrays(x, [0, 1, 0, 1], x, [0, 1, 1, 0], class_names=["no", "yes"])
    assert ds.class_names == ("no", "yes") and ds.label_name(1) == "yes"
    assert ds.flat().class_names == ("no", "yes")
    # a class without examples still counts when it is named
    assert hd.from_arrays(x, [0, 1, 0, 1], x, [0, 1, 1, 0],
                          class_names=["a", "b", "c"]).num_classes == 3
    with pytest.raises(hd.DataError, match="3 class names for 2 classes"):
        hd.from_arrays(x, [0, 1, 0, 1], x, [0, 1, 1, 0], num_classes=2,
                       class_names=["a", "b", "c"])
    with pytest.raises(hd.DataError, match="num_classes=1 but a label is 1"):
        hd.from_arrays(x, [0, 1, 0, 1], x, [0, 1, 1, 0], class_names=["a"])
    with pytest.raises(hd.DataError, match=r"label 2 is not in \[0, 2\)"):
        ds.label_name(2)


# ------------------------------------------------------------------------------------------
# Colour images through the command line


def _colourful(run: Path, name: str) -> float:
    """The fraction of a picture's pixels whose red, green and blue differ visibly."""
    import matplotlib.pyplot as plt

    img = plt.imread(run / name)[..., :3]
    return float(np.mean(np.ptp(img, axis=-1) > 0.2))


def _cli(argv, capsys) -> str:
    from hamjax import cli

    capsys.readouterr()
    assert cli.main(argv) == 0
    return capsys.readouterr().out


TINY_RUN = ["--epochs", "1", "--batch-size", "8", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dense", "conv"])
def test_cli_trains_a_classifier_on_cifar_colour_images(tmp_path, capsys, model):
    _write_cifar10(tmp_path / "data", per_batch=4, n_test=6)
    out = tmp_path / "run"
    printed = _cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                    "--model", model, "--hidden", "4", *TINY_RUN, "--out", str(out)], capsys)
    assert "classify on cifar10 (20 train / 6 test)" in printed and "test accuracy" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["steps"] == 2
    assert set(metrics["pictures"]) == {"weights.png", "predictions.png", "energy.png"}
    for name in metrics["pictures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the random colour test images are drawn in colour (grey, only a wrong label's red
    # caption would be)
    assert _colourful(out, "predictions.png") > 0.1
    if model == "conv":
        printed = _cli(["eval", str(out)], capsys)  # the run reloads its data and model
        assert f"test accuracy: {metrics['test_accuracy']:.4f}" in printed


@pytest.mark.slow
def test_cli_restores_colour_images_from_an_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((220, 30, 30), (30, 200, 40), (40, 60, 230))):
        for i in range(5):
            # mixed sizes: --image-size brings them to one
            size = (10, 12) if i % 2 else (20, 24)
            a = np.clip(np.array(colour) + rng.normal(0, 20, (*size, 3)), 0, 255)
            _save(tmp_path / "imgs" / f"class{c}" / f"{i}.png", a.astype(np.uint8))
    out = tmp_path / "run"
    printed = _cli(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "imgs"),
                    "--image-size", "10,12", "--task", "denoise", "--hidden", "6", *TINY_RUN,
                    "--out", str(out)], capsys)
    assert "denoise on imgs (12 train / 3 test)" in printed and "test PSNR" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_psnr"] > metrics["test_psnr_input"]  # the memories restore colour
    assert metrics["config"]["image_size"] == [10, 12]
    assert _colourful(out, "reconstructions.png") > 0.05  # colour images shown as colour
    assert _colourful(out, "weights.png") > 0.05  # the memories are colour images


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse such names")
def test_class_folders_named_in_bytes_that_are_not_utf8(tmp_path, capsys):
    """Class folders named ``caf\\xe9`` and ``na\\xefve`` (Latin-1, not UTF-8): loaded with their
    names readable (U+FFFD for the bytes UTF-8 cannot read), and a command-line run goes
    through to its pictures and metrics."""
    root = os.fsencode(tmp_path / "latin")
    rng = np.random.default_rng(0)
    for name in (b"caf\xe9", b"na\xefve"):
        os.makedirs(os.path.join(root, name))
        for i in range(8):
            _save(Path(os.fsdecode(os.path.join(root, name, b"%d.png" % i))),
                  rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    ds = hd.load_image_folder(tmp_path / "latin", test_fraction=0.25, seed=0)
    assert ds.class_names == ("caf\ufffd", "na\ufffdve")
    json.dumps(ds.class_names)  # printable and serialisable
    out = tmp_path / "run"
    printed = _cli(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "latin"),
                    "--hidden", "8", *TINY_RUN, "--out", str(out)], capsys)
    assert "test accuracy" in printed
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] >= 0
    assert any(p.suffix == ".png" for p in out.iterdir())


def test_cli_data_flags_are_checked_before_training(tmp_path, capsys):
    from hamjax import cli

    def fails(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli.main(argv + ["--out", str(tmp_path / "r")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "r").exists()
        return err

    assert "--dataset cifar10 needs --data-dir DIR" in fails(["train", "--dataset", "cifar10"])
    assert "reads no --data-dir" in fails(["train", "--data-dir", str(tmp_path)])
    err = fails(["train", "--dataset", "cifar100", "--data-dir", str(tmp_path)])
    assert f"{tmp_path}/cifar-100-python/train not found" in err
    _write_cifar10(tmp_path / "c")
    assert "--image-size resizes the images of --dataset folder" in fails(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "c"), "--image-size",
         "16,16"])
    path = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(path.read_bytes()[:100])
    assert "data_batch_4: not a readable CIFAR batch" in fails(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "c")])
    assert "expected H,W" in fails(["train", "--image-size", "3,x"])


def test_cli_dataset_choices_are_the_registry_and_conv_takes_colour():
    from hamjax.cli import _build, _parser

    assert _parser.DATASETS == tuple(hd.DATASETS)
    assert _build._conv_shape((32, 32, 3)) == (5, 2, 1)
    assert _build._conv_shape((28, 28, 1)) == (5, 2, 1)
    assert _build._conv_shape((8, 8, 1)) == (3, 1, 2)
    assert _build._conv_shape((64, 64, 3)) == (5, 2, 2)
    # further stages: 3x3, stride 2 down to maps 7 wide, no pooling; 28 -> 12 -> 5 -> 3
    assert _build._conv_stages((28, 28, 1), 3) == ([5, 3, 3], [2, 2, 1], 1)
    assert _build._conv_stages((8, 8, 1), 1) == ([3], [1], 2)
    with pytest.raises(_parser.UsageError, match="conv stage 4 would convolve a 2x2 map"):
        _build._conv_stages((8, 8, 1), 4)
    x = np.zeros((4, 32, 32, 3), np.uint8)
    data = hd.from_arrays(x, [0, 1, 0, 1], x, [0, 1, 1, 0])
    net = _build._model({"model": "conv", "seed": 0, "hidden": [4]}, data)
    assert net.synapses["conv"].kernel.shape == (5, 5, 3, 4)
    assert net.layers["features"].shape == (14, 14, 4)
    # --hidden 4,6: a second stage, 3x3 at stride 2, tanh, fed by the first
    net = _build._model({"model": "conv", "seed": 0, "hidden": [4, 6]}, data)
    assert net.synapses["conv2"].kernel.shape == (3, 3, 4, 6)
    assert net.layers["features2"].shape == (6, 6, 6)
    assert net.edges["conv2"] == ("features", "features2")
    assert net.edges["readout"] == ("features2", "label")
    assert type(net.layers["features2"].lagrangian).__name__ == "Tanh"


def test_corruptions_and_tasks_on_colour_images():
    """NHWC with three channels: a hidden pixel hides all its channels, flat batches too, and
    the memory tasks prepare colour batches of their own shape."""
    from hamjax import train as T

    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (3, 6, 4, 3)).astype(np.float32)
    out, mask = hd.corrupt(x, "mask_bottom", 0.5)
    assert mask.shape == x.shape and mask[:, 3:].all() and not mask[:, :3].any()
    np.testing.assert_array_equal(out, np.where(mask, 0.0, x))
    flat, flat_mask = hd.mask_region(x.reshape(3, -1), "left_half", image_shape=(6, 4, 3))
    np.testing.assert_array_equal(flat_mask.reshape(x.shape)[:, :, :2], True)
    np.testing.assert_array_equal(flat_mask.reshape(x.shape)[:, :, 2:], False)
    assert flat.shape == (3, 72)
    hidden = hd.mask_random(x, 0.25, 0).mask
    assert hidden.shape == x.shape and hidden.reshape(3, -1).sum(1).tolist() == [18, 18, 18]
    batch = T.Completion(level=0.5).prepare(x, None, np.random.default_rng(0), train=True)
    assert batch["input"].shape == x.shape and batch["frozen"].shape == x.shape
    np.testing.assert_array_equal(batch["frozen"], ~mask)
    noisy = T.Denoising(level=0.3).prepare(x, None, np.random.default_rng(0), train=True)
    assert noisy["input"].shape == x.shape and not np.array_equal(noisy["input"], x)


def test_image_folder_scales_16_bit_grey_and_refuses_32_bit(tmp_path):
    wide = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    for c in ("a", "b"):
        (tmp_path / "w" / c).mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / "w" / c / "x.png")
    assert Image.open(tmp_path / "w" / "a" / "x.png").mode.startswith("I;16")
    ds = hd.load_image_folder(tmp_path / "w", test_fraction=0.5)
    assert ds.image_shape == (2, 2, 1)
    np.testing.assert_allclose(ds.x_train[0, ..., 0] * 255, [[0, 100], [255, 7]], atol=1e-4)
    (tmp_path / "f" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f" / "a" / "x.tiff")
    (tmp_path / "f" / "a" / "x.tiff").rename(tmp_path / "f" / "a" / "x.png")
    with pytest.raises(hd.DataError, match=r"a/x\.png: pixels of mode F"):
        hd.load_image_folder(tmp_path / "f")
