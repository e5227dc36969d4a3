"""Parquet shards laid out by task and split: discovery, checks and decoding.

A *shards* stream (``stream.dataset: shards``) is a directory (a local path or any
``pyarrow.fs`` URI: ``s3://``, ``gs://``, ``hdfs://``, ``file://``) of Parquet files in
hive-style folders, one per task and split::

    PATH/task=0/split=train/part-000.parquet
    PATH/task=0/split=test/part-000.parquet
    PATH/task=0/split=val/part-000.parquet     (optional; every task or none)
    PATH/task=1/...

Each file holds a label column (integers ``>= 0``, ``stream.label_column``) and one
feature column (``stream.feature_columns: [x]``, default ``x``): raw uint8 pixels as
``binary`` / ``fixed_size_binary`` values, or a (fixed-size) list of uint8 or floats,
each row ``prod(stream.input_shape)`` values long. Tasks are the sorted ``task=`` values
(integers sort numerically), numbered 0..T-1; a split's rows are its files in path order,
each file in its own row order.

Only Parquet footers and the label columns are read here (to count rows, check the
schema and find each task's classes); pixels are read by the in-memory loader
(:func:`load_split`) or streamed (:mod:`llray.data.streaming`). Every problem is a
:class:`~llray.errors.ConfigError` naming the ``stream`` field and the file.

Example:
    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> _ = write_shards(root, {0: {"train": (np.zeros((4, 1, 2, 2), np.uint8), np.arange(4) % 2),
    ...                             "test": (np.zeros((2, 1, 2, 2), np.uint8), np.arange(2))}})
    >>> layout = discover(root, (1, 2, 2))
    >>> layout.rows(0, "train"), layout.classes(0), layout.decoded_bytes
    (4, (0, 1), 24)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llray.errors import ConfigError

SPLITS = ("train", "val", "test")
ROW_GROUP_BYTES = 8 * 2**20  # decoded features per row group that write_shards writes
_PART = re.compile(r"(?:^|/)task=([^/]+)/split=([^/]+)/")


@dataclass(frozen=True)
class SplitFiles:
    """The files of one task's split, in read order, with their row counts."""

    files: tuple[str, ...]
    rows: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.rows)


