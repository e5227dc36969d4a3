"""Compaction: the same runs in fewer files, idempotent, crash-safe, newest copy wins."""

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llray import analysis, results
from llray.cli import main
from llray.errors import ConfigError
from llray.results import ResultsError, compact, finished_run_ids, load, write_run, write_runs
from tests.test_results import make_run

# the modules themselves: ``llray.results.compact`` is also the function re-exported there
compact_module = importlib.import_module("llray.results.compact")
read_module = importlib.import_module("llray.results.read")


def data_files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.parquet")
                  if not p.name.startswith("."))


def hidden_files(root):
    return [p for p in Path(root).rglob(".*") if p.is_file()]


def snapshot(root):
    return {f: (Path(root, f).stat().st_mtime_ns, Path(root, f).stat().st_size)
            for f in data_files(root)}


def canonical(df, key):
    df = df.sort_values(key, ignore_index=True)
    return df.assign(task_order=df["task_order"].map(list)) if "task_order" in df else df


def assert_same_load(a, b):
    pd.testing.assert_frame_equal(canonical(a.runs, ["run_id"]), canonical(b.runs, ["run_id"]))
    key = ["run_id", "step", "eval_pos"]
    pd.testing.assert_frame_equal(canonical(a.r_matrix, key), canonical(b.r_matrix, key))


@pytest.fixture
def store(tmp_path):
    """Nine runs in two experiments: per-run files, one batch file, a stopped run."""
    out = tmp_path / "out"
    items = [make_run(f"x{i}", seed=i) for i in range(5)]  # file names after "compact-"
    items += [make_run(f"b{i}", seed=10 + i, experiment="other", order=(1, 0, 2))
              for i in range(3)]
    items.append(make_run("stop", seed=20, status="stopped", diverge_at=2))
    for item in items[:6]:
        write_run(out, *item)
    write_runs(out, items[6:])  # b1 and b2 in a batch file, the stopped run alone
    return out, items


def test_compact_keeps_every_run_in_fewer_files_and_analysis_agrees(store):
    out, items = store
    before, files = load(out), data_files(out)
    metrics_before = {e: analysis.run_metrics(out, engine=e) for e in ("duckdb", "pandas")}
    assert len(files) == 16  # per dataset: 6 files of exp, 2 of other (one a batch)
    stats = compact(out)
    assert stats.experiments == ("exp", "other")
    assert (stats.files_before, stats.files_after) == (16, 4)
    assert stats.files_written == 4 and stats.files_removed == 16 and stats.copies_dropped == 0
    assert stats.rows_written == len(before.r_matrix) + len(before.runs)
    after = load(out)
    assert_same_load(before, after)
    for meta, res in items:
        np.testing.assert_array_equal(after.r_matrix_of(meta.run_id), res.R)
    assert all("/compact-" in f for f in data_files(out)) and not hidden_files(out)
    for engine, expected in metrics_before.items():
        got = analysis.run_metrics(out, engine=engine)
        pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-12)
        pd.testing.assert_frame_equal(analysis.summarize(got), analysis.summarize(expected))


def test_compact_twice_changes_nothing(store):
    out, _ = store
    compact(out)
    first = snapshot(out)
    stats = compact(out)
    assert stats.files_written == stats.files_removed == 0
    assert stats.files_before == stats.files_after == 4
    assert snapshot(out) == first
    assert str(stats).startswith("nothing to compact")


def test_run_written_again_after_compaction_is_returned_once_newest_copy(store):
    out, items = store
    compact(out)
    meta, res = make_run("x1", seed=99)  # same run id, another R (e.g. another GPU)
    meta = type(meta)(**{**meta.__dict__, "finished_at": meta.finished_at + pd.Timedelta("1h")})
    write_run(out, meta, res)
    loaded = load(out)
    assert sorted(loaded.runs.run_id) == sorted(m.run_id for m, _ in items)
    assert (loaded.runs.run_id == "x1").sum() == 1
    assert len(loaded.r_matrix) == sum(r.R.size for _, r in items)
    np.testing.assert_array_equal(loaded.r_matrix_of("x1"), res.R)  # the newer copy
    assert loaded.runs.set_index("run_id").loc["x1", "acc"] == pytest.approx(
        np.mean(res.R[-1]))
    assert finished_run_ids(out) == {m.run_id for m, _ in items}
    # x2 again, with an earlier finished_at (another machine's clock): in runs/ the row
    # that finished last wins, in r_matrix/ the file written last
    meta2, res2 = make_run("x2", seed=98)
    write_run(out, type(meta2)(**{**meta2.__dict__,
                                  "finished_at": meta2.finished_at - pd.Timedelta("1h")}), res2)
    loaded = load(out)
    assert loaded.runs.set_index("run_id").loc["x2", "seed"] == 2
    np.testing.assert_array_equal(loaded.r_matrix_of("x2"), res2.R)
    # the next compaction merges the new copies and drops the old ones, as load chose
    stats = compact(out)
    assert stats.copies_dropped == 2 * (res.R.size + 1) and stats.files_after == 4
    assert_same_load(loaded, load(out))


