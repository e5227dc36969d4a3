"""Tiny image streams and dataset fixtures for the backbone, augmentation, pixel and
reader tests: uint8 images whose classes are learnable from their mean colour pattern."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from llray.data import Task, TaskStream


def class_images(labels: np.ndarray, side: int, rng: np.random.Generator,
                 channels: int = 3) -> np.ndarray:
    """uint8 ``[N, C, side, side]``: class c is a bright square at a position of its own
    (a per-class pattern) on noise, so a small network can tell the classes apart."""
    x = rng.integers(0, 90, (len(labels), channels, side, side), dtype=np.uint8)
    q = side // 4
    for i, c in enumerate(labels):
        r, k = divmod(int(c) % 9, 3)
        x[i, int(c) % channels, r * q : r * q + q + q // 2, k * q : k * q + q + q // 2] = 230
    return x


def image_stream(num_tasks: int = 2, classes_per_task: int = 2, n_train: int = 24,
                 n_test: int = 12, side: int = 16, scenario: str = "class",
                 seed: int = 0, dtype: torch.dtype = torch.uint8) -> TaskStream:
    """A split stream of :func:`class_images`: task t holds classes
    ``t*k .. t*k + k-1``; ``n_train``/``n_test`` images per class; uint8 (or float32 in
    [0, 1] with ``dtype=torch.float32``: the same pixels / 255)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(num_tasks):
        classes = tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
        ytr = np.repeat(classes, n_train)
        yte = np.repeat(classes, n_test)
        xtr, xte = class_images(ytr, side, rng), class_images(yte, side, rng)
        conv = (lambda a: torch.from_numpy(a)) if dtype == torch.uint8 else (
            lambda a: torch.from_numpy(a.astype(np.float32) / np.float32(255)))
        tasks.append(Task(t, f"t{t}", conv(xtr), torch.from_numpy(ytr).long(), conv(xte),
                          torch.from_numpy(yte).long(), classes))
    return TaskStream(tuple(tasks), scenario, "toy-images", (3, side, side),
                      num_tasks * classes_per_task)


# -- TinyImageNet in its official layout --------------------------------------------------
WNIDS = ["n02", "n01", "n03"]  # sorted: n01 -> 0, n02 -> 1, n03 -> 2


def colour(label: int, k: int) -> tuple[int, int, int]:
    return (40 * label + 20, 10 * k, 200 - 30 * label)


def write_tiny(root, train_per_class=4, val_per_class=2):
    d = root / "tiny-imagenet-200"
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for w in WNIDS:
        label = sorted(WNIDS).index(w)
        img_dir = d / "train" / w / "images"
        img_dir.mkdir(parents=True)
        for k in range(train_per_class):
            Image.new("RGB", (64, 64), colour(label, k)).save(img_dir / f"{w}_{k}.JPEG",
                                                             quality=100)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
        for k in range(val_per_class):
            name = f"val_{label * val_per_class + k}.JPEG"
            Image.new("RGB", (64, 64), colour(label, k)).save(d / "val" / "images" / name,
                                                             quality=100)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    # a grey image, as some of the real ones are: read as RGB
    Image.new("L", (64, 64), 128).save(d / "val" / "images" / "val_grey.JPEG", quality=100)
    lines.append(f"val_grey.JPEG\t{WNIDS[0]}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return d
