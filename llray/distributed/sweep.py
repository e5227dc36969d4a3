"""The sweep driver: many lifelong runs on Ray actors, results written as runs finish.

The driver puts the stream into the object store once; every actor receives the same
reference. At most ``max_in_flight`` actors exist at a time (``ray.wait`` backpressure),
so a sweep of thousands of runs does not submit everything at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from llray.config import RunSpec
from llray.data import TaskStream
from llray.distributed.actor import LearnerActor
from llray.learner import RunResult
from llray.results import RunMeta, write_run


@dataclass
class Finished:
    """A finished run: its spec, result and UTC start/finish times."""

    spec: RunSpec
    result: RunResult
    started_at: Any
    finished_at: Any


@dataclass
class _Active:
    spec: RunSpec
    actor: Any
    steps: int = 0
    rows: list[np.ndarray] = field(default_factory=list)


def meta_for(spec: RunSpec, started_at: Any, finished_at: Any, stream: TaskStream) -> RunMeta:
    """The results-store metadata of a finished run."""
    return RunMeta(
        run_id=spec.run_id,
        experiment=spec.experiment,
        strategy=spec.strategy.display,
        benchmark=stream.benchmark,
        scenario=stream.scenario,
        seed=spec.seed,
        order=spec.order,
        config=spec.config_dict(),
        started_at=started_at,
        finished_at=finished_at,
    )


def default_in_flight(spec: RunSpec) -> int:
    """Twice as many actors as the cluster's CPUs can hold at once (at least 1)."""
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(2 * cpus / spec.resources.num_cpus))


def run_sweep(
    specs: Sequence[RunSpec],
    stream: TaskStream,
    output: str | None,
    max_in_flight: int | None = None,
    on_task: Callable[[RunSpec, int], None] | None = None,
    on_run: Callable[[Finished], None] | None = None,
) -> list[Finished]:
    """Run every spec on its own :class:`LearnerActor`; write each run when it finishes.

    Args:
        specs: the runs (all on ``stream``).
        stream: the task stream, put into the object store once.
        output: results directory (``None``: do not write).
        max_in_flight: actors alive at once (default: twice the cluster's CPU slots).
        on_task: called with (spec, step) after every learned task (progress bars).
        on_run: called with each :class:`Finished` run.
    """
    if not specs:
        return []
    stream_ref = ray.put(stream)
    limit = max_in_flight or default_in_flight(specs[0])
    pending = deque(specs)
    active: dict[ray.ObjectRef, _Active] = {}
    finished: list[Finished] = []
    while pending or active:
        while pending and len(active) < limit:
            spec = pending.popleft()
            actor = LearnerActor.options(
                num_cpus=spec.resources.num_cpus, num_gpus=spec.resources.num_gpus
            ).remote(spec, stream_ref)
            active[actor.start.remote()] = _Active(spec, actor)
        ready, _ = ray.wait(list(active), num_returns=1)
        for ref in ready:
            state = active.pop(ref)
            step, _row, status = ray.get(ref)
            if step > 0 and on_task is not None:
                on_task(state.spec, step)
            if status == "ok" and step < len(state.spec.order):
                active[state.actor.learn_next.remote()] = state
                continue
            result, started_at, finished_at = ray.get(state.actor.result.remote())
            ray.kill(state.actor)
            done = Finished(state.spec, result, started_at, finished_at)
            if output is not None:
                write_run(output, meta_for(state.spec, started_at, finished_at, stream), result)
            if on_run is not None:
                on_run(done)
            finished.append(done)
    return finished
