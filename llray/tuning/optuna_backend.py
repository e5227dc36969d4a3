"""Plain Optuna backend: the same spec, no Ray, a storage several processes can share.

``--backend optuna`` runs trials one after another in this process, asking and telling
an Optuna study kept in a storage: a journal file (``JournalStorage(JournalFileBackend
(path))``, safe for several processes on one file system) or an RDB URL
(``sqlite:///study.db``, ``postgresql://...``) for several machines. Start the same
command in as many processes as you like; each adds trials until the study holds
``num_trials`` of them (at most one extra per additional process, from the race between
counting and asking). ASHA becomes Optuna's ``SuccessiveHalvingPruner`` over tasks; a
pruned trial is written to the results store with status ``stopped``.

Example:
    >>> from llray.tuning.spec import parse_spec
    >>> spec = parse_spec({"strategy": "naive", "stream": {"num_tasks": 2}, "num_trials": 2,
    ...                    "model": {"hidden": [16]}, "search": {"order": "permutation"}})
    >>> records = run_optuna(spec, output=None)         # in-memory study, nothing written
    >>> len(records), records[0].status
    (2, 'ok')
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from llray.data import TaskStream, make_stream
from llray.tuning.spec import StudySpec
from llray.tuning.summary import TrialRecord
from llray.tuning.trial import Trial, jsonable, r_from_json, seen_name, write_trial

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
           optuna.trial.TrialState.RUNNING)


def default_storage(output: str | Path, study: StudySpec) -> str:
    """The journal file a study uses when ``--storage`` is not given."""
    return str(Path(output) / "optuna" / f"{study.study}.journal")


def make_storage(storage: str | None) -> Any:
    """``None``: in memory; a URL (``sqlite:///x.db``): RDB; anything else: a journal file."""
    if storage is None:
        return None
    if "://" in storage:
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage))


def sampler_seed(seed: int, worker: int | None, existing: int = 0) -> int:
    """The sampler seed of one process: ``seed`` mixed with its worker number.

    Processes sharing a study must not draw the same points; without an explicit
    ``worker`` the process id is used (so such a process is not reproducible). A process
    that continues a study holding ``existing`` trials mixes that in too, so that it does
    not redraw the points the study began with.
    """
    worker = os.getpid() if worker is None else worker
    entropy = [seed, worker] + ([existing] if existing else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def open_study(
    study: StudySpec, storage: str | None = None, worker: int | None = 0
) -> optuna.Study:
    """Create or load the Optuna study; enqueue the spec's known points once."""
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if study.scheduler is not None:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor,
        )
    ostudy = optuna.create_study(
        study_name=study.study,
        storage=make_storage(storage),
        sampler=study.sampler.build(sampler_seed(study.seed, worker)),
        pruner=pruner,
        directions=study.directions,
        load_if_exists=True,
    )
    existing = len(ostudy.get_trials(deepcopy=False))
    if existing:  # continued: not the same draws as the process that began it
        ostudy.sampler = study.sampler.build(sampler_seed(study.seed, worker, existing))
    for point in study.enqueue:
        ostudy.enqueue_trial(dict(point), skip_if_exists=True)
    return ostudy


def remaining(ostudy: optuna.Study, study: StudySpec) -> int:
    """Trials still to start: ``num_trials`` minus those finished, pruned or running."""
    return study.num_trials - len(ostudy.get_trials(deepcopy=False, states=COUNTED))


