"""The Parquet store: round trips, schemas, idempotent and atomic writes, bad files."""

import dataclasses
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llray import metrics, results
from llray.errors import ConfigError
from llray.learner import RunResult
from llray.results import (
    R_MATRIX_FILE_SCHEMA,
    R_MATRIX_SCHEMA,
    RUNS_FILE_SCHEMA,
    RUNS_SCHEMA,
    ResultsError,
    RunMeta,
    check_writable,
    finished_run_ids,
    load,
    r_matrix_of,
    r_matrix_stack,
    write_run,
    write_runs,
)

ORDER = (2, 0, 3, 1)
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def make_run(run_id="run-a", order=ORDER, seed=0, status="ok", experiment="exp",
             strategy="naive", diverge_at=None):
    T = len(order)
    R = np.random.default_rng(seed).random((T + 1, T))
    if diverge_at is not None:
        R[diverge_at:] = np.nan
    result = RunResult(R=R, order=tuple(order), status=status,
                       n_test=np.arange(10, 10 + T, dtype=np.int64), wall_s=3.5, train_s=2.0,
                       samples_trained=1000)
    meta = RunMeta(run_id, experiment, strategy, "permuted-digits", "domain", seed, order,
                   {"strategy": {"name": strategy}, "seed": seed}, T0, T0 + timedelta(seconds=3))
    return meta, result


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_round_trip_rebuilds_r_exactly(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    loaded = load(tmp_path)
    R = r_matrix_of(loaded, meta.run_id)
    assert R.dtype == np.float64 and R.shape == (5, 4)
    np.testing.assert_array_equal(R, res.R)
    np.testing.assert_array_equal(loaded.r_matrix_of(meta.run_id), res.R)


def test_runs_row_round_trip(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    row = load(tmp_path).runs.iloc[0]
    assert row.run_id == "run-a" and row.experiment == "exp" and row.status == "ok"
    assert list(row.task_order) == list(ORDER) and row.seed == 0
    assert row.acc == metrics.acc(res.R) and row.bwt == metrics.bwt(res.R)
    assert row.fwt == metrics.fwt(res.R) and row.forgetting == metrics.forgetting(res.R)
    assert row.train_samples_per_s == 500.0 and row.wall_s == 3.5
    assert json.loads(row.config) == meta.config
    assert row.started_at == pd.Timestamp(T0) and str(row.finished_at.tz) == "UTC"


def test_written_files_have_the_schema_constants(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    assert all_files(tmp_path) == ["r_matrix/experiment=exp/run-a.parquet",
                                   "runs/experiment=exp/run-a.parquet"]
    r_schema = pq.read_schema(tmp_path / "r_matrix/experiment=exp/run-a.parquet")
    runs_schema = pq.read_schema(tmp_path / "runs/experiment=exp/run-a.parquet")
    assert r_schema.equals(R_MATRIX_FILE_SCHEMA, check_metadata=False)
    assert runs_schema.equals(RUNS_FILE_SCHEMA, check_metadata=False)
    assert R_MATRIX_FILE_SCHEMA.names == [n for n in R_MATRIX_SCHEMA.names if n != "experiment"]
    loaded = load(tmp_path)
    assert list(loaded.r_matrix.columns) == R_MATRIX_SCHEMA.names
    assert list(loaded.runs.columns) == RUNS_SCHEMA.names


def test_schema_types_match_design():
    types = {f.name: str(f.type) for f in R_MATRIX_SCHEMA}
    assert types == {
        "run_id": "string", "experiment": "string", "strategy": "string",
        "benchmark": "string", "scenario": "string", "seed": "int64",
        "task_order": "list<item: int32>", "step": "int32", "train_task": "int32",
        "eval_task": "int32", "eval_pos": "int32", "accuracy": "double", "n_test": "int64",
        "split": "string",
    }
    assert RUNS_SCHEMA.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert RUNS_SCHEMA.names[7:] == ["status", "error", "acc", "bwt", "fwt", "forgetting", "wall_s",
                                     "train_samples_per_s", "config", "started_at",
                                     "finished_at"]


def test_diagonal_query_and_task_columns(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    r = load(tmp_path).r_matrix
    diag = r[r.step == r.eval_pos].sort_values("step")
    np.testing.assert_array_equal(diag.accuracy.to_numpy(), np.diag(res.R[1:]))
    assert (diag.train_task == diag.eval_task).all()
    assert diag.eval_task.tolist() == list(ORDER)
    assert r[r.step == 0].train_task.isna().all()
    assert r[r.step == 3].train_task.unique().tolist() == [ORDER[2]]
    e = r[(r.step == 2) & (r.eval_pos == 4)].iloc[0]
    assert e.eval_task == ORDER[3] and e.accuracy == res.R[2, 3] and e.n_test == 13


def test_writing_a_run_twice_keeps_one_copy(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    write_run(tmp_path, meta, res)
    assert len(all_files(tmp_path)) == 2
    loaded = load(tmp_path)
    assert len(loaded.runs) == 1 and len(loaded.r_matrix) == 5 * 4


def test_write_runs_batches_one_file_per_experiment_and_is_idempotent(tmp_path):
    items = [make_run(f"r{s}", seed=s) for s in range(3)] + [make_run("other", experiment="e2")]
    write_runs(tmp_path, items)
    write_runs(tmp_path, items)
    files = all_files(tmp_path)
    assert len(files) == 4 and sum(f.startswith("runs/experiment=exp/batch-") for f in files) == 1
    loaded = load(tmp_path)
    assert sorted(loaded.runs.run_id) == ["other", "r0", "r1", "r2"]
    assert len(loaded.r_matrix) == 4 * 20
    for meta, res in items:
        np.testing.assert_array_equal(r_matrix_of(loaded, meta.run_id), res.R)


def test_run_in_two_files_is_loaded_once(tmp_path):
    items = [make_run(f"r{s}", seed=s) for s in range(2)]
    write_run(tmp_path, *items[0])
    write_runs(tmp_path, items)  # r0 now also in a batch file
    loaded = load(tmp_path)
    assert sorted(loaded.runs.run_id) == ["r0", "r1"]
    assert len(loaded.r_matrix) == 2 * 20
    assert finished_run_ids(tmp_path) == {"r0", "r1"}


def test_divergent_run_round_trips(tmp_path):
    meta, res = make_run(status="diverged", diverge_at=3)
    write_run(tmp_path, meta, res)
    loaded = load(tmp_path)
    row = loaded.runs.iloc[0]
    assert row.status == "diverged"
    assert np.isnan(row.acc) and np.isnan(row.bwt) and np.isnan(row.forgetting)
    R = r_matrix_of(loaded, meta.run_id)
    assert np.isnan(R[3:]).all() and np.isfinite(R[:3]).all()
    np.testing.assert_array_equal(R, res.R)
    assert pq.read_table(tmp_path / "runs/experiment=exp/run-a.parquet")["acc"].null_count == 1


def test_foreign_parquet_file_is_reported_by_name(tmp_path):
    write_run(tmp_path, *make_run())
    d = tmp_path / "r_matrix" / "experiment=exp"
    pq.write_table(pa.table({"run_id": ["x"], "accuracy": [0.5], "loss": [1.0]}),
                   d / "foreign.parquet")
    with pytest.raises(ResultsError, match=r"foreign\.parquet") as info:
        load(tmp_path)
    msg = str(info.value)
    assert "missing column step" in msg and "unexpected column loss" in msg
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_wrong_type_is_reported_by_name_and_column(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    table = pq.read_table(tmp_path / "runs/experiment=exp/run-a.parquet")
    bad = table.set_column(table.schema.get_field_index("seed"), "seed",
                           table["seed"].cast(pa.int32()))
    pq.write_table(bad, tmp_path / "runs/experiment=exp/copy.parquet")
    with pytest.raises(ResultsError, match=r"copy\.parquet.*column seed is int32"):
        results.load_runs(tmp_path)
    with pytest.raises(ResultsError, match=r"copy\.parquet"):
        finished_run_ids(tmp_path)


def test_not_a_parquet_file_and_misplaced_file_are_reported(tmp_path):
    write_run(tmp_path, *make_run())
    junk = tmp_path / "runs" / "experiment=exp" / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match=r"junk\.parquet.*cannot read"):
        load(tmp_path)
    junk.unlink()
    pq.write_table(pq.read_table(tmp_path / "runs/experiment=exp/run-a.parquet"),
                   tmp_path / "runs" / "loose.parquet")
    with pytest.raises(ResultsError, match=r"loose\.parquet.*experiment=NAME"):
        load(tmp_path)


def test_missing_directory_is_an_error_but_empty_resume_is_not(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        load(tmp_path / "nope")
    assert finished_run_ids(tmp_path / "nope") == set()


def test_unwritable_output_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        check_writable(blocker / "results")
    assert info.value.field == "output" and "cannot write" in str(info.value)
    check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and os.listdir(tmp_path / "a" / "b") == []


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    write_runs(tmp_path, [make_run(f"r{s}", seed=s) for s in range(3)])
    assert not [f for f in all_files(tmp_path) if f.endswith(".tmp") or "/." in f]

    def broken(table, where, **kwargs):
        where.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_run(tmp_path / "fresh", *make_run())
    assert all_files(tmp_path / "fresh") == []


def test_experiment_partition_is_a_string_even_if_numeric(tmp_path):
    write_run(tmp_path, *make_run(experiment="2024"))
    write_run(tmp_path, *make_run("b", experiment="my exp/1"))
    runs = load(tmp_path).runs
    assert sorted(runs.experiment.tolist()) == ["2024", "my exp/1"]
    assert pd.api.types.is_string_dtype(runs.experiment)
    assert len(results.load_runs(tmp_path, experiment="my exp/1")) == 1


def test_file_uri_output(tmp_path):
    uri = tmp_path.resolve().as_uri()
    check_writable(uri)
    write_run(uri, *make_run())
    assert finished_run_ids(uri) == {"run-a"}
    assert finished_run_ids(tmp_path) == {"run-a"}


def test_meta_and_result_must_agree():
    meta, res = make_run()
    res.order = (0, 1, 2, 3)
    with pytest.raises(ValueError, match="order"):
        results.r_matrix_table(meta, res)
    with pytest.raises(ValueError, match="run_id"):
        RunMeta("../x", "e", "s", "b", "domain", 0, (0,))


def test_r_matrix_stack_gives_vectorised_metrics(tmp_path):
    items = [make_run(f"r{s}", seed=s) for s in range(4)]
    write_runs(tmp_path, items)
    loaded = load(tmp_path)
    ids, R = r_matrix_stack(loaded.r_matrix)
    runs = loaded.runs.set_index("run_id").loc[list(ids)]
    np.testing.assert_allclose(metrics.acc(R), runs.acc, rtol=0, atol=1e-15)
    np.testing.assert_allclose(metrics.bwt(R), runs.bwt, rtol=0, atol=1e-15)
    with pytest.raises(KeyError, match="nope"):
        r_matrix_of(loaded, "nope")


def _doc_block(marker):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def _docs_fixture(tmp_path):
    items = [make_run(f"r{s}", seed=s, strategy=st) for s, st in
             enumerate(["naive", "naive", "ewc"])]
    items.append(make_run("div", seed=9, status="diverged", diverge_at=2))
    # every run also has a validation R: the examples must keep to the test rows
    items = [(m, dataclasses.replace(r, R_val=r.R[::-1].copy(), n_val=r.n_test))
             for m, r in items]
    write_runs(tmp_path, items[:2])
    for item in items[2:]:
        write_run(tmp_path, *item)
    return {m.run_id: metrics.summary(r.R) for m, r in items}


def _run_doc_example(marker, tmp_path):
    code = _doc_block(marker).replace('"results/quickstart"', repr(str(tmp_path)))
    scope = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    return scope["per_run"].set_index("run_id")


def _check_per_run(per_run, expected):
    assert sorted(per_run.index) == sorted(expected)
    for run_id, m in expected.items():
        for k in ("acc", "bwt", "fwt"):
            np.testing.assert_allclose(per_run.loc[run_id, k], m[k], rtol=1e-12)


def test_docs_pandas_grouped_query_matches_metrics(tmp_path):
    expected = _docs_fixture(tmp_path)
    _check_per_run(_run_doc_example("groupby", tmp_path), expected)


def test_docs_duckdb_grouped_query_matches_metrics(tmp_path):
    pytest.importorskip("duckdb")
    expected = _docs_fixture(tmp_path)
    _check_per_run(_run_doc_example("duckdb.sql", tmp_path), expected)


def _as_old_llray_wrote_it(path, column):
    """Rewrite a file without ``column``, as an llray from before the column wrote it."""
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)


def test_split_and_error_columns_round_trip(tmp_path):
    meta, res = make_run()
    res.status, res.error = "failed", "RuntimeError: checkpoint directory is read-only"
    write_run(tmp_path, meta, res)
    loaded = load(tmp_path)
    assert set(loaded.r_matrix.split) == {"test"}
    assert loaded.runs.error.tolist() == ["RuntimeError: checkpoint directory is read-only"]
    write_run(tmp_path, *make_run("run-ok"))
    assert load(tmp_path).runs.set_index("run_id").error.isna().to_dict() == {
        "run-a": False, "run-ok": True}


def test_store_written_before_split_and_error_still_reads(tmp_path):
    from llray import analysis

    old, new = make_run("old", seed=1), make_run("new", seed=2)
    write_run(tmp_path, *old)
    _as_old_llray_wrote_it(tmp_path / "r_matrix/experiment=exp/old.parquet", "split")
    _as_old_llray_wrote_it(tmp_path / "runs/experiment=exp/old.parquet", "error")
    assert "split" not in pq.read_schema(tmp_path / "r_matrix/experiment=exp/old.parquet").names
    write_run(tmp_path, *new)
    loaded = load(tmp_path)
    assert loaded.r_matrix.split.tolist() == ["test"] * len(loaded.r_matrix)
    assert loaded.runs.error.isna().all() and len(loaded.runs) == 2
    np.testing.assert_array_equal(r_matrix_of(loaded, "old"), old[1].R)
    assert results.schema_problems(
        pq.read_schema(tmp_path / "runs/experiment=exp/old.parquet"), RUNS_FILE_SCHEMA) == []
    for engine in ("pandas", "duckdb"):
        got = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
        assert got.loc["old", "acc"] == pytest.approx(metrics.acc(old[1].R))
    stats = results.compact(tmp_path)  # the merged files hold the new columns
    assert stats.files_after == 2
    for f in Path(tmp_path).rglob("*.parquet"):
        names = pq.read_schema(f).names
        assert ("split" in names) if "r_matrix" in str(f) else ("error" in names)
    pd.testing.assert_frame_equal(load(tmp_path).runs.sort_values("run_id", ignore_index=True),
                                  loaded.runs.sort_values("run_id", ignore_index=True))


def test_r_matrix_of_picks_the_split(tmp_path):
    meta, res = make_run()
    write_run(tmp_path, meta, res)
    df = load(tmp_path).r_matrix
    val = df.assign(split="val", accuracy=1.0)
    both = pd.concat([df, val], ignore_index=True)
    np.testing.assert_array_equal(r_matrix_of(both, meta.run_id), res.R)
    assert (r_matrix_of(both, meta.run_id, split="val") == 1.0).all()
    ids, R = r_matrix_stack(both)
    np.testing.assert_array_equal(R[0], res.R)
    with pytest.raises(KeyError, match="test rows only"):
        r_matrix_of(df.drop(columns=["split"]), meta.run_id, split="val")
