"""``llray taskonomy CONFIG``: pairwise transfer between the tasks of a stream, on Ray.

For each ordered pair (i, j) and each of the config's seeds: learn i then j, and j alone
from the same initialisation; transfer = the difference on j, forgetting = what i lost
when j came next. Writes ``OUTPUT/taskonomy/<strategy>/`` (Parquet + ``affinity.png``)
and proposes curricula: the greedy path and the exact best path (small T).
"""

from __future__ import annotations

import argparse
import sys

from llray.commands._common import add_ray_output_arguments, output_dir

NAME = "taskonomy"
HELP = "pairwise task transfer (train i then j vs j alone) on Ray, and curricula from it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML: its stream, model, training and seeds")
    add_ray_output_arguments(p)
    p.add_argument("--strategy", help="label of the config strategy to use (default: the first)")
    p.add_argument("--score", choices=("transfer-forgetting", "transfer"),
                   default="transfer-forgetting",
                   help="what a curriculum maximises over consecutive pairs")


def uses_embedded_ray(args: argparse.Namespace) -> bool:
    """Start the embedded Ray early (``llray.cli``): the pairwise runs need it."""
    return args.address is None


def execute(args: argparse.Namespace) -> int:
    from llray import taskonomy as tx
    from llray.config import load_config
    from llray.data import make_stream
    from llray.distributed.session import connect
    from llray.results import check_writable

    from llray.commands.run import check_cluster

    cfg = load_config(args.config)
    spec = tx.template(cfg, args.strategy)
    output = output_dir(args, cfg.experiment)
    check_cluster(spec.resources, args)
    check_writable(output)
    stream = make_stream(cfg.stream)
    from llray.data.streaming import refuse_streamed

    refuse_streamed(stream, NAME)  # shards read batch by batch: llray run only
    connect(args.address, args.num_cpus, dashboard=args.dashboard)
    total = len(tx.jobs(stream.num_tasks, cfg.seeds))
    print(f"taskonomy: {stream.num_tasks} tasks, {len(cfg.seeds)} seed(s), "
          f"strategy {spec.strategy.display}: {total} short runs", file=sys.stderr)
    pairs = tx.run_pairs(stream, spec, cfg.seeds, on_job=_progress,
                         fixed_cluster=args.address is None)
    return report(output, spec, cfg.seeds, pairs, stream.num_tasks, args.score)


def _progress(job, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {done}/{total} done", file=sys.stderr)


def report(output: str, spec, seeds, pairs, num_tasks: int, score: str) -> int:
    """Affinity, curricula, files, printed summary; 1 if any job failed."""
    from llray import taskonomy as tx

    aff = tx.affinity(pairs)
    curr = tx.curricula(aff, num_tasks, score)
    title = f"{spec.experiment}: {spec.strategy.display}, {len(seeds)} seed(s)"
    png = tx.plot(aff, curr, num_tasks, title)
    where = tx.write(output, spec.strategy.display, pairs, aff, curr, tx.describe(spec, seeds), png,
                     experiment=spec.experiment + tx.SUFFIX)
    split = pairs["split"].iloc[0] if "split" in pairs and len(pairs) else "test"
    print(f"accuracies on the {'validation' if split == 'val' else 'test'} split")
    print("transfer (row i learned first, column j next; acc on j minus j alone):")
    print(tx.format_matrix(aff, "transfer", num_tasks))
    print("forgetting of i when j is learned next:")
    print(tx.format_matrix(aff, "forgetting", num_tasks))
    for r in curr.itertuples():
        print(f"{r.name} curriculum: {' -> '.join(map(str, r.order))}  (score {r.score:+.3f}, "
              f"{r.objective})")
    if num_tasks > tx.EXACT_MAX_TASKS:
        print(f"exact best path skipped: {num_tasks} tasks > {tx.EXACT_MAX_TASKS}")
    print(f"taskonomy: {where}")
    failed = pairs["status"] != "ok"
    if failed.any():
        print(f"{int(failed.sum())} runs did not finish (diverged or failed); their pairs "
              "are NaN", file=sys.stderr)
    return 1 if failed.any() else 0
