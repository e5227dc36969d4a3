"""Data layer: datasets, scenarios (permuted, rotated, split, table tasks), parquet, config."""

import random
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llray.config_base import from_dict
from llray.data import StreamConfig, make_stream
from llray.data.datasets import load_digits, load_mnist1d
from llray.data.scenarios import class_groups, rotate_images
from llray.errors import ConfigError


def stream(**kw):
    return make_stream(StreamConfig(**kw))


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


# -- determinism and the train/test split -----------------------------------------------------
def test_same_seed_gives_the_same_tensors():
    a, b = stream(num_tasks=3, seed=1), stream(num_tasks=3, seed=1)
    for ta, tb in zip(a.tasks, b.tasks):
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_train, tb.y_train)
        assert torch.equal(ta.x_test, tb.x_test) and torch.equal(ta.y_test, tb.y_test)
    c = stream(num_tasks=3, seed=2)
    assert not torch.equal(a.tasks[0].y_train, c.tasks[0].y_train)  # another split


def _permutation(x: torch.Tensor) -> list[int]:
    """The feature order of a permuted ramp row (features r*F + j, all distinct)."""
    return torch.argsort(x[0].flatten()).tolist()


def test_another_seed_draws_other_permutations(tmp_path):
    ramp = np.arange(20 * 16, dtype=np.float64).reshape(20, 16)
    cols = {f"f{j}": ramp[:, j] for j in range(16)}
    pq.write_table(pa.table({**cols, "label": np.arange(20) % 2}), tmp_path / "ramp.parquet")
    kw = dict(dataset="parquet", path=str(tmp_path / "ramp.parquet"), num_tasks=3)
    perms = {seed: [_permutation(t.x_train) for t in stream(**kw, seed=seed).tasks]
             for seed in (1, 2)}
    assert perms[1][0] == perms[2][0] == list(range(16))  # task 0 is not permuted
    assert perms[1][1] != list(range(16)) and perms[1][1] != perms[1][2]
    assert perms[1][1:] != perms[2][1:]
    assert perms[1] == [_permutation(t.x_train) for t in stream(**kw, seed=1).tasks]
    # the same permutation for every row of a task, train and test alike
    t1 = stream(**kw, seed=1).tasks[1]
    for x in (t1.x_train, t1.x_test):
        assert all(torch.argsort(row).tolist() == perms[1][1] for row in x)


def test_split_is_stratified_with_the_test_fraction_and_uses_every_sample():
    s = stream(num_tasks=2, test_fraction=0.3)
    y_all = torch.from_numpy(load_digits().y.copy())
    for t in s.tasks:
        assert len(t.y_train) + len(t.y_val) + len(t.y_test) == len(y_all) == 1797
        for c in range(10):
            n_c = int((y_all == c).sum())
            assert int((t.y_test == c).sum()) == round(n_c * 0.3)
            n_train = int((t.y_train == c).sum()) + int((t.y_val == c).sum())
            assert n_train == n_c - round(n_c * 0.3)
    # train and test rows are disjoint samples: their count equals the dataset's
    t0 = s.tasks[0]
    both = torch.cat([flat(t0.x_train), flat(t0.x_val), flat(t0.x_test)])
    all_x = torch.from_numpy(load_digits().x.reshape(1797, -1).copy())
    assert torch.equal(both.sum(0), all_x.sum(0))


def test_max_train_per_task_subsamples_train_only_and_deterministically():
    s = stream(kind="split", num_tasks=5, max_train_per_task=50, seed=3)
    full = stream(kind="split", num_tasks=5, seed=3)
    for t, f in zip(s.tasks, full.tasks):
        assert len(t.y_train) + len(t.y_val) == 50 and torch.equal(t.y_test, f.y_test)
        assert set(t.y_train.tolist()) <= set(t.classes)
    again = stream(kind="split", num_tasks=5, max_train_per_task=50, seed=3)
    assert torch.equal(s.tasks[2].x_train, again.tasks[2].x_train)


