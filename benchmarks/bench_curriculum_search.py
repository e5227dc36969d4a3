"""Curriculum search at equal compute: random, TPE over Lehmer codes, and taskonomy-guided.

Two streams of 5 tasks (120 orders), naive fine-tuning (the order decides what is
forgotten), in this process (no Ray), small MLPs:

- ``rotated``: the stream of ``tuning/curriculum_order.yaml`` (digits rotated by k·45°);
- ``split-domain``: split digits, domain-incremental (each task maps two digits onto the
  labels 0/1, so which pairs follow which decides what interferes).

Ground truth: every one of the 120 orders is trained once (seed of the spec) and its
ACC cached; a method's "run" of an order looks its ACC up, so every method sees exactly
the objective a study would. Budget: ``--budget`` full runs' worth of task trainings
(a full run trains T tasks; a taskonomy pair run 2, a scratch run 1), so the taskonomy
methods pay for their 25 pairwise runs (20 pairs + 5 scratch = 45 task trainings = 9
full runs at T = 5) out of the same budget. Each study seed s gives the samplers their
seed and the taskonomy its pairwise runs with run seed s (cached per seed;
``--pair-seeds P`` reuses P sets, study seed s taking set s mod P, to save time).

Methods:

- ``random``: distinct random orders;
- ``tpe``: Optuna TPE over the Lehmer code (``n_startup_trials`` 8, as the shipped spec);
- ``tx-path+tpe``: taskonomy's ``best`` and ``greedy`` paths (``llray.taskonomy``,
  transfer − forgetting of consecutive pairs) enqueued, then TPE;
- ``tx-retention``: :mod:`llray.curriculum_search`: the retention model ranks all orders,
  the top 3 are run, then the neighbours of the best measured order.

Printed per stream, method and budget over the study seeds: how often the best order
found is in the top 10% of all orders, how often it is the best order, its mean rank
(1 = best of 120) and the mean regret in ACC. Timings are not the result here; the load
average is printed because the ground truth takes minutes on a busy machine.

Run: python benchmarks/bench_curriculum_search.py [--seeds 20] [--budget 12 18 24]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

from llray import taskonomy as tx
from llray.curriculum_search import RetentionModel, search
from llray.data import TaskStream, make_stream
from llray.experiment import execute
from llray.metrics import acc
from llray.tuning import lehmer
from llray.tuning.spec import StudySpec, load_spec, parse_spec

SPLIT_DOMAIN = {
    "study": "split_domain_order",
    "stream": {"dataset": "digits", "kind": "split", "scenario": "domain", "num_tasks": 5},
    "model": {"name": "mlp", "hidden": [64]},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.003},
    "strategy": "naive",
    "search": {"order": "permutation"},
}


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def ground_truth(study: StudySpec, stream: TaskStream, cache: Path) -> dict[tuple, float]:
    """ACC of every order (cached)."""
    T = study.num_tasks
    orders = list(itertools.permutations(range(T)))
    values = list(np.load(cache)["acc"]) if cache.is_file() else []
    cache.parent.mkdir(parents=True, exist_ok=True)
    for k in range(len(values), len(orders)):
        values.append(float(acc(execute(study.run_spec({"order": orders[k]}), stream).R)))
        if (k + 1) % 10 == 0:
            np.savez(cache, acc=np.array(values))  # a partial cache resumes
            print(f"    ground truth {k + 1}/{len(orders)}", flush=True)
    np.savez(cache, acc=np.array(values))
    return dict(zip(orders, values))


def pairs_for(study: StudySpec, stream: TaskStream, seed: int, cache: Path) -> pd.DataFrame:
    """The taskonomy's pairwise runs with run seed ``seed``, in this process (cached)."""
    if cache.is_file():
        return pd.read_parquet(cache)
    spec = replace(study.run_spec({"order": tuple(range(study.num_tasks))}), seed=seed)
    df = tx.run_pairs_here(spec, stream, [seed])
    cache.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(cache)
    return df


PAIR_COST = lambda T: T * (T - 1) * 2 + T  # noqa: E731  task trainings of the pairwise runs


