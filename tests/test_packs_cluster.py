"""Node loss on a real 2-node Ray cluster: a pack restarts from its runs' checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from llray.config import parse_config
from llray.data import make_stream
from llray.distributed.sweep import SweepOptions, run_sweep
from llray.packs.run import build_pack
from llray.results import load

T = 3
CONFIG = {
    "experiment": "packs-cluster",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": T},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "strategies": [{"name": "replay", "ratio": 0.5, "buffer_size": 100}],
    "seeds": [0, 1, 2, 3],
    "resources": {"num_cpus": 1, "pack": 2},
}


@pytest.fixture(scope="module")
def cluster():
    """Head and one worker node, 1 CPU each: one pack per node."""
    ray.shutdown()  # a session from the ray_local fixture, if any
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    c.connect()
    yield c
    ray.shutdown()
    c.shutdown()


def test_node_removed_mid_pack_restarts_it_from_its_checkpoints(cluster, tmp_path):
    c = cluster
    cfg = parse_config(CONFIG)
    specs = cfg.runs()
    stream = make_stream(cfg.stream)
    expect = {}
    for pack in (specs[:2], specs[2:]):  # the two packs the grid is grouped into
        p = build_pack(pack, stream)
        while not p.done:
            p.learn_next()
        expect.update({s.run_id: r.R for s, r in zip(pack, p.results())})
    victim: list = []

    def remove_the_worker_node(e):
        if victim or e.node_id == c.head_node.node_id:
            return
        victim.append((e.spec.run_id, e.step))
        c.remove_node(next(n for n in c.worker_nodes if n.node_id == e.node_id))

    finished = run_sweep(specs, stream, str(tmp_path / "out"),
                         SweepOptions(checkpoint=str(tmp_path / "ckpt"), max_in_flight=2),
                         on_task=remove_the_worker_node)
    assert victim, "no pack was placed on the worker node"
    run_id, step = victim[0]
    hit = next(f for f in finished if f.spec.run_id == run_id)
    assert len(hit.attempts) >= 2 and "node" in hit.attempts[0].error.lower()
    assert hit.attempts[-1].resumed_from in (step, step + 1)  # from the runs' checkpoints
    assert all(f.result.status == "ok" for f in finished) and len(finished) == len(specs)
    res = load(tmp_path / "out")
    assert sorted(res.runs["run_id"]) == sorted(s.run_id for s in specs)
    for s in specs:
        np.testing.assert_array_equal(res.r_matrix_of(s.run_id), expect[s.run_id])
