"""The distributed layer on a real 3-node Ray cluster (ray.cluster_utils.Cluster).

One cluster per module: a CPU head node and two worker nodes with one fake GPU each.
Runs are tiny (permuted digits, 3 tasks, MLP 64-32-10, 1 epoch). Every R read back
from the Parquet store is compared with the same run executed in this process without
Ray (``llray.experiment.execute``): a run is a pure function of its config and seed, so
a restart from a checkpoint must give exactly the same R.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml
from ray.cluster_utils import Cluster

from llray.cli import main as cli_main
from llray.config import parse_config
from llray.data import make_stream
from llray.distributed.checkpoint import CheckpointStore
from llray.distributed.streaming import get_stream, put_stream
from llray.distributed.sweep import SweepOptions, run_sweep
from llray.experiment import execute
from llray.results import load

T = 3
CONFIG = {
    "experiment": "dist",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": T},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "strategies": ["naive"],
    "seeds": [0, 1, 2, 3],
    "resources": {"num_cpus": 1},
}


def config(**over):
    return parse_config({**CONFIG, **over})


@pytest.fixture(scope="module")
def cluster():
    """Head (2 CPUs, no GPU) + two nodes with 2 CPUs and 1 fake GPU each."""
    ray.shutdown()  # a session from the ray_local fixture, if any
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_nodes = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    c.connect()
    yield c, gpu_nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def stream():
    return make_stream(config().stream)


@pytest.fixture(scope="module")
def reference(stream):
    """R of every seed's run, trained in this process without Ray or failures."""
    return {s.seed: execute(s, stream).R for s in config().runs()}


