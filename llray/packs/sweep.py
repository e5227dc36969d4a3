"""The sweep driver for ``resources: {pack: K}``: one actor trains a pack of K runs.

:func:`run_packed` groups the grid (:func:`~llray.packs.grouping.group_packs`) and runs
each pack on a :class:`PackActor`, which asks Ray for the config's ``num_cpus`` /
``num_gpus`` once for the whole pack and learns one task of every run's order per call.
A pack of one (a strategy without a pack version, or a leftover run) is an ordinary
:class:`~llray.learner.LifelongRun` on the same kind of actor.

Everything downstream is per run: after each task the actor writes one checkpoint per
run, in the format of :class:`~llray.distributed.actor.LearnerActor` (a run of a pack
can resume unpacked and the other way round); each run's rows are written to the
Parquet store with its own run_id when the pack finishes; ``on_task`` and ``on_run``
see one event per run. When a pack's actor or node dies, the driver starts the pack
again on a new actor, from its runs' checkpoints (a pack whose checkpoints disagree
on the step starts over), up to ``max_retries`` times; then its runs are ``failed``.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from llray.config import RunSpec
from llray.distributed.actor import pick_device, set_threads, warm
from llray.distributed.checkpoint import CheckpointStore
from llray.distributed.streaming import StreamHandle, get_stream
from llray.distributed.sweep import (
    LOST, Attempt, Finished, SweepOptions, TaskEvent, _reason, _Run, _Sweep, run_name,
)
from llray.experiment import build_run, utc_now
from llray.learner import LifelongRun, RunResult
from llray.packs.grouping import group_packs
from llray.packs.malloc import keep_large_blocks
from llray.packs.run import PackRun, build_pack
from llray.packs.strategies import PACKED

Event = tuple[int, int, np.ndarray, str]  # (member, step, R row, status)


class SingleRun:
    """A pack of one: a plain :class:`LifelongRun` behind :class:`PackRun`'s interface
    (so a pack of one is exactly the unpacked path)."""

    def __init__(self, run: LifelongRun) -> None:
        self.members = [run]

    @property
    def done(self) -> bool:
        return self.members[0].done

    @property
    def step(self) -> int:
        return self.members[0].step

    def start(self) -> None:
        self.members[0].start()

    def learn_next(self) -> dict[int, np.ndarray]:
        row = self.members[0].learn_next()
        return {0: row} if self.members[0].status == "ok" else {}

    def state_dicts(self) -> list[dict]:
        return [self.members[0].state_dict()]

    def load_state_dicts(self, states: list[dict]) -> None:
        self.members[0].load_state_dict(states[0])

    def results(self, wall_s: float = 0.0) -> list[RunResult]:
        return [self.members[0].result(wall_s)]


@ray.remote
class PackActor:
    """Trains one pack at a time, a task of every run's order per call."""

    def __init__(self, stream: StreamHandle, store: CheckpointStore | None) -> None:
        self.threads = set_threads()
        self.malloc_tuned = keep_large_blocks()  # this process is the pack's own
        self.device = pick_device()
        self.warm_s = warm()
        self.stream = get_stream(stream).to(self.device)  # on the device once per actor
        self.store = store
        self.packs_hosted = 0

    def load(self, specs: list[RunSpec], resume: bool
             ) -> tuple[list[Event], dict[str, Any], bool]:
        """Build the pack (from its runs' checkpoints if ``resume`` and they agree)."""
        self.specs = specs
        self.pack = self._build()
        self.started_at: datetime = utc_now()
        self.wall_before = 0.0
        self.resumed_from, self.checkpoint_problem = 0, None
        if self.store is not None and resume:
            self._resume()
        if self.resumed_from == 0 and self.store is not None:
            for s in specs:
                self.store.delete(s.run_id)
        self.t0 = time.perf_counter()
        self.packs_hosted += 1
        self.pack.start()
        events = [(k, m.step, m.R[m.step], m.status) for k, m in enumerate(self.pack.members)]
        return events, self.info(), self.pack.done

    def _resume(self) -> None:
        """Restore every run from its checkpoint when all have one at a common step; a
        checkpoint that cannot be read is moved aside and the pack starts over."""
        states = []
        for spec in self.specs:
            try:
                state = self.store.load_run(spec.run_id)
            except Exception as e:  # noqa: BLE001 - any unreadable file: start over, say why
                where = self.store.quarantine(spec.run_id)
                self.checkpoint_problem = (f"checkpoint {self.store.path(spec.run_id)} could "
                                           f"not be read ({type(e).__name__}: {e}); moved to "
                                           f"{where}, the pack starts over")
                return
            states.append(state)
        if not all(s is not None for s in states):
            return  # some run has none: the pack starts over
        try:
            self.pack.load_state_dicts([s["run"] for s in states])
        except ValueError:  # checkpoints from different steps: start the pack over
            self.pack = self._build()
            return
        self.started_at = datetime.fromisoformat(states[0]["started_at"])
        self.wall_before = max(float(s["wall_s"]) for s in states)
        self.resumed_from = self.pack.step

    def _build(self) -> PackRun | SingleRun:
        if len(self.specs) == 1:
            return SingleRun(build_run(self.specs[0], self.stream, self.device))
        return build_pack(self.specs, self.stream, self.device)

    def info(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": self.device,
                "threads": self.threads, "resumed_from": self.resumed_from,
                "pid": os.getpid(), "runs": len(self.specs), "packs_hosted": self.packs_hosted,
                "warm_s": self.warm_s, "checkpoint_problem": self.checkpoint_problem}

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def learn_next(self) -> tuple[list[Event], bool]:
        """Every running member learns its next task; checkpoints all members first, then
        reports ``(member, step, row, status)`` for each that learned or diverged now, and
        whether the pack is done."""
        before = [m.status for m in self.pack.members]
        rows = self.pack.learn_next()
        if self.store is not None:
            wall, started = self._wall(), self.started_at.isoformat()
            for spec, state in zip(self.specs, self.pack.state_dicts()):
                self.store.save_run(spec.run_id, state, started, wall)
        out = [(k, self.pack.members[k].step, row, "ok") for k, row in rows.items()]
        for k, m in enumerate(self.pack.members):
            if before[k] == "ok" and m.status != "ok":
                out.append((k, m.step, m.R[m.step + 1], m.status))
        return out, self.pack.done

    def result(self) -> tuple[list[RunResult], datetime, datetime]:
        """Every run's result, with the pack's start and finish times; drops the pack."""
        out = self.pack.results(self._wall()), self.started_at, utc_now()
        self.pack = self.specs = None
        return out


