"""Elastic Weight Consolidation, offline (Kirkpatrick et al. 2017) and online (Schwarz et al. 2018).

EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks",
PNAS 114(13)) anchors each parameter to its value after every earlier task, weighted
by that task's diagonal Fisher ``F_t``::

    loss = CE(masked logits) + λ/2 Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²

The per-task quadratics are merged into one as they arrive, so a training step costs
the same after 1 task or 50. With ``A = Σ_t F_t``, ``B = Σ_t F_t θ*_t`` and
``C = Σ_t F_t θ*_t²``, the sum is ``Σ_i A_i θ_i² − 2 B_i θ_i + C_i`` = ``Σ_i A_i (θ_i −
μ_i)² + K`` with the merged anchor ``μ = B / A`` and the constant ``K = Σ_i C_i −
B_i² / A_i``. This strategy keeps ``A``, ``μ`` and ``K``, updated without cancellation
when a task with Fisher ``F`` and anchor ``θ*`` is added::

    A' = A + F,   μ' = (A μ + F θ*) / A',   K' = K + Σ_i A_i F_i / A'_i · (μ_i − θ*_i)²

(where ``A'_i = 0`` the parameter is unconstrained and ``μ'_i = θ*_i``). So the penalty
value equals the naive sum over tasks, constant included, not just its gradient.

Online EWC (Schwarz et al. 2018, "Progress & Compress: A scalable framework for
continual learning", ICML) keeps one running Fisher ``F̃_t = γ F̃_{t−1} + F_t`` and
anchors to the latest parameters only. While task ``t + 1`` is learned the penalty is,
as in the paper (Eq. 8, where the decay is applied before the next task's penalty) and
in van de Ven's reference code (``ewc_loss``: ``fisher = gamma * fisher`` when online)::

    λ/2 Σ_i γ F̃_{t,i} (θ_i − θ*_{t,i})²

(here ``A = γ F̃``, ``μ = θ*_last``, ``K = 0``). So ``lambda_`` means what it means in
those papers and a value can be copied from them. Before this was fixed, llray's online
penalty used ``F̃`` without the factor γ, i.e. its λ was ``1/γ`` times theirs: a λ tuned
for that version must be multiplied by ``γ`` to give the same penalty now. With
``gamma: 1`` nothing changes.

Example config::

    strategies:
      - {name: ewc, lambda_: 1000, fisher: exact}
      - {name: ewc, lambda_: 1000, online: true, gamma: 0.9}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.config_base import require
from llray.data.stream import Task
from llray.strategies._fisher import FISHER_KINDS, fisher_diagonal, trainable
from llray.strategies.base import Batch, Context, Strategy, register


@dataclass(frozen=True)
class EWCConfig:
    """Hyperparameters of :class:`EWC`.

    Attributes:
        lambda_: penalty strength λ (>= 0; 0 is naive fine-tuning).
        fisher: ``"exact"`` (expectation under the model's predictive distribution),
            ``"empirical"`` (true labels) or ``"sampled"`` (labels drawn from the model).
        fisher_samples: at most this many training samples of the task (drawn with the
            strategy generator) for the Fisher; None uses all of them.
        fisher_batch: samples per vectorised Fisher chunk (memory vs speed).
        online: online EWC (one running Fisher, anchor = latest parameters).
        gamma: decay γ of the running Fisher in online EWC, in [0, 1]; the penalty uses
            ``γ F̃`` (Schwarz et al. 2018), so γ = 0 forgets every earlier task.
    """

    lambda_: float = 100.0
    fisher: Literal["empirical", "exact", "sampled"] = "exact"
    fisher_samples: int | None = None
    fisher_batch: int = 256
    online: bool = False
    gamma: float = 1.0

    def __post_init__(self) -> None:
        require(self.lambda_ >= 0, "lambda_", f"must be >= 0, got {self.lambda_}")
        require(
            self.fisher in FISHER_KINDS,
            "fisher",
            f"must be one of {', '.join(FISHER_KINDS)}, got {self.fisher!r}",
        )
        require(
            self.fisher_samples is None or self.fisher_samples >= 1,
            "fisher_samples",
            f"must be >= 1 or null (all samples), got {self.fisher_samples}",
        )
        require(self.fisher_batch >= 1, "fisher_batch", f"must be >= 1, got {self.fisher_batch}")
        require(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")


def merge_quadratic(
    A: Tensor, mu: Tensor, fisher: Tensor, anchor: Tensor
) -> tuple[Tensor, Tensor, float]:
    """Add ``F (θ − θ*)²`` to ``A (θ − μ)²``: returns ``(A', μ', ΔK)`` such that
    ``A (θ−μ)² + F (θ−θ*)² = A' (θ−μ')² + ΔK`` for all θ (summed over entries)."""
    A2 = A + fisher
    pos = A2 > 0
    safe = torch.where(pos, A2, torch.ones_like(A2))
    mu2 = torch.where(pos, (A * mu + fisher * anchor) / safe, anchor)
    dk = torch.where(pos, A * fisher / safe * (mu - anchor).square(), torch.zeros_like(A2))
    return A2, mu2, float(dk.double().sum())


@register
class EWC(Strategy):
    """Elastic Weight Consolidation: cross-entropy plus a Fisher-weighted anchor penalty.

    After each task the diagonal Fisher of that task (see
    :mod:`llray.strategies._fisher`) is merged into one quadratic per parameter, so the
    step cost does not grow with the number of tasks (module docstring). In task-IL the
    Fisher is taken of the masked logits, like training.

    Example:
        >>> from llray.strategies import make_strategy
        >>> s = make_strategy("ewc", {"lambda_": 1000, "fisher": "exact"})
        >>> s.config.lambda_, s.config.online
        (1000.0, False)
    """

    name = "ewc"
    Config = EWCConfig

    def __init__(self, config: EWCConfig | None = None) -> None:
        super().__init__(config)
        self.importance: dict[str, Tensor] = {}  # A = Σ_t F_t (online: γ F̃)
        self.anchor: dict[str, Tensor] = {}  # μ = B / A (online: θ* of the last task)
        self.const = 0.0  # K = Σ (C − B²/A) (online: 0)
        self.tasks = 0  # tasks consolidated
        self._flat_cache: tuple[list[str], Tensor, Tensor] | None = None
        self._warned = False

    # -- penalty ---------------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> Tensor:
        """``λ/2 (Σ_i A_i (θ_i − μ_i)² + K)``: the sum of every task's EWC penalty.

        All penalised parameters are flattened into one vector, so a step runs a handful
        of kernels whatever the number of parameter tensors or tasks.
        """
        names, A, mu = self._flat()
        params = dict(model.named_parameters())
        present = [n for n in names if n in params]
        if not present:
            return next(model.parameters()).new_zeros(())
        assert len(present) == len(names), "a penalised parameter is missing from the model"
        theta = torch.cat([params[n].reshape(-1) for n in names])  # [P]
        return 0.5 * self.config.lambda_ * ((A * (theta - mu).square()).sum() + self.const)

    def _flat(self) -> tuple[list[str], Tensor, Tensor]:
        """``(names, A [P], μ [P])``: the state flattened in a fixed order, cached."""
        if self._flat_cache is None:
            names = sorted(self.importance)
            if not names:
                empty = torch.zeros(0)
                return [], empty, empty
            A = torch.cat([self.importance[n].reshape(-1) for n in names])  # [P]
            mu = torch.cat([self.anchor[n].reshape(-1) for n in names])  # [P]
            # the per-name tensors become views of the flat ones: no second copy
            sizes = [self.importance[n].numel() for n in names]
            for n, a, m in zip(names, A.split(sizes), mu.split(sizes)):
                self.importance[n] = a.view_as(self.importance[n])
                self.anchor[n] = m.view_as(self.anchor[n])
            self._flat_cache = (names, A, mu)
        return self._flat_cache

    def consolidate(self, fisher: dict[str, Tensor], params: dict[str, Tensor]) -> None:
        """Merge one task's Fisher and parameters ``θ*`` into the running penalty."""
        fisher = {n: f.detach() for n, f in fisher.items()}
        params = {n: p.detach().clone() for n, p in params.items()}
        if self.config.online:
            # the state holds the penalty's weight γ F̃_t: γ F̃_t = γ (F_t + γ F̃_{t−1})
            # = γ F_t + γ · (γ F̃_{t−1}), the previous state scaled by γ plus γ F_t
            g = self.config.gamma
            self.importance = {
                n: g * (self.importance[n] + f) if n in self.importance else g * f
                for n, f in fisher.items()
            }
            self.anchor = params
        else:
            for n, f in fisher.items():
                if n not in self.importance:
                    self.importance[n], self.anchor[n] = f.clone(), params[n]
                    continue
                A, mu, dk = merge_quadratic(self.importance[n], self.anchor[n], f, params[n])
                self.importance[n], self.anchor[n] = A, mu
                self.const += dk
        self.tasks += 1
        self._flat_cache = None

    # -- hooks ----------------------------------------------------------------------------
    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        self._to(ctx.device)

    def loss(self, model: nn.Module, batch: Batch, task: Task, ctx: Context) -> Tensor:
        ce = F.cross_entropy(ctx.logits(model, batch.x, batch.t), batch.y)
        if not self.importance or self.config.lambda_ == 0:
            return ce
        return ce + self.penalty(model)

    def after_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        x, y = self._fisher_set(task, ctx)
        was_training = model.training
        model.eval()
        try:
            fisher = fisher_diagonal(
                model,
                x,
                y,
                task.id,
                kind=self.config.fisher,
                mask=ctx.mask,
                generator=ctx.strategy_generator,
                batch_size=self.config.fisher_batch,
            )
        finally:
            model.train(was_training)
        self.consolidate(fisher, trainable(model))
        self._warn_if_too_stiff(ctx)

    def _warn_if_too_stiff(self, ctx: Context) -> None:
        """Warn when plain SGD cannot follow the penalty: along a parameter with
        importance ``A`` the penalty has curvature ``λ A``, and gradient descent (heavy
        ball with momentum β) on it oscillates and diverges once ``lr λ A > 2 (1 + β)``."""
        cfg = ctx.train
        if cfg.optimizer != "sgd" or not self.importance or self._warned:
            return
        stiff = cfg.lr * self.config.lambda_ * float(self._flat()[1].max())
        if stiff > 2 * (1 + cfg.momentum):
            self._warned = True
            warnings.warn(
                f"ewc: lr * lambda_ * max Fisher = {stiff:.3g} > {2 * (1 + cfg.momentum):.3g}; "
                "SGD will oscillate on the EWC penalty and the run will likely diverge. "
                "Lower ewc.lambda_ or train.lr, or use train.optimizer: adam.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _fisher_set(self, task: Task, ctx: Context) -> tuple[Tensor, Tensor]:
        """The task's training samples, or ``fisher_samples`` of them drawn at random."""
        x, y = task.x_train, task.y_train
        k = self.config.fisher_samples
        if k is None or k >= len(y):
            return x, y
        idx = torch.randperm(len(y), generator=ctx.strategy_generator)[:k].to(y.device)
        return x[idx], y[idx]

    def _to(self, device: torch.device) -> None:
        self.importance = {n: a.to(device) for n, a in self.importance.items()}
        self.anchor = {n: m.to(device) for n, m in self.anchor.items()}
        self._flat_cache = None

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "importance": dict(self.importance),
            "anchor": dict(self.anchor),
            "const": self.const,
            "tasks": self.tasks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.importance = dict(state.get("importance", {}))
        self.anchor = dict(state.get("anchor", {}))
        self.const = float(state.get("const", 0.0))
        self.tasks = int(state.get("tasks", 0))
        self._flat_cache = None
