"""llray curriculum: candidate orders, the tuned order from a study, the comparison run."""

import numpy as np
import pandas as pd
import pytest
import yaml

from llray import curriculum as cu
from llray import taskonomy as tx
from llray.cli import main
from llray.config import load_config
from llray.errors import ConfigError
from llray.learner import RunResult
from llray.results import RunMeta, write_run

CONFIG = {"experiment": "cur", "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3},
          "model": {"hidden": [16]}, "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
          "strategies": ["naive"], "seeds": [0]}


def _config(tmp_path, config=CONFIG):
    path = tmp_path / "cur.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _trial(out, i, study, order, acc, benchmark="permuted-digits", searched=("order",)):
    T = len(order)
    R = np.full((T + 1, T), acc)
    cfg = {"strategy": {"name": "naive"},
           "tuning": {"study": study, "params": {k: list(order) for k in searched}}}
    write_run(out, RunMeta(f"{study}{i}", study, "naive", benchmark, "domain", 0, order, cfg),
              RunResult(R, tuple(order), "ok", np.full(T, 10), 1.0, 1.0, 10))


def test_candidates_merge_the_same_order():
    c = cu.candidates(3, True, [(1, 0, 2), (0, 1, 2)],
                      {"taskonomy-greedy": (1, 0, 2), "tuned:s": (2, 1, 0)})
    assert [(x.label, x.order) for x in c] == [
        ("identity = random-2", (0, 1, 2)), ("random-1 = taskonomy-greedy", (1, 0, 2)),
        ("tuned:s", (2, 1, 0))]
    with pytest.raises(ConfigError, match="not a permutation"):
        cu.candidates(3, proposed={"x": (0, 0, 1)})
    assert len(set(cu.random_orders(4, 3, seed=0))) == 4


def test_tuned_order_is_the_best_finished_trial(tmp_path):
    _trial(tmp_path, 0, "s", (1, 0, 2), 0.5)
    _trial(tmp_path, 1, "s", (2, 0, 1), 0.9)
    _trial(tmp_path, 2, "s", (0, 2, 1), 0.7)
    _trial(tmp_path, 3, "lr_only", (0, 1, 2), 0.95, searched=("train.lr",))
    _trial(tmp_path, 4, "other_stream", (1, 0), 0.99)
    assert cu.tuned_orders(tmp_path, 3, "permuted-digits") == {"tuned:s": (2, 0, 1)}
    lr_only = cu.tuned_orders(tmp_path, 3, "permuted-digits", "lr_only")
    assert lr_only == {"tuned:lr_only": (0, 1, 2)}
    with pytest.raises(ConfigError,
                       match="no study 'nope' .* studies there: lr_only, other_stream, s"):
        cu.tuned_orders(tmp_path, 3, "permuted-digits", "nope")
    with pytest.raises(ConfigError, match="another stream"):
        cu.tuned_orders(tmp_path, 3, "permuted-digits", "other_stream")
    assert cu.tuned_orders(tmp_path / "empty", 3, "permuted-digits") == {}


def test_unknown_study_exits_2_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["curriculum", str(_config(tmp_path)), "--output", str(out),
                 "--study", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert not (out / "r_matrix").exists()


def test_compare_orders_end_to_end(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    path = _config(tmp_path)
    spec = tx.template(load_config(path))
    # a taskonomy already in OUTPUT (for this config): greedy takes 1->2 and is stuck with
    # 2->0 (-5); the best order is 2,1,0
    aff = pd.DataFrame({"source": [0, 0, 1, 1, 2, 2], "target": [1, 2, 0, 2, 0, 1],
                        "transfer": [0.0, 0.0, 0.6, 1.0, -5.0, 0.6],
                        "forgetting": 0.0})
    aff["score"] = aff["transfer"] - aff["forgetting"]
    curr = tx.curricula(aff, 3)
    assert [tuple(o) for o in curr["order"]] == [(1, 2, 0), (2, 1, 0)]
    tx.write(out, "naive", pd.DataFrame({"seed": [0]}), aff, curr, tx.describe(spec, [0]))
    _trial(out, 0, "order_study", (2, 0, 1), 0.9)  # its best order becomes "tuned:order_study"
    code = main(["curriculum", str(path), "--output", str(out), "--random", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    table = pd.read_parquet(out / "curriculum" / "naive" / "orders.parquet")
    labels = " | ".join(table["label"])
    for name in ("identity", "random-1", "taskonomy-greedy", "taskonomy-best", "tuned:order_study"):
        assert name in labels and name in text
    assert set(table["order"]) >= {"0,1,2", "1,2,0", "2,1,0", "2,0,1"}
    assert (table["n"] == 1).all() and table["acc"].between(0, 1).all()
    # ranked on the validation split (selection), reported on the test split
    assert table["acc_val"].is_monotonic_decreasing and table["acc_rank"].iloc[0] == 1
    assert table["acc_val"].between(0, 1).all()
    assert not np.allclose(table["acc_val"], table["acc"])  # a different split, not a copy
    assert "rank (val)" in text and "test ACC" in text
    assert (out / "curriculum" / "naive" / "curriculum.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "r_matrix" / "experiment=cur-curriculum").is_dir()
