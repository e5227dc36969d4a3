"""Tuning: parallel efficiency of Ray Tune trials, and TPE vs random search over orders.

1. Parallel efficiency. The same Ray Tune study (EWC on permuted digits, 5 tasks, MLP
   256-256, lambda and lr searched, 6 trials) runs with 2 concurrent trials and with 1,
   on an embedded local Ray with 2 CPUs. Reported: the 2-concurrent study's wall time
   against the sum of its trials' own times (ideal: sum / wall = 2 on 2 cores), and the
   speedup of the 2-concurrent study over the sequential one. Both are only meaningful
   when nothing else runs on the machine; the load average is printed with them.
2. Curriculum search. The order of 5 rotated-digits tasks (120 orders) is searched with
   Optuna's TPE (as in tuning/curriculum_order.yaml, and with TPE's defaults) and with
   random search, N trials each, over several study seeds. A run is a deterministic
   function of its order, so all 120 orders are trained once up front and the searches
   look their ACC up: the samplers see exactly the objective a study would, and the
   table also says where the best order found ranks among all 120.

Run: python benchmarks/bench_tuning.py [--trials N] [--seeds S] [--tune-trials N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import replace

import tempfile

import numpy as np
import optuna
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

from llray.data import make_stream  # noqa: E402
from llray.experiment import execute  # noqa: E402
from llray.tuning.spec import SamplerSpec, load_spec, parse_spec  # noqa: E402

EFFICIENCY_SPEC = {
    "study": "bench_parallel",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 5},
    "model": {"hidden": [256, 256]},
    "train": {"epochs": 4, "optimizer": "adam", "lr": 0.003},
    "strategy": "ewc",
    "search": {"ewc.lambda_": {"loguniform": [1.0, 1.0e3]},
               "train.lr": {"loguniform": [1.0e-3, 1.0e-2]}},
    "num_trials": 8,
    "resources": {"num_cpus": 1},
    "seed": 0,
}


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def parallel_efficiency(out_dir: str, num_trials: int) -> None:
    import ray

    from llray.tuning.tune_backend import run_tune

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"\n== parallel efficiency: {num_trials} Ray Tune trials, 2 CPUs "
          f"(load average before: {load_average()})")
    rows = {}
    for concurrent in (2, 1):
        spec = parse_spec({**EFFICIENCY_SPEC, "num_trials": num_trials,
                           "max_concurrent_trials": concurrent,
                           "study": f"bench_parallel_{concurrent}"})
        t0 = time.perf_counter()
        records = run_tune(spec, os.path.join(out_dir, f"c{concurrent}"))
        wall = time.perf_counter() - t0
        trial_sum = sum(r.extra["wall_s"] for r in records)
        rows[concurrent] = (wall, trial_sum)
        print(f"  {concurrent} concurrent: study wall {wall:6.1f} s, sum of trial times "
              f"{trial_sum:6.1f} s, sum / wall = {trial_sum / wall:.2f}")
    ray.shutdown()
    (w2, s2), (w1, _) = rows[2], rows[1]
    print(f"  2-concurrent study: sum of its trial times / wall = {s2 / w2:.2f} "
          f"(ideal 2.00; efficiency {s2 / w2 / 2:.0%})")
    print(f"  speedup of 2 concurrent over 1: {w1 / w2:.2f}x  "
          f"(load average after: {load_average()})")


def all_orders(spec) -> dict[tuple[int, ...], float]:
    """ACC of every order of the spec's stream (one run each)."""
    stream = make_stream(spec.experiment.stream)
    base = spec.run_spec({"order": tuple(range(spec.num_tasks))})
    acc = {}
    for order in itertools.permutations(range(spec.num_tasks)):
        res = execute(replace(base, order=order), stream)
        acc[order] = float(np.mean(res.R[-1])) if res.status == "ok" else 0.0
    return acc


def search(spec, sampler: SamplerSpec, seed: int, n: int, acc: dict) -> float:
    """Best ACC an Optuna study with ``sampler`` finds in ``n`` trials (looked up)."""
    study = optuna.create_study(direction="maximize", sampler=sampler.build(seed))

    def objective(trial: optuna.Trial) -> float:
        return acc[tuple(spec.space.sample(trial)["order"])]

    study.optimize(objective, n_trials=n)
    return study.best_value


def curriculum(n: int, seeds: int) -> None:
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "tuning",
                                  "curriculum_order.yaml"))
    print(f"\n== curriculum search: {spec.num_tasks} tasks "
          f"({spec.experiment.stream.kind} {spec.experiment.stream.dataset}, "
          f"{spec.strategy}), best ACC after {n} trials, mean over {seeds} study seeds")
    t0 = time.perf_counter()
    acc = all_orders(spec)
    values = np.array(sorted(acc.values(), reverse=True))
    print(f"  all {len(acc)} orders trained in {time.perf_counter() - t0:.0f} s: ACC from "
          f"{values[-1]:.3f} to {values[0]:.3f} (median {np.median(values):.3f}, identity "
          f"{acc[tuple(range(spec.num_tasks))]:.3f})")
    samplers = {
        "TPE (spec: n_startup_trials 8)": spec.sampler,
        "TPE (Optuna defaults)": SamplerSpec("tpe"),
        "random": SamplerSpec("random"),
    }
    print(f"  {'sampler':32s} {'best ACC':>9s} {'± std':>7s} {'rank of best':>13s} "
          f"{'found top-1':>12s}")
    for name, sampler in samplers.items():
        best = np.array([search(spec, sampler, s, n, acc) for s in range(seeds)])
        ranks = np.array([1 + int(np.sum(values > b + 1e-12)) for b in best])
        print(f"  {name:32s} {best.mean():9.4f} {best.std():7.4f} {ranks.mean():13.1f} "
              f"{np.mean(ranks == 1):12.0%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24, help="trials per curriculum study")
    p.add_argument("--seeds", type=int, default=20, help="study seeds per sampler")
    p.add_argument("--tune-trials", type=int, default=6, help="trials per Ray Tune study")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # the curriculum runs, like one trial with num_cpus: 1
    with tempfile.TemporaryDirectory() as out:  # the studies' results are not kept
        parallel_efficiency(out, args.tune_trials)
    curriculum(args.trials, args.seeds)


if __name__ == "__main__":
    main()
