"""The sweep driver: many lifelong runs on Ray actors, results written as runs finish.

The driver puts the stream's tasks into the object store once
(:func:`~llray.distributed.streaming.put_stream`); every actor gets the same references.

**Slots.** The runs in flight are what the cluster can run now: one *slot* per run that
fits on the alive nodes (:func:`~llray.distributed.capacity.fit`, capped by
``max_in_flight``). A slot is one :class:`~llray.distributed.actor.LearnerActor`, a
Python process started once that warms up (torch, its optimizer machinery) while Ray
places the others, then hosts run after run until no run is left for it; runs that do
not fit wait in the driver, not as pending actors with processes of their own. A free
slot takes the waiting run expected to take longest
(:class:`~llray.distributed.queue.LongestFirst`), so short runs fill the sweep's end.
Each run's rows are written to the Parquet store the moment it finishes.

**Capacity and waiting.** The driver re-reads the alive nodes every ``poll_s`` seconds
and opens slots when nodes join. On a cluster that cannot grow (``fixed_cluster``: the
embedded local Ray) a run no node can hold is a :class:`~llray.errors.ConfigError`
before any work. On a real cluster the driver states its demand to the autoscaler
(``ray.autoscaler.sdk.request_resources``: room for the runs in flight and waiting,
withdrawn when the sweep ends) and, while nothing moves for ``wait_message_s`` and runs
wait for room, says on stderr what they wait for and what the cluster has.

**Failures.** When an actor or its node dies (:class:`ray.exceptions.RayActorError` and
friends), the slot gets a new actor, which Ray places wherever resources are free, and
the run continues from its last checkpoint; a run gets ``max_retries`` such restarts,
then it is written with status ``"failed"``. A Python error inside the learning code is
not retried (it would happen again): the run fails at once with the error as its
reason (:attr:`RunResult.error`), and the slot's healthy process takes the next run.

Example:
    finished = run_sweep(cfg.runs(), make_stream(cfg.stream), "results/x",
                         SweepOptions(checkpoint="results/x/checkpoints"))
"""

from __future__ import annotations

import math
import sys
import time
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
from llray.errors import ConfigError
from llray.distributed import capacity
from llray.distributed.actor import LearnerActor
from llray.distributed.checkpoint import CheckpointStore, resolve
from llray.distributed.queue import LongestFirst
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
        max_in_flight: at most this many runs (slots, learner processes) at once
            (default: as many as the alive nodes fit now).
        keep_checkpoints: keep a run's checkpoint after its results are written.
        prefetch: queue a run's next task on its actor while the current one trains,
            so the actor never waits for the driver between tasks. Then ``on_task`` for
            step k may run while the actor already learns task k+1.
        fixed_cluster: the cluster cannot grow (the embedded local Ray): a run that no
            node can hold is a :class:`ConfigError` before any work, and no demand is
            stated to an autoscaler.
        poll_s: how often the driver re-reads the cluster's nodes while it waits.
        wait_message_s: while runs wait for room and nothing has moved for this long,
            say on stderr what they wait for (and again after each such period).
    """

    checkpoint: str | None = None
    max_retries: int = 3
    resume: bool = False
    max_in_flight: int | None = None
    keep_checkpoints: bool = False
    prefetch: bool = True
    fixed_cluster: bool = False
    poll_s: float = 5.0
    wait_message_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {self.max_retries}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("--max-in-flight", f"must be >= 1, got {self.max_in_flight}")
        if not (self.poll_s > 0 and self.wait_message_s > 0):
            raise ConfigError("poll_s", "poll_s and wait_message_s must be > 0")


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
class _Slot:
    """One learner process in flight: it hosts one run at a time, run after run."""

    actor: Any
    created: float = field(default_factory=time.monotonic)
    placed: bool = False  # the actor has answered once: Ray placed and started it
    run: _Run | None = None


@dataclass
class _Run:
    spec: RunSpec
    attempts: list[Attempt] = field(default_factory=list)
    slot: _Slot | None = None
    calls: list[ray.ObjectRef] = field(default_factory=list)  # submitted, not yet handled
    next_step: int = 0  # the step the next learn_next call will reach

    @property
    def actor(self) -> Any:
        return self.slot.actor if self.slot is not None else None


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


def run_name(spec: RunSpec) -> str:
    """How messages name a run: strategy, seed, order and the start of its run id."""
    order = ",".join(map(str, spec.order))
    return f"{spec.strategy.display} seed={spec.seed} order=[{order}] ({spec.run_id[:12]})"


def failure_lines(finished: Sequence[Finished]) -> list[str]:
    """One line per failed run: its name and why it failed (for the end of a sweep)."""
    return [f"run {run_name(f.spec)} failed: {f.result.error or 'no reason recorded'}"
            for f in finished if f.result.status == "failed"]


def in_flight_limit(shape: capacity.Shape, nodes: Sequence[dict[str, float]],
                    max_in_flight: int | None = None) -> int:
    """Runs of ``shape`` to keep in flight: what ``nodes`` fit now, at most ``max_in_flight``.

    Example:
        >>> in_flight_limit({"CPU": 1.0}, [{"CPU": 2.0}])
        2
        >>> in_flight_limit({"CPU": 1.0}, [{"CPU": 8.0}], max_in_flight=3)
        3
    """
    fit = capacity.fit(shape, nodes)
    return min(fit, max_in_flight) if max_in_flight is not None else fit


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
        options: checkpoints, retries, resume, in-flight cap (:class:`SweepOptions`).
        on_task: called with a :class:`TaskEvent` after every learned task.
        on_run: called with each :class:`Finished` run, after its rows are written.

    Returns:
        The finished runs in the order they finished. If the driver stops early (an
        exception, Ctrl-C), the actors still alive are killed; their runs' checkpoints
        stay, for ``resume=True``.

    Raises:
        ConfigError: ``options.fixed_cluster`` and no node can hold one run (the
            resource is named); raised before anything is put or started.
    """
    if not specs:
        return []
    if specs[0].resources.pack > 1:  # K runs per actor, as one batched model
        from llray.packs.sweep import run_packed

        return run_packed(specs, stream, output, options, on_task, on_run)
    return _Sweep(list(specs), stream, output, options or SweepOptions(), on_task, on_run).run()


