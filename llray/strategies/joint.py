"""Joint (multi-task) training on all data seen so far: the upper bound."""

import torch
from torch import nn

from llray.data.stream import Task
from llray.strategies.base import Context, Strategy, register


@register
class Joint(Strategy):
    """Multi-task training on the union of every task seen so far.

    When task k arrives the model (continuing from its current weights) is trained for
    ``train.epochs`` epochs over the training data of tasks 1..k together, each sample
    keeping its own task id (so task-IL masking stays per sample). Still fills one R
    row after each task, which makes it the upper bound that every report shows next
    to naive fine-tuning (Lopez-Paz & Ranzato 2017, "single" vs "multi-task" baselines).
    On a streamed stream the union is read from the seen tasks' shards, shuffled together
    (:mod:`llray.data.streaming`), never held in memory.
    """

    name = "joint"

    def train_task(self, model: nn.Module, task: Task, ctx: Context) -> None:
        tasks = [*ctx.seen, task]
        if ctx.reader is not None:  # streamed: one pass reads the union's shards
            self.fit_streamed(model, tuple(t.id for t in tasks), task, ctx)
            return
        x = torch.cat([t.x_train for t in tasks])
        y = torch.cat([t.y_train for t in tasks])
        tid = torch.cat([torch.full_like(t.y_train, t.id) for t in tasks])
        self.fit(model, x, y, tid, task, ctx)
