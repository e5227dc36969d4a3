"""Analysis at scale: ACC/BWT/FWT of 100,000 runs × 10 tasks from Parquet, in one pass.

Generates a results store in the schemas of :mod:`llray.results` (about 11 million R
rows in ``r_matrix/`` and 100,000 rows in ``runs/``, each with an 800-byte config JSON;
hive-partitioned by experiment, 12,500 runs per file, 1% of the runs diverged with NaN
rows), then measures, each in a fresh Python process so that peak
memory belongs to one method:

- ``duckdb``: :func:`llray.analysis.run_metrics` (one grouped query over the files,
  using ``step``/``eval_pos``) + :func:`llray.analysis.summarize` per strategy;
- ``duckdb+forgetting``: the same with forgetting and learning accuracy too (a second
  grouping stage);
- ``numpy``: the pandas fallback (pyarrow read, R scattered into a dense stack,
  :mod:`llray.metrics` on the stack);
- ``groupby-apply``: the straightforward pandas way, ``groupby("run_id").apply`` that
  rebuilds each run's R and calls :mod:`llray.metrics`.

It prints seconds (best of ``--repeat`` and the first call), peak RSS, and the speed
ratio of groupby-apply to DuckDB, and checks that all methods agree.

Usage::

    python benchmarks/analysis_scale.py                 # 100,000 runs x 10 tasks
    python benchmarks/analysis_scale.py --runs 20000 --apply-runs 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute  # noqa: F401 - pa.compute in _runs_rows

STRATEGIES = ("naive", "ewc", "replay", "joint")
EXPERIMENTS = 4
RUNS_PER_FILE = 12_500
TARGET_S, TARGET_MIB = 1.0, 1024


def generate(root: Path, n_runs: int, T: int, seed: int = 0,
             runs_per_file: int = RUNS_PER_FILE) -> int:
    """Write ``n_runs`` random runs of ``T`` tasks under ``root/r_matrix``; return rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llray.results import R_MATRIX_FILE_SCHEMA

    rng = np.random.default_rng(seed)
    per_exp = -(-n_runs // EXPERIMENTS)
    rows_written, run0 = 0, 0
    for e in range(EXPERIMENTS):
        folder = root / "r_matrix" / f"experiment=exp{e}"
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, min(per_exp, n_runs - run0), runs_per_file):
            n = min(runs_per_file, per_exp - start, n_runs - run0)
            table = _runs_table(rng, run0, n, T, pa)
            name = f"batch-{run0:08d}.parquet"
            table = table.append_column("split", pa.array(["test"] * table.num_rows))
            pq.write_table(table.cast(R_MATRIX_FILE_SCHEMA), folder / name, compression="zstd")
            runs_folder = root / "runs" / f"experiment=exp{e}"
            runs_folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(_runs_rows(table, f"exp{e}", T, pa), runs_folder / name,
                           compression="zstd")
            rows_written += table.num_rows
            run0 += n
    return rows_written


def _runs_rows(r_table, experiment: str, T: int, pa) -> "pa.Table":
    """The ``runs`` rows of the runs in ``r_table`` (status, metrics, an 800-byte config)."""
    from datetime import datetime, timezone

    from llray import metrics
    from llray.results import RUNS_FILE_SCHEMA

    first = r_table.filter(pa.compute.and_(pa.compute.equal(r_table["step"], 0),
                                           pa.compute.equal(r_table["eval_pos"], 1)))
    n = first.num_rows
    R = r_table["accuracy"].to_numpy().reshape(n, T + 1, T)
    m = metrics.summary(R)
    strategies = first["strategy"].to_pylist()
    seeds = first["seed"].to_pylist()
    orders = first["task_order"].to_pylist()
    configs = [json.dumps({"experiment": experiment, "seed": seed, "order": order,
                           "model": {"name": "mlp", "hidden": [100, 100]},
                           "train": {"epochs": 3, "batch_size": 32, "lr": 0.003,
                                     "optimizer": "adam"},
                           "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": T,
                                      "seed": 0, "scenario": "domain"},
                           "strategy": {"name": strategy, "label": strategy}}, sort_keys=True)
               for strategy, seed, order in zip(strategies, seeds, orders)]
    ok = np.isfinite(m["acc"])
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cols = {
        "run_id": first["run_id"], "strategy": first["strategy"],
        "benchmark": first["benchmark"], "scenario": first["scenario"], "seed": first["seed"],
        "task_order": first["task_order"],
        "status": pa.array(np.where(ok, "ok", "diverged").astype(object)),
        **{k: pa.array(np.where(ok, m[k], np.nan), from_pandas=True)
           for k in ("acc", "bwt", "fwt", "forgetting")},
        "wall_s": pa.array(np.full(n, 10.0)), "train_samples_per_s": pa.array(np.full(n, 1e4)),
        "config": pa.array(configs), "started_at": pa.array([now] * n),
        "finished_at": pa.array([now] * n),
        "error": pa.nulls(n, pa.string()),
    }
    return pa.table(cols).select(RUNS_FILE_SCHEMA.names).cast(RUNS_FILE_SCHEMA)


