"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017).

Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning", NeurIPS.
GEM keeps an episodic memory ``M_k`` of every earlier task and allows a step only if it
does not increase the loss on any of them (to first order): with ``g`` the gradient of
the current batch and ``g_k`` the gradient of the loss on ``M_k``, the step uses::

    g̃ = argmin_z ½‖g − z‖²   s.t.  ⟨z, g_k⟩ ≥ 0  for all k < t      (Eq. 11)

solved through its dual (Eqs. 12-13) whenever some ``⟨g, g_k⟩ < 0``; see
:mod:`llray.strategies._qp` for the exact solver (no quadprog needed) and the margin γ.

Memories: ``memory_per_task`` samples of each task, drawn uniformly without
replacement from its training set with the strategy generator when the task ends (the
paper keeps the last samples of a single pass, which is a uniform sample for i.i.d.
data; GEM only constrains on earlier tasks, so the current task's memory is not needed
while it is learned). All memory gradients of one step come from one forward pass over
the memories at once (``torch.func``: ``vmap`` over tasks of ``grad``), one row per
task. The per-step cost grows linearly with the number of earlier tasks, as in the
paper.

Example config::

    strategies:
      - {name: gem, memory_per_task: 256, margin: 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from llray import lean_grad
from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._qp import apply_projection, gem_project
from llray.strategies.base import Context, Strategy, register

lean_grad.install()  # torch.func's backward without importing the compiler


@dataclass(frozen=True)
class GEMConfig:
    """Hyperparameters of :class:`GEM`.

    Attributes:
        memory_per_task: samples stored per task (>= 1); the memory grows with the tasks.
        margin: γ >= 0, the lower bound of the dual variables (the paper's 0.5 biases
            steps towards improving the memories; 0 gives the closest feasible gradient).
    """

    memory_per_task: int = 256
    margin: float = 0.5

    def __post_init__(self) -> None:
        require(
            self.memory_per_task >= 1,
            "memory_per_task",
            f"must be >= 1, got {self.memory_per_task}",
        )
        require(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")


@register
class GEM(Strategy):
    """Gradient Episodic Memory: project each step's gradient with the dual QP.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("gem", {"memory_per_task": 64}).config
        GEMConfig(memory_per_task=64, margin=0.5)
    """

    name = "gem"
    Config = GEMConfig

    def __init__(self, config: GEMConfig | None = None) -> None:
        super().__init__(config)
        self.mem_x: Tensor | None = None  # [M, *input_shape], all memories concatenated
        self.mem_y: Tensor | None = None  # [M]
        self.mem_t: Tensor | None = None  # [M] task id of each sample
        self.projections = 0  # steps whose gradient was projected (diagnostics)
        self._stack: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # cache

    @property
    def memory_tasks(self) -> list[int]:
        """Task ids that have a memory, in the order they were stored."""
        if self.mem_t is None:
            return []
        return list(dict.fromkeys(self.mem_t.tolist()))

    def memory_gradients(
        self, model: nn.Module, params: list[nn.Parameter], ctx: Context
    ) -> Tensor:
        """``G`` ``[K, P]``: row k is the gradient of the mean loss on task k's memory.

        One ``vmap`` over tasks of ``grad`` of a ``functional_call``: the cost of one
        forward and backward pass over the whole memory, linear in the number of tasks.
        The model is in eval mode for it: a BatchNorm backbone normalises the memories with
        its running statistics and the memory passes do not move them (models without
        BatchNorm or dropout compute the same either way).
        """
        X, Y, T, W = self._stacked()  # [K, m, *in], [K, m], [K, m], [K, m]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(names) == len(params)

        def task_loss(ps: dict[str, Tensor], x: Tensor, y: Tensor, t: Tensor, w: Tensor) -> Tensor:
            out = ctx.mask(functional_call(model, ps, (x,)), t)  # [m, C]
            return (F.cross_entropy(out, y, reduction="none") * w).sum() / w.sum()

        ps = {n: p.detach() for n, p in zip(names, params)}
        was_training = model.training
        model.eval()  # BatchNorm uses (and leaves alone) its running statistics here
        try:
            grads = vmap(grad(task_loss), in_dims=(None, 0, 0, 0, 0))(ps, X, Y, T, W)
        finally:
            model.train(was_training)
        return torch.cat([grads[n].reshape(len(X), -1) for n in names], dim=1)

    def _stacked(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The memories as ``[K, m]`` blocks (shorter ones padded with weight-0 copies)."""
        if self._stack is None:
            assert self.mem_t is not None
            rows = [torch.nonzero(self.mem_t == k).squeeze(1) for k in self.memory_tasks]
            m = max(len(r) for r in rows)
            idx = torch.stack([r[torch.arange(m, device=r.device) % len(r)] for r in rows])
            w = torch.stack([(torch.arange(m, device=r.device) < len(r)).float() for r in rows])
            self._stack = (self.mem_x[idx], self.mem_y[idx], self.mem_t[idx],
                           w.to(self.mem_x.device))
        return self._stack

    def project(
        self, model: nn.Module, params: list[nn.Parameter], g: Tensor, ctx: Context
    ) -> Tensor | None:
        if self.mem_t is None:
            return None
        G = self.memory_gradients(model, params, ctx)  # [K, P]
        g_new = gem_project(g, G, self.config.margin)
        if g_new is g:
            return None
        self.projections += 1
        return g_new

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self._to(ctx.device)

    def before_step(self, model: nn.Module, params: list[nn.Parameter], ctx: Context) -> None:
        apply_projection(self.project, model, params, ctx)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """Store ``memory_per_task`` random training samples of the task."""
        n = len(task.y_train)
        idx = torch.randperm(n, generator=ctx.strategy_generator)[: self.config.memory_per_task]
        idx = idx.to(task.y_train.device)
        x, y = task.x_train[idx], task.y_train[idx]
        t = torch.full_like(y, task.id)
        self._stack = None
        if self.mem_t is None:
            self.mem_x, self.mem_y, self.mem_t = x.clone(), y.clone(), t
        else:
            self.mem_x = torch.cat([self.mem_x, x])
            self.mem_y = torch.cat([self.mem_y, y])
            self.mem_t = torch.cat([self.mem_t, t])

    def _to(self, device: torch.device) -> None:
        self._stack = None
        if self.mem_t is not None:
            self.mem_x, self.mem_y, self.mem_t = (
                self.mem_x.to(device), self.mem_y.to(device), self.mem_t.to(device))

    def state_dict(self) -> dict:
        if self.mem_t is None:
            return {"projections": self.projections}
        return {"x": self.mem_x, "y": self.mem_y, "t": self.mem_t,
                "projections": self.projections}

    def load_state_dict(self, state: dict) -> None:
        self.projections = int(state.get("projections", 0))
        self._stack = None
        if "t" in state:
            self.mem_x, self.mem_y, self.mem_t = state["x"], state["y"], state["t"]
        else:
            self.mem_x = self.mem_y = self.mem_t = None
