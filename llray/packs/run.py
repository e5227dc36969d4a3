"""``PackRun``: K lifelong runs of one stream, architecture and strategy, trained together.

Each run of a pack is a real :class:`~llray.learner.LifelongRun` (a *member*): its own
plain model, strategy instance, :class:`~llray.strategies.base.Context` (generators,
tasks seen), R, status and timings. The pack adds one :class:`PackedModel` holding all
members' weights with a leading run dimension and trains it with the pack version of
the strategy (:mod:`llray.packs.strategies`):

- every run draws its own batches from its own generator (``ctx.batches``, exactly the
  index batches it draws alone) and learns its own task of its own order;
- the pack's loss is the sum of the runs' losses; the runs' parameters are disjoint,
  so each gets exactly its own gradient; the optimizer takes each run's own
  hyperparameters (:mod:`llray.packs.optim`);
- the strategy's per-task hooks (Fisher, buffers, importances) run on each member with
  its plain model, the member's own code and generator;
- a run whose loss is not finite at the end of an epoch is recorded ``diverged`` and
  masked out of the pack; the others go on. The finite check is the only host
  synchronisation of an epoch.

Runs advance in lock-step: :meth:`learn_next` teaches every running member the next
task of its order. :meth:`state_dicts` returns one ordinary ``LifelongRun`` checkpoint
per run, so a run of a pack resumes on its own, in a pack or unpacked.

Example:
    >>> from llray.config import parse_config
    >>> specs = parse_config({"strategies": ["naive"], "seeds": [0, 1],
    ...                       "stream": {"num_tasks": 2}}).runs()
    >>> pack = build_pack(specs)
    >>> while not pack.done:
    ...     _ = pack.learn_next()
    >>> [r.R.shape for r in pack.results()]
    [(3, 2), (3, 2)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from llray.config import RunSpec
from llray.data import TaskStream, make_stream
from llray.experiment import build_run
from llray.learner import LifelongRun, RunResult
from llray.models import ModelConfig
from llray.packs.models import PackedModel
from llray.packs.strategies import make_pack_strategy


class PackRun:
    """Trains ``members`` (LifelongRuns of one stream, model config and strategy) as one.

    Args:
        members: the runs, freshly built (or restored with :meth:`load_state_dicts`).
        model_cfg: their common model config.
    """

    def __init__(self, members: Sequence[LifelongRun], model_cfg: ModelConfig) -> None:
        self.members = list(members)
        self.K = len(self.members)
        first = self.members[0]
        self.device = first.device
        self.T = len(first.order)
        self.model = PackedModel.from_models(model_cfg, [m.model for m in self.members])
        self.model.to(self.device)
        self.strategy = make_pack_strategy(self)

    # -- state -----------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Tasks learned by the runs still going (the pack's lock-step position)."""
        ok = [m.step for m in self.members if m.status == "ok"]
        return max(ok) if ok else max(m.step for m in self.members)

    @property
    def running(self) -> list[int]:
        """Indices of the members still learning."""
        return [k for k, m in enumerate(self.members) if not m.done]

    @property
    def done(self) -> bool:
        return not self.running

    def sync_to_members(self, runs: Sequence[int] | None = None) -> None:
        """Copy the pack's weights into the members' plain models."""
        for k in range(self.K) if runs is None else runs:
            self.model.copy_to(k, self.members[k].model)

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, runs: Sequence[int], split: str = "test") -> dict[int, np.ndarray]:
        """Accuracy of each run in ``runs`` on every task's ``split`` ("test" or "val"):
        ``{k: row of R (or of R_val)}``."""
        first = self.members[0]
        # a chunk's activations [K, bs, width] stay in cache (measured: 2048 per run at
        # K = 16 took 1.5x as long as 128)
        bs = min(first.ctx.train.eval_batch_size, max(16, 2048 // self.K))
        correct = torch.zeros(self.K, self.T, dtype=torch.long, device=self.device)
        for task in first.stream.tasks:
            x, y = task.split(split)
            for i in range(0, len(y), bs):
                out = self.strategy.predict(x[i : i + bs], task.id)  # [K, M, C]
                hit = out.argmax(-1) == y[i : i + bs]  # [K, M]
                correct[:, task.id] += hit.sum(1)
        c = correct.cpu().numpy()
        out = {}
        for k in runs:
            m = self.members[k]
            n = m.n_test if split == "test" else m.n_val
            out[k] = c[k, list(m.order)] / np.maximum(n, 1)
        return out

    def _fill_rows(self, runs: Sequence[int], step_of) -> dict[int, np.ndarray]:
        """Evaluate ``runs`` and write their R (and R_val) row ``step_of(member)``; the
        test rows."""
        if not runs:
            return {}  # (evaluating nobody would still run every task through the pack)
        rows = self.evaluate(runs)
        val = self.evaluate(runs, "val") if self.members[0].R_val is not None else {}
        for k, row in rows.items():
            m = self.members[k]
            m.R[step_of(m)] = row
            if k in val:
                m.R_val[step_of(m)] = val[k]
        return rows

    def start(self) -> None:
        """R row 0 of every member (the random init); idempotent."""
        todo = [k for k, m in enumerate(self.members) if not m._evaluated_init]
        self._fill_rows(todo, lambda m: 0)
        for k in todo:
            self.members[k]._evaluated_init = True

    # -- learning --------------------------------------------------------------------------
    def learn_next(self) -> dict[int, np.ndarray]:
        """Every running member learns the next task of its order; returns the new R rows
        of the members that learned it (a member that diverged gets none)."""
        assert not self.done, "pack is finished"
        self.start()
        runs = self.running
        tasks = {k: self.members[k].stream.tasks[self.members[k].order[self.members[k].step]]
                 for k in runs}
        t0 = time.perf_counter()
        self.sync_to_members(runs)
        self.strategy.before_task(runs, tasks)
        self.strategy.train_task(runs, tasks)
        ok = [k for k in runs if self.members[k].status == "ok"]
        self.sync_to_members(ok)
        self.strategy.after_task(ok, tasks)
        train_s = (time.perf_counter() - t0) / len(runs)  # the pack's time, shared out
        for k in runs:
            self.members[k].train_s += train_s
        for k in ok:
            m = self.members[k]
            m.ctx.seen.append(tasks[k])
            m.step += 1
        rows = self._fill_rows(ok, lambda m: m.step)
        per_run = (time.perf_counter() - t0) / len(runs)
        for k in rows:
            self.members[k].task_seconds.append(per_run)
        return rows

    def diverge(self, k: int, value: float) -> None:
        """Record member ``k`` as diverged (its R rows stay NaN) and mask it out."""
        m = self.members[k]
        m.status, m.error = "diverged", f"loss became {value}"
        with torch.no_grad():
            for p in self.model.parameters():
                p[k].zero_()  # no NaN left in the pack's tensors

    def results(self, wall_s: Sequence[float] | float = 0.0) -> list[RunResult]:
        walls = [wall_s] * self.K if isinstance(wall_s, (int, float)) else list(wall_s)
        return [m.result(wall_s=w) for m, w in zip(self.members, walls)]

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dicts(self) -> list[dict]:
        """One ``LifelongRun.state_dict()`` per member (loadable by a plain run too)."""
        self.sync_to_members()
        self.strategy.sync_members()
        return [m.state_dict() for m in self.members]

    def load_state_dicts(self, states: Sequence[dict | None]) -> None:
        """Restore members from their checkpoints (None: that member starts fresh).

        The running members must all be at the same step (lock-step); ValueError if not.
        """
        for k, (m, s) in enumerate(zip(self.members, states)):
            if s is not None:
                m.load_state_dict(s)
                self.model.copy_from(k, m.model)
        steps = {m.step for m in self.members if m.status == "ok"}
        if len(steps) > 1:
            raise ValueError(f"pack members' checkpoints are at different steps {sorted(steps)}")
        self.strategy.load_members()


def build_pack(
    specs: Sequence[RunSpec], stream: TaskStream | None = None, device: str = "cpu"
) -> PackRun:
    """A fresh :class:`PackRun` of ``specs`` (one stream, model and strategy name)."""
    first = specs[0]
    assert all(s.stream == first.stream and s.model == first.model for s in specs), \
        "a pack shares stream and model"
    stream = stream if stream is not None else make_stream(first.stream)
    stream = stream.to(device)
    members = [build_run(s, stream, device) for s in specs]
    return PackRun(members, first.model)


def pad_stack(parts: Sequence[Tensor], n: int) -> Tensor:
    """``parts`` (each ``[N_k, ...]``) zero-padded to ``[len(parts), n, ...]``."""
    out = parts[0].new_zeros((len(parts), n, *parts[0].shape[1:]))
    for k, p in enumerate(parts):
        out[k, : len(p)] = p
    return out


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
