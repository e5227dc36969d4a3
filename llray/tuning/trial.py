"""One trial: a lifelong run built from the study's base and a trial's parameters.

Both backends drive a trial the same way: build it from raw Optuna parameters, call
:meth:`Trial.learn_next` once per task, and report :meth:`Trial.metrics` after each.
Two kinds of values, with different names:

- ``acc_seen``, ``bwt_seen``, ... (:func:`seen_name`): an objective over the tasks
  learned so far, reported after every task; what ASHA and an Optuna pruner compare.
- ``acc``, ``bwt``, ...: the final metrics of the whole stream, present only in the
  report of a trial that learned every task. So Ray Tune's ``get_best_result("acc",
  "max")``, ``ExperimentAnalysis.get_best_trial`` and Optuna's ``best_trial`` can only
  pick a trial that finished; a trial stopped early has no ``acc``.

The objectives are computed on the validation R (``R_val``, the tasks' held-out
training data) when the stream has one, never on the test R, which is only reported.
A trial that diverges reports the worst value of every objective and
ends; the study goes on. Every ended trial goes to the results store, one that was
stopped early with status ``stopped`` (:func:`write_trial`).

Example:
    >>> from llray.tuning.spec import parse_spec
    >>> spec = parse_spec({"strategy": "naive", "stream": {"num_tasks": 2},
    ...                    "model": {"hidden": [16]}, "search": {"order": "permutation"}})
    >>> t = Trial(spec, {"order_0": 1})
    >>> t.run_spec.order
    (1, 0)
    >>> while not t.done:
    ...     m = t.learn_next()
    >>> m["tasks_learned"], m["status"], m["acc"] == m["acc_seen"]
    (2, 'ok', True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from llray import metrics
from llray.data import TaskStream, make_stream
from llray.errors import ConfigError
from llray.experiment import build_run, utc_now
from llray.learner import LifelongRun, RunResult
from llray.tuning.spec import StudySpec

#: objective name -> metric function of an R matrix (row 0 = random init)
METRICS = {
    "acc": metrics.acc,
    "bwt": metrics.bwt,
    "fwt": metrics.fwt,
    "forgetting": metrics.forgetting,
    "learning_accuracy": metrics.learning_accuracy,
}
NEEDS_TWO_TASKS = ("bwt", "fwt", "forgetting")
SEEN = "_seen"


def seen_name(objective: str) -> str:
    """The name of ``objective`` over the tasks learned so far: ``acc`` -> ``acc_seen``."""
    return objective + SEEN


def running(R: np.ndarray, step: int, objective: str) -> float:
    """An objective over the first ``step`` tasks of the order, after the ``step``-th.

    The metric of the top-left block ``R[:step + 1, :step]``; equals the final metric
    when ``step == T``. Metrics that compare tasks are 0 while only one task is known.
    """
    if step < 1 or (step < 2 and objective in NEEDS_TWO_TASKS):
        return 0.0
    return float(METRICS[objective](R[: step + 1, :step]))


class Trial:
    """A :class:`~llray.learner.LifelongRun` for one set of sampled parameters."""

    def __init__(
        self,
        study: StudySpec,
        params: Mapping[str, Any],
        stream: TaskStream | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.study = study
        self.params = dict(params)  # raw Optuna parameters
        self.values = study.space.values(self.params)  # field values, order decoded
        self.run_spec = study.run_spec(self.values)
        stream = stream if stream is not None else make_stream(study.experiment.stream)
        if not stream.has_val:
            raise ConfigError("stream.val_fraction", "a search selects on the validation "
                              "split: must be > 0 (default 0.1)")
        self.run: LifelongRun = build_run(self.run_spec, stream, device)
        self.started_at = utc_now()
        self._t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.run.done

    @property
    def step(self) -> int:
        return self.run.step

    def learn_next(self) -> dict[str, Any]:
        """Learn the next task and return :meth:`metrics`."""
        self.run.start()
        self.run.learn_next()
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        """What a trial reports after each task.

        ``tasks_learned``, ``status``, each objective over the tasks seen so far as
        ``<objective>_seen`` (its worst value once the run diverged), the final
        objectives under their own names once the run ended (learned every task, or
        diverged), and the R matrix so far (NaN as None).
        """
        diverged = self.run.status != "ok"
        out: dict[str, Any] = {"tasks_learned": self.run.step, "status": self.run.status,
                               "selected_on": self.selected_on}
        R = self.selection_R()
        for o in self.study.objectives:
            value = self.study.worst(o) if diverged else running(R, self.run.step, o)
            out[seen_name(o)] = value if math.isfinite(value) else self.study.worst(o)
            if self.done:
                out[o] = out[seen_name(o)]
        out["R"] = r_to_json(self.run.R)
        val = self._val_R()
        out["R_val"] = None if val is None else r_to_json(val)
        return out

    @property
    def selected_on(self) -> str:
        """``val`` when the run has a validation R (the stream carves a validation split
        from each task's training data), else ``test``."""
        return "val" if self._val_R() is not None else "test"

    def selection_R(self) -> np.ndarray:
        """The R the objectives are computed on: validation when there is one, so the
        study does not select on the test split that the store reports."""
        val = self._val_R()
        return self.run.R if val is None else val

    def _val_R(self) -> np.ndarray | None:
        val = getattr(self.run, "R_val", None)
        return None if val is None or not np.isfinite(val[0]).any() else val

    def report(self) -> dict[str, Any]:
        """:meth:`metrics` plus what the results store needs (run id, timings, n_test)."""
        res = self.result()
        return {
            **self.metrics(),
            "run_id": self.run_spec.run_id,
            "order": list(self.run_spec.order),
            "n_test": [int(n) for n in res.n_test],
            "n_val": [int(n) for n in res.n_val] if res.n_val is not None else None,
            "wall_s": res.wall_s,
            "train_s": res.train_s,
            "samples_trained": res.samples_trained,
            "task_seconds": list(res.task_seconds),
            "started_at": self.started_at.isoformat(),
            "finished_at": utc_now().isoformat(),
        }

    def result(self) -> RunResult:
        return self.run.result(wall_s=time.perf_counter() - self._t0)

    def final_values(self) -> list[float]:
        """The objectives of the finished trial, in the study's order (KeyError before)."""
        m = self.metrics()
        return [float(m[o]) for o in self.study.objectives]

    # -- checkpoints (Ray Tune) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"run": self.run.state_dict(), "started_at": self.started_at.isoformat()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from datetime import datetime

        self.run.load_state_dict(state["run"])
        self.started_at = datetime.fromisoformat(state["started_at"])


def r_to_json(R: np.ndarray) -> list[list[float | None]]:
    """R as nested lists with NaN (rows not reached) as None."""
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in R]


