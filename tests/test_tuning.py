"""Tuning specs, search spaces, Lehmer codes, Pareto fronts and every bad-input case."""

import itertools

import numpy as np
import optuna
import pytest
import yaml

from helpers import roundtrip
from llray import metrics
from llray.cli import main
from llray.errors import ConfigError
from llray.tuning import lehmer
from llray.tuning.spec import parse_spec
from llray.tuning.summary import TrialRecord, best, dominates, pareto_front
from llray.tuning.trial import running

STREAM = {"dataset": "digits", "kind": "permuted", "num_tasks": 3}


def spec(**changes):
    data = {
        "study": "t",
        "stream": STREAM,
        "model": {"hidden": [32]},
        "strategy": "ewc",
        "search": {"ewc.lambda_": {"loguniform": [0.1, 1.0e4]}, "order": "permutation"},
        "num_trials": 2,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


# -- Lehmer codes ----------------------------------------------------------------------------
def test_lehmer_is_a_bijection_on_all_permutations_of_5_tasks():
    perms = list(itertools.permutations(range(5)))
    codes = [lehmer.encode(p) for p in perms]
    assert len(set(codes)) == 120
    box = list(itertools.product(*(range(lehmer.digit_high(k, 5) + 1) for k in range(4))))
    assert sorted(codes) == sorted(box)  # onto the whole fixed box Optuna samples from
    assert all(lehmer.decode(c, 5) == p for c, p in zip(codes, perms))
    assert lehmer.decode((0, 0, 0, 0), 5) == (0, 1, 2, 3, 4)
    assert lehmer.decode((4, 3, 2, 1), 5) == (4, 3, 2, 1, 0)
    # the first digit alone decides the last task (what final accuracy depends on most)
    assert all(p[-1] == 4 - c[0] for c, p in zip(codes, perms))


def test_lehmer_rejects_non_permutations_and_out_of_range_digits():
    with pytest.raises(ValueError):
        lehmer.encode([0, 0, 1])
    with pytest.raises(ValueError):
        lehmer.decode((3, 0), 3)


# -- search spaces -----------------------------------------------------------------------------
def test_space_samples_every_key_within_its_range_and_decodes_the_order():
    study = parse_spec(spec(search={
        "ewc.lambda_": {"loguniform": [0.1, 1.0e4]},
        "train.lr": {"uniform": [0.01, 0.1], "step": 0.01},
        "train.batch_size": {"int": [16, 64], "step": 16},
        "model.hidden": {"choice": [[16], [32, 32]]},
        "order": "permutation",
    }))
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        t = ostudy.ask()
        values = study.space.sample(t)
        assert values == study.space.values(t.params)
        assert 0.1 <= values["ewc.lambda_"] <= 1.0e4
        assert values["train.batch_size"] in (16, 32, 48, 64)
        assert values["model.hidden"] in ([16], [32, 32])
        assert sorted(values["order"]) == [0, 1, 2]
        run = study.run_spec(values)
        assert dict(run.strategy.params)["lambda_"] == values["ewc.lambda_"]
        assert run.train.batch_size == values["train.batch_size"]
        assert run.model.hidden == tuple(values["model.hidden"])
        assert run.order == values["order"] and run.experiment == "t"


def test_strategy_choice_samples_only_the_chosen_strategys_fields():
    study = parse_spec(spec(strategy=None, search={
        "strategy": {"choice": ["ewc", "replay"]},
        "ewc.lambda_": {"loguniform": [0.1, 1.0e4]},
        "replay.ratio": {"uniform": [0.1, 0.9]},
    }))
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        values = study.space.sample(ostudy.ask())
        name = values["strategy"]
        seen.add(name)
        other = "replay.ratio" if name == "ewc" else "ewc.lambda_"
        assert other not in values
        assert study.run_spec(values).strategy.name == name
    assert seen == {"ewc", "replay"}


def test_enqueued_identity_order_is_the_all_zero_code():
    study = parse_spec(spec(enqueue=[{"order": "identity"}, {"order": [2, 1, 0]}]))
    assert study.enqueue == ({"order_0": 0, "order_1": 0}, {"order_0": 2, "order_1": 1})


def test_base_file_gives_fixed_fields_and_inline_sections_override(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "base.yaml").write_text(yaml.safe_dump({
        "experiment": "b", "stream": {"num_tasks": 5, "seed": 3},
        "train": {"epochs": 3, "lr": 0.05},
        "strategies": ["naive", {"name": "ewc", "lambda_": 7, "fisher": "empirical"}],
        "seeds": [4, 5],
    }))
    (tmp_path / "tuning").mkdir()
    path = tmp_path / "tuning" / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "../jobs/base.yaml", "stream": {"num_tasks": 3},
                                    "strategy": "ewc",
                                    "search": {"train.lr": {"uniform": [0.01, 0.1]}}}))
    from llray.tuning.spec import load_spec

    study = load_spec(path)
    assert study.study == "s" and study.num_tasks == 3 and study.experiment.stream.seed == 3
    run = study.run_spec({"train.lr": 0.02})
    assert run.train.epochs == 3 and run.train.lr == 0.02
    assert dict(run.strategy.params) == {"lambda_": 7, "fisher": "empirical"}
    assert run.seed == 4 and run.order == (0, 1, 2)