# -- permuted -------------------------------------------------------------------------------
def test_permuted_tasks_permute_the_same_pixels_with_one_permutation_per_task():
    s = stream(num_tasks=3)
    assert s.scenario == "domain" and s.num_classes == 10 and s.input_shape == (1, 8, 8)
    assert [t.name for t in s.tasks] == ["permuted-0", "permuted-1", "permuted-2"]
    x0 = flat(s.tasks[0].x_train)
    for t in s.tasks[1:]:
        xt = flat(t.x_train)
        assert torch.equal(t.y_train, s.tasks[0].y_train)
        assert torch.equal(xt.sort(dim=1).values, x0.sort(dim=1).values)  # same pixels
        assert not torch.equal(xt, x0)
        # one permutation for all samples: every column of task t is a column of task 0
        dist = torch.cdist(xt.T.double(), x0.T.double())
        assert bool((dist.min(dim=1).values == 0).all())
    assert not torch.equal(flat(s.tasks[1].x_train), flat(s.tasks[2].x_train))


def test_first_permuted_task_is_the_unpermuted_dataset_in_0_1():
    s = stream(num_tasks=2)
    x = s.tasks[0].x_train
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    raw = {tuple(r) for r in load_digits().x.reshape(1797, 64).tolist()}
    assert all(tuple(r) in raw for r in x.flatten(1).tolist())  # unpermuted images
    assert not all(tuple(r) in raw for r in s.tasks[1].x_train.flatten(1).tolist())


def test_task_il_gives_each_permuted_task_its_own_label_block_and_mask():
    s = stream(num_tasks=3, scenario="task")
    domain = stream(num_tasks=3)
    assert s.num_classes == 30
    mask = s.class_mask()
    for t in range(3):
        assert s.tasks[t].classes == tuple(range(10 * t, 10 * t + 10))
        assert torch.equal(s.tasks[t].y_train, domain.tasks[t].y_train + 10 * t)
        assert torch.equal(s.tasks[t].y_test, domain.tasks[t].y_test + 10 * t)
        assert mask[t].nonzero().flatten().tolist() == list(range(10 * t, 10 * t + 10))
    assert int(mask.sum()) == 30
    cls = stream(num_tasks=3, scenario="class")  # class-IL: the same disjoint blocks
    assert cls.num_classes == 30 and torch.equal(cls.tasks[2].y_train, s.tasks[2].y_train)


# -- split ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_tasks, sizes", [(5, [2] * 5), (3, [4, 3, 3]), (10, [1] * 10)])
def test_split_tasks_have_disjoint_classes_covering_all(num_tasks, sizes):
    s = stream(kind="split", num_tasks=num_tasks)
    assert s.scenario == "class" and s.num_classes == 10
    assert [len(t.classes) for t in s.tasks] == sizes
    assert sorted(c for t in s.tasks for c in t.classes) == list(range(10))
    for t in s.tasks:
        assert set(t.y_train.tolist()) == set(t.classes) == set(t.y_test.tolist())
        assert t.name == "split-[" + ",".join(map(str, t.classes)) + "]"
    assert sum(len(t.y_train) + len(t.y_val) + len(t.y_test) for t in s.tasks) == 1797


def test_split_task_il_keeps_global_ids_and_domain_il_relabels_within_task():
    task = stream(kind="split", scenario="task")
    dom = stream(kind="split", scenario="domain")
    assert task.num_classes == 10 and task.tasks[2].classes == (4, 5)
    assert task.class_mask()[2].nonzero().flatten().tolist() == [4, 5]
    assert dom.num_classes == 2 and all(t.classes == (0, 1) for t in dom.tasks)
    assert torch.equal(dom.tasks[2].y_train, task.tasks[2].y_train - 4)


