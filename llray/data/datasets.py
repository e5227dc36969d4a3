"""Raw datasets as NumPy arrays, and the seeded train/test split.

Every loader returns :class:`Arrays`: float32 inputs ``[N, *shape]`` (the image datasets:
their files' uint8 pixels, see :mod:`llray.data.pixels`), int64 labels
``[N]`` and, for tables with a task column, int64 task ids ``[N]``. Nothing is
downloaded: ``digits`` ships with scikit-learn, ``mnist1d`` is generated procedurally
with ``mnist1d.data.make_dataset``, and the image datasets (:func:`load_images`) are
read from a folder the user already has.

Example:
    >>> a = load_digits()
    >>> a.x.shape, a.num_classes, float(a.x.max())
    ((1797, 1, 8, 8), 10, 1.0)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
from dataclasses import dataclass

import numpy as np

from llray.data.folders import read_tinyimagenet
from llray.data.vision import VISION_DATASETS, load_vision_uint8
from llray.errors import ConfigError

# Input shape and class count of each built-in dataset; parquet tables declare their
# shape in the config. The image datasets are read from local files (``stream.path``).
BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (1, 8, 8), "mnist1d": (40,), "mnist": (1, 28, 28), "fashionmnist": (1, 28, 28),
    "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "tinyimagenet": (3, 64, 64),
    "core50": (3, 128, 128),
}
BUILTIN_CLASSES: dict[str, int] = {
    "digits": 10, "mnist1d": 10, "mnist": 10, "fashionmnist": 10, "cifar10": 10, "cifar100": 100,
    "tinyimagenet": 200, "core50": 50,
}
# read from files in a folder (need ``stream.path``), tested on their own test split
IMAGE_DATASETS = (*VISION_DATASETS, "tinyimagenet", "core50")
MNIST1D_DEFAULT_SAMPLES = 4000

# Independent random streams drawn from one seed, one per purpose, so that changing
# e.g. the subsample size never changes the permutations.
RNG_SPLIT, RNG_PERMUTE, RNG_CLASSES, RNG_SUBSAMPLE, RNG_VAL = 0, 1, 2, 3, 4


def rng(seed: int, purpose: int, *more: int) -> np.random.Generator:
    """A NumPy generator owned by the caller, for ``seed`` and one ``purpose``.

    Example:
        >>> int(rng(0, RNG_SPLIT).integers(100)) == int(rng(0, RNG_SPLIT).integers(100))
        True
    """
    return np.random.default_rng([seed, purpose, *more])


@dataclass(frozen=True, eq=False)
class Arrays:
    """A whole dataset in memory, before it is cut into tasks."""

    x: np.ndarray  # [N, *shape] float32, or uint8 pixels for image datasets
    y: np.ndarray  # [N] int64 class ids, 0..num_classes-1
    num_classes: int
    task: np.ndarray | None = None  # [N] int64 task ids 0..T-1, tables only
    task_values: tuple = ()  # the table's task value for each task id
    num_train: int | None = None  # rows [0, num_train) are the dataset's own training set

    def __post_init__(self) -> None:
        assert self.x.dtype in (np.float32, np.uint8) and self.y.dtype == np.int64
        assert len(self.x) == len(self.y)
        assert self.task is None or len(self.task) == len(self.y)
        assert self.num_train is None or 0 < self.num_train < len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(1, 8, 8)``."""
        return tuple(self.x.shape[1:])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached arrays are shared: make accidental writes fail
    return a


@functools.lru_cache(maxsize=1)
def load_digits() -> Arrays:
    """scikit-learn's 8x8 digits: ``x [1797, 1, 8, 8]`` in ``[0, 1]`` (pixels / 16).

    Reads the CSV that ships inside scikit-learn directly (importing scikit-learn takes
    about a second); falls back to ``sklearn.datasets.load_digits`` if it is not there.
    """
    x, y = _digits_csv() or _digits_sklearn()
    x = (x / 16.0).astype(np.float32).reshape(-1, *BUILTIN_SHAPES["digits"])
    return Arrays(_frozen(x), _frozen(y.astype(np.int64)), 10)


