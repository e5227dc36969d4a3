"""Compaction: analysis of a store with one file per run, before and after ``llray compact``.

``llray run`` and ``llray tune`` write one Parquet file per run in ``r_matrix/`` and one in
``runs/``. This benchmark writes such a store (default 10,000 runs × 10 tasks: 20,000
files, 1.1 million R rows, 4 experiments; the generator of ``analysis_scale.py``), then,
each in a fresh Python process so that nothing is cached in the interpreter:

- ``metrics``: :func:`llray.analysis.run_metrics` (DuckDB, ACC/BWT/FWT) + ``summarize``;
- ``report``: :func:`llray.report.report` (what ``llray report`` prints, from ``runs/``);
- ``load``: :func:`llray.results.load` (both datasets into pandas);

measured on the per-run store, then :func:`llray.results.compact` (timed, with its peak
RSS), then the same three on the compacted store. It prints seconds (first call and best
of ``--repeat``), the before/after ratio of each, and checks that the per-run metrics,
the report and the loaded frames are the same before and after.

Usage::

    python benchmarks/bench_compact.py                 # 10,000 runs x 10 tasks
    python benchmarks/bench_compact.py --runs 2000 --repeat 1
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

METHODS = ("metrics", "report", "load")


def measure(method: str, root: str, repeat: int, sample: str) -> dict:
    """Run ``method`` ``repeat`` times in this process; seconds, CPU seconds, peak RSS."""
    import pandas as pd  # noqa: F401 - imports are not part of the timing
    import scipy.stats  # noqa: F401

    from llray import analysis, report, results

    times, cpus, out = [], [], None
    for _ in range(repeat):
        c0, t0 = _cpu_s(), time.perf_counter()
        if method == "metrics":
            out = analysis.run_metrics(root, metrics=["acc", "bwt", "fwt"], engine="duckdb")
            analysis.summarize(out, by="strategy")
        elif method == "report":
            out = report.report(root, as_json=True)
        elif method == "load":
            out = results.load(root)
        elif method == "compact":
            out = results.compact(root)
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    _save(method, out, sample)
    best = min(range(len(times)), key=times.__getitem__)
    return {"method": method, "first_s": times[0], "best_s": times[best], "cpu_s": cpus[best],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "files": sum(1 for _ in Path(root).rglob("*.parquet"))}


def _save(method: str, out, sample: str) -> None:
    """What the method returned, in a form the parent compares before/after."""
    if method == "metrics":
        out.drop(columns=["order"]).to_parquet(sample)
    elif method == "report":
        Path(sample).write_text(out)
    elif method == "load":
        key = ["run_id", "step", "eval_pos"]
        r = out.r_matrix.sort_values(key, ignore_index=True).drop(columns=["task_order"])
        r.to_parquet(sample)
        runs = out.runs.sort_values("run_id", ignore_index=True).drop(columns=["task_order"])
        runs.to_parquet(sample + ".runs")
    elif method == "compact":
        Path(sample).write_text(str(out))


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(method: str, root: str, repeat: int, sample: str) -> dict:
    cmd = [sys.executable, __file__, "--measure", method, "--dir", root,
           "--repeat", str(repeat), "--sample", sample]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _same(method: str, a: str, b: str) -> bool:
    import pandas as pd

    if method == "report":
        return Path(a).read_text() == Path(b).read_text()
    suffixes = [""] + ([".runs"] if method == "load" else [])
    for s in suffixes:
        x, y = pd.read_parquet(a + s), pd.read_parquet(b + s)
        if method == "metrics":
            x, y = x.sort_values("run_id", ignore_index=True), y.sort_values("run_id",
                                                                                ignore_index=True)
        pd.testing.assert_frame_equal(x, y, check_exact=False, atol=1e-12)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per method")
    p.add_argument("--dir", help="use (or create) the store here instead of a temp dir")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--sample", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args.repeat, args.sample)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from analysis_scale import generate

    with tempfile.TemporaryDirectory(prefix="llray-compact-") as tmp:
        root = Path(args.dir or tmp) / "store"
        samples = Path(tmp) / "samples"
        samples.mkdir()
        t0 = time.perf_counter()
        rows = generate(root, args.runs, args.tasks, runs_per_file=1)
        files = list(root.rglob("*.parquet"))
        print(f"store: {args.runs:,} runs x {args.tasks} tasks = {rows:,} R rows in "
              f"{len(files):,} files (one per run and dataset), written in "
              f"{time.perf_counter() - t0:.0f} s")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"machine: {cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
        before = {m: _child(m, str(root), args.repeat, str(samples / f"{m}-before"))
                  for m in METHODS}
        c = _child("compact", str(root), 1, str(samples / "compact"))
        print(f"compact: {c['best_s']:.2f} s ({c['cpu_s']:.2f} CPU s), peak RSS "
              f"{c['peak_rss_mib']:.0f} MiB; {(samples / 'compact').read_text()}")
        after = {m: _child(m, str(root), args.repeat, str(samples / f"{m}-after"))
                 for m in METHODS}
        print(f"{'':>8}  {'per-run files':>24}  {'compacted':>24}  ratio (best)")
        differ = []
        for m in METHODS:
            b, a = before[m], after[m]
            same = _same(m, str(samples / f"{m}-before"), str(samples / f"{m}-after"))
            differ += [] if same else [m]
            print(f"{m:>8}  {b['best_s']:7.3f} s (first {b['first_s']:6.3f})  "
                  f"{a['best_s']:7.3f} s (first {a['first_s']:6.3f})  "
                  f"{b['best_s'] / a['best_s']:5.1f}x  CPU {b['cpu_s']:.2f} -> {a['cpu_s']:.2f} s"
                  f"{'' if same else '  RESULTS DIFFER'}")
        verdict = f"DIFFER: {', '.join(differ)}" if differ else "the same before and after"
        print(f"files: {before['metrics']['files']:,} -> {after['metrics']['files']:,}; "
              f"per-run metrics, report and loaded frames {verdict}; "
              f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