def test_shuffle_classes_draws_the_groups_from_the_seed():
    a = stream(kind="split", shuffle_classes=True, seed=5)
    b = stream(kind="split", shuffle_classes=True, seed=5)
    assert [t.classes for t in a.tasks] == [t.classes for t in b.tasks]
    assert [t.classes for t in a.tasks] != [t.classes for t in stream(kind="split").tasks]
    assert sorted(c for t in a.tasks for c in t.classes) == list(range(10))
    assert class_groups(range(10), 4) == [(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]


# -- rotated --------------------------------------------------------------------------------
def test_rotated_tasks_rotate_the_images_like_rot90():
    s = stream(kind="rotated", num_tasks=3)  # angles 0, 90, 180
    assert [t.name for t in s.tasks] == ["rotated-0", "rotated-90", "rotated-180"]
    x0 = s.tasks[0].x_train
    assert torch.allclose(s.tasks[1].x_train, torch.rot90(x0, 1, (-2, -1)), atol=1e-6)
    assert torch.allclose(s.tasks[2].x_train, torch.rot90(x0, 2, (-2, -1)), atol=1e-6)
    assert torch.equal(s.tasks[1].y_train, s.tasks[0].y_train)


def test_rotate_images_turns_counterclockwise_and_explicit_angles_are_used():
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 1, 6] = 1.0  # top right
    assert rotate_images(img, 90)[0, 0, 1, 1] == 1.0  # -> top left (counterclockwise)
    s = stream(kind="rotated", num_tasks=2, angles=(0.0, 45.0))
    assert [t.name for t in s.tasks] == ["rotated-0", "rotated-45"]
    x0, x45 = s.tasks[0].x_train, s.tasks[1].x_train
    assert x45.shape == x0.shape and not torch.allclose(x45, x0, atol=0.1)
    assert torch.allclose(x45, rotate_images(x0, 45.0))


# -- mnist1d --------------------------------------------------------------------------------
def test_mnist1d_is_generated_offline_standardized_and_leaves_global_rng_alone(monkeypatch):
    import mnist1d.data

    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(mnist1d.data, "get_dataset", no_network)
    load_mnist1d.cache_clear()
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    s = stream(dataset="mnist1d", num_samples=400, num_tasks=2, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert s.input_shape == (40,) and s.benchmark == "permuted-mnist1d"
    t0 = s.tasks[0]
    assert t0.x_train.shape == (270, 40) and t0.x_val.shape == (30, 40)  # 10% validation
    assert t0.x_test.shape == (100, 40)
    fit = torch.cat([t0.x_train, t0.x_val])  # the training rows the statistics came from
    assert abs(float(fit.mean())) < 1e-4 and abs(float(fit.std()) - 1) < 1e-2
    assert set(t0.y_train.tolist()) == set(range(10))
    other = stream(dataset="mnist1d", num_samples=400, num_tasks=2, seed=1)
    assert not torch.equal(other.tasks[0].x_train, t0.x_train)


# -- parquet --------------------------------------------------------------------------------
def _table(n=40, seed=0, **extra):
    g = np.random.default_rng(seed)
    cols = {"a": g.random(n), "b": g.random(n), "c": g.random(n).astype(np.float32),
            "label": np.arange(n) % 4}
    cols.update(extra)
    return pa.table(cols)


def _rows(*xs):
    return sorted(map(tuple, torch.cat([x.flatten(1) for x in xs]).tolist()))


def test_parquet_numeric_feature_columns(tmp_path):
    path = tmp_path / "tab.parquet"
    tab = _table(task=np.zeros(40, dtype=np.int64))  # a task column is never a feature
    pq.write_table(tab, path)
    s = stream(dataset="parquet", path=str(path), kind="split", num_tasks=2)
    assert s.benchmark == "split-tab" and s.input_shape == (3,) and s.num_classes == 4
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3)]
    want = np.column_stack([tab[c].to_numpy() for c in "abc"]).astype(np.float32)
    got = _rows(*(x for t in s.tasks for x in (t.x_train, t.x_val, t.x_test)))
    assert got == sorted(map(tuple, want.tolist()))
    sub = stream(dataset="parquet", path=str(path), feature_columns=["c", "a"], num_tasks=2)
    x = torch.cat([sub.tasks[0].x_train, sub.tasks[0].x_val, sub.tasks[0].x_test])
    assert sub.input_shape == (2,) and _rows(x) == sorted(map(tuple, want[:, [2, 0]].tolist()))


