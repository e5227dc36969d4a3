"""Checkpoint store and storage warnings (no Ray needed)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from llray.config import parse_config
from llray.data import make_stream
from llray.distributed.checkpoint import CheckpointStore, is_node_local, is_uri, resolve
from llray.distributed.session import storage_warnings
from llray.experiment import build_run, execute
from llray.strategies import strategy_names


@pytest.mark.parametrize("as_uri", [False, True])
def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path, as_uri):
    root = f"file://{tmp_path}/ck" if as_uri else str(tmp_path / "ck")
    store = CheckpointStore(root)
    assert store.load("r") is None and store.run_ids() == set()
    store.save("r", {"step": 1, "w": torch.arange(3.0)})
    store.save("r", {"step": 2, "w": torch.arange(4.0)})
    got = store.load("r")
    assert got["step"] == 2 and torch.equal(got["w"], torch.arange(4.0))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["r.pt"]
    assert store.run_ids() == {"r"}
    store.delete("r")
    assert store.load("r") is None and store.run_ids() == set()


class _RunsCode:
    """Unpickling this touches a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_never_runs_code_from_the_file(tmp_path):
    store = CheckpointStore(str(tmp_path))
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": _RunsCode(marker)}, store.path("bad"))
    with pytest.raises(pickle.UnpicklingError):
        store.load("bad")
    assert not marker.exists()


@pytest.mark.parametrize("strategy", sorted({"naive", "ewc", "joint"} & set(strategy_names())))
def test_resume_through_the_store_gives_the_uninterrupted_r(tmp_path, strategy):
    cfg = parse_config({"stream": {"num_tasks": 3}, "model": {"hidden": [32]},
                        "strategies": [strategy], "seeds": [5]})
    spec = cfg.runs()[0]
    stream = make_stream(cfg.stream)
    store = CheckpointStore(str(tmp_path))
    first = build_run(spec, stream)
    first.start()
    first.learn_next()
    store.save(spec.run_id, first.state_dict())  # what the actor writes after task 1
    second = build_run(spec, stream)
    second.load_state_dict(store.load(spec.run_id))
    while not second.done:
        second.learn_next()
    np.testing.assert_array_equal(second.R, execute(spec, stream).R)


def test_paths_and_uris():
    assert is_uri("s3://bucket/x") and is_uri("file:///tmp/x")
    assert not is_uri("results/x") and not is_uri("C:/x")
    assert is_node_local("results/x") and is_node_local("file:///tmp/x")
    assert not is_node_local("s3://bucket/ckpt") and not is_node_local("gs://b/c")
    assert resolve("s3://bucket/x") == "s3://bucket/x"
    assert Path(resolve("rel/dir")).is_absolute()


def test_local_paths_warn_only_on_multi_node_clusters():
    assert storage_warnings("results/x", "results/x/checkpoints", num_nodes=1) == []
    both = storage_warnings("results/x", "/data/ckpt", num_nodes=3)
    assert len(both) == 2
    assert "/data/ckpt" in both[0] and "3 nodes" in both[0] and "s3://" in both[0]
    assert "results/x" in both[1] and "driver" in both[1]
    only_results = storage_warnings("results/x", "s3://bucket/ckpt", num_nodes=3)
    assert len(only_results) == 1 and "results/x" in only_results[0]