def check_fits(shape: capacity.Shape, nodes: Sequence[dict[str, float]]) -> None:
    """Raise :class:`ConfigError` (naming the field) when no node can hold ``shape``."""
    problem = capacity.unsatisfiable(shape, nodes)
    if problem is not None:
        field_name, _, message = problem.partition(": ")
        raise ConfigError(field_name, message)


class _Sweep:
    """The run/launch/handle loop over slots (see the module docstring)."""

    def __init__(self, specs, stream, output, options, on_task, on_run) -> None:
        self.stream, self.output, self.opt = stream, output, options
        self.on_task, self.on_run = on_task, on_run
        self.pending = LongestFirst((_Run(s) for s in specs), key=_kind)
        self.resources = specs[0].resources
        assert all(s.resources == self.resources for s in specs), "one resource shape"
        self.shape = capacity.shape_of(self.resources)
        self.store = CheckpointStore(resolve(options.checkpoint)) if options.checkpoint else None
        self.handle: StreamHandle | None = None
        self.active: dict[ray.ObjectRef, tuple[_Run, str]] = {}  # call -> run, kind
        self.slots: list[_Slot] = []  # every live slot; a slot's run is None only briefly
        self.finished: list[Finished] = []
        self.limit = 0
        self.polled = -math.inf  # monotonic time the nodes were last read
        self.moved = time.monotonic()  # last time a call returned or a slot opened
        self.told = time.monotonic()  # last wait message (or the start)
        self.demand = 0  # slots last requested from the autoscaler

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> list[Finished]:
        self._poll(force=True)
        self.handle = put_stream(self.stream)
        try:
            while self.pending or self.active:
                self._poll()
                self._fill()
                if not self.active:  # nothing fits now: wait for nodes
                    self._waiting()
                    time.sleep(min(self.opt.poll_s, 1.0))
                    continue
                ready, _ = ray.wait(list(self.active), num_returns=1,
                                    timeout=min(self.opt.poll_s, self.opt.wait_message_s))
                if not ready:
                    self._waiting()
                    continue
                self.moved = time.monotonic()
                r, kind = self.active.pop(ready[0])
                r.calls.remove(ready[0])
                try:
                    self._handle(ready[0], r, kind)
                except BaseException:  # a callback raised, or Ctrl-C: stop this one too
                    self._close(r.slot, r.attempts[-1])
                    raise
        finally:
            for slot in list(self.slots):
                self._close(slot, slot.run.attempts[-1] if slot.run and slot.run.attempts
                            else Attempt())
            self.active.clear()
            if self.demand:
                capacity.request_demand(self.shape, 0)
        return self.finished

    def _poll(self, force: bool = False) -> None:
        """Re-read the alive nodes (every ``poll_s``): the in-flight limit and demand."""
        now = time.monotonic()
        if not force and now - self.polled < self.opt.poll_s:
            return
        self.polled = now
        self.nodes = capacity.alive_nodes()
        if force and self.opt.fixed_cluster:
            check_fits(self.shape, self.nodes)
        self.limit = in_flight_limit(self.shape, self.nodes, self.opt.max_in_flight)
        if not self.opt.fixed_cluster:
            want = len(self.pending) + sum(1 for s in self.slots if s.run is not None)
            if self.opt.max_in_flight is not None:
                want = min(want, self.opt.max_in_flight)
            demand = want if want > self.limit else 0  # ask only for room that is missing
            if demand != self.demand:
                self.demand = demand
                capacity.request_demand(self.shape, demand)

    def _fill(self) -> None:
        """Open slots for waiting runs while the cluster has room for them."""
        while self.pending and len(self.slots) < self.limit:
            slot = _Slot(self._new_actor())
            self.slots.append(slot)
            self._launch(self.pending.popleft(), slot)
            self.moved = time.monotonic()

    def _waiting(self) -> None:
        """Say what the sweep waits for, when runs wait for room and nothing moved."""
        now = time.monotonic()
        unplaced = [s for s in self.slots if not s.placed]
        if not (self.pending or unplaced) or now - max(self.moved, self.told) < \
                self.opt.wait_message_s:
            return
        self.told = now
        print(capacity.waiting_message(self.shape, len(self.pending) + len(unplaced),
                                       len(self.slots) - len(unplaced), now - self.moved,
                                       bool(self.demand)), file=sys.stderr, flush=True)

    # -- one run on one slot -------------------------------------------------------------
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

    def _launch(self, r: _Run, slot: _Slot) -> None:
        """Load ``r`` on ``slot``'s actor; a retried run resumes from its checkpoint."""
        resume = self.opt.resume or bool(r.attempts)
        r.attempts.append(Attempt())
        r.slot, slot.run = slot, r
        r.next_step = 0
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
                return self._fail(r, _reason(e), healthy=False)  # it would fail again
            return self._restart(r)
        except RayTaskError as e:  # the learning code raised: retrying would not help
            attempt.error = f"{type(e).__name__}: {e}"
            return self._fail(r, _reason(e), healthy=True)
        r.slot.placed = True
        if kind == "result":
            return self._complete(r, *out)
        if kind == "load":
            (step, row, status), info = out
            attempt.node_id, attempt.device = info["node_id"], info["device"]
            attempt.resumed_from, attempt.info = info["resumed_from"], info
            r.next_step = step
            if info.get("checkpoint_problem"):
                print(f"llray: warning: run {run_name(r.spec)}: {info['checkpoint_problem']}",
                      file=sys.stderr, flush=True)
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
        """``r``'s actor died: its slot gets a new actor, and ``r`` resumes there."""
        self._drop_calls(r)
        slot = r.slot
        _kill(slot.actor, r.attempts[-1])
        if len(r.attempts) > self.opt.max_retries:
            reason = (f"its actor died {len(r.attempts)} times (max_retries "
                      f"{self.opt.max_retries}); last: {_one_line(r.attempts[-1].error)}")
            return self._fail(r, reason, healthy=False)
        slot.actor, slot.placed = self._new_actor(), False
        self._launch(r, slot)

    def _complete(self, r: _Run, result: RunResult, started_at: datetime,
                  finished_at: datetime) -> None:
        r.attempts[-1].ended = time.time()
        if result.status == "ok":
            self.pending.finished(r, result.wall_s)  # the estimate for runs of its kind
        self._next_run(r)
        self._record(Finished(r.spec, result, started_at, finished_at, r.attempts))
        if self.store is not None and not self.opt.keep_checkpoints:
            self.store.delete(r.spec.run_id)

    def _next_run(self, r: _Run, healthy: bool = True) -> None:
        """``r`` is done with its slot: the slot takes the next waiting run, or closes."""
        slot, r.slot = r.slot, None
        slot.run = None
        if healthy and self.pending and len(self.slots) <= self.limit:
            self._launch(self.pending.popleft(), slot)  # the next run, same process
        else:
            self._close(slot, r.attempts[-1])

    def _fail(self, r: _Run, reason: str, healthy: bool) -> None:
        """Record a run that cannot finish: status "failed", R all NaN, the reason."""
        self._drop_calls(r)  # a healthy actor's queued calls for r only report r's state
        self._next_run(r, healthy)
        T = len(r.spec.order)
        now = utc_now()
        result = RunResult(
            R=np.full((T + 1, T), np.nan), order=r.spec.order, status="failed",
            n_test=np.zeros(T, dtype=np.int64), wall_s=0.0, train_s=0.0, samples_trained=0,
            error=reason,
        )
        self._record(Finished(r.spec, result, now, now, r.attempts))

    def _close(self, slot: _Slot | None, attempt: Attempt) -> None:
        """Kill ``slot``'s actor and forget the slot."""
        if slot is None:
            return
        _kill(slot.actor, attempt)
        if slot in self.slots:
            self.slots.remove(slot)

    def _record(self, done: Finished) -> None:
        if self.output is not None:
            meta = meta_for(done.spec, done.started_at, done.finished_at, self.stream)
            write_run(self.output, meta, done.result)
        self.finished.append(done)
        if self.on_run is not None:
            self.on_run(done)


def _kind(r: _Run) -> str:
    """Runs of one kind differ only in seed and order, and cost about the same."""
    return repr((r.spec.model, r.spec.train, r.spec.strategy))


def _reason(e: BaseException) -> str:
    """One line on why a call failed: the learning code's own exception when there is one."""
    cause = getattr(e, "cause", None)
    if isinstance(e, RayActorError) and e.actor_init_failed:
        return f"the learner actor could not start: {_one_line(str(e))}"
    if cause is not None:
        return f"{type(cause).__name__}: {_one_line(str(cause))}"
    return f"{type(e).__name__}: {_one_line(str(e))}"


def _one_line(text: str | None, limit: int = 1000) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _kill(actor: Any, attempt: Attempt) -> None:
    attempt.ended = attempt.ended or time.time()
    if actor is None:
        return
    try:
        ray.kill(actor, no_restart=True)
    except (RayActorError, ValueError):  # already gone
        pass
