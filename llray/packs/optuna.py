"""Packs in the plain Optuna backend: K trials asked at once, trained as one pack.

With ``resources: {pack: K}`` in a tuning spec, ``llray tune --backend optuna`` asks the
study for up to K trials, groups them into packs (:func:`~llray.packs.grouping.pack_key`:
trials whose sampled values change the strategy or a tensor shape train apart) and trains
each pack task by task. After every task each trial reports its intermediate value and
is asked whether to prune, exactly as alone; a pruned trial is told, written with status
``stopped`` and masked out of its pack, whose other trials go on. Each trial is told and
written when it ends, as in :func:`~llray.tuning.optuna_backend.run_one`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna

from llray.data import TaskStream
from llray.packs.grouping import pack_key
from llray.packs.run import PackRun
from llray.packs.sweep import SingleRun
from llray.tuning.spec import StudySpec
from llray.tuning.summary import TrialRecord
from llray.tuning.optuna_backend import finish
from llray.tuning.trial import Trial, seen_name


def run_trial_pack(ostudy: optuna.Study, study: StudySpec, stream: TaskStream,
                   output: str | Path | None, n: int) -> list[TrialRecord]:
    """Ask ``n`` trials, train them in packs, tell each; their records in ask order."""
    asked = []
    for _ in range(n):
        ot = ostudy.ask()
        ot.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        study.space.sample(ot)
        asked.append(ot)
    records: dict[int, TrialRecord] = {}
    try:
        trials = [Trial(study, ot.params, stream) for ot in asked]
        groups: dict = {}
        for i, t in enumerate(trials):
            key = pack_key(t.run_spec)
            groups.setdefault(i if key is None else key, []).append(i)
        for idx in groups.values():
            _train(ostudy, study, stream, output, [asked[i] for i in idx],
                   [trials[i] for i in idx], records)
    except BaseException:
        for ot in asked:
            if ot.number not in records:
                ostudy.tell(ot, state=optuna.trial.TrialState.FAIL)
        raise
    return [records[ot.number] for ot in asked]


def _train(ostudy, study, stream, output, ots, trials, records) -> None:
    runs = [t.run for t in trials]
    pack = SingleRun(runs[0]) if len(runs) == 1 else PackRun(runs, study.experiment.model)
    pack.start()
    live = set(range(len(trials)))
    while live:
        pack.learn_next()
        for i in sorted(live):
            t, ot = trials[i], ots[i]
            m = t.metrics()
            pruned = False
            if study.scheduler is not None and m["status"] == "ok":
                ot.report(m[seen_name(study.objectives[0])], m["tasks_learned"])
                pruned = t.step < study.num_tasks and ot.should_prune()
            if pruned or t.done:
                records[ot.number] = finish(ostudy, study, stream, output, ot, t, pruned)
                live.discard(i)
                if pruned:
                    t.run.status = "stopped"  # masked out of the pack from now on