def _digits_csv() -> tuple[np.ndarray, np.ndarray] | None:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not os.path.isfile(path):
        return None
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1]


def _digits_sklearn() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    return sk_load_digits(return_X_y=True)


@functools.lru_cache(maxsize=4)
def load_mnist1d(num_samples: int = MNIST1D_DEFAULT_SAMPLES, seed: int = 0) -> Arrays:
    """MNIST-1D generated procedurally (no download): ``x [N, 40]``, 10 classes.

    ``mnist1d.data.make_dataset`` seeds Python's and NumPy's global generators; their
    states are restored afterwards, so loading changes no global state. The values
    returned are the generator's raw sequences; :func:`standardize` them with training
    statistics.
    """
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return Arrays(_frozen(x), _frozen(y), 10)


def load_images(name: str, root: str) -> Arrays:
    """An image dataset from a local folder (see :mod:`llray.data.vision`) with its own
    train/test split: ``x [N_train + N_test, C, H, W]`` uint8 pixels (the models turn
    them into floats in ``[0, 1]`` per batch, :mod:`llray.data.pixels`), the training
    images first (``num_train`` of them).

    Raises:
        ConfigError: on ``stream.path`` when files are missing or malformed.
    """
    if name == "core50":
        raise ConfigError("stream.dataset", "core50 is cut into tasks by session or object "
                          "(stream.kind ni or nc) when the stream is made, not loaded whole")
    if name == "tinyimagenet":
        xtr, ytr, xte, yte = read_tinyimagenet(root)
    else:
        xtr, ytr, xte, yte = load_vision_uint8(name, root)
    x = np.concatenate([xtr, xte])  # uint8: a quarter of the float32 copy's memory
    del xtr, xte
    y = np.concatenate([ytr, yte])
    classes = BUILTIN_CLASSES[name]
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ConfigError("stream.path", f"{name}: labels must be 0..{classes - 1}, the files "
                          f"in {root} hold {int(y.min())}..{int(y.max())}")
    return Arrays(x, y, classes, num_train=len(ytr))


def split_indices(
    groups: np.ndarray, test_fraction: float, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices: each group puts ``round(n * test_fraction)`` rows
    in the test set (at least one in each part when it has two rows or more).

    Args:
        groups: ``[N]`` int group key per row (the label, or task and label).
        test_fraction: share of each group that goes to the test set, in ``(0, 1)``.
        generator: draws which rows go where.

    Returns:
        ``(train, test)`` sorted int64 index arrays that partition ``range(N)``.

    Example:
        >>> tr, te = split_indices(np.zeros(8, dtype=int), 0.25, rng(0, RNG_SPLIT))
        >>> len(tr), len(te)
        (6, 2)
    """
    train, test = [], []
    for g in np.unique(groups):
        rows = generator.permutation(np.flatnonzero(groups == g))
        n = len(rows)
        k = int(round(n * test_fraction))
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        test.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardize(
    x: np.ndarray, train: np.ndarray, per_feature: bool
) -> np.ndarray:
    """``x`` shifted and scaled by the mean and std of its training rows ``x[train]``.

    Args:
        x: ``[N, *shape]`` float32 inputs.
        train: indices of the training rows; only they set the statistics.
        per_feature: one mean/std per input feature, or one scalar for all.

    Example:
        >>> z = standardize(np.array([[0.0], [2.0], [9.0]], np.float32), np.array([0, 1]), False)
        >>> z.ravel().tolist()
        [-1.0, 1.0, 8.0]
    """
    xt = x[train].reshape(len(train), -1)
    mean = xt.mean(axis=0) if per_feature else xt.mean()
    std = xt.std(axis=0) if per_feature else xt.std()
    std = np.where(std > 0, std, 1.0)
    flat = (x.reshape(len(x), -1) - mean) / std
    return flat.reshape(x.shape).astype(np.float32)
