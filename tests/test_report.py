"""Summary tables: mean ± std per strategy, bounds, status counts, text and JSON."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llray import metrics
from llray.errors import ConfigError
from llray.report import COLUMNS, format_table, report, summary_table, to_json
from llray.results import ResultsError, load_runs, write_run, write_runs
from tests.test_results import make_run

ACC = {"naive": [0.41, 0.47, 0.52], "ewc": [0.80, 0.86, 0.79, 0.91], "joint": [0.95, 0.97]}


def runs_frame():
    rows = []
    for strategy, accs in ACC.items():
        for seed, a in enumerate(accs):
            rows.append({"experiment": "exp", "benchmark": "permuted-digits",
                         "scenario": "domain", "strategy": strategy, "status": "ok",
                         "acc": a, "bwt": -a / 10, "fwt": a / 100 - 0.005,
                         "forgetting": a / 10,
                         "config": json.dumps({"strategy": {"name": strategy}})})
    return pd.DataFrame(rows)


def test_mean_and_std_equal_numpy():
    t = summary_table(runs_frame()).set_index("strategy")
    for strategy, accs in ACC.items():
        assert t.loc[strategy, "runs"] == len(accs)
        assert t.loc[strategy, "acc_mean"] == pytest.approx(np.mean(accs), abs=1e-15)
        assert t.loc[strategy, "acc_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-15)
        bwt = [-a / 10 for a in accs]
        assert t.loc[strategy, "bwt_std"] == pytest.approx(np.std(bwt, ddof=1), abs=1e-15)
    assert list(summary_table(runs_frame()).columns) == COLUMNS


def test_text_table_shows_mean_pm_std_and_bounds():
    text = format_table(summary_table(runs_frame()))
    lines = text.splitlines()
    assert lines[0].split() == ["experiment", "benchmark", "scenario", "strategy", "bound",
                                "runs", "ACC", "BWT", "FWT", "status"]
    body = lines[2:5]
    assert [ln.split()[3] for ln in body] == ["naive", "ewc", "joint"]  # lower first
    assert body[0].split()[4] == "lower" and body[2].split()[4] == "upper"
    ewc = np.array(ACC["ewc"])
    assert f"{ewc.mean():.3f} ± {ewc.std(ddof=1):.3f}" in body[1]
    assert f"{(-ewc / 10).mean():+.3f} ± " in body[1]
    acc_end = lines[0].index("ACC") + len("ACC")  # numbers are right-aligned under it
    for ln, accs in zip(body, ACC.values()):
        a = np.array(accs)
        assert ln[:acc_end].endswith(f"{a.mean():.3f} ± {a.std(ddof=1):.3f}")


def test_bound_comes_from_the_registered_name_not_the_label():
    runs = runs_frame()
    runs.loc[runs.strategy == "naive", "strategy"] = "finetune"  # a label
    runs.loc[runs.strategy == "ewc", "config"] = json.dumps({"strategy": {"name": "joint"},
                                                             "x": 1})
    runs.loc[runs.strategy == "joint", "config"] = "not json"
    t = summary_table(runs).set_index("strategy")
    assert t.loc["finetune", "bound"] == "lower"
    assert t.loc["ewc", "bound"] == "upper"
    assert t.loc["joint", "bound"] == "upper"  # falls back to the strategy column


def test_diverged_runs_are_counted_not_averaged():
    runs = runs_frame()
    extra = runs.iloc[[0]].assign(status="diverged", acc=np.nan, bwt=np.nan, fwt=0.9)
    t = summary_table(pd.concat([runs, extra], ignore_index=True)).set_index("strategy")
    assert t.loc["naive", ["runs", "ok", "diverged", "failed"]].tolist() == [4, 3, 1, 0]
    assert t.loc["naive", "acc_mean"] == pytest.approx(np.mean(ACC["naive"]))
    assert t.loc["naive", "fwt_mean"] == pytest.approx(np.mean(ACC["naive"]) / 100 - 0.005)
    assert "3 ok, 1 diverged" in format_table(t.reset_index())


def test_stopped_runs_are_counted_separately_not_averaged():
    runs = runs_frame()
    # a trial a scheduler stopped after T - 1 tasks: its FWT is defined, its ACC is not
    stopped = runs.iloc[[3, 4]].assign(status="stopped", acc=np.nan, bwt=np.nan, fwt=0.9,
                                       forgetting=np.nan)
    t = summary_table(pd.concat([runs, stopped], ignore_index=True)).set_index("strategy")
    assert t.loc["ewc", ["runs", "ok", "diverged", "stopped", "failed"]].tolist() == [6, 4, 0, 2, 0]
    assert t.loc["ewc", "fwt_mean"] == pytest.approx(np.mean([a / 100 - 0.005
                                                             for a in ACC["ewc"]]))
    assert t.loc["ewc", "acc_std"] == pytest.approx(np.std(ACC["ewc"], ddof=1))
    assert "4 ok, 2 stopped" in format_table(t.reset_index())
    assert json.loads(to_json(t.reset_index()))[1]["stopped"] == 2


def test_single_run_has_no_std_and_json_nulls():
    runs = runs_frame().iloc[[0]]
    t = summary_table(runs)
    assert np.isnan(t.acc_std[0])
    line = format_table(t).splitlines()[2]
    assert "0.410 " in line + " " and "±" not in line
    rows = json.loads(to_json(t))
    assert rows[0]["acc_std"] is None and rows[0]["bwt_std"] is None
    assert rows[0]["acc_mean"] == 0.41 and rows[0]["runs"] == 1 and rows[0]["bound"] == "lower"
    assert list(rows[0]) == [*COLUMNS, "split"] and rows[0]["split"] == "test"


def test_groups_by_experiment_benchmark_and_scenario():
    a = runs_frame()
    b = a.assign(scenario="task", acc=a.acc - 0.1)
    t = summary_table(pd.concat([b, a], ignore_index=True))
    assert len(t) == 6
    assert t.scenario.tolist() == ["domain"] * 3 + ["task"] * 3


def test_report_from_parquet_matches_metrics(tmp_path):
    items = [make_run(f"{st}{s}", seed=10 * i + s, strategy=st)
             for i, st in enumerate(["naive", "ewc", "joint"]) for s in range(3)]
    write_runs(tmp_path, items[:4])
    for item in items[4:]:
        write_run(tmp_path, *item)
    rows = {r["strategy"]: r for r in json.loads(report(tmp_path, as_json=True))}
    for st in ("naive", "ewc", "joint"):
        Rs = np.stack([r.R for m, r in items if m.strategy == st])
        assert rows[st]["acc_mean"] == pytest.approx(metrics.acc(Rs).mean(), abs=1e-12)
        assert rows[st]["fwt_std"] == pytest.approx(np.std(metrics.fwt(Rs), ddof=1), abs=1e-12)
    text = report(tmp_path)
    assert "naive" in text and "upper" in text


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no results") as info:
        report(tmp_path)
    assert info.value.field == "output"
    with pytest.raises(ConfigError, match="does not exist"):
        report(tmp_path / "missing")


def test_report_names_a_foreign_file(tmp_path):
    write_run(tmp_path, *make_run())
    pq.write_table(pa.table({"acc": [1.0]}), tmp_path / "runs/experiment=exp/x.parquet")
    with pytest.raises(ResultsError, match=r"x\.parquet"):
        report(tmp_path)
    assert len(load_runs(tmp_path, experiment="none")) == 0  # other partitions unaffected
