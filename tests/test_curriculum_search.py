"""Curriculum search from task affinity: the retention model, neighbourhoods, the search."""

import itertools

import numpy as np
import pandas as pd
import pytest

from llray.curriculum_search import RetentionModel, neighbours, search


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


def test_a_task_forgotten_by_a_later_non_adjacent_task_counts():
    # what a score of consecutive pairs (taskonomy.path_score) cannot see
    T = 3
    after = np.full((T, T), 0.9)
    final = np.full((T, T), 0.9)
    final[0, 2] = 0.0  # 2 erases 0, whenever 2 comes after 0
    model = RetentionModel.from_pairs(_pairs(after, final))
    assert model.predict((0, 1, 2)) == pytest.approx((0.0 + 0.9 + 0.9) / 3)
    assert model.predict((2, 1, 0)) == pytest.approx(0.9)