def test_parquet_list_column_with_image_shape_can_be_rotated(tmp_path):
    imgs = np.random.default_rng(0).random((12, 16)).astype(np.float32)
    tab = pa.table({"pixels": pa.array(list(imgs), pa.list_(pa.float32())),
                    "label": np.arange(12) % 3})
    pq.write_table(tab, tmp_path / "img.parquet")
    s = stream(dataset="parquet", path=str(tmp_path / "img.parquet"), kind="rotated",
               num_tasks=2, angles=(0.0, 90.0), input_shape=(1, 4, 4))
    assert s.input_shape == (1, 4, 4) and s.tasks[0].x_train.shape[1:] == (1, 4, 4)
    t0 = s.tasks[0]
    assert _rows(t0.x_train, t0.x_val, t0.x_test) == sorted(map(tuple, imgs.tolist()))
    x0 = s.tasks[0].x_train
    assert torch.allclose(s.tasks[1].x_train, torch.rot90(x0, 1, (-2, -1)), atol=1e-6)


def test_parquet_task_column_makes_the_tasks_and_standardize_uses_train_rows(tmp_path):
    tab = _table(n=60, task=np.repeat([7, 3, 5], 20))
    pq.write_table(tab, tmp_path / "t.parquet")
    kw = dict(dataset="parquet", path=str(tmp_path / "t.parquet"), kind="tasks", num_tasks=3)
    s = stream(**kw, scenario="domain")
    assert [t.name for t in s.tasks] == ["task-3", "task-5", "task-7"]
    assert s.input_shape == (3,)  # the task column is not a feature
    a = tab["a"].to_numpy()
    for t, value in zip(s.tasks, [3, 5, 7]):
        rows = np.flatnonzero(tab["task"].to_numpy() == value)
        got = torch.cat([t.x_train[:, 0], t.x_val[:, 0], t.x_test[:, 0]]).double()
        assert np.allclose(sorted(got.tolist()), sorted(a[rows]))
        # stratified by task and label: each of the 4 labels has 5 rows, round(1.25) = 1
        assert sorted(t.y_test.tolist()) == [0, 1, 2, 3] and t.classes == (0, 1, 2, 3)
    task_il = stream(**kw, scenario="task")  # labels overlap across tasks -> offset blocks
    assert task_il.num_classes == 12 and task_il.tasks[2].classes == (8, 9, 10, 11)
    std = stream(**kw, scenario="domain", standardize=True)
    xtr = torch.cat([x for t in std.tasks for x in (t.x_train, t.x_val)])  # training rows
    assert torch.allclose(xtr.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xtr.std(0, unbiased=False), torch.ones(3), atol=1e-4)


def test_parquet_hive_directory_with_disjoint_task_classes(tmp_path):
    tab = pa.table({"x": np.arange(24.0), "label": np.arange(24) % 4,
                    "task": (np.arange(24) % 4) // 2})
    pq.write_to_dataset(tab, str(tmp_path / "ds"), partition_cols=["task"])
    s = stream(dataset="parquet", path=str(tmp_path / "ds"), kind="tasks", num_tasks=2,
               scenario="class")
    assert s.benchmark == "tasks-ds" and s.num_classes == 4
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3)]  # disjoint: global ids kept
    t1 = s.tasks[1]
    assert sorted(t1.y_train.tolist() + t1.y_val.tolist() + t1.y_test.tolist()) == [2] * 6 + [3] * 6


