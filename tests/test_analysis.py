"""Analysis API: per-run metrics from Parquet equal llray.metrics; grouping; CIs; bad input."""

import numpy as np
import pandas as pd
import pytest

from llray import analysis, metrics
from llray.errors import ConfigError
from llray.learner import RunResult
from llray.results import RunMeta, write_run, write_runs

ENGINES = ["duckdb", "pandas"]


def _result(R, order, status="ok"):
    T = len(order)
    return RunResult(R=R, order=tuple(order), status=status, n_test=np.full(T, 10),
                     wall_s=1.0, train_s=1.0, samples_trained=10)


def _store(tmp_path, seed=0):
    """Eight runs with random R and non-identity orders (T = 3 and 4), one diverged."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(8):
        T = 3 if i < 5 else 4
        order = tuple(int(x) for x in rng.permutation(T))
        if order == tuple(range(T)):
            order = order[::-1]
        R = rng.random((T + 1, T))
        status = "ok"
        if i == 4:
            R[2:] = np.nan
            status = "diverged"
        strategy = ["naive", "ewc"][i % 2]
        meta = RunMeta(f"run{i}", "exp" if i < 6 else "other", strategy, "digits", "domain",
                       i // 2, order, {"strategy": {"name": strategy, "lambda_": float(i)}})
        write_run(tmp_path, meta, _result(R, order, status))
        truth[f"run{i}"] = (R, order)
    return truth


@pytest.mark.parametrize("engine", ENGINES)
def test_run_metrics_equal_llray_metrics(tmp_path, engine):
    truth = _store(tmp_path)
    df = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
    assert sorted(df.index) == sorted(truth)
    for run_id, (R, order) in truth.items():
        expected = metrics.summary(R)
        row = df.loc[run_id]
        for m in analysis.METRICS:
            np.testing.assert_allclose(row[m], expected[m], rtol=0, atol=1e-12, err_msg=m)
        assert row["order"] == ",".join(map(str, order))
        assert row["num_tasks"] == len(order)
    assert np.isnan(df.loc["run4", "acc"]) and df.loc["run4", "status"] == "diverged"
    assert (df.loc[df.index != "run4", "status"] == "ok").all()
    assert set(df["experiment"]) == {"exp", "other"}


@pytest.mark.parametrize("engine", ENGINES)
def test_subset_of_metrics_uses_the_same_numbers(tmp_path, engine):
    truth = _store(tmp_path)
    full = analysis.run_metrics(tmp_path, engine=engine)
    part = analysis.run_metrics(tmp_path, metrics=["acc", "bwt", "fwt", "learning_accuracy"],
                                engine=engine)
    assert "forgetting" not in part
    pd.testing.assert_frame_equal(full.drop(columns="forgetting"), part, atol=1e-12)
    assert len(part) == len(truth)


def test_a_run_stored_twice_counts_once(tmp_path):
    truth = _store(tmp_path)
    R, order = truth["run1"]
    meta = RunMeta("run1", "exp", "ewc", "digits", "domain", 0, order, {})
    other = RunMeta("zzz", "exp", "ewc", "digits", "domain", 9, order, {})
    write_runs(tmp_path, [(meta, _result(R, order)), (other, _result(R, order))])  # a batch file
    df = analysis.run_metrics(tmp_path, engine="duckdb").set_index("run_id")
    assert df.loc["run1", "acc"] == pytest.approx(metrics.acc(R), abs=1e-12)
    assert df.loc["run1", "bwt"] == pytest.approx(metrics.bwt(R), abs=1e-12)
    assert df.loc["run1", "order"] == ",".join(map(str, order))


def test_missing_entries_give_nan_not_a_smaller_r(tmp_path):
    import pyarrow.parquet as pq

    truth = _store(tmp_path)
    path = next(tmp_path.glob("r_matrix/experiment=exp/run0.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)  # drop R[T, T]
    df = analysis.run_metrics(tmp_path, engine="duckdb").set_index("run_id")
    assert df.loc["run0", ["acc", "bwt", "forgetting"]].isna().all()
    assert df.loc["run1", "acc"] == pytest.approx(metrics.acc(truth["run1"][0]))


@pytest.mark.parametrize("engine", ENGINES)
def test_stopped_run_is_counted_not_averaged(tmp_path, engine):
    truth = _store(tmp_path)
    R, order = truth["run0"]  # naive, T = 3, exp
    R = R.copy()
    R[3] = np.nan  # stopped after T - 1 tasks: FWT is defined, ACC and BWT are not
    meta = RunMeta("stop", "exp", "naive", "digits", "domain", 7, order, {})
    write_run(tmp_path, meta, _result(R, order, "stopped"))
    per_run = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
    assert per_run.loc["stop", "status"] == "stopped"
    assert np.isnan(per_run.loc["stop", "acc"])
    assert per_run.loc["stop", "fwt"] == pytest.approx(metrics.fwt(R))  # the R says so
    s = analysis.summarize(per_run.reset_index(), by=["experiment", "strategy"])
    naive = s.set_index(["experiment", "strategy"]).loc[("exp", "naive")]
    # exp/naive: run0, run2 ok; run4 diverged; stop stopped
    assert (naive["n"], naive["n_nan"], naive["n_stopped"]) == (4, 1, 1)
    ok = [truth[k][0] for k in ("run0", "run2")]
    assert naive["fwt"] == pytest.approx(np.mean([metrics.fwt(x) for x in ok]))
    assert naive["fwt_n"] == 2
    m = analysis.mean_r(tmp_path, by=["strategy"], engine=engine)
    cell = m[(m.strategy == "naive") & (m.num_tasks == 3) & (m.step == 1) & (m.eval_pos == 1)]
    assert cell["n"].item() == 3  # run0, run2, run4 (diverged later); not the stopped one
    everything = analysis.mean_r(tmp_path, by=["strategy"], engine=engine, skip_status=())
    cell = everything[(everything.strategy == "naive") & (everything.num_tasks == 3)
                      & (everything.step == 1) & (everything.eval_pos == 1)]
    assert cell["n"].item() == 4


def test_summarize_confidence_interval_by_hand():
    df = pd.DataFrame({"strategy": ["a", "a", "a", "b", "b"],
                       "acc": [0.5, 0.6, 0.9, 0.2, np.nan]})
    s = analysis.summarize(df, by="strategy", metrics=["acc"], confidence=0.95)
    s = s.set_index("strategy")
    x = np.array([0.5, 0.6, 0.9])
    half = 4.302652729911275 * x.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert s.loc["a", "acc"] == pytest.approx(x.mean())
    assert s.loc["a", "acc_ci_low"] == pytest.approx(x.mean() - half)
    assert s.loc["a", "acc_ci_high"] == pytest.approx(x.mean() + half)
    assert s.loc["b", "n"] == 2 and s.loc["b", "n_nan"] == 1 and s.loc["b", "acc_n"] == 1
    assert np.isnan(s.loc["b", "acc_ci_low"])  # one finite value: no interval


def test_group_by_strategy_and_a_study_parameter(tmp_path):
    rng = np.random.default_rng(1)
    Rs = {}
    for i, lam in enumerate([1.0, 1.0, 1.0, 10.0, 10.0]):
        R = rng.random((4, 3))
        config = {"strategy": {"name": "ewc", "lambda_": 0.0},
                  "tuning": {"study": "s", "params": {"ewc.lambda_": lam}}}
        write_run(tmp_path, RunMeta(f"t{i}", "s", "ewc", "d", "domain", 0, (2, 0, 1), config),
                  _result(R, (2, 0, 1)))
        Rs.setdefault(lam, []).append(metrics.acc(R))
    out = analysis.summary(tmp_path, by=["ewc.lambda_"], metrics=["acc"]).set_index("ewc.lambda_")
    assert list(out.index) == [1.0, 10.0]
    assert out.loc[1.0, "acc"] == pytest.approx(np.mean(Rs[1.0]))
    assert out.loc[10.0, "n"] == 2
    per_run = analysis.run_metrics(tmp_path, params=["ewc.lambda_", "order"])
    assert set(per_run["study"]) == {"s"} and set(per_run["order"]) == {"2,0,1"}


def test_param_value_reads_sections_and_strategy_fields():
    cfg = {"train": {"lr": 0.1}, "strategy": {"name": "ewc", "lambda_": 5.0}, "order": [1, 0]}
    assert analysis.param_value(cfg, "train.lr") == 0.1
    assert analysis.param_value(cfg, "ewc.lambda_") == 5.0
    assert analysis.param_value(cfg, "replay.ratio") is None
    assert analysis.param_value(cfg, "order") == [1, 0]


def test_mean_r_averages_by_position(tmp_path):
    truth = _store(tmp_path)
    m = analysis.mean_r(tmp_path, by=["strategy"])
    naive3 = [truth[k][0] for k in ("run0", "run2")]  # T=3 naive runs, run4 diverged
    cell = m[(m.strategy == "naive") & (m.num_tasks == 3) & (m.step == 1) & (m.eval_pos == 2)]
    vals = [R[1, 1] for R in naive3] + [truth["run4"][0][1, 1]]
    assert cell["accuracy"].item() == pytest.approx(np.mean(vals))
    late = m[(m.strategy == "naive") & (m.num_tasks == 3) & (m.step == 3) & (m.eval_pos == 1)]
    assert late["n"].item() == 2  # the diverged run's NaN rows are left out


def test_duckdb_views(tmp_path):
    truth = _store(tmp_path)
    con = analysis.connect(tmp_path)
    got = dict(con.sql("SELECT run_id, bwt FROM run_metrics WHERE run_id <> 'run4'").fetchall())
    assert got == pytest.approx({k: metrics.bwt(R) for k, (R, _) in truth.items() if k != "run4"})
    assert con.sql("SELECT count(*) FROM runs").fetchall() == [(len(truth),)]


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_no_results_is_a_clear_error(tmp_path, engine):
    with pytest.raises(ConfigError, match="does not exist"):
        analysis.run_metrics(tmp_path / "nope", engine=engine)
    with pytest.raises(ConfigError, match="no results"):
        analysis.run_metrics(tmp_path, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_corrupt_file_is_named(tmp_path, engine):
    _store(tmp_path)
    bad = tmp_path / "r_matrix" / "experiment=exp" / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError) as e:
        analysis.run_metrics(tmp_path, engine=engine)
    assert "broken.parquet" in str(e.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_foreign_parquet_is_named(tmp_path, engine):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _store(tmp_path)
    foreign = tmp_path / "r_matrix" / "experiment=exp" / "aaa-foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), foreign)
    with pytest.raises(ConfigError) as e:
        analysis.run_metrics(tmp_path, engine=engine)
    assert "aaa-foreign.parquet" in str(e.value) and "run_id" in str(e.value)


def test_unknown_experiment_lists_the_ones_there(tmp_path):
    _store(tmp_path)
    with pytest.raises(ConfigError,
                       match="'nope' is not in the results; experiments there: exp, other"):
        analysis.run_metrics(tmp_path, experiment="nope")
    assert set(analysis.run_metrics(tmp_path, experiment="other")["experiment"]) == {"other"}


def test_unknown_group_column_is_named(tmp_path):
    _store(tmp_path)
    with pytest.raises(ConfigError, match="unknown column 'colour'"):
        analysis.summarize(analysis.run_metrics(tmp_path), by=["colour"])


@pytest.mark.parametrize("engine", ENGINES)
def test_r_matrix_alone_is_enough(tmp_path, engine):
    import shutil

    truth = _store(tmp_path)
    shutil.rmtree(tmp_path / "runs")
    df = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
    for run_id, (R, order) in truth.items():
        assert df.loc[run_id, "order"] == ",".join(map(str, order))
        np.testing.assert_allclose(df.loc[run_id, "fwt"], metrics.fwt(R), atol=1e-12)
    assert df["status"].isna().all()
