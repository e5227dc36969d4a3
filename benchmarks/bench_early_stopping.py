"""Early stopping: does the accuracy after k tasks predict the final ACC, and which ASHA
settings keep enough trials?

1. Rank correlation. N random configurations of a study spec (default: the shipped
   ``tuning/ewc_lambda.yaml`` and ``tuning/replay_ratio.yaml``, Optuna's RandomSampler
   over their search spaces) each learn the whole stream, in this process (no Ray).
   Printed per k = 1..T-1: Spearman's rho between ``acc_seen`` after k tasks (the value
   ASHA and the Optuna pruner compare at a rung after k tasks) and the final ACC, and
   between each searched parameter and both (does early accuracy favour plasticity,
   e.g. a low EWC lambda, more than the final ACC does?).
2. Scheduler replay. From those trials, many studies of the spec's ``num_trials`` are
   drawn (random subsets in random order, as a sequential study sees them) and replayed
   through Ray Tune's own ASHA bracket (``ray.tune.schedulers.async_hyperband._Bracket``,
   the code ASHAScheduler runs) and through Optuna's ``SuccessiveHalvingPruner`` in an
   in-memory study, for several (grace_period, reduction_factor) settings. Printed per
   setting: the mean share of trials that finish, how often at least a third of a study's
   trials finish (``>=1/3 fin``), how often the study's best configuration
   (best final ACC of its trials) is among the finished ones, the mean regret (best final
   ACC of the study minus best final ACC among its finished trials), and the share of
   task trainings spent (1.0 = no early stopping).

The trained trials are cached (``--cache``, an ``.npz`` per spec) so that the replay can
be rerun without training. Timings are not measured here, so the machine's load only
changes how long the benchmark takes; it is printed anyway.

Run: python benchmarks/bench_early_stopping.py [--trials 48] [--studies 400]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import torch
from scipy import stats

from llray.tuning.spec import StudySpec, load_spec
from llray.tuning.trial import Trial, running

SPECS = ("tuning/ewc_lambda.yaml", "tuning/replay_ratio.yaml")
SETTINGS = ((1, 2), (2, 2), (3, 2), (4, 2), (1, 3), (2, 3), (3, 3))


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def sample_trials(study: StudySpec, n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """``n`` random configurations of ``study``, each learned to the end: params, R."""
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    params, Rs = [], []
    for i in range(n):
        ot = ostudy.ask()
        study.space.sample(ot)
        trial = Trial(study, ot.params)
        while not trial.done:
            trial.learn_next()
        params.append(dict(trial.values))
        Rs.append(trial.run.R.copy())
        ostudy.tell(ot, 0.0)
        print(f"  trial {i + 1}/{n}: {params[-1]} acc {running(Rs[-1], study.num_tasks, 'acc'):.3f}",
              flush=True)
    return params, np.stack(Rs)


def cached_trials(path: Path, study: StudySpec, n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    if path.is_file():
        data = np.load(path)
        if len(data["R"]) >= n:
            return [json.loads(p) for p in data["params"][:n]], data["R"][:n]
    params, R = sample_trials(study, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, params=np.array([json.dumps(p) for p in params]), R=R)
    return params, R


def seen_matrix(R: np.ndarray) -> np.ndarray:
    """``[trial, k-1]`` = acc_seen after k tasks, k = 1..T (the last column is final ACC)."""
    T = R.shape[2]
    return np.array([[running(r, k, "acc") for k in range(1, T + 1)] for r in R])


def _rho(a: Any, b: Any) -> tuple[float, float]:
    """Spearman's rho and its p-value; NaN when one side is constant (e.g. after the first
    task, where replay's ratio and EWC's lambda have no effect yet)."""
    if np.ptp(np.asarray(a, dtype=float)) == 0 or np.ptp(np.asarray(b, dtype=float)) == 0:
        return float("nan"), float("nan")
    rho, p = stats.spearmanr(a, b)
    return float(rho), float(p)


def correlations(params: list[dict], seen: np.ndarray) -> None:
    T = seen.shape[1]
    final = seen[:, -1]
    keys = [k for k in params[0] if isinstance(params[0][k], (int, float))]
    head = f"  {'k':>2} {'rho(acc_seen_k, ACC)':>21}" + "".join(
        f" {'rho(' + key + ', ' + w + ')':>28}" for key in keys for w in ("acc_seen_k",))
    print(head)
    for k in range(1, T):
        rho, p = _rho(seen[:, k - 1], final)
        cells = "".join(f" {_rho([q[key] for q in params], seen[:, k - 1])[0]:>28.2f}"
                        for key in keys)
        print(f"  {k:>2} {rho:>14.2f} (p {p:.0e}){cells}")
    cells = "".join(f" {_rho([q[key] for q in params], final)[0]:>28.2f}" for key in keys)
    print(f"  {'T':>2} {'(final ACC)':>21}{cells}")


def replay_ray(seen: np.ndarray, grace: int, rf: int) -> np.ndarray:
    """Tasks learned by each trial, in order, under Ray Tune's ASHA bracket."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    T = seen.shape[1]
    bracket = _Bracket(min_t=grace, max_t=T, reduction_factor=rf, s=0)
    learned = []
    for i, values in enumerate(seen):
        trial = SimpleNamespace(trial_id=str(i))
        k = T
        for step in range(1, T):
            if bracket.on_result(trial, step, float(values[step - 1])) == "STOP":
                k = step
                break
        learned.append(k)
    return np.array(learned)


