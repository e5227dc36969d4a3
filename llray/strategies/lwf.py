"""Learning without Forgetting (Li & Hoiem 2016/2017).

Li & Hoiem, "Learning without Forgetting", ECCV 2016 and IEEE TPAMI 40(12), 2017.
Before a new task, the model is frozen as a teacher; while the new task is learned, the
student is also trained to reproduce the teacher's outputs on the *new task's inputs*
(no data of earlier tasks is kept). With temperature ``T`` (the paper uses 2) the
knowledge-distillation loss of one output group (Eq. 2) is the cross-entropy between
the temperature-softened distributions::

    y'_o = softmax(y_o / T),   ŷ'_o = softmax(ŷ_o / T),   L_old = −Σ_i y'_o,i log ŷ'_o,i

where ``y_o`` are the teacher's logits and ``ŷ_o`` the student's. The training loss is
``CE(new task) + α · Σ_groups L_old`` (λ_o = ``alpha``; as in the paper the losses of
several old tasks are summed, and there is no ``T²`` factor). The groups are:

- task-IL: one group per earlier task, its own head (the logits of its classes);
- class-IL: one group, the logits of every class seen in earlier tasks;
- domain-IL: one group, all logits (every task shares the label space).

The paper's warm-up phase (training only the new head first) is not used.

Example config::

    strategies:
      - {name: lwf, alpha: 1.0, temperature: 2.0}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies.base import MASKED, Batch, Context, Strategy, register


@dataclass(frozen=True)
class LwFConfig:
    """Hyperparameters of :class:`LwF`.

    Attributes:
        alpha: weight λ_o of the distillation loss (>= 0; 0 is naive fine-tuning).
        temperature: distillation temperature ``T`` (> 0; the paper uses 2).
    """

    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        require(self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


def distillation_targets(old_logits: Tensor, groups: Tensor, temperature: float) -> Tensor:
    """The teacher's softened distributions ``y'_o`` per group: ``[N, G, C]``.

    Args:
        old_logits: ``[N, C]`` teacher logits.
        groups: ``[G, C]`` bool, the classes of each output group.
        temperature: ``T``.

    Entries outside a group are exactly 0; each group's row sums to 1.

    Example:
        >>> p = distillation_targets(torch.tensor([[0.0, 2.0, 9.0]]),
        ...                          torch.tensor([[True, True, False]]), 2.0)
        >>> [round(v, 4) for v in p[0, 0].tolist()]  # softmax([0, 1]), then 0
        [0.2689, 0.7311, 0.0]
    """
    return F.softmax(_grouped(old_logits, groups) / temperature, dim=-1)


def distillation_loss(
    new_logits: Tensor, targets: Tensor, groups: Tensor, temperature: float
) -> Tensor:
    """``mean_n Σ_groups −Σ_i y'_o,i log ŷ'_o,i``: the paper's Eq. 2, summed over groups."""
    log_q = F.log_softmax(_grouped(new_logits, groups) / temperature, dim=-1)  # [N, G, C]
    return -(targets * log_q).sum((1, 2)).mean()


def _grouped(logits: Tensor, groups: Tensor) -> Tensor:
    """``[N, C]`` logits -> ``[N, G, C]`` with the classes outside each group masked."""
    return logits.unsqueeze(1).masked_fill(~groups, MASKED)


def old_groups(seen: list[Task], ctx: Context) -> Tensor | None:
    """The ``[G, C]`` output groups of the earlier tasks (module docstring), or None."""
    if not seen:
        return None
    C = ctx.stream_info.num_classes
    if ctx.scenario == "task":
        g = torch.zeros(len(seen), C, dtype=torch.bool)
        for i, t in enumerate(seen):
            g[i, list(t.classes)] = True
    elif ctx.scenario == "class":
        g = torch.zeros(1, C, dtype=torch.bool)
        g[0, sorted({c for t in seen for c in t.classes})] = True
    else:
        g = torch.ones(1, C, dtype=torch.bool)
    return g.to(ctx.device)


@register
class LwF(Strategy):
    """Learning without Forgetting: distillation from the model as it was before the task.

    ``before_task`` keeps a frozen ``copy.deepcopy`` of the model (the teacher); each step
    runs teacher and student on the current batch. Nothing needs checkpointing besides
    the task count: the teacher of the next task is the model as restored.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("lwf", {"alpha": 0.5}).config
        LwFConfig(alpha=0.5, temperature=2.0)
    """

    name = "lwf"
    Config = LwFConfig

    def __init__(self, config: LwFConfig | None = None) -> None:
        super().__init__(config)
        self.old_model: nn.Module | None = None
        self.groups: Tensor | None = None  # [G, C] bool
        self.tasks = 0

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.groups = old_groups(list(ctx.seen), ctx)
        self.old_model = None
        if self.groups is not None and self.config.alpha > 0:
            self.old_model = copy.deepcopy(model).eval().requires_grad_(False)

    def targets(self, x: Tensor) -> Tensor:
        """The teacher's distillation targets ``[N, G, C]`` for inputs ``x``."""
        assert self.old_model is not None and self.groups is not None
        with torch.no_grad():
            return distillation_targets(self.old_model(x), self.groups, self.config.temperature)

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        out = model(batch.x)  # [N, C] raw: masked per group below
        ce = F.cross_entropy(ctx.mask(out, batch.t), batch.y)
        if self.old_model is None:
            return ce
        kd = distillation_loss(out, self.targets(batch.x), self.groups, self.config.temperature)
        return ce + self.config.alpha * kd

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.old_model, self.groups = None, None
        self.tasks += 1

    def state_dict(self) -> dict:
        return {"tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        self.tasks = int(state.get("tasks", 0))
