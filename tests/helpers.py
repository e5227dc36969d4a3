"""Small builders shared by several test modules: streams, checkpoint round trips."""

import io

import torch

from llray.data import StreamConfig, TaskStream, make_stream


def split_digits(scenario: str, num_tasks: int = 5, seed: int = 0) -> TaskStream:
    """Split digits in ``scenario``: 10 classes over ``num_tasks`` tasks (2 each for 5)."""
    s = make_stream(StreamConfig(dataset="digits", kind="split", scenario=scenario,
                                 num_tasks=num_tasks, seed=seed))
    assert all(len(t.classes) == 10 // num_tasks for t in s.tasks)
    return s


def roundtrip(state: dict) -> dict:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a
    checkpoint file would take it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
