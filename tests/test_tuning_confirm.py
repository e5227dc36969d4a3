"""``llray tune --confirm K``: the best configuration and the baseline re-run on K seeds the
study never used, written as ``<study>-confirm``, with intervals and a paired test."""

import json

import numpy as np
import pytest
import yaml

from llray import metrics
from llray.cli import main
from llray.experiment import execute
from llray.learner import RunResult
from llray.results import load
from llray.tuning.confirm import Confirmed, format_confirm, paired
from llray.tuning.spec import parse_spec

SPEC = {"study": "c", "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 2},
        "model": {"hidden": [16]}, "train": {"epochs": 1, "optimizer": "adam", "lr": 0.01},
        "strategy": "ewc", "search": {"ewc.lambda_": {"loguniform": [0.1, 1.0e3]}},
        "enqueue": [{"ewc.lambda_": 1.0e3}], "num_trials": 3, "run_seed": 7, "seed": 0}


def test_confirm_writes_k_runs_per_config_on_fresh_seeds_and_reports_the_difference(
        tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--backend", "optuna", "--output", str(out),
                 "--confirm", "2"]) == 0
    text = capsys.readouterr().out
    runs = load(out).runs
    study_runs = runs[runs.experiment == "c"]
    confirm = runs[runs.experiment == "c-confirm"]
    assert set(study_runs.seed) == {7}
    assert len(confirm) == 4 and set(confirm.seed) == {8, 9}  # never the study's seed
    tags = [json.loads(c)["tuning"] for c in confirm.config]
    roles = {t["confirm"] for t in tags}
    assert roles == {"best", "baseline"}
    for role in roles:
        assert sorted(r for t, r in zip(tags, confirm.seed) if t["confirm"] == role) == [8, 9]
    baseline = [t for t in tags if t["confirm"] == "baseline"][0]
    assert baseline["params"] == {"ewc.lambda_": 1.0e3} and baseline["trial"] is None
    best_tag = [t for t in tags if t["confirm"] == "best"][0]
    best_row = study_runs.loc[study_runs.acc.idxmax()]
    assert json.loads(best_row.config)["tuning"]["params"] == best_tag["params"]

    # a confirmation run is the run of that configuration with that seed
    study = parse_spec(SPEC)
    spec = study.run_spec(best_tag["params"])
    row = confirm[(confirm.seed == 8) & (confirm.config.map(
        lambda c: json.loads(c)["tuning"]["confirm"]) == "best")].iloc[0]
    from dataclasses import replace
    res = execute(replace(spec, experiment="c-confirm", seed=8))
    assert row.acc == pytest.approx(metrics.acc(res.R))
    assert "confirmation on 2 fresh seeds (8, 9; the study used seed 7)" in text
    assert "best - baseline, acc:" in text and "paired t-test" in text


def _confirmed(role, accs, trial=None):
    results = []
    for a in accs:
        R = np.array([[0.1, 0.1], [a, 0.1], [a, a]])
        results.append(RunResult(R=R, order=(0, 1), status="ok", n_test=np.full(2, 10),
                                 wall_s=0.0, train_s=0.0, samples_trained=0))
    return Confirmed(role, trial, {"ewc.lambda_": 1.0}, [1, 2, 3, 4, 5], results)


def test_the_report_says_whether_the_paired_difference_is_significant():
    study = parse_spec(SPEC)
    base = _confirmed("baseline", [0.60, 0.62, 0.58, 0.61, 0.60])
    better = _confirmed("best", [0.70, 0.71, 0.69, 0.72, 0.70], "3")
    same = _confirmed("best", [0.61, 0.60, 0.59, 0.62, 0.60], "3")
    text = format_confirm(study, [better, base])
    assert "significantly better (5% level)" in text and "+0.1020" in text
    assert "not significantly different" in format_confirm(study, [same, base])
    d = paired(better.metric("acc"), base.metric("acc"), "max")
    assert d.interval.low > 0 and d.p_value < 1e-3
    # the interval over seeds of each configuration
    assert "acc 0.6020 [" in text


def test_confirmation_runs_are_not_trials_of_the_study_for_the_curriculum(tmp_path):
    from llray.curriculum import studies
    from llray.results import RunMeta, write_run

    for i, (tuning, acc) in enumerate([({"study": "o", "params": {"order": [1, 0]}}, 0.5),
                                       ({"study": "o", "params": {"order": [0, 1]},
                                         "confirm": "baseline"}, 0.9)]):
        order = tuple(tuning["params"]["order"])
        R = np.full((3, 2), acc)
        write_run(tmp_path, RunMeta(f"r{i}", "o" if i == 0 else "o-confirm", "naive", "digits",
                                    "domain", i, order, {"tuning": tuning}),
                  RunResult(R, order, "ok", np.full(2, 10), 1.0, 1.0, 1))
    found = studies(tmp_path)
    assert list(found["study"]) == ["o"] and list(found["order"]) == [(1, 0)]