def run_random(truth: dict, T: int, runs: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    orders = list(truth)
    picks = rng.choice(len(orders), size=min(runs, len(orders)), replace=False)
    return [orders[i] for i in picks]


def run_tpe(truth: dict, T: int, runs: int, seed: int, enqueue: list[tuple] = ()) -> list[tuple]:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for o in enqueue:
        study.enqueue_trial({f"order_{k}": d for k, d in enumerate(lehmer.encode(o))})
    done = []
    for _ in range(runs):
        t = study.ask()
        code = [t.suggest_int(f"order_{k}", 0, lehmer.digit_high(k, T))
                for k in range(lehmer.num_digits(T))]
        o = lehmer.decode(code, T)
        study.tell(t, truth[o])
        done.append(o)
    return done


def run_tx_path(truth: dict, T: int, runs: int, pairs: pd.DataFrame, seed: int) -> list[tuple]:
    curr = tx.curricula(tx.affinity(pairs), T)
    proposals = list(dict.fromkeys(tuple(o) for o in curr["order"]))
    return run_tpe(truth, T, runs, seed, proposals)


def run_tx_retention(truth: dict, T: int, runs: int, pairs: pd.DataFrame) -> list[tuple]:
    model = RetentionModel.from_pairs(pairs)
    return [o for o, _ in search(lambda o: truth[o], model, runs)]


def evaluate(found: list[tuple], truth: dict) -> tuple[float, int]:
    """(best ACC found, its rank among all orders: 1 = best)."""
    values = np.array(sorted(truth.values(), reverse=True))
    best = max(truth[o] for o in found)
    return best, int(np.sum(values > best)) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="study seeds (>= 20)")
    ap.add_argument("--budget", type=int, nargs="+", default=[12, 18, 24],
                    help="budgets in full runs' worth of task trainings")
    ap.add_argument("--streams", nargs="+", default=["rotated", "split-domain"])
    ap.add_argument("--pair-seeds", type=int, default=None,
                    help="distinct run seeds of the pairwise runs (study seed s uses s mod "
                         "this; default: one per study seed)")
    ap.add_argument("--cache", default=tempfile.gettempdir())
    args = ap.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"load average (1, 5, 15 min): {load_average()}")
    specs = {"rotated": load_spec("tuning/curriculum_order.yaml"),
             "split-domain": parse_spec(SPLIT_DOMAIN)}
    cache = Path(args.cache) / "llray_bench_curriculum"
    for name in args.streams:
        study = specs[name]
        stream = make_stream(study.experiment.stream)
        T = study.num_tasks
        t0 = time.perf_counter()
        truth = ground_truth(study, stream, cache / f"{name}_truth.npz")
        values = np.array(sorted(truth.values(), reverse=True))
        top = max(1, int(round(0.1 * len(values))))
        print(f"\n== {name}: {len(truth)} orders, ACC {values[-1]:.3f}..{values[0]:.3f}, "
              f"top 10% >= {values[top - 1]:.3f} ({time.perf_counter() - t0:.0f} s)")
        n_pairs = args.pair_seeds or args.seeds
        made = {p: pairs_for(study, stream, p, cache / f"{name}_pairs_{p}.parquet")
                for p in range(n_pairs)}
        pairs = {s: made[s % n_pairs] for s in range(args.seeds)}
        print(f"  pairwise runs with {n_pairs} run seeds ready "
              f"({time.perf_counter() - t0:.0f} s); their cost per study: "
              f"{PAIR_COST(T)} task trainings = {PAIR_COST(T) / T:.0f} full runs")
        print(f"  {'method':<14} {'budget':>6} {'runs':>5} {'top10%':>7} {'best':>5} "
              f"{'mean rank':>9} {'regret':>7}")
        for budget in args.budget:
            tx_runs = (budget * T - PAIR_COST(T)) // T
            for method in ("random", "tpe", "tx-path+tpe", "tx-retention"):
                runs = budget if method in ("random", "tpe") else tx_runs
                if runs < 1:
                    continue
                ranks, regrets = [], []
                for s in range(args.seeds):
                    if method == "random":
                        found = run_random(truth, T, runs, s)
                    elif method == "tpe":
                        found = run_tpe(truth, T, runs, s)
                    elif method == "tx-path+tpe":
                        found = run_tx_path(truth, T, runs, pairs[s], s)
                    else:
                        found = run_tx_retention(truth, T, runs, pairs[s])
                    best, rank = evaluate(found, truth)
                    ranks.append(rank)
                    regrets.append(values[0] - best)
                ranks = np.array(ranks)
                print(f"  {method:<14} {budget:>6} {runs:>5} {np.mean(ranks <= top):>7.2f} "
                      f"{np.mean(ranks == 1):>5.2f} {ranks.mean():>9.1f} "
                      f"{np.mean(regrets):>7.3f}")
    print(f"\nload average (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
