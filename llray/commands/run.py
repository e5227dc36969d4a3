"""``llray run CONFIG``: expand the grid, run each run in a Ray actor, write Parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from llray.config import RunSpec, load_config
from llray.data import make_stream
from llray.distributed.session import connect, loopback_only
from llray.results import check_writable, finished_run_ids


NAME = "run"
HELP = "run the strategies x seeds x orders grid of an experiment config on Ray"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see jobs/)")
    p.add_argument("--output", help="results directory (default: results/EXPERIMENT)")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a Ray job)")
    p.add_argument("--resume", action="store_true", help="skip runs already in --output")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def execute(args: argparse.Namespace) -> int:
    """Check everything, then run the sweep and print the summary table."""
    cfg = load_config(args.config)
    output = args.output or str(Path("results") / cfg.experiment)
    check_writable(output)
    specs = cfg.runs()
    if args.resume:
        done = finished_run_ids(output)
        specs = [s for s in specs if s.run_id not in done]
        print(f"resume: {len(cfg.runs()) - len(specs)} runs already done", file=sys.stderr)
    stream = make_stream(cfg.stream)
    loopback_only()
    connect(args.address, args.num_cpus)
    from llray.distributed.sweep import run_sweep

    with _Progress(specs, cfg.stream.num_tasks, disable=args.no_progress) as progress:
        finished = run_sweep(specs, stream, output, on_task=progress.task, on_run=progress.run)
    from llray.report import report

    print(report(output))
    print(f"results: {output}")
    return 0 if all(f.result.status != "failed" for f in finished) else 1


class _Progress:
    """Two tqdm bars: finished runs, and learned tasks over all runs."""

    def __init__(self, specs: list[RunSpec], num_tasks: int, disable: bool) -> None:
        from tqdm import tqdm

        self.runs = tqdm(total=len(specs), desc="runs ", unit="run", disable=disable)
        self.tasks = tqdm(total=len(specs) * num_tasks, desc="tasks", unit="task",
                          disable=disable)

    def task(self, spec: RunSpec, step: int) -> None:
        self.tasks.update(1)

    def run(self, finished) -> None:
        skipped = np.isnan(finished.result.R[1:]).all(axis=1).sum()  # after a divergence
        self.tasks.update(int(skipped))
        self.runs.update(1)
        self.runs.set_postfix_str(f"{finished.spec.strategy.display} seed={finished.spec.seed}")

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.tasks.close()
        self.runs.close()

