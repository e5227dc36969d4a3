"""Choose each reference strategy's main hyperparameter on the validation split.

For every job config in ``jobs/reference/`` and every strategy in :data:`GRIDS` that the
job lists, each grid point is learned on the tuning seeds (:data:`TUNING_SEEDS`, disjoint
from the job's reporting seeds) with the job's stream, model, training and every other
field of the strategy's entry unchanged; the point with the highest validation ACC (mean
over the tuning seeds of ACC on the final row of ``R_val``) is chosen, ties going to the
earlier point. Every strategy gets the same budget: 4 grid points × the tuning seeds.

The runs are learned in this process (no Ray), ``torch.set_num_threads(1)`` in each of
``--workers`` processes. The selection cannot look at the test split: each run gets the
stream with every task's test split emptied (:func:`without_test`), so its test R is
zeros and only ``R_val`` carries accuracies.

Usage::

    python scripts/tune_reference.py               # print grid × validation ACC, the choices
    python scripts/tune_reference.py --check       # also exit 1 unless jobs/reference/
                                                   # holds the chosen values
    python scripts/tune_reference.py jobs/reference/permuted_digits.yaml --strategies ewc si

A bad job file or tuning seeds that are also reporting seeds: exit 2 with one line naming
the field or file, before any run.

``make reference-tune`` runs ``--check`` on the three reference jobs (about 100 runs).
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
JOBS = "jobs/reference/*.yaml"
TUNING_SEEDS: tuple[int, ...] = (100,)

# Each tuned strategy's grid: 4 settings each (the same budget), log-spaced for the
# penalty strengths (EWC λ, SI c, MAS λ, LwF α) as in the literature's searches. Fields
# not named here (memory budgets, Fisher type, temperature, generator size) keep the job's
# values: the budget of 500 stored samples is shared by every method that stores data and
# is a constraint of the comparison, not a hyperparameter to tune.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ewc": [{"lambda_": v} for v in (10.0, 100.0, 1000.0, 10000.0)],
    "si": [{"c": v} for v in (1.0, 10.0, 100.0, 1000.0)],
    "mas": [{"lambda_": v} for v in (0.01, 0.1, 1.0, 10.0)],
    "lwf": [{"alpha": v} for v in (0.3, 1.0, 3.0, 10.0)],
    "replay": [{"ratio": v} for v in (0.25, 0.5, 0.75, 0.9)],
    "derpp": [{"alpha": a, "beta": b} for a in (0.2, 1.0) for b in (0.5, 1.0)],
    "gem": [{"margin": v} for v in (0.0, 0.1, 0.5, 1.0)],
    "agem": [{"mem_batch_size": v} for v in (32, 64, 128, 256)],
    "generative_replay": [{"targets": t, "ratio": r}
                          for t in ("hard", "soft") for r in (None, 0.5)],
}

SLOW = ("generative_replay", "gem")  # learned first
_STREAMS: dict[str, Any] = {}  # per worker process: stream section (repr) -> test-less stream


def without_test(stream: Any) -> Any:
    """``stream`` with every task's test split emptied (train and validation unchanged)."""
    tasks = tuple(replace(t, x_test=t.x_test[:0], y_test=t.y_test[:0]) for t in stream.tasks)
    return replace(stream, tasks=tasks)


def entry_dict(entry: Any) -> dict[str, Any]:
    """A job's strategy entry (``name`` or ``{name: ..., <fields>}``) as a dict."""
    return {"name": entry} if isinstance(entry, str) else dict(entry)


def val_acc(job: Mapping[str, Any], entry: Mapping[str, Any], seed: int) -> float:
    """Validation ACC (final row of ``R_val``) of ``entry`` learned on ``job``'s stream
    with run seed ``seed``; NaN for a run that diverged."""
    import torch

    from llray.config import parse_config
    from llray.data import make_stream
    from llray.experiment import execute
    from llray.metrics import acc

    torch.set_num_threads(1)
    cfg = parse_config({**job, "strategies": [dict(entry)], "seeds": [seed]})
    key = repr(job.get("stream"))
    if key not in _STREAMS:
        _STREAMS[key] = without_test(make_stream(cfg.stream))
    result = execute(cfg.runs()[0], _STREAMS[key])
    if result.R_val is None:
        raise SystemExit(f"{job.get('experiment')}: stream.val_fraction is 0, nothing to select on")
    return float(acc(result.R_val)) if result.status == "ok" else math.nan