def test_crash_between_writing_and_removing_leaves_a_readable_store(store, monkeypatch):
    out, items = store
    before = load(out)

    def crash(fs, info):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(compact_module, "_remove_unchanged", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(out)
    assert len(data_files(out)) == 16 + 1  # first merged file in place, nothing removed
    assert_same_load(before, load(out))  # every run once
    got = analysis.run_metrics(out, engine="duckdb").set_index("run_id")
    for meta, res in items:
        if meta.run_id != "stop":
            assert got.loc[meta.run_id, "acc"] == pytest.approx(np.mean(res.R[-1]))
    monkeypatch.undo()
    stats = compact(out)  # merges the leftovers; the copies are dropped
    assert stats.files_after == 4 and stats.copies_dropped > 0
    assert_same_load(before, load(out))


def test_file_written_again_during_compaction_stays_and_wins(store, monkeypatch):
    out, _ = store
    write_atomic, raced = compact_module._write_atomic, []
    newer = make_run("x3", seed=42)

    def write_then_race(fs, path, table, mtime_ns=None):
        write_atomic(fs, path, table, mtime_ns)
        if "r_matrix/experiment=exp/compact-" in path and not raced:  # a writer redoes x3
            raced.append(path)
            write_run(out, *newer)

    monkeypatch.setattr(compact_module, "_write_atomic", write_then_race)
    compact(out, experiment="exp")
    monkeypatch.undo()
    assert raced and "r_matrix/experiment=exp/x3.parquet" in data_files(out)  # not removed
    np.testing.assert_array_equal(load(out).r_matrix_of("x3"), newer[1].R)


def test_large_partitions_split_at_run_boundaries_and_stay_put(tmp_path):
    out = tmp_path / "out"
    items = [make_run(f"r{i:02d}", seed=i) for i in range(12)]
    for item in items:
        write_run(out, *item)
    before = load(out)
    stats = compact(out, max_rows=50)  # 20 R rows per run: 240 rows -> 5 files of 2-3 runs
    r_files = [f for f in data_files(out) if f.startswith("r_matrix")]
    assert len(r_files) == 5 and stats.files_after == 5 + 1
    sizes = [len(pd.read_parquet(out / f, columns=["run_id"])) for f in r_files]
    assert sorted(sizes) == [40, 40, 40, 60, 60]  # whole runs, about max_rows each
    assert_same_load(before, load(out))
    snap = snapshot(out)
    assert compact(out, max_rows=50).files_written == 0 and snapshot(out) == snap
    for item in (make_run("r98", seed=98), make_run("r99", seed=99)):
        write_run(out, *item)
    stats = compact(out, max_rows=50)  # only the two new small files are merged
    assert stats.files_written == 2 and stats.files_removed == 2 + 3  # runs: 12 rows is small
    now = snapshot(out)
    assert all(now[f] == snap[f] for f in r_files)
    assert len(load(out).runs) == 14


def test_one_experiment_only(store):
    out, _ = store
    compact(out, experiment="other")
    files = data_files(out)
    assert sum("experiment=other" in f for f in files) == 2
    assert sum("experiment=exp" in f for f in files) == 12


def test_bad_input(tmp_path, store, capsys):
    out, _ = store
    with pytest.raises(ResultsError, match="does not exist"):
        compact(tmp_path / "nope")
    with pytest.raises(ConfigError, match="experiments there: exp, other"):
        compact(out, experiment="nope")
    with pytest.raises(ConfigError, match="max_rows"):
        compact(out, max_rows=0)
    (out / "runs" / "experiment=exp" / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match=r"junk\.parquet"):
        compact(out, experiment="exp")
    assert len(data_files(out)) == 17  # nothing of that experiment was merged
    assert main(["compact", str(tmp_path / "nope")]) == 2
    assert main(["compact", str(out), "--experiment", "nope"]) == 2
    assert main(["compact", str(out), "--max-rows", "0"]) == 2
    assert "max_rows" in capsys.readouterr().err


def test_cli(store, capsys):
    out, _ = store
    assert main(["compact", str(out), "--experiment", "exp"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("compacted 1 experiment: 12 -> 2 files")
    assert main(["compact", str(out)]) == 0
    assert "compacted 2 experiments: 6 -> 4 files" in capsys.readouterr().out
    assert main(["compact", str(out)]) == 0
    assert capsys.readouterr().out.startswith("nothing to compact: 4 files")


def test_readers_list_again_when_a_compaction_removes_their_files(store, monkeypatch):
    out, _ = store
    before = load(out)
    expected = {e: analysis.run_metrics(out, engine=e) for e in ("duckdb", "pandas")}
    fs, root = read_module._filesystem(out)
    stale = {d: read_module._data_files(fs, f"{root}/{d}") for d in ("r_matrix", "runs")}
    stale_paths = {d: analysis.parquet_files(out, d) for d in ("r_matrix", "runs")}
    compact(out)  # every listed file is gone now
    real, calls = read_module._data_files, []

    def listed_before_compaction(fs, base):
        calls.append(base)
        return stale.pop(base.rsplit("/", 1)[1], None) or real(fs, base)

    monkeypatch.setattr(read_module, "_data_files", listed_before_compaction)
    assert_same_load(before, load(out))
    assert len(calls) == 4  # each dataset listed, read in vain, listed again
    real_files = analysis.parquet_files
    for engine in ("duckdb", "pandas"):
        pending = dict(stale_paths)
        monkeypatch.setattr(analysis, "parquet_files", lambda output, dataset="r_matrix":
                            pending.pop(dataset, None) or real_files(output, dataset))
        got = analysis.run_metrics(out, engine=engine)
        assert not pending.get("r_matrix")  # the stale listing was used first
        pd.testing.assert_frame_equal(got, expected[engine], check_exact=False, atol=1e-12)


def test_a_file_removed_by_another_compaction_is_a_clear_error(store, monkeypatch):
    out, _ = store
    scan = compact_module._scan

    def other_compaction_first(fs, base, schema, info, rank):
        Path(info.path).unlink()  # as if another process had merged and removed it
        return scan(fs, base, schema, info, rank)

    monkeypatch.setattr(compact_module, "_scan", other_compaction_first)
    with pytest.raises(ResultsError, match="removed while compacting"):
        compact(out, experiment="other")
    assert not [f for f in data_files(out) if "compact-" in f]  # nothing written
