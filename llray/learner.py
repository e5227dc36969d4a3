"""``run_stream``: train task by task, evaluate every task after each, fill R.

Plain PyTorch, no Ray. :class:`LifelongRun` exposes the building blocks (one task at a
time, ``state_dict`` for checkpoints) that the Ray actor and the tuner call;
:func:`run_stream` is the whole loop.

``R`` has shape ``[T + 1, T]``: row 0 is the randomly initialised model, row i the model
after the i-th task of the order; column j is the j-th task *of the order* (so the
diagonal ``R[j, j]`` is "just learned"). See :mod:`llray.metrics`. ``R_val`` is the same
matrix on the tasks' validation splits (held out of their training data): searches
select on it, reports show ``R`` (test).

Example:
    >>> from llray.data import make_stream, StreamConfig
    >>> from llray.models import build_model, ModelConfig
    >>> from llray.strategies import make_strategy, TrainConfig
    >>> s = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=2))
    >>> m = build_model(ModelConfig(hidden=(32,)), s.input_shape, s.num_classes, seed=0)
    >>> res = run_stream(s, m, make_strategy("naive"), TrainConfig(), seed=0)
    >>> res.R.shape, res.status
    ((3, 2), 'ok')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from llray import seeding
from llray.data.augment import Augmenter
from llray.data.stream import TaskStream
from llray.data.streaming import check_streamable
from llray.errors import Diverged
from llray.strategies.base import Context, Strategy, TrainConfig

__all__ = ["LifelongRun", "RunResult", "TrainConfig", "check_order", "run_stream"]


def check_order(order: Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """``order`` as a tuple; ValueError unless it is a permutation of ``range(num_tasks)``."""
    order = tuple(int(i) for i in order)
    if sorted(order) != list(range(num_tasks)):
        raise ValueError(
            f"order {list(order)} is not a permutation of the task ids 0..{num_tasks - 1}"
        )
    return order


@dataclass
class RunResult:
    """What one lifelong run produced."""

    R: np.ndarray  # [T+1, T] float64, test accuracy; NaN rows after a divergence
    order: tuple[int, ...]
    status: str  # "ok" | "diverged" | "failed"
    n_test: np.ndarray  # [T] int64, test samples per column (order position)
    wall_s: float
    train_s: float
    samples_trained: int
    task_seconds: list[float] = field(default_factory=list)
    error: str | None = None
    R_val: np.ndarray | None = None  # [T+1, T] validation accuracy; None: no val split
    n_val: np.ndarray | None = None  # [T] int64, validation samples per column

    @property
    def train_samples_per_s(self) -> float:
        return self.samples_trained / self.train_s if self.train_s > 0 else 0.0


class LifelongRun:
    """One lifelong model learning ``stream`` in ``order``, one task per :meth:`learn_next`."""

    def __init__(
        self,
        stream: TaskStream,
        model: nn.Module,
        strategy: Strategy,
        train: TrainConfig,
        order: Sequence[int] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        T = stream.num_tasks
        self.order = check_order(range(T) if order is None else order, T)
        self.device = torch.device(device)
        self.stream = stream.to(self.device)
        self.strategy = strategy
        self.augmenter = Augmenter(stream.augment, seed) if stream.augment else None
        check_streamable(stream, strategy.name)
        self.ctx = Context(
            stream_info=self.stream,
            train=train,
            device=self.device,
            generator=seeding.generator(seed),  # batch order only
            strategy_generator=seeding.generator(seed, seeding.STRATEGY),
            class_mask=self.stream.class_mask(self.device) if stream.scenario == "task" else None,
            augment=self.augmenter,
            reader=stream.streamed.open(self.device) if stream.streamed is not None else None,
        )
        self.model = strategy.setup(model.to(self.device), self.ctx)
        self.R = np.full((T + 1, T), np.nan)
        self.n_test = np.array([self.stream.size(i, "test") for i in self.order])
        self.has_val = self.stream.has_val
        self.R_val = np.full((T + 1, T), np.nan) if self.has_val else None
        self.n_val = np.array([self.stream.size(i, "val") for i in self.order])
        self.step = 0  # tasks learned so far
        self.status = "ok"
        self.error: str | None = None
        self.train_s = 0.0
        self.task_seconds: list[float] = []
        self._evaluated_init = False

    @property
    def done(self) -> bool:
        return self.status != "ok" or self.step == len(self.order)

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> np.ndarray:
        """Accuracy on every task's ``split`` ("test" or "val"), in order positions: one
        row of R (or of R_val)."""
        self.model.eval()
        bs = self.ctx.train.eval_batch_size
        n = self.n_test if split == "test" else self.n_val
        if self.ctx.reader is not None:
            return self._evaluate_streamed(split, bs) / np.maximum(n, 1)
        correct = []
        for tid in self.order:
            x, y = self.stream.tasks[tid].split(split)
            c = torch.zeros((), dtype=torch.long, device=self.device)
            for i in range(0, len(y), bs):
                scores = self.strategy.predict(self.model, x[i : i + bs], tid, self.ctx)
                c += (scores.argmax(1) == y[i : i + bs]).sum()
            correct.append(c)
        return torch.stack(correct).cpu().numpy() / np.maximum(n, 1)

    def _evaluate_streamed(self, split: str, bs: int) -> np.ndarray:
        """Correct predictions per order position, the splits read batch by batch."""
        pos = {tid: k for k, tid in enumerate(self.order)}
        correct = torch.zeros(len(self.order), dtype=torch.long, device=self.device)
        for x, y, tid in self.ctx.reader.ordered_batches(self.order, split, bs):
            scores = self.strategy.predict(self.model, x, tid, self.ctx)
            correct[pos[tid]] += (scores.argmax(1) == y).sum()
        return correct.cpu().numpy()

    def _evaluate_row(self, i: int) -> None:
        """Fill row ``i`` of R (and of R_val when the stream has validation splits)."""
        self.R[i] = self.evaluate("test")
        if self.R_val is not None:
            self.R_val[i] = self.evaluate("val")

    def start(self) -> np.ndarray:
        """Evaluate the randomly initialised model (R row 0); idempotent."""
        if not self._evaluated_init:
            self._evaluate_row(0)
            self._evaluated_init = True
        return self.R[0]

    def learn_next(self) -> np.ndarray:
        """Learn the next task of the order, evaluate all tasks, return the new R row.

        A non-finite loss ends the run with status ``"diverged"`` (row stays NaN).
        """
        assert not self.done, "run is finished"
        self.start()
        task = self.stream.tasks[self.order[self.step]]
        t0 = time.perf_counter()
        try:
            self.model.train()
            self.strategy.before_task(self.model, task, self.ctx)
            self.strategy.train_task(self.model, task, self.ctx)
            self.strategy.after_task(self.model, task, self.ctx)
        except Diverged as e:
            self.status, self.error = "diverged", str(e)
            return self.R[self.step + 1]
        finally:
            self.train_s += time.perf_counter() - t0
        self.ctx.seen.append(task)
        self.step += 1
        self._evaluate_row(self.step)
        self.task_seconds.append(time.perf_counter() - t0)
        return self.R[self.step]

    def result(self, wall_s: float = 0.0) -> RunResult:
        return RunResult(
            R=self.R.copy(),
            order=self.order,
            status=self.status,
            n_test=self.n_test.copy(),
            wall_s=wall_s,
            train_s=self.train_s,
            samples_trained=self.ctx.samples_trained,
            task_seconds=list(self.task_seconds),
            error=self.error,
            R_val=None if self.R_val is None else self.R_val.copy(),
            n_val=None if self.R_val is None else self.n_val.copy(),
        )

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: model, strategy, both RNGs, R so far."""
        return {
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "generator": self.ctx.generator.get_state(),
            "strategy_generator": self.ctx.strategy_generator.get_state(),
            "R": torch.from_numpy(self.R.copy()),
            "R_val": torch.from_numpy(self.R_val.copy()) if self.R_val is not None else None,
            "step": self.step,
            "status": self.status,
            "samples_trained": self.ctx.samples_trained,
            "train_s": self.train_s,
            "task_seconds": list(self.task_seconds),
            "evaluated_init": self._evaluated_init,
            **({"augment": self.augmenter.state_dict()} if self.augmenter else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; ValueError for a checkpoint without the strategy
        generator (written before common random numbers: it cannot resume exactly)."""
        if "strategy_generator" not in state:
            raise ValueError("checkpoint has no 'strategy_generator' state (written by an "
                             "older llray); it cannot resume this run exactly")
        self.strategy.load_state_dict(state["strategy"])
        self.model.load_state_dict(state["model"])
        self.ctx.generator.set_state(state["generator"])
        self.ctx.strategy_generator.set_state(state["strategy_generator"])
        self.R = state["R"].numpy().copy()
        if self.has_val and state.get("R_val") is not None:
            self.R_val = state["R_val"].numpy().copy()
        self.step = int(state["step"])
        self.status = state["status"]
        self.ctx.samples_trained = int(state["samples_trained"])
        self.train_s = float(state["train_s"])
        self.task_seconds = list(state["task_seconds"])
        self._evaluated_init = bool(state["evaluated_init"])
        if self.augmenter is not None:
            self.augmenter.load_state_dict(state["augment"])
        self.ctx.seen = [self.stream.tasks[i] for i in self.order[: self.step]]


def run_stream(
    stream: TaskStream,
    model: nn.Module,
    strategy: Strategy,
    train: TrainConfig,
    order: Sequence[int] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_task: Callable[[int, np.ndarray], None] | None = None,
) -> RunResult:
    """Train ``model`` on ``stream`` task by task with ``strategy``; return R and timings.

    ``on_task(step, row)`` is called after each task (step 1..T) with the new R row.
    """
    t0 = time.perf_counter()
    run = LifelongRun(stream, model, strategy, train, order, seed, device)
    run.start()
    while not run.done:
        row = run.learn_next()
        if on_task is not None and run.status == "ok":
            on_task(run.step, row)
    return run.result(wall_s=time.perf_counter() - t0)
