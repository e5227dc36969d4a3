"""Scenarios: cut one train/test split into tasks, then label them for the scenario.

Building a stream happens in two steps:

1. A *kind* makes the tasks' inputs (:func:`permuted_parts`, :func:`rotated_parts`,
   :func:`split_parts`, :func:`table_parts`), each a :class:`Part` with the dataset's
   own labels.
2. :func:`assemble` labels the parts for the scenario (van de Ven & Tolias 2019) with
   one rule for every kind:

   - ``"task"`` and ``"class"``: no two tasks share a label id. Tasks whose classes
     are disjoint (split) keep the dataset's class ids; tasks whose classes overlap
     (permuted, rotated) get their own block: ``y + t * C``, so the model has ``T * C``
     outputs and task t's classes are ``t*C .. t*C + C-1``. In task-IL the logits are
     then masked to a task's classes (``TaskStream.class_mask``), i.e. one head per task.
   - ``"domain"``: tasks share one label space. Overlapping tasks keep their labels;
     disjoint tasks (split) are relabelled by position within the task (split digits
     with 2 classes per task becomes "first or second class of the pair", 2 outputs).

Example:
    >>> import torch
    >>> x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> parts = permuted_parts(Split(x, y, x, y), 2, np.random.default_rng(0))
    >>> s = assemble(parts, "task", 3, "permuted-toy", (4,))
    >>> s.num_classes, s.tasks[1].classes, s.tasks[1].y_train.tolist()
    (6, (3, 4, 5), [3, 4, 5, 3, 4, 5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llray.data.datasets import RNG_SUBSAMPLE, RNG_VAL, rng, split_indices
from llray.data.pixels import to_float
from llray.data.stream import Task, TaskStream


@dataclass(frozen=True, eq=False)
class Split:
    """A dataset's train and test tensors (and task ids for tables that have them)."""

    x_train: Tensor  # [N, *shape] float32, or uint8 pixels
    y_train: Tensor  # [N] int64
    x_test: Tensor  # [M, *shape] float32, or uint8 pixels
    y_test: Tensor  # [M] int64
    task_train: Tensor | None = None  # [N] int64 task ids
    task_test: Tensor | None = None  # [M] int64