def r_from_json(rows: Any) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] for row in rows], dtype=float)


def result_from_report(report: Mapping[str, Any], status: str | None = None) -> RunResult:
    """The :class:`RunResult` a :meth:`Trial.report` describes."""
    return RunResult(
        R=r_from_json(report["R"]),
        order=tuple(report["order"]),
        status=status or report["status"],
        n_test=np.array(report["n_test"], dtype=np.int64),
        wall_s=float(report["wall_s"]),
        train_s=float(report["train_s"]),
        samples_trained=int(report["samples_trained"]),
        task_seconds=list(report["task_seconds"]),
        R_val=r_from_json(report["R_val"]) if report.get("R_val") is not None else None,
        n_val=(np.array(report["n_val"], dtype=np.int64)
               if report.get("R_val") is not None and report.get("n_val") is not None else None),
    )


def write_trial(
    output: str,
    study: StudySpec,
    params: Mapping[str, Any],
    report: Mapping[str, Any],
    benchmark: str,
    scenario: str,
    status: str | None = None,
) -> bool:
    """Write a trial's R and run row to ``output``'s Parquet store (idempotent by run id).

    ``experiment`` is the study name; the config JSON holds the run's full config plus
    ``tuning: {study, params}`` with the trial's searched values. ``status`` overrides
    the report's: ``stopped`` for a trial a scheduler ended early, whose R rows after
    its last task stay NaN. Such a trial is not written when the store already holds a
    run with the same id (the same values) that was not stopped: two trials of one
    config are one run, and the finished one is kept. Returns whether it was written.
    """
    from datetime import datetime

    from llray.results import RunMeta, write_run

    values = study.space.values(params)
    spec = study.run_spec(values)
    if status == "stopped" and _finished_in_store(output, study.study, spec.run_id):
        return False

    tuning = {"study": study.study, "params": jsonable(values), "log_keys": log_keys(study)}
    config = {**spec.config_dict(), "tuning": tuning}
    meta = RunMeta(
        run_id=spec.run_id,
        experiment=study.study,
        strategy=spec.strategy.display,
        benchmark=benchmark,
        scenario=scenario,
        seed=spec.seed,
        order=spec.order,
        config=config,
        started_at=datetime.fromisoformat(report["started_at"]),
        finished_at=datetime.fromisoformat(report["finished_at"]),
    )
    write_run(output, meta, result_from_report(report, status))
    return True


def log_keys(study: StudySpec) -> list[str]:
    """The searched keys sampled on a log scale (``loguniform``, ``logint``): plots of the
    study draw them on log axes."""
    return [d.key for d in study.space.dims if d.kind in ("loguniform", "logint")]


def _finished_in_store(output: str, study: str, run_id: str) -> bool:
    """Whether the study's runs in the store include ``run_id`` with a status other than
    ``stopped`` (reads two columns of one experiment)."""
    from llray.results import load_runs

    try:
        runs = load_runs(output, columns=["run_id", "status"], experiment=study)
    except ValueError:  # no store yet
        return False
    return bool(((runs["run_id"] == run_id) & (runs["status"] != "stopped")).any())


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Searched values with tuples as lists (for JSON and tables)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
