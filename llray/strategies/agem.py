"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019).

Chaudhry, Ranzato, Rohrbach & Elhoseiny 2019, "Efficient Lifelong Learning with A-GEM",
ICLR. A-GEM replaces GEM's one constraint per earlier task by a single one on the
*average* memory loss: each step draws a random batch from the episodic memory, takes
its gradient ``g_ref`` and, if the current gradient ``g`` disagrees with it, projects::

    g̃ = g − (gᵀg_ref / g_refᵀg_ref) g_ref      if gᵀg_ref < 0, else g̃ = g    (Eq. 11)

so ``g̃ᵀg_ref = 0`` after a projection. One extra forward/backward on ``mem_batch_size``
samples per step, whatever the number of tasks.

Memory: ``memory_size`` samples **in total** (not per task), a reservoir sample
(Vitter's Algorithm R, :mod:`llray.strategies._buffer`) of the training sets of all
tasks learned so far, filled when each task ends (A-GEM stores a task's examples after
learning it); memory samples keep their task ids, so in task-IL each is scored with its
own head. A fixed total keeps the memory, and a step's cost, constant as tasks
accumulate, and equals the budget of ``replay`` and ``derpp`` with the same size.

Example config::

    strategies:
      - {name: agem, memory_size: 500, mem_batch_size: 256}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._buffer import ReservoirBuffer
from llray.strategies._qp import agem_project, apply_projection, flatten
from llray.strategies.base import Context, Strategy, register


@dataclass(frozen=True)
class AGEMConfig:
    """Hyperparameters of :class:`AGEM`.

    Attributes:
        memory_size: total episodic memory in samples, shared by all tasks (>= 1).
        mem_batch_size: memory samples drawn (with replacement) per step to compute
            ``g_ref`` (>= 1; the paper uses 256).
    """

    memory_size: int = 500
    mem_batch_size: int = 256

    def __post_init__(self) -> None:
        require(self.memory_size >= 1, "memory_size", f"must be >= 1, got {self.memory_size}")
        require(
            self.mem_batch_size >= 1, "mem_batch_size", f"must be >= 1, got {self.mem_batch_size}"
        )


@register
class AGEM(Strategy):
    """A-GEM: project the step's gradient when it conflicts with a memory gradient.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("agem", {"memory_size": 200}).config
        AGEMConfig(memory_size=200, mem_batch_size=256)
    """

    name = "agem"
    Config = AGEMConfig

    def __init__(self, config: AGEMConfig | None = None) -> None:
        super().__init__(config)
        self.buffer: ReservoirBuffer | None = None
        self.projections = 0  # steps whose gradient was projected (diagnostics)

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.buffer is None:
            self.buffer = ReservoirBuffer(
                self.config.memory_size, ctx.stream_info.input_shape, ctx.device
            )
        else:
            self.buffer.to(ctx.device)
        return model

    def reference_gradient(
        self, model: nn.Module, params: list[nn.Parameter], ctx: Context
    ) -> Tensor:
        """``g_ref`` ``[P]``: the gradient of the loss on a random memory batch."""
        assert self.buffer is not None and len(self.buffer) > 0
        mem = self.buffer.sample(self.config.mem_batch_size, ctx.strategy_generator)
        loss = F.cross_entropy(ctx.logits(model, mem.x, mem.t), mem.y)
        return flatten(list(torch.autograd.grad(loss, params, allow_unused=True)), params)

    def project(
        self, model: nn.Module, params: list[nn.Parameter], g: Tensor, ctx: Context
    ) -> Tensor | None:
        if self.buffer is None or len(self.buffer) == 0:
            return None
        g_new = agem_project(g, self.reference_gradient(model, params, ctx))
        if g_new is g:
            return None
        self.projections += 1
        return g_new

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.setup(model, ctx)  # the buffer exists and lives on the run's device

    def before_step(self, model: nn.Module, params: list[nn.Parameter], ctx: Context) -> None:
        apply_projection(self.project, model, params, ctx)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        if self.buffer is None:
            self.setup(model, ctx)
        self.buffer.add(task.x_train, task.y_train, task.id, ctx.strategy_generator)

    def state_dict(self) -> dict:
        state: dict = {"projections": self.projections}
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.projections = int(state.get("projections", 0))
        if "buffer" not in state:
            return
        if self.buffer is None:
            self.buffer = ReservoirBuffer.from_state(state["buffer"])
        else:
            self.buffer.load_state_dict(state["buffer"])
