"""Per-step training time of every registered strategy relative to naive, early and late.

Every strategy in :func:`llray.strategies.strategy_names` learns a stream of permuted
digits (``TASKS`` tasks, MLP 64-100-100-10, SGD lr 0.02, batch 32, 2 epochs, 1 CPU
thread) through the real learner, with its default config. A strategy that does not
support the domain-incremental scenario (or fails on it) runs on the task-IL (then
class-IL) version of the same stream instead, next to naive on that same stream; one
that fails to build or run on all of them (or diverges) is listed as skipped.

Only ``train_task`` is timed (not ``before_task``/``after_task`` consolidation, which
runs once per task and is shown separately as "per task (ms)", nor evaluation). A step
is ``batch_size`` samples of ``ctx.samples_trained`` (what the strategy trained on,
e.g. the union of all tasks for joint). Columns: step time relative to naive's on
task 2 (the first task with a memory or penalty in effect) and on the last task, and
``growth`` = last / task 2 of the strategy itself. Buffer-based methods (replay,
A-GEM, DER++) must keep ``growth`` near 1; GEM's grows with the number of earlier
tasks by design (one memory gradient per task). Each strategy first runs once on a
``PROBE_TASKS``-task stream (warm-up, scenario choice, ``PROBE_S`` time limit); those
faster than ``FAST_S`` then run interleaved ``REPEATS`` times on the full stream and
medians are reported (this machine is noisy); slower ones (e.g. generative replay,
which trains a GAN) keep the probe's numbers, flagged with ``*``.

Run: ``python benchmarks/bench_strategy_overhead.py``
"""

from __future__ import annotations

import signal
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from llray.data import StreamConfig, TaskStream, make_stream
from llray.learner import LifelongRun
from llray.models import ModelConfig, build_model
from llray.strategies import Strategy, TrainConfig, make_strategy, strategy_class, strategy_names

TASKS, REPEATS, BATCH, EPOCHS, LR = 8, 5, 32, 2, 0.02  # LR: every default config is stable
PROBE_TASKS, PROBE_S, FAST_S = 3, 300, 10  # probe run; its time limit; repeat only below
SCENARIOS = ("domain", "task", "class")


class Timed(Strategy):
    """Forwards every hook to ``inner`` and records ``train_task`` time and steps per task."""

    def __init__(self, inner: Strategy) -> None:
        self.inner, self.config = inner, inner.config
        self.step_s: list[float] = []  # seconds per step, per task
        self.task_s: list[float] = []  # before_task + after_task seconds, per task

    def setup(self, model, ctx):
        return self.inner.setup(model, ctx)

    def before_task(self, model, task, ctx):
        t0 = time.perf_counter()
        self.inner.before_task(model, task, ctx)
        self.task_s.append(time.perf_counter() - t0)

    def train_task(self, model, task, ctx):
        n0, t0 = ctx.samples_trained, time.perf_counter()
        self.inner.train_task(model, task, ctx)
        steps = max((ctx.samples_trained - n0) / ctx.train.batch_size, 1.0)
        self.step_s.append((time.perf_counter() - t0) / steps)

    def after_task(self, model, task, ctx):
        t0 = time.perf_counter()
        self.inner.after_task(model, task, ctx)
        self.task_s[-1] += time.perf_counter() - t0

    def loss(self, model, batch, task, ctx):
        return self.inner.loss(model, batch, task, ctx)

    def predict(self, model, x, t, ctx):
        return self.inner.predict(model, x, t, ctx)


def stream_for(scenario: str, num_tasks: int, cache: dict) -> TaskStream:
    key = (scenario, num_tasks)
    if key not in cache:
        cache[key] = make_stream(StreamConfig(
            dataset="digits", kind="permuted", scenario=scenario, num_tasks=num_tasks))
    return cache[key]


def run_once(name: str, stream: TaskStream, train: TrainConfig) -> Timed:
    model: nn.Module = build_model(
        ModelConfig(hidden=(100, 100)), stream.input_shape, stream.num_classes, seed=0
    )
    timed = Timed(make_strategy(name))
    run = LifelongRun(stream, model, timed, train, seed=0)
    while not run.done:
        run.learn_next()
    if run.status != "ok":
        raise RuntimeError(f"run {run.status}: {run.error}")
    return timed


