"""Ray Tune backend: ``OptunaSearch`` (TPE, seeded) + optional ASHA, one trial per run.

Each trial is a function trainable that learns the stream task by task and calls
``tune.report`` after every task with the running objectives and a checkpoint of the
whole run (model, strategy, RNG, R so far), so ``training_iteration`` = tasks learned,
ASHA can stop poor trials early, and a resumed study continues unfinished trials from
their last task. Tune keeps its state under ``OUTPUT/tune/STUDY`` (``RunConfig
(storage_path=OUTPUT/tune)``), never in the home directory. A driver-side callback writes
every ended trial's R to ``OUTPUT/r_matrix`` and ``OUTPUT/runs``, including those ASHA
stopped (status ``stopped``, NaN rows after their last task).

Example (on a running Ray)::

    records = run_tune(load_spec("tuning/ewc_lambda.yaml"), "results/ewc_lambda")
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from llray.data import TaskStream, make_stream
from llray.errors import ConfigError
from llray.results import STATUSES, ResultsError, load_runs
from llray.tuning.spec import StudySpec
from llray.tuning.summary import TrialRecord
from llray.tuning.trial import Trial, jsonable, r_from_json, seen_name, write_trial
from llray.tuning.trust import check_restorable

CHECKPOINT_FILE = "trial.pt"
logger = logging.getLogger(__name__)
#: Tune settings for a quiet driver: the loggers are chosen in RunConfig, the legacy
#: output engine honours verbose=0, and one experiment snapshot per task is intended.
QUIET = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def study_dir(output: str | Path, study: StudySpec) -> str:
    """Where Ray Tune keeps this study's experiment state (a path or a URI)."""
    return _join(output, "tune", study.study)


def spec_file(output: str | Path, study: StudySpec) -> str:
    """The study's spec as started (a resumed study must have the same one)."""
    return _join(output, "tune", f"{study.study}.spec.json")


def _join(output: str | Path, *parts: str) -> str:
    """``OUTPUT/parts``; a local path is made absolute, a URI (``s3://...``) kept."""
    if "://" in str(output):
        return "/".join([str(output).rstrip("/"), *parts])
    return str(Path(output).resolve().joinpath(*parts))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def check_start(output: str | Path, study: StudySpec, resume: bool) -> bool:
    """Before any work: True to restore, False to start; ConfigError when neither fits."""
    path = study_dir(output, study)
    if not _exists(path):
        return False
    if not resume:
        raise ConfigError("output", f"study {study.study!r} already has Ray Tune state in "
                                    f"{path}; pass --resume to continue it or choose "
                                    f"another --output")
    saved = spec_file(output, study)
    # Tune's state is pickles: only state that no one else could have written is loaded
    check_restorable([path, saved], parents=(_join(output, "tune"),))
    if _exists(saved):
        fs, p = _fs(saved)
        with fs.open_input_stream(p) as f:
            started = json.loads(f.read().decode())
        if started != study.describe():
            raise ConfigError("spec", f"differs from the one study {study.study!r} was "
                                      f"started with ({saved}); resume with the same spec")
    return tune.Tuner.can_restore(path)


def _save_spec(output: str | Path, study: StudySpec) -> None:
    fs, p = _fs(spec_file(output, study))
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(json.dumps(study.describe(), indent=1).encode())


def trainable(config: dict[str, Any], study: StudySpec, stream: TaskStream) -> None:
    """One Tune trial: a lifelong run that reports (and checkpoints) after every task."""
    from llray.distributed.actor import pick_device, set_threads

    set_threads()  # torch threads = the CPUs Ray gave this trial
    trial = Trial(study, config, stream, pick_device())  # never CUDA on a fake GPU
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trial.load_state_dict(torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True))
    while not trial.done:
        trial.learn_next()
        with tempfile.TemporaryDirectory() as d:
            torch.save(trial.state_dict(), Path(d) / CHECKPOINT_FILE)
            tune.report(trial.report(), checkpoint=tune.Checkpoint.from_directory(d))


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _status(study: StudySpec, result: dict[str, Any] | None, trial_status: str) -> str:
    """ok / diverged / stopped (early, by ASHA) / failed / running (unfinished)."""
    if trial_status == "ERROR" or not result or "status" not in result:
        return "failed" if trial_status in ("ERROR", "TERMINATED") else "running"
    if trial_status != "TERMINATED":
        return "running"
    if result["status"] == "ok" and result["tasks_learned"] < study.num_tasks:
        return "stopped"
    return result["status"]


class Progress(tune.Callback):
    """Driver-side Tune callback: one line on stderr per ended trial."""

    def __init__(self, study: StudySpec) -> None:
        self.study = study

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        names = [o if o in result else seen_name(o) for o in self.study.objectives]
        values = " ".join(f"{n}={result[n]:.4f}" for n in names if n in result)
        status = _status(self.study, result, "TERMINATED")
        print(f"trial {trial.trial_id}: {status} after {result.get('tasks_learned', 0)} "
              f"tasks {values}", file=sys.stderr, flush=True)


class StoreWriter(tune.Callback):
    """Driver-side Tune callback: writes each trial to the Parquet store as it ends."""

    def __init__(self, output: str, study: StudySpec, benchmark: str, scenario: str) -> None:
        self.output, self.study = output, study
        self.benchmark, self.scenario = benchmark, scenario

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "ERROR")

    def _write(self, trial: Any, trial_status: str) -> None:
        try:
            _write(self.output, self.study, trial, trial_status, self.benchmark, self.scenario)
        except Exception as e:  # never fail a trial over it; run_tune writes it at the end
            logger.warning("could not write trial %s to %s yet: %s", trial.trial_id,
                           self.output, e)


