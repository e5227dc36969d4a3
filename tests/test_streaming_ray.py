"""Streamed shards on Ray: learner actors, a small object store, results in Parquet."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from llray.data import make_stream
from llray.data.shards import discover, write_shards
from llray.data.streaming import ShardReader
from llray.distributed.actor import LearnerActor
from llray.distributed.streaming import put_stream
from llray.distributed.sweep import run_sweep
from llray.experiment import execute
from llray.results import load
from llray.results.read import r_matrix_of
from test_streaming import config, synthetic

STORE = 80 * 2**20  # the object store: far below the large stream's decoded size
BIG = (3, 64, 64)


@pytest.fixture(scope="module")
def small_store():
    """A one-node Ray of its own with 2 CPUs and an 80 MiB object store."""
    ray.shutdown()  # a session from the ray_local fixture, if any
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": STORE})
    c.connect()
    yield c
    ray.shutdown()
    c.shutdown()


def _big_stream(root, small=4000, big=16000):
    """Task 0 small (4 files: it warms every library and reader lane up), task 1 of ``big``
    64x64x3 uint8 images (~188 MiB decoded), compressible like photos."""
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, (4, *BIG), dtype=np.uint8)
    data = {}
    for k, n in enumerate((small, big)):
        y = np.repeat([2 * k, 2 * k + 1], n // 2)
        x = protos[y] + rng.integers(0, 4, (len(y), *BIG), dtype=np.uint8)
        data[k] = {"train": (x, y), "test": (x[:200], y[:200])}
    write_shards(str(root), data, rows_per_file=1000)
    return data


def _rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def test_streamed_learner_stays_under_a_cap_below_the_stream_size(small_store, tmp_path):
    """Peak RSS while the big task streams grows by less than half its decoded size (the
    object store could not hold it either); the small first task warmed the learner's
    libraries and reader lanes up, so the growth measured is what streaming the big task
    costs (about 0 to 60 MiB here, whatever the task's size)."""
    _big_stream(tmp_path)
    cfg = config(tmp_path, tasks=2, input_shape=list(BIG), shuffle_buffer=512,
                 train={"epochs": 1, "batch_size": 64, "eval_batch_size": 256})
    stream = make_stream(cfg.stream)
    lay = stream.streamed.layout
    big = lay.rows(1, "train") * lay.row_bytes
    assert lay.decoded_bytes > STORE and big > 180 * 2**20
    actor = LearnerActor.options(num_cpus=1).remote(put_stream(stream), None)
    _, info = ray.get(actor.load.remote(cfg.runs()[0], False))
    ray.get(actor.learn_next.remote())  # the small task
    before = _rss(info["pid"])["VmHWM"]
    step = ray.get(actor.learn_next.remote())  # the big one, streamed
    peak = _rss(info["pid"])["VmHWM"]
    result, _, _ = ray.get(actor.result.remote())
    ray.kill(actor)
    print(f"task 1: {big / 2**20:.0f} MiB decoded; learner peak RSS {before / 2**20:.0f} MiB "
          f"before it, {peak / 2**20:.0f} MiB after")
    assert step[0] == 2 and result.status == "ok" and result.samples_trained == 4000 + 16000
    assert result.R[-1, 1] > 0.9  # it learnt the streamed task
    assert peak - before < big // 2, f"peak RSS grew {(peak - before) / 2**20:.0f} MiB"


def test_streamed_sweep_writes_the_runs_in_process_results_to_parquet(small_store, tmp_path):
    synthetic(tmp_path / "shards")
    cfg = config(tmp_path / "shards", strategy="replay", scenario="class")
    specs = cfg.runs()
    finished = run_sweep(specs, make_stream(cfg.stream), str(tmp_path / "out"))
    assert len(finished) == 1
    res = load(tmp_path / "out")
    assert list(res.runs["status"]) == ["ok"] and len(res.r_matrix) == 2 * 4 * 3  # test + val
    for spec in specs:
        np.testing.assert_array_equal(r_matrix_of(res, spec.run_id), execute(spec).R)


def test_ray_data_reader_reads_what_the_arrow_reader_reads(small_store, tmp_path):
    """A Ray Dataset over the same files (order preserved) gives the same shuffled epoch."""
    synthetic(tmp_path, per_file=50)
    lay = discover(str(tmp_path), (3, 8, 8))
    arrow, rd = ShardReader(lay, 100), ShardReader(lay, 100, reader="ray_data")
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for a, b in zip(arrow.train_batches((0, 2), ga, 32), rd.train_batches((0, 2), gb, 32),
                    strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
