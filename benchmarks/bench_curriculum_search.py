"""Curriculum search at equal compute: random, TPE over Lehmer codes, local search, the
taskonomy's retention model and two Gaussian-process searches, over budgets counted in
task trainings, beside what any search could reach (the ceiling).

Two streams of 5 tasks (120 orders), naive fine-tuning (the order decides what is
forgotten), in this process (no Ray), small MLPs:

- ``rotated``: the stream of ``tuning/curriculum_order.yaml`` (digits rotated by k·45°:
  neighbouring angles are similar tasks, far ones interfere);
- ``split-domain``: split digits, domain-incremental (each task maps two digits onto the
  labels 0/1 of one shared head, so every later task re-maps the head and which digit
  pairs follow which decides what survives: tasks differ in difficulty and in how much
  they overwrite each other).

Ground truth: study seed s lives on run seed s: every one of the 120 orders is trained
once with run seed s, its validation ACC and test ACC cached (``--cache``, outside the
repository); the row means of the validation R (validation ACC over all tasks after each
step) of the orders the GP search runs are computed when it asks for them and cached too
(the same runs: a run is a pure function of its config and seed). A method's "run" of an order looks up its *validation* ACC on that seed, so
every method sees exactly the objective a study would; the order a method selects is its
best on validation, and it succeeds when that order is in the top 10% of all 120 orders
by *test* ACC of the same run seed.

Compute is counted in task trainings. A full run of an order trains T tasks. The
pairwise runs of the taskonomy train task i once and then each j ≠ i next, so they cost
``T + T(T-1) = T²`` task trainings when the first task's training is shared by every
pair that starts with it (the scratch runs the taskonomy compares with are those same
first trainings with the same seed); at T = 5 that is 25 task trainings = 5 full runs,
charged to the retention model out of the same budget. (``run_pairs_here`` trains each
pair from scratch, 2T(T-1) + T = 45; the count above is what a shared first task costs.)
A budget of B task trainings buys B / T order evaluations for random, TPE, local search
and the GP, and (B − T²) / T for the retention model; with none left it takes the
model's top order without evaluating it. The retention model of study s uses pairwise
runs with run seed s (cached per seed).

Methods:

- ``random``: distinct random orders;
- ``tpe``: Optuna TPE over the Lehmer code (``n_startup_trials`` 8, as the shipped spec);
- ``local``: a permutation-aware search without a model: 3 random orders, then the
  unvisited neighbours (one task moved) of the best measured order, in random order;
- ``retention``: :mod:`llray.curriculum_search`: the retention model ranks all orders,
  its top 3 are run, then the neighbours of the best measured order, most promising first;
- ``gp-acc``: :mod:`llray.curriculum_bo` given each run's final validation ACC only: 2
  random orders, then expected improvement under a Gaussian process with the Mallows
  kernel over whole orders, no pairwise runs (the search before it learned from prefixes);
- ``gp``: the same search given what each run measured after every step (the row means
  of its validation R, as ``llray curriculum --search gp`` gives it): the GP is over the
  prefixes of the measured runs, compared from their ends (``SuffixGP``), no pairwise
  runs. Its design (prefixes from length 2, recency rate 0.5, 2 random start orders,
  expected improvement) was chosen on study seeds 60-73 of rotated (3 start seeds each,
  beside random search's exact expectation), which the reported measurement (seeds 0 to
  ``--seeds`` − 1) does not use: a random order and its reverse as the start, a start of
  1, centring each prefix length, the posterior mean instead of EI, a per-task GP over
  the R entries, and (on the final ACC) position, Mallows-plus-position and
  Mallows-times-position kernels, Thompson sampling and a start of 3 spread orders were
  each no better there; ``--first-seed 60 --seeds 14`` repeats the
  measurement on those seeds;
- ``gp-affinity``: the same GP search (``llray curriculum --search gp-affinity``) started
  from one order chosen without training instead of 2 random ones: the order whose
  consecutive tasks are least alike in their training inputs, the last pair weighing most
  (:mod:`llray.curriculum_affinity`: cosine of class-mean inputs; "adjacent tasks should
  be dissimilar", Li & Hiratani, ICML 2025). It costs nothing beyond its runs: the
  affinity is computed from the stream's training inputs, the same for every run seed,
  so every study of a stream starts from the same order;
- ``gp-transfer``: the same, with the affinity measured by a first-order transfer probe
  (Taskonomy, Zamir et al., CVPR 2018): T single-task models (one per task, trained from
  scratch with the study's run seed) each tested on every task's validation split, the
  similarity of tasks i and j the mean of the transfers i→j and j→i. The probe's T task
  trainings (one full run) are charged to it out of the budget. (The single-task model
  of task i is the first step of every run that starts with i, so the benchmark reads it
  off such a run.) Measured and not kept: worse than ``gp-affinity`` at every budget on
  the development seeds, which it trails by the run it pays for.
  Both affinity searches were designed on study seeds 60-75 of rotated (16 seeds whose
  full validation R matrices were cached; seeds 74-86 checked the design): the
  recency-weighted "adjacent tasks unlike" score (the opposite sign, "adjacent tasks
  alike", and scores of which tasks transfer most to the rest were anti-correlated with
  test ACC there), a start of 1 order (2 or 3 were no better) and the input affinity
  over the transfer probe. ``--first-seed 60 --seeds 16`` repeats it on those seeds;
- ``informed`` (a reference, not a method): knows every order's mean test ACC over the
  *other* run seeds, runs its top orders and selects on validation: what a perfect model
  of the order's systematic effect would reach at that budget.

The ceiling, per stream: the rate of an oracle that runs all 120 orders once and selects
on validation; how systematic the order effect is (Spearman between two run seeds' test
ACC, the run-seed share of the variance, held-out R² of a linear fit on position and
precedence features, of the Mallows GP and of the other seeds' mean); per budget,
whether 2x random search's rate is above 1 (no method can meet it) or above the
informed reference.

Printed per stream and budget over the study seeds: the share of studies whose selected
order is in the top 10% (with its 95% Wilson interval), the share that selected the best
order, the mean test rank (1 = best of 120) and the mean regret in test ACC; random
search's rate expected over every draw of its orders (exact: the order k-th best on
validation is selected with probability C(N − k, B − 1) / C(N, B)), since its one draw
per study seed can be lucky or not; and each method's rate over random search's measured
rate and over that expectation. Timings are not the result here (rates do not depend
on load); the load average is printed because the ground truth takes longer on a busy
machine.

Run: python benchmarks/bench_curriculum_search.py [--seeds 40] [--first-seed 0]
[--budgets 2 3 4 5 6 8 12 24] [--methods random gp gp-affinity ...]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

from llray import taskonomy as tx
from llray.curriculum_affinity import affinity_ranked, input_affinity
from llray.curriculum_bo import MallowsGP, gp_search, precedence
from llray.curriculum_search import RetentionModel, neighbours, search
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
METHODS = ("random", "tpe", "local", "retention", "gp-acc", "gp", "gp-affinity",
           "gp-transfer", "informed")
RATIO_METHODS = ("gp", "gp-affinity", "gp-transfer", "gp-acc", "retention", "informed")
Order = tuple[int, ...]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def ground_truth(study: StudySpec, stream: TaskStream, cache: Path, seed: int) -> pd.DataFrame:
    """Validation and test ACC of every order with run seed ``seed`` (cached per seed in
    ``{stream}_truth_seed{seed}.npz``; a partial cache resumes)."""
    orders = list(itertools.permutations(range(study.num_tasks)))
    old = np.load(cache) if cache.is_file() else {"val": [], "test": []}
    val, test = list(old["val"]), list(old["test"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    for k in range(len(val), len(orders)):
        res = execute(replace(study.run_spec({"order": orders[k]}), seed=seed), stream)
        val.append(float(acc(res.R_val)))
        test.append(float(acc(res.R)))
        if (k + 1) % 20 == 0:
            np.savez(cache, val=np.array(val), test=np.array(test))
            print(f"    ground truth {k + 1}/{len(orders)}", flush=True)
    np.savez(cache, val=np.array(val), test=np.array(test))
    return pd.DataFrame({"order": orders, "val": val, "test": test})


class Steps:
    """The validation ACC over all tasks after each step of an order's run with one run
    seed (the row means of its validation R), computed when first asked for and cached
    (``{stream}_steps_seed{seed}.npz``): the GP search needs them only for the orders it
    runs. A run is a pure function of its config and seed, so these runs are the ground
    truth's runs (their final step equals the cached validation ACC: asserted)."""

    def __init__(self, study: StudySpec, stream: TaskStream, cache: Path, seed: int,
                 val: dict[Order, float]) -> None:
        self.study, self.stream, self.cache, self.seed, self.val = study, stream, cache, seed, val
        self.known: dict[Order, np.ndarray] = {}
        if cache.is_file():
            z = np.load(cache)
            self.known = {tuple(int(x) for x in o): r for o, r in zip(z["orders"], z["steps"])}
        self.dirty = False

    def __call__(self, order: Order) -> np.ndarray:
        if order not in self.known:
            res = execute(replace(self.study.run_spec({"order": order}), seed=self.seed),
                          self.stream)
            self.known[order] = res.R_val.mean(axis=1)
            self.dirty = True
        assert abs(self.known[order][-1] - self.val[order]) < 1e-9, "not the ground truth's run"
        return self.known[order]

    def save(self) -> None:
        if self.dirty:
            tmp = self.cache.with_name(self.cache.stem + ".tmp.npz")
            np.savez(tmp, orders=np.array(list(self.known)), steps=np.array(list(self.known.values())))
            tmp.rename(self.cache)
            self.dirty = False


