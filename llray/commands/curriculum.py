"""``llray curriculum CONFIG``: does the task order matter for this stream and strategy?

Runs the identity order, ``--random K`` random orders, the taskonomy's proposed orders
(computed first with ``llray taskonomy`` unless ``OUTPUT/taskonomy/<strategy>`` already
has them for this stream) and the best order of any study in OUTPUT that searched the
order (or of ``--study NAME``), each with every seed of the config. Prints ACC and BWT
per order and writes ``OUTPUT/curriculum/<strategy>/orders.parquet`` and a plot.
"""

from __future__ import annotations

import argparse
import sys

from llray.commands._common import add_ray_output_arguments, output_dir
from llray.errors import ConfigError

NAME = "curriculum"
HELP = "compare task orders (identity, random, taskonomy, tuned) on one stream and strategy"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML: its stream, model, training and seeds")
    add_ray_output_arguments(p)
    p.add_argument("--strategy", help="label of the config strategy to use (default: the first)")
    p.add_argument("--random", type=int, default=5, metavar="K",
                   help="how many random orders (default 5)")
    p.add_argument("--study", help="take the tuned order from this study in OUTPUT (default: "
                                   "every study there that searched the order)")
    p.add_argument("--no-taskonomy", action="store_true",
                   help="do not compute the taskonomy orders when OUTPUT has none")


def execute(args: argparse.Namespace) -> int:
    from llray import curriculum as cu
    from llray import taskonomy as tx
    from llray.config import load_config
    from llray.data import make_stream
    from llray.results import check_writable, finished_run_ids

    cfg = load_config(args.config)
    spec = tx.template(cfg, args.strategy)
    label = spec.strategy.display
    if args.random < 0:
        raise ConfigError("--random", f"must be >= 0, got {args.random}")
    output = args.output = output_dir(args, cfg.experiment)
    from llray.commands.run import check_cluster, sweep_options

    options = sweep_options(args, cfg)
    check_cluster(spec.resources, args)
    check_writable(output)
    stream = make_stream(cfg.stream)
    T = stream.num_tasks
    proposed = cu.tuned_orders(output, T, stream.benchmark, args.study)  # checks --study
    shapes = _taskonomy(output, spec, cfg.seeds, stream, args)
    proposed = {**shapes, **proposed}
    cands = cu.candidates(T, True, cu.random_orders(args.random, T, cfg.stream.seed), proposed)
    done = finished_run_ids(output)
    specs = [s for s in cu.specs(spec, cfg.seeds, cands) if s.run_id not in done]
    print(f"curriculum: {len(cands)} orders x {len(cfg.seeds)} seed(s) of {label}; "
          f"{len(specs)} runs to do", file=sys.stderr)
    failed = 0
    if specs:
        failed = _run(specs, stream, output, cfg, args, options)
    table, per_run = cu.compare(output, spec.experiment + cu.SUFFIX, label, cands)
    title = f"{cfg.experiment}: {label} on {stream.benchmark}, {len(cfg.seeds)} seed(s) per order"
    where = cu.write(output, label, table, cu.plot(table, per_run, title))
    print(cu.format_table(table))
    print(cu.summary_line(table))
    print(f"curriculum: {where}")
    return 1 if failed else 0


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to continue after SIGINT/SIGTERM: finished runs are skipped on a rerun."""
    where = f" --output {args.output}" if args.output else ""
    return f"finished runs are kept; rerun to continue: llray curriculum {args.config}{where}"


def _taskonomy(output, spec, seeds, stream, args) -> dict:
    """The taskonomy's orders: from OUTPUT when they match this config, else computed."""
    from llray import taskonomy as tx
    from llray.commands.taskonomy import report
    from llray.distributed.session import connect

    found = tx.load(output, spec.strategy.display)
    if found is not None and set(found[0]["config"]) == {tx.describe(spec, seeds)}:
        aff, curr = found
    elif args.no_taskonomy:
        return {}
    else:
        print("taskonomy: computing the pairwise transfer first", file=sys.stderr)
        connect(args.address, args.num_cpus, dashboard=args.dashboard)
        pairs = tx.run_pairs(stream, spec, seeds, fixed_cluster=args.address is None)
        report(output, spec, seeds, pairs, stream.num_tasks, "transfer-forgetting")
        aff, curr = tx.load(output, spec.strategy.display)
    return {f"taskonomy-{r.name}": tuple(r.order) for r in curr.itertuples()}


def _run(specs, stream, output, cfg, args, options) -> int:
    from dataclasses import replace

    from llray.commands.run import checkpoint_root
    from llray.distributed.session import connect

    connect(args.address, args.num_cpus, dashboard=args.dashboard)
    from llray.distributed.sweep import failure_lines, run_sweep

    options = replace(options, checkpoint=checkpoint_root(cfg, output))
    finished = run_sweep(specs, stream, output, options)
    for line in failure_lines(finished):
        print(f"llray: {line}", file=sys.stderr)
    return sum(f.result.status == "failed" for f in finished)