def raw_rows(output, dataset: str) -> pd.DataFrame:
    """Every row of every Parquet file under ``output/dataset`` (load() would dedupe)."""
    files = sorted(Path(output, dataset).rglob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def r_by_run(output) -> dict[str, np.ndarray]:
    """Test R of every run rebuilt from the files, asserting each R entry (of each split)
    was written once."""
    rows = raw_rows(output, "r_matrix")
    assert not rows.duplicated(["run_id", "split", "step", "eval_pos"]).any(), "duplicated R rows"
    rows = rows[rows["split"] == "test"]
    runs = raw_rows(output, "runs")
    assert runs["run_id"].is_unique, "a run was written twice"
    assert set(runs["run_id"]) == set(rows["run_id"])
    out = {}
    for run_id, g in rows.groupby("run_id"):
        assert len(g) == (T + 1) * T, f"run {run_id} has {len(g)} R entries"
        R = np.full((T + 1, T), np.nan)
        R[g["step"].to_numpy(), g["eval_pos"].to_numpy() - 1] = g["accuracy"].to_numpy()
        out[run_id] = R
    return out


def kill_and_wait(actor) -> None:
    """``ray.kill`` is asynchronous: wait until the actor is gone before the driver goes on."""
    ray.kill(actor)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(200):
            ray.get(actor.info.remote())
            time.sleep(0.05)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals alive at one instant."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_half_gpu_runs_go_only_to_gpu_nodes_two_per_node(cluster, stream, reference):
    c, gpu_nodes = cluster
    cfg = config(seeds=[0, 1, 2, 3, 4, 5], resources={"num_cpus": 0.5, "num_gpus": 0.5})
    finished = run_sweep(cfg.runs(), stream, None, SweepOptions(max_in_flight=6))
    assert len(finished) == 6
    gpu_ids = {n.node_id for n in gpu_nodes}
    per_node: dict[str, list[tuple[float, float]]] = {}
    for f in finished:
        [a] = f.attempts
        assert a.node_id in gpu_ids, "a 0.5-GPU run was placed on the CPU-only head"
        # fake GPUs: Ray gave the actor a GPU id, but torch has no CUDA -> CPU, untouched
        assert a.device == "cpu" and a.info["cuda_initialized"] is False
        per_node.setdefault(a.node_id, []).append((a.info["loaded_at"], a.ended))
    # CPUs alone would allow 4 such actors per node; the GPU halves allow 2
    assert all(max_overlap(iv) <= 2 for iv in per_node.values()), per_node
    assert sum(len(iv) for iv in per_node.values()) == 6
    for f in finished:
        if f.spec.seed in reference:  # fractional resources change nothing in the result
            np.testing.assert_array_equal(f.result.R, reference[f.spec.seed])
    assert not torch.cuda.is_initialized()


def test_stream_is_put_once_and_read_back_without_copies(cluster, stream):
    handle = put_stream(stream)
    assert len(handle.refs) == stream.num_tasks
    back = get_stream(handle)
    for a, b, ref in zip(stream.tasks, back.tasks, handle.refs):
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
        assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
        # the tensor is a view of the shared-memory object (read-only), not a copy
        stored = ray.get(ref)["x_train"]
        assert not stored.flags.writeable
        assert b.x_train.data_ptr() == stored.ctypes.data
    assert handle.nbytes == sum(t.x_train.nbytes + t.y_train.nbytes + t.x_test.nbytes
                                + t.y_test.nbytes + t.x_val.nbytes + t.y_val.nbytes
                                for t in stream.tasks)


def test_one_actor_runs_the_sweep_one_run_after_another(cluster, stream, reference):
    [diverging] = config(seeds=[9], train={**CONFIG["train"], "lr": 1e12}).runs()
    specs = [diverging, *config(seeds=[0, 1]).runs()]
    finished = run_sweep(specs, stream, None, SweepOptions(max_in_flight=1))
    assert [f.spec.seed for f in finished] == [9, 0, 1]
    infos = [f.attempts[0].info for f in finished]
    assert len({i["pid"] for i in infos}) == 1  # one process ...
    assert [i["runs_hosted"] for i in infos] == [1, 2, 3]  # ... hosting each run in turn
    bad = finished[0]  # a diverged run is a result, not a failure: no retry
    assert bad.result.status == "diverged" and len(bad.attempts) == 1
    assert np.isnan(bad.result.R[1:]).all() and not np.isnan(bad.result.R[0]).any()
    for f in finished[1:]:  # and nothing of one run leaks into the next
        np.testing.assert_array_equal(f.result.R, reference[f.spec.seed])


@pytest.mark.parametrize("prefetch", [False, True])
def test_killed_actor_resumes_after_its_last_task(cluster, stream, reference, tmp_path,
                                                  prefetch):
    k = 1
    spec = config(seeds=[2]).runs()[0]

    def kill_after_task_k(e):
        if e.step == k and e.attempt == 0:
            kill_and_wait(e.actor)

    ckpt = f"file://{tmp_path}/ckpt"  # a pyarrow.fs URI, as s3://... would be
    [f] = run_sweep([spec], stream, str(tmp_path / "out"),
                    SweepOptions(checkpoint=ckpt, prefetch=prefetch), on_task=kill_after_task_k)
    first, second = f.attempts
    assert "ActorDiedError" in first.error
    if prefetch:  # the actor was already learning task k+1 when it was killed
        assert second.resumed_from in (k, k + 1) and first.trained in (k, k + 1)
    else:  # the hook ran before task k+1 started: exactly k tasks were checkpointed
        assert first.trained == k and second.resumed_from == k
    assert second.trained == T - second.resumed_from  # only the tasks after the checkpoint
    assert f.result.status == "ok"
    np.testing.assert_array_equal(f.result.R, reference[2])
    np.testing.assert_array_equal(r_by_run(tmp_path / "out")[spec.run_id], reference[2])
    assert CheckpointStore(ckpt).run_ids() == set()  # removed once the run is written
    assert (tmp_path / "ckpt").is_dir()


def test_retries_are_bounded_then_the_run_is_failed(cluster, stream, reference, tmp_path,
                                                   capsys):
    spec = config(seeds=[1]).runs()[0]

    killed: set[int] = set()

    def always_kill(e):  # every actor of this run dies after its first task
        if e.attempt not in killed:
            killed.add(e.attempt)
            kill_and_wait(e.actor)

    [f] = run_sweep([spec], stream, str(tmp_path / "out"),
                    SweepOptions(checkpoint=str(tmp_path / "ckpt"), max_retries=1),
                    on_task=always_kill)
    assert f.result.status == "failed" and len(f.attempts) == 2
    assert "ActorDiedError" in f.result.error
    runs = raw_rows(tmp_path / "out", "runs")
    assert runs.set_index("run_id").loc[spec.run_id, "status"] == "failed"

    # --resume runs a failed run again and replaces its rows
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "seeds": [1]}))
    code = cli_main(["run", str(path), "--output", str(tmp_path / "out"), "--resume",
                     "--no-progress"])
    assert code == 0
    assert "1 failed before and run again" in capsys.readouterr().err
    runs = raw_rows(tmp_path / "out", "runs")
    assert list(runs["status"]) == ["ok"]
    np.testing.assert_array_equal(r_by_run(tmp_path / "out")[spec.run_id], reference[1])


class Stop(Exception):
    """Stands in for the driver being killed."""