def pairs_for(study: StudySpec, stream: TaskStream, seed: int, cache: Path) -> pd.DataFrame:
    """The taskonomy's pairwise runs (validation split) with run seed ``seed`` (cached)."""
    if cache.is_file():
        return pd.read_parquet(cache)
    spec = replace(study.run_spec({"order": tuple(range(study.num_tasks))}), seed=seed)
    df = tx.run_pairs_here(spec, stream, [seed])
    assert (df["split"] == "val").all()
    cache.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(cache)
    return df


def transfer_probe(study: StudySpec, stream: TaskStream, seed: int, cache: Path) -> np.ndarray:
    """``[T, T]`` first-order transfer on validation with run seed ``seed`` (cached): row i
    is the model trained on task i alone, tested on every task (column: task id). It is
    the first step of any run that starts with i, read off the run of ``(i, others...)``."""
    if cache.is_file():
        return np.load(cache)
    T = study.num_tasks
    M = np.zeros((T, T))
    for i in range(T):
        order = (i, *[j for j in range(T) if j != i])
        res = execute(replace(study.run_spec({"order": order}), seed=seed), stream)
        M[i, list(order)] = res.R_val[1]  # R's columns follow the order's positions
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, M)
    return M


def pair_cost(T: int) -> int:
    """Task trainings of the pairwise runs with each first task trained once: T + T(T-1)."""
    return T + T * (T - 1)