def _runs_table(rng: np.random.Generator, run0: int, n: int, T: int, pa) -> "pa.Table":
    """``n`` runs' R entries: plausible accuracies, random orders, 1% diverged."""
    orders = np.argsort(rng.random((n, T)), axis=1).astype(np.int32)
    learned = 0.6 + 0.4 * rng.random((n, 1, T))
    decay = rng.random((n, 1, T)) * 0.05
    steps = np.arange(T + 1)[None, :, None]
    pos = np.arange(1, T + 1)[None, None, :]
    chance = 0.1 + 0.05 * rng.random((n, T + 1, T))
    R = np.where(steps >= pos, learned - decay * (steps - pos), chance)
    diverged = rng.random(n) < 0.01
    R[diverged, T // 2 :, :] = np.nan
    per_run = (T + 1) * T
    run = np.repeat(np.arange(n), per_run)
    step = np.tile(np.repeat(np.arange(T + 1, dtype=np.int32), T), n)
    eval_pos = np.tile(np.arange(1, T + 1, dtype=np.int32), n * (T + 1))
    ids = np.array([f"{run0 + i:016x}" for i in range(n)], dtype=object)
    order_values = pa.array(orders[run].ravel())
    offsets = pa.array(np.arange(len(run) + 1, dtype=np.int32) * T)
    return pa.table({
        "run_id": pa.array(ids[run], pa.string()),
        "strategy": pa.array(np.array(STRATEGIES, dtype=object)[(run0 + np.arange(n)) % 4][run]),
        "benchmark": pa.array(np.full(len(run), "digits", dtype=object)),
        "scenario": pa.array(np.full(len(run), "domain", dtype=object)),
        "seed": pa.array(((run0 + np.arange(n)) // 4 % 5)[run].astype(np.int64)),
        "task_order": pa.ListArray.from_arrays(offsets, order_values),
        "step": step,
        "train_task": pa.array(orders[run, np.maximum(step - 1, 0)], mask=step == 0),
        "eval_task": orders[run, eval_pos - 1],
        "eval_pos": eval_pos,
        "accuracy": R.ravel(),
        "n_test": np.full(len(run), 300, dtype=np.int64),
    })


# -- one method per process -------------------------------------------------------------------
def measure(method: str, root: str, repeat: int, apply_runs: int) -> dict:
    """Run ``method`` ``repeat`` times in this process; seconds, peak RSS, a checksum."""
    import pandas as pd  # noqa: F401 - imports are not part of the timing
    import scipy.stats  # noqa: F401

    from llray import analysis

    rss0 = _rss_mib()
    times, cpus, per_run = [], [], None
    for _ in range(repeat):
        c0, t0 = _cpu_s(), time.perf_counter()
        if method == "groupby-apply":
            per_run = _groupby_apply(root, apply_runs)
            by_strategy = per_run.groupby("strategy")[["acc", "bwt", "fwt"]].mean()
        else:
            engine = "pandas" if method == "numpy" else "duckdb"
            metrics = ["acc", "bwt", "fwt"]
            if method == "duckdb+forgetting":
                metrics += ["forgetting", "learning_accuracy"]
            per_run = analysis.run_metrics(root, metrics=metrics, engine=engine)
            by_strategy = analysis.summarize(per_run, by="strategy")
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    per_run[["run_id", "acc", "bwt", "fwt"]].to_parquet(_sample_path(root, method))
    return {
        "method": method, "first_s": times[0], "best_s": min(times), "runs": len(per_run),
        "cpu_s": cpus[int(np.argmin(times))],
        "strategies": len(by_strategy), "peak_rss_mib": _peak_mib(), "rss_before_mib": rss0,
    }


def _groupby_apply(root: str, limit: int):
    """The straightforward way: read everything, rebuild R per run, call llray.metrics."""
    import pandas as pd

    from llray import metrics
    from llray.results import load_r_matrix

    df = load_r_matrix(root, columns=["run_id", "strategy", "step", "eval_pos", "accuracy"])
    if limit:
        keep = np.sort(df["run_id"].unique())[:limit]
        df = df[df["run_id"].isin(keep)]

    def one(g: pd.DataFrame) -> pd.Series:
        T = int(g["eval_pos"].max())
        R = np.full((T + 1, T), np.nan)
        R[g["step"].to_numpy(), g["eval_pos"].to_numpy() - 1] = g["accuracy"].to_numpy()
        return pd.Series({"strategy": g["strategy"].iloc[0], "acc": metrics.acc(R),
                          "bwt": metrics.bwt(R), "fwt": metrics.fwt(R)})

    return df.groupby("run_id").apply(one, include_groups=False).reset_index()


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (DuckDB's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(method: str, root: str, repeat: int, apply_runs: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", method, "--dir", root,
           "--repeat", str(repeat), "--apply-runs", str(apply_runs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _sample_path(root: str, method: str) -> str:
    return str(Path(root) / f"_per_run_{method.replace('+', '_')}.parquet")


def _agree(root: str, a: str, b: str) -> float:
    """Largest difference of ACC/BWT/FWT between two methods over their common runs."""
    import pandas as pd

    x = pd.read_parquet(_sample_path(root, a)).set_index("run_id")
    y = pd.read_parquet(_sample_path(root, b)).set_index("run_id")
    common = x.index.intersection(y.index)
    assert len(common) > 0, "no runs in common"
    diff = (x.loc[common] - y.loc[common]).abs().to_numpy()
    both_nan = np.isnan(x.loc[common].to_numpy()) & np.isnan(y.loc[common].to_numpy())
    diff = np.where(both_nan, 0.0, diff)
    return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per method")
    p.add_argument("--apply-runs", type=int, default=0,
                   help="groupby-apply on only the first N runs (0: all) and scale its "
                        "time to all runs")
    p.add_argument("--runs-per-file", type=int, default=RUNS_PER_FILE,
                   help="runs per Parquet file (1: the layout 'llray run' writes)")
    p.add_argument("--dir", help="use (or create) the store here instead of a temp dir")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args.repeat, args.apply_runs)))
        return
    with tempfile.TemporaryDirectory(prefix="llray-scale-") as tmp:
        root = Path(args.dir or tmp)
        if not (root / "r_matrix").exists():
            t0 = time.perf_counter()
            rows = generate(root, args.runs, args.tasks, runs_per_file=args.runs_per_file)
            files = list(root.rglob("*.parquet"))
            size = sum(f.stat().st_size for f in files) / 2**20
            print(f"store: {args.runs:,} runs x {args.tasks} tasks = {rows:,} R rows, "
                  f"{size:.0f} MiB Parquet in {len(files):,} files, written in "
                  f"{time.perf_counter() - t0:.1f} s")
        _report(str(root), args)


def _report(root: str, args: argparse.Namespace) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpus} CPUs, load average {load:.1f} (other work slows every wall time)")
    res = {}
    for method in ("duckdb", "duckdb+forgetting", "numpy", "groupby-apply"):
        repeat = 1 if method == "groupby-apply" else args.repeat
        res[method] = r = _child(method, root, repeat, args.apply_runs)
        scale = args.runs / r["runs"] if method == "groupby-apply" else 1.0
        r["all_s"] = r["best_s"] * scale
        note = f" (measured on {r['runs']:,} runs, scaled)" if scale != 1 else ""
        print(f"{method:>18}: {r['all_s']:7.3f} s best ({r['cpu_s'] * scale:6.3f} CPU s), "
              f"{r['first_s'] * scale:7.3f} s first call{note}; peak RSS "
              f"{r['peak_rss_mib']:5.0f} MiB (after imports {r['rss_before_mib']:.0f} MiB)")
    fast = res["duckdb"]
    for other in ("numpy", "groupby-apply", "duckdb+forgetting"):
        print(f"agree {other:>18} vs duckdb: max |diff| {_agree(root, 'duckdb', other):.2e}")
    ratio = res["groupby-apply"]["all_s"] / fast["best_s"]
    print(f"ratio groupby-apply / duckdb: {ratio:.0f}x")
    ok = fast["best_s"] <= TARGET_S and fast["peak_rss_mib"] <= TARGET_MIB
    print(f"target ({TARGET_S:.0f} s, {TARGET_MIB} MiB) for ACC/BWT/FWT per run and per strategy: "
          f"{'met' if ok else 'NOT met'} ({fast['best_s']:.3f} s, {fast['peak_rss_mib']:.0f} MiB)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average now {load:.1f}; on a busy machine wall time exceeds CPU time / "
          f"threads: DuckDB used {fast['cpu_s']:.3f} CPU s over {cpus} threads")


if __name__ == "__main__":
    main()
