"""Training-step time of EWC and replay after 1 task vs after 20 tasks.

A step (loss, backward, SGD update on a batch of 32) must cost the same however many
tasks a strategy has consolidated: EWC merges every task's quadratic penalty into one
per parameter, replay draws from a fixed-size reservoir. As a contrast the table also
times the textbook EWC that sums one penalty per task ("unmerged"), which grows
linearly. Setup: permuted digits with 20 tasks, the default MLP (64-100-100-10), one
CPU thread; the strategies' state comes from their real ``after_task`` (exact Fisher,
reservoir fill) on the first 1 or 20 tasks. States are timed in interleaved blocks and
the median step is reported. Targets: EWC and replay ratios (20 tasks / 1 task) <= 1.2.

Run: ``python benchmarks/bench_strategy_scaling.py``
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llray.data import StreamConfig, TaskStream, make_stream
from llray.models import ModelConfig, build_model
from llray.strategies import Batch, Context, Strategy, TrainConfig, make_strategy
from llray.strategies.ewc import EWC

TASKS, BLOCKS, STEPS = 20, 15, 40  # steps per block; BLOCKS blocks per state


class UnmergedEWC(EWC):
    """EWC with one penalty term per task (what merging avoids), for comparison only."""

    name = "ewc-unmerged-bench"

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.terms: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def consolidate(self, fisher: dict[str, Tensor], params: dict[str, Tensor]) -> None:
        super().consolidate(fisher, params)
        self.terms.append(({n: f.detach() for n, f in fisher.items()},
                           {n: p.detach().clone() for n, p in params.items()}))

    def penalty(self, model: nn.Module) -> Tensor:
        total = 0.0
        for fisher, anchor in self.terms:
            total = total + sum(
                (fisher[n] * (p - anchor[n]).square()).sum() for n, p in model.named_parameters()
            )
        return 0.5 * self.config.lambda_ * total


def context(stream: TaskStream, train: TrainConfig) -> Context:
    return Context(stream, train, torch.device("cpu"), torch.Generator().manual_seed(0))


def prepared(make: callable, stream: TaskStream, model: nn.Module, k: int, train) -> Strategy:
    """A strategy that has run ``after_task`` on the first ``k`` tasks."""
    strat = make()
    ctx = context(stream, train)
    strat.setup(model, ctx)
    for task in stream.tasks[:k]:
        strat.after_task(model, task, ctx)
    return strat


def block(strat: Strategy, model: nn.Module, stream: TaskStream, train: TrainConfig) -> float:
    """Median seconds per training step over one block of ``STEPS`` steps."""
    ctx = context(stream, train)
    task = stream.tasks[-1]
    opt = ctx.optimizer(model.parameters())
    times = []
    for idx in list(ctx.batches(len(task.y_train)))[:STEPS]:
        t0 = time.perf_counter()
        loss = strat.loss(model, Batch(task.x_train[idx], task.y_train[idx], task.id), task, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    stream = make_stream(StreamConfig(dataset="digits", kind="permuted", num_tasks=TASKS, seed=0))
    train = TrainConfig(batch_size=32, lr=1e-4)  # small lr: the weights barely move
    model = build_model(ModelConfig(hidden=(100, 100)), stream.input_shape, 10, seed=0)
    makers = {
        "naive": lambda: make_strategy("naive"),
        "ewc": lambda: make_strategy("ewc", {"lambda_": 100, "fisher": "exact"}),
        "replay": lambda: make_strategy("replay", {"buffer_size": 200}),
        "ewc unmerged (contrast)": lambda: UnmergedEWC(EWC.Config(lambda_=100)),
    }
    states = {
        (name, k): prepared(make, stream, model, k, train)
        for name, make in makers.items()
        for k in (1, TASKS)
    }
    for key, strat in states.items():  # warm up
        block(strat, model, stream, train)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in states}
    for _ in range(BLOCKS):
        for key, strat in states.items():
            times[key].append(block(strat, model, stream, train))
    print(f"training-step time, batch 32, MLP 64-100-100-10, 1 thread "
          f"(median of {BLOCKS} block medians of {STEPS} steps)")
    print(f"{'strategy':>24} {'1 task (us)':>12} {f'{TASKS} tasks (us)':>14} {'ratio':>7}")
    for name in makers:
        one = statistics.median(times[(name, 1)])
        many = statistics.median(times[(name, TASKS)])
        print(f"{name:>24} {one * 1e6:12.1f} {many * 1e6:14.1f} {many / one:7.2f}")
    print(f"targets: ewc and replay ratios <= 1.2 (the unmerged EWC shows the growth avoided)")


if __name__ == "__main__":
    main()
