"""Image datasets read from a local folder the user already has (never downloaded).

:func:`load_vision` reads MNIST, FashionMNIST, CIFAR-10 and CIFAR-100 in their standard
distribution formats and returns NumPy arrays: images float32 in ``[0, 1]``, layout
``NCHW``; labels int64. Accepted folder layouts (``root`` is what the user gives):

=============  ===========================================================================
dataset        files, looked for in these folders (first folder holding all files wins)
=============  ===========================================================================
mnist          ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
               ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally
               ``.gz``) in ``root``, ``root/MNIST/raw`` (torchvision's layout),
               ``root/MNIST`` or ``root/mnist``
fashionmnist   the same four file names in ``root``, ``root/FashionMNIST/raw``,
               ``root/FashionMNIST``, ``root/fashion-mnist`` or ``root/fashionmnist``
cifar10        ``data_batch_1`` … ``data_batch_5``, ``test_batch`` (the python pickles)
               in ``root/cifar-10-batches-py`` or ``root``
cifar100       ``train``, ``test`` (python pickles; the 100 *fine* labels) in
               ``root/cifar-100-python`` or ``root``
=============  ===========================================================================

A missing file is a :class:`~llray.errors.ConfigError` on ``stream.path`` that names the
missing files and every folder searched. The CIFAR pickles are read with an unpickler
that only admits NumPy arrays and plain containers, so a file cannot run code.

:func:`rotate_images` rotates a batch of NumPy or torch images, square or not. Streams
(``stream: {dataset: mnist, path: ..., kind: rotated}``) are built by
:mod:`llray.data.streams`, whose rotated kind uses :func:`llray.data.scenarios.rotate_images`
(the same counter-clockwise rotation, exact for multiples of 90 degrees).

Example:
    >>> x = np.zeros((1, 1, 3, 3), np.float32); x[0, 0, 1, 2] = 1.0  # right middle
    >>> rotate_images(x, 90.0)[0, 0].round(3).tolist()[0]            # -> top middle
    [0.0, 1.0, 0.0]
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llray.errors import ConfigError

VISION_DATASETS = ("mnist", "fashionmnist", "cifar10", "cifar100")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR100_FILES = ("train", "test")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_vision(name: str, root: str | Path) -> Arrays:
    """``(x_train, y_train, x_test, y_test)`` of an image dataset in a local folder.

    Args:
        name: ``mnist``, ``fashionmnist``, ``cifar10`` or ``cifar100``.
        root: the folder holding the dataset (see the module docstring for layouts).

    Returns:
        Images float32 in ``[0, 1]`` shaped ``[N, C, H, W]`` and labels int64 ``[N]``.

    Raises:
        ConfigError: unknown ``name``, a missing file (named, with the folders searched)
            or a file that is not in the expected format.

    Example:
        >>> load_vision("mnist", "/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        llray.errors.ConfigError: stream.path: mnist: missing train-images-idx3-ubyte...
    """
    xtr, ytr, xte, yte = load_vision_uint8(name, root)
    return _images(xtr), ytr, _images(xte), yte


def load_vision_uint8(name: str, root: str | Path) -> Arrays:
    """As :func:`load_vision`, but the images are the files' uint8 pixel values (0..255),
    a quarter of the memory of float32."""
    root = Path(root)
    if name in ("mnist", "fashionmnist"):
        sub = {"mnist": ("MNIST/raw", "MNIST", "mnist"),
               "fashionmnist": ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist",
                                "fashionmnist")}[name]
        files = _locate(name, [root, *(root / s for s in sub)], _IDX_FILES, gz=True)
        xtr, ytr, xte, yte = (_read_idx(f) for f in files)
        return _gray(xtr), _labels(ytr, xtr), _gray(xte), _labels(yte, xte)
    if name == "cifar10":
        files = _locate(name, [root / "cifar-10-batches-py", root], _CIFAR10_FILES)
        parts = [_read_cifar(f, "labels") for f in files]
        xtr = np.concatenate([p[0] for p in parts[:5]])
        ytr = np.concatenate([p[1] for p in parts[:5]])
        return xtr, ytr, parts[5][0], parts[5][1]
    if name == "cifar100":
        files = _locate(name, [root / "cifar-100-python", root], _CIFAR100_FILES)
        (xtr, ytr), (xte, yte) = (_read_cifar(f, "fine_labels") for f in files)
        return xtr, ytr, xte, yte
    raise ConfigError("stream.dataset", f"unknown image dataset {name!r}; known: "
                      f"{', '.join(VISION_DATASETS)}")


def _locate(name: str, dirs: Sequence[Path], names: Sequence[str], gz: bool = False) -> list[Path]:
    """The files ``names`` from the first folder of ``dirs`` holding all of them."""
    for d in dirs:
        found = [_existing(d / n, gz) for n in names]
        if all(f is not None for f in found):
            return found  # type: ignore[return-value]
    missing = [n for n in names if all(_existing(d / n, gz) is None for d in dirs)]
    listed = [f"{n}{'[.gz]' if gz else ''}" for n in (missing or names)]
    where = ", ".join(str(d) for d in dirs)
    raise ConfigError(
        "stream.path",
        f"{name}: missing {', '.join(listed)} (no download is ever attempted); "
        f"looked in: {where}",
    )


def _existing(path: Path, gz: bool) -> Path | None:
    if path.is_file():
        return path
    if gz and path.with_name(path.name + ".gz").is_file():
        return path.with_name(path.name + ".gz")
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, unsigned bytes), maybe gzipped."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError("stream.path", f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ConfigError("stream.path", f"{path}: header says {dims}, file has {data.size} bytes")
    return data.reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR pickles need: NumPy arrays, dtypes, plain containers."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def _read_cifar(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle -> (uint8 [N, 3, 32, 32], int64 [N])."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError) as e:
        raise ConfigError("stream.path", f"{path} is not a CIFAR python pickle: {e}") from None
    if len(x) != len(y):
        raise ConfigError("stream.path", f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _images(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0).copy()


def _gray(x: np.ndarray) -> np.ndarray:
    """IDX images ``[N, H, W]`` -> ``[N, 1, H, W]``; checked to be 3-d."""
    if x.ndim != 3:
        raise ConfigError("stream.path", f"expected images [N, H, W], got shape {x.shape}")
    return x[:, None]


def _labels(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or len(y) != len(x):
        raise ConfigError("stream.path", f"{len(x)} images but labels of shape {y.shape}")
    return y.astype(np.int64)


def rotate_images(x: np.ndarray | torch.Tensor, angle_deg: float) -> np.ndarray | torch.Tensor:
    """Rotate images ``[N, C, H, W]`` by ``angle_deg`` counter-clockwise (as displayed,
    row 0 at the top) about their centre; bilinear, zeros outside. Returns the same type.
    """
    t = torch.as_tensor(x, dtype=torch.float32)
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    h, w = t.shape[-2:]
    # affine_grid maps output to input coordinates (each axis normalised to [-1, 1]):
    # the inverse rotation, conjugated by the pixel scale so non-square images work too
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=t.dtype)
    theta = theta.expand(t.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.numpy() if isinstance(x, np.ndarray) else out
