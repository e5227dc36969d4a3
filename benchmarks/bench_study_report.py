"""HTML report of a 24-trial study: how long ``llray report --html`` takes, per part.

A results store is written with one study of 24 trials in the shape of a real one (EWC
lambda and lr log-uniform, the order of 5 tasks searched, a third of the trials stopped
early by the scheduler) and its confirmation runs (best and baseline on 5 seeds); then
the report is built and written. Printed: seconds for the whole report and for each
kind of figure, the ratio to the 10 s target, and with ``--before COMMIT`` the same
report by ``llray/html_report.py`` as of that commit, measured side by side in one run.
Rendering is CPU-bound, so the machine's load changes the wall times: the load average is
printed with them, and the CPU seconds of this process beside them. A first build warms
up imports and matplotlib's font cache and is not timed.

Run: python benchmarks/bench_study_report.py [--trials 24] [--dpi 100] [--before COMMIT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from llray import html_report
from llray.learner import RunResult
from llray.results import RunMeta, write_runs

T = 5


def make_store(out: Path, trials: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(trials):
        order = tuple(int(x) for x in rng.permutation(T))
        lam, lr = float(10 ** rng.uniform(-2, 5)), float(10 ** rng.uniform(-4, -2))
        R = rng.uniform(0.3, 0.9, size=(T + 1, T))
        status = "ok"
        if i % 3 == 2:
            R[4:], status = np.nan, "stopped"
        tuning = {"study": "st", "params": {"ewc.lambda_": lam, "train.lr": lr,
                                            "order": list(order)},
                  "log_keys": ["ewc.lambda_", "train.lr"]}
        cfg = {"strategy": {"name": "ewc", "lambda_": lam}, "tuning": tuning}
        res = RunResult(R=R, order=order, status=status, n_test=np.full(T, 100), wall_s=1.0,
                        train_s=1.0, samples_trained=10)
        items.append((RunMeta(f"trial{i}", "st", "ewc", "digits", "domain", 0, order, cfg), res))
    for s in range(1, 6):
        for role, base in (("best", 0.7), ("baseline", 0.6)):
            tuning = {"study": "st", "params": {"ewc.lambda_": 1.0}, "confirm": role}
            R = np.clip(rng.normal(base, 0.05, size=(T + 1, T)), 0, 1)
            res = RunResult(R=R, order=tuple(range(T)), status="ok", n_test=np.full(T, 100),
                            wall_s=1.0, train_s=1.0, samples_trained=10)
            items.append((RunMeta(f"c{role}{s}", "st-confirm", "ewc", "digits", "domain", s,
                                  tuple(range(T)), {"tuning": tuning}), res))
    write_runs(out, items)


def _module_at(commit: str):
    """``llray/html_report.py`` as of ``commit`` (git show), imported under another name."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "show", f"{commit}:llray/html_report.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "html_report_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("html_report_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--dpi", type=int, default=100)
    ap.add_argument("--before", help="a git commit: also time llray/html_report.py as of it")
    args = ap.parse_args()
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "results"
        make_store(store, args.trials)
        times: dict[str, float] = defaultdict(float)
        png = html_report._png

        def timed_png(fig, dpi):
            t0 = time.perf_counter()
            out = png(fig, dpi)
            times["png encoding (all figures)"] += time.perf_counter() - t0
            return out

        html_report.build(store, dpi=args.dpi)  # warm-up: imports, font cache
        html_report._png = timed_png
        t0, c0 = time.perf_counter(), time.process_time()
        sections = html_report.build(store, dpi=args.dpi)
        html_report.write_html(store, Path(d) / "report.html", sections)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        html_report._png = png
        kinds = [f.kind for s in sections for f in s.figures]
        print(f"{args.trials}-trial study + confirmation: report in {total:.2f} s wall, "
              f"{cpu:.2f} s CPU ({cpu / 10:.2f} of the 10 s target on an idle core); "
              f"{len(kinds)} figures: "
              + ", ".join(f"{k} {kinds.count(k)}" for k in dict.fromkeys(kinds)))
        for k, v in times.items():
            print(f"  {k}: {v:.2f} s wall")
        if args.before:
            old = _module_at(args.before)
            t0, c0 = time.perf_counter(), time.process_time()
            old.write_html(store, Path(d) / "before.html", old.build(store, dpi=args.dpi))
            wall_b, cpu_b = time.perf_counter() - t0, time.process_time() - c0
            print(f"the report as of commit {args.before}: {wall_b:.2f} s wall, {cpu_b:.2f} s "
                  f"CPU; now / before (CPU): {cpu / cpu_b:.2f}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
