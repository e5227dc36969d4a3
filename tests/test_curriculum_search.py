"""Curriculum search from task affinity: the retention model, neighbourhoods, the search,
how sure it is, and ``llray curriculum --search retention``."""

import itertools

import numpy as np
import pandas as pd
import pytest

from llray import analysis
from llray import taskonomy as tx
from llray.cli import main
from llray.config import load_config
from llray.curriculum_search import (RetentionModel, assess, format_assessment, neighbours,
                                     search)
import test_curriculum as curriculum_tests


def _pairs(after, final):
    """taskonomy.run_pairs-shaped rows from [T, T] matrices of source_after_source and
    source_final (scratch rows included, as the real table has them)."""
    T = len(after)
    rows = [{"seed": 0, "kind": "scratch", "source": -1, "target": j, "status": "ok",
             "source_after_source": np.nan, "source_final": np.nan} for j in range(T)]
    rows += [{"seed": 0, "kind": "pair", "source": i, "target": j, "status": "ok",
              "source_after_source": after[i][j], "source_final": final[i][j]}
             for i in range(T) for j in range(T) if i != j]
    return pd.DataFrame(rows)


def test_neighbours_are_every_single_move_and_distinct():
    for T in (3, 4, 5):
        start = tuple(range(T))
        ns = neighbours(start)
        assert len(ns) == len(set(ns)) == (T - 1) ** 2
        for o in ns:
            assert sorted(o) == list(range(T)) and o != start
            # one task moved: removing it from both leaves the same sequence
            assert any([t for t in o if t != x] == [t for t in start if t != x] for x in start)


def test_retention_model_from_pairs_predicts_the_chained_final_accuracy():
    T = 4
    after = np.full((T, T), 0.9)
    final = np.full((T, T), 0.9)
    final[2, :] = 0.45  # task 2 loses half of its accuracy to any later task
    model = RetentionModel.from_pairs(_pairs(after, final))
    np.testing.assert_allclose(model.learned, 0.9)
    assert model.retention[2, 0] == pytest.approx(0.5) and model.retention[0, 2] == 1.0
    # task 2 at position p keeps 0.9 * 0.5 ** (tasks after it)
    for order in itertools.permutations(range(T)):
        after_2 = T - 1 - order.index(2)
        expected = (0.9 * (T - 1) + 0.9 * 0.5 ** after_2) / T
        assert model.predict(order) == pytest.approx(expected)
    assert all(o[-1] == 2 for o in model.ranked()[:6])  # 3! orders with task 2 last first


def test_search_spends_exactly_its_runs_and_climbs_to_the_optimum():
    rng = np.random.default_rng(0)
    T = 5
    truth = {o: rng.uniform() for o in itertools.permutations(range(T))}
    best = max(truth, key=truth.get)
    # a model that is right about the truth up to noise: the search should find the best
    predicted = {o: truth[o] + rng.normal(0, 0.05) for o in truth}
    model = _Fixed(predicted)
    calls = []
    found = search(lambda o: calls.append(o) or truth[o], model, runs=20)
    assert len(found) == len(calls) == 20 and len(set(calls)) == 20
    assert calls[:3] == model.ranked()[:3]
    assert best in calls


class _Fixed(RetentionModel):
    """A model whose predictions are given (for testing the search alone)."""

    def __init__(self, predicted):
        T = len(next(iter(predicted)))
        super().__init__(np.ones(T), np.ones((T, T)))
        object.__setattr__(self, "_p", predicted)

    def predict(self, order):
        return self._p[tuple(order)]

    def predict_many(self, orders):
        return np.array([self.predict(tuple(int(x) for x in o)) for o in orders])


def test_a_task_forgotten_by_a_later_non_adjacent_task_counts():
    # what a score of consecutive pairs (taskonomy.path_score) cannot see
    T = 3
    after = np.full((T, T), 0.9)
    final = np.full((T, T), 0.9)
    final[0, 2] = 0.0  # 2 erases 0, whenever 2 comes after 0
    model = RetentionModel.from_pairs(_pairs(after, final))
    assert model.predict((0, 1, 2)) == pytest.approx((0.0 + 0.9 + 0.9) / 3)
    assert model.predict((2, 1, 0)) == pytest.approx(0.9)


def test_predict_many_and_ranked_agree_with_predict():
    rng = np.random.default_rng(1)
    T = 5
    model = RetentionModel(rng.uniform(0.5, 1.0, T), rng.uniform(0.2, 1.2, (T, T)))
    orders = list(itertools.permutations(range(T)))
    np.testing.assert_allclose(model.predict_many(np.array(orders)),
                               [model.predict(o) for o in orders])
    expected = sorted(orders, key=lambda o: (-model.predict(o), o))
    assert [model.predict(o) for o in model.ranked()] == pytest.approx(
        [model.predict(o) for o in expected])
    assert sorted(model.ranked()) == orders  # every order once


