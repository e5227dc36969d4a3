"""Confirm a study's choice on fresh seeds: the best configuration against the baseline.

A study picks its best trial on one seed (``run_seed``); the pick is partly luck.
``llray tune SPEC --confirm K`` (or ``confirm: K`` in the spec) re-runs the chosen
configuration(s) and the baseline (the spec's first ``enqueue`` point) with K seeds the
study never used, writes those runs to the results store under the experiment
``<study>-confirm`` (config JSON ``tuning: {study, params, confirm: best|baseline|front-N,
trial}``), and reports each configuration's mean with a Student-t interval over the
seeds and the paired difference to the baseline (the same seeds: the same
initialisation and batch order for both, so the seed-to-seed noise cancels) with a
paired t-test.

The runs execute one after another in the driver's process (a few short runs).

Example:
    >>> from llray.tuning.spec import parse_spec
    >>> spec = parse_spec({"study": "s", "strategy": "naive", "stream": {"num_tasks": 2},
    ...                    "search": {"train.lr": {"uniform": [0.01, 0.1]}}, "run_seed": 4})
    >>> confirm_seeds(spec, 3)
    [5, 6, 7]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from llray.learner import RunResult
from llray.tuning.spec import StudySpec
from llray.tuning.summary import TrialRecord, best, _short
from llray.tuning.trial import METRICS, jsonable

SUFFIX = "-confirm"
ALPHA = 0.05


def experiment_name(study: StudySpec) -> str:
    """The experiment of a study's confirmation runs: ``<study>-confirm``."""
    return study.study + SUFFIX


def confirm_seeds(study: StudySpec, k: int) -> list[int]:
    """``k`` seeds the study's trials never used: the ``k`` integers after ``run_seed``."""
    return [study.run_seed + 1 + i for i in range(k)]


@dataclass
class Confirmed:
    """One configuration run on the confirmation seeds."""

    role: str  # "best", "front-2", ..., or "baseline"
    trial: str | None  # the study's trial it comes from (None: the baseline point)
    values: dict[str, Any]  # searched keys -> values
    seeds: list[int]
    results: list[RunResult] = field(default_factory=list)

    def metric(self, name: str) -> np.ndarray:
        """Per seed: the final metric (NaN for a run that did not finish)."""
        return np.array([float(METRICS[name](r.R)) if r.status == "ok" else np.nan
                         for r in self.results])


def chosen(study: StudySpec, records: Sequence[TrialRecord], top: int = 3) -> list[Confirmed]:
    """The best finished trial (several objectives: the front's best ``top`` in the first
    objective), then the baseline (the first ``enqueue`` point) unless it is the best."""
    picks = best(records, list(study.objectives), list(study.modes))[:top]
    out = [Confirmed("best" if i == 0 else f"front-{i + 1}", r.trial, dict(r.values), [])
           for i, r in enumerate(picks)]
    values = baseline_values(study, records)
    if values is not None and all(values != c.values for c in out):
        out.append(Confirmed("baseline", None, values, []))
    return out


def baseline_values(study: StudySpec, records: Sequence[TrialRecord]) -> dict | None:
    """The values of the spec's first ``enqueue`` point (None without one). Keys the point
    leaves to the sampler take the values of the study's trial that ran the point."""
    if not study.enqueue:
        return None
    raw = dict(study.enqueue[0])
    try:
        return jsonable(study.space.values(raw))
    except KeyError:  # a partial point: find the trial that completed it
        pass
    given = {}
    for d in study.space.dims:
        try:
            given[d.key] = jsonable({d.key: d.value(raw)})[d.key]
        except KeyError:
            continue
    for r in records:  # in the order the backend lists them: enqueued points first
        if all(r.values.get(k) == v for k, v in given.items()):
            return dict(r.values)
    return None


def run_confirm(
    study: StudySpec,
    records: Sequence[TrialRecord],
    k: int,
    output: str | None,
    stream: Any = None,
    on_run: Callable[[Confirmed, int, RunResult], None] | None = None,
) -> list[Confirmed]:
    """Run every :func:`chosen` configuration on :func:`confirm_seeds` and write the runs
    to ``output`` (``None``: write nothing); returns the configurations with results."""
    from llray.data import make_stream
    from llray.experiment import execute

    stream = stream if stream is not None else make_stream(study.experiment.stream)
    configs = chosen(study, records)
    seeds = confirm_seeds(study, k)
    for c in configs:
        c.seeds = seeds
        base = replace(study.run_spec(c.values), experiment=experiment_name(study))
        for seed in seeds:
            spec = replace(base, seed=seed)
            started = _now()
            res = execute(spec, stream)
            c.results.append(res)
            if output is not None:
                _write(output, study, c, spec, res, stream, started)
            if on_run is not None:
                on_run(c, seed, res)
    return configs


