"""A task stream in Ray's object store: each task put once, read zero-copy by every actor.

The driver calls :func:`put_stream` once per sweep; it stores every task's tensors as
NumPy arrays (one object per task) and returns a small :class:`StreamHandle` of object
references plus the stream's metadata. Actors receive the handle, not the data, and
:func:`get_stream` turns it back into a :class:`~llray.data.TaskStream` whose CPU
tensors are views of the shared-memory object store: 50 actors on one node read one copy.

Those tensors are read-only (the object store is shared memory); the learner and the
strategies index them (``x[idx]`` copies) and never write to them in place.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import ray
import torch

from llray.data import Task, TaskStream
from llray.data.augment import Augmentation
from llray.data.streaming import StreamedData

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_VAL = ("x_val", "y_val")  # the validation split travels with the task


@dataclass(frozen=True)
class StreamHandle:
    """References to a stream's tasks in the object store, plus what describes the stream."""

    refs: tuple[ray.ObjectRef, ...]  # one per task, in task-id order
    names: tuple[str, ...]
    classes: tuple[tuple[int, ...], ...]
    scenario: str
    benchmark: str
    input_shape: tuple[int, ...]
    num_classes: int
    nbytes: int  # bytes of all task arrays: one copy of the stream
    augment: Augmentation | None = None  # the stream's training-batch augmentation
    streamed: StreamedData | None = None  # shards read batch by batch (no tensors above)

    @property
    def num_tasks(self) -> int:
        return len(self.refs)


def put_stream(stream: TaskStream) -> StreamHandle:
    """Put every task of ``stream`` into the object store once (as NumPy arrays)."""
    refs, nbytes = [], 0
    for task in stream.tasks:
        arrays = {k: getattr(task, k).detach().cpu().numpy() for k in _ARRAYS + _VAL}
        nbytes += sum(a.nbytes for a in arrays.values())
        refs.append(ray.put(arrays))
    return StreamHandle(
        refs=tuple(refs),
        names=tuple(t.name for t in stream.tasks),
        classes=tuple(tuple(t.classes) for t in stream.tasks),
        scenario=stream.scenario,
        benchmark=stream.benchmark,
        input_shape=tuple(stream.input_shape),
        num_classes=stream.num_classes,
        nbytes=nbytes,
        augment=stream.augment,
        streamed=stream.streamed,
    )


def get_stream(handle: StreamHandle) -> TaskStream:
    """The :class:`TaskStream` behind ``handle``; its tensors share the object store's memory."""
    payloads = ray.get(list(handle.refs))
    tasks = tuple(
        Task(i, handle.names[i], *(_tensor(p[k]) for k in _ARRAYS), handle.classes[i],
             *(_tensor(p[k]) for k in _VAL))
        for i, p in enumerate(payloads)
    )
    return TaskStream(tasks, handle.scenario, handle.benchmark, handle.input_shape,
                      handle.num_classes, handle.augment, handle.streamed)


def _tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; we never write
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)
