"""From a :class:`~llray.config.RunSpec` to a running :class:`~llray.learner.LifelongRun`.

The one place that turns a run's description into model + strategy + learner, used
alike by the in-process path, the Ray actor and the tuner.

Example:
    >>> from llray.config import parse_config
    >>> spec = parse_config({"strategies": ["naive"],
    ...                      "stream": {"num_tasks": 2}}).runs()[0]
    >>> res = execute(spec)
    >>> res.R.shape
    (3, 2)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import torch

from llray.config import RunSpec
from llray.data import TaskStream, make_stream
from llray.learner import LifelongRun, RunResult
from llray.models import build_model
from llray.strategies import make_strategy


def build_run(
    spec: RunSpec, stream: TaskStream | None = None, device: str | torch.device = "cpu"
) -> LifelongRun:
    """A fresh :class:`LifelongRun` for ``spec`` (model init seeded by ``spec.seed``)."""
    stream = stream if stream is not None else make_stream(spec.stream)
    model = build_model(spec.model, stream.input_shape, stream.num_classes, seed=spec.seed)
    strategy = make_strategy(spec.strategy.name, dict(spec.strategy.params))
    return LifelongRun(stream, model, strategy, spec.train, spec.order, spec.seed, device)


def execute(spec: RunSpec, stream: TaskStream | None = None, device: str = "cpu") -> RunResult:
    """Run ``spec`` to the end in this process (no Ray)."""
    t0 = time.perf_counter()
    run = build_run(spec, stream, device)
    run.start()
    while not run.done:
        run.learn_next()
    return run.result(wall_s=time.perf_counter() - t0)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (results store timestamps)."""
    return datetime.now(timezone.utc)
