"""Models: an MLP with configurable widths (and, per issue, more architectures).

Every model maps ``x [N, *input_shape]`` to logits ``[N, num_classes]``. Task-IL uses a
multi-head output by construction: task-IL streams give each task disjoint label ids,
so the output layer's per-task slices are the heads, and the scenario layer masks the
logits to the sample's own slice (mathematically identical to one linear head per
task: masked units get no gradient).

Example:
    >>> m = build_model(ModelConfig(hidden=(32,)), (64,), 10, seed=0)
    >>> tuple(m(torch.zeros(2, 64)).shape)
    (2, 10)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llray.config_base import require

MODEL_NAMES = ("mlp",)


@dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` section of a config."""

    name: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = (100, 100)

    def __post_init__(self) -> None:
        require(len(self.hidden) >= 1, "hidden", "needs at least one hidden width")
        require(all(h >= 1 for h in self.hidden), "hidden", f"widths must be >= 1: {self.hidden}")


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` per hidden width, then a linear output layer."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, *in] -> [N, C]
        return self.head(self.features(x))


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised model; the init is a pure function of ``seed``.

    The global torch RNG is forked, so building a model changes no global state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.name == "mlp":
            return MLP(math.prod(input_shape), cfg.hidden, num_classes)
    raise AssertionError(f"unhandled model {cfg.name}")
