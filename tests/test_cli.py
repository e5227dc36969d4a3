"""`llray run` end to end on an embedded Ray, `llray report` from Parquet, bad input."""

import json

import numpy as np
import pytest
import yaml

from llray import metrics
from llray.cli import main
from llray.config import load_config
from llray.experiment import execute
from llray.results import load, r_matrix_of

CONFIG = {
    "experiment": "cli",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3, "seed": 2},
    "model": {"hidden": [16]},
    "train": {"epochs": 1, "optimizer": "adam", "lr": 0.01},
    "strategies": ["naive", "joint"],
    "seeds": [0, 1],
    "orders": [[2, 0, 1]],
}


def write_config(tmp_path, **changes):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def test_run_writes_parquet_equal_to_in_process_runs_and_report_reproduces_it(
    tmp_path, ray_local, capsys
):
    cfg_path = write_config(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(cfg_path), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "joint" in printed

    # per-run files were merged once the sweep was done
    assert [f.name[:8] for f in (out / "r_matrix" / "experiment=cli").glob("*.parquet")] == [
        "compact-"
    ]
    res = load(out)
    specs = load_config(cfg_path).runs()
    assert sorted(res.runs["run_id"]) == sorted(s.run_id for s in specs)
    assert len(res.r_matrix) == len(specs) * 4 * 3 * 2  # (T+1) * T entries per run and split
    for spec in specs:
        # the actor's R (test and validation), read back from Parquet, is exactly the
        # in-process R
        local = execute(spec)
        np.testing.assert_array_equal(r_matrix_of(res, spec.run_id), local.R)
        np.testing.assert_array_equal(r_matrix_of(res, spec.run_id, "val"), local.R_val)

    assert main(["report", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = table if isinstance(table, list) else table["rows"]
    for strategy in ("naive", "joint"):
        row = next(r for r in rows if r["strategy"] == strategy)
        ids = res.runs.loc[res.runs["strategy"] == strategy, "run_id"]
        accs = [metrics.acc(r_matrix_of(res, i)) for i in ids]
        assert row["acc_mean"] == pytest.approx(np.mean(accs), abs=1e-12)
        bwts = [metrics.bwt(r_matrix_of(res, i)) for i in ids]
        assert row["bwt_mean"] == pytest.approx(np.mean(bwts), abs=1e-12)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"strategies": ["nope"]}, "unknown strategy 'nope'"),
        ({"strategies": [{"name": "replay", "ratio": 2}]}, "replay.ratio"),
        ({"stream": {"num_tasks": 1}}, "stream.num_tasks"),
        ({"orders": [[0, 0, 1]]}, "not a permutation"),
        ({"strategies": ["progressive"]}, "does not support the 'domain' scenario"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, changes, message, capsys):
    out = tmp_path / "out"
    code = main(["run", str(write_config(tmp_path, **changes)), "--output", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["run", str(write_config(tmp_path)), "--output", str(blocker / "out")])
    assert code == 2
    assert "output" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_report_of_an_empty_directory_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err
