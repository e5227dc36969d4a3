"""TinyImageNet and CORe50 read from the user's local copy, in their official layouts.

Nothing is downloaded. Images are returned as uint8 ``[N, 3, H, W]`` pixels (the models
turn them into floats per batch, :mod:`llray.data.pixels`). A missing folder or file, or
a file that is not what the layout says, is a :class:`~llray.errors.ConfigError` on
``stream.path`` that names the path (the CLI: one line, exit 2, nothing written).

**TinyImageNet** (``tiny-imagenet-200.zip`` from the CS231n site, extracted; ``root`` is
the ``tiny-imagenet-200`` folder or the folder holding it)::

    wnids.txt                                  200 class ids (WordNet ids), one a line
    train/<wnid>/images/<wnid>_<k>.JPEG        500 training images per class, 64x64
    val/val_annotations.txt                    "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
    val/images/val_<k>.JPEG                    10 000 images, 50 per class

The labelled ``val`` split is the test set (the ``test`` folder has no labels), as in
Avalanche, Mammoth and the papers that report split TinyImageNet. Class ``c`` is the
``c``-th wnid in sorted order (torchvision ``ImageFolder``'s order). Grey JPEGs are
converted to RGB.

**CORe50** (Lomonaco & Maltoni 2017, "CORe50: a New Dataset and Benchmark for Continuous
Object Recognition", CoRL), 128x128, 50 objects in 10 categories, 11 sessions. Either of
the official distributions, ``root`` being the folder that holds it:

- ``core50_imgs.npz`` (key ``x``: ``[164866, 128, 128, 3]`` uint8) with ``paths.pkl`` (the
  relative path of each image, ``sS/oO/C_SS_OO_FFF.png``), or
- the PNG folders of ``core50_128x128.zip``: ``core50_128x128/s<S>/o<O>/*.png``.

Session and object come from the path. The official protocol trains on sessions 1, 2,
4, 5, 6, 8, 9, 11 and tests on sessions 3, 7, 10 (:data:`CORE50_TRAIN_SESSIONS`).

Example:
    >>> read_tinyimagenet("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llray.errors.ConfigError: stream.path: tinyimagenet: no tiny-imagenet-200 folder...
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llray.errors import ConfigError

TINY_SHAPE = (3, 64, 64)
CORE50_SHAPE = (3, 128, 128)
CORE50_OBJECTS = 50
CORE50_TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)
CORE50_TEST_SESSIONS = (3, 7, 10)
_CORE50_PATH = re.compile(r"s(\d+)/o(\d+)/[^/]+\.png$")


def _bad(path: Path | str, why: str) -> ConfigError:
    return ConfigError("stream.path", f"{path}: {why}")


def _decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file -> uint8 ``[3, H, W]``; ConfigError naming the file if it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _bad(path, f"not a readable image ({e})") from None
    if arr.shape[:2] != size:
        raise _bad(path, f"is {arr.shape[1]}x{arr.shape[0]} pixels, expected {size[1]}x{size[0]}")
    return arr.transpose(2, 0, 1)


def _decode_all(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """All ``paths`` decoded into one uint8 ``[N, 3, H, W]`` array (a few threads)."""
    out = np.empty((len(paths), 3, *size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _decode(paths[i], size)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(len(paths))))
    return out


# -- TinyImageNet ------------------------------------------------------------------------
def _tiny_root(root: Path) -> Path:
    for d in (root, root / "tiny-imagenet-200"):
        if (d / "wnids.txt").is_file():
            return d
    raise ConfigError("stream.path", f"tinyimagenet: no tiny-imagenet-200 folder (wnids.txt) "
                      f"in {root} or {root / 'tiny-imagenet-200'}; no download is attempted")


def read_tinyimagenet(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of TinyImageNet in ``root``: uint8
    ``[N, 3, 64, 64]`` images, int64 labels (the ``val`` split is the test set)."""
    d = _tiny_root(Path(root))
    wnids = sorted({w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise _bad(d / "wnids.txt", "lists no class ids")
    label = {w: i for i, w in enumerate(wnids)}
    train_paths, train_y = [], []
    for w in wnids:
        folder = d / "train" / w / "images"
        if not folder.is_dir():
            raise _bad(folder, "missing (every wnid of wnids.txt needs its training images)")
        files = sorted(folder.glob("*.JPEG"))
        if not files:
            raise _bad(folder, "holds no .JPEG images")
        train_paths += files
        train_y += [label[w]] * len(files)
    test_paths, test_y = _tiny_val(d, label)
    size = TINY_SHAPE[1:]
    return (_decode_all(train_paths, size), np.asarray(train_y, dtype=np.int64),
            _decode_all(test_paths, size), np.asarray(test_y, dtype=np.int64))


def _tiny_val(d: Path, label: dict[str, int]) -> tuple[list[Path], list[int]]:
    ann = d / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise _bad(ann, "missing (the labels of the val split, used as the test set)")
    paths, ys = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or cols[1] not in label:
            raise _bad(ann, f"line {n} is not '<file>\\t<wnid>...' with a wnid of wnids.txt")
        path = d / "val" / "images" / cols[0]
        if not path.is_file():
            raise _bad(path, f"missing (named on line {n} of {ann.name})")
        paths.append(path)
        ys.append(label[cols[1]])
    if not paths:
        raise _bad(ann, "lists no images")
    return paths, ys


# -- CORe50 --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Core50:
    """CORe50 in memory: uint8 images ``[N, 3, 128, 128]``, object ids 0..49, sessions."""

    x: np.ndarray
    obj: np.ndarray  # [N] int64, object id - 1
    session: np.ndarray  # [N] int64, 1..11


class _ListUnpickler(pickle.Unpickler):
    """``paths.pkl`` is a list of strings: no class is ever needed, so none is allowed."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in paths.pkl")


def read_core50(root: str | Path) -> Core50:
    """CORe50 128x128 from ``root`` (``core50_imgs.npz`` + ``paths.pkl``, or the PNG folders)."""
    root = Path(root)
    if (root / "core50_imgs.npz").is_file():
        return _core50_npz(root)
    for d in (root / "core50_128x128", root):
        if any(d.glob("s*/o*")):
            return _core50_pngs(d)
    raise ConfigError("stream.path", f"core50: neither core50_imgs.npz (with paths.pkl) nor the "
                      f"PNG folders s<S>/o<O>/ in {root} or {root / 'core50_128x128'}; "
                      "no download is attempted")


def _session_object(rel: str, where: Path) -> tuple[int, int]:
    m = _CORE50_PATH.search(rel.replace("\\", "/"))
    if m is None:
        raise _bad(where, f"{rel!r} is not a CORe50 path s<S>/o<O>/<name>.png")
    s, o = int(m.group(1)), int(m.group(2))
    if not (1 <= s <= 11 and 1 <= o <= CORE50_OBJECTS):
        raise _bad(where, f"{rel!r}: session must be 1..11 and object 1..50")
    return s, o


def _core50_npz(root: Path) -> Core50:
    npz, pkl = root / "core50_imgs.npz", root / "paths.pkl"
    if not pkl.is_file():
        raise _bad(pkl, "missing (core50_imgs.npz needs paths.pkl to know each image's "
                   "session and object)")
    try:
        with open(pkl, "rb") as f:
            rel = _ListUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise _bad(pkl, f"not a pickled list of paths ({e})") from None
    if not isinstance(rel, list) or not all(isinstance(p, str) for p in rel):
        raise _bad(pkl, "not a pickled list of paths")
    try:
        with np.load(npz) as z:
            x = z["x"]
    except (OSError, ValueError, KeyError) as e:
        raise _bad(npz, f"not an npz with key 'x' ({e})") from None
    if x.dtype != np.uint8 or x.shape[1:] != (128, 128, 3) or len(x) != len(rel):
        raise _bad(npz, f"expected {len(rel)} uint8 images 128x128x3 (one per path of "
                   f"paths.pkl), got {x.dtype} {x.shape}")
    so = np.array([_session_object(p, pkl) for p in rel], dtype=np.int64).reshape(-1, 2)
    return Core50(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), so[:, 1] - 1, so[:, 0])


def _core50_pngs(d: Path) -> Core50:
    files = sorted(d.glob("s*/o*/*.png"))
    if not files:
        raise _bad(d, "the s<S>/o<O>/ folders hold no .png images")
    so = np.array([_session_object(str(f.relative_to(d)), f) for f in files], dtype=np.int64)
    return Core50(_decode_all(files, CORE50_SHAPE[1:]), so[:, 1] - 1, so[:, 0])


def core50_class_groups(num_tasks: int, order: np.ndarray) -> list[tuple[int, ...]]:
    """NC batches over the objects in ``order``: with 9 tasks the official protocol's
    first batch of 10 objects then 5 per batch; otherwise groups differing by at most one.

    Example:
        >>> [len(g) for g in core50_class_groups(9, np.arange(50))]
        [10, 5, 5, 5, 5, 5, 5, 5, 5]
    """
    if num_tasks == 9:
        cuts = [10 + 5 * k for k in range(8)]
        return [tuple(sorted(int(c) for c in g)) for g in np.split(order, cuts)]
    return [tuple(sorted(int(c) for c in g)) for g in np.array_split(order, num_tasks)]
