"""Trial records from either backend, the best trial, the Pareto front, the printed summary.

Example:
    >>> a = TrialRecord("a", {}, "ok", 3, {"acc": 0.8, "bwt": -0.2})
    >>> b = TrialRecord("b", {}, "ok", 3, {"acc": 0.7, "bwt": -0.1})
    >>> c = TrialRecord("c", {}, "ok", 3, {"acc": 0.6, "bwt": -0.3})   # dominated by a
    >>> [r.trial for r in pareto_front([a, b, c], ["acc", "bwt"], ["max", "max"])]
    ['a', 'b']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

FINISHED = ("ok", "diverged")  # trials whose objectives are final


@dataclass
class TrialRecord:
    """One trial as either backend saw it."""

    trial: str  # Ray Tune trial id, or Optuna trial number
    values: dict[str, Any]  # searched keys -> values (``order`` as a list of task ids)
    status: str  # "ok" | "diverged" | "stopped" (early, by a scheduler) | "failed" | "running"
    tasks_learned: int
    objectives: dict[str, float]  # final values; empty unless the trial finished
    R: np.ndarray | None = None
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # last values over tasks seen

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _key(r: TrialRecord, objectives: Sequence[str], modes: Sequence[str],
         seen: bool = False) -> np.ndarray:
    """Objective values signed so that larger is better (``seen``: over tasks seen)."""
    signs = [1 if m == "max" else -1 for m in modes]
    values = r.seen if seen else r.objectives
    return np.array([values.get(o, -np.inf * s) * s for o, s in zip(objectives, signs)])


def dominates(a: TrialRecord, b: TrialRecord, objectives: Sequence[str],
              modes: Sequence[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    ka, kb = _key(a, objectives, modes), _key(b, objectives, modes)
    return bool(np.all(ka >= kb) and np.any(ka > kb))


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[str],
                 modes: Sequence[str]) -> list[TrialRecord]:
    """The finished trials no other finished trial dominates, best first objective first."""
    done = [r for r in records if r.finished]
    front = [r for r in done if not any(dominates(o, r, objectives, modes) for o in done)]
    return ranked(front, objectives, modes)


def ranked(records: Sequence[TrialRecord], objectives: Sequence[str],
           modes: Sequence[str]) -> list[TrialRecord]:
    """Finished trials first, by the final objectives in order (best first); then the
    others by their objectives over the tasks they learned."""
    return sorted(records, key=lambda r: (not r.finished,
                                          *(-_key(r, objectives, modes, not r.finished))))


def best(records: Sequence[TrialRecord], objectives: Sequence[str],
         modes: Sequence[str]) -> list[TrialRecord]:
    """The best finished trial (one objective) or the Pareto front (several)."""
    if len(objectives) > 1:
        return pareto_front(records, objectives, modes)
    done = ranked([r for r in records if r.finished], objectives, modes)
    return done[:1]


def trials_table(records: Sequence[TrialRecord], objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial: id, status, tasks learned, final objectives (NaN unless the
    trial finished), the first objective over the tasks learned (``acc_seen``), searched
    values."""
    rows = []
    for r in records:
        row = {"trial": r.trial, "status": r.status, "tasks": r.tasks_learned}
        row.update({o: r.objectives.get(o, np.nan) for o in objectives})
        if objectives:
            row[objectives[0] + "_seen"] = r.seen.get(objectives[0], np.nan)
        row.update({k: _short(v) for k, v in r.values.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _short(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return v


def r_table(R: np.ndarray, order: Sequence[int]) -> str:
    """R with row labels (init, 1..T) and task-id column labels, 3 decimals."""
    df = pd.DataFrame(R, columns=[f"t{t}" for t in order],
                      index=["init"] + [str(i) for i in range(1, len(R))])
    return df.to_string(float_format=lambda x: f"{x:.3f}", na_rep="-")


def format_summary(study: Any, records: Sequence[TrialRecord], top: int = 5) -> str:
    """The end-of-study text: counts, best trial (or front) with R and metrics, top trials."""
    from llray.tuning.trial import METRICS

    objectives, modes = list(study.objectives), list(study.modes)
    counts = pd.Series([r.status for r in records]).value_counts().to_dict() if records else {}
    lines = [f"study {study.study}: {len(records)} trials ("
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")",
             "objectives (selected on the validation split): "
             + ", ".join(f"{o} ({m})" for o, m in zip(objectives, modes))]
    chosen = best(records, objectives, modes)
    if not chosen:
        lines.append("no trial finished")
        return "\n".join(lines)
    if len(objectives) > 1:
        lines.append(f"Pareto front ({len(chosen)} trials):")
        lines.append(_indent(trials_table(chosen, objectives).to_string(index=False)))
    head = chosen[0]
    label = "best trial" if len(objectives) == 1 else "front trial best in " + objectives[0]
    lines.append(f"{label} {head.trial}: " + "  ".join(
        f"{o} {head.objectives[o]:.4f}" for o in objectives))
    split = head.extra.get("selected_on")
    if split:
        lines.append(f"  (objectives on the {'validation' if split == 'val' else 'test'} "
                     f"split; the R below and the store's R are on the test split)")
    lines += [f"  {k}: {_short(v)}" for k, v in head.values.items()]
    if head.R is not None:
        order = head.extra.get("order") or head.values.get("order") or range(head.R.shape[1])
        lines.append("test R (row i: after the i-th task of the order; columns: tasks in "
                     "order):")
        lines.append(_indent(r_table(head.R, list(order))))
        if head.status == "ok":
            lines.append("test metrics: " + "  ".join(
                f"{name} {float(fn(head.R)):.4f}" for name, fn in METRICS.items()))
    lines.append(f"top {min(top, len(records))} trials:")
    table = trials_table(ranked(records, objectives, modes)[:top], objectives)
    lines.append(_indent(table.to_string(index=False)))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def how_to_open(study: Any, backend: str, where: str) -> str:
    """Python lines that open the study with Ray Tune's or Optuna's own API.

    ``where`` is Tune's experiment folder (``backend="tune"``) or the Optuna storage
    (a journal file or an RDB URL); a local path is printed absolute, so the lines work
    from any directory (``Tuner.restore`` refuses a relative path).

    Example:
        >>> class S: study, objectives, modes = "s", ("acc",), ("max",)
        >>> print(how_to_open(S, "tune", "/r/tune/s"))   # doctest: +NORMALIZE_WHITESPACE
        open with Ray Tune (finished trials only have 'acc'):
          from ray import tune
          tune.ExperimentAnalysis('/r/tune/s').get_best_trial('acc', 'max')
    """
    from pathlib import Path

    metric, mode = study.objectives[0], study.modes[0]
    if backend == "tune":
        lines = ["from ray import tune",
                 f"tune.ExperimentAnalysis({where!r}).get_best_trial({metric!r}, {mode!r})"]
        return f"open with Ray Tune (finished trials only have {metric!r}):\n" + \
            _indent("\n".join(lines))
    if "://" in where:
        storage = repr(where)
    else:
        storage = f"JournalStorage(JournalFileBackend({str(Path(where).resolve())!r}))"
        lines = ["from optuna.storages import JournalStorage",
                 "from optuna.storages.journal import JournalFileBackend"]
    best = "best_trial" if len(study.objectives) == 1 else "best_trials"
    lines = ([] if "://" in where else lines) + [
        "import optuna",
        f"optuna.load_study(study_name={study.study!r}, storage={storage}).{best}"]
    return "open with Optuna (pruned trials are not COMPLETE):\n" + _indent("\n".join(lines))
