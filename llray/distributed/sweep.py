"""The sweep driver: many lifelong runs on Ray actors, results written as runs finish.

The driver puts the stream's tasks into the object store once
(:func:`~llray.distributed.streaming.put_stream`); every actor gets the same references.
At most ``max_in_flight`` runs are in flight at a time, each on its own
:class:`~llray.distributed.actor.LearnerActor` (``ray.wait`` backpressure), so a sweep of
thousands of runs does not submit everything at once. An actor whose run has finished
takes the next waiting run, so a Python process and torch are started once per slot,
not once per run. Each run's rows are written to the Parquet store the moment it
finishes.

When an actor or its node dies (:class:`ray.exceptions.RayActorError` and friends), the
driver starts a new actor for the run, which Ray places wherever resources are free,
and it continues from the run's last checkpoint; a run gets ``max_retries`` such
restarts, then it is written with status ``"failed"``. A Python error inside the
learning code is not retried (it would happen again) and fails the run at once.

Example:
    finished = run_sweep(cfg.runs(), make_stream(cfg.stream), "results/x",
                         SweepOptions(checkpoint="results/x/checkpoints"))
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import ray
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from llray.config import RunSpec
from llray.data import TaskStream
from llray.distributed.actor import LearnerActor
from llray.distributed.checkpoint import CheckpointStore, resolve
from llray.distributed.streaming import StreamHandle, put_stream
from llray.experiment import utc_now
from llray.learner import RunResult
from llray.results import RunMeta, write_run

# The actor, its worker process or its node went away: restart from the checkpoint.
LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)


@dataclass(frozen=True)
class SweepOptions:
    """How the driver runs a sweep.

    Attributes:
        checkpoint: where actors checkpoint after each task (plain path or pyarrow.fs
            URI; None: no checkpoints, a restarted run starts over).
        max_retries: restarts of a run whose actor or node died.
        resume: start each run from its checkpoint when one exists (``--resume``);
            restarts after a failure always do.
        max_in_flight: runs (and actors) in flight at once (default:
            :func:`default_in_flight`).
        keep_checkpoints: keep a run's checkpoint after its results are written.
        reuse_actors: give a finished run's actor the next waiting run.
        prefetch: queue a run's next task on its actor while the current one trains,
            so the actor never waits for the driver between tasks. Then ``on_task`` for
            step k may run while the actor already learns task k+1.
    """

    checkpoint: str | None = None
    max_retries: int = 3
    resume: bool = False
    max_in_flight: int | None = None
    keep_checkpoints: bool = False
    reuse_actors: bool = True
    prefetch: bool = True


@dataclass
class Attempt:
    """One actor's share of a run: where it ran and what it did."""

    node_id: str = ""
    device: str = ""
    resumed_from: int = 0  # tasks restored from the checkpoint when it started
    trained: int = 0  # tasks it learned
    error: str | None = None  # why it ended early, if it did
    info: dict[str, Any] = field(default_factory=dict)  # LearnerActor.info() at load
    ended: float = 0.0  # unix time the driver was done with the actor for this run


@dataclass(frozen=True)
class TaskEvent:
    """Sent to ``on_task`` after every learned task (driver side)."""

    spec: RunSpec
    step: int  # tasks of the order learned so far (1..T)
    row: np.ndarray  # the new R row
    attempt: int  # 0 for the first actor of this run, 1 after one restart, ...
    node_id: str
    actor: Any  # the run's live LearnerActor handle


@dataclass
class Finished:
    """A finished run: its spec, result, UTC start/finish times and its actors' attempts."""

    spec: RunSpec
    result: RunResult
    started_at: datetime
    finished_at: datetime
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def tasks_trained(self) -> int:
        """Tasks learned in this sweep, over all attempts (less than T after a resume)."""
        return sum(a.trained for a in self.attempts)