def _timeout(signum, frame):
    raise TimeoutError(f"over {PROBE_S} s")


def probe(name: str, train: TrainConfig, streams: dict) -> tuple[str, Timed, float]:
    """Run ``name`` on a ``PROBE_TASKS``-task stream of its first supported scenario."""
    errors = []
    for scenario in [s for s in SCENARIOS if s in strategy_class(name).scenarios]:
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(PROBE_S)
        try:
            t0 = time.perf_counter()
            timed = run_once(name, stream_for(scenario, PROBE_TASKS, streams), train)
            return scenario, timed, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a benchmark reports and moves on
            errors.append(f"{scenario}: {type(e).__name__}: {e}"[:90])
        finally:
            signal.alarm(0)
    raise RuntimeError("; ".join(errors) or "no scenario")


def main() -> None:
    torch.set_num_threads(1)
    train = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR)
    streams: dict = {}
    plan: dict[str, str] = {}  # strategy -> scenario, timed on the TASKS-task stream
    early: dict[str, list[float]] = defaultdict(list)
    late: dict[str, list[float]] = defaultdict(list)
    per_task: dict[str, list[float]] = defaultdict(list)
    slow, skipped = set(), {}

    def record(key: str, timed: Timed) -> None:
        early[key].append(timed.step_s[1])
        late[key].append(timed.step_s[-1])
        per_task[key].append(statistics.median(timed.task_s[1:]))

    for name in strategy_names():  # probe (also the warm-up)
        try:
            scenario, timed, secs = probe(name, train, streams)
        except Exception as e:  # noqa: BLE001
            skipped[name] = str(e)
            continue
        if secs > FAST_S:  # too slow to repeat: keep the probe's own numbers
            slow.add(name)
            record(name, timed)
        plan[name] = scenario
    for scenario in set(plan.values()):  # naive on every scenario used, as the baseline
        if plan.get("naive") != scenario:
            plan[f"naive@{scenario}"] = scenario

    for _ in range(REPEATS):
        for key, scenario in list(plan.items()):
            if key in slow or key in skipped:
                continue
            try:
                timed = run_once(key.split("@")[0], stream_for(scenario, TASKS, streams), train)
            except Exception as e:  # noqa: BLE001 - e.g. a default config diverging
                skipped[key] = f"{scenario}, {TASKS} tasks: {type(e).__name__}: {e}"[:100]
                continue
            record(key, timed)
    for key in skipped:
        plan.pop(key, None)

    med = lambda d, k: statistics.median(d[k])  # noqa: E731
    print(f"per-step training time relative to naive on the same stream: permuted digits, "
          f"{TASKS} tasks, MLP 64-100-100-10, batch {BATCH}, {EPOCHS} epochs, 1 thread, "
          f"median of {REPEATS}")
    print(f"{'strategy':>18} {'scenario':>8} {'task 2 (us)':>12} {'x naive':>8} "
          f"{'last (us)':>10} {'x naive':>8} {'growth':>7} {'per task (ms)':>14}")
    for key, scenario in sorted(plan.items(), key=lambda kv: (kv[1], kv[0])):
        if "@" in key:
            continue
        base = "naive" if plan.get("naive") == scenario else f"naive@{scenario}"
        e, l_ = med(early, key), med(late, key)
        flag = "  *" if key in slow else ""
        print(f"{key:>18} {scenario:>8} {e * 1e6:12.1f} {e / med(early, base):8.2f} "
              f"{l_ * 1e6:10.1f} {l_ / med(late, base):8.2f} {l_ / e:7.2f} "
              f"{med(per_task, key) * 1e3:14.1f}{flag}")
    for name, why in skipped.items():
        print(f"{name:>18} skipped ({why})")
    if slow:
        print(f"* over {FAST_S} s per {PROBE_TASKS}-task run: one run of {PROBE_TASKS} tasks "
              f"(last = task {PROBE_TASKS}), not repeated")
    print("target: replay, agem and derpp growth (last task / task 2) <= 1.2")


if __name__ == "__main__":
    main()
