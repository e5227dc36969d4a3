"""Experiment configs: the grid, stable run ids, and one clear error per bad field."""

import pytest

from llray.config import load_config, parse_config
from llray.errors import ConfigError
from llray.strategies import Strategy, register

BASE = {
    "experiment": "t",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3},
    "strategies": ["naive", {"name": "ewc", "lambda_": 10}],
    "seeds": [0, 1],
    "orders": ["identity", [2, 1, 0]],
}


def with_(**changes):
    """BASE with ``changes``; a ``stream`` change is merged into BASE's stream."""
    out = {**BASE, **changes}
    if "stream" in changes:
        out["stream"] = {**BASE["stream"], **changes["stream"]}
    return out


def test_grid_is_strategies_by_seeds_by_orders():
    runs = parse_config(BASE).runs()
    assert len(runs) == 2 * 2 * 2
    assert {(r.strategy.name, r.seed, r.order) for r in runs} == {
        (s, seed, o) for s in ("naive", "ewc") for seed in (0, 1) for o in ((0, 1, 2), (2, 1, 0))
    }
    assert len({r.run_id for r in runs}) == 8


def test_run_id_is_stable_and_depends_on_the_work():
    a = parse_config(BASE).runs()
    b = parse_config(BASE).runs()
    assert [r.run_id for r in a] == [r.run_id for r in b]
    lr = parse_config(with_(train={"lr": 0.2})).runs()
    assert not {r.run_id for r in a} & {r.run_id for r in lr}
    # resources say where the work runs, not what it is
    gpu = parse_config(with_(resources={"num_cpus": 2})).runs()
    assert [r.run_id for r in a] == [r.run_id for r in gpu]


def test_random_orders_are_distinct_permutations_and_reproducible():
    cfg = parse_config(with_(orders=["random:4"], stream={"num_tasks": 4}))
    assert len(cfg.orders) == 4 and len(set(cfg.orders)) == 4
    assert all(sorted(o) == [0, 1, 2, 3] for o in cfg.orders)
    assert cfg.orders == parse_config(with_(orders=["random:4"], stream={"num_tasks": 4})).orders


def test_load_config_reads_yaml_and_defaults_experiment_to_file_name(tmp_path):
    p = tmp_path / "my_exp.yaml"
    p.write_text("stream: {num_tasks: 2}\nstrategies: [naive, joint]\n")
    cfg = load_config(p)
    assert cfg.experiment == "my_exp" and [s.name for s in cfg.strategies] == ["naive", "joint"]


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"strategies": ["nope"]}, "strategy", ["unknown strategy 'nope'", "naive", "ewc"]),
        ({"strategies": [{"name": "ewc", "lambda_": -1}]}, "ewc.lambda_", [">= 0"]),
        ({"strategies": [{"name": "ewc", "lamda": 1}]}, "ewc.lamda", ["lambda_"]),
        ({"strategies": [{"name": "replay", "ratio": 1.5}]}, "replay.ratio", ["[0, 1]"]),
        ({"stream": {"num_tasks": 1}}, "stream.num_tasks", ["at least 2"]),
        ({"stream": {"dataset": "imagenet"}}, "stream.dataset", ["digits", "mnist1d"]),
        ({"stream": {"kind": "shuffled"}}, "stream.kind", ["permuted", "split"]),
        ({"stream": {"scenario": "online"}}, "stream.scenario", ["'task'", "'class'", "online"]),
        ({"orders": [[0, 1, 1]]}, "orders[0]", ["not a permutation"]),
        ({"orders": [[0, 1]]}, "orders[0]", ["not a permutation"]),
        ({"orders": ["sorted"]}, "orders[0]", ["identity", "random:K"]),
        ({"seeds": []}, "seeds", ["non-empty"]),
        ({"train": {"lr": -0.1}}, "train.lr", ["> 0"]),
        ({"train": {"epochs": "two"}}, "train.epochs", ["integer"]),
        ({"colour": "red"}, "colour", ["unknown section", "strategies"]),
        ({"strategies": ["naive", "naive"]}, "strategies", ["label"]),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(changes, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config(with_(**changes))
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


class _TaskOnly(Strategy):
    name = "_task_only_for_tests"
    scenarios = frozenset({"task"})


def test_strategy_that_does_not_support_the_scenario_is_rejected():
    register(_TaskOnly)
    ok = parse_config(with_(strategies=[_TaskOnly.name], stream={"scenario": "task"}))
    assert ok.strategies[0].name == _TaskOnly.name
    with pytest.raises(ConfigError, match="does not support the 'domain' scenario; it supports: task"):
        parse_config(with_(strategies=[_TaskOnly.name], stream={"scenario": "domain"}))
