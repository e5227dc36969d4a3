"""What a trial reports: ``acc_seen`` per task for schedulers and pruners, ``acc`` only at
the end; Ray Tune's and Optuna's own best-trial APIs then pick a trial that finished."""

import numpy as np
import optuna
import pytest

from llray.tuning.optuna_backend import make_storage, run_optuna
from llray.tuning.spec import parse_spec
from llray.tuning.trial import Trial

STREAM = {"dataset": "digits", "kind": "permuted", "num_tasks": 3}


def asha_spec(study="asha", **changes):
    data = {"study": study, "stream": STREAM, "model": {"hidden": [32]}, "strategy": "naive",
            "train": {"epochs": 1, "optimizer": "adam"},
            "search": {"train.lr": {"loguniform": [1.0e-5, 0.1]}},
            "num_trials": 6, "max_concurrent_trials": 1, "seed": 0,
            "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}}}
    data.update(changes)
    return parse_spec(data)


def test_a_trial_reports_acc_seen_per_task_and_acc_only_after_the_last():
    t = Trial(asha_spec(), {"train.lr": 0.01})
    reports = []
    while not t.done:
        reports.append(t.learn_next())
    assert [("acc" in m) for m in reports] == [False, False, True]
    assert all("acc_seen" in m for m in reports)
    assert reports[-1]["acc"] == reports[-1]["acc_seen"]
    # one task seen, on the validation split the study selects on (never the test R)
    assert all(m["selected_on"] == "val" for m in reports)
    assert reports[0]["acc_seen"] == pytest.approx(t.run.R_val[1, 0])
    assert reports[0]["acc_seen"] != pytest.approx(t.run.R[1, 0])
    assert t.final_values() == [reports[-1]["acc"]]


def _check_best_is_finished(records, best_final, best_seen_stopped):
    stopped = [r for r in records if r.status == "stopped"]
    assert stopped and all(r.objectives == {} for r in stopped)  # no final acc
    # the precondition that made Tune pick a stopped trial before: its partial score
    # (over fewer tasks) beats every finished trial's final ACC
    assert best_seen_stopped > best_final


def test_tune_and_its_optuna_study_pick_a_finished_trial_after_asha(tmp_path, ray_local):
    from ray import tune

    from llray.tuning.tune_backend import FinalMetricSearch, run_tune, study_dir, trainable

    study = asha_spec()
    records = run_tune(study, tmp_path)
    ok = [r for r in records if r.status == "ok"]
    stopped = [r for r in records if r.status == "stopped"]
    best_final = max(r.objectives["acc"] for r in ok)
    _check_best_is_finished(records, best_final, max(r.seen["acc"] for r in stopped))
    path = study_dir(tmp_path, study)

    analysis = tune.ExperimentAnalysis(path)
    best = analysis.get_best_trial("acc", "max")
    assert best.last_result["tasks_learned"] == 3 and best.last_result["acc"] == best_final
    assert analysis.get_best_config("acc", "max") == best.config
    # what the stopped trials report under acc_seen is still there for whoever wants it
    partial = analysis.get_best_trial("acc_seen", "max")
    assert partial.last_result["tasks_learned"] < 3 and "acc" not in partial.last_result

    grid = tune.Tuner.restore(path, trainable=trainable).get_results()  # results only
    result = grid.get_best_result("acc", "max")
    assert result.metrics["tasks_learned"] == 3 and result.metrics["acc"] == best_final

    search = FinalMetricSearch(metric="acc_seen", mode="max")
    search.restore_from_dir(path)
    ostudy = search._ot_study
    states = [t.state for t in ostudy.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(ok)
    assert ostudy.best_trial.value == pytest.approx(best_final)


def test_optuna_backend_best_trial_is_finished_and_a_pruned_one_has_no_final_acc(tmp_path):
    study = asha_spec("sha", enqueue=[{"train.lr": 0.01}, {"train.lr": 1.0e-5},
                                      {"train.lr": 0.003}])
    journal = str(tmp_path / "j.journal")
    records = run_optuna(study, output=None, storage=journal)
    ok = [r for r in records if r.status == "ok"]
    stopped = [r for r in records if r.status == "stopped"]
    best_final = max(r.objectives["acc"] for r in ok)
    _check_best_is_finished(records, best_final,
                            max(r.seen["acc"] for r in stopped) if stopped else np.inf)
    ostudy = optuna.load_study(study_name="sha", storage=make_storage(journal))
    assert ostudy.best_trial.user_attrs["tasks_learned"] == 3
    assert ostudy.best_value == pytest.approx(best_final)
    for t in ostudy.trials:
        pruned = t.state == optuna.trial.TrialState.PRUNED
        assert ("acc" in t.user_attrs["objectives"]) == (not pruned)
        assert max(t.intermediate_values) == t.user_attrs["tasks_learned"]
