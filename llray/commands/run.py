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
    from llray.distributed.sweep import SweepOptions

NAME = "run"
HELP = "run the strategies x seeds x orders grid of an experiment config on Ray"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see jobs/)")
    add_ray_output_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="skip runs already in --output (except failed ones); continue the "
                        "others from their checkpoints")
    p.add_argument("--max-in-flight", type=int,
                   help="at most this many runs (learner processes) at once (default: as "
                        "many as the cluster's nodes fit now)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-compact", action="store_true",
                   help="keep one Parquet file per run (default: merge the experiment's "
                        "files once the sweep is done; see 'llray compact')")


def uses_embedded_ray(args: argparse.Namespace) -> bool:
    """Start the embedded Ray early (``llray.cli``): no ``--address`` and no ``--resume``
    (which may find nothing left to do, and then answers without Ray)."""
    return args.address is None and not args.resume


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
    from llray.distributed.checkpoint import check_writable as check_checkpoints
    from llray.results import check_store, check_writable

    cfg = load_config(args.config)
    options = sweep_options(args, cfg)  # checks --max-in-flight
    output = args.output = output_dir(args, cfg.experiment)
    check_cluster(cfg.resources, args)
    if Path(output).exists():  # the files this sweep adds to (and compacts) read well
        check_store(output, experiment=cfg.experiment, full=not args.no_compact)
    check_writable(output)
    ckpt = checkpoint_root(cfg, output)
    check_checkpoints(ckpt)
    specs = _todo(cfg, output, ckpt) if args.resume else cfg.runs()
    timing: dict[str, float] = {}
    finished: list = []
    if specs:  # a --resume with nothing left to do does not start Ray
        finished = _sweep(args, cfg, specs, output, ckpt, options, timing)
    return _finish(args, cfg, output, finished, timing)


def sweep_options(args: argparse.Namespace, cfg: ExperimentConfig, **over) -> SweepOptions:
    """The sweep options of a command's arguments (embedded Ray: a fixed cluster)."""
    if args.address is None:
        from llray.distributed.session import loopback_only

        loopback_only()  # before the first import of Ray
    from llray.distributed.sweep import SweepOptions

    return SweepOptions(max_retries=cfg.checkpoint.max_retries,
                        resume=getattr(args, "resume", False),
                        max_in_flight=getattr(args, "max_in_flight", None),
                        fixed_cluster=args.address is None, **over)


def check_cluster(resources, args: argparse.Namespace) -> None:
    """Before anything is written: resources on the embedded Ray, or a reachable --address.

    Raises:
        ConfigError: see :func:`check_resources` and
            :func:`llray.distributed.session.probe`.
    """
    check_resources(resources, args)
    if args.address is not None:
        from llray.distributed.session import probe

        probe(args.address)  # an unreachable cluster: exit 2 within seconds, not a hang


def check_resources(resources, args: argparse.Namespace) -> None:
    """On the embedded Ray: a run no node of it could hold is a config error, before Ray starts.

    Raises:
        ConfigError: ``resources.num_cpus`` / ``resources.num_gpus`` asks for more than
            this machine (or ``--num-cpus``) gives the embedded Ray.
    """
    if args.address is not None:
        return  # a real cluster may grow: the sweep states its demand and waits
    from llray.distributed.session import loopback_only

    loopback_only()
    from llray.distributed.capacity import embedded_resources, shape_of
    from llray.distributed.sweep import check_fits

    node = embedded_resources(args.num_cpus)
    if node is not None:  # else the sweep checks once Ray has started
        check_fits(shape_of(resources), [node])


def _sweep(args, cfg, specs, output, ckpt, options, timing) -> list:
    """Start Ray, run ``specs``: the finished runs."""
    import time
    from dataclasses import replace

    from llray.data import make_stream
    from llray.distributed.session import alive_nodes, connect, storage_warnings

    stream = make_stream(cfg.stream)
    from llray.data.streaming import check_streamable

    for spec in specs:  # a streamed stream: only minibatch strategies, no packs (exit 2)
        check_streamable(stream, spec.strategy.name, spec.resources.pack)
    t0 = time.perf_counter()
    connect(args.address, args.num_cpus, dashboard=getattr(args, "dashboard", False))
    timing["ray start"] = time.perf_counter() - t0
    for w in storage_warnings(output, ckpt, alive_nodes()):
        print(f"llray: warning: {w}", file=sys.stderr)
    from llray.distributed.sweep import run_sweep

    options = replace(options, checkpoint=ckpt)
    t0 = time.perf_counter()
    with _Progress(specs, cfg.stream.num_tasks, disable=args.no_progress) as progress:
        # Ctrl-C / SIGTERM: KeyboardInterrupt reaches the command line (exit 130 + hint)
        finished = run_sweep(specs, stream, output, options, on_task=progress.task,
                             on_run=progress.run)
    timing["sweep"] = time.perf_counter() - t0
    return finished


def _finish(args, cfg, output, finished, timing) -> int:
    """Compact, print the report, the failed runs with their reasons and the timings."""
    import time

    from llray.distributed.sweep import failure_lines
    from llray.report import report
    from llray.results import compact

    if not args.no_compact:
        t0 = time.perf_counter()
        compact(output, cfg.experiment)  # one file per run -> a few large files
        timing["compaction"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    print(report(output))
    timing["report"] = time.perf_counter() - t0
    print(f"results: {output}")
    for line in failure_lines(finished):
        print(f"llray: {line}", file=sys.stderr)
    print("llray: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()), file=sys.stderr)
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
