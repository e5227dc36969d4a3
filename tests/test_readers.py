"""TinyImageNet and CORe50 from local files in their official layouts (tiny fixtures
written here), the NI and NC scenarios, and bad files / missing folders (exit 2, path)."""

import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from images import WNIDS, colour, write_tiny
from llray.cli import main
from llray.config_base import from_dict
from llray.data import StreamConfig, make_stream
from llray.data.folders import (
    CORE50_TEST_SESSIONS,
    CORE50_TRAIN_SESSIONS,
    read_core50,
    read_tinyimagenet,
)
from llray.errors import ConfigError

@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


def test_tinyimagenet_reads_train_and_val_with_sorted_wnid_labels(tiny):
    xtr, ytr, xte, yte = read_tinyimagenet(tiny.parent)  # the folder holding it also works
    assert xtr.shape == (12, 3, 64, 64) and xtr.dtype == np.uint8
    assert xte.shape == (7, 3, 64, 64) and ytr.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert sorted(yte.tolist()) == [0, 0, 1, 1, 1, 2, 2]
    for x, y in zip(xtr, ytr):  # red and blue say the class, in channel-major order
        red, _, blue = colour(int(y), 0)
        assert abs(int(x[0, 5, 5]) - red) <= 3 and abs(int(x[2, 5, 5]) - blue) <= 3
    grey = xte[yte == 1][-1]
    assert np.all(np.abs(grey.astype(int) - 128) <= 2)  # the grey one, as three channels
    assert read_tinyimagenet(tiny)[0].shape == xtr.shape


def test_split_tinyimagenet_stream_keeps_uint8(tiny):
    s = make_stream(StreamConfig(dataset="tinyimagenet", path=str(tiny), kind="split",
                                 num_tasks=3, scenario="task", augment=("crop", "flip")))
    assert (s.benchmark, s.input_shape, s.num_classes) == ("split-tinyimagenet", (3, 64, 64),
                                                           200)
    assert [t.classes for t in s.tasks] == [(0,), (1,), (2,)]
    assert s.tasks[0].x_train.dtype == torch.uint8 and len(s.tasks[1].y_test) == 3


@pytest.mark.parametrize("breakage, named", [
    (lambda d: (d / "wnids.txt").unlink(), "tiny-imagenet-200"),
    (lambda d: [p.unlink() for p in (d / "train" / "n03" / "images").glob("*")] and
     (d / "train" / "n03" / "images").rmdir(), "train/n03/images"),
    (lambda d: (d / "val" / "val_annotations.txt").unlink(), "val_annotations.txt"),
    (lambda d: (d / "val" / "images" / "val_0.JPEG").unlink(), "val_0.JPEG"),
    (lambda d: (d / "train" / "n01" / "images" / "n01_1.JPEG").write_bytes(b"not a jpeg"),
     "n01_1.JPEG"),
    (lambda d: Image.new("RGB", (32, 32)).save(d / "train" / "n02" / "images" / "n02_0.JPEG"),
     "n02_0.JPEG"),
])
def test_tinyimagenet_bad_files_name_the_path(tiny, breakage, named):
    breakage(tiny)
    with pytest.raises(ConfigError, match=named) as e:
        read_tinyimagenet(tiny)
    assert e.value.field == "stream.path"


# -- CORe50 -------------------------------------------------------------------------------
def core50_images(per=1, objects=50):
    """One (or ``per``) image for every session x object; pixel [0, 0, 0] = object id,
    pixel [0, 0, 1] = session, so tests can check where each image went."""
    rel, imgs = [], []
    for s in range(1, 12):
        for o in range(1, objects + 1):
            for f in range(per):
                img = np.zeros((128, 128, 3), np.uint8)
                img[0, 0] = (o, s, f)
                rel.append(f"s{s}/o{o}/C_{s:02d}_{o:02d}_{f:03d}.png")
                imgs.append(img)
    return rel, np.stack(imgs)


@pytest.fixture(scope="module")
def core50_npz(tmp_path_factory):
    root = tmp_path_factory.mktemp("core50")
    rel, x = core50_images()
    np.savez(root / "core50_imgs.npz", x=x)
    with open(root / "paths.pkl", "wb") as f:
        pickle.dump(rel, f)
    return root


def _obj_session(x):
    return x[:, 0, 0, 0].tolist(), x[:, 1, 0, 0].tolist()


