"""A ResNet job on image files end to end: `llray run` on an embedded Ray (uint8 stream in
the object store, augmentation and BatchNorm state in the actors' checkpoints), R read
back from Parquet equal to the in-process runs."""

import numpy as np
import yaml

from images import write_tiny
from llray.cli import main
from llray.config import load_config
from llray.data import make_stream
from llray.experiment import execute
from llray.results import load, r_matrix_of


def test_llray_run_resnet_with_augmentation_on_tinyimagenet_files(tmp_path, ray_local):
    root = write_tiny(tmp_path, train_per_class=6, val_per_class=2)
    cfg = {"experiment": "tiny",
           "stream": {"dataset": "tinyimagenet", "path": str(root), "kind": "split",
                      "scenario": "task", "num_tasks": 3, "augment": ["crop", "flip"]},
           "model": {"name": "resnet18_reduced"},
           "train": {"epochs": 1, "batch_size": 4, "lr": 0.05},
           "strategies": ["naive", {"name": "replay", "buffer_size": 6}],
           "seeds": [0]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out), "--no-progress"]) == 0
    res = load(out)
    specs = load_config(path).runs()
    stream = make_stream(load_config(path).stream)
    assert stream.tasks[0].x_train.dtype.itemsize == 1 and stream.augment is not None
    for spec in specs:
        local = execute(spec, stream)
        assert local.status == "ok"
        np.testing.assert_array_equal(r_matrix_of(res, spec.run_id), local.R)
