"""Image datasets from local files in their standard formats, written here in miniature."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from llray.data.vision import load_vision, rotate_images
from llray.errors import ConfigError

RNG = np.random.default_rng(0)


def write_idx(path, arr, gz=False):
    """An IDX file: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_mnist(folder, n_train=6, n_test=4, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in data.items():
        write_idx(folder / name, arr, gz)
    return data


def cifar_batch(n, label_key, classes):
    return {"batch_label": "fake", label_key: RNG.integers(0, classes, n).tolist(),
            "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8)}


@pytest.mark.parametrize("name,sub,gz", [
    ("mnist", "", False), ("mnist", "MNIST/raw", True), ("fashionmnist", "FashionMNIST/raw", False),
])
def test_idx_datasets(tmp_path, name, sub, gz):
    data = write_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    xtr, ytr, xte, yte = load_vision(name, tmp_path)
    assert xtr.shape == (6, 1, 28, 28) and xte.shape == (4, 1, 28, 28)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    np.testing.assert_array_equal(xtr[:, 0], data["train-images-idx3-ubyte"] / np.float32(255))
    np.testing.assert_array_equal(yte, data["t10k-labels-idx1-ubyte"])
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0


def test_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batches[name] = cifar_batch(3, "labels", 10)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)  # as the original (Python 2) files
    xtr, ytr, xte, yte = load_vision("cifar10", tmp_path)
    assert xtr.shape == (15, 3, 32, 32) and xte.shape == (3, 3, 32, 32)
    first = batches["data_batch_1"]["data"][0]
    # rows are channel-major: 1024 red, 1024 green, 1024 blue values
    np.testing.assert_array_equal(xtr[0, 1].ravel(), first[1024:2048] / np.float32(255))
    assert ytr.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert yte.tolist() == batches["test_batch"]["labels"]


def test_cifar100_fine_labels(tmp_path):
    for name, n in (("train", 5), ("test", 2)):
        b = cifar_batch(n, "fine_labels", 100)
        b["coarse_labels"] = [0] * n
        with open(tmp_path / name, "wb") as f:  # directly in root, bytes keys, protocol 5
            pickle.dump({k.encode(): v for k, v in b.items()}, f, protocol=5)
        if name == "train":
            train = b
    xtr, ytr, xte, yte = load_vision("cifar100", tmp_path)
    assert xtr.shape == (5, 3, 32, 32) and xte.shape == (2, 3, 32, 32)
    assert ytr.tolist() == train["fine_labels"]


def test_missing_files_are_named_with_the_folders_searched(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ConfigError) as e:
        load_vision("mnist", tmp_path)
    msg = str(e.value)
    assert e.value.field == "stream.path"
    for f in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f in msg
    assert "missing train-images" not in msg  # the file that exists is not listed
    assert str(tmp_path / "MNIST" / "raw") in msg
    with pytest.raises(ConfigError, match="data_batch_1.*test_batch.*cifar-10-batches-py"):
        load_vision("cifar10", tmp_path)
    with pytest.raises(ConfigError, match="train, test"):
        load_vision("cifar100", tmp_path)
    with pytest.raises(ConfigError, match="svhn"):
        load_vision("svhn", tmp_path)


def test_bad_files_are_config_errors(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(ConfigError, match="IDX"):
        load_vision("mnist", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    for name in ("train", "test"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": Evil(), "fine_labels": []}, f)
    with pytest.raises(ConfigError, match="not allowed"):
        load_vision("cifar100", tmp_path)


def test_rotate_images():
    x = np.zeros((2, 1, 5, 5), np.float32)
    x[:, 0, 2, 4] = 1.0  # middle of the right edge
    np.testing.assert_allclose(rotate_images(x, 0.0), x, atol=1e-6)
    r90 = rotate_images(x, 90.0)
    assert r90.shape == x.shape and isinstance(r90, np.ndarray)
    assert np.unravel_index(r90[0, 0].argmax(), (5, 5)) == (0, 2)  # counter-clockwise: top
    np.testing.assert_allclose(rotate_images(r90, -90.0), x, atol=1e-5)
    t = torch.from_numpy(x)
    assert isinstance(rotate_images(t, 45.0), torch.Tensor)
    np.testing.assert_allclose(rotate_images(x, 360.0), x, atol=1e-5)
    # non-square images rotate about their centre too (180 degrees = flip both axes)
    y = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    np.testing.assert_allclose(rotate_images(y, 180.0), y[:, :, ::-1, ::-1], atol=1e-5)
