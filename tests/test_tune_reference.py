"""scripts/tune_reference.py selects on validation ACC only, with disjoint seeds and the
same budget for every strategy (its logic on a tiny stream, not the full selection)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from llray.config import load_config, parse_config
from llray.data import make_stream
from llray.errors import ConfigError
from llray.experiment import execute
from llray.metrics import acc
from llray.strategies import make_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tune_reference",
                                               ROOT / "scripts" / "tune_reference.py")
tune_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_reference)

JOB = {
    "experiment": "tiny",
    "stream": {"dataset": "digits", "kind": "split", "scenario": "class", "num_tasks": 2,
               "max_train_per_task": 120, "seed": 3},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.003},
    "strategies": ["naive", {"name": "replay", "ratio": 0.5, "buffer_size": 40}, "joint"],
    "seeds": [0, 1],
}
GRID = {"replay": [{"ratio": 0.0}, {"ratio": 0.9}]}


def test_picks_the_value_with_the_higher_validation_acc():
    results = tune_reference.tune(JOB, GRID, seeds=[7], workers=1)
    assert list(results) == ["replay"]  # naive and joint have no grid
    rows = results["replay"]
    assert [e["ratio"] for e, _ in rows] == [0.0, 0.9]
    assert all(e["buffer_size"] == 40 for e, _ in rows)  # the job's other fields are kept
    # each score is the final-row validation ACC of the run learned on the full stream
    stream = make_stream(parse_config(JOB).stream)
    expected = []
    for entry, _ in rows:
        spec = parse_config({**JOB, "strategies": [entry], "seeds": [7]}).runs()[0]
        expected.append(float(acc(execute(spec, stream).R_val)))
    assert [a for _, a in rows] == expected
    assert expected[0] != expected[1]
    pick = tune_reference.best([a for _, a in rows])
    assert expected[pick] == max(expected)
    # the job's entry (ratio 0.5) is reported as differing from the chosen point
    bad = tune_reference.mismatches(JOB, results)
    assert len(bad) == 1 and "replay has ratio=0.5" in bad[0]


def test_runs_never_see_the_test_split():
    stream = make_stream(parse_config(JOB).stream)
    stripped = tune_reference.without_test(stream)
    for full, task in zip(stream.tasks, stripped.tasks):
        assert len(full.y_test) > 0 and len(task.y_test) == 0 and len(task.x_test) == 0
        assert torch.equal(task.x_val, full.x_val) and torch.equal(task.y_train, full.y_train)
    tune_reference.tune(JOB, GRID, seeds=[7], workers=1)
    assert tune_reference._STREAMS  # the streams the runs were learned on
    for cached in tune_reference._STREAMS.values():
        assert all(len(t.y_test) == 0 and len(t.y_val) > 0 for t in cached.tasks)


def test_tuning_seeds_must_be_disjoint_from_reporting_seeds():
    with pytest.raises(ConfigError, match=r"tuning seeds \[1\] are reporting seeds"):
        tune_reference.tune(JOB, GRID, seeds=[1], workers=1)


def test_best_skips_diverged_runs_and_breaks_ties_to_the_earlier_point():
    assert tune_reference.best([0.3, math.nan, 0.5, 0.5]) == 2
    assert tune_reference.best([math.nan, 0.1]) == 1


def test_every_grid_has_the_same_budget_and_real_fields():
    sizes = {len(points) for points in tune_reference.GRIDS.values()}
    assert sizes == {4}
    for name, points in tune_reference.GRIDS.items():
        for point in points:
            make_config(name, dict(point))  # raises on an unknown field or a bad value
    assert not set(tune_reference.TUNING_SEEDS) & {0, 1, 2, 3, 4}


def test_reference_jobs_report_on_five_seeds_and_list_every_tuned_strategy():
    for path in sorted(ROOT.glob(tune_reference.JOBS)):
        cfg = load_config(path)
        assert cfg.seeds == (0, 1, 2, 3, 4), path.name
        names = {s.name for s in cfg.strategies}
        assert set(tune_reference.GRIDS) <= names, path.name


def test_bad_input_exits_2_with_one_line_before_any_run(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert tune_reference.main([str(missing), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope.yaml" in err
    # seed 0 is a reporting seed of every reference job: refused before learning anything
    assert tune_reference.main(["--seeds", "0", "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--seeds" in err and "reporting seeds" in err
    no_val = tmp_path / "no_val.yaml"
    no_val.write_text("stream: {dataset: digits, kind: split, val_fraction: 0}\n"
                      "strategies: [naive]\nseeds: [0]\n")
    assert tune_reference.main([str(no_val), "--workers", "1"]) == 2
    assert "stream.val_fraction" in capsys.readouterr().err
