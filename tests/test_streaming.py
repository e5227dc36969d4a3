"""Streams read batch by batch from Parquet shards (llray.data.shards, llray.data.streaming)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from llray.cli import main
from llray.config import parse_config
from llray.data import StreamConfig, make_stream
from llray.data.shards import discover, load_split, write_shards
from llray.data.streaming import STREAMING_STRATEGIES, ShardReader, choose_storage
from llray.errors import ConfigError
from llray.experiment import build_run, execute

SHAPE = (3, 8, 8)


def synthetic(root, tasks=3, train=240, test=80, val=40, noise=90.0, seed=0, per_file=100,
              shape=SHAPE, classes_per_task=2, spread=128):
    """Class prototypes (128 +- ``spread``) plus Gaussian noise as uint8 pixels, as shards."""
    rng = np.random.default_rng(seed)
    protos = 128 + rng.integers(-spread, spread, (tasks * classes_per_task, *shape))

    def part(n, k):
        y = rng.choice(np.arange(k * classes_per_task, (k + 1) * classes_per_task), n)
        x = np.clip(protos[y] + rng.normal(0, noise, (n, *shape)), 0, 255).astype(np.uint8)
        return x, y

    data = {k: {"train": part(train, k), "test": part(test, k), **({"val": part(val, k)}
                                                                     if val else {})}
            for k in range(tasks)}
    write_shards(str(root), data, rows_per_file=per_file)
    return data


def config(root, storage="streaming", strategy="naive", seed=0, scenario="task", tasks=3,
           train=None, **stream):
    return parse_config({
        "experiment": "s", "strategies": [strategy], "seeds": [seed],
        "stream": {"dataset": "shards", "kind": "tasks", "scenario": scenario,
                   "num_tasks": tasks, "path": str(root), "input_shape": list(SHAPE),
                   "storage": storage, **stream},
        "model": {"hidden": [32]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, **(train or {})}})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return root, synthetic(root)


# -- layout and decoding ------------------------------------------------------------------
def test_layout_counts_rows_classes_and_decodes_the_files_in_path_order(shards):
    root, data = shards
    lay = discover(str(root), SHAPE)
    assert lay.num_tasks == 3 and lay.dtype == "uint8" and lay.has_val
    assert [lay.rows(t, "train") for t in range(3)] == [240] * 3
    assert len(lay.split(0, "train").files) == 3  # 100 + 100 + 40 rows
    assert lay.classes(2) == (4, 5) and lay.num_classes == 6
    assert lay.decoded_bytes == 3 * (240 + 80 + 40) * 192
    x, y = load_split(lay, 1, "test")
    np.testing.assert_array_equal(x, data[1]["test"][0])
    np.testing.assert_array_equal(y, data[1]["test"][1])


def test_float_list_features_decode_as_float32(tmp_path):
    x = np.random.default_rng(0).random((5, 2, 3)).astype(np.float32)
    write_shards(str(tmp_path), {"a": {"train": (x, np.arange(5)), "test": (x, np.arange(5))},
                                 "b": {"train": (x, np.arange(5)), "test": (x, np.arange(5))}})
    lay = discover(str(tmp_path), (2, 3))
    assert lay.dtype == "float32" and lay.task_values == ("a", "b")
    np.testing.assert_array_equal(load_split(lay, 0, "train")[0], x)


def test_auto_storage_streams_only_past_the_stated_size(tmp_path):
    assert choose_storage("auto", 4 * 2**30) == "memory"
    assert choose_storage("auto", 4 * 2**30 + 1) == "streaming"
    assert choose_storage("memory", 10 * 2**40) == "memory"
    synthetic(tmp_path, train=20, test=10, val=0)
    cfg = StreamConfig(dataset="shards", kind="tasks", scenario="task", num_tasks=3,
                       path=str(tmp_path), input_shape=SHAPE)
    assert cfg.storage == "auto" and make_stream(cfg).streamed is None  # small: in memory
    assert len(make_stream(cfg).tasks[0].y_train) == 20


# -- the shuffle -----------------------------------------------------------------------------
def test_window_shuffle_is_a_seeded_permutation_of_each_epoch(shards):
    root, data = shards
    lay = discover(str(root), SHAPE)
    reader = ShardReader(lay, shuffle_buffer=70)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return [b for b in reader.train_batches((0, 2), g, 16)]

    a, b, c = epoch(1), epoch(1), epoch(2)
    sizes = [len(y) for _, y, _ in a]
    assert sizes == [16] * 30 and sum(sizes) == 480  # 480 rows, full batches carried over
    ya, ta = torch.cat([y for _, y, _ in a]), torch.cat([t for _, _, t in a])
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))  # same seed, same epoch
    assert not torch.equal(ya, torch.cat([y for _, y, _ in c]))  # another seed, another order
    expect = np.concatenate([data[0]["train"][1], data[2]["train"][1]])
    assert sorted(ya.tolist()) == sorted(expect.tolist())  # every row exactly once
    assert set(ta.tolist()) == {0, 2} and torch.equal(ya // 2, ta)  # rows keep their task
    assert a[0][0].dtype == torch.uint8  # pixels stay uint8 until the model converts them


def test_interleave_mixes_files_into_each_window(shards):
    """One file at a time: a window of 40 rows (the smallest file) is one file's, so one
    task's; all six files of tasks 0 and 2 at once: 7 rows from each, so both tasks."""
    root, _ = shards
    lay = discover(str(root), SHAPE)

    def first_window_tasks(interleave):
        g = torch.Generator().manual_seed(0)
        batches = ShardReader(lay, 40, interleave=interleave).train_batches((0, 2), g, 40)
        return set(next(iter(batches))[2].tolist())

    assert first_window_tasks(1) in ({0}, {2})
    assert first_window_tasks(6) == {0, 2}


