"""Packs in the sweep driver: grouping, per-run rows, resume of a killed pack, pack 1."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from llray.config import parse_config
from llray.data import make_stream
from llray.distributed.checkpoint import CheckpointStore
from llray.distributed.sweep import SweepOptions, run_sweep
from llray.experiment import execute
from llray.packs.grouping import group_packs
from llray.packs.run import build_pack
from llray.results import load, r_matrix_of

T = 2
CONFIG = {
    "experiment": "packs",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": T},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "strategies": [{"name": "ewc", "lambda_": 1, "label": "ewc1"},
                   {"name": "ewc", "lambda_": 5, "label": "ewc5"}, "gem"],
    "seeds": [0, 1],
    "orders": ["identity", [1, 0]],
}


def config(**over):
    return parse_config({**CONFIG, **over})


@pytest.fixture(scope="module")
def stream():
    return make_stream(config().stream)


def r_from_store(output, split: str = "test") -> dict[str, np.ndarray]:
    rows = load(output).r_matrix
    return {run_id: r_matrix_of(rows, run_id, split) for run_id in rows["run_id"].unique()}


def test_grid_grouped_into_packs_values_seeds_orders_mixed():
    specs = config(resources={"pack": 3}).runs()
    packs = group_packs(specs, 3)
    # 8 ewc runs (λ 1 and 5 pack together) -> 3 + 3 + 2; gem has no pack version
    assert [len(p) for p in packs] == [3, 3, 2, 1, 1, 1, 1]
    assert {s.strategy.name for s in packs[0]} == {"ewc"}
    assert all(p[0].strategy.name == "gem" for p in packs[3:])
    assert sorted(s.run_id for p in packs for s in p) == sorted(s.run_id for s in specs)
    assert [len(p) for p in group_packs(specs, 1)] == [1] * len(specs)
    other = config(strategies=[{"name": "replay", "buffer_size": 50, "label": "a"},
                               {"name": "replay", "buffer_size": 60, "label": "b"}]).runs()
    assert [len(p) for p in group_packs(other, 8)] == [4, 4]  # buffer sizes differ


def test_pack_sweep_writes_each_runs_own_rows(ray_local, stream, tmp_path, capsys):
    specs = config(resources={"pack": 4}, orders=["identity"]).runs()  # 4 ewc, 2 gem
    out = tmp_path / "out"
    finished = run_sweep(specs, stream, str(out), SweepOptions(checkpoint=str(tmp_path / "c")))
    assert "gem have no pack version; their runs train unpacked" in capsys.readouterr().err
    assert sorted(f.spec.run_id for f in finished) == sorted(s.run_id for s in specs)
    R, R_val = r_from_store(out), r_from_store(out, "val")
    runs = load(out).runs.set_index("run_id")
    for s in specs:
        alone = execute(s, stream)
        for got, want in ((R[s.run_id], alone.R), (R_val[s.run_id], alone.R_val)):
            if s.strategy.name == "gem":  # a pack of one is the unpacked path, bit for bit
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, atol=0.02, rtol=0)
        assert runs.loc[s.run_id, "status"] == "ok" and runs.loc[s.run_id, "seed"] == s.seed
    assert CheckpointStore(str(tmp_path / "c")).run_ids() == set()


def test_pack_1_is_bit_identical_to_the_unpacked_run(ray_local, stream, tmp_path):
    specs = config(resources={"pack": 1}, strategies=["naive", "ewc"], seeds=[3]).runs()
    run_sweep(specs, stream, str(tmp_path / "out"))
    R, R_val = r_from_store(tmp_path / "out"), r_from_store(tmp_path / "out", "val")
    for s in specs:
        alone = execute(s, stream)
        np.testing.assert_array_equal(R[s.run_id], alone.R)
        np.testing.assert_array_equal(R_val[s.run_id], alone.R_val)


def kill_and_wait(actor) -> None:
    ray.kill(actor)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(200):
            ray.get(actor.info.remote())
            time.sleep(0.05)


def test_killed_pack_resumes_from_its_runs_checkpoints(ray_local, stream, tmp_path):
    specs = config(resources={"pack": 4}, strategies=[{"name": "ewc", "lambda_": 5}]).runs()
    uninterrupted = build_pack(specs, stream)
    while not uninterrupted.done:
        uninterrupted.learn_next()
    expect = {s.run_id: r.R for s, r in zip(specs, uninterrupted.results())}
    killed = []

    def kill_after_task_1(e):
        if e.step == 1 and e.attempt == 0 and not killed:
            killed.append(e.spec.run_id)
            kill_and_wait(e.actor)

    finished = run_sweep(specs, stream, str(tmp_path / "out"),
                         SweepOptions(checkpoint=str(tmp_path / "c")), on_task=kill_after_task_1)
    assert killed
    for f in finished:
        first, second = f.attempts
        assert "ActorDiedError" in first.error and second.resumed_from == 1
        assert first.trained == 1 and second.trained == T - 1
    R = r_from_store(tmp_path / "out")
    for s in specs:
        np.testing.assert_array_equal(R[s.run_id], expect[s.run_id])