def _write(output: str, study: StudySpec, trial: Any, trial_status: str, benchmark: str,
           scenario: str) -> bool:
    """Write an ended trial to the store; False when there is nothing to write.

    A trial that ASHA stopped early is written with status ``stopped`` (its R rows after
    its last task are NaN); one still running (an interrupted study) is not written.
    """
    result = trial.last_result
    status = _status(study, result, trial_status)
    if status not in STATUSES or not result or "R" not in result:
        return False
    return write_trial(output, study, trial.config, result, benchmark, scenario, status)


def run_tune(
    study: StudySpec,
    output: str | Path,
    resume: bool = False,
    stream: TaskStream | None = None,
) -> list[TrialRecord]:
    """Run (or, with ``resume``, continue) ``study`` on the connected Ray; return its trials.

    Call :func:`check_start` first to fail early; Ray must already be initialised.
    """

    restore = check_start(output, study, resume)
    for var, value in QUIET.items():
        os.environ.setdefault(var, value)
    stream = stream if stream is not None else make_stream(study.experiment.stream)
    fn = tune.with_resources(
        tune.with_parameters(trainable, study=study, stream=stream),
        {"cpu": study.resources.num_cpus, "gpu": study.resources.num_gpus},
    )
    path = study_dir(output, study)
    if restore:
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True,
                                   resume_errored=True)
    else:
        _save_spec(output, study)
        tuner = _new_tuner(fn, study, _join(output, "tune"), stream, _join(output))
    tuner.fit()
    analysis_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_logger.level
    analysis_logger.setLevel(logging.ERROR)  # unstarted trials have no result files yet
    try:
        trials = tune.ExperimentAnalysis(path).trials
    finally:
        analysis_logger.setLevel(level)
    stored = _stored_status(str(output), study)
    for t in trials:  # trials that ended while no driver was listening, or unwritten
        have = stored.get((t.last_result or {}).get("run_id"))
        if have is None or (have == "stopped"
                            and _status(study, t.last_result, t.status) != "stopped"):
            _write(str(output), study, t, t.status, stream.benchmark, stream.scenario)
    return [_record(study, t) for t in trials]


def _stored_status(output: str, study: StudySpec) -> dict[str, str]:
    """run id -> status of the study's runs already in the store."""
    try:
        runs = load_runs(output, columns=["run_id", "status"], experiment=study.study)
    except ResultsError:  # no results directory yet
        return {}
    return dict(zip(runs["run_id"], runs["status"]))


class FinalMetricSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial's final metrics, not its last ``*_seen``.

    Its ``metric`` stays ``acc_seen`` (present in every result, as Tune checks, and
    reported to Optuna as the intermediate value per task); at the end a trial with the
    final ``acc`` is told COMPLETE with it, one without (stopped early) PRUNED.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result:
            seen = self.metric if isinstance(self.metric, list) else [self.metric]
            final = {m: result.get(m.removesuffix("_seen")) for m in seen}
            result = None if None in final.values() else {**result, **final}
        super().on_trial_complete(trial_id, result, error)


def _new_tuner(fn: Any, study: StudySpec, storage: str, stream: TaskStream, output: str) -> Any:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    single = len(study.objectives) == 1
    seen = [seen_name(o) for o in study.objectives]
    metric = seen[0] if single else seen
    mode = study.modes[0] if single else list(study.modes)
    search = FinalMetricSearch(
        space=study.space,  # define-by-run: SearchSpace.__call__(optuna_trial)
        metric=metric,  # in every result; the final tell uses the final metrics
        mode=mode,
        points_to_evaluate=[dict(p) for p in study.enqueue] or None,
        sampler=study.sampler.build(study.seed),
    )
    scheduler = None
    if study.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=seen[0],  # over the tasks learned so far
            mode=study.modes[0],
            max_t=study.num_tasks,
            grace_period=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor,
        )
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=study.num_trials,
            max_concurrent_trials=study.max_concurrent_trials,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # no new worker process (and torch import) per trial
        ),
        run_config=tune.RunConfig(
            name=study.study,
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                StoreWriter(output, study, stream.benchmark, stream.scenario),
                Progress(study),
                CSVLoggerCallback(),
                JsonLoggerCallback(),  # no TensorBoard logger: R is not a scalar
            ],
            verbose=0,
        ),
    )


def _record(study: StudySpec, trial: Any) -> TrialRecord:
    metrics = trial.last_result or {}
    values = jsonable(study.space.values(trial.config)) if trial.config else {}
    return TrialRecord(
        trial=str(trial.trial_id),
        values=values,
        status=_status(study, metrics, trial.status),
        tasks_learned=int(metrics.get("tasks_learned", 0)),
        objectives={o: float(metrics[o]) for o in study.objectives if o in metrics},
        R=r_from_json(metrics["R"]) if "R" in metrics else None,
        run_id=str(metrics.get("run_id", "")),
        extra={"order": metrics.get("order"), "wall_s": metrics.get("wall_s"),
               "selected_on": metrics.get("selected_on")},
        seen={o: float(metrics[seen_name(o)]) for o in study.objectives
              if seen_name(o) in metrics},
    )
