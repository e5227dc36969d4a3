"""Task and TaskStream: the unit of data every other layer consumes.

A :class:`Task` holds preloaded train/test tensors (no DataLoader) and the global
class ids it contains. A :class:`TaskStream` is an ordered tuple of tasks plus the
scenario (van de Ven & Tolias 2019) that says how they are to be learned:

- ``"task"``: task-incremental, the task id is known; logits are masked to the
  task's classes for training and testing alike (one head per task). Label spaces of
  different tasks are disjoint (permuted/rotated task-IL streams offset the labels).
- ``"domain"``: domain-incremental, same labels, shifted inputs.
- ``"class"``: class-incremental, new classes, no task id.

Example:
    >>> import torch
    >>> t = Task(0, "t0", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
    ...          torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), (0,))
    >>> TaskStream((t,), "domain", "toy", (2,), 1).num_tasks
    1
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llray.data.augment import Augmentation

if TYPE_CHECKING:
    from llray.data.streaming import StreamedData

SCENARIOS = ("task", "domain", "class")


@dataclass(frozen=True, eq=False)
class Task:
    """One task: id, name, train, test and validation tensors, its global classes.

    The validation split is held out of the task's training data (see
    ``StreamConfig.val_fraction``): hyperparameters and orders are selected on it, never
    on the test split. A task built without one has an empty validation split.
    """

    id: int
    name: str
    x_train: Tensor  # [N, *input_shape] float32, or uint8 pixels (llray.data.pixels)
    y_train: Tensor  # [N] int64, global class ids
    x_test: Tensor  # [M, *input_shape] same dtype as x_train
    y_test: Tensor  # [M] int64
    classes: tuple[int, ...]
    x_val: Tensor | None = None  # [V, *input_shape] float32; None: empty
    y_val: Tensor | None = None  # [V] int64

    def __post_init__(self) -> None:
        assert self.x_train.shape[0] == self.y_train.shape[0], "train x/y length differ"
        assert self.x_test.shape[0] == self.y_test.shape[0], "test x/y length differ"
        assert self.y_train.dtype == torch.long and self.y_test.dtype == torch.long
        assert (self.x_val is None) == (self.y_val is None), "give both x_val and y_val"
        if self.x_val is None:
            object.__setattr__(self, "x_val", self.x_train[:0])
            object.__setattr__(self, "y_val", self.y_train[:0])
        assert self.x_val.shape[0] == self.y_val.shape[0], "validation x/y length differ"
        assert self.y_val.dtype == torch.long

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the ``"test"`` or ``"val"`` split."""
        if name == "test":
            return self.x_test, self.y_test
        if name == "val":
            return self.x_val, self.y_val
        raise ValueError(f"split must be 'test' or 'val', got {name!r}")

    def to(self, device: torch.device | str) -> "Task":
        """The same task with its tensors on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


@dataclass(frozen=True, eq=False)
class TaskStream:
    """An ordered collection of tasks learned under one scenario.

    ``tasks[i].id == i`` always; an *order* is a permutation of these ids.
    """

    tasks: tuple[Task, ...]
    scenario: str
    benchmark: str
    input_shape: tuple[int, ...]
    num_classes: int  # width of the model's output layer
    augment: Augmentation | None = None  # applied to training batches (llray.data.augment)
    # set when the tasks are read batch by batch from Parquet shards (llray.data.streaming):
    # the tasks' tensors are then empty and the learner reads through ``streamed``
    streamed: "StreamedData | None" = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        for i, t in enumerate(self.tasks):
            assert t.id == i, f"task at position {i} has id {t.id}"

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def class_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """Bool matrix [T, num_classes]: row t marks the classes of task t."""
        mask = torch.zeros(self.num_tasks, self.num_classes, dtype=torch.bool)
        for t in self.tasks:
            mask[t.id, list(t.classes)] = True
        return mask.to(device)

    @property
    def has_val(self) -> bool:
        """True when every task has a non-empty validation split."""
        if self.streamed is not None:
            return self.streamed.layout.has_val
        return all(len(t.y_val) > 0 for t in self.tasks)

    def size(self, task: int, split: str) -> int:
        """Rows of ``task``'s ``split`` (``"train"``, ``"val"`` or ``"test"``), streamed or not."""
        if self.streamed is not None:
            return self.streamed.rows(task, split)
        return len(getattr(self.tasks[task], f"y_{split}"))

    def to(self, device: torch.device | str) -> "TaskStream":
        return replace(self, tasks=tuple(t.to(device) for t in self.tasks))
