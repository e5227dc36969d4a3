"""``llray curriculum CONFIG``: does the task order matter for this stream and strategy?

Runs the identity order, ``--random K`` random orders, the taskonomy's proposed orders
(computed first with ``llray taskonomy`` unless ``OUTPUT/taskonomy/<strategy>`` already
has them for this stream) and the best order of any study in OUTPUT that searched the
order (or of ``--study NAME``), each with every seed of the config. Prints ACC and BWT
per order and writes ``OUTPUT/curriculum/<strategy>/orders.parquet`` and a plot.

``--search retention`` also searches the order (:mod:`llray.curriculum_search`): the
taskonomy's pairwise runs rank every order by the retention model, the search runs
``--search-budget`` orders (the top 3 predicted, then neighbours of the best measured on
validation), each with every seed, labels them ``search-1`` … in the table, writes
``search.parquet`` beside ``orders.parquet`` and prints the chosen order and how sure it is.
``--search gp`` needs no pairwise runs and computes none unless ``--taskonomy`` asks for
the taskonomy's orders as candidates (ones already in OUTPUT for this config are shown):
2 random orders, then each next order the one of highest expected improvement under a
Gaussian process fitted to the validation ACC after every step of the runs so far (each
prefix of a run informs the orders that end the same way; :mod:`llray.curriculum_bo`).
``--search gp-affinity`` is the same search started, instead of from 2 random orders,
from the order whose consecutive tasks are least alike in their training inputs
(:mod:`llray.curriculum_affinity`; no training beyond the search's own runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llray.commands._common import add_ray_output_arguments, output_dir
from llray.errors import ConfigError

NAME = "curriculum"
HELP = ("compare task orders (identity, random, taskonomy, tuned; --search: searched) on one "
        "stream and strategy")
SEARCHES = ("retention", "gp", "gp-affinity")
#: Searches that spend only their own runs (no pairwise runs unless --taskonomy).
GP_SEARCHES = ("gp", "gp-affinity")
DEFAULT_BUDGET = 6


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
    p.add_argument("--taskonomy", action="store_true",
                   help="compute the taskonomy orders when OUTPUT has none, also with "
                        "--search gp (which otherwise spends only its own runs)")
    p.add_argument("--search", choices=SEARCHES,
                   help="also search the order: 'retention' ranks every order by the "
                        "taskonomy's retention model, runs the top 3, then neighbours of the "
                        "best on validation; 'gp' (no pairwise runs) runs 2 random orders, "
                        "then the next by expected improvement under a GP fitted to the "
                        "validation ACC after every step of the runs so far (orders "
                        "compared from their last tasks); 'gp-affinity' is 'gp' started from "
                        "the order whose consecutive tasks are least alike in their "
                        "training inputs (no extra training)")
    p.add_argument("--search-budget", type=int, metavar="N",
                   help=f"orders the search runs, each with every seed (retention: after the "
                        f"pairwise runs; default {DEFAULT_BUDGET}; only with --search)")


def uses_embedded_ray(args: argparse.Namespace) -> bool:
    """Start the embedded Ray early (``llray.cli``): the orders run on it."""
    return args.address is None


def execute(args: argparse.Namespace) -> int:
    from llray import curriculum as cu
    from llray import taskonomy as tx
    from llray.config import load_config
    from llray.data import make_stream
    from llray.results import check_store, check_writable, finished_run_ids

    cfg = load_config(args.config)
    spec = tx.template(cfg, args.strategy)
    label = spec.strategy.display
    if args.random < 0:
        raise ConfigError("--random", f"must be >= 0, got {args.random}")
    budget = check_search(args, cfg.stream.num_tasks)
    output = args.output = output_dir(args, cfg.experiment)
    from llray.commands.run import check_cluster, sweep_options

    options = sweep_options(args, cfg)
    check_cluster(spec.resources, args)
    if Path(output).exists():  # every file it will read, before it trains or writes
        check_store(output, ("runs",), full=True)
        check_store(output, ("r_matrix",), spec.experiment + cu.SUFFIX, full=True)
    check_writable(output)
    stream = make_stream(cfg.stream)
    from llray.data.streaming import refuse_streamed

    refuse_streamed(stream, NAME)  # shards read batch by batch: llray run only
    T = stream.num_tasks
    proposed = cu.tuned_orders(output, T, stream.benchmark, args.study)  # checks --study
    shapes = _taskonomy(output, spec, cfg.seeds, stream, args)
    randoms = cu.random_orders(args.random, T, cfg.stream.seed)
    failed, searched, assessment = 0, {}, None
    if args.search:  # the other candidates run in the search's first sweep
        others = cu.candidates(T, True, randoms, {**shapes, **proposed})
        failed, searched, assessment = _search(spec, cfg, stream, output, args, options,
                                               budget, [c.order for c in others])
    proposed = {**shapes, **proposed, **searched}
    cands = cu.candidates(T, True, randoms, proposed)
    done = finished_run_ids(output)
    specs = [s for s in cu.specs(spec, cfg.seeds, cands) if s.run_id not in done]
    print(f"curriculum: {len(cands)} orders x {len(cfg.seeds)} seed(s) of {label}; "
          f"{len(specs)} runs to do", file=sys.stderr)
    if specs:
        failed += _run(specs, stream, output, cfg, args, options)
    table, per_run = cu.compare(output, spec.experiment + cu.SUFFIX, label, cands)
    title = f"{cfg.experiment}: {label} on {stream.benchmark}, {len(cfg.seeds)} seed(s) per order"
    where = cu.write(output, label, table, cu.plot(table, per_run, title))
    print(cu.format_table(table))
    print(cu.summary_line(table))
    if assessment is not None:
        from math import factorial

        from llray.curriculum_search import format_assessment

        print(format_assessment(assessment, factorial(T)))
        top = table.iloc[0]
        if top["order"] != ",".join(map(str, assessment["order"])):
            print(f"  an order outside the search ranks first on validation: {top['label']} "
                  f"({top['order'].replace(',', ' ')})")
    print(f"curriculum: {where}")
    return 1 if failed else 0


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to continue after SIGINT/SIGTERM: finished runs are skipped on a rerun."""
    where = f" --output {args.output}" if args.output else ""
    return f"finished runs are kept; rerun to continue: llray curriculum {args.config}{where}"


