"""Datasets and scenarios -> :class:`TaskStream`."""

from llray.data.stream import SCENARIOS, Task, TaskStream
from llray.data.streams import StreamConfig, make_stream

__all__ = ["SCENARIOS", "StreamConfig", "Task", "TaskStream", "make_stream"]