def test_ordered_batches_keep_stored_order_and_never_mix_tasks(shards):
    root, data = shards
    reader = ShardReader(discover(str(root), SHAPE))
    got = list(reader.ordered_batches((2, 0), "test", 32))
    assert [(t, len(y)) for _, y, t in got] == [(2, 32), (2, 32), (2, 16), (0, 32), (0, 32),
                                                  (0, 16)]
    np.testing.assert_array_equal(torch.cat([x for x, _, t in got if t == 2]).numpy(),
                                  data[2]["test"][0])


# -- runs --------------------------------------------------------------------------------------
def test_streamed_run_is_deterministic_per_seed(shards):
    root, _ = shards
    spec = config(root, seed=3).runs()[0]
    a, b = execute(spec), execute(spec)
    np.testing.assert_array_equal(a.R, b.R)
    np.testing.assert_array_equal(a.R_val, b.R_val)
    assert a.samples_trained == 3 * 240 * 2 and a.n_test.tolist() == [80] * 3
    other = execute(config(root, seed=4).runs()[0])
    assert not np.array_equal(a.R, other.R)


def test_streamed_run_resumes_exactly_from_a_checkpoint(shards):
    root, _ = shards
    spec = config(root, strategy="replay", seed=1, scenario="class").runs()[0]
    full = execute(spec)
    run = build_run(spec)
    run.start()
    run.learn_next()
    state = run.state_dict()
    resumed = build_run(spec)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.learn_next()
    np.testing.assert_array_equal(resumed.R, full.R)


def test_streaming_learns_as_well_as_in_memory_over_five_seeds(tmp_path):
    synthetic(tmp_path, train=300, noise=120.0, spread=60)
    acc = {s: [execute(config(tmp_path, storage=s, seed=k).runs()[0]).R[-1].mean()
               for k in range(5)] for s in ("memory", "streaming")}
    assert 0.6 < np.mean(acc["memory"]) < 0.99  # learnt, and not trivially
    assert abs(np.mean(acc["streaming"]) - np.mean(acc["memory"])) <= 0.02


def test_streamed_replay_fills_the_same_reservoir_as_in_memory(shards):
    root, _ = shards
    bufs = {}
    for storage in ("memory", "streaming"):
        run = build_run(config(root, storage=storage, strategy="replay",
                               scenario="class").runs()[0])
        run.start()
        run.learn_next()
        run.learn_next()
        bufs[storage] = run.strategy.buffer
    m, s = bufs["memory"], bufs["streaming"]
    assert s.seen == m.seen == 480 and s.x.dtype == torch.uint8
    assert torch.equal(m.x, s.x) and torch.equal(m.y, s.y) and torch.equal(m.t, s.t)


def test_streamed_joint_trains_on_the_union_of_seen_tasks(shards):
    root, _ = shards
    joint = execute(config(root, strategy="joint", scenario="class").runs()[0])
    naive = execute(config(root, strategy="naive", scenario="class").runs()[0])
    assert joint.samples_trained == (240 + 480 + 720) * 2
    assert joint.R[-1, 0] > 0.5 > naive.R[-1, 0]  # the union keeps task 1; naive forgets it


@pytest.mark.parametrize("strategy", STREAMING_STRATEGIES)
def test_every_streaming_strategy_runs_streamed_and_deterministic(shards, strategy):
    root, _ = shards
    spec = config(root, strategy=strategy, seed=2, train={"epochs": 1}).runs()[0]
    a, b = execute(spec), execute(spec)
    assert a.status == "ok" and np.isfinite(a.R).all() and a.samples_trained > 0
    np.testing.assert_array_equal(a.R, b.R)


