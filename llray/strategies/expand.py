"""Model expansion with Net2Net: capacity follows the number of tasks.

Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating Learning via Knowledge
Transfer", ICLR. The growth operations themselves are :func:`llray.models.net2wider`
and :func:`llray.models.net2deeper`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llray.config_base import require
from llray.data.stream import Task
from llray.errors import ConfigError
from llray.models import hidden_widths, is_mlp, net2deeper, net2wider, resize_mlp
from llray.strategies.base import Context, Strategy, register


@dataclass(frozen=True)
class ExpandConfig:
    """``expand`` fields.

    Attributes:
        grow: ``wider`` (Net2WiderNet on every hidden layer), ``deeper`` (Net2DeeperNet:
            one identity layer after the last hidden layer) or ``both``.
        width_step: units added to each hidden layer per growth.
        max_width: no hidden layer grows beyond this width.
        max_depth: no more hidden layers than this.
        every: grow when a new task arrives and the number of tasks learned so far is a
            multiple of ``every`` (1: before every task after the first).
        noise: relative std of Net2Wider's symmetry-breaking noise (zero-sum over the
            copies of a unit, so the function is still preserved); 0 adds none.
    """

    grow: Literal["wider", "deeper", "both"] = "wider"
    width_step: int = 32
    max_width: int = 512
    max_depth: int = 6
    every: int = 1
    noise: float = 0.0

    def __post_init__(self) -> None:
        require(self.grow in ("wider", "deeper", "both"), "grow",
                f"must be one of 'wider', 'deeper', 'both', got {self.grow!r}")
        require(self.width_step >= 1, "width_step", f"must be >= 1, got {self.width_step}")
        require(self.max_width >= 1, "max_width", f"must be >= 1, got {self.max_width}")
        require(self.max_depth >= 1, "max_depth", f"must be >= 1, got {self.max_depth}")
        require(self.every >= 1, "every", f"must be >= 1, got {self.every}")
        require(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")


@register
class Expand(Strategy):
    """Grow the MLP with function-preserving Net2Net operations as tasks arrive.

    Capacity follows the number of tasks: the run starts with the configured model and,
    before every ``every``-th new task, widens each hidden layer by ``width_step`` (up to
    ``max_width``) and/or inserts an identity layer (up to ``max_depth`` hidden layers).
    Because Net2Net growth computes exactly the same function, nothing learned so far is
    disturbed at the moment of growth; the extra units then give the new task room to
    learn (trained with cross-entropy, as in fine-tuning). The optimizer is created after
    ``before_task``, so the new parameters are trained. The model is changed in place
    (its ``nn.Linear`` submodules are replaced), so the learner keeps the same object.

    Works with the MLP layout (``features = Flatten, (Linear, ReLU)+``, linear head) in
    every scenario. Example config: ``strategies: [{name: expand, grow: both, width_step: 16}]``.
    """

    name = "expand"
    Config = ExpandConfig

    def __init__(self, config: ExpandConfig | None = None) -> None:
        super().__init__(config)
        self.model: nn.Module | None = None

    def setup(self, model: nn.Module, ctx: Context) -> nn.Module:
        if not is_mlp(model):
            raise ConfigError("expand", "needs an MLP model (model.name: mlp)")
        self.model = model
        return model

    def before_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        n = len(ctx.seen)
        if n > 0 and n % self.config.every == 0:
            self.grow(model, ctx.strategy_generator)

    def grow(self, model: nn.Module, generator: torch.Generator) -> None:
        """One growth step, as configured (function-preserving)."""
        cfg = self.config
        if cfg.grow in ("wider", "both"):
            for i, w in enumerate(hidden_widths(model)):
                new = min(w + cfg.width_step, cfg.max_width)
                if new > w:
                    net2wider(model, i, new, generator, cfg.noise)
        if cfg.grow in ("deeper", "both") and len(hidden_widths(model)) < cfg.max_depth:
            net2deeper(model, len(hidden_widths(model)) - 1)

    # -- checkpoints: the grown architecture; the weights are in the model's state
    def state_dict(self) -> dict:
        return {"hidden": list(hidden_widths(self.model)) if self.model is not None else []}

    def load_state_dict(self, state: dict) -> None:
        assert self.model is not None, "call setup before load_state_dict"
        hidden = tuple(int(h) for h in state["hidden"])
        if hidden and hidden != hidden_widths(self.model):
            resize_mlp(self.model, hidden)
