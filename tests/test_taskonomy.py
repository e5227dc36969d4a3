"""Taskonomy: pairwise transfer on Ray, the affinity matrix, greedy and exact curricula."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from llray import taskonomy as tx
from llray.config import parse_config
from llray.data.stream import Task, TaskStream
from llray.errors import ConfigError


def _same_task_stream(T=3, n=240, seed=0):
    """T tasks with exactly the same data: two overlapping Gaussian classes in 8-D."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n) % 2
    x = torch.randn(2 * n, 8, generator=g) + 0.8 * (2 * y[:, None].float() - 1)
    tasks = tuple(Task(t, f"same{t}", x[:n], y[:n], x[n:], y[n:], (0, 1)) for t in range(T))
    return TaskStream(tasks, "domain", "same", (8,), 2)


def test_identical_tasks_transfer_positively_on_every_pair(ray_local, tmp_path):
    cfg = parse_config({"experiment": "same", "stream": {"num_tasks": 3},
                        "model": {"hidden": [8]}, "strategies": ["naive"],
                        "train": {"epochs": 1, "batch_size": 32, "lr": 0.1}, "seeds": [0]})
    spec = tx.template(cfg)
    pairs = tx.run_pairs(_same_task_stream(), spec, cfg.seeds)
    assert len(pairs) == 3 + 6 and (pairs["status"] == "ok").all()
    aff = tx.affinity(pairs)
    M = tx.matrix(aff, "transfer", 3)
    off = ~np.eye(3, dtype=bool)
    assert np.all(M[off] > 0.01), M  # learning the same task first always helps
    assert np.isnan(np.diag(M)).all()
    curr = tx.curricula(aff, 3)
    assert list(curr["name"]) == ["greedy", "best"]
    assert all(sorted(o) == [0, 1, 2] for o in curr["order"])
    where = tx.write(tmp_path, "naive", pairs, aff, curr, tx.describe(spec, cfg.seeds),
                     tx.plot(aff, curr, 3, "same"))
    back_aff, back_curr = tx.load(tmp_path, "naive")
    np.testing.assert_allclose(tx.matrix(back_aff, "transfer", 3), M)
    assert (where / "affinity.png").read_bytes()[:4] == b"\x89PNG"


def test_affinity_pairs_each_run_with_the_scratch_run_of_its_seed():
    rows = [  # scratch accuracy on task 1: 0.5 with seed 0, 0.7 with seed 1
        dict(seed=0, kind="scratch", source=-1, target=1, target_final=0.5),
        dict(seed=1, kind="scratch", source=-1, target=1, target_final=0.7),
        dict(seed=0, kind="pair", source=0, target=1, target_final=0.6,
             source_after_source=0.9, source_final=0.6, target_after_source=0.3, init_target=0.1),
        dict(seed=1, kind="pair", source=0, target=1, target_final=0.9,
             source_after_source=0.8, source_final=0.8, target_after_source=0.2, init_target=0.1),
    ]
    a = tx.affinity(pd.DataFrame(rows)).iloc[0]
    assert a["transfer"] == pytest.approx(((0.6 - 0.5) + (0.9 - 0.7)) / 2)
    assert a["transfer_std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))
    assert a["forgetting"] == pytest.approx((0.3 + 0.0) / 2)
    assert a["zero_shot"] == pytest.approx((0.2 + 0.1) / 2)
    assert a["score"] == pytest.approx(a["transfer"] - a["forgetting"])


def test_greedy_path_on_a_hand_made_matrix():
    # best edge 2->0 (0.9); from 0 the best unvisited is 3 (0.7); from 3 only 1 is left
    M = np.array([[0.0, 0.1, 0.2, 0.7],
                  [0.3, 0.0, 0.1, 0.0],
                  [0.9, 0.5, 0.0, 0.1],
                  [0.0, 0.6, 0.2, 0.0]])
    assert tx.greedy_path(M) == (2, 0, 3, 1)
    assert tx.path_score(M, (2, 0, 3, 1)) == pytest.approx(0.9 + 0.7 + 0.6)


def test_greedy_can_be_beaten_and_best_path_is_optimal():
    # greedy takes 0->1 (1.0) and is then stuck with 1->2 (-5); 2->0->1 scores 1.8
    M = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -5.0], [0.8, 0.0, 0.0]])
    assert tx.greedy_path(M) == (0, 1, 2)
    assert tx.best_path(M) == (2, 0, 1)
    rng = np.random.default_rng(0)
    for T in (2, 4, 6):
        for _ in range(5):
            M = rng.normal(size=(T, T))
            brute = max(tx.path_score(M, p) for p in itertools.permutations(range(T)))
            best = tx.best_path(M)
            assert sorted(best) == list(range(T))
            assert tx.path_score(M, best) == pytest.approx(brute)
            assert tx.path_score(M, tx.greedy_path(M)) <= brute + 1e-12


def test_exact_path_refuses_too_many_tasks():
    with pytest.raises(ValueError, match="at most 3"):
        tx.best_path(np.zeros((4, 4)), max_tasks=3)
    curr = tx.curricula(pd.DataFrame({"source": [0, 1], "target": [1, 0], "transfer": [0.1, 0.2],
                                      "score": [0.1, 0.2]}), 2, exact_max_tasks=1)
    assert list(curr["name"]) == ["greedy"] and curr["order"][0] == [1, 0]


def test_bad_strategy_and_single_task_are_config_errors():
    cfg = parse_config({"stream": {"num_tasks": 2}, "strategies": ["naive", "joint"]})
    assert tx.template(cfg, "joint").strategy.name == "joint"
    with pytest.raises(ConfigError,
                       match="'ewc' is not in the config; its strategies: naive, joint"):
        tx.template(cfg, "ewc")
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        tx.template(parse_config({"stream": {"num_tasks": 1}, "strategies": ["naive"]}))


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from llray.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("stream: {num_tasks: 2}\nstrategies: [naive]\n")
    assert main(["taskonomy", str(cfg), "--output", str(tmp_path / "o"), "--strategy", "ewc"]) == 2
    assert "'ewc' is not in the config" in capsys.readouterr().err
    assert main(["taskonomy", str(tmp_path / "missing.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
