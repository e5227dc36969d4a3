"""Summary tables from the Parquet results: ACC, BWT, FWT per strategy, mean ± std.

One row per (experiment, benchmark, scenario, strategy), over all its runs (seeds and
orders). Naive fine-tuning is labelled as the lower bound and joint (multi-task)
training as the upper bound, and they are listed first and last. The table is built from
``OUTPUT/runs`` alone, so ``llray report`` is fast however many R entries there are.

Example:
    >>> import pandas as pd
    >>> runs = pd.DataFrame({"experiment": "x", "benchmark": "permuted-digits",
    ...     "scenario": "domain", "strategy": ["ewc", "ewc", "naive"],
    ...     "status": "ok", "acc": [0.8, 0.9, 0.5], "bwt": [-0.1, -0.05, -0.4],
    ...     "fwt": [0.0, 0.02, 0.01], "forgetting": [0.1, 0.05, 0.4], "config": "{}"})
    >>> t = summary_table(runs)
    >>> t[["strategy", "bound", "runs", "acc_mean"]].round(2).values.tolist()
    [['naive', 'lower', 1, 0.5], ['ewc', '', 2, 0.85]]
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pandas as pd

from llray.errors import ConfigError
from llray.results import STATUSES, load_runs

__all__ = ["format_table", "report", "summary_table", "to_json"]

KEYS = ["experiment", "benchmark", "scenario", "strategy"]
METRICS = ["acc", "bwt", "fwt", "forgetting"]
#: registered strategy name -> which bound it is
BOUNDS = {"naive": "lower", "joint": "upper"}
_BOUND_RANK = {"lower": 0, "": 1, "upper": 2}
COLUMNS = (
    KEYS
    + ["bound", "runs", *STATUSES]
    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
)


def _strategy_name(config: Any, fallback: str) -> str:
    """The registered strategy name in a run's config JSON (the label may differ)."""
    try:
        name = json.loads(config)["strategy"]["name"]
    except (TypeError, ValueError, KeyError):
        return fallback
    return name if isinstance(name, str) else fallback


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, benchmark, scenario, strategy): run and status counts, metrics.

    ``<metric>_mean`` and ``<metric>_std`` are the mean and the sample standard
    deviation (``ddof=1``; NaN for one run) over the runs with status ``"ok"``:
    diverged, stopped (ended early by a tuning scheduler) and failed runs are counted in
    their status column but not averaged.

    Args:
        runs: the ``runs`` DataFrame of :func:`llray.results.load` (needs the key
            columns, ``status``, the metrics and ``config``).

    Returns:
        One row per group with :data:`COLUMNS`, lower bound first and upper bound last
        within each (experiment, benchmark, scenario).

    Example:
        >>> import pandas as pd
        >>> runs = pd.DataFrame({"experiment": "x", "benchmark": "b", "scenario": "task",
        ...     "strategy": "joint", "status": ["ok", "diverged", "stopped"],
        ...     "acc": [0.9, None, None], "bwt": [0.0, None, None], "fwt": [0.1, None, 0.3],
        ...     "forgetting": [0.0, None, None], "config": '{"strategy": {"name": "joint"}}'})
        >>> t = summary_table(runs)
        >>> t[["bound", "runs", "ok", "diverged", "stopped"]].values.tolist(), float(t.fwt_mean[0])
        ([['upper', 3, 1, 1, 1]], 0.1)
    """
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.assign(**{m: runs[m].where(runs["status"] == "ok") for m in METRICS})
    groups = runs.groupby(KEYS, sort=False, dropna=False)
    stats = groups[METRICS].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    status = runs.groupby([*KEYS, "status"], dropna=False).size().unstack(fill_value=0)
    status = status.reindex(columns=list(STATUSES), fill_value=0)
    first = groups[["strategy", "config"]].first()
    table = stats.join(status).assign(
        runs=groups.size(),
        bound=[BOUNDS.get(_strategy_name(c, s), "") for s, c in first.itertuples(index=False)],
    ).reset_index()
    table = table.assign(_rank=table["bound"].map(_BOUND_RANK))
    table = table.sort_values(["experiment", "benchmark", "scenario", "_rank", "strategy"])
    return table[COLUMNS].reset_index(drop=True)


def _mean_std(mean: float, std: float, signed: bool) -> str:
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if not math.isfinite(std) else f"{text} ± {std:.3f}"


def _status_text(row: pd.Series) -> str:
    return ", ".join(f"{int(row[s])} {s}" for s in STATUSES if row[s])


def format_table(df: pd.DataFrame) -> str:
    """The :func:`summary_table` as aligned plain text for a terminal.

    Example:
        >>> import pandas as pd
        >>> runs = pd.DataFrame({"experiment": "x", "benchmark": "b", "scenario": "task",
        ...     "strategy": "naive", "status": "ok", "acc": [0.5, 0.7], "bwt": -0.2,
        ...     "fwt": 0.0, "forgetting": 0.2, "config": "{}"})
        >>> text = format_table(summary_table(runs))
        >>> text.splitlines()[0].split()[:6]
        ['experiment', 'benchmark', 'scenario', 'strategy', 'bound', 'runs']
        >>> "0.600 ± 0.141" in text.splitlines()[2]
        True
    """
    header = ["experiment", "benchmark", "scenario", "strategy", "bound", "runs",
              "ACC", "BWT", "FWT", "status"]
    rows = [
        [str(r["experiment"]), str(r["benchmark"]), str(r["scenario"]), str(r["strategy"]),
         r["bound"], str(int(r["runs"])),
         _mean_std(r["acc_mean"], r["acc_std"], signed=False),
         _mean_std(r["bwt_mean"], r["bwt_std"], signed=True),
         _mean_std(r["fwt_mean"], r["fwt_std"], signed=True),
         _status_text(r)]
        for _, r in df.iterrows()
    ]
    right = {"runs", "ACC", "BWT", "FWT"}
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if h in right else c.ljust(w)
                 for c, w, h in zip(cells, widths, header)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    note = ("test split (R on each task's test data; searches select on the validation "
            "split); mean ± sample std over seeds and orders of the ok runs; diverged, stopped "
            "(ended early by a tuning scheduler) and failed runs are counted, not averaged; "
            "lower/upper bound = naive/joint")
    return "\n".join([line(header), rule, *(line(r) for r in rows), "", note])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def to_json(df: pd.DataFrame) -> str:
    """The :func:`summary_table` as a JSON list of objects (NaN as null), each with
    ``"split": "test"`` (the metrics are of the test R).

    Example:
        >>> import pandas as pd
        >>> runs = pd.DataFrame({"experiment": "x", "benchmark": "b", "scenario": "task",
        ...     "strategy": "naive", "status": "ok", "acc": [0.5], "bwt": None,
        ...     "fwt": None, "forgetting": None, "config": "{}"})
        >>> rows = json.loads(to_json(summary_table(runs)))
        >>> rows[0]["acc_mean"], rows[0]["acc_std"], rows[0]["bound"], rows[0]["split"]
        (0.5, None, 'lower', 'test')
    """
    records = [{**{k: _jsonable(v) for k, v in rec.items()}, "split": "test"}
               for rec in df.to_dict("records")]
    return json.dumps(records, indent=2, ensure_ascii=False)


def report(output_dir: str | os.PathLike[str], as_json: bool = False) -> str:
    """The summary table of a results directory, as text or JSON (``llray report``).

    Raises:
        ConfigError: the directory does not exist, holds no runs, or holds a Parquet
            file that is not an llray results file (named in the message).

    Example:
        >>> import tempfile
        >>> try:
        ...     report(tempfile.mkdtemp())
        ... except ConfigError as e:
        ...     print(e.field)
        output
    """
    runs = load_runs(output_dir)
    if runs.empty:
        raise ConfigError(
            "output",
            f"no results in {os.fspath(output_dir)!r} (no Parquet files under runs/); "
            "'llray run CONFIG --output DIR' writes them",
        )
    table = summary_table(runs)
    return to_json(table) if as_json else format_table(table)
