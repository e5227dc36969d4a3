"""Image datasets in the stream config: rotated MNIST, split CIFAR-10/100, on tiny files
written here in the real formats (IDX for MNIST, python pickles for CIFAR)."""

import pickle

import numpy as np
import pytest
import torch

from llray.config import parse_config
from llray.config_base import from_dict
from llray.data import StreamConfig, make_stream
from llray.data import scenarios as sc
from llray.data.pixels import to_float
from llray.errors import ConfigError
from llray.experiment import execute
from llray.learner import run_stream
from llray.models import ConvNet, ModelConfig, build_model
from llray.strategies import TrainConfig, make_strategy
from tests.test_vision import write_idx


def mnist_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable 28x28 digits: class c is a bright 6x6 square at its own place, on noise."""
    x = rng.integers(0, 40, (len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + (c // 5) * 12, 1 + (c % 5) * 5
        x[i, r : r + 6, col : col + 6] = 255
    return x


def write_fake_mnist(folder, n_train=200, n_test=50, seed=0):
    """The four MNIST IDX files (torchvision's ``MNIST/raw`` layout, gzipped)."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    data = {
        "train-images-idx3-ubyte": mnist_images(ytr, rng),
        "train-labels-idx1-ubyte": ytr,
        "t10k-images-idx3-ubyte": mnist_images(yte, rng),
        "t10k-labels-idx1-ubyte": yte,
    }
    for name, arr in data.items():
        write_idx(raw / name, arr, gz=True)
    return data


def write_fake_cifar(folder, classes, per_class_train, per_class_test, seed=0):
    """CIFAR-10 (5 data batches + test batch) or CIFAR-100 (train + test) pickles."""
    rng = np.random.default_rng(seed)

    def batch(per_class, key):
        y = np.repeat(np.arange(classes), per_class)
        rng.shuffle(y)
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        x[np.arange(len(y)), y] = 255  # a class marker pixel in the red channel
        return {"batch_label": "fake", key: y.tolist(), "data": x}

    if classes == 10:
        sub, key = folder / "cifar-10-batches-py", "labels"
        names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        batches = [batch(per_class_train, key) for _ in range(5)] + [batch(per_class_test, key)]
    else:
        sub, key = folder / "cifar-100-python", "fine_labels"
        names = ["train", "test"]
        batches = [batch(per_class_train, key), batch(per_class_test, key)]
    sub.mkdir(parents=True)
    for name, b in zip(names, batches):
        with open(sub / name, "wb") as f:
            pickle.dump(b, f, protocol=2)
    return dict(zip(names, batches))


@pytest.fixture
def mnist_root(tmp_path):
    return tmp_path, write_fake_mnist(tmp_path)


@pytest.fixture
def cifar100_root(tmp_path):
    return tmp_path, write_fake_cifar(tmp_path, 100, per_class_train=3, per_class_test=1)