def best(scores: Sequence[float]) -> int:
    """Index of the highest score; NaN (diverged) never wins; ties: the earliest."""
    ranked = [(-math.inf if math.isnan(s) else s) for s in scores]
    return ranked.index(max(ranked))


def check_seeds(job: Mapping[str, Any], seeds: Sequence[int]) -> None:
    """Raise ConfigError if a tuning seed is one of ``job``'s reporting seeds."""
    from llray.errors import ConfigError

    overlap = set(seeds) & set(job.get("seeds", [0]))
    if overlap:
        raise ConfigError("--seeds", f"tuning seeds {sorted(overlap)} are reporting seeds of "
                                     f"{job.get('experiment')}; use disjoint seeds")


def tune(job: Mapping[str, Any], grids: Mapping[str, list[dict[str, Any]]],
         seeds: Sequence[int], workers: int = 2) -> dict[str, list[tuple[dict, float]]]:
    """Every grid point of every strategy of ``job`` that ``grids`` names, with its mean
    validation ACC over ``seeds``: ``{strategy: [(entry, acc), ...]}`` in grid order."""
    check_seeds(job, seeds)
    points = [(name, {**base, **point})
              for base in map(entry_dict, job["strategies"])
              for name in [base["name"]] if name in grids
              for point in grids[name]]
    work = [(job, entry, seed) for _, entry in points for seed in seeds]
    # the slowest runs first, so that two workers finish together
    first = sorted(range(len(work)), key=lambda i: work[i][1]["name"] not in SLOW)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            done = list(pool.map(val_acc, *zip(*[work[i] for i in first])))
    else:
        done = [val_acc(*work[i]) for i in first]
    accs = [0.0] * len(work)
    for i, a in zip(first, done):
        accs[i] = a
    out: dict[str, list[tuple[dict, float]]] = {}
    for i, (name, entry) in enumerate(points):
        mean = sum(accs[i * len(seeds):(i + 1) * len(seeds)]) / len(seeds)
        out.setdefault(name, []).append((entry, mean))
    return out


def setting(entry: Mapping[str, Any], name: str) -> str:
    """The tuned fields of ``entry``, e.g. ``lambda_=100.0``."""
    keys = GRIDS[name][0].keys() if name in GRIDS else ()
    return ", ".join(f"{k}={entry.get(k)}" for k in keys)


def mismatches(job: Mapping[str, Any], results: Mapping[str, list[tuple[dict, float]]]
               ) -> list[str]:
    """The strategies whose entry in ``job`` differs from the chosen grid point."""
    entries = {e["name"]: e for e in map(entry_dict, job["strategies"])}
    bad = []
    for name, rows in results.items():
        chosen = rows[best([a for _, a in rows])][0]
        if any(entries[name].get(k) != chosen.get(k) for k in GRIDS.get(name, [chosen])[0]):
            bad.append(f"{job.get('experiment')}: {name} has "
                       f"{setting(entries[name], name)}, the selection chose "
                       f"{setting(chosen, name)}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="*", help=f"job configs (default {JOBS})")
    parser.add_argument("--strategies", nargs="+", choices=sorted(GRIDS), default=sorted(GRIDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(TUNING_SEEDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless each job holds its chosen values")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from llray.config import parse_config, read_yaml
    from llray.errors import ConfigError

    paths = [Path(p) for p in args.jobs] or sorted(ROOT.glob(JOBS))
    grids = {k: GRIDS[k] for k in args.strategies}
    try:
        jobs = [read_yaml(path, "config") for path in paths]
        for path, job in zip(paths, jobs):  # every job checked before any run
            try:
                cfg = parse_config(job)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e.field}", e.message) from None
            if cfg.stream.val_fraction == 0:
                raise ConfigError(f"{path}: stream.val_fraction", "is 0: nothing to select on")
            check_seeds(job, args.seeds)
        bad = []
        for path, job in zip(paths, jobs):
            results = tune(job, grids, args.seeds, args.workers)
            print(f"{job.get('experiment', path.stem)}: validation ACC (final row of R_val), "
                  f"mean over tuning seeds {args.seeds}; * = chosen")
            for name, rows in results.items():
                pick = best([a for _, a in rows])
                for i, (entry, a) in enumerate(rows):
                    mark = "  *" if i == pick else ""
                    print(f"  {name:<18} {setting(entry, name):<28} {a:.3f}{mark}")
            print(flush=True)
            bad += mismatches(job, results)
    except ConfigError as e:
        print(f"tune_reference: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.check and bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
