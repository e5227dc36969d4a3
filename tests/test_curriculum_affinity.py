"""Task affinity from input statistics, the order score built on it, the GP search started
from it and ``llray curriculum --search gp-affinity``."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from llray.cli import main
from llray.config import load_config
from llray.curriculum_affinity import affinity_ranked, affinity_scores, input_affinity
from llray.curriculum_bo import gp_search
from llray.data import StreamConfig, Task, TaskStream, make_stream
from test_curriculum_search import _config


def _task(i, x, y):
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    return Task(i, f"t{i}", x, y, x, y, tuple(sorted(set(y.tolist()))))


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_input_affinity_is_the_mean_cosine_of_shared_class_means_else_of_task_means():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(12, 4)) for _ in range(3)]
    ys = [np.array([0, 1, 2] * 4), np.array([0, 1] * 6), np.array([5, 6] * 6)]
    tasks = [_task(i, x, y) for i, (x, y) in enumerate(zip(xs, ys))]
    S = input_affinity(TaskStream(tasks, "class", "toy", (4,), 7))

    def mean(i, c):
        return xs[i][ys[i] == c].mean(axis=0)
    # tasks 0 and 1 share labels 0 and 1; task 2 shares none: its whole mean input
    assert S[0, 1] == pytest.approx(np.mean([_cos(mean(0, c), mean(1, c)) for c in (0, 1)]))
    assert S[0, 2] == pytest.approx(_cos(xs[0].mean(axis=0), xs[2].mean(axis=0)))
    assert S[1, 2] == pytest.approx(_cos(xs[1].mean(axis=0), xs[2].mean(axis=0)))
    np.testing.assert_allclose(S, S.T)
    np.testing.assert_allclose(np.diag(S), 1.0)


def test_input_affinity_of_rotated_digits_follows_the_angle():
    stream = make_stream(StreamConfig(dataset="digits", kind="rotated", num_tasks=5,
                                      max_angle=180))
    S = input_affinity(stream)  # tasks rotate by 0, 45, 90, 135, 180 degrees
    assert S[0, 1] > S[0, 2] and S[2, 3] > S[2, 4]  # 45 degrees apart: more alike than 90
    assert S[0, 4] > S[0, 2]  # digits turned upside down keep more than a quarter turn
    assert S[0, 2] == pytest.approx(S[2, 4], abs=0.02)  # a quarter turn either way


def test_affinity_score_is_the_recency_weighted_similarity_of_consecutive_tasks():
    rng = np.random.default_rng(1)
    A = rng.uniform(size=(5, 5))
    S = (A + A.T) / 2
    orders = np.array(list(itertools.permutations(range(5))))
    direct = [-sum(0.5 ** (3 - p) * S[o[p], o[p + 1]] for p in range(4)) for o in orders]
    np.testing.assert_allclose(affinity_scores(orders, S, recency=0.5), direct)
    ranked = affinity_ranked(S)
    assert len(ranked) == 120 and len(set(ranked)) == 120
    scores = affinity_scores(np.array(ranked), S)
    assert np.all(np.diff(scores) <= 1e-12)  # best first
    with pytest.raises(ValueError, match="square"):
        affinity_ranked(np.ones((3, 4)))


def test_gp_search_starts_from_the_given_orders_then_chooses_by_the_gp():
    calls = []

    def steps(o):
        calls.append(o)
        return [0.1] + [float(o[i - 1] == 2) for i in range(1, 6)]
    first = [(0, 1, 3, 4, 2), (4, 3, 2, 1, 0)]
    found = gp_search(steps, 5, runs=4, seed=0, first=first)
    assert calls[:2] == first and len(found) == 4 and len(set(calls)) == 4
    # the same start whatever the seed: nothing random before the GP chooses
    assert [o for o, _ in gp_search(steps, 5, runs=3, seed=9, first=first)] == \
        [o for o, _ in found[:3]]
    assert [o for o, _ in gp_search(steps, 5, runs=1, seed=0, first=first)] == first[:1]
    for bad in ([], [(0, 1, 2, 3, 3)], [(0, 1, 2, 3, 4)] * 2):
        with pytest.raises(ValueError, match="first"):
            gp_search(steps, 5, runs=3, seed=0, first=bad)


def test_curriculum_gp_affinity_search_runs_the_least_alike_order_first(ray_local, tmp_path,
                                                                       capsys):
    out, path = tmp_path / "out", _config(tmp_path)
    code = main(["curriculum", str(path), "--output", str(out), "--random", "0",
                 "--search", "gp-affinity", "--search-budget", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert not (out / "taskonomy").exists()  # no pairwise runs: only its own runs
    want = affinity_ranked(input_affinity(make_stream(load_config(path).stream)))[0]
    searched = pd.read_parquet(out / "curriculum" / "naive" / "search.parquet")
    assert list(searched["order"])[0] == ",".join(map(str, want))
    assert len(searched) == 2 and searched["order"].nunique() == 2
    assert f"first order (consecutive tasks least alike): {' '.join(map(str, want))}" \
        in captured.err
    chosen = searched.loc[searched["chosen"], "order"].item()
    assert f"gp-affinity search: chose {chosen.replace(',', ' ')}" in captured.out


def test_curriculum_gp_affinity_flags_are_checked(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["curriculum", str(_config(tmp_path)), "--output", str(out)]
    assert main([*args, "--search", "gp-affinity", "--search-budget", "7"]) == 2  # 3! = 6
    assert "--search-budget" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as e:
        main([*args, "--search", "gp-affinty"])
    assert e.value.code == 2 and "--search" in capsys.readouterr().err
