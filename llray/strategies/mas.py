"""Memory Aware Synapses (Aljundi et al. 2018).

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars 2018, "Memory Aware Synapses:
Learning what (not) to forget", ECCV. The importance of a parameter is how sensitive
the squared L2 norm of the network's output is to it, averaged over samples (Eqs. 2-4)::

    Ω_ij = 1/N Σ_k | ∂ ‖F(x_k; θ)‖²₂ / ∂θ_ij |

No labels are needed. Importances are summed over the tasks learned so far and later
tasks minimise ``L + λ Σ_ij Ω_ij (θ_ij − θ*_ij)²`` with ``θ*`` the parameters at the end
of the previous task (Eq. 3). In task-IL ``F`` is the task's own head (the outputs of
its classes), as in the paper's multi-head setting; otherwise the whole output layer.

Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over a
``functional_call``), in chunks: the absolute value is taken per sample, as the paper
says, not of the batch-mean gradient.

Example config::

    strategies:
      - {name: mas, lambda_: 1.0, samples: 1000}
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
from llray.strategies._penalty import quadratic_penalty
from llray.strategies.base import Batch, Context, Strategy, register

lean_grad.install()  # torch.func's backward without importing the compiler

CHUNK = 256  # samples per vectorised per-sample-gradient chunk


@dataclass(frozen=True)
class MASConfig:
    """Hyperparameters of :class:`MAS`.

    Attributes:
        lambda_: penalty strength λ (>= 0; 0 is naive fine-tuning).
        samples: at most this many training samples of each task (drawn with the
            strategy generator) estimate the importance; null uses all of them.
    """

    lambda_: float = 1.0
    samples: int | None = 1000

    def __post_init__(self) -> None:
        require(self.lambda_ >= 0, "lambda_", f"must be >= 0, got {self.lambda_}")
        require(
            self.samples is None or self.samples >= 1,
            "samples",
            f"must be >= 1 or null (all samples), got {self.samples}",
        )


def mas_importance(
    model: nn.Module, x: Tensor, head: Tensor | None = None, chunk: int = CHUNK
) -> dict[str, Tensor]:
    """``Ω = 1/N Σ_k |∂ ‖F(x_k)‖²₂ / ∂θ|`` for every trainable parameter.

    Args:
        model: the network ``F``.
        x: ``[N, *input_shape]`` samples.
        head: optional ``[C]`` bool mask of the outputs that form ``F`` (task-IL head).
        chunk: samples per vectorised chunk.

    Example:
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(2.0)
        >>> mas_importance(net, torch.tensor([[1.0], [-1.0]]))["weight"]  # |2·w·x²|
        tensor([[4.]])
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def sq_norm(ps: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(model, ps, (xi.unsqueeze(0),)).squeeze(0)  # [C]
        if head is not None:
            out = out * head
        return out.square().sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(0, len(x), chunk):
        for n, g in per_sample(params, x[i : i + chunk]).items():  # [n, *shape]
            total[n] += g.abs().sum(0)
    return {n: v / max(len(x), 1) for n, v in total.items()}


@register
class MAS(Strategy):
    """Memory Aware Synapses: output-sensitivity importance with an anchor penalty.

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("mas", {"lambda_": 2}).config
        MASConfig(lambda_=2.0, samples=1000)
    """

    name = "mas"
    Config = MASConfig

    def __init__(self, config: MASConfig | None = None) -> None:
        super().__init__(config)
        self.importance: dict[str, Tensor] = {}  # Ω summed over the tasks learned
        self.anchor: dict[str, Tensor] = {}  # θ* after the last task
        self.tasks = 0

    def penalty(self, model: nn.Module) -> Tensor:
        """``λ Σ Ω (θ − θ*)²``."""
        return quadratic_penalty(model, self.importance, self.anchor, self.config.lambda_)

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self.importance = {n: v.to(ctx.device) for n, v in self.importance.items()}
        self.anchor = {n: v.to(ctx.device) for n, v in self.anchor.items()}

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        ce = F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)
        if not self.importance or self.config.lambda_ == 0:
            return ce
        return ce + self.penalty(model)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        x = task.x_train
        k = self.config.samples
        if k is not None and k < len(x):
            x = x[torch.randperm(len(x), generator=ctx.strategy_generator)[:k].to(x.device)]
        head = ctx.class_mask[task.id].to(x.dtype) if ctx.class_mask is not None else None
        was_training = model.training
        model.eval()
        try:
            omega = mas_importance(model, x, head)
        finally:
            model.train(was_training)
        for n, v in omega.items():
            self.importance[n] = self.importance[n] + v if n in self.importance else v
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.requires_grad}
        self.tasks += 1

    def state_dict(self) -> dict:
        return {"importance": dict(self.importance), "anchor": dict(self.anchor),
                "tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        self.importance = dict(state.get("importance", {}))
        self.anchor = dict(state.get("anchor", {}))
        self.tasks = int(state.get("tasks", 0))
