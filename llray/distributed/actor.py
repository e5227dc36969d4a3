"""The learner actor: one per run, holds the lifelong model and strategy state.

The driver calls :meth:`LearnerActor.start` once and :meth:`LearnerActor.learn_next`
once per task, so it sees every task finish. After each task the actor checkpoints
model, strategy state, RNG state and R so far (:mod:`llray.distributed.checkpoint`);
an actor created with ``resume=True`` continues from that checkpoint, so the tasks
before it are not trained again. The learning itself is :mod:`llray.learner`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import numpy as np
import ray
import torch

from llray.config import RunSpec
from llray.distributed.checkpoint import FORMAT, CheckpointStore
from llray.distributed.streaming import StreamHandle, get_stream
from llray.experiment import build_run, utc_now
from llray.learner import RunResult

Step = tuple[int, np.ndarray, str]  # (tasks learned so far, newest R row, status)


def pick_device() -> str:
    """``"cuda"`` when Ray gave this worker a GPU *and* torch can use one, else ``"cpu"``.

    Ray's ids are checked first, so a CPU-only actor never asks torch about CUDA; an
    actor given a (fake) GPU on a machine or torch build without CUDA trains on the CPU.
    """
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def set_threads() -> int:
    """``torch.set_num_threads`` from the CPUs Ray assigned to this worker (at least 1)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    return n


def _to_device(obj: Any, device: str) -> Any:
    """Tensors inside nested dicts/lists/tuples moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


@ray.remote
class LearnerActor:
    """Runs one :class:`RunSpec` a task at a time on the device Ray gave it.

    Args:
        spec: the run.
        stream: the task stream's object-store handle (read zero-copy).
        store: where to checkpoint after each task (None: no checkpoints).
        resume: continue from ``store``'s checkpoint of this run when there is one.
    """

    def __init__(
        self, spec: RunSpec, stream: StreamHandle, store: CheckpointStore | None, resume: bool
    ) -> None:
        self.created = time.time()
        self.threads = set_threads()
        self.device = pick_device()
        self.spec = spec
        self.store = store
        self.run = build_run(spec, get_stream(stream), self.device)
        self.started_at: datetime = utc_now()
        self.wall_before = 0.0  # wall seconds of earlier attempts (from the checkpoint)
        state = store.load(spec.run_id) if (resume and store is not None) else None
        if state is not None:
            self._restore(state)
        self.resumed_from = self.run.step
        self.trained = 0  # tasks learned by this actor
        self.t0 = time.perf_counter()

    def _restore(self, state: dict) -> None:
        assert state.get("format") == FORMAT, f"checkpoint format {state.get('format')}"
        assert state["run_id"] == self.spec.run_id, "checkpoint belongs to another run"
        run_state = state["run"]
        if self.device != "cpu":
            run_state = {**run_state, "strategy": _to_device(run_state["strategy"], self.device)}
        self.run.load_state_dict(run_state)
        self.started_at = datetime.fromisoformat(state["started_at"])
        self.wall_before = float(state["wall_s"])

    def _checkpoint(self) -> None:
        self.store.save(self.spec.run_id, {
            "format": FORMAT,
            "run_id": self.spec.run_id,
            "run": self.run.state_dict(),
            "started_at": self.started_at.isoformat(),
            "wall_s": self._wall(),
        })

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def info(self) -> dict[str, Any]:
        """Where and how this actor runs: node, device, threads, the step it resumed from."""
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": self.device,
            "threads": self.threads,
            "resumed_from": self.resumed_from,
            "pid": os.getpid(),
            "cuda_initialized": torch.cuda.is_initialized(),
            "created": self.created,  # unix time
        }

    def start(self) -> tuple[Step, dict[str, Any]]:
        """R row 0 (or, resumed, the last row of the checkpoint) and :meth:`info`."""
        self.run.start()
        return (self.run.step, self.run.R[self.run.step], self.run.status), self.info()

    def learn_next(self) -> Step:
        """Learn the next task of the order, checkpoint, return (step, R row, status)."""
        row = self.run.learn_next()
        self.trained += 1
        if self.store is not None and self.run.status == "ok":
            self._checkpoint()
        return self.run.step, row, self.run.status

    def result(self) -> tuple[RunResult, datetime, datetime]:
        """The finished run's result with its start and finish times (UTC)."""
        return self.run.result(self._wall()), self.started_at, utc_now()
