"""The learner actor: holds one lifelong run at a time, model and strategy state.

An actor reads the task stream from the object store once, when it starts, then runs
one :class:`RunSpec` after another: :meth:`LearnerActor.load` builds (or restores) a
run, :meth:`LearnerActor.learn_next` learns one task of its order, :meth:`result` ends
it. Reusing the actor for the sweep's next run saves starting a Python process and
importing torch for every run. After each task the actor checkpoints model, strategy
state, RNG state and R so far (:mod:`llray.distributed.checkpoint`); a run loaded with
``resume=True`` continues from that checkpoint, so the tasks before it are not trained
again; a checkpoint that cannot be read is moved aside (``<run_id>.pt.bad``), reported
in :meth:`LearnerActor.info`, and the run starts over. An actor warms up when it starts
(:func:`warm`: one optimizer step on a tiny model), while Ray is still placing the
sweep's other actors, so a run's first task does not pay for it.
The learning itself is :mod:`llray.learner`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import numpy as np
import ray
import torch

from llray import optimizers
from llray.config import RunSpec
from llray.distributed.checkpoint import CheckpointStore
from llray.distributed.streaming import StreamHandle, get_stream
from llray.experiment import build_run, utc_now
from llray.learner import LifelongRun, RunResult

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


def warm() -> float:
    """Run one optimizer step on a tiny model: what a first task would pay once.

    llray's optimizers do not import ``torch._dynamo`` (:mod:`llray.optimizers`), which
    torch's first optimizer would (about as long as importing torch itself). Returns
    the seconds it took.
    """
    t0 = time.perf_counter()
    model = torch.nn.Linear(2, 2)
    opt = optimizers.Adam(model.parameters())
    model(torch.zeros(1, 2)).sum().backward()
    opt.step()
    return time.perf_counter() - t0


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
    """Runs :class:`RunSpec` s one at a time, a task per call, on the device Ray gave it.

    Args:
        stream: the task stream's object-store handle (read zero-copy, once).
        store: where to checkpoint after each task (None: no checkpoints).
    """

    def __init__(self, stream: StreamHandle, store: CheckpointStore | None) -> None:
        self.threads = set_threads()
        self.device = pick_device()
        self.warm_s = warm()
        self.stream = get_stream(stream)
        self.store = store
        self.spec: RunSpec | None = None
        self.run: LifelongRun | None = None
        self.runs_hosted = 0
        self.checkpoint_problem: str | None = None

    def load(self, spec: RunSpec, resume: bool) -> tuple[Step, dict[str, Any]]:
        """Build ``spec``'s run (from its checkpoint if ``resume`` and there is one).

        Returns R row 0 (or, resumed, the checkpoint's last row) and :meth:`info`.
        """
        self.loaded_at = time.time()
        self.spec, self.run = spec, build_run(spec, self.stream, self.device)
        self.started_at: datetime = utc_now()
        self.wall_before = 0.0  # wall seconds of earlier attempts (from the checkpoint)
        self.checkpoint_problem = None
        if self.store is not None and resume:
            self._resume()
        elif self.store is not None:
            self.store.delete(spec.run_id)  # a fresh start: a retry must not find an old one
        self.resumed_from = self.run.step
        self.t0 = time.perf_counter()
        self.runs_hosted += 1
        self.run.start()
        return (self.run.step, self.run.R[self.run.step], self.run.status), self.info()

    def _resume(self) -> None:
        """Restore the run from its checkpoint; one that cannot be read is moved aside."""
        run_id = self.spec.run_id
        try:
            state = self.store.load_run(run_id)
            if state is not None:
                self._restore(state)
        except Exception as e:  # noqa: BLE001 - any unreadable file: start over, say why
            where = self.store.quarantine(run_id)
            self.checkpoint_problem = (f"checkpoint {self.store.path(run_id)} could not be read "
                                       f"({type(e).__name__}: {e}); moved to {where}, the run "
                                       "starts over")
            self.run = build_run(self.spec, self.stream, self.device)  # undo a partial load
            self.started_at, self.wall_before = utc_now(), 0.0

    def _restore(self, state: dict) -> None:
        run_state = state["run"]
        if self.device != "cpu":
            run_state = {**run_state, "strategy": _to_device(run_state["strategy"], self.device)}
        self.run.load_state_dict(run_state)
        self.started_at = datetime.fromisoformat(state["started_at"])
        self.wall_before = float(state["wall_s"])

    def _checkpoint(self) -> None:
        self.store.save_run(self.spec.run_id, self.run.state_dict(),
                            self.started_at.isoformat(), self._wall())

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
            "loaded_at": self.loaded_at,  # unix time the current run was loaded
            "runs_hosted": self.runs_hosted,  # runs this actor has loaded, this one included
            "warm_s": self.warm_s,  # seconds the start-up warm-up took
            "checkpoint_problem": self.checkpoint_problem,  # an unreadable checkpoint, moved aside
        }

    def learn_next(self) -> Step:
        """Learn the next task of the order, checkpoint, return (step, R row, status).

        The checkpoint is on storage before the step is reported. A call after the run
        has ended (the driver queues the next call before it sees the last result) does
        nothing and reports the run's state.
        """
        if self.run.done:
            return self.run.step, self.run.R[self.run.step], self.run.status
        row = self.run.learn_next()
        if self.store is not None and self.run.status == "ok":
            self._checkpoint()
        return self.run.step, row, self.run.status

    def result(self) -> tuple[RunResult, datetime, datetime]:
        """The current run's result with its start and finish times (UTC); drops the run."""
        out = self.run.result(self._wall()), self.started_at, utc_now()
        self.spec = self.run = None
        return out
