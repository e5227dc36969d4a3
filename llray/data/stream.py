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

import torch
from torch import Tensor

from llray.data.augment import Augmentation

SCENARIOS = ("task", "domain", "class")


@dataclass(frozen=True, eq=False)
class Task:
    """One task: id, name, train and test tensors, the global classes it contains."""

    id: int
    name: str
    x_train: Tensor  # [N, *input_shape] float32, or uint8 pixels (llray.data.pixels)
    y_train: Tensor  # [N] int64, global class ids
    x_test: Tensor  # [M, *input_shape] same dtype as x_train
    y_test: Tensor  # [M] int64
    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        assert self.x_train.shape[0] == self.y_train.shape[0], "train x/y length differ"
        assert self.x_test.shape[0] == self.y_test.shape[0], "test x/y length differ"
        assert self.y_train.dtype == torch.long and self.y_test.dtype == torch.long

    def to(self, device: torch.device | str) -> "Task":
        """The same task with its tensors on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
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

    def to(self, device: torch.device | str) -> "TaskStream":
        return replace(self, tasks=tuple(t.to(device) for t in self.tasks))
