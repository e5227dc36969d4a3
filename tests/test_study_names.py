"""One experiment, one name: summaries keep experiments apart, and a study name that a
results directory already holds is not reused by a second study or backend silently."""

import numpy as np
import pytest
import yaml

from llray import analysis, metrics
from llray.cli import main
from llray.learner import RunResult
from llray.results import RunMeta, load_runs, write_run

SPEC = {"study": "s", "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 2},
        "model": {"hidden": [16]}, "train": {"epochs": 1, "optimizer": "adam", "lr": 0.01},
        "strategy": "naive", "search": {"train.lr": {"loguniform": [1.0e-3, 0.1]}},
        "num_trials": 1, "seed": 0}


def _write(out, run_id, experiment, R):
    result = RunResult(R=R, order=(0, 1), status="ok", n_test=np.full(2, 10), wall_s=1.0,
                       train_s=1.0, samples_trained=10)
    write_run(out, RunMeta(run_id, experiment, "naive", "d", "domain", 0, (0, 1), {}), result)


def test_summary_groups_by_experiment_unless_told_otherwise(tmp_path):
    rng = np.random.default_rng(0)
    accs = {"quickstart": [], "quickstart-curriculum": []}
    for i in range(5):
        experiment = "quickstart" if i < 2 else "quickstart-curriculum"
        R = rng.random((3, 2))
        _write(tmp_path, f"r{i}", experiment, R)
        accs[experiment].append(metrics.acc(R))
    out = analysis.summary(tmp_path, by=["strategy"], metrics=["acc"])
    assert list(out.columns[:2]) == ["experiment", "strategy"]
    got = out.set_index("experiment")
    for experiment, values in accs.items():
        assert got.loc[experiment, "n"] == len(values)
        assert got.loc[experiment, "acc"] == pytest.approx(np.mean(values))
    pooled = analysis.summary(tmp_path, by="strategy", metrics=["acc"], per_experiment=False)
    assert len(pooled) == 1 and pooled.loc[0, "n"] == 5
    assert pooled.loc[0, "acc"] == pytest.approx(np.mean(sum(accs.values(), [])))


def _spec(tmp_path, **changes):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return str(path)


def test_a_second_study_or_backend_under_one_name_needs_resume(tmp_path, capsys):
    spec, out = _spec(tmp_path), str(tmp_path / "out")
    assert main(["tune", spec, "--backend", "optuna", "--output", out]) == 0
    assert len(load_runs(out)) == 1
    capsys.readouterr()

    # the same backend again: refused, naming the study; nothing runs or is written
    assert main(["tune", spec, "--backend", "optuna", "--output", out]) == 2
    assert "'s' already exists in the Optuna storage" in capsys.readouterr().err
    assert len(load_runs(out)) == 1

    # --resume adds trials to it
    more = _spec(tmp_path, num_trials=2)
    assert main(["tune", more, "--backend", "optuna", "--output", out, "--resume"]) == 0
    assert len(load_runs(out)) == 2

    # the other backend: refused even with --resume, before Ray starts
    for extra in ([], ["--resume"]):
        assert main(["tune", spec, "--output", out, *extra]) == 2
        assert "was run with --backend optuna" in capsys.readouterr().err
    assert not (tmp_path / "out" / "tune").exists()


def test_a_study_named_like_an_experiment_in_the_store_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out, "r0", "s", np.full((3, 2), 0.5))  # e.g. `llray run` of an experiment "s"
    spec = _spec(tmp_path)
    assert main(["tune", spec, "--backend", "optuna", "--output", str(out)]) == 2
    assert "already hold runs of experiment 's'" in capsys.readouterr().err
    assert not (out / "optuna").exists() and len(load_runs(out)) == 1
    assert main(["tune", _spec(tmp_path, study="s2"), "--backend", "optuna",
                 "--output", str(out)]) == 0
    assert set(load_runs(out).experiment) == {"s", "s2"}


def test_taskonomy_files_carry_their_own_experiment_name(tmp_path):
    import pandas as pd

    from llray import taskonomy as tx

    pairs = pd.DataFrame({"seed": [0, 0, 0, 0], "kind": ["scratch", "scratch", "pair", "pair"],
                          "source": [-1, -1, 0, 1], "target": [0, 1, 1, 0],
                          "target_final": [0.6, 0.7, 0.8, 0.5],
                          "source_after_source": [None, None, 0.9, 0.8],
                          "source_final": [None, None, 0.7, 0.6],
                          "target_after_source": [None, None, 0.2, 0.3],
                          "init_target": [0.1, 0.1, 0.1, 0.1]})
    aff = tx.affinity(pairs)
    where = tx.write(tmp_path, "naive", pairs, aff, tx.curricula(aff, 2), "{}",
                     experiment="quickstart" + tx.SUFFIX)
    for name in ("pairs", "affinity", "curricula"):
        df = pd.read_parquet(where / f"{name}.parquet")
        assert set(df["experiment"]) == {"quickstart-taskonomy"}
