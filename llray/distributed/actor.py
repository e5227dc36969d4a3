"""The learner actor: one per run, holds the lifelong model and strategy state."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from llray.config import RunSpec
from llray.data import TaskStream
from llray.experiment import build_run, utc_now
from llray.learner import RunResult


@ray.remote
class LearnerActor:
    """Runs one :class:`RunSpec` a task at a time, on a GPU when Ray gave it one.

    The driver calls :meth:`learn_next` once per task, so it sees progress (and can
    checkpoint or report) after every task; the learning itself is ``llray.learner``.
    """

    def __init__(self, spec: RunSpec, stream: TaskStream) -> None:
        torch.set_num_threads(max(1, int(spec.resources.num_cpus)))
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.started_at = utc_now()
        self.t0 = time.perf_counter()
        self.run = build_run(spec, stream, device)

    def start(self) -> tuple[int, np.ndarray, str]:
        """Evaluate the random init (R row 0)."""
        return 0, self.run.start(), self.run.status

    def learn_next(self) -> tuple[int, np.ndarray, str]:
        """Learn the next task of the order; return (step, R row, status)."""
        row = self.run.learn_next()
        return self.run.step, row, self.run.status

    def done(self) -> bool:
        return self.run.done

    def result(self) -> tuple[RunResult, object, object]:
        """The finished run's result with its start and finish times (UTC)."""
        return self.run.result(time.perf_counter() - self.t0), self.started_at, utc_now()