# -- config errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"dataset": "imagenet"}, "stream.dataset", ["imagenet", "digits", "mnist1d", "parquet"]),
        ({"num_tasks": 1}, "stream.num_tasks", ["at least 2"]),
        ({"kind": "shuffled"}, "stream.kind", ["permuted", "rotated", "split", "tasks"]),
        ({"scenario": "online"}, "stream.scenario", ["online"]),
        ({"dataset": "mnist1d", "kind": "rotated"}, "stream.kind", ["square images", "(40,)"]),
        ({"dataset": "parquet"}, "stream.path", ["needs the path"]),
        ({"path": "x.parquet"}, "stream.path", ["only used with dataset 'parquet'"]),
        ({"num_samples": 100}, "stream.num_samples", ["mnist1d"]),
        ({"angles": [0, 90]}, "stream.angles", ["rotated"]),
        ({"kind": "rotated", "num_tasks": 3, "angles": [0, 90]}, "stream.angles", ["one angle"]),
        ({"kind": "tasks"}, "stream.kind", ["parquet"]),
        ({"dataset": "parquet", "path": "p", "kind": "tasks"}, "stream.scenario", ["explicit"]),
        ({"kind": "split", "num_tasks": 11}, "stream.num_tasks", ["at most 10"]),
        ({"test_fraction": 1.0}, "stream.test_fraction", ["(0, 1)"]),
        ({"max_train_per_task": 0}, "stream.max_train_per_task", [">= 1"]),
    ],
)
def test_bad_stream_config_names_the_field_and_what_is_allowed(data, field, words):
    with pytest.raises(ConfigError) as err:
        from_dict(StreamConfig, data, "stream")
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_defaults_scenarios_and_benchmarks():
    assert StreamConfig().scenario_name == "domain"
    assert StreamConfig().benchmark == "permuted-digits"
    assert StreamConfig(kind="split", dataset="mnist1d").scenario_name == "class"
    assert StreamConfig(kind="rotated", scenario="task").scenario_name == "task"
    cfg = from_dict(StreamConfig, {"dataset": "parquet", "path": "d/t.parquet",
                                   "feature_columns": ["a"], "input_shape": [1]}, "stream")
    assert cfg.feature_columns == ("a",) and cfg.input_shape == (1,)
    assert cfg.benchmark == "permuted-t"


@pytest.mark.parametrize(
    "kw, field, words",
    [
        ({"path": "missing.parquet"}, "stream.path", ["missing.parquet"]),
        ({"label_column": "y"}, "stream.label_column", ["'y'", "a, b, c, label"]),
        ({"feature_columns": ["a", "zz"]}, "stream.feature_columns", ["'zz'"]),
        ({"kind": "tasks", "scenario": "class", "task_column": "a"}, "stream.task_column",
         ["not integer"]),
        ({"kind": "split", "num_tasks": 5}, "stream.num_tasks", ["4 classes"]),
        ({"input_shape": [2, 2]}, "stream.input_shape", ["3 features"]),
    ],
)
def test_table_problems_are_config_errors_naming_the_field(tmp_path, kw, field, words):
    pq.write_table(_table(), tmp_path / "tab.parquet")
    kw = {"dataset": "parquet", "path": str(tmp_path / "tab.parquet"), "num_tasks": 2, **kw}
    if kw["path"] == "missing.parquet":
        kw["path"] = str(tmp_path / "missing.parquet")
    with pytest.raises(ConfigError) as err:
        stream(**kw)
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_table_task_count_must_match_num_tasks(tmp_path):
    pq.write_table(_table(n=30, task=np.arange(30) % 3), tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match="has 3 tasks") as err:
        stream(dataset="parquet", path=str(tmp_path / "t.parquet"), kind="tasks",
               scenario="domain", num_tasks=2)
    assert err.value.field == "stream.num_tasks"


# -- the raw digits ------------------------------------------------------------------------
def test_digits_fast_path_matches_sklearn():
    from sklearn.datasets import load_digits as sk

    x, y = sk(return_X_y=True)
    a = load_digits()
    assert a.x.shape == (1797, 1, 8, 8)
    assert np.array_equal(a.x.reshape(1797, 64), (x / 16.0).astype(np.float32))
    assert np.array_equal(a.y, y) and not a.x.flags.writeable