def test_core50_ni_has_a_task_per_training_session_and_one_test_set(core50_npz):
    cfg = from_dict(StreamConfig, {"dataset": "core50", "path": str(core50_npz), "kind": "ni",
                                   "num_tasks": 8}, "stream")  # as from a YAML config
    s = make_stream(cfg)
    assert (s.scenario, s.num_classes, s.input_shape, s.num_tasks) == (
        "domain", 50, (3, 128, 128), 8)
    for t, session in zip(s.tasks, CORE50_TRAIN_SESSIONS):
        objs, sessions = _obj_session(t.x_train)
        assert t.name == f"session-{session}" and set(sessions) == {session}
        assert sorted(objs) == list(range(1, 51)) and t.y_train.tolist() == [o - 1 for o in objs]
        te_objs, te_sessions = _obj_session(t.x_test)
        assert sorted(set(te_sessions)) == list(CORE50_TEST_SESSIONS) and len(te_objs) == 150
    assert s.tasks[0].x_train.dtype == torch.uint8


def test_core50_nc_official_nine_batches_and_shuffled_order(core50_npz):
    s = make_stream(StreamConfig(dataset="core50", path=str(core50_npz), kind="nc",
                                 num_tasks=9))
    assert s.scenario == "class" and [len(t.classes) for t in s.tasks] == [10] + [5] * 8
    assert s.tasks[0].classes == tuple(range(10))
    for t in s.tasks:
        objs, sessions = _obj_session(t.x_train)
        assert set(sessions) == set(CORE50_TRAIN_SESSIONS)
        assert {o - 1 for o in objs} == set(t.classes)
        assert set(_obj_session(t.x_test)[1]) == set(CORE50_TEST_SESSIONS)
    shuffled = make_stream(StreamConfig(dataset="core50", path=str(core50_npz), kind="nc",
                                        num_tasks=5, shuffle_classes=True, seed=3))
    assert [len(t.classes) for t in shuffled.tasks] == [10] * 5
    assert shuffled.tasks[0].classes != tuple(range(10))
    assert sorted(c for t in shuffled.tasks for c in t.classes) == list(range(50))


def test_core50_png_folders_read_like_the_npz(tmp_path):
    rel, x = core50_images(objects=2)
    root = tmp_path / "core50_128x128"
    for r, img in zip(rel, x):
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / r)
    c = read_core50(tmp_path)
    assert c.x.shape == (22, 3, 128, 128) and c.x.dtype == np.uint8
    np.testing.assert_array_equal(c.x[:, 0, 0, 0] - 1, c.obj)
    np.testing.assert_array_equal(c.x[:, 1, 0, 0], c.session)


@pytest.mark.parametrize("fields, field", [
    ({"dataset": "core50", "kind": "split"}, "kind"),
    ({"dataset": "digits", "kind": "ni"}, "kind"),
    ({"dataset": "core50", "kind": "ni", "num_tasks": 5}, "num_tasks"),
    ({"dataset": "core50", "kind": "nc", "num_tasks": 51}, "num_tasks"),
    ({"dataset": "core50", "kind": "nc"}, "path"),
    ({"dataset": "core50", "kind": "nc", "test_fraction": 0.5}, "test_fraction"),
])
def test_core50_config_errors_name_the_field(fields, field):
    path = {"path": "somewhere"} if fields["dataset"] == "core50" and field != "path" else {}
    with pytest.raises(ConfigError) as e:
        StreamConfig(**{"num_tasks": 8, **path, **fields})
    assert e.value.field == field


def test_core50_bad_files_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        read_core50(tmp_path)  # nothing there
    np.savez(tmp_path / "core50_imgs.npz", x=np.zeros((2, 128, 128, 3), np.uint8))
    with pytest.raises(ConfigError, match="paths.pkl"):
        read_core50(tmp_path)
    (tmp_path / "paths.pkl").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="paths.pkl"):
        read_core50(tmp_path)
    with open(tmp_path / "paths.pkl", "wb") as f:
        pickle.dump(["s1/o1/a.png", "nowhere.png"], f)
    with pytest.raises(ConfigError, match="nowhere.png"):
        read_core50(tmp_path)
    with open(tmp_path / "paths.pkl", "wb") as f:
        pickle.dump(["s1/o1/a.png"], f)
    with pytest.raises(ConfigError, match="core50_imgs.npz.*expected 1"):
        read_core50(tmp_path)


def test_paths_pkl_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    np.savez(tmp_path / "core50_imgs.npz", x=np.zeros((1, 128, 128, 3), np.uint8))
    with open(tmp_path / "paths.pkl", "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(ConfigError, match="not allowed"):
        read_core50(tmp_path)


def test_cli_exits_2_naming_the_missing_folder(tmp_path, capsys):
    cfg = {"experiment": "t", "stream": {"dataset": "tinyimagenet", "kind": "split",
                                         "num_tasks": 2, "path": str(tmp_path / "absent")},
           "model": {"name": "resnet18_reduced"}, "strategies": ["naive"]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "absent") in err[0] and "stream.path" in err[0]
    assert not out.exists()
