"""StreamConfig -> TaskStream (placeholder: digits + permuted only; extended in data/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from llray.config_base import require
from llray.data.stream import Task, TaskStream


@dataclass(frozen=True)
class StreamConfig:
    dataset: str = "digits"
    kind: Literal["permuted", "rotated", "split"] = "permuted"
    scenario: Literal["task", "domain", "class"] | None = None
    num_tasks: int = 5
    test_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.num_tasks >= 2, "num_tasks", f"needs at least 2 tasks, got {self.num_tasks}")

    @property
    def benchmark(self) -> str:
        return f"{self.kind}-{self.dataset}"


def make_stream(cfg: StreamConfig) -> TaskStream:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(y))
    n_test = int(len(y) * cfg.test_fraction)
    te, tr = idx[:n_test], idx[n_test:]
    tasks = []
    for t in range(cfg.num_tasks):
        perm = np.arange(64) if t == 0 else rng.permutation(64)
        xt = torch.from_numpy(x[:, perm].copy())
        yt = torch.from_numpy(y).long()
        tasks.append(Task(t, f"permuted-{t}", xt[tr], yt[tr], xt[te], yt[te], tuple(range(10))))
    return TaskStream(tuple(tasks), cfg.scenario or "domain", cfg.benchmark, (64,), 10)
