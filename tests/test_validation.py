"""The validation protocol: each task's training data is split into train and validation,
the learner fills a validation R beside the test R, the store keeps both (split column),
readers show the test split by default, and searches select on validation."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import roundtrip
from llray import analysis, metrics
from llray.data import StreamConfig, make_stream
from llray.errors import ConfigError
from llray.learner import LifelongRun, RunResult, run_stream
from llray.models import ModelConfig, build_model
from llray.results import RunMeta, load_r_matrix, r_matrix_of, write_run
from llray.strategies import TrainConfig, make_strategy

torch.set_num_threads(1)


def _rows(x: torch.Tensor) -> list[tuple]:
    return sorted(map(tuple, x.flatten(1).tolist()))


# -- data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["split", "permuted"])
def test_val_is_carved_from_training_data_stratified(kind):
    whole = make_stream(StreamConfig(kind=kind, num_tasks=5 if kind == "split" else 2,
                                     val_fraction=0.0))
    s = make_stream(StreamConfig(kind=kind, num_tasks=5 if kind == "split" else 2))
    assert not whole.has_val and s.has_val
    for a, t in zip(whole.tasks, s.tasks):
        assert len(a.y_val) == 0
        # train + val is the whole training set, row for row; test is untouched
        assert _rows(torch.cat([t.x_train, t.x_val])) == _rows(a.x_train)
        assert torch.equal(t.x_test, a.x_test) and torch.equal(t.y_test, a.y_test)
        assert not set(_rows(t.x_val)) & set(_rows(t.x_train))
        for c in t.classes:  # stratified: ~10% of every label
            n = int((a.y_train == c).sum())
            assert int((t.y_val == c).sum()) == round(0.1 * n)


def test_val_split_is_seeded_by_the_stream():
    a = make_stream(StreamConfig(kind="split", num_tasks=5, seed=0))
    b = make_stream(StreamConfig(kind="split", num_tasks=5, seed=0))
    c = make_stream(StreamConfig(kind="split", num_tasks=5, seed=1))
    assert torch.equal(a.tasks[0].x_val, b.tasks[0].x_val)
    assert not torch.equal(a.tasks[0].x_val, c.tasks[0].x_val)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_val_fraction_names_the_field(bad):
    with pytest.raises(ConfigError, match="val_fraction"):
        StreamConfig(val_fraction=bad)


# -- learner -------------------------------------------------------------------------------
def _digits(**kw):
    return make_stream(StreamConfig(kind="split", num_tasks=5, **kw))


def _model(s, seed=0):
    return build_model(ModelConfig(hidden=(32,)), s.input_shape, s.num_classes, seed)


def test_learner_fills_a_validation_r_from_the_val_split():
    s = _digits()
    res = run_stream(s, _model(s), make_strategy("naive"), TrainConfig(), seed=0)
    assert res.R_val is not None and res.R_val.shape == res.R.shape
    assert np.isfinite(res.R_val).all()
    assert list(res.n_val) == [len(t.y_val) for t in s.tasks]
    assert not np.array_equal(res.R_val, res.R)
    # the last row, recomputed by hand on the validation inputs
    run = LifelongRun(s, _model(s), make_strategy("naive"), TrainConfig(), seed=0)
    run.start()
    while not run.done:
        run.learn_next()
    with torch.no_grad():
        for j, t in enumerate(s.tasks):
            acc = (run.model(t.x_val).argmax(1) == t.y_val).double().mean().item()
            assert res.R_val[-1, j] == pytest.approx(acc, abs=1e-12)
    assert np.array_equal(run.R_val, res.R_val)


def test_no_validation_split_means_no_validation_r():
    s = _digits(val_fraction=0.0)
    res = run_stream(s, _model(s), make_strategy("naive"), TrainConfig(), seed=0)
    assert res.R_val is None and res.n_val is None


def test_checkpoint_keeps_the_validation_r():
    s = _digits()
    full = run_stream(s, _model(s), make_strategy("naive"), TrainConfig(), seed=2)
    first = LifelongRun(s, _model(s), make_strategy("naive"), TrainConfig(), seed=2)
    first.start()
    first.learn_next()
    resumed = LifelongRun(s, _model(s, 9), make_strategy("naive"), TrainConfig(), seed=2)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    while not resumed.done:
        resumed.learn_next()
    np.testing.assert_array_equal(resumed.result().R_val, full.R_val)


# -- store and readers ---------------------------------------------------------------------
def _write(tmp_path, run_id, R, R_val, order=(0, 1, 2)):
    T = len(order)
    res = RunResult(R, order, "ok", np.full(T, 50), 0.0, 0.0, 0,
                    R_val=R_val, n_val=None if R_val is None else np.full(T, 5))
    write_run(tmp_path, RunMeta(run_id, "exp", "naive", "d", "class", 0, order), res)


@pytest.mark.parametrize("engine", analysis.ENGINES)
def test_store_keeps_both_splits_readers_default_to_test(tmp_path, engine):
    rng = np.random.default_rng(0)
    R, R_val = rng.random((4, 3)), rng.random((4, 3))
    _write(tmp_path, "a", R, R_val)
    df = load_r_matrix(tmp_path)
    assert sorted(df["split"].value_counts().items()) == [("test", 12), ("val", 12)]
    assert (df.loc[df["split"] == "val", "n_test"] == 5).all()  # validation sample counts
    np.testing.assert_array_equal(r_matrix_of(df, "a"), R)
    np.testing.assert_array_equal(r_matrix_of(df, "a", "val"), R_val)
    test = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
    val = analysis.run_metrics(tmp_path, engine=engine, split="val").set_index("run_id")
    for m in analysis.METRICS:
        assert test.loc["a", m] == pytest.approx(float(metrics.summary(R)[m]), abs=1e-12)
        assert val.loc["a", m] == pytest.approx(float(metrics.summary(R_val)[m]), abs=1e-12)
    mean = analysis.mean_r(tmp_path, by=["strategy"], engine=engine)
    last = mean[(mean.step == 3)].sort_values("eval_pos")["accuracy"].to_numpy()
    np.testing.assert_allclose(last, R[3])
    with pytest.raises(ConfigError, match="split"):
        analysis.run_metrics(tmp_path, engine=engine, split="train")


@pytest.mark.parametrize("engine", analysis.ENGINES)
def test_older_files_without_split_read_as_test(tmp_path, engine):
    rng = np.random.default_rng(1)
    R_old, R_new, R_val = rng.random((4, 3)), rng.random((4, 3)), rng.random((4, 3))
    _write(tmp_path, "old", R_old, None)
    path = tmp_path / "r_matrix" / "experiment=exp" / "old.parquet"
    t = pq.read_table(path)
    pq.write_table(t.drop_columns(["split"]), path)  # as written before the column existed
    _write(tmp_path, "zz-new", R_new, R_val)  # a newer file in the same store
    df = analysis.run_metrics(tmp_path, engine=engine).set_index("run_id")
    assert df.loc["old", "acc"] == pytest.approx(metrics.acc(R_old))
    assert df.loc["zz-new", "acc"] == pytest.approx(metrics.acc(R_new))
    val = analysis.run_metrics(tmp_path, engine=engine, split="val").set_index("run_id")
    assert list(val.index) == ["zz-new"]
    assert val.loc["zz-new", "acc"] == pytest.approx(metrics.acc(R_val))


def test_connect_has_test_and_validation_metric_views(tmp_path):
    rng = np.random.default_rng(2)
    R, R_val = rng.random((4, 3)), rng.random((4, 3))
    _write(tmp_path, "a", R, R_val)
    con = analysis.connect(tmp_path)
    acc = con.sql("SELECT acc FROM run_metrics").fetchall()[0][0]
    acc_val = con.sql("SELECT acc FROM run_metrics_val").fetchall()[0][0]
    assert acc == pytest.approx(metrics.acc(R)) and acc_val == pytest.approx(metrics.acc(R_val))


# -- searches select on validation ---------------------------------------------------------
def test_tuning_objectives_are_validation_metrics(tmp_path):
    from llray.tuning.spec import parse_spec
    from llray.tuning.trial import Trial, result_from_report

    spec = parse_spec({"strategy": "naive", "stream": {"kind": "split", "num_tasks": 5},
                       "model": {"hidden": [16]}, "objectives": ["acc", "bwt"],
                       "search": {"train.lr": {"uniform": [0.01, 0.1]}}})
    t = Trial(spec, {"train.lr": 0.05})
    while not t.done:
        m = t.learn_next()
    R, R_val = t.run.R, t.run.R_val
    assert m["acc"] == pytest.approx(metrics.acc(R_val))
    assert abs(metrics.acc(R_val) - metrics.acc(R)) > 1e-6  # selected on val, not test
    assert m["bwt"] == pytest.approx(metrics.bwt(R_val))
    back = result_from_report(t.report())
    np.testing.assert_array_equal(back.R, R)
    np.testing.assert_array_equal(back.R_val, R_val)

    no_val = parse_spec({"strategy": "naive", "model": {"hidden": [16]},
                         "stream": {"kind": "split", "num_tasks": 5, "val_fraction": 0.0},
                         "search": {"train.lr": {"uniform": [0.01, 0.1]}}})
    with pytest.raises(ConfigError, match="val_fraction"):
        Trial(no_val, {"train.lr": 0.05})


def test_stream_in_the_object_store_keeps_its_validation_split(ray_local):
    from llray.distributed.streaming import get_stream, put_stream

    s = _digits()
    back = get_stream(put_stream(s))
    for a, b in zip(s.tasks, back.tasks):
        assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
