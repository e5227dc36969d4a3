"""Bayesian optimisation over task orders: precedence features, the Mallows-kernel GP, its
expected improvement, the search, and ``llray curriculum --search gp``."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from llray import analysis
from llray import curriculum as cu
from llray.cli import main
from llray.curriculum_bo import (RECENCY, MallowsGP, SuffixGP, gp_search, kendall,
                                 precedence, suffix_codes, suffix_mismatch)
from test_curriculum_search import _config


def _discordant(a, b):
    """Pairs of tasks that the two orders put in opposite order, counted directly."""
    pa, pb = {t: k for k, t in enumerate(a)}, {t: k for k, t in enumerate(b)}
    return sum((pa[i] < pa[j]) != (pb[i] < pb[j]) for i, j in itertools.combinations(a, 2))


def test_precedence_distance_is_the_kendall_distance_between_orders():
    rng = np.random.default_rng(0)
    orders = [tuple(rng.permutation(6)) for _ in range(30)]
    D = kendall(precedence(orders), precedence(orders))
    for a in range(30):
        for b in range(30):
            assert D[a, b] == _discordant(orders[a], orders[b])
    # and scipy's tau: d = (1 - tau) * pairs / 2 for permutations
    tau = stats.kendalltau(np.argsort(orders[0]), np.argsort(orders[1]))[0]
    assert D[0, 1] == pytest.approx((1 - tau) * 15 / 2)


def _direct_posterior(orders, y, lam, noise, query):
    """The GP posterior written out from the kernel's definition, for comparison."""
    m, s = np.mean(y), np.std(y)
    z = (np.asarray(y) - m) / s
    k = lambda A, B: np.array([[np.exp(-lam * _discordant(a, b)) for b in B] for a in A])  # noqa
    K = k(orders, orders) + noise * np.eye(len(orders))
    Kq = k(query, orders)
    mu = Kq @ np.linalg.solve(K, z)
    var = 1.0 - np.einsum("ij,ji->i", Kq, np.linalg.solve(K, Kq.T))
    return m + s * mu, s * np.sqrt(var)


def test_gp_fit_picks_the_marginal_likelihood_maximum_and_its_posterior_is_the_gp_formula():
    rng = np.random.default_rng(1)
    all_orders = list(itertools.permutations(range(5)))
    orders = [all_orders[i] for i in rng.choice(120, 12, replace=False)]
    y = rng.normal(0.6, 0.05, 12)
    gp = MallowsGP.fit(orders, y)
    z = (y - y.mean()) / y.std()

    def loglik(lam, noise):
        K = np.array([[np.exp(-lam * _discordant(a, b)) for b in orders] for a in orders])
        return stats.multivariate_normal(np.zeros(12), K + noise * np.eye(12)).logpdf(z)
    grid = [(c / 10, n) for c in (0.5, 1.0, 2.0, 4.0, 8.0) for n in (0.01, 0.1)]
    assert (gp.lam, gp.noise) == max(grid, key=lambda g: loglik(*g))
    query = all_orders[:20]
    mu, sd = gp.posterior(query)
    want_mu, want_sd = _direct_posterior(orders, y, gp.lam, gp.noise, query)
    np.testing.assert_allclose(mu, want_mu, atol=1e-10)
    np.testing.assert_allclose(sd, want_sd, atol=1e-8)
    # near-noiseless: the posterior goes through the measured values
    exact = MallowsGP.fit(orders, y, noises=(1e-8,))
    np.testing.assert_allclose(exact.posterior(orders)[0], y, atol=1e-5)
    assert exact.posterior(orders)[1].max() < 1e-3 < exact.posterior(query)[1].max()


def test_expected_improvement_is_the_mean_excess_over_the_best_measured():
    rng = np.random.default_rng(2)
    orders = [tuple(rng.permutation(4)) for _ in range(6)]
    orders = list(dict.fromkeys(orders))
    y = rng.normal(0.5, 0.1, len(orders))
    gp = MallowsGP.fit(orders, y)
    query = list(itertools.permutations(range(4)))[:8]
    mu, sd = gp.posterior(query)
    draws = mu + sd * rng.standard_normal((400_000, len(query)))
    monte_carlo = np.maximum(draws - y.max(), 0).mean(axis=0)
    np.testing.assert_allclose(gp.expected_improvement(query), monte_carlo, rtol=0.02, atol=2e-4)