@dataclass(frozen=True)
class ShardLayout:
    """Where a shards stream lives and how to decode it (picklable: travels to actors).

    Attributes:
        uri: the ``stream.path`` as given.
        filesystem: the ``pyarrow.fs`` filesystem of ``uri``.
        x_column: the feature column; label_column: the label column.
        input_shape: each row's features reshaped to this.
        dtype: ``"uint8"`` (pixels, converted per batch) or ``"float32"``.
        task_values: the ``task=`` values, in task-id order.
        splits: ``((task_id, split), SplitFiles)`` pairs.
        task_classes: each task's sorted label values (train and test).
    """

    uri: str
    filesystem: Any
    x_column: str
    label_column: str
    input_shape: tuple[int, ...]
    dtype: str
    task_values: tuple[Any, ...]
    splits: tuple[tuple[tuple[int, str], SplitFiles], ...]
    task_classes: tuple[tuple[int, ...], ...]

    @property
    def num_tasks(self) -> int:
        return len(self.task_values)

    @property
    def num_classes(self) -> int:
        return max(max(c) for c in self.task_classes) + 1

    @property
    def has_val(self) -> bool:
        return all(self.rows(t, "val") > 0 for t in range(self.num_tasks))

    def split(self, task: int, split: str) -> SplitFiles:
        """The files of ``task``'s ``split`` (empty when there are none)."""
        return dict(self.splits).get((task, split), SplitFiles((), ()))

    def rows(self, task: int, split: str) -> int:
        return self.split(task, split).total

    def classes(self, task: int) -> tuple[int, ...]:
        return self.task_classes[task]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.input_shape) * np.dtype(self.dtype).itemsize

    @property
    def decoded_bytes(self) -> int:
        """Bytes of every split's features once decoded (uint8 or float32), labels aside."""
        return sum(sf.total for _, sf in self.splits) * self.row_bytes

    def decode(self, table: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(x [n, *input_shape], y [n] int64)`` from a pyarrow table or record batch."""
        x = decode_features(table.column(self.x_column), self.input_shape, self.dtype)
        y = np.asarray(table.column(self.label_column).to_numpy(zero_copy_only=False),
                       dtype=np.int64)
        return x, y


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` of a local path or a URI."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad URIs
        raise ConfigError("stream.path", f"cannot open {uri!r}: {e}") from None


def discover(uri: str, input_shape: tuple[int, ...], x_column: str = "x",
             label_column: str = "label") -> ShardLayout:
    """List, check and describe the shards under ``uri`` (footers and labels only)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ConfigError("stream.path", f"no shards directory at {uri!r}")
    found: dict[tuple[str, str], list[str]] = {}
    for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = f.path[len(root.rstrip("/")) + 1:]
        m = _PART.search(rel)
        if f.type == pafs.FileType.File and rel.endswith(".parquet") and m:
            found.setdefault((m.group(1), m.group(2)), []).append(f.path)
    if not found:
        raise ConfigError("stream.path", f"no task=<t>/split=<train|val|test>/*.parquet files "
                                         f"under {uri!r}")
    bad = sorted({s for _, s in found} - set(SPLITS))
    if bad:
        raise ConfigError("stream.path", f"unknown split folder split={bad[0]} under {uri!r}; "
                                         f"allowed: {', '.join(SPLITS)}")
    values = _sorted_values({t for t, _ in found})
    splits, classes, dtypes = [], [], set()
    for tid, v in enumerate(values):
        labels: list[np.ndarray] = []
        for s in SPLITS:
            paths = sorted(found.get((str(v), s), []))
            if not paths:
                if s != "val":
                    raise ConfigError("stream.path", f"task={v} has no split={s} files under "
                                                     f"{uri!r}")
                continue
            rows = []
            for p in paths:
                n, dt, y = _check_file(fs, p, input_shape, x_column, label_column)
                rows.append(n)
                dtypes.add(dt)
                if s != "val":
                    labels.append(y)
            splits.append(((tid, s), SplitFiles(tuple(paths), tuple(rows))))
        classes.append(tuple(int(c) for c in np.unique(np.concatenate(labels))))
    has_val = {tid for (tid, s), _ in splits if s == "val"}
    if has_val and len(has_val) != len(values):
        missing = next(v for i, v in enumerate(values) if i not in has_val)
        raise ConfigError("stream.path", f"task={missing} has no split=val files; give every "
                                         "task a validation split or none")
    if len(dtypes) > 1:
        raise ConfigError("stream.feature_columns", f"column {x_column!r} is uint8 in some files "
                                                    f"and float in others under {uri!r}")
    return ShardLayout(uri, fs, x_column, label_column, tuple(input_shape), dtypes.pop(),
                       tuple(values), tuple(splits), tuple(classes))


def _sorted_values(values: Iterable[str]) -> list[Any]:
    vals = list(values)
    if all(re.fullmatch(r"-?\d+", v) for v in vals):
        return sorted(int(v) for v in vals)
    return sorted(vals)


def _check_file(fs: Any, path: str, shape: tuple[int, ...], x_column: str,
                label_column: str) -> tuple[int, str, np.ndarray]:
    """``(rows, feature dtype, labels)`` of one shard; ConfigError naming it otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            n = pf.metadata.num_rows
            y = pf.read(columns=[label_column]).column(0) if label_column in schema.names else None
    except Exception as e:  # noqa: BLE001 - any unreadable file: name it
        raise ConfigError("stream.path", f"cannot read {path!r} as Parquet: {e}") from None
    for col, field in ((x_column, "stream.feature_columns"), (label_column, "stream.label_column")):
        if col not in schema.names:
            raise ConfigError(field, f"column {col!r} is not in {path!r}; columns: "
                                     f"{', '.join(schema.names)}")
    if not pa.types.is_integer(schema.field(label_column).type):
        raise ConfigError("stream.label_column", f"column {label_column!r} of {path!r} is "
                                                 f"{schema.field(label_column).type}, not integer")
    labels = y.to_numpy() if y.null_count == 0 else None
    if labels is None or (len(labels) and labels.min() < 0):
        raise ConfigError("stream.label_column", f"column {label_column!r} of {path!r} has null "
                                                 "or negative labels")
    return n, _feature_dtype(schema.field(x_column).type, shape, x_column, path), labels


def _feature_dtype(t: Any, shape: tuple[int, ...], name: str, path: str) -> str:
    import pyarrow as pa

    d = math.prod(shape)
    field = "stream.feature_columns"
    if pa.types.is_fixed_size_binary(t):
        if t.byte_width != d:
            raise ConfigError("stream.input_shape", f"{list(shape)} holds {d} values; column "
                                                    f"{name!r} of {path!r} has {t.byte_width}")
        return "uint8"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "uint8"
    if pa.types.is_fixed_size_list(t) and t.list_size != d:
        raise ConfigError("stream.input_shape", f"{list(shape)} holds {d} values; column "
                                                f"{name!r} of {path!r} has {t.list_size}")
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        v = t.value_type
        if pa.types.is_uint8(v):
            return "uint8"
        if pa.types.is_floating(v):
            return "float32"
    raise ConfigError(field, f"column {name!r} of {path!r} is {t}; expected binary (uint8 "
                             "pixels) or a list of uint8 or floats")


def decode_features(col: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """``[n, *shape]`` uint8 or float32 from a binary or list column (one copy at most)."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n, d = len(col), math.prod(shape)
    if pa.types.is_fixed_size_binary(col.type):
        buf = np.frombuffer(col.buffers()[1], np.uint8)
        flat = buf[col.offset * d:(col.offset + n) * d]
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        off_t = np.int64 if pa.types.is_large_binary(col.type) else np.int32
        offsets = np.frombuffer(col.buffers()[1], off_t)[col.offset:col.offset + n + 1]
        flat = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        if len(flat) != n * d or (n and np.any(np.diff(offsets) != d)):
            raise ConfigError("stream.input_shape", f"rows of column of {col.type} are not all "
                                                    f"{d} bytes long ({list(shape)})")
    else:
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if len(flat) != n * d:
            raise ConfigError("stream.input_shape", f"list rows are not all {d} values long")
    return np.ascontiguousarray(flat.reshape(n, *shape), dtype=np.dtype(dtype))


def load_split(layout: ShardLayout, task: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One task's split read whole into memory, rows in the layout's order."""
    import pyarrow.parquet as pq

    xs, ys = [], []
    for p in layout.split(task, split).files:
        with layout.filesystem.open_input_file(p) as fh:
            table = pq.read_table(fh, columns=[layout.x_column, layout.label_column])
        x, y = layout.decode(table)
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0, *layout.input_shape), layout.dtype), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def write_shards(root: str, tasks: Mapping[Any, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                 rows_per_file: int | None = None, compression: str = "zstd") -> list[str]:
    """Write ``{task: {split: (x, y)}}`` as shards under ``root`` (uint8 x as binary).

    For tests, benchmarks and users converting their own arrays. Returns the files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = []
    for tv, parts in tasks.items():
        for split, (x, y) in parts.items():
            d = os.path.join(root, f"task={tv}", f"split={split}")
            os.makedirs(d, exist_ok=True)
            step = rows_per_file or max(len(y), 1)
            for k, i in enumerate(range(0, max(len(y), 1), step)):
                xs = np.ascontiguousarray(x[i:i + step])
                width = int(np.prod(xs.shape[1:]))
                if xs.dtype == np.uint8:
                    col = pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(width), len(xs), [None, pa.py_buffer(xs.tobytes())])
                else:
                    col = pa.FixedSizeListArray.from_arrays(
                        pa.array(xs.reshape(-1).astype(np.float32)), width)
                table = pa.table({"x": col, "label": pa.array(np.asarray(y[i:i + step],
                                                                          np.int64))})
                path = os.path.join(d, f"part-{k:05d}.parquet")
                # row groups of ~8 MiB decoded: a reader holds one row group at a time
                group = max(1, ROW_GROUP_BYTES // max(width * xs.itemsize, 1))
                pq.write_table(table, path, compression=compression, row_group_size=group)
                written.append(path)
    return written
