"""``StreamConfig`` (the ``stream:`` section of a config) and ``make_stream``.

A stream is a pure function of its config: the same config and ``seed`` give the same
tensors on any machine. See ``docs/data.md`` for every field.

Example:
    >>> s = make_stream(StreamConfig(dataset="digits", kind="split", num_tasks=5))
    >>> s.benchmark, s.scenario, s.input_shape, [t.name for t in s.tasks][:2]
    ('split-digits', 'class', (1, 8, 8), ['split-[0,1]', 'split-[2,3]'])

The image datasets are read from a folder the user has (never downloaded), e.g. split
CIFAR-100 in 10 task-IL tasks: ``StreamConfig(dataset="cifar100", path="datasets",
kind="split", scenario="task", num_tasks=10)``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from llray.config_base import require
from llray.data import scenarios as sc
from llray.data.augment import AUGMENTATIONS, Augmentation
from llray.data.folders import (
    CORE50_OBJECTS,
    CORE50_TEST_SESSIONS,
    CORE50_TRAIN_SESSIONS,
    core50_class_groups,
    read_core50,
)
from llray.data.datasets import (
    BUILTIN_CLASSES,
    BUILTIN_SHAPES,
    IMAGE_DATASETS,
    MNIST1D_DEFAULT_SAMPLES,
    RNG_CLASSES,
    RNG_PERMUTE,
    RNG_SPLIT,
    Arrays,
    load_digits,
    load_images,
    load_mnist1d,
    rng,
    split_indices,
    standardize,
)
from llray.data.parquet import load_parquet
from llray.data.shards import discover, load_split
from llray.data.stream import Task, TaskStream
from llray.data.streaming import (
    DEFAULT_INTERLEAVE,
    DEFAULT_SHUFFLE_BUFFER,
    READERS,
    STORAGES,
    StreamedData,
    choose_storage,
)
from llray.errors import ConfigError

DATASETS = ("digits", "mnist1d", *IMAGE_DATASETS, "parquet", "shards")
KINDS = ("permuted", "rotated", "split", "tasks", "ni", "nc")
DEFAULT_SCENARIO = {"permuted": "domain", "rotated": "domain", "split": "class",
                    "ni": "domain", "nc": "class"}
CORE50_KINDS = ("ni", "nc")

# Options that only mean something for one dataset or kind: setting them elsewhere is an
# error rather than silently ignored.
_PARQUET_ONLY = ("task_column", "standardize")
_TABLE_ONLY = ("label_column", "feature_columns", "input_shape")  # parquet and shards
_SHARDS_ONLY = ("shuffle_buffer", "reader", "interleave")
# shards carry their own train/val/test files: options that cut or split tasks do not apply
_NOT_FOR_SHARDS = ("test_fraction", "val_fraction", "max_train_per_task")
_FILE_DATASETS = ("parquet", "shards", *IMAGE_DATASETS)  # read from stream.path
_ONLY_FOR_KIND = {"max_angle": ("rotated",), "angles": ("rotated",),
                  "shuffle_classes": ("split", "nc")}


@dataclass(frozen=True)
class StreamConfig:
    """The ``stream:`` section of a config: which dataset, cut into which tasks.

    Attributes:
        dataset: ``"digits"`` (sklearn 8x8, inputs ``(1, 8, 8)`` in [0, 1]),
            ``"mnist1d"`` (procedural, inputs ``(40,)`` standardized), the image
            datasets ``"mnist"``, ``"fashionmnist"`` (``(1, 28, 28)``), ``"cifar10"``,
            ``"cifar100"`` (``(3, 32, 32)``), ``"tinyimagenet"`` (``(3, 64, 64)``, 200
            classes), ``"core50"`` (``(3, 128, 128)``, 50 objects) from local files (uint8
            pixels, seen by the model in [0, 1]), ``"parquet"``, or ``"shards"`` (Parquet
            files in ``task=<t>/split=<train|val|test>/`` folders, read whole or streamed
            batch by batch: :mod:`llray.data.shards`, :mod:`llray.data.streaming`).
        kind: ``"permuted"``, ``"rotated"`` (square images only), ``"split"`` (classes
            partitioned among tasks), ``"tasks"`` (a parquet table's task column), or for
            core50 only ``"ni"`` (a task per training session) and ``"nc"`` (a task per
            group of objects; 9 tasks: the official 10 then 5 per task).
        scenario: ``"task"``, ``"domain"`` or ``"class"``; default ``"domain"`` for
            permuted/rotated/ni, ``"class"`` for split/nc; required for kind ``"tasks"``.
        num_tasks: number of tasks, at least 2 (kind ``"tasks"``: the table's count).
        test_fraction: share of each class (and task) held out for testing; the image
            datasets use their own test set instead.
        val_fraction: share of each task's training data (per label) held out as its
            validation split, on which ``llray tune`` and ``llray curriculum`` select;
            in ``[0, 1)``, 0 for none. Carved after ``max_train_per_task``.
        seed: seeds the split, permutations, class order, subsampling and mnist1d.
        max_train_per_task: keep at most this many training samples per task.
        num_samples: mnist1d only: sequences generated (default 4000).
        max_angle: rotated only: task angles are evenly spaced from 0 to this (degrees).
        angles: rotated only: explicit angle per task, overrides ``max_angle``.
        shuffle_classes: split and nc only: shuffle the classes (with ``seed``) before
            grouping.
        path: parquet: a ``.parquet`` file or a directory of them; image datasets: the
            folder holding the dataset's files (see :mod:`llray.data.vision`).
        label_column: parquet only: integer class ids.
        task_column: parquet only: task values, read with kind ``"tasks"``.
        feature_columns: parquet only: numeric columns or one list column; default every
            column except the label and task columns.
        input_shape: parquet only: reshape each row's features, e.g. ``[1, 28, 28]``.
        standardize: parquet only: standardize each feature with training statistics.
        augment: augment every training batch on the device: ``crop`` (random crop with
            zero padding) and/or ``flip`` (horizontal, p = 1/2); image streams only. See
            :mod:`llray.data.augment`.
        crop_padding: pixels of zero padding on each side for ``crop`` (default 4).
        storage: ``"memory"`` (every task's tensors in memory and in the object store),
            ``"streaming"`` (dataset ``shards`` only: read batch by batch, see
            :mod:`llray.data.streaming`) or ``"auto"`` (default: streaming for a shards
            stream whose decoded features exceed 4 GiB, memory otherwise).
        shuffle_buffer: shards only: rows per shuffle window when streaming (default 8192).
        interleave: shards only: files read at once when streaming, whose rows each shuffle
            window mixes (default 4).
        reader: shards only: ``"arrow"`` (default: pyarrow reads the shards in the learner's
            process) or ``"ray_data"`` (a Ray Dataset per pass over the data).

    Example:
        >>> StreamConfig(kind="split").scenario_name
        'class'
    """

    dataset: str = "digits"
    kind: Literal["permuted", "rotated", "split", "tasks", "ni", "nc"] = "permuted"
    scenario: Literal["task", "domain", "class"] | None = None
    num_tasks: int = 5
    test_fraction: float = 0.25
    val_fraction: float = 0.1
    seed: int = 0
    max_train_per_task: int | None = None
    num_samples: int | None = None
    max_angle: float = 180.0
    angles: tuple[float, ...] | None = None
    shuffle_classes: bool = False
    path: str | None = None
    label_column: str = "label"
    task_column: str = "task"
    feature_columns: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    standardize: bool = False
    augment: tuple[str, ...] = ()
    crop_padding: int = 4
    storage: Literal["memory", "streaming", "auto"] = "auto"
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    reader: Literal["arrow", "ray_data"] = "arrow"
    interleave: int = DEFAULT_INTERLEAVE

    def __post_init__(self) -> None:
        require(self.dataset in DATASETS, "dataset",
                f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        require(self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        require(self.num_tasks >= 2, "num_tasks", f"needs at least 2 tasks, got {self.num_tasks}")
        require(0.0 < self.test_fraction < 1.0, "test_fraction",
                f"must be in (0, 1), got {self.test_fraction}")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction",
                f"must be in [0, 1) (0: no validation split), got {self.val_fraction}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        self._check_only_for()
        self._check_sizes()
        self._check_kind()
        self._check_augment()
        self._check_storage()

    def _check_augment(self) -> None:
        bad = [a for a in self.augment if a not in AUGMENTATIONS]
        require(not bad, "augment", f"unknown {bad}; allowed: {', '.join(AUGMENTATIONS)}")
        require(len(set(self.augment)) == len(self.augment), "augment",
                f"lists an augmentation twice: {list(self.augment)}")
        require(self.crop_padding >= 0, "crop_padding", f"must be >= 0, got {self.crop_padding}")
        if self.crop_padding != 4:
            require("crop" in self.augment, "crop_padding", "is only used with augment: [crop]")
        if self.augment:
            shape = self.shape
            require(shape is not None and len(shape) == 3, "augment",
                    f"crop and flip need image inputs (C, H, W); dataset {self.dataset!r} gives "
                    f"{shape if shape else 'flat rows (set input_shape: [C, H, W])'}")

    def _check_only_for(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = {k for k, v in defaults.items() if getattr(self, k) != v}
        for name in changed & set(_PARQUET_ONLY):
            require(self.dataset == "parquet", name, "is only used with dataset 'parquet'")
        for name in changed & set(_TABLE_ONLY):
            require(self.dataset in ("parquet", "shards"), name,
                    "is only used with dataset 'parquet' or 'shards'")
        for name in changed & set(_SHARDS_ONLY):
            require(self.dataset == "shards", name, "is only used with dataset 'shards'")
        for name in changed & set(_NOT_FOR_SHARDS):
            require(self.dataset != "shards", name, "does not apply to dataset 'shards' (its "
                    "task=<t>/split=<train|val|test> folders give the splits)")
        if "path" in changed:
            require(self.dataset in _FILE_DATASETS, "path",
                    f"is only used with dataset 'parquet' and the image datasets "
                    f"({', '.join(IMAGE_DATASETS)}); {self.dataset!r} needs no files")
        if "test_fraction" in changed:
            require(self.dataset not in IMAGE_DATASETS, "test_fraction",
                    f"{self.dataset!r} is tested on its own test set; test_fraction is only "
                    "used with digits, mnist1d and parquet")
        for name in changed & set(_ONLY_FOR_KIND):
            kinds = _ONLY_FOR_KIND[name]
            require(self.kind in kinds, name,
                    f"is only used with kind {' or '.join(repr(k) for k in kinds)}")
        if "num_samples" in changed:
            require(self.dataset == "mnist1d", "num_samples", "is only used with dataset 'mnist1d'")
        if self.dataset == "shards":
            self._check_shards()
        if self.dataset == "parquet":
            require(bool(self.path), "path",
                    "dataset 'parquet' needs the path of a file or directory")
        if self.dataset in IMAGE_DATASETS:
            require(bool(self.path), "path",
                    f"dataset {self.dataset!r} is read from local files (never downloaded): "
                    "set stream.path to the folder that holds them")

    def _check_sizes(self) -> None:
        if self.max_train_per_task is not None:
            require(self.max_train_per_task >= 1, "max_train_per_task",
                    f"must be >= 1 or null, got {self.max_train_per_task}")
        if self.num_samples is not None:
            require(self.num_samples >= 20, "num_samples", f"must be >= 20, got {self.num_samples}")
        if self.input_shape is not None:
            require(len(self.input_shape) >= 1 and all(d >= 1 for d in self.input_shape),
                    "input_shape", f"must be positive sizes, got {list(self.input_shape)}")
        if self.angles is not None:
            require(len(self.angles) == self.num_tasks, "angles",
                    f"needs one angle per task ({self.num_tasks}), got {len(self.angles)}")

    def _check_kind(self) -> None:
        if self.kind == "rotated":
            shape = self.shape
            require(shape is not None and len(shape) == 3 and shape[1] == shape[2], "kind",
                    f"'rotated' needs square images (C, H, W); dataset {self.dataset!r} gives "
                    f"{shape if shape else 'flat rows (set input_shape: [C, H, W])'}")
        if self.kind == "split" and self.dataset in BUILTIN_CLASSES:
            c = BUILTIN_CLASSES[self.dataset]
            require(self.num_tasks <= c, "num_tasks",
                    f"'split' {self.dataset} has {c} classes, so at most {c} tasks")
        if self.dataset == "core50" or self.kind in CORE50_KINDS:
            require(self.dataset == "core50" and self.kind in CORE50_KINDS, "kind",
                    "core50 has the kinds 'ni' (new instances: a task per training session) "
                    "and 'nc' (new classes: a task per group of objects), and they are "
                    f"core50's only; got dataset {self.dataset!r} with kind {self.kind!r}")
        if self.kind == "ni":
            n = len(CORE50_TRAIN_SESSIONS)
            require(self.num_tasks == n, "num_tasks",
                    f"'ni' has one task per training session: {n}, got {self.num_tasks}")
        if self.kind == "nc":
            require(self.num_tasks <= CORE50_OBJECTS, "num_tasks",
                    f"'nc' has {CORE50_OBJECTS} objects, so at most {CORE50_OBJECTS} tasks")
        if self.kind == "tasks":
            require(self.dataset in ("parquet", "shards"), "kind",
                    "'tasks' reads a table's task column or shards' task folders: needs "
                    "dataset 'parquet' or 'shards'")
            require(self.scenario is not None, "scenario",
                    "kind 'tasks' needs an explicit scenario: task, domain or class")

    def _check_shards(self) -> None:
        require(bool(self.path), "path", "dataset 'shards' needs the directory (or URI) of the "
                "task=<t>/split=<s>/*.parquet files")
        require(self.kind == "tasks", "kind", "dataset 'shards' has a task per task=<t> folder: "
                "set kind: tasks")
        require(self.input_shape is not None, "input_shape",
                "dataset 'shards' needs the shape of a row's features, e.g. [3, 64, 64]")
        require(self.feature_columns is None or len(self.feature_columns) == 1,
                "feature_columns", "dataset 'shards' reads one feature column (binary pixels or "
                "a list per row)")

    def _check_storage(self) -> None:
        require(self.storage in STORAGES, "storage",
                f"must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        require(self.reader in READERS, "reader",
                f"must be one of {', '.join(READERS)}, got {self.reader!r}")
        require(self.shuffle_buffer >= 1, "shuffle_buffer",
                f"must be >= 1 row, got {self.shuffle_buffer}")
        require(self.interleave >= 1, "interleave",
                f"must be >= 1 file, got {self.interleave}")
        if self.storage == "streaming":
            require(self.dataset == "shards", "storage",
                    f"'streaming' reads Parquet shards lazily: needs dataset 'shards' "
                    f"(dataset {self.dataset!r} is read into memory)")

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The input shape when known before loading (``None``: a flat parquet row)."""
        return BUILTIN_SHAPES.get(self.dataset, self.input_shape)

    @property
    def scenario_name(self) -> str:
        """The scenario, with the kind's default filled in."""
        return self.scenario or DEFAULT_SCENARIO[self.kind]

    @property
    def benchmark(self) -> str:
        """``"{kind}-{dataset}"``, the dataset part being the file or directory name for
        parquet, e.g. ``"permuted-digits"`` or ``"split-mytable"``."""
        name = self.dataset
        if self.dataset in ("parquet", "shards") and self.path:
            base = os.path.basename(os.path.normpath(self.path))
            name = base[: -len(".parquet")] if base.endswith(".parquet") else base
        return f"{self.kind}-{name}"


def make_stream(cfg: StreamConfig) -> TaskStream:
    """Build the :class:`TaskStream` that ``cfg`` describes; deterministic in ``cfg.seed``.

    Errors only the data can reveal (a missing file or column, a task count that does not
    match the table) are :class:`~llray.errors.ConfigError` naming the ``stream`` field.

    Example:
        >>> s = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=2,
        ...                              scenario="task"))
        >>> s.num_classes, s.tasks[1].classes[:3], tuple(s.tasks[0].x_train.shape[1:])
        (20, (10, 11, 12), (1, 8, 8))
    """
    if cfg.dataset == "shards":
        return _shards_stream(cfg)
    if cfg.dataset == "core50":
        parts, num_classes, shape = _core50_parts(cfg), CORE50_OBJECTS, BUILTIN_SHAPES["core50"]
    else:
        arrays = load_arrays(cfg)
        parts = _parts(cfg, arrays, _split(cfg, arrays))
        num_classes, shape = arrays.num_classes, arrays.shape
    parts = sc.subsample(parts, cfg.max_train_per_task, cfg.seed)
    stream = sc.assemble(parts, cfg.scenario_name, num_classes, cfg.benchmark, shape)
    stream = sc.carve_validation(stream, cfg.val_fraction, cfg.seed)
    if cfg.augment:
        stream = dataclasses.replace(stream, augment=Augmentation(cfg.augment, cfg.crop_padding))
    return stream


def load_arrays(cfg: StreamConfig) -> Arrays:
    """The whole dataset ``cfg`` names, before it is split into tasks."""
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset == "mnist1d":
        return load_mnist1d(cfg.num_samples or MNIST1D_DEFAULT_SAMPLES, cfg.seed)
    assert cfg.path is not None
    if cfg.dataset in IMAGE_DATASETS:
        return load_images(cfg.dataset, cfg.path)
    task_column = cfg.task_column if cfg.kind == "tasks" else None
    arrays = load_parquet(cfg.path, cfg.label_column, cfg.feature_columns, task_column,
                          cfg.input_shape, exclude=(cfg.task_column,))
    _check_table(cfg, arrays)
    return arrays


def _check_table(cfg: StreamConfig, a: Arrays) -> None:
    if cfg.kind == "tasks" and len(a.task_values) != cfg.num_tasks:
        raise ConfigError("stream.num_tasks", f"the table's column {cfg.task_column!r} has "
                          f"{len(a.task_values)} tasks, the config says {cfg.num_tasks}")
    n_classes = len(np.unique(a.y))
    if cfg.kind == "split" and n_classes < cfg.num_tasks:
        raise ConfigError("stream.num_tasks", f"'split' needs a class per task; the table has "
                          f"{n_classes} classes for {cfg.num_tasks} tasks")


def _split(cfg: StreamConfig, a: Arrays) -> sc.Split:
    """The dataset's own train/test split, else a stratified one (by label, and by task
    for tables with tasks)."""
    if a.num_train is not None:  # slices: views, no copy of a large image array
        t = torch.from_numpy
        n = a.num_train
        return sc.Split(t(a.x[:n]), t(a.y[:n]), t(a.x[n:]), t(a.y[n:]))
    groups = a.y if a.task is None else a.task * a.num_classes + a.y
    train, test = split_indices(groups, cfg.test_fraction, rng(cfg.seed, RNG_SPLIT))
    x = a.x
    if cfg.dataset == "mnist1d" or cfg.standardize:
        x = standardize(x, train, per_feature=cfg.dataset == "parquet")

    def t(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(v))

    task = (None, None) if a.task is None else (t(a.task[train]), t(a.task[test]))
    return sc.Split(t(x[train]), t(a.y[train]), t(x[test]), t(a.y[test]), *task)


def _parts(cfg: StreamConfig, a: Arrays, data: sc.Split) -> list[sc.Part]:
    # permuted/rotated tasks all start from the whole training set: subsample first
    # (the same rows ``sc.subsample`` would keep), then transform only the rows kept
    n = len(data.y_train)
    keep = [sc.subsample_index(n, cfg.max_train_per_task, cfg.seed, t)
            for t in range(cfg.num_tasks)]
    if cfg.kind == "permuted":
        return sc.permuted_parts(data, cfg.num_tasks, rng(cfg.seed, RNG_PERMUTE), keep)
    if cfg.kind == "rotated":
        angles = cfg.angles or sc.task_angles(cfg.num_tasks, cfg.max_angle)
        return sc.rotated_parts(data, angles, keep)
    if cfg.kind == "split":
        g = rng(cfg.seed, RNG_CLASSES) if cfg.shuffle_classes else None
        return sc.split_parts(data, sc.class_groups(np.unique(a.y).tolist(), cfg.num_tasks, g))
    return sc.table_parts(data, a.task_values)


def _core50_parts(cfg: StreamConfig) -> list[sc.Part]:
    """CORe50's NI or NC tasks (Lomonaco & Maltoni 2017): trained on the training sessions,
    tested on sessions 3, 7, 10. NI: one task per training session (all 50 objects), each
    tested on the whole test set. NC: one task per group of objects
    (:func:`~llray.data.folders.core50_class_groups`), tested on those objects' test images."""
    assert cfg.path is not None
    c = read_core50(cfg.path)
    x, y = torch.from_numpy(c.x), torch.from_numpy(c.obj)
    train = np.isin(c.session, CORE50_TRAIN_SESSIONS)
    test = torch.from_numpy(np.isin(c.session, CORE50_TEST_SESSIONS))
    if cfg.kind == "ni":
        xte, yte = x[test], y[test]  # one test set, shared by every task
        return [sc.Part(f"session-{s}", x[m], y[m], xte, yte)
                for s in CORE50_TRAIN_SESSIONS
                for m in [torch.from_numpy(c.session == s)]]
    order = np.arange(CORE50_OBJECTS)
    if cfg.shuffle_classes:
        order = rng(cfg.seed, RNG_CLASSES).permutation(order)
    parts = []
    for g in core50_class_groups(cfg.num_tasks, order):
        of_g = torch.isin(y, torch.tensor(g))
        tr, te = of_g & torch.from_numpy(train), of_g & test
        parts.append(sc.Part(f"objects-[{','.join(str(o) for o in g)}]", x[tr], y[tr], x[te],
                             y[te]))
    return parts


def _shards_stream(cfg: StreamConfig) -> TaskStream:
    """A shards stream: streamed (tensors left empty, :class:`StreamedData` attached) or,
    when ``storage`` resolves to memory, every split read whole."""
    assert cfg.path is not None and cfg.input_shape is not None
    x_column = cfg.feature_columns[0] if cfg.feature_columns else "x"
    layout = discover(cfg.path, tuple(cfg.input_shape), x_column, cfg.label_column)
    if layout.num_tasks != cfg.num_tasks:
        raise ConfigError("stream.num_tasks", f"{cfg.path!r} has {layout.num_tasks} task folders, "
                                              f"the config says {cfg.num_tasks}")
    streamed = choose_storage(cfg.storage, layout.decoded_bytes) == "streaming"
    tasks = []
    for tid in range(layout.num_tasks):
        if streamed:
            empty = torch.zeros((0, *layout.input_shape), dtype=getattr(torch, layout.dtype))
            arrays = [empty, torch.zeros(0, dtype=torch.long)] * 3
        else:
            arrays = [torch.from_numpy(a) for s in ("train", "test", "val")
                      for a in load_split(layout, tid, s)]
        x_tr, y_tr, x_te, y_te, x_va, y_va = arrays
        tasks.append(Task(tid, f"task-{layout.task_values[tid]}", x_tr, y_tr, x_te, y_te,
                          layout.classes(tid), x_va, y_va))
    augment = Augmentation(cfg.augment, cfg.crop_padding) if cfg.augment else None
    source = (StreamedData(layout, cfg.shuffle_buffer, cfg.reader, cfg.interleave)
              if streamed else None)
    return TaskStream(tuple(tasks), cfg.scenario_name, cfg.benchmark, tuple(cfg.input_shape),
                      layout.num_classes, augment, source)