def test_gp_search_spends_its_runs_and_finds_a_structured_optimum_random_search_misses():
    hidden = (3, 0, 5, 1, 4, 2)
    # ACC falls with the Kendall distance to a hidden order: 720 orders, one best
    truth = {o: 0.9 - 0.02 * _discordant(o, hidden) for o in itertools.permutations(range(6))}
    hits = 0
    for seed in range(5):
        calls = []
        found = gp_search(lambda o: calls.append(o) or truth[o], 6, runs=25, seed=seed)
        assert len(found) == len(calls) == 25 and len(set(calls)) == 25
        assert [v for _, v in found] == [truth[o] for o in calls]
        hits += hidden in calls
    assert hits == 5  # random search: 25 of 720 orders, P(hit) = 3.5% per study
    # the start is random and seeded: the same seed, the same first orders; another, others
    first = lambda s: [o for o, _ in gp_search(truth.__getitem__, 6, runs=2, seed=s)]  # noqa
    assert first(0) == first(0) != first(1)


def test_gp_search_runs_its_start_in_one_batch_and_skips_failed_orders_in_the_fit():
    batches = []
    truth = {o: float(o[-1]) for o in itertools.permutations(range(4))}
    failed = set()

    def evaluate(o):
        if len(failed) < 2 and o not in failed:  # the first two orders fail on every seed
            failed.add(o)
            return float("-inf")
        return truth[o]
    found = gp_search(evaluate, 4, runs=10, seed=3, on_start=batches.append)
    assert batches == [[o for o, _ in found[:2]]]
    assert [v for _, v in found[:2]] == [float("-inf")] * 2
    assert all(np.isfinite(v) for _, v in found[2:]) and len({o for o, _ in found}) == 10


@pytest.mark.parametrize("kwargs", [dict(num_tasks=10, runs=3), dict(num_tasks=4, runs=0),
                                    dict(num_tasks=4, runs=25), dict(num_tasks=4, runs=3,
                                                                     start=0)])
def test_gp_search_refuses_what_it_cannot_do(kwargs):
    with pytest.raises(ValueError):
        gp_search(lambda o: 0.0, seed=0, **kwargs)


def test_gp_fit_refuses_mismatched_data():
    with pytest.raises(ValueError, match="as many values as orders"):
        MallowsGP.fit([(0, 1, 2)], [0.5, 0.6])
    with pytest.raises(ValueError):
        MallowsGP.fit([], [])


def _mismatch(p, q, T, recency):
    """The weighted mismatch of two sequences compared from their ends, counted directly."""
    w = [recency ** r for r in range(T)]
    at = lambda s, r: s[len(s) - 1 - r] if r < len(s) else None  # noqa: E731
    return sum(w[r] for r in range(T) if at(p, r) != at(q, r)) / sum(w)


def test_suffix_kernel_compares_sequences_from_their_ends_with_recency_weights():
    seqs = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 2, 3), (2, 0, 1, 3), (3,), ()]
    X = suffix_codes(seqs, 4)
    assert X[2].tolist() == [3, 2, 1, 4] and X[5].tolist() == [4, 4, 4, 4]  # 4: nothing
    for recency in (RECENCY, 1.0, 0.25):
        M = suffix_mismatch(X, X, recency)
        for a in range(len(seqs)):
            for b in range(len(seqs)):
                assert M[a, b] == pytest.approx(_mismatch(seqs[a], seqs[b], 4, recency))
    M = suffix_mismatch(X, X)
    # the same last task counts more than the same first task
    assert M[0, 3] < M[0, 1] and M[0, 2] == pytest.approx(1 / 15)  # only "nothing" vs 0
    # a product of per-position overlap kernels: positive definite on distinct sequences
    assert np.linalg.eigvalsh(np.exp(-2.0 * M)).min() > 0


def test_suffix_gp_picks_the_marginal_likelihood_maximum_and_its_posterior_is_the_gp_formula():
    rng = np.random.default_rng(4)
    seqs = list(dict.fromkeys(tuple(rng.permutation(5)[:rng.integers(2, 6)]) for _ in range(15)))
    y = rng.normal(0.5, 0.05, len(seqs))
    gp = SuffixGP.fit(seqs, y, 5)
    z = (y - y.mean()) / y.std()

    def kern(A, B, c):
        return np.array([[np.exp(-c * _mismatch(a, b, 5, RECENCY)) for b in B] for a in A])

    def loglik(c, noise):
        K = kern(seqs, seqs, c) + noise * np.eye(len(seqs))
        return stats.multivariate_normal(np.zeros(len(seqs)), K).logpdf(z)
    grid = [(c, n) for c in (0.5, 1.0, 2.0, 4.0, 8.0) for n in (0.01, 0.1)]
    assert (gp.scale_c, gp.noise) == max(grid, key=lambda g: loglik(*g))
    query = list(itertools.permutations(range(5)))[:25]
    K = kern(seqs, seqs, gp.scale_c) + gp.noise * np.eye(len(seqs))
    Kq = kern(query, seqs, gp.scale_c)
    want_mu = y.mean() + y.std() * (Kq @ np.linalg.solve(K, z))
    want_sd = y.std() * np.sqrt(1 - np.einsum("ij,ji->i", Kq, np.linalg.solve(K, Kq.T)))
    mu, sd = gp.posterior(query)
    np.testing.assert_allclose(mu, want_mu, atol=1e-10)
    np.testing.assert_allclose(sd, want_sd, atol=1e-8)
    best = y.max()
    draws = mu[:5] + sd[:5] * rng.standard_normal((400_000, 5))
    np.testing.assert_allclose(gp.expected_improvement(query[:5], best),
                               np.maximum(draws - best, 0).mean(axis=0), rtol=0.02, atol=2e-4)