# -- rotated MNIST ------------------------------------------------------------------------------
def test_rotated_mnist_domain_il_uses_the_official_split_and_rotates(mnist_root):
    root, data = mnist_root
    s = make_stream(StreamConfig(dataset="mnist", path=str(root), kind="rotated",
                                 num_tasks=3, max_angle=180.0, val_fraction=0.0))
    assert (s.benchmark, s.scenario, s.input_shape, s.num_classes) == (
        "rotated-mnist", "domain", (1, 28, 28), 10)
    assert [t.name for t in s.tasks] == ["rotated-0", "rotated-90", "rotated-180"]
    x0 = torch.from_numpy(data["t10k-images-idx3-ubyte"] / np.float32(255))[:, None]
    for t in s.tasks:
        assert t.x_train.shape == (200, 1, 28, 28) and t.x_test.shape == (50, 1, 28, 28)
        assert t.y_test.tolist() == data["t10k-labels-idx1-ubyte"].tolist()  # own test set
        assert t.y_train.tolist() == data["train-labels-idx1-ubyte"].tolist()
        assert t.classes == tuple(range(10))
    torch.testing.assert_close(s.tasks[0].x_test, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.tasks[1].x_test, torch.rot90(x0, 1, (-2, -1)), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(s.tasks[2].x_test, torch.flip(x0, (-2, -1)), atol=1e-5, rtol=0)


def test_rotated_mnist_task_il_gives_each_task_its_label_block(mnist_root):
    root, data = mnist_root
    s = make_stream(StreamConfig(dataset="mnist", path=str(root), kind="rotated",
                                 scenario="task", num_tasks=3, angles=(0.0, 30.0, 60.0),
                                 val_fraction=0.0))
    assert s.scenario == "task" and s.num_classes == 30
    assert s.tasks[2].classes == tuple(range(20, 30))
    y = torch.from_numpy(data["train-labels-idx1-ubyte"].astype(np.int64))
    assert torch.equal(s.tasks[2].y_train, y + 20)
    assert s.class_mask()[1].nonzero().flatten().tolist() == list(range(10, 20))


@pytest.mark.parametrize("kind", ["rotated", "permuted"])
def test_subsampling_before_the_transform_keeps_the_same_rows(mnist_root, kind):
    root, _ = mnist_root
    kw = dict(dataset="mnist", path=str(root), kind=kind, num_tasks=3, seed=4, val_fraction=0.0)
    small = make_stream(StreamConfig(**kw, max_train_per_task=30))
    full = make_stream(StreamConfig(**kw))
    parts = [sc.Part(t.name, t.x_train, t.y_train, t.x_test, t.y_test) for t in full.tasks]
    expected = sc.subsample(parts, 30, seed=4)  # transform everything, then subsample
    for t, p in zip(small.tasks, expected):
        assert t.x_train.shape[0] == 30
        assert torch.equal(t.x_train, p.x_train) and torch.equal(t.y_train, p.y_train)
    assert not torch.equal(small.tasks[0].y_train, small.tasks[1].y_train)  # per-task draws


def test_fashionmnist_reads_its_own_folder(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "MNIST").rename(tmp_path / "FashionMNIST")
    s = make_stream(StreamConfig(dataset="fashionmnist", path=str(tmp_path), kind="split",
                                 num_tasks=5))
    assert s.benchmark == "split-fashionmnist" and s.tasks[4].classes == (8, 9)


# -- split CIFAR ----------------------------------------------------------------------------------
def test_split_cifar100_task_il_ten_tasks(cifar100_root):
    root, batches = cifar100_root
    s = make_stream(StreamConfig(dataset="cifar100", path=str(root), kind="split",
                                 scenario="task", num_tasks=10, val_fraction=0.0))
    assert (s.benchmark, s.scenario, s.input_shape, s.num_classes, s.num_tasks) == (
        "split-cifar100", "task", (3, 32, 32), 100, 10)
    for t in s.tasks:
        assert t.classes == tuple(range(10 * t.id, 10 * t.id + 10))
        assert t.x_train.shape == (30, 3, 32, 32) and t.x_test.shape == (10, 3, 32, 32)
        assert set(t.y_train.tolist()) == set(t.classes) == set(t.y_test.tolist())
    mask = s.class_mask()
    assert mask.shape == (10, 100) and mask.sum(1).tolist() == [10] * 10
    # the pixels are the file's, channel-major, kept uint8; the model sees them in [0, 1]
    b = batches["train"]
    first = s.tasks[b["fine_labels"][0] // 10].x_train[0]
    assert first.dtype == torch.uint8
    np.testing.assert_array_equal(first.numpy().ravel(), b["data"][0])
    scaled = to_float(first).numpy().ravel()
    np.testing.assert_array_equal(scaled, b["data"][0] / np.float32(255))


def test_split_cifar100_class_il_twenty_tasks_and_shuffled(cifar100_root):
    root, _ = cifar100_root
    kw = dict(dataset="cifar100", path=str(root), kind="split", num_tasks=20)
    s = make_stream(StreamConfig(**kw))
    assert s.scenario == "class" and s.num_classes == 100
    assert [t.classes for t in s.tasks[:2]] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert sum(len(t.y_test) for t in s.tasks) == 100  # the whole official test set
    shuffled = make_stream(StreamConfig(**kw, shuffle_classes=True, seed=1))
    groups = [t.classes for t in shuffled.tasks]
    assert sorted(c for g in groups for c in g) == list(range(100))
    assert groups[0] != (0, 1, 2, 3, 4)


def test_split_cifar10_class_il(tmp_path):
    write_fake_cifar(tmp_path, 10, per_class_train=2, per_class_test=3)
    s = make_stream(StreamConfig(dataset="cifar10", path=str(tmp_path), kind="split",
                                 num_tasks=5))
    assert s.benchmark == "split-cifar10" and s.num_classes == 10
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    # 2 per class in each of 5 batches = 20 per task: 18 train + 2 validation (1 per class)
    assert [(len(t.y_train), len(t.y_val)) for t in s.tasks] == [(18, 2)] * 5
    assert [len(t.y_test) for t in s.tasks] == [6] * 5


# -- models on image streams ----------------------------------------------------------------------
def test_mlp_flattens_and_convnet_sees_images(cifar100_root):
    root, _ = cifar100_root
    s = make_stream(StreamConfig(dataset="cifar100", path=str(root), kind="split",
                                 num_tasks=10))
    mlp = build_model(ModelConfig(hidden=(16,)), s.input_shape, s.num_classes, seed=0)
    assert mlp.features[1].in_features == 3 * 32 * 32
    assert mlp(s.tasks[0].x_test).shape == (10, 100)
    conv = build_model(ModelConfig(name="convnet", channels=(4, 8)), s.input_shape,
                       s.num_classes, seed=0)
    assert isinstance(conv, ConvNet) and conv.features[0].in_channels == 3
    assert conv.head.in_features == 8 * 8 * 8 and conv(s.tasks[0].x_test).shape == (10, 100)


def test_convnet_learns_rotated_mnist_with_run_stream(mnist_root):
    root, _ = mnist_root
    s = make_stream(StreamConfig(dataset="mnist", path=str(root), kind="rotated",
                                 num_tasks=2, angles=(0.0, 90.0)))
    model = build_model(ModelConfig(name="convnet", channels=(8, 16)), s.input_shape,
                        s.num_classes, seed=0)
    train = TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=0.003)
    res = run_stream(s, model, make_strategy("naive"), train, seed=0)
    assert res.status == "ok" and res.R.shape == (3, 2)
    assert res.R[1, 0] > 0.6  # learned task 0 (chance is 0.1) in one epoch of 200 images
    assert res.R[2, 1] > 0.6


def test_config_runs_split_cifar10_class_il_with_the_convnet(tmp_path):
    write_fake_cifar(tmp_path, 10, per_class_train=2, per_class_test=1)
    cfg = parse_config({
        "experiment": "cifar",
        "stream": {"dataset": "cifar10", "path": str(tmp_path), "kind": "split",
                   "scenario": "class", "num_tasks": 5},
        "model": {"name": "convnet", "channels": [4, 8]},
        "train": {"epochs": 1, "batch_size": 16},
        "strategies": ["naive", {"name": "replay", "buffer_size": 20}],
    })
    stream = make_stream(cfg.stream)
    for spec in cfg.runs():
        res = execute(spec, stream)
        assert res.status == "ok" and res.R.shape == (6, 5)
        assert np.isfinite(res.R).all()
        assert res.n_test.tolist() == [2] * 5


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"dataset": "mnist"}, "stream.path", ["stream.path", "never downloaded"]),
        ({"dataset": "cifar100", "kind": "split"}, "stream.path", ["stream.path"]),
        ({"dataset": "digits", "path": "data"}, "stream.path", ["only used", "cifar100"]),
        ({"dataset": "mnist1d", "path": "data"}, "stream.path", ["only used"]),
        ({"dataset": "cifar10", "path": "d", "test_fraction": 0.5}, "stream.test_fraction",
         ["own test set"]),
        ({"dataset": "cifar100", "path": "d", "kind": "split", "num_tasks": 101},
         "stream.num_tasks", ["at most 100"]),
        ({"dataset": "mnist", "path": "d", "input_shape": [784]}, "stream.input_shape",
         ["parquet"]),
        ({"dataset": "svhn", "path": "d"}, "stream.dataset", ["cifar10", "fashionmnist"]),
    ],
)
def test_image_stream_config_errors_name_the_field(data, field, words):
    with pytest.raises(ConfigError) as err:
        from_dict(StreamConfig, data, "stream")
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_missing_files_stop_make_stream_with_the_files_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_stream(StreamConfig(dataset="cifar100", path=str(tmp_path), kind="split"))
    assert err.value.field == "stream.path"
    assert "train, test" in str(err.value) and "cifar-100-python" in str(err.value)


def test_labels_outside_the_dataset_are_an_error(tmp_path):
    write_fake_cifar(tmp_path, 10, per_class_train=1, per_class_test=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "rb") as f:
        b = pickle.load(f)
    b["labels"][0] = 12
    with open(path, "wb") as f:
        pickle.dump(b, f)
    with pytest.raises(ConfigError, match="labels must be 0..9") as err:
        make_stream(StreamConfig(dataset="cifar10", path=str(tmp_path), kind="split"))
    assert err.value.field == "stream.path"
