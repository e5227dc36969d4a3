"""Experience replay from a reservoir-sampled episodic memory (Chaudhry et al. 2019).

Chaudhry et al. 2019 ("On Tiny Episodic Memories in Continual Learning", arXiv
1902.10486) show that training on each new batch together with a batch drawn from a
small memory of earlier samples (ER) is a strong baseline; the memory is filled by
reservoir sampling (Vitter 1985), see :mod:`llray.strategies._buffer`.

Example config::

    strategies:
      - {name: replay, ratio: 0.5, buffer_size: 200}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._buffer import ReservoirBuffer
from llray.strategies.base import Batch, Context, Strategy, register


@dataclass(frozen=True)
class ReplayConfig:
    """Hyperparameters of :class:`Replay`.

    Attributes:
        ratio: weight of the memory loss, in [0, 1]; the current batch gets ``1 − ratio``.
        buffer_size: memory capacity in samples (>= 1), shared by all tasks.
        mem_batch_size: samples drawn from memory per step; None: the train batch size.
    """

    ratio: float = 0.5
    buffer_size: int = 200
    mem_batch_size: int | None = None

    def __post_init__(self) -> None:
        require(0 <= self.ratio <= 1, "ratio", f"must be in [0, 1], got {self.ratio}")
        require(self.buffer_size >= 1, "buffer_size", f"must be >= 1, got {self.buffer_size}")
        require(
            self.mem_batch_size is None or self.mem_batch_size >= 1,
            "mem_batch_size",
            f"must be >= 1 or null (the train batch size), got {self.mem_batch_size}",
        )


def _task_ids(t: int | Tensor, n: int, device: torch.device) -> Tensor:
    """``[n]`` per-sample task ids from an int or a tensor."""
    if isinstance(t, Tensor):
        return t.to(device)
    return torch.full((n,), int(t), dtype=torch.long, device=device)


@register
class Replay(Strategy):
    """Experience replay (ER) with a reservoir buffer.

    Each step draws ``mem_batch_size`` samples uniformly from the memory and minimises::

        (1 − ratio) · CE(current batch) + ratio · CE(memory batch)

    With ``ratio = 0.5`` and equal batch sizes this is exactly standard ER, the mean
    cross-entropy over the concatenation of the two batches (Chaudhry et al. 2019),
    since both means then have the same number of terms. While the memory is empty (the
    first task) the loss is ``CE(current batch)``. Memory samples keep their own task
    ids, so task-IL masks each one to its own task's classes.

    The memory is filled *after* each task (``after_task``) by running reservoir
    sampling over that task's training samples, so a training step never writes to it
    and costs the same however many tasks were seen. During task ``k`` the memory holds
    a uniform sample of tasks ``1..k−1``. A streamed task (:mod:`llray.data.streaming`)
    is offered batch by batch in its stored order, which leaves exactly the memory that
    offering it whole in that order would.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("replay", {"ratio": 0.5, "buffer_size": 200}).config.ratio
        0.5
    """

    name = "replay"
    Config = ReplayConfig

    def __init__(self, config: ReplayConfig | None = None) -> None:
        super().__init__(config)
        self.buffer: ReservoirBuffer | None = None

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.buffer is None:
            self.buffer = ReservoirBuffer(
                self.config.buffer_size, ctx.stream_info.input_shape, ctx.device
            )
        else:
            self.buffer.to(ctx.device)
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        if self.buffer is not None:
            self.buffer.to(ctx.device)

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        r = self.config.ratio
        if self.buffer is None or len(self.buffer) == 0 or r == 0:
            return F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)
        k = self.config.mem_batch_size or ctx.train.batch_size
        mem = self.buffer.sample(k, ctx.strategy_generator)
        n = len(batch.y)
        x = torch.cat([batch.x, mem.x])  # [n + k, *in]: one forward pass for both
        t = torch.cat([_task_ids(batch.t, n, ctx.device), mem.t])  # [n + k]
        out = ctx.logits(model, x, t)  # [n + k, C]
        cur = F.cross_entropy(out[:n], batch.y)
        old = F.cross_entropy(out[n:], mem.y)
        return (1 - r) * cur + r * old

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        if self.buffer is None:
            self.setup(model, ctx)
        if ctx.reader is not None:  # streamed: Algorithm R over the rows in stored order
            for x, y, _ in ctx.reader.ordered_batches((task.id,), "train",
                                                      ctx.train.eval_batch_size):
                self.buffer.add(x, y, task.id, ctx.strategy_generator)
            return
        self.buffer.add(task.x_train, task.y_train, task.id, ctx.strategy_generator)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()} if self.buffer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "buffer" not in state:
            return
        if self.buffer is None:
            self.buffer = ReservoirBuffer.from_state(state["buffer"])
        else:
            self.buffer.load_state_dict(state["buffer"])