def check_search(args: argparse.Namespace, num_tasks: int) -> int:
    """The search's budget, checked before any work (0 without ``--search``).

    Raises:
        ConfigError: ``--search-budget`` without ``--search``, outside ``1..T!``;
            ``--search retention`` with ``--no-taskonomy``; ``--taskonomy`` with
            ``--no-taskonomy``; ``--search`` with more tasks
            than the search scores (``T!`` orders).
    """
    from math import factorial

    from llray.curriculum_search import MAX_TASKS

    if args.taskonomy and args.no_taskonomy:
        raise ConfigError("--taskonomy", "contradicts --no-taskonomy; give one of them")
    if not args.search:
        if args.search_budget is not None:
            raise ConfigError("--search-budget", f"only with --search {', '.join(SEARCHES)}")
        return 0
    if args.no_taskonomy and args.search == "retention":
        raise ConfigError("--no-taskonomy", "--search retention needs the taskonomy's "
                                            "pairwise runs; drop --no-taskonomy")
    if num_tasks > MAX_TASKS:
        raise ConfigError("--search", f"scores all T! orders: at most {MAX_TASKS} tasks, the "
                                      f"stream has {num_tasks}")
    budget = DEFAULT_BUDGET if args.search_budget is None else args.search_budget
    most = factorial(num_tasks)
    if not 1 <= budget <= most:
        raise ConfigError("--search-budget", f"must be an integer in 1..{most} (the orders of "
                                             f"{num_tasks} tasks), got {budget}")
    return budget


def wants_taskonomy(args: argparse.Namespace) -> bool:
    """Whether to compute the taskonomy's pairwise runs when OUTPUT has none for this
    config: yes by default (they are the comparison's candidates and the retention
    search's model), no with ``--no-taskonomy``, and no with ``--search gp`` or
    ``gp-affinity`` unless ``--taskonomy`` asks for them (a GP search costs only its own
    runs)."""
    if args.no_taskonomy:
        return False
    return args.taskonomy or args.search not in GP_SEARCHES