def test_gp_search_learns_from_each_runs_prefixes_when_given_its_steps():
    T = 5
    rng = np.random.default_rng(0)
    last_two = {p: rng.uniform(0.3, 0.6) for p in itertools.permutations(range(T), 2)}
    last_two[(3, 1)] = 0.8  # the best orders end with 3, 1: 6 of 120

    def steps(o):  # the model after each step is as good as its last two tasks make it
        return [0.1, 0.2] + [last_two[o[i - 2:i]] for i in range(2, T + 1)]

    def hits(evaluate):
        return sum(max(gp_search(evaluate, T, 8, s), key=lambda x: x[1])[0][-2:] == (3, 1)
                   for s in range(10))
    with_steps, final_only = hits(steps), hits(lambda o: steps(o)[-1])
    # each run shows 4 suffixes when its steps are given; 8 random orders: P(hit) = 34%
    assert with_steps >= 8 and final_only <= 5
    found = gp_search(steps, T, 6, 0)
    assert [v for _, v in found] == [steps(o)[-1] for o, _ in found]  # the final values
    with pytest.raises(ValueError, match="per-step values"):
        gp_search(lambda o: steps(o)[1:], T, 3, 0)  # T values, not T + 1


# -- llray curriculum --search gp ------------------------------------------------------------
def test_curriculum_gp_search_computes_no_pairwise_runs_and_stores_its_orders(ray_local,
                                                                             tmp_path, capsys):
    out = tmp_path / "out"  # no --no-taskonomy: a GP search costs only its own runs
    code = main(["curriculum", str(_config(tmp_path)), "--output", str(out), "--random", "0",
                 "--search", "gp", "--search-budget", "3"])
    captured = capsys.readouterr()
    text = captured.out
    assert code == 0, text
    assert not (out / "taskonomy").exists() and "taskonomy-" not in text
    assert "taskonomy: not computed" in captured.err and "--taskonomy" in captured.err
    searched = pd.read_parquet(out / "curriculum" / "naive" / "search.parquet")
    assert len(searched) == 3 and searched["order"].nunique() == 3
    assert searched["predicted_acc"].isna().all()  # no retention model behind this search
    trained = pd.read_parquet(out / "runs")["task_order"].map(lambda o: ",".join(map(str, o)))
    # identity and the 3 searched orders, 1 seed each: nothing else was trained
    assert sorted(trained) == sorted({"0,1,2", *searched["order"]})
    runs = analysis.run_metrics(out, metrics=["acc"], experiment="cur-curriculum", split="val")
    val = dict(zip(runs["order"], runs["acc"]))
    np.testing.assert_allclose(searched["acc_val"], [val[o] for o in searched["order"]])
    chosen = searched.loc[searched["chosen"], "order"].item()
    assert val[chosen] == max(val[o] for o in searched["order"])
    assert f"gp search: chose {chosen.replace(',', ' ')}" in text
    assert "the model ranked it" not in text and "margin over the runner-up" in text
    # what the GP learned from besides the final ACC: the validation ACC over all tasks
    # after each step of each searched run, read back from the store's val rows
    rows = pd.read_parquet(out / "r_matrix")
    rows = rows[(rows["split"] == "val") & (rows["experiment"] == "cur-curriculum")]
    for order in searched["order"]:
        got = cu.val_steps_by_seed(out, "cur-curriculum", "naive", tuple(map(int, order.split(","))),
                                   [0, 7])
        mine = rows[rows["task_order"].map(lambda o: ",".join(map(str, o))) == order]
        want = mine.groupby("step")["accuracy"].mean().to_numpy()
        assert got.shape == (2, 4) and np.isnan(got[1]).all()  # seed 7 never ran
        np.testing.assert_allclose(got[0], want)
        assert got[0, -1] == pytest.approx(val[order])



@pytest.mark.parametrize("flags, computes", [
    ([], True),                                   # the comparison's candidates
    (["--search", "retention"], True),            # its model
    (["--search", "gp"], False),                  # a GP search costs only its own runs
    (["--search", "gp", "--taskonomy"], True),    # ... unless the comparison is asked for
    (["--no-taskonomy"], False),
    (["--search", "gp", "--no-taskonomy"], False),
])
def test_which_curriculum_commands_compute_the_taskonomy(flags, computes):
    import argparse

    from llray.commands import curriculum as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.wants_taskonomy(parser.parse_args(["cfg.yaml", *flags])) is computes