def replay_optuna(seen: np.ndarray, grace: int, rf: int) -> np.ndarray:
    """Tasks learned by each trial, in order, under Optuna's SuccessiveHalvingPruner (as
    ``llray tune --backend optuna`` reports and asks)."""
    T = seen.shape[1]
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=rf)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    learned = []
    for values in seen:
        ot = study.ask()
        k = T
        for step in range(1, T + 1):
            ot.report(float(values[step - 1]), step)
            if step < T and ot.should_prune():
                k = step
                break
        if k < T:
            study.tell(ot, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(ot, float(values[-1]))
        learned.append(k)
    return np.array(learned)


def replay(seen: np.ndarray, size: int, studies: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    T = seen.shape[1]
    draws = [rng.choice(len(seen), size=size, replace=False) for _ in range(studies)]
    print(f"  {studies} studies of {size} trials (random subsets, random order), T = {T}")
    print(f"  {'scheduler':<16} {'grace':>5} {'rf':>3} {'finished':>9} {'>=1/3 fin':>10} "
          f"{'best kept':>10} {'regret':>7} {'compute':>8}")
    rows = [("none", 0, 0, None)] + [(name, g, f, fn) for g, f in SETTINGS if g < T
                                      for name, fn in (("ray-asha", replay_ray),
                                                       ("optuna-sha", replay_optuna))]
    for name, g, f, fn in rows:
        shares, kept, regrets, compute = [], [], [], []
        for idx in draws:
            sub = seen[idx]
            learned = np.full(size, T) if fn is None else fn(sub, g, f)
            finished = learned == T
            final = sub[:, -1]
            shares.append(finished.mean())
            kept.append(finished[np.argmax(final)])
            regrets.append(final.max() - final[finished].max())
            compute.append(learned.sum() / (size * T))
        third = np.mean(np.array(shares) >= 1 / 3 - 1e-9)
        print(f"  {name:<16} {g:>5} {f:>3} {np.mean(shares):>9.2f} {third:>10.2f} "
              f"{np.mean(kept):>10.2f} {np.mean(regrets):>7.3f} {np.mean(compute):>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", nargs="+", default=list(SPECS))
    ap.add_argument("--trials", type=int, default=48, help="configurations per spec (>= 40)")
    ap.add_argument("--studies", type=int, default=400, help="replayed studies per setting")
    ap.add_argument("--size", type=int, help="trials per replayed study (default: the spec's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=tempfile.gettempdir(), help="folder of the trial cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"load average (1, 5, 15 min): {load_average()}")
    for path in args.specs:
        study = load_spec(path)
        t0 = time.perf_counter()
        cache = Path(args.cache) / f"llray_bench_early_{study.study}_{args.seed}.npz"
        params, R = cached_trials(cache, study, args.trials, args.seed)
        seen = seen_matrix(R)
        print(f"\n== {path}: {len(R)} random configurations, {study.num_tasks} tasks "
              f"({time.perf_counter() - t0:.0f} s, cache {cache.name})")
        print(f"  final ACC: min {seen[:, -1].min():.3f}, median {np.median(seen[:, -1]):.3f}, "
              f"max {seen[:, -1].max():.3f}")
        correlations(params, seen)
        replay(seen, args.size or study.num_trials, args.studies, args.seed)
    print(f"\nload average (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