@dataclass
class _Run:
    spec: RunSpec
    attempts: list[Attempt] = field(default_factory=list)
    actor: Any = None
    calls: list[ray.ObjectRef] = field(default_factory=list)  # submitted, not yet handled
    next_step: int = 0  # the step the next learn_next call will reach


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
    """Twice the runs the cluster's CPUs and GPUs hold at once now, and at least 8.

    Runs beyond what fits wait for resources; on an autoscaling cluster they are the
    demand that makes the autoscaler add nodes.
    """
    res = ray.cluster_resources()
    fit = res.get("CPU", 1.0) / spec.resources.num_cpus
    if spec.resources.num_gpus > 0:
        fit = min(fit, res.get("GPU", 0.0) / spec.resources.num_gpus)
    return max(8, int(2 * fit))


def run_sweep(
    specs: Sequence[RunSpec],
    stream: TaskStream,
    output: str | None,
    options: SweepOptions | None = None,
    on_task: Callable[[TaskEvent], None] | None = None,
    on_run: Callable[[Finished], None] | None = None,
) -> list[Finished]:
    """Run every spec on a :class:`LearnerActor`; write each run when it finishes.

    Args:
        specs: the runs (all on ``stream``, all asking for the same resources).
        stream: the task stream, put into the object store once.
        output: results directory (``None``: do not write).
        options: checkpoints, retries, resume, backpressure (:class:`SweepOptions`).
        on_task: called with a :class:`TaskEvent` after every learned task.
        on_run: called with each :class:`Finished` run, after its rows are written.

    Returns:
        The finished runs in the order they finished. If the driver stops early (an
        exception, Ctrl-C), the actors still alive are killed; their runs' checkpoints
        stay, for ``resume=True``.
    """
    if not specs:
        return []
    if specs[0].resources.pack > 1:  # K runs per actor, as one batched model
        from llray.packs.sweep import run_packed

        return run_packed(specs, stream, output, options, on_task, on_run)
    return _Sweep(list(specs), stream, output, options or SweepOptions(), on_task, on_run).run()