def run_optuna(
    study: StudySpec,
    output: str | Path | None,
    storage: str | None = None,
    worker: int | None = 0,
    stream: TaskStream | None = None,
    max_trials: int | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> list[TrialRecord]:
    """Add trials to ``study`` until it holds ``num_trials``; return all of its trials.

    Args:
        study: the checked spec.
        output: results directory for the Parquet store (``None``: write nothing).
        storage: journal file path or RDB URL (``None``: in memory, this process only).
        worker: this process's number among those sharing the study (seeds its sampler).
        stream: the task stream, if already built.
        max_trials: at most this many trials from this process.
        on_trial: called with each trial this process finished.
    """
    ostudy = open_study(study, storage, worker)
    torch.set_num_threads(max(1, int(study.resources.num_cpus)))  # trials run in this process
    stream = stream if stream is not None else make_stream(study.experiment.stream)
    done = 0
    while remaining(ostudy, study) > 0 and (max_trials is None or done < max_trials):
        if study.resources.pack > 1:  # K trials at once as one batched model
            from llray.packs.optuna import run_trial_pack

            n = min(study.resources.pack, remaining(ostudy, study),
                    max_trials - done if max_trials is not None else study.resources.pack)
            batch = run_trial_pack(ostudy, study, stream, output, n)
        else:
            batch = [run_one(ostudy, study, stream, output)]
        done += len(batch)
        for record in batch:
            if on_trial is not None:
                on_trial(record)
    return records(ostudy, study)


def run_one(ostudy: optuna.Study, study: StudySpec, stream: TaskStream,
            output: str | Path | None) -> TrialRecord:
    """Ask for one trial, learn the stream task by task (pruning allowed), tell."""
    ot = ostudy.ask()
    ot.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    study.space.sample(ot)
    try:
        trial = Trial(study, ot.params, stream)
        pruned = False
        while not trial.done:
            m = trial.learn_next()
            if study.scheduler is not None and m["status"] == "ok":
                ot.report(m[seen_name(study.objectives[0])], m["tasks_learned"])
                if trial.step < study.num_tasks and ot.should_prune():
                    pruned = True
                    break
    except BaseException:
        ostudy.tell(ot, state=optuna.trial.TrialState.FAIL)
        raise
    return finish(ostudy, study, stream, output, ot, trial, pruned)


def finish(ostudy: optuna.Study, study: StudySpec, stream: TaskStream,
           output: str | Path | None, ot: optuna.Trial, trial: Trial,
           pruned: bool) -> TrialRecord:
    """Tell the study how ``trial`` ended (final values only when it learned every task;
    PRUNED when the pruner stopped it), write it to the store, return its record."""
    report = trial.report()
    status = "stopped" if pruned else report["status"]
    for key in ("status", "tasks_learned", "R", "run_id", "order", "wall_s", "selected_on"):
        ot.set_user_attr(key, report[key] if key != "status" else status)
    final = {o: float(report[o]) for o in study.objectives if o in report}
    seen = {o: float(report[seen_name(o)]) for o in study.objectives}
    ot.set_user_attr("objectives", final)  # final metrics: only of a trial that finished
    ot.set_user_attr("seen", seen)
    if pruned:
        ostudy.tell(ot, state=optuna.trial.TrialState.PRUNED)
    else:
        ostudy.tell(ot, [final[o] for o in study.objectives])
    if output is not None:
        write_trial(str(output), study, ot.params, report, stream.benchmark, stream.scenario,
                    status)
    return TrialRecord(str(ot.number), jsonable(trial.values), status, report["tasks_learned"],
                       final, r_from_json(report["R"]), report["run_id"],
                       {"order": report["order"], "wall_s": report["wall_s"],
                        "selected_on": report["selected_on"]}, seen)


def records(ostudy: optuna.Study, study: StudySpec) -> list[TrialRecord]:
    """Every trial of the study (from all processes), as :class:`TrialRecord`."""
    return [_record(study, t) for t in ostudy.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING]


def _record(study: StudySpec, t: optuna.trial.FrozenTrial) -> TrialRecord:
    attrs = t.user_attrs
    state = t.state.name.lower()
    default = {"complete": "ok", "fail": "failed", "pruned": "stopped"}.get(state, state)
    status = attrs.get("status", default)
    status = "stopped" if status == "pruned" else status  # the name before 'stopped'

    try:
        values = jsonable(study.space.values(t.params))
    except KeyError:  # failed before sampling
        values = {}
    return TrialRecord(
        trial=str(t.number),
        values=values,
        status=status,
        tasks_learned=int(attrs.get("tasks_learned", 0)),
        objectives={k: float(v) for k, v in attrs.get("objectives", {}).items()
                    if status != "stopped"},  # older studies kept a stopped trial's last
        seen={k: float(v) for k, v in attrs.get("seen", {}).items()},
        R=r_from_json(attrs["R"]) if "R" in attrs else None,
        run_id=attrs.get("run_id", ""),
        extra={"order": attrs.get("order"), "wall_s": attrs.get("wall_s"),
               "selected_on": attrs.get("selected_on")},
    )
