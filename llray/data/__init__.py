"""Datasets and scenarios -> :class:`TaskStream`.

Example:
    >>> s = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=2))
    >>> s.num_tasks, s.scenario, s.input_shape
    (2, 'domain', (1, 8, 8))
"""

from llray.data.stream import SCENARIOS, Task, TaskStream
from llray.data.streams import DATASETS, KINDS, StreamConfig, load_arrays, make_stream

__all__ = [
    "DATASETS",
    "KINDS",
    "SCENARIOS",
    "StreamConfig",
    "Task",
    "TaskStream",
    "load_arrays",
    "make_stream",
]
