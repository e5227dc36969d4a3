"""Whole studies on tiny streams: the search finds something, ASHA stops trials, resume,
multi-objective fronts, diverged trials, and several processes sharing one Optuna study."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml

from llray import metrics
from llray.cli import main
from llray.experiment import execute
from llray.results import load
from llray.tuning.optuna_backend import make_storage, run_optuna
from llray.tuning.spec import parse_spec
from llray.tuning.summary import best, dominates

STREAM = {"dataset": "digits", "kind": "permuted", "num_tasks": 3}
ADAM = {"epochs": 3, "lr": 0.01, "optimizer": "adam"}
QUICK = {"epochs": 1, "lr": 0.01, "optimizer": "adam"}  # where only the mechanics matter


def spec(**changes):
    data = {
        "study": "s",
        "stream": STREAM,
        "model": {"hidden": [32]},
        "train": ADAM,
        "strategy": "ewc",
        "search": {"ewc.lambda_": {"loguniform": [0.1, 1.0e4]}},
        "num_trials": 4,
        "seed": 0,
    }
    data.update(changes)
    return data


@pytest.fixture
def ray_here():
    """One local Ray with 2 CPUs for the session, like conftest's ``ray_local`` (which
    reuses it), but started with ``address="local"``: a cluster that another process
    registered on this machine is never joined by mistake."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


def write_spec(tmp_path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(**changes)))
    return path


def test_search_finds_an_ewc_lambda_better_than_zero_and_writes_every_trial(tmp_path):
    # Adam on permuted digits forgets: lambda = 0 (fine-tuning) is beaten by lambda ~ 1-100
    study = parse_spec(spec(num_trials=6))
    zero = execute(study.run_spec({"ewc.lambda_": 0.0}))
    records = run_optuna(study, output=tmp_path)  # in-memory study, seeded TPE
    top = best(records, ["acc"], ["max"])[0]
    # selected on the validation split (the objective), reported on the test split
    assert top.objectives["acc"] > metrics.acc(zero.R_val) + 0.02
    assert metrics.acc(top.R) > metrics.acc(zero.R) + 0.02
    val_r = load(tmp_path).r_matrix_of(top.run_id, "val")
    assert top.objectives["acc"] == pytest.approx(metrics.acc(val_r))
    runs = load(tmp_path).runs
    assert len(runs) == 6 and set(runs.experiment) == {"s"}
    row = runs.set_index("run_id").loc[top.run_id]
    config = json.loads(row.config)
    assert config["tuning"]["params"]["ewc.lambda_"] == top.values["ewc.lambda_"]
    assert config["strategy"]["lambda_"] == top.values["ewc.lambda_"]
    assert row.acc == pytest.approx(metrics.acc(top.R))  # the runs table reports test


@pytest.mark.filterwarnings("ignore:ewc. lr")
def test_diverged_trial_gets_the_worst_value_and_the_study_goes_on(tmp_path):
    # SGD at lr 0.1 with a huge lambda diverges; the enqueued point is the first trial
    study = parse_spec(spec(train={"epochs": 1, "lr": 0.1}, num_trials=3,
                            search={"ewc.lambda_": {"loguniform": [0.1, 1.0e5]}},
                            enqueue=[{"ewc.lambda_": 1.0e5}, {"ewc.lambda_": 0.1},
                                     {"ewc.lambda_": 0.3}], objectives=["acc", "bwt"]))
    records = run_optuna(study, output=tmp_path)
    assert [r.status for r in records][0] == "diverged" and len(records) == 3
    assert records[0].objectives == {"acc": 0.0, "bwt": -1.0}
    assert all(r.status == "ok" for r in records[1:])
    runs = load(tmp_path).runs.set_index("run_id")
    assert runs.loc[records[0].run_id, "status"] == "diverged"