@dataclass
class _Pack(_Run):
    """A pack in the sweep engine's place of a run: ``spec`` is its first run's."""

    specs: list[RunSpec] = field(default_factory=list)
    member_attempts: list[list[Attempt]] = field(default_factory=list)  # per run


def run_packed(specs, stream, output, options: SweepOptions | None = None,
               on_task=None, on_run=None) -> list[Finished]:
    """:func:`~llray.distributed.sweep.run_sweep` for ``resources.pack > 1`` (same
    arguments and result): the grid grouped into packs, one pack per slot."""
    options = options or SweepOptions()
    packs = group_packs(specs, specs[0].resources.pack)
    unpacked = sorted({p[0].strategy.name for p in packs if p[0].strategy.name not in PACKED})
    if unpacked:
        print(f"llray: {', '.join(unpacked)} have no pack version; their runs train unpacked",
              file=sys.stderr)
    return _PackSweep(packs, stream, output, options, on_task, on_run).run()


class _PackSweep(_Sweep):
    """The sweep engine's loop (slots, capacity, waits, restarts) with a pack per slot."""

    def __init__(self, packs, stream, output, options, on_task, on_run) -> None:
        super().__init__([p[0] for p in packs], stream, output, options, on_task, on_run)
        self.pending = deque(_Pack(p[0], specs=list(p), member_attempts=[[] for _ in p])
                             for p in packs)

    def _new_actor(self) -> Any:
        res = self.resources
        return PackActor.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
            self.handle, self.store)

    def _launch(self, r: _Pack, slot) -> None:
        resume = self.opt.resume or bool(r.attempts)
        r.attempts.append(Attempt())
        for a in r.member_attempts:
            a.append(Attempt())
        r.slot, slot.run = slot, r
        self._call(r, "load", r.actor.load.remote(r.specs, resume))

    def _handle(self, ref: ray.ObjectRef, r: _Pack, kind: str) -> None:
        try:
            out = ray.get(ref)
        except LOST as e:
            self._error(r, f"{type(e).__name__}: {e}")
            if isinstance(e, RayActorError) and e.actor_init_failed:
                return self._fail(r, _reason(e), healthy=False)
            return self._restart(r)
        except RayTaskError as e:
            self._error(r, f"{type(e).__name__}: {e}")
            return self._fail(r, _reason(e), healthy=True)
        r.slot.placed = True
        if kind == "result":
            return self._complete(r, *out)
        events, done = [], out[-1]
        if kind == "load":
            _, info, _ = out
            for a in [r.attempts, *r.member_attempts]:
                a[-1].node_id, a[-1].device, a[-1].info = info["node_id"], info["device"], info
                a[-1].resumed_from = info["resumed_from"]
            if info.get("checkpoint_problem"):
                print(f"llray: warning: pack of {run_name(r.spec)}: "
                      f"{info['checkpoint_problem']}", file=sys.stderr, flush=True)
        else:
            events = out[0]
            r.attempts[-1].trained += 1
        for k, step, row, status in events:
            if status != "ok":
                continue
            a = r.member_attempts[k][-1]
            a.trained += 1
            if self.on_task is not None:
                self.on_task(TaskEvent(r.specs[k], step, row, len(r.member_attempts[k]) - 1,
                                       a.node_id, r.actor))
        call = r.actor.result.remote() if done else r.actor.learn_next.remote()
        self._call(r, "result" if done else "learn", call)

    def _error(self, r: _Pack, msg: str) -> None:
        for a in [r.attempts, *r.member_attempts]:
            a[-1].error = msg

    def _complete(self, r: _Pack, results: list[RunResult], started: datetime,
                  finished: datetime) -> None:
        for a in [r.attempts, *r.member_attempts]:
            a[-1].ended = time.time()
        self._next_run(r)
        for spec, res, att in zip(r.specs, results, r.member_attempts):
            self._record(Finished(spec, res, started, finished, att))
            if self.store is not None and not self.opt.keep_checkpoints:
                self.store.delete(spec.run_id)

    def _fail(self, r: _Pack, reason: str, healthy: bool) -> None:
        self._drop_calls(r)
        self._next_run(r, healthy)
        now = utc_now()
        for spec, att in zip(r.specs, r.member_attempts):
            T = len(spec.order)
            res = RunResult(R=np.full((T + 1, T), np.nan), order=spec.order, status="failed",
                            n_test=np.zeros(T, dtype=np.int64), wall_s=0.0, train_s=0.0,
                            samples_trained=0, error=reason)
            self._record(Finished(spec, res, now, now, att))
