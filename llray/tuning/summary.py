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
    objectives: dict[str, float]  # final (or, when stopped, last reported) values
    R: np.ndarray | None = None
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _key(r: TrialRecord, objectives: Sequence[str], modes: Sequence[str]) -> np.ndarray:
    """Objective values signed so that larger is better."""
    signs = [1 if m == "max" else -1 for m in modes]
    return np.array([r.objectives.get(o, -np.inf * s) * s for o, s in zip(objectives, signs)])


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
    """Finished trials first, then by the objectives in order (best first)."""
    return sorted(records, key=lambda r: (not r.finished, *(-_key(r, objectives, modes))))


def best(records: Sequence[TrialRecord], objectives: Sequence[str],
         modes: Sequence[str]) -> list[TrialRecord]:
    """The best finished trial (one objective) or the Pareto front (several)."""
    if len(objectives) > 1:
        return pareto_front(records, objectives, modes)
    done = ranked([r for r in records if r.finished], objectives, modes)
    return done[:1]


def trials_table(records: Sequence[TrialRecord], objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial: id, status, tasks learned, objectives, searched values."""
    rows = []
    for r in records:
        row = {"trial": r.trial, "status": r.status, "tasks": r.tasks_learned}
        row.update({o: r.objectives.get(o, np.nan) for o in objectives})
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