# -- bad input ---------------------------------------------------------------------------------
def _cli(tmp_path, capsys, stream, strategy="naive", resources=None):
    cfg = {"experiment": "t", "strategies": [strategy],
           "stream": {"dataset": "shards", "kind": "tasks", "scenario": "task", "num_tasks": 3,
                      "input_shape": list(SHAPE), **stream}, "model": {"hidden": [8]}}
    if resources:
        cfg["resources"] = resources
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code = main(["run", str(path), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists()
    return code, err


def _break_file(root):
    f = sorted((root / "task=1" / "split=train").iterdir())[0]
    f.write_bytes(b"not parquet at all")
    return f


def _drop_column(root):
    f = sorted((root / "task=0" / "split=test").iterdir())[0]
    pq.write_table(pq.read_table(f).drop(["label"]), f)
    return f


def _float_labels(root):
    f = sorted((root / "task=2" / "split=train").iterdir())[0]
    t = pq.read_table(f)
    pq.write_table(t.set_column(1, "label", pa.array(np.zeros(len(t)), pa.float64())), f)
    return f


def _no_test(root):
    d = root / "task=1" / "split=test"
    for f in d.iterdir():
        f.unlink()
    return root


@pytest.mark.parametrize("breakage,field", [
    (_break_file, "stream.path"), (_drop_column, "stream.label_column"),
    (_float_labels, "stream.label_column"), (_no_test, "stream.path")])
def test_bad_shards_exit_2_naming_the_file(tmp_path, capsys, breakage, field):
    root = tmp_path / "shards"
    synthetic(root, train=20, test=10, val=0, per_file=10)
    named = breakage(root)
    code, err = _cli(tmp_path, capsys, {"path": str(root), "storage": "streaming"})
    assert code == 2 and len(err) == 1 and field in err[0] and str(named) in err[0], err


@pytest.mark.parametrize("stream,strategy,resources,field", [
    ({"path": "MISSING"}, "naive", None, "stream.path"),
    ({"storage": "disk"}, "naive", None, "stream.storage"),
    ({"shuffle_buffer": 0}, "naive", None, "stream.shuffle_buffer"),
    ({"reader": "spark"}, "naive", None, "stream.reader"),
    ({"interleave": 0}, "naive", None, "stream.interleave"),
    ({"input_shape": [3, 8, 9]}, "naive", None, "stream.input_shape"),
    ({"num_tasks": 4}, "naive", None, "stream.num_tasks"),
    ({"val_fraction": 0.2}, "naive", None, "stream.val_fraction"),
    ({"storage": "streaming"}, "ewc", None, "stream.storage"),
    ({"storage": "streaming"}, "naive", {"pack": 2}, "stream.storage"),
])
def test_bad_streaming_configs_exit_2_naming_the_field(tmp_path, capsys, stream, strategy,
                                                        resources, field):
    root = tmp_path / "shards"
    synthetic(root, train=20, test=10, val=0, per_file=10)
    path = str(tmp_path / "absent") if stream.get("path") == "MISSING" else str(root)
    code, err = _cli(tmp_path, capsys, {"path": path, **{k: v for k, v in stream.items()
                                                         if k != "path"}}, strategy, resources)
    assert code == 2 and len(err) == 1 and field in err[0], err
    if stream.get("path") == "MISSING":
        assert path in err[0]


def test_streaming_needs_shards():
    with pytest.raises(ConfigError, match="needs dataset 'shards'") as e:
        StreamConfig(dataset="digits", storage="streaming")
    assert e.value.field == "storage"
    for name, value in (("interleave", 2), ("shuffle_buffer", 10), ("reader", "ray_data")):
        with pytest.raises(ConfigError, match="only used with dataset 'shards'") as e:
            StreamConfig(dataset="digits", **{name: value})
        assert e.value.field == name


def test_taskonomy_curriculum_and_tune_refuse_streamed_streams_naming_the_field(
        shards, tmp_path, capsys):
    root, _ = shards
    stream = {"dataset": "shards", "kind": "tasks", "scenario": "task", "num_tasks": 3,
              "path": str(root), "input_shape": list(SHAPE), "storage": "streaming"}
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(yaml.safe_dump({"experiment": "t", "strategies": ["naive"],
                                          "stream": stream, "model": {"hidden": [8]}}))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "study": "t", "stream": stream, "model": {"hidden": [8]}, "strategy": "ewc",
        "search": {"ewc.lambda_": {"loguniform": [0.1, 10.0]}}, "num_trials": 2}))
    for command, path in [("taskonomy", experiment), ("curriculum", experiment),
                          ("tune", study)]:
        out = tmp_path / f"out-{command}"
        code = main([command, str(path), "--output", str(out), "--num-cpus", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (command, err)
        assert err[-1].startswith(f"llray: error: stream.storage: llray {command} "), err
        assert not out.exists()