def test_multi_objective_study_returns_exactly_the_non_dominated_trials(tmp_path):
    study = parse_spec(spec(objectives=["acc", "bwt"], num_trials=8, sampler="random",
                            search={"ewc.lambda_": {"loguniform": [0.1, 1.0e4]},
                                    "order": "permutation"}))
    journal = str(tmp_path / "j.journal")
    records = run_optuna(study, output=None, storage=journal)
    front = best(records, ["acc", "bwt"], ["max", "max"])
    ostudy = optuna.load_study(study_name="s", storage=make_storage(journal))
    assert {r.trial for r in front} == {str(t.number) for t in ostudy.best_trials}
    others = [r for r in records if r not in front]
    assert others, "the test needs some dominated trials"
    for f in front:
        assert not any(dominates(o, f, ["acc", "bwt"], ["max", "max"]) for o in records)
    for o in others:
        assert any(dominates(f, o, ["acc", "bwt"], ["max", "max"]) for f in front)


def test_tune_multi_objective_and_asha_stops_a_trial_before_its_last_task(tmp_path, ray_here):
    from llray.tuning.tune_backend import run_tune

    # multi-objective through OptunaSearch (metric and mode lists)
    study = parse_spec(spec(objectives=["acc", "bwt"], num_trials=4, max_concurrent_trials=2,
                            train=QUICK,
                            search={"ewc.lambda_": {"loguniform": [0.1, 1.0e4]},
                                    "order": "permutation"}))
    records = run_tune(study, tmp_path / "mo")
    assert len(records) == 4 and all(r.status == "ok" for r in records)
    front = best(records, ["acc", "bwt"], ["max", "max"])
    assert front and all(
        not any(dominates(o, f, ["acc", "bwt"], ["max", "max"]) for o in records) for f in front)
    assert len(load(tmp_path / "mo").runs) == len({r.run_id for r in records})

    # ASHA over tasks learned; sequential trials make the rungs deterministic
    study = parse_spec(spec(study="asha", strategy="naive", num_trials=6, max_concurrent_trials=1,
                            train={"epochs": 1, "optimizer": "adam"},
                            search={"train.lr": {"loguniform": [1.0e-5, 0.1]}},
                            scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}}))
    out = tmp_path / "asha"
    records = run_tune(study, out)
    stopped = [r for r in records if r.status == "stopped"]
    assert stopped and all(r.tasks_learned < 3 for r in stopped)
    assert any(r.status == "ok" and r.tasks_learned == 3 for r in records)
    assert (out / "tune" / "asha").is_dir()  # Tune's state lives under the output directory
    _check_stopped_in_store(out, records, "asha")
    # reuse_actors: one after another, the trials ran in the same worker process (no
    # torch import per trial); Tune writes each result's pid into the trial's result.json
    pids = {json.loads(f.read_text().splitlines()[0])["pid"]
            for f in (out / "tune" / "asha").glob("*/result.json")}
    assert 1 <= len(pids) < len(records), pids


def _check_stopped_in_store(out, records, study):
    """Every trial is in the store; a stopped one has NaN rows after its last task, null
    ACC, and is counted (not averaged) by the report and the analysis."""
    from llray import analysis
    from llray.report import summary_table

    res = load(out)
    runs = res.runs.set_index("run_id")
    assert set(runs.index) == {r.run_id for r in records} and set(runs.experiment) == {study}
    stopped = [r for r in records if r.status == "stopped"]
    for r in records:
        assert runs.loc[r.run_id, "status"] == r.status
        R = res.r_matrix_of(r.run_id)
        k = r.tasks_learned
        assert np.isfinite(R[: k + 1]).all() and np.isnan(R[k + 1:]).all()
        np.testing.assert_array_equal(R, r.R)
        assert json.loads(runs.loc[r.run_id, "config"])["tuning"]["study"] == study
    assert runs.loc[[r.run_id for r in stopped], "acc"].isna().all()
    ok = [metrics.acc(r.R) for r in records if r.status == "ok"]  # test ACC (reported)
    table = summary_table(res.runs).iloc[0]
    assert (table["runs"], table["ok"], table["stopped"]) == (len(records), len(ok), len(stopped))
    assert table["acc_mean"] == pytest.approx(np.mean(ok))
    summary = analysis.summarize(analysis.run_metrics(out), by="experiment").iloc[0]
    assert (summary["n"], summary["n_stopped"], summary["n_nan"]) == (len(records),
                                                                        len(stopped), 0)
    assert summary["acc"] == pytest.approx(np.mean(ok)) and summary["acc_n"] == len(ok)