class _Sweep:
    def __init__(self, specs, stream, output, options, on_task, on_run) -> None:
        self.stream, self.output, self.opt = stream, output, options
        self.on_task, self.on_run = on_task, on_run
        self.pending = deque(_Run(s) for s in specs)
        self.resources = specs[0].resources
        assert all(s.resources == self.resources for s in specs), "one resource shape"
        self.store = CheckpointStore(resolve(options.checkpoint)) if options.checkpoint else None
        self.handle: StreamHandle | None = None
        self.active: dict[ray.ObjectRef, tuple[_Run, str]] = {}  # call -> run, kind
        self.running: set[int] = set()  # id() of the runs in flight
        self.finished: list[Finished] = []

    def run(self) -> list[Finished]:
        self.handle = put_stream(self.stream)
        limit = self.opt.max_in_flight or default_in_flight(self.pending[0].spec)
        try:
            while self.pending or self.active:
                while self.pending and len(self.running) < limit:
                    self._launch(self.pending.popleft(), actor=None)
                [ref], _ = ray.wait(list(self.active), num_returns=1)
                r, kind = self.active.pop(ref)
                r.calls.remove(ref)
                try:
                    self._handle(ref, r, kind)
                except BaseException:  # a callback raised, or Ctrl-C: stop this one too
                    _kill(r.actor, r.attempts[-1])
                    raise
        finally:
            for r, _ in self.active.values():
                _kill(r.actor, r.attempts[-1])
            self.active.clear()
        return self.finished

    def _call(self, r: _Run, kind: str, ref: ray.ObjectRef) -> None:
        r.calls.append(ref)
        self.active[ref] = (r, kind)

    def _drop_calls(self, r: _Run) -> None:
        """Forget ``r``'s outstanding calls (a dead actor's, or no-ops after the end)."""
        for ref in r.calls:
            self.active.pop(ref, None)
        r.calls.clear()

    def _new_actor(self) -> Any:
        res = self.resources
        return LearnerActor.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
            self.handle, self.store)

    def _launch(self, r: _Run, actor: Any) -> None:
        """Load ``r`` on ``actor`` (a new one if None); a retried run resumes."""
        self.running.add(id(r))
        resume = self.opt.resume or bool(r.attempts)
        r.attempts.append(Attempt())
        r.actor = actor if actor is not None else self._new_actor()
        self._call(r, "load", r.actor.load.remote(r.spec, resume))

    def _feed(self, r: _Run) -> None:
        """Keep one learn_next call running (and, with prefetch, one queued) on r's actor."""
        depth = 2 if self.opt.prefetch else 1
        while r.next_step < len(r.spec.order) and len(r.calls) < depth:
            self._call(r, "learn", r.actor.learn_next.remote())
            r.next_step += 1

    def _handle(self, ref: ray.ObjectRef, r: _Run, kind: str) -> None:
        """One call of ``r``'s actor returned (or its actor died): take the next step."""
        attempt = r.attempts[-1]
        try:
            out = ray.get(ref)
        except LOST as e:
            attempt.error = f"{type(e).__name__}: {e}"
            if isinstance(e, RayActorError) and e.actor_init_failed:
                return self._fail(r)  # reading the stream raised: it would raise again
            return self._restart(r)
        except RayTaskError as e:  # the learning code raised: retrying would not help
            attempt.error = f"{type(e).__name__}: {e}"
            return self._fail(r)
        if kind == "result":
            return self._complete(r, *out)
        if kind == "load":
            (step, row, status), info = out
            attempt.node_id, attempt.device = info["node_id"], info["device"]
            attempt.resumed_from, attempt.info = info["resumed_from"], info
            r.next_step = step
        else:
            step, row, status = out
            if status == "ok":
                attempt.trained += 1
                if self.on_task is not None:
                    self.on_task(TaskEvent(r.spec, step, row, len(r.attempts) - 1,
                                           attempt.node_id, r.actor))
        if status == "ok" and step < len(r.spec.order):
            self._feed(r)
        else:
            self._drop_calls(r)  # a queued call after a divergence is a no-op
            self._call(r, "result", r.actor.result.remote())

    def _restart(self, r: _Run) -> None:
        self._drop_calls(r)
        _kill(r.actor, r.attempts[-1])
        if len(r.attempts) > self.opt.max_retries:
            return self._fail(r)
        self._launch(r, actor=None)

    def _complete(self, r: _Run, result: RunResult, started_at: datetime,
                  finished_at: datetime) -> None:
        r.attempts[-1].ended = time.time()
        self.running.discard(id(r))
        actor, r.actor = r.actor, None
        if self.pending and self.opt.reuse_actors:
            self._launch(self.pending.popleft(), actor)  # the next run, same actor
        else:
            _kill(actor, r.attempts[-1])
        self._record(Finished(r.spec, result, started_at, finished_at, r.attempts))
        if self.store is not None and not self.opt.keep_checkpoints:
            self.store.delete(r.spec.run_id)

    def _fail(self, r: _Run) -> None:
        """Record a run that cannot finish: status "failed", R all NaN, the last error."""
        self._drop_calls(r)
        self.running.discard(id(r))
        _kill(r.actor, r.attempts[-1])
        T = len(r.spec.order)
        now = utc_now()
        result = RunResult(
            R=np.full((T + 1, T), np.nan), order=r.spec.order, status="failed",
            n_test=np.zeros(T, dtype=np.int64), wall_s=0.0, train_s=0.0, samples_trained=0,
            error=r.attempts[-1].error,
        )
        self._record(Finished(r.spec, result, now, now, r.attempts))

    def _record(self, done: Finished) -> None:
        if self.output is not None:
            meta = meta_for(done.spec, done.started_at, done.finished_at, self.stream)
            write_run(self.output, meta, done.result)
        self.finished.append(done)
        if self.on_run is not None:
            self.on_run(done)


def _kill(actor: Any, attempt: Attempt) -> None:
    attempt.ended = attempt.ended or time.time()
    if actor is None:
        return
    try:
        ray.kill(actor, no_restart=True)
    except (RayActorError, ValueError):  # already gone
        pass
