"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017).

Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence", ICML.
While task μ is trained, every parameter accumulates its contribution to the decrease
of the task loss along the actual optimisation path (Eq. 3, discretised per step)::

    ω^μ_k = Σ_steps −g_k(t) · Δθ_k(t)

where ``g`` is the gradient of the *task* loss alone (not of the surrogate penalty, as
in the authors' code) and ``Δθ(t)`` is the update the optimizer really made (so SGD with
momentum or Adam are handled too). At the end of the task (Eq. 5)::

    Ω_k ← Ω_k + ω^μ_k / ((Δ^μ_k)² + ξ),    Δ^μ = θ(end of μ) − θ(start of μ)

and later tasks minimise ``L + c Σ_k Ω_k (θ_k − θ*_k)²`` with ``θ*`` the parameters at the
end of the previous task (Eq. 4). As in the authors' code (ganguli-lab/pathint,
``protocols.py``: ``omega = relu(omega + grads2 / (delta² + xi))``), the running ``Ω`` is
clipped at 0 after every task (``clip_omega: true``, the default): a parameter whose
path integral came out negative (its moves *raised* the loss, e.g. through momentum or
noise) gets no importance rather than a negative one, which would *reward* moving it
away from its anchor. ``clip_omega: false`` keeps the paper's unclipped sum.

Example config::

    strategies:
      - {name: si, c: 0.1, xi: 0.1}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._penalty import quadratic_penalty
from llray.strategies.base import Batch, Context, Strategy, register


@dataclass(frozen=True)
class SIConfig:
    """Hyperparameters of :class:`SI`.

    Attributes:
        c: strength of the surrogate penalty (>= 0; 0 is naive fine-tuning).
        xi: damping ξ of the importance denominator ``Δ² + ξ`` (> 0).
        clip_omega: clip the running importance Ω at 0 after each task, as the
            authors' code does (default); false keeps negative importances.
    """

    c: float = 0.1
    xi: float = 0.1
    clip_omega: bool = True

    def __post_init__(self) -> None:
        require(self.c >= 0, "c", f"must be >= 0, got {self.c}")
        require(self.xi > 0, "xi", f"must be > 0, got {self.xi}")


@register
class SI(Strategy):
    """Synaptic Intelligence: an online path-integral importance per parameter.

    Overrides :meth:`fit` (the seam's training loop) to see every update: each step
    backpropagates the task loss alone, records its gradient, then adds the penalty's
    gradient ``2c Ω (θ − θ*)`` (in closed form) and steps; the change of every
    parameter then updates ``ω``. Works in every scenario (in task-IL the task loss is
    that of the masked logits).

    Example:
        >>> from llray.strategies import make_strategy
        >>> make_strategy("si", {"c": 0.5}).config
        SIConfig(c=0.5, xi=0.1, clip_omega=True)
    """

    name = "si"
    Config = SIConfig

    def __init__(self, config: SIConfig | None = None) -> None:
        super().__init__(config)
        self.importance: dict[str, Tensor] = {}  # Ω, summed over finished tasks
        self.anchor: dict[str, Tensor] = {}  # θ*: parameters at the end of the last task
        self.omega: dict[str, Tensor] = {}  # ω of the current task
        self.start: dict[str, Tensor] = {}  # parameters at the start of the current task
        self.tasks = 0

    # -- penalty -----------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> Tensor:
        """``c Σ_k Ω_k (θ_k − θ*_k)²``."""
        return quadratic_penalty(model, self.importance, self.anchor, self.config.c)

    def task_loss(self, model: nn.Module, batch: Batch, ctx: Context) -> Tensor:
        return F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        return self.task_loss(model, batch, ctx) + self.penalty(model)

    # -- hooks ---------------------------------------------------------------------------
    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        params = _trainable(model)
        self.start = {n: p.detach().clone() for n, p in params.items()}
        self.omega = {n: torch.zeros_like(p) for n, p in params.items()}
        self.importance = {n: v.to(ctx.device) for n, v in self.importance.items()}
        self.anchor = {n: v.to(ctx.device) for n, v in self.anchor.items()}

    def fit(
        self, model: nn.Module, x: Tensor, y: Tensor, t: int | Tensor, task: Task, ctx: Context
    ) -> None:
        """The base loop, plus ``ω ← ω − g_task · Δθ`` after every optimizer step."""
        if not self.omega:
            self.before_task(model, task, ctx)
        params = _trainable(model)
        opt = ctx.optimizer(list(params.values()))
        use_penalty = bool(self.importance) and self.config.c > 0
        per_sample_t = isinstance(t, Tensor)
        for _ in range(ctx.train.epochs):
            total = torch.zeros((), device=ctx.device)
            for idx in ctx.batches(len(y)):
                batch = Batch(x[idx], y[idx], t[idx] if per_sample_t else t)
                opt.zero_grad(set_to_none=True)
                loss = self.task_loss(model, batch, ctx)
                loss.backward()
                g = {n: _grad(p) for n, p in params.items()}  # gradient of the task loss only
                before = {n: p.detach().clone() for n, p in params.items()}
                if use_penalty:
                    self._add_penalty_grad(params, before)  # the step follows L + penalty
                opt.step()
                with torch.no_grad():
                    for n, p in params.items():
                        self.omega[n].addcmul_(g[n], p - before[n], value=-1.0)
                total += loss.detach()
            ctx.samples_trained += len(y)
            ctx.check_finite(total)

    @torch.no_grad()
    def _add_penalty_grad(self, params: dict[str, nn.Parameter], theta: dict[str, Tensor]) -> None:
        """``grad += 2c Ω (θ − θ*)``, the penalty's gradient, without building a graph."""
        for n, p in params.items():
            if n in self.importance:
                diff = theta[n] - self.anchor[n]
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.addcmul_(self.importance[n], diff, value=2 * self.config.c)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        """``Ω ← max(Ω + ω / (Δ² + ξ), 0)`` (unclipped with ``clip_omega: false``); the
        anchor moves to the current parameters."""
        for n, p in _trainable(model).items():
            if n not in self.omega:  # a parameter created during the task
                continue
            delta = p.detach() - self.start[n]
            contrib = self.omega[n] / (delta.square() + self.config.xi)
            total = self.importance[n] + contrib if n in self.importance else contrib
            self.importance[n] = total.clamp_min(0) if self.config.clip_omega else total
            self.anchor[n] = p.detach().clone()
        self.omega, self.start = {}, {}
        self.tasks += 1

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Ω, θ* and the task count (ω and the start point are rebuilt in before_task)."""
        return {"importance": dict(self.importance), "anchor": dict(self.anchor),
                "tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        self.importance = dict(state.get("importance", {}))
        self.anchor = dict(state.get("anchor", {}))
        self.tasks = int(state.get("tasks", 0))
        self.omega, self.start = {}, {}


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _grad(p: nn.Parameter) -> Tensor:
    return p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