def _now() -> Any:
    from llray.experiment import utc_now

    return utc_now()


def _write(output: str, study: StudySpec, c: Confirmed, spec: Any, res: RunResult,
           stream: Any, started: Any) -> None:
    from llray.results import RunMeta, write_run

    tuning = {"study": study.study, "params": c.values, "confirm": c.role, "trial": c.trial}
    meta = RunMeta(run_id=spec.run_id, experiment=spec.experiment,
                   strategy=spec.strategy.display, benchmark=stream.benchmark,
                   scenario=stream.scenario, seed=spec.seed, order=spec.order,
                   config={**spec.config_dict(), "tuning": tuning},
                   started_at=started, finished_at=_now())
    write_run(output, meta, res)


@dataclass(frozen=True)
class Interval:
    """Mean and Student-t interval over n values (NaN left out)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray, confidence: float = 0.95) -> Interval:
        from llray.analysis import t_halfwidth

        v = values[np.isfinite(values)]
        if len(v) == 0:
            return cls(np.nan, np.nan, np.nan, 0)
        half = float(t_halfwidth(np.std(v, ddof=1) if len(v) > 1 else np.nan, len(v),
                                 confidence))
        return cls(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, len(v))

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class Difference:
    """A configuration minus the baseline, paired by seed."""

    interval: Interval
    p_value: float
    better: bool  # in the objective's direction

    @property
    def significant(self) -> bool:
        return bool(self.p_value < ALPHA)


def paired(a: np.ndarray, b: np.ndarray, mode: str) -> Difference:
    """``a − b`` over the seeds where both finished; two-sided paired t-test.

    Example:
        >>> d = paired(np.array([0.8, 0.82, 0.79, 0.81]), np.array([0.7, 0.71, 0.7, 0.72]), "max")
        >>> d.significant, d.better, round(d.interval.mean, 4)
        (True, True, 0.0975)
    """
    from scipy import stats

    ok = np.isfinite(a) & np.isfinite(b)
    diff = a[ok] - b[ok]
    p = float(stats.ttest_rel(a[ok], b[ok]).pvalue) if ok.sum() > 1 and np.any(diff) else 1.0
    if not np.isfinite(p):
        p = 1.0
    interval = Interval.of(diff)
    better = interval.mean > 0 if mode == "max" else interval.mean < 0
    return Difference(interval, p, bool(better))


def format_confirm(study: StudySpec, configs: Sequence[Confirmed]) -> str:
    """The confirmation table, then each configuration against the baseline."""
    if not configs:
        return "confirmation: no trial finished, nothing to confirm"
    seeds = configs[0].seeds
    lines = [f"confirmation on {len(seeds)} fresh seeds ({_seeds(seeds)}; the study used "
             f"seed {study.run_seed}), experiment {experiment_name(study)}; mean and 95% "
             f"t-interval over seeds:"]
    for c in configs:
        source = f"trial {c.trial}" if c.trial is not None else "enqueue[0]"
        values = ", ".join(f"{k}={_short(v)}" for k, v in c.values.items())
        cells = "  ".join(f"{o} {Interval.of(c.metric(o))}" for o in study.objectives)
        failed = sum(r.status != "ok" for r in c.results)
        tail = f"  ({failed} of {len(c.results)} runs did not finish)" if failed else ""
        lines.append(f"  {c.role} ({source}: {values}): {cells}{tail}")
    base = next((c for c in configs if c.role == "baseline"), None)
    if base is None:
        lines.append("  no baseline to compare with (the spec has no enqueue point, or the "
                     "best configuration is the baseline)")
        return "\n".join(lines)
    for c in configs:
        if c is base:
            continue
        for o, mode in zip(study.objectives, study.modes):
            d = paired(c.metric(o), base.metric(o), mode)
            verdict = ("significantly better" if d.better else "significantly worse") \
                if d.significant else "not significantly different"
            lines.append(f"  {c.role} - baseline, {o}: {d.interval.mean:+.4f} "
                         f"[{d.interval.low:+.4f}, {d.interval.high:+.4f}], paired t-test "
                         f"p = {d.p_value:.3g} over {d.interval.n} seeds: {verdict} "
                         f"(5% level)")
    return "\n".join(lines)


def _seeds(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


__all__ = ["Confirmed", "Difference", "Interval", "baseline_values", "chosen",
           "confirm_seeds", "experiment_name", "format_confirm", "paired", "run_confirm"]