def test_interrupted_driver_resumed_writes_only_missing_runs(cluster, stream, reference,
                                                             tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    cfg = config()
    specs = cfg.runs()
    out, ckpt = tmp_path / "out", tmp_path / "out" / "checkpoints"  # the CLI's default
    last = specs[-1]

    def stop_driver(e):  # max_in_flight=2: the last run starts after two have finished
        if e.spec.run_id == last.run_id and e.step == 1:
            raise Stop

    with pytest.raises(Stop):  # no prefetch: no task is running when the driver stops
        run_sweep(specs, stream, str(out), SweepOptions(
            checkpoint=str(ckpt), max_in_flight=2, prefetch=False), on_task=stop_driver)
    done_before = set(load(out).runs["run_id"])
    assert len(done_before) >= 2 and last.run_id not in done_before
    assert CheckpointStore(str(ckpt)).load(last.run_id)["run"]["step"] == 1
    files_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}

    time.sleep(0.01)
    # --no-compact: keep per-run files, so that untouched files prove no run was rewritten
    code = cli_main(["run", str(path), "--output", str(out), "--resume", "--no-progress",
                     "--no-compact"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"resume: {len(done_before)} runs already done" in err
    assert "checkpoints go to" in err  # local checkpoint path on a 3-node cluster
    files_after = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert all(files_after.get(p) == m for p, m in files_before.items()), "rewrote a run"
    assert len(raw_rows(out, "runs")) == len(specs)
    R = r_by_run(out)
    for s in specs:
        np.testing.assert_array_equal(R[s.run_id], reference[s.seed])
    assert CheckpointStore(str(ckpt)).run_ids() == set()


def test_a_run_no_node_holds_is_a_stated_wait_until_a_node_joins(cluster, stream, reference,
                                                                capsys):
    c, _ = cluster
    [spec] = config(seeds=[0], resources={"num_cpus": 3}).runs()  # every node has 2 CPUs
    got: list = []
    sweep = threading.Thread(target=lambda: got.extend(run_sweep(
        [spec], stream, None, SweepOptions(poll_s=0.5, wait_message_s=1.0))), daemon=True)
    sweep.start()
    time.sleep(3.0)
    added = [c.add_node(num_cpus=3)]  # what an autoscaler would do with the stated demand
    try:
        sweep.join(timeout=120)
        assert not sweep.is_alive(), "the sweep did not start the run on the new node"
    finally:
        c.remove_node(added[0])
    [f] = got
    assert f.result.status == "ok" and f.attempts[0].node_id == added[0].node_id
    np.testing.assert_array_equal(f.result.R, reference[0])
    err = capsys.readouterr().err
    assert "llray: waiting" in err and "1 run(s) need 3 CPU each" in err
    assert "requested from the autoscaler" in err
    first = err.split("llray: waiting")[1]  # said before the node joined
    assert "the cluster has 3 alive nodes with 6 CPU, 2 GPU in all" in first


def test_node_removed_mid_sweep_loses_and_duplicates_nothing(cluster, stream, reference,
                                                             tmp_path):
    c, _ = cluster
    specs = config(seeds=[0, 1, 2]).runs()  # 1 CPU each: the head fits 2, so a worker
    # node gets at least one. This test removes a node: it runs last in the module.
    victim: list = []

    def remove_a_worker_node(e):
        if victim or e.node_id == c.head_node.node_id:
            return
        node = next(n for n in c.worker_nodes if n.node_id == e.node_id)
        victim.append((e.spec.run_id, e.step))
        c.remove_node(node)

    out = tmp_path / "out"
    finished = run_sweep(specs, stream, str(out), SweepOptions(
        checkpoint=str(tmp_path / "ckpt"), max_in_flight=3), on_task=remove_a_worker_node)
    assert victim, "no run was placed on a worker node"
    run_id, step = victim[0]
    hit = next(f for f in finished if f.spec.run_id == run_id)
    assert len(hit.attempts) >= 2 and "node" in hit.attempts[0].error
    # continued from its checkpoint (task step+1 may have finished before the removal)
    assert hit.attempts[-1].resumed_from in (step, step + 1)
    assert sorted(f.spec.run_id for f in finished) == sorted(s.run_id for s in specs)
    assert all(f.result.status == "ok" for f in finished)
    R = r_by_run(out)
    assert set(R) == {s.run_id for s in specs}
    for s in specs:
        np.testing.assert_array_equal(R[s.run_id], reference[s.seed])
    assert len(raw_rows(out, "runs")) == len(specs)