def run_random(orders: list[Order], runs: int, seed: int) -> list[Order]:
    rng = np.random.default_rng(seed)
    return [orders[i] for i in rng.choice(len(orders), size=min(runs, len(orders)),
                                          replace=False)]


def run_tpe(val: Callable[[Order], float], T: int, runs: int, seed: int) -> list[Order]:
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    done: list[Order] = []
    for _ in range(runs):
        t = study.ask()
        code = [t.suggest_int(f"order_{k}", 0, lehmer.digit_high(k, T))
                for k in range(lehmer.num_digits(T))]
        o = lehmer.decode(code, T)
        study.tell(t, val(o))
        done.append(o)
    return done


def run_local(val: Callable[[Order], float], orders: list[Order], runs: int,
              seed: int, start: int = 3) -> list[Order]:
    """Random starts, then random unvisited neighbours of the best measured order."""
    rng = np.random.default_rng(seed)
    seen = {o: val(o) for o in run_random(orders, min(start, runs), seed)}
    while len(seen) < runs:
        best = max(seen, key=seen.get)
        fresh = [o for o in neighbours(best) if o not in seen]
        if not fresh:
            fresh = [o for o in orders if o not in seen]
        o = fresh[int(rng.integers(len(fresh)))]
        seen[o] = val(o)
    return list(seen)


