"""``llray run CONFIG``: expand the grid, run each run in a Ray actor, write Parquet.

Each run checkpoints after every task (default ``OUTPUT/checkpoints``, or the config's
``checkpoint: {path: ...}``). ``--resume`` after an interrupted sweep skips the runs
already written to ``OUTPUT`` and continues the others from their checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llray.commands._common import add_ray_output_arguments, output_dir

if TYPE_CHECKING:  # the command line imports every command: keep torch/Ray out of start-up
    from llray.config import ExperimentConfig, RunSpec

NAME = "run"
HELP = "run the strategies x seeds x orders grid of an experiment config on Ray"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see jobs/)")
    add_ray_output_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="skip runs already in --output (except failed ones); continue the "
                        "others from their checkpoints")
    p.add_argument("--max-in-flight", type=int,
                   help="learner actors alive at once (default: twice what the cluster "
                        "fits, at least 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-compact", action="store_true",
                   help="keep one Parquet file per run (default: merge the experiment's "
                        "files once the sweep is done; see 'llray compact')")


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to continue after SIGINT/SIGTERM (the command line exits 130 with it)."""
    where = f" --output {args.output}" if args.output else ""
    return (f"finished runs are kept; continue the others from their checkpoints with: "
            f"llray run {args.config}{where} --resume")


def checkpoint_root(cfg: ExperimentConfig, output: str) -> str:
    """The config's checkpoint location, or ``OUTPUT/checkpoints``; plain paths made absolute."""
    from llray.distributed.checkpoint import resolve

    return resolve(cfg.checkpoint.path or str(Path(output) / "checkpoints"))


def execute(args: argparse.Namespace) -> int:
    """Check everything, then run the sweep and print the summary table."""
    from llray.config import load_config
    from llray.data import make_stream
    from llray.distributed.session import alive_nodes, connect, storage_warnings
    from llray.results import check_writable, compact

    cfg = load_config(args.config)
    output = args.output = output_dir(args, cfg.experiment)
    check_writable(output)
    ckpt = checkpoint_root(cfg, output)
    specs = _todo(cfg, output, ckpt) if args.resume else cfg.runs()
    stream = make_stream(cfg.stream)
    connect(args.address, args.num_cpus)
    for w in storage_warnings(output, ckpt, alive_nodes()):
        print(f"llray: warning: {w}", file=sys.stderr)
    from llray.distributed.sweep import SweepOptions, run_sweep

    options = SweepOptions(checkpoint=ckpt, max_retries=cfg.checkpoint.max_retries,
                           resume=args.resume, max_in_flight=args.max_in_flight)
    with _Progress(specs, cfg.stream.num_tasks, disable=args.no_progress) as progress:
        finished = run_sweep(specs, stream, output, options, on_task=progress.task,
                             on_run=progress.run)
    if not args.no_compact:
        compact(output, cfg.experiment)  # one file per run -> a few large files
    from llray.report import report

    print(report(output))
    print(f"results: {output}")
    return 0 if all(f.result.status != "failed" for f in finished) else 1


def _todo(cfg: ExperimentConfig, output: str, ckpt: str) -> list[RunSpec]:
    """The runs not yet in ``output`` (or written there as failed), and what they resume."""
    from llray.distributed.checkpoint import CheckpointStore
    from llray.results import finished_run_ids, load_runs

    done = finished_run_ids(output)
    failed: set[str] = set()
    if done:
        runs = load_runs(output, columns=["run_id", "status"])
        failed = set(runs.loc[runs["status"] == "failed", "run_id"])
    specs = [s for s in cfg.runs() if s.run_id not in done - failed]
    saved = CheckpointStore(ckpt).run_ids()
    partial = sum(1 for s in specs if s.run_id in saved)
    print(f"resume: {len(cfg.runs()) - len(specs)} runs already done, "
          f"{sum(1 for s in specs if s.run_id in failed)} failed before and run again, "
          f"{partial} continue from checkpoints, {len(specs) - partial} start fresh",
          file=sys.stderr)
    return specs


class _Progress:
    """Two tqdm bars: finished runs, and learned tasks over all runs."""

    def __init__(self, specs: list[RunSpec], num_tasks: int, disable: bool) -> None:
        from tqdm import tqdm

        self.runs = tqdm(total=len(specs), desc="runs ", unit="run", disable=disable)
        self.tasks = tqdm(total=len(specs) * num_tasks, desc="tasks", unit="task",
                          disable=disable)

    def task(self, event) -> None:
        self.tasks.update(1)

    def run(self, finished) -> None:
        # tasks not trained here: restored from a checkpoint, or skipped after divergence
        self.tasks.update(max(0, len(finished.spec.order) - finished.tasks_trained))
        self.runs.update(1)
        self.runs.set_postfix_str(f"{finished.spec.strategy.display} seed={finished.spec.seed}")

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.tasks.close()
        self.runs.close()