def test_optuna_pruner_stops_a_bad_trial_and_the_store_records_it(tmp_path):
    # the second trial's tiny lr is worse after the first task: SHA prunes it there
    study = parse_spec(spec(study="sha", strategy="naive", num_trials=3, train=QUICK,
                            search={"train.lr": {"loguniform": [1.0e-6, 0.1]}},
                            enqueue=[{"train.lr": 0.01}, {"train.lr": 1.0e-6},
                                     {"train.lr": 0.02}],
                            scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}}))
    records = run_optuna(study, output=tmp_path)
    assert [r.status for r in records][:2] == ["ok", "stopped"]
    assert records[1].tasks_learned == 1
    _check_stopped_in_store(tmp_path, records, "sha")


def _wait_for_trials(proc, n, timeout):
    """Read the CLI's stderr until ``n`` trials have finished; returns their ids."""
    done, t0 = [], time.time()
    for line in proc.stderr:
        if line.startswith("trial ") and ": ok " in line:
            done.append(line.split()[1].rstrip(":"))
        if len(done) >= n or time.time() - t0 > timeout:
            break
    return done


def test_interrupted_study_resumes_without_rerunning_finished_trials(tmp_path, ray_here, capsys):
    from ray import tune

    path = write_spec(tmp_path, num_trials=5, max_concurrent_trials=1, train=QUICK,
                      search={"ewc.lambda_": {"loguniform": [0.1, 1.0e4]}, "order": "permutation"},
                      enqueue=[{"order": "identity"}])
    out = tmp_path / "out"
    address = ray_here.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "llray.cli", "tune", str(path), "--output", str(out),
           "--address", address]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    first = _wait_for_trials(proc, 2, timeout=120)
    proc.send_signal(signal.SIGINT)  # Tune saves its state and stops
    proc.communicate(timeout=120)
    assert len(first) == 2 and proc.returncode == 130  # interrupted: exit 130

    state = out / "tune" / "s"
    before = {t.trial_id: t for t in tune.ExperimentAnalysis(str(state)).trials}
    assert all(before[i].status == "TERMINATED" for i in first)
    stamps = {i: before[i].last_result["timestamp"] for i in first}

    # without --resume the existing study is refused, and nothing runs
    assert main(["tune", str(path), "--output", str(out)]) == 2
    assert main(["tune", str(path), "--output", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "best trial" in text and "R (row i" in text and "top 5 trials" in text

    after = {t.trial_id: t for t in tune.ExperimentAnalysis(str(state)).trials}
    assert len(after) == 5 and all(t.status == "TERMINATED" for t in after.values())
    for i in first:  # same final result, and one progress row per task: not run again
        assert after[i].last_result["timestamp"] == stamps[i]
        rows = (state / f"trial_{i}" / "progress.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + 3
    runs = load(out).runs
    assert len(runs) == len({t.last_result["run_id"] for t in after.values()})


def test_two_processes_add_trials_to_one_journal_study(tmp_path):
    path = write_spec(tmp_path, num_trials=4, train=QUICK)
    journal = tmp_path / "study.journal"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llray.cli", "tune", str(path), "--backend", "optuna",
           "--storage", str(journal), "--output", str(out), "--max-trials", "2"]
    procs = [subprocess.Popen(cmd + ["--worker", str(w)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name="s", storage=make_storage(str(journal))).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len(load(out).runs) == len({t.user_attrs["run_id"] for t in trials})
    assert np.isfinite([t.values[0] for t in trials]).all()