# -- objectives ----------------------------------------------------------------------------------
def test_running_objectives_match_running_metrics_and_end_at_the_final_metrics():
    rng = np.random.default_rng(0)
    R = rng.uniform(size=(5, 4))
    for step in range(1, 5):
        rm = metrics.running_metrics(R, step)
        assert running(R, step, "acc") == pytest.approx(rm["acc"])
        assert running(R, step, "bwt") == pytest.approx(rm["bwt"])
    for name in ("acc", "bwt", "fwt", "forgetting", "learning_accuracy"):
        assert running(R, 4, name) == pytest.approx(getattr(metrics, name)(R))


def _rec(name, acc, bwt, status="ok"):
    return TrialRecord(name, {}, status, 3, {"acc": acc, "bwt": bwt})


def test_pareto_front_keeps_exactly_the_non_dominated_finished_trials():
    recs = [_rec("a", 0.8, -0.2), _rec("b", 0.7, -0.1), _rec("c", 0.6, -0.3),
            _rec("d", 0.8, -0.25), _rec("e", 0.9, 0.0, status="stopped"), _rec("f", 0.7, -0.1)]
    front = pareto_front(recs, ["acc", "bwt"], ["max", "max"])
    assert [r.trial for r in front] == ["a", "b", "f"]  # e is not finished; c, d dominated
    assert dominates(recs[0], recs[3], ["acc", "bwt"], ["max", "max"])
    assert not dominates(recs[1], recs[5], ["acc", "bwt"], ["max", "max"])  # ties do not
    # a minimised objective flips the direction
    recs2 = [TrialRecord("x", {}, "ok", 3, {"forgetting": 0.1}),
             TrialRecord("y", {}, "ok", 3, {"forgetting": 0.3})]
    assert [r.trial for r in best(recs2, ["forgetting"], ["min"])] == ["x"]


# -- bad input: exit code 2, nothing created ----------------------------------------------------
BAD = [
    ({"search": {"ewc.lamda": {"uniform": [0, 1]}}}, ["search.ewc.lamda", "unknown field",
                                                     "ewc.lambda_", "train.lr", "order"]),
    ({"search": {"replay.ratio": {"uniform": [0, 1]}}},
     ["search.replay.ratio", "tuned strategy is 'ewc'", "searchable"]),
    ({"search": {"train.lr": {"uniform": [0.1, 0.1]}}}, ["search.train.lr", "empty range"]),
    ({"search": {"train.lr": {"uniform": [0.3, 0.1]}}}, ["search.train.lr", "inverted range"]),
    ({"search": {"ewc.lambda_": {"loguniform": [0, 10]}}}, ["search.ewc.lambda_", "0 < low"]),
    ({"search": {"ewc.lambda_": {"loguniform": [-1, 10]}}}, ["search.ewc.lambda_", "0 < low"]),
    ({"search": {"train.lr": {"uniform": [0, 0.1]}}}, ["search.train.lr", "value 0.0", "> 0"]),
    ({"search": {"train.lr": {"normal": [0, 1]}}}, ["search.train.lr", "loguniform"]),
    ({"search": {"order": "shuffled"}}, ["search.order", "permutation"]),
    ({"search": {}}, ["search", "non-empty"]),
    ({"objectives": ["acc", "speed"]}, ["objectives", "bwt"]),
    ({"objectives": ["acc", "bwt"], "scheduler": {"asha": {}}}, ["scheduler", "one objective"]),
    ({"scheduler": {"asha": {"grace_period": 3}}}, ["grace_period", "1..2"]),
    ({"enqueue": [{"order": [0, 0, 1]}]}, ["enqueue[0].order", "permutation"]),
    ({"enqueue": [{"ewc.lambda_": 1.0e6}]}, ["enqueue[0].ewc.lambda_", "1000"]),
    ({"sampler": {"tpe": {"n_startup": 3}}}, ["sampler.tpe.n_startup", "n_startup_trials"]),
    ({"sampler": {"tpe": {"n_startup_trials": "few"}}}, ["sampler.tpe.n_startup_trials",
                                                         "integer"]),
    ({"num_trials": 0}, ["num_trials", ">= 1"]),
    ({"strategy": "nope"}, ["strategy", "unknown strategy 'nope'"]),
    ({"colour": "red"}, ["colour", "unknown key"]),
]


@pytest.mark.parametrize("changes, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_spec_exits_2_naming_the_field_with_nothing_created(tmp_path, capsys, changes, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec(**changes)))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_permutation_needs_two_tasks(tmp_path):
    # the stream layer rejects a one-task stream itself; the space checks on its own too
    from llray.tuning.space import Dim

    with pytest.raises(ConfigError, match="at least 2 tasks"):
        Dim.parse("order", "permutation", num_tasks=1)
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(spec(stream={**STREAM, "num_tasks": 1})))
    assert main(["tune", str(path), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_optuna_only_options_are_refused_for_the_tune_backend(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec()))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--output", str(out), "--storage", "x.journal"]) == 2
    assert not out.exists()


def test_a_trial_restored_from_its_checkpoint_ends_with_the_uninterrupted_R():
    from llray.tuning.trial import Trial

    study = parse_spec(spec(search={"order": "permutation"}, train={"epochs": 1}))
    params = {"order_0": 1, "order_1": 1}
    full = Trial(study, params)
    while not full.done:
        full.learn_next()
    first = Trial(study, params)
    first.learn_next()
    resumed = Trial(study, params)
    # what the Tune trainable checkpoints per task
    resumed.load_state_dict(roundtrip(first.state_dict()))
    calls = 0
    while not resumed.done:
        last = resumed.learn_next()
        calls += 1
    assert calls == 2 and last["tasks_learned"] == 3  # continued after task 1, not redone
    assert resumed.started_at == first.started_at
    np.testing.assert_array_equal(resumed.run.R, full.run.R)