def test_assess_says_whether_the_choice_is_ahead_and_a_local_optimum():
    T = 3
    model = RetentionModel(np.full(T, 0.9), np.ones((T, T)))
    best = (0, 1, 2)
    # clearly ahead of the runner-up on every one of 4 seeds, every neighbour measured
    measured = {best: [0.80, 0.82, 0.81, 0.83]}
    for k, o in enumerate(neighbours(best)):
        measured[o] = [0.70 - 0.01 * k, 0.71, 0.70, 0.72]
    a = assess(measured, model)
    assert a["order"] == best and a["seeds"] == 4
    assert a["runner_up"] == neighbours(best)[0]
    assert a["margin"] == pytest.approx(np.mean([0.10, 0.11, 0.11, 0.11]))
    assert 0 < a["margin_ci"][0] < a["margin"] < a["margin_ci"][1]
    assert a["neighbours_measured"] == a["neighbours_total"] == (T - 1) ** 2
    assert a["predicted_rank"] == 1  # all predictions tie: the lowest order comes first
    text = format_assessment(a, 6)
    assert "chose 0 1 2" in text and "ahead on these seeds" in text and "local optimum" in text
    # a noisy margin: the interval covers 0, and the text says so
    noisy = {best: [0.80, 0.60, 0.81], (1, 0, 2): [0.70, 0.75, 0.70]}
    b = assess(noisy, model)
    assert b["margin_ci"][0] < 0 < b["margin_ci"][1]
    assert "not distinguishable" in format_assessment(b, 6)
    assert "unmeasured ones may be better" in format_assessment(b, 6)
    one = format_assessment(assess({best: [0.8], (1, 0, 2): [0.7]}, model), 6)
    assert "one seed: no interval" in one


# -- llray curriculum --search retention ------------------------------------------------------
CONFIG = {**curriculum_tests.CONFIG,
          "stream": {**curriculum_tests.CONFIG["stream"], "max_train_per_task": 60}}


def _config(tmp_path):
    return curriculum_tests._config(tmp_path, CONFIG)


def _taskonomy_in(out, path, split="val"):
    """Pairwise runs in OUTPUT for this config: task 0 is erased by any later task, task 1
    halved, task 2 kept, so the model's best order is 2, 1, 0."""
    T = 3
    after = np.full((T, T), 0.9)
    final = np.full((T, T), 0.9)
    final[0, :], final[1, :] = 0.1, 0.45
    pairs = _pairs(after, final).assign(target_final=0.9, init_target=0.1,
                                        target_after_source=0.5, split=split)
    aff = tx.affinity(pairs)
    spec = tx.template(load_config(path))
    tx.write(out, "naive", pairs, aff, tx.curricula(aff, T), tx.describe(spec, [0]))
    return RetentionModel.from_pairs(pairs)


def test_curriculum_search_runs_the_models_orders_and_stores_them(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    path = _config(tmp_path)
    model = _taskonomy_in(out, path)
    assert model.ranked()[0] == (2, 1, 0)
    code = main(["curriculum", str(path), "--output", str(out), "--random", "0",
                 "--search", "retention", "--search-budget", "2"])
    text = capsys.readouterr().out
    assert code == 0, text
    searched = pd.read_parquet(out / "curriculum" / "naive" / "search.parquet")
    # the model's two best orders, evaluated on validation, the better one chosen
    assert list(searched["order"]) == [",".join(map(str, o)) for o in model.ranked()[:2]]
    assert searched["chosen"].sum() == 1
    chosen = searched.loc[searched["chosen"], "order"].item()
    assert searched.loc[searched["chosen"], "acc_val"].item() == searched["acc_val"].max()
    # the searched runs are ordinary runs of the curriculum experiment, with validation R
    runs = analysis.run_metrics(out, metrics=["acc"], experiment="cur-curriculum", split="val")
    val = dict(zip(runs["order"], runs["acc"]))
    assert set(searched["order"]) <= set(val)
    np.testing.assert_allclose(searched["acc_val"], [val[o] for o in searched["order"]])
    table = pd.read_parquet(out / "curriculum" / "naive" / "orders.parquet")
    labels = dict(zip(table["order"], table["label"]))
    assert "search-1" in labels["2,1,0"] and "search-2" in labels[searched["order"][1]]
    assert f"retention search: chose {chosen.replace(',', ' ')}" in text
    assert "margin over the runner-up" in text and "one seed: no interval" in text
    assert "neighbours (one task moved) measured" in text


@pytest.mark.parametrize("flags, named", [
    (["--search", "retention", "--search-budget", "0"], "--search-budget"),
    (["--search", "retention", "--search-budget", "7"], "--search-budget"),  # 3! = 6 orders
    (["--search-budget", "3"], "--search-budget"),
    (["--search", "retention", "--no-taskonomy"], "--no-taskonomy"),
    (["--search", "gp", "--taskonomy", "--no-taskonomy"], "--taskonomy"),
    (["--taskonomy", "--no-taskonomy"], "--taskonomy"),
    (["--search", "gp", "--search-budget", "0"], "--search-budget"),
    (["--search", "gp", "--search-budget", "7"], "--search-budget"),
])
def test_bad_search_flags_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys, flags, named):
    out = tmp_path / "out"
    assert main(["curriculum", str(_config(tmp_path)), "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert not out.exists()


def test_search_refuses_pairwise_runs_on_the_test_split(tmp_path, capsys):
    out = tmp_path / "out"
    path = _config(tmp_path)
    _taskonomy_in(out, path, split="test")  # selecting on them would select on test
    assert main(["curriculum", str(path), "--output", str(out), "--search", "retention"]) == 2
    assert "test split" in capsys.readouterr().err
    assert not (out / "r_matrix").exists()


def test_unknown_search_method_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["curriculum", str(_config(tmp_path)), "--search", "greedy"])
    assert e.value.code == 2 and "--search" in capsys.readouterr().err