def run_retention(val: Callable[[Order], float], runs: int, pairs: pd.DataFrame) -> list[Order]:
    model = RetentionModel.from_pairs(pairs)
    if runs <= 0:
        return [model.ranked()[0]]  # nothing left to evaluate: the model's choice
    return [o for o, _ in search(val, model, runs)]


def random_rate(val: np.ndarray, test_rank: np.ndarray, runs: int, top: int) -> float:
    """Random search's expected top-``top`` rate on one seed, exactly, over every draw of
    ``runs`` distinct orders: the order k-th best on validation is the one selected with
    probability C(N - k, runs - 1) / C(N, runs)."""
    N = len(val)
    by_val = np.argsort(-val, kind="stable")
    k = np.arange(1, N + 1)
    p = np.array([math.comb(N - i, runs - 1) for i in k], dtype=float) / math.comb(N, runs)
    return float(np.sum(p * (test_rank[by_val] <= top)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def features(orders: list[Order]) -> np.ndarray:
    """Linear order features: task i at position p (one-hot) and i before j (i < j)."""
    P = np.array(orders)
    N, T = P.shape
    pos = np.zeros((N, T, T))
    pos[np.arange(N)[:, None], P, np.arange(T)[None, :]] = 1.0
    return np.c_[pos.reshape(N, -1), precedence(P)]


def heldout_r2(y: np.ndarray, predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
               folds: int = 10) -> float:
    """R² of ``predict(train index, test index)`` on held-out orders, ``folds``-fold."""
    idx = np.random.default_rng(0).permutation(len(y))
    pred = np.zeros_like(y)
    for f in range(folds):
        te = idx[f::folds]
        pred[te] = predict(np.setdiff1d(idx, te), te)
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def linear_r2(orders: list[Order], y: np.ndarray, ridge: float = 1e-2) -> float:
    X = np.c_[np.ones(len(orders)), features(orders)]

    def predict(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        A = X[tr]
        w = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ y[tr])
        return X[te] @ w
    return heldout_r2(y, predict)


def gp_r2(orders: list[Order], y: np.ndarray) -> float:
    def predict(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        gp = MallowsGP.fit([orders[i] for i in tr], y[tr])
        return gp.posterior([orders[i] for i in te])[0]
    return heldout_r2(y, predict)


def systematic(orders: list[Order], tests: np.ndarray) -> str:
    """How much of the orders' test ACC is the order, not the run seed (``tests``: [S, N])."""
    S = len(tests)
    rho = [spearman(tests[a], tests[b]) for a in range(S) for b in range(a + 1, S)]
    noise = tests.var(axis=0, ddof=1).mean() / tests.var(axis=1, ddof=1).mean()
    k = min(S, 10)  # the fits are slow-ish; 10 seeds say enough
    lin = [linear_r2(orders, t) for t in tests[:k]]
    gp = [gp_r2(orders, t) for t in tests[:k]]
    return (f"  systematic: test ACC of two run seeds, Spearman {np.mean(rho):.2f} "
            f"(range {np.min(rho):.2f}..{np.max(rho):.2f}, {len(rho)} pairs); run-seed variance "
            f"{noise:.0%} of the variance over orders; held-out R² (10-fold over orders, mean "
            f"of {k} seeds): linear on position + precedence {np.mean(lin):.2f}, "
            f"Mallows GP {np.mean(gp):.2f}, seed-mean of the other seeds "
            f"{np.mean([r2(t, (tests.sum(0) - t) / (S - 1)) for t in tests]):.2f}")


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def rate_cell(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def bench_stream(name: str, study: StudySpec, args: argparse.Namespace, cache: Path) -> None:
    stream = make_stream(study.experiment.stream)
    T, S = study.num_tasks, args.seeds
    seeds = range(args.first_seed, args.first_seed + S)
    t0 = time.perf_counter()
    truths = [ground_truth(study, stream, cache / f"{name}_truth_seed{s}.npz", seed=s)
              for s in seeds]
    orders = list(truths[0]["order"])
    vals = np.array([t["val"].to_numpy() for t in truths])  # [S, 120]
    tests = np.array([t["test"].to_numpy() for t in truths])
    top = max(1, int(round(0.1 * len(orders))))
    # per study seed s: its run seed's landscape
    val = [dict(zip(orders, v)) for v in vals]
    steps = [Steps(study, stream, cache / f"{name}_steps_seed{s}.npz", s, val[i])
             for i, s in enumerate(seeds)]
    test = [dict(zip(orders, t)) for t in tests]
    test_rank = np.array([pd.Series(t).rank(ascending=False, method="min").to_numpy()
                          for t in tests])
    rank = [dict(zip(orders, r)) for r in test_rank]
    oracle = np.array([rank[s][max(orders, key=val[s].__getitem__)] for s in range(S)])
    print(f"\n== {name}: {len(orders)} orders x {S} run seeds {seeds.start}..{seeds.stop - 1} "
          f"(study seed s = run seed s), "
          f"test ACC {tests.min():.3f}..{tests.max():.3f}; success: top 10% (best {top}) of "
          f"the study's run seed by test ACC; val-test Spearman over orders "
          f"{np.mean([spearman(v, t) for v, t in zip(vals, tests)]):.2f} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(systematic(orders, tests))
    print(f"  ceiling: an oracle that runs all {len(orders)} orders once and selects on "
          f"validation: top-10% rate {rate_cell(int(np.sum(oracle <= top)), S)}, best order "
          f"{np.mean(oracle == 1):.2f}, mean test rank {oracle.mean():.1f}")
    pairs = {i: pairs_for(study, stream, s, cache / f"{name}_pairs_val_{s}.parquet")
             for i, s in enumerate(seeds)}
    models = {i: RetentionModel.from_pairs(p) for i, p in pairs.items()}
    rho = [spearman(np.array([models[i].predict(o) for o in orders]), tests[i]) for i in range(S)]
    print(f"  pairwise runs (validation split) with {S} run seeds ready "
          f"({time.perf_counter() - t0:.0f} s); their cost: {pair_cost(T)} task trainings = "
          f"{pair_cost(T) / T:.0f} full runs; retention model vs test ACC over the 120 orders: "
          f"Spearman {np.mean(rho):.2f} (seeds {np.min(rho):.2f}..{np.max(rho):.2f})")
    # what a perfect model of the orders' systematic effect would pick: the other seeds'
    # mean test ACC (leave one out), its top orders run on this seed, selected on validation
    informed = [(tests.sum(0) - tests[s]) / (S - 1) for s in range(S)]
    S_in = input_affinity(stream)
    by_input = affinity_ranked(S_in)[0]
    probes = {i: transfer_probe(study, stream, s, cache / f"{name}_transfer_val_{s}.npy")
              for i, s in enumerate(seeds) if "gp-transfer" in args.methods}
    by_transfer = {i: affinity_ranked((M + M.T) / 2)[0] for i, M in probes.items()}
    print(f"  input affinity (cosine of class-mean training inputs):\n"
          f"{np.array2string(S_in, precision=2, prefix='    ')}\n"
          f"  gp-affinity's first order: {by_input} (the same for every study seed); "
          f"gp-transfer's: its probe of T single-task models per seed "
          f"({T} task trainings, charged)")
    print(f"  {'budget':>6} {'(tasks)':>7} {'method':<10} {'runs':>4} {'top10%':>6} "
          f"{'95% CI':>11} {'best':>5} {'rank':>5} {'regret':>6}")
    for budget in args.budgets:
        rates = {}
        for method in (m for m in METHODS if m in args.methods):
            if method == "retention":  # the pairwise runs come out of the budget
                runs = (budget * T - pair_cost(T)) // T
            elif method == "gp-transfer":  # so does the probe's run
                runs = budget - 1
            else:
                runs = budget
            if runs < 0 or (runs == 0 and method != "retention"):
                continue
            ranks, regrets = [], []
            for s, study_seed in enumerate(seeds):  # s: index of the seed's landscape
                v = val[s].__getitem__
                if method == "random":
                    found = run_random(orders, runs, study_seed)
                elif method == "tpe":
                    found = run_tpe(v, T, runs, study_seed)
                elif method == "local":
                    found = run_local(v, orders, runs, study_seed)
                elif method == "gp-acc":  # the GP sees each run's final ACC only
                    found = [o for o, _ in gp_search(v, T, runs, study_seed)]
                elif method in ("gp", "gp-affinity", "gp-transfer"):
                    # ... and the validation ACC after each step of its runs; the affinity
                    # searches start from their best-scored order (the input affinity's
                    # needs no training, the transfer probe's its T task trainings)
                    first = (None if method == "gp" else [by_input] if method == "gp-affinity"
                             else [by_transfer[s]])
                    found = [o for o, _ in gp_search(steps[s], T, runs, study_seed,
                                                     first=first)]
                    steps[s].save()
                elif method == "informed":
                    found = [orders[i] for i in np.argsort(-informed[s], kind="stable")[:runs]]
                else:
                    found = run_retention(v, runs, pairs[s])
                chosen = max(found, key=v)
                ranks.append(rank[s][chosen])
                regrets.append(tests[s].max() - test[s][chosen])
            ranks = np.array(ranks)
            k = int(np.sum(ranks <= top))
            lo, hi = wilson(k, S)
            rates[method] = k / S
            print(f"  {budget:>6} {budget * T:>7} {method:<10} {runs:>4} {k / S:>6.2f} "
                  f"{f'{lo:.2f}-{hi:.2f}':>11} {np.mean(ranks == 1):>5.2f} {ranks.mean():>5.1f} "
                  f"{np.mean(regrets):>6.3f}")
        # random search's rate without the luck of its draws: exact, over every draw
        expected = float(np.mean([random_rate(vals[s], test_rank[s], budget, top)
                                  for s in range(S)]))
        print(f"  {budget:>6} {budget * T:>7} {'random, expected over all draws':<33} "
              f"{expected:>6.2f}")
        for name_, base in (("random", rates.get("random", 0)), ("its expectation", expected)):
            if base <= 0:
                continue
            ratios = ", ".join(f"{m} {rates[m] / base:.2f}x" for m in RATIO_METHODS
                               if m in rates)
            target = 2 * base
            verdict = ("2x exceeds 1: no method can meet it" if target > 1 else
                       "informed reference not measured" if "informed" not in rates else
                       "2x exceeds the informed reference" if target > rates["informed"]
                       else "2x is within the informed reference")
            print(f"  {budget:>6} {'':>7} over {name_}: {ratios}; 2x = {target:.2f}, {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40,
                    help="study seeds (>= 20); each one a ground truth of 120 runs per stream "
                         "(cached; measured: 25-30 s per seed on rotated, 6 s on split "
                         "digits, one core)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the first study seed (the design of the GP search was chosen on "
                         "seeds 60-73 of rotated: --first-seed 60 --seeds 14 repeats that)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8, 10, 12, 24],
                    help="budgets in full runs' worth of task trainings (x T task trainings)")
    ap.add_argument("--streams", nargs="+", default=["rotated", "split-domain"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="the methods to measure (default: all)")
    ap.add_argument("--cache", default=tempfile.gettempdir(),
                    help="folder for the ground truth and pairwise runs (reused)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"load average (1, 5, 15 min): {load_average()}")
    specs = {"rotated": load_spec("tuning/curriculum_order.yaml"),
             "split-domain": parse_spec(SPLIT_DOMAIN)}
    cache = Path(args.cache) / "llray_bench_curriculum"
    for name in args.streams:
        bench_stream(name, specs[name], args, cache)
    print(f"\nload average (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