@dataclass(frozen=True, eq=False)
class Part:
    """One task before the scenario sets its labels: the dataset's own class ids."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def classes(self) -> tuple[int, ...]:
        """The class ids present in this task (train or test)."""
        return tuple(torch.unique(torch.cat([self.y_train, self.y_test])).tolist())


# -- kinds: the tasks' inputs ---------------------------------------------------------------
def permute_features(x: Tensor, perm: Tensor) -> Tensor:
    """``x [N, *shape]`` with its flattened features reordered by ``perm``; same shape."""
    return x.flatten(1)[:, perm].reshape(x.shape)


def permuted_parts(
    data: Split,
    num_tasks: int,
    generator: np.random.Generator,
    keep: Sequence[Tensor | None] | None = None,
) -> list[Part]:
    """Permuted tasks: task 0 sees the inputs as they are, task t >= 1 a fixed random
    permutation of the input features drawn from ``generator``; the labels are the same.
    ``keep[t]`` (see :func:`subsample_index`) picks task t's training rows before the
    permutation is applied, which saves permuting rows that would be dropped.
    """
    d = math.prod(data.x_train.shape[1:])
    parts = []
    for t in range(num_tasks):
        perm = torch.arange(d) if t == 0 else torch.from_numpy(generator.permutation(d))
        x, y = _rows(data, keep, t)
        parts.append(Part(f"permuted-{t}", permute_features(x, perm), y,
                          permute_features(data.x_test, perm), data.y_test))
    return parts


def _rows(data: Split, keep: Sequence[Tensor | None] | None, t: int) -> tuple[Tensor, Tensor]:
    """Task t's training inputs and labels: all of them, or the rows ``keep[t]``."""
    rows = keep[t] if keep is not None else None
    if rows is None:
        return data.x_train, data.y_train
    return data.x_train[rows], data.y_train[rows]


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Rotate square images ``x [N, C, H, W]`` counterclockwise by ``degrees`` about
    their centre (bilinear, zeros outside), as ``torch.rot90(x, 1, (-2, -1))`` does for 90.
    uint8 pixels are turned into floats in ``[0, 1]`` first (the result is float32).

    Example:
        >>> img = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> torch.allclose(rotate_images(img, 90), torch.rot90(img, 1, (-2, -1)))
        True
    """
    assert x.dim() == 4 and x.shape[-1] == x.shape[-2], "expected square images [N, C, H, W]"
    x = to_float(x)
    a = math.radians(degrees)
    # rounded so that multiples of 90 degrees hit pixel centres exactly
    c, s = round(math.cos(a), 12), round(math.sin(a), 12)
    # output pixel p samples the input at R(-a) p, in normalised (x right, y down) coords
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def task_angles(num_tasks: int, max_angle: float) -> tuple[float, ...]:
    """Evenly spaced angles from 0 to ``max_angle`` degrees, both included.

    Example:
        >>> task_angles(3, 180.0)
        (0.0, 90.0, 180.0)
    """
    return tuple(float(a) for a in np.linspace(0.0, max_angle, num_tasks))


def rotated_parts(
    data: Split, angles: Sequence[float], keep: Sequence[Tensor | None] | None = None
) -> list[Part]:
    """Rotated tasks: task t sees every image rotated by ``angles[t]`` degrees;
    ``keep[t]`` picks its training rows before rotating (see :func:`permuted_parts`)."""
    parts = []
    for t, a in enumerate(angles):
        x, y = _rows(data, keep, t)
        parts.append(Part(f"rotated-{a:g}", rotate_images(x, a), y,
                          rotate_images(data.x_test, a), data.y_test))
    return parts


def class_groups(
    classes: Sequence[int], num_tasks: int, generator: np.random.Generator | None = None
) -> list[tuple[int, ...]]:
    """Partition ``classes`` into ``num_tasks`` consecutive groups whose sizes differ by at
    most one; the classes are shuffled first when a ``generator`` is given.

    Example:
        >>> class_groups(range(10), 5)
        [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        >>> class_groups(range(10), 3)
        [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    """
    order = np.asarray(list(classes))
    if generator is not None:
        order = generator.permutation(order)
    return [tuple(sorted(int(c) for c in g)) for g in np.array_split(order, num_tasks)]


def split_parts(data: Split, groups: Sequence[Sequence[int]]) -> list[Part]:
    """Split tasks: task t holds the samples of the classes ``groups[t]`` only."""
    parts = []
    for g in groups:
        keep = torch.tensor(list(g), dtype=torch.long)
        tr, te = torch.isin(data.y_train, keep), torch.isin(data.y_test, keep)
        name = f"split-[{','.join(str(c) for c in g)}]"
        parts.append(Part(name, data.x_train[tr], data.y_train[tr],
                          data.x_test[te], data.y_test[te]))
    return parts


def table_parts(data: Split, task_values: Sequence) -> list[Part]:
    """Tasks given by a table's task column: task t holds the rows with task id t."""
    assert data.task_train is not None and data.task_test is not None
    parts = []
    for t, value in enumerate(task_values):
        tr, te = data.task_train == t, data.task_test == t
        parts.append(Part(f"task-{value}", data.x_train[tr], data.y_train[tr],
                          data.x_test[te], data.y_test[te]))
    return parts


def subsample_index(n: int, max_train: int | None, seed: int, task: int) -> Tensor | None:
    """Sorted indices of the at most ``max_train`` of ``n`` training rows that task
    ``task`` keeps, drawn with ``seed``; ``None`` when it keeps all of them.

    Example:
        >>> subsample_index(10, 3, 0, 0).tolist() == subsample_index(10, 3, 0, 0).tolist()
        True
        >>> subsample_index(10, 20, 0, 0) is None
        True
    """
    if max_train is None or n <= max_train:
        return None
    pick = rng(seed, RNG_SUBSAMPLE, task).permutation(n)[:max_train]
    return torch.from_numpy(np.sort(pick))


def subsample(parts: Sequence[Part], max_train: int | None, seed: int) -> list[Part]:
    """Keep at most ``max_train`` training samples per task, drawn with ``seed``."""
    out = []
    for t, p in enumerate(parts):
        keep = subsample_index(len(p.y_train), max_train, seed, t)
        if keep is not None:
            p = replace(p, x_train=p.x_train[keep], y_train=p.y_train[keep])
        out.append(p)
    return out


def carve_validation(stream: TaskStream, fraction: float, seed: int) -> TaskStream:
    """Each task's training data split into train and validation, stratified by label.

    Every label of a task gives ``round(n · fraction)`` of its ``n`` training rows to
    the validation split (at least one when it has two rows or more, none when it has
    one), drawn with ``seed``, so the split is a pure function of the stream's config;
    tasks built from the same training rows (permuted, rotated) hold out the same rows.
    ``fraction`` 0 leaves the training data whole (no validation).

    Example:
        >>> from llray.data import StreamConfig, make_stream
        >>> s = make_stream(StreamConfig(kind="split", num_tasks=5, val_fraction=0.0))
        >>> v = carve_validation(s, 0.1, 0)
        >>> n = len(s.tasks[0].y_train)
        >>> len(v.tasks[0].y_train) + len(v.tasks[0].y_val) == n, len(v.tasks[0].y_val)
        (True, 27)
    """
    if fraction == 0:
        return stream
    tasks = []
    for t in stream.tasks:
        train, val = split_indices(t.y_train.cpu().numpy(), fraction, rng(seed, RNG_VAL))
        train, val = torch.from_numpy(train), torch.from_numpy(val)
        tasks.append(replace(t, x_train=t.x_train[train], y_train=t.y_train[train],
                             x_val=t.x_train[val], y_val=t.y_train[val]))
    return replace(stream, tasks=tuple(tasks))


# -- scenarios: the tasks' labels -----------------------------------------------------------
def disjoint(class_sets: Sequence[Sequence[int]]) -> bool:
    """True when no class id appears in two of the sets."""
    flat = [c for s in class_sets for c in s]
    return len(flat) == len(set(flat))


def assemble(
    parts: Sequence[Part],
    scenario: str,
    num_classes: int,
    benchmark: str,
    input_shape: tuple[int, ...],
) -> TaskStream:
    """Label ``parts`` for ``scenario`` (see the module docstring) and build the stream.

    Args:
        parts: the tasks, in task-id order, with the dataset's class ids.
        scenario: ``"task"``, ``"domain"`` or ``"class"``.
        num_classes: ``C``, the number of the dataset's classes.
        benchmark: the stream's name, e.g. ``"permuted-digits"``.
        input_shape: the shape of one input.
    """
    sets = [p.classes() for p in parts]
    if scenario == "domain" and disjoint(sets):
        maps = [{c: i for i, c in enumerate(s)} for s in sets]
        width = max(len(s) for s in sets)
    elif scenario != "domain" and not disjoint(sets):
        maps = [{c: c + t * num_classes for c in range(num_classes)} for t in range(len(parts))]
        width = len(parts) * num_classes
    else:
        maps, width = [None] * len(parts), num_classes
    tasks = tuple(_task(t, p, m) for t, (p, m) in enumerate(zip(parts, maps)))
    return TaskStream(tasks, scenario, benchmark, tuple(input_shape), width)


def _task(t: int, p: Part, mapping: dict[int, int] | None) -> Task:
    y_train, y_test = p.y_train, p.y_test
    if mapping is not None:
        lut = torch.full((max(mapping) + 1,), -1, dtype=torch.long)
        lut[list(mapping)] = torch.tensor(list(mapping.values()), dtype=torch.long)
        y_train, y_test = lut[y_train], lut[y_test]
    classes = tuple(sorted(mapping[c] for c in p.classes())) if mapping else p.classes()
    return Task(t, p.name, p.x_train, y_train, p.x_test, y_test, classes)