def _search(spec, cfg, stream, output, args, options, budget, others=()):
    """The order search of ``--search``: ``(failed runs, {label: order}, assessment)``.

    ``others``: orders to run in the same sweep as the search's first orders (the
    comparison's other candidates), so that one sweep keeps the cluster busy."""
    import numpy as np
    import pandas as pd

    from llray import curriculum as cu
    from llray.curriculum_bo import gp_search
    from llray.curriculum_search import assess, search
    from llray.results import finished_run_ids

    label = spec.strategy.display
    model = _retention_model(output, label, stream) if args.search == "retention" else None
    experiment = spec.experiment + cu.SUFFIX
    failed = 0

    def run_orders(orders):
        nonlocal failed
        cands = [cu.Candidate("search", tuple(o)) for o in orders]
        done = finished_run_ids(output)
        todo = [s for s in cu.specs(spec, cfg.seeds, cands) if s.run_id not in done]
        if todo:
            failed += _run(todo, stream, output, cfg, args, options)

    measured = {}

    def evaluate(order):
        run_orders([order])  # nothing to do when it ran in the first batch or before
        measured[order] = cu.val_by_seed(output, experiment, label, order, cfg.seeds)
        value = np.nanmean(measured[order]) if np.isfinite(measured[order]).any() else -np.inf
        if model is not None or not np.isfinite(value):
            return float(value)
        # the GP also learns from the model after each step of the run (validation R rows)
        steps = cu.val_steps_by_seed(output, experiment, label, order, cfg.seeds)
        ok = steps[np.isfinite(steps[:, -1])]  # the seeds whose run finished
        if not len(ok):
            return float(value)
        steps = ok.mean(axis=0)
        steps[-1] = value
        return steps

    print(f"curriculum: {args.search} search over {len(cfg.seeds)} seed(s), {budget} orders",
          file=sys.stderr)
    if model is not None:
        run_orders([*model.ranked()[:min(3, budget)], *others])  # one sweep for all of them
        found = search(evaluate, model, budget)
    else:  # the start and the other candidates in one sweep; a random start: the stream's seed
        found = gp_search(evaluate, stream.num_tasks, budget, cfg.stream.seed,
                          on_start=lambda first: run_orders([*first, *others]),
                          first=_affinity_start(stream) if args.search == "gp-affinity"
                          else None)
    ok = {o: v for o, v in measured.items() if np.isfinite(v).any()}
    assessment = None  # every run of the searched orders failed: nothing to choose
    if ok:  # a seed whose run failed counts as ACC 0 for that order
        assessment = assess({o: np.nan_to_num(v, nan=0.0) for o, v in ok.items()}, model)
        assessment["search"] = args.search
    else:
        print(f"llray: {args.search} search: every run of the searched orders failed",
              file=sys.stderr)
    chosen = assessment["order"] if assessment else None
    predicted = [model.predict(o) if model else np.nan for o, _ in found]
    cu.write_search(output, label, pd.DataFrame({
        "step": range(1, len(found) + 1),
        "order": [",".join(map(str, o)) for o, _ in found],
        "predicted_acc": predicted,
        "acc_val": [v for _, v in found],
        "chosen": [o == chosen for o, _ in found]}))
    return failed, {f"search-{k}": o for k, (o, _) in enumerate(found, 1)}, assessment


def _affinity_start(stream) -> list[tuple[int, ...]]:
    """``--search gp-affinity``'s first order: consecutive tasks least alike in their
    training inputs (printed with the affinity it came from)."""
    import numpy as np

    from llray.curriculum_affinity import affinity_ranked, input_affinity

    S = input_affinity(stream)
    first = affinity_ranked(S)[0]
    print(f"curriculum: input affinity of the tasks (training inputs, cosine of class means):\n"
          f"{np.array2string(S, precision=2)}\n"
          f"  first order (consecutive tasks least alike): {' '.join(map(str, first))}",
          file=sys.stderr)
    return [first]


def _retention_model(output, label, stream):
    """The retention model from the taskonomy's pairwise runs in OUTPUT (validation)."""
    import pandas as pd

    from llray import taskonomy as tx
    from llray.curriculum_search import RetentionModel

    pairs = tx.load_pairs(output, label)
    if pairs is None:
        raise ConfigError("--search", f"no pairwise runs in {tx.folder(output, label)}")
    if stream.has_val and set(pairs.get("split", pd.Series(["test"]))) != {"val"}:
        raise ConfigError("--search", f"the pairwise runs in {tx.folder(output, label)} are "
                                      "on the test split (written before validation splits); "
                                      "remove that folder to recompute them on validation")
    return RetentionModel.from_pairs(pairs)


def _taskonomy(output, spec, seeds, stream, args) -> dict:
    """The taskonomy's orders: from OUTPUT when they match this config, else computed."""
    from llray import taskonomy as tx
    from llray.commands.taskonomy import report
    from llray.distributed.session import connect

    found = tx.load(output, spec.strategy.display)
    if found is not None and set(found[0]["config"]) == {tx.describe(spec, seeds)}:
        aff, curr = found
    elif not wants_taskonomy(args):
        if args.search in GP_SEARCHES and not args.no_taskonomy:
            print(f"taskonomy: not computed (--search {args.search} spends only its own runs; "
                  "--taskonomy adds the taskonomy's orders as candidates)", file=sys.stderr)
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
