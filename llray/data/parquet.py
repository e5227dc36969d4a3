"""Users' own tables: a Parquet file or a directory of them (hive partitions included).

A table holds one integer label column, optionally one integer task column, and the
features either as numeric columns (one per feature) or as one list column (a
``list<float>`` or fixed-size list per row, all of the same length). Every problem is a
:class:`~llray.errors.ConfigError` naming the ``stream`` field to fix.

Example:
    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> path = tempfile.mkdtemp() + "/t.parquet"
    >>> pq.write_table(pa.table({"a": [0.0, 1.0], "b": [2.0, 3.0], "label": [1, 0]}), path)
    >>> a = load_parquet(path)
    >>> a.x.tolist(), a.y.tolist(), a.num_classes
    ([[0.0, 2.0], [1.0, 3.0]], [1, 0], 2)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from llray.data.datasets import Arrays
from llray.errors import ConfigError


def load_parquet(
    path: str,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    task_column: str | None = None,
    input_shape: Sequence[int] | None = None,
    exclude: Sequence[str] = (),
) -> Arrays:
    """Read a Parquet file or directory into :class:`Arrays`.

    Args:
        path: a ``.parquet`` file or a directory of them (hive partitions become columns).
        label_column: integer class ids ``>= 0``; ``num_classes`` is the largest plus one.
        feature_columns: numeric columns, or one list column; default: every column
            except the label, task and ``exclude`` columns.
        task_column: integer (or string) task values; ``None``: the table has no tasks.
            Tasks are the sorted distinct values, numbered 0..T-1.
        input_shape: reshape each row's features to this, e.g. ``(1, 28, 28)``;
            default: flat ``(F,)``.
        exclude: more columns that are never features by default (e.g. a task column
            the stream does not use).

    Returns:
        :class:`Arrays` with float32 features and, with a task column, task ids.
    """
    table = _read(path)
    if table.num_rows == 0:
        raise ConfigError("stream.path", f"the table at {path!r} has no rows")
    names = table.column_names
    _need(label_column, names, "stream.label_column")
    if task_column is not None:
        _need(task_column, names, "stream.task_column")
    skip = {label_column, task_column, *exclude}
    features = list(feature_columns) if feature_columns else [n for n in names if n not in skip]
    if not features:
        raise ConfigError("stream.feature_columns", f"no feature columns left in {names}")
    for f in features:
        _need(f, names, "stream.feature_columns")
    x = _features(table, features)
    x = _reshape(x, input_shape)
    y = _labels(table, label_column)
    if task_column is None:
        return Arrays(x, y, int(y.max()) + 1)
    values, task = _task_ids(table, task_column)
    return Arrays(x, y, int(y.max()) + 1, task=task, task_values=values)


def _read(path: str):
    import pyarrow.dataset as ds

    if not os.path.exists(path):
        raise ConfigError("stream.path", f"no Parquet file or directory at {path!r}")
    try:
        return ds.dataset(path, format="parquet", partitioning="hive").to_table()
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise ConfigError("stream.path", f"cannot read {path!r} as Parquet: {e}") from None


def _need(column: str, names: list[str], field: str) -> None:
    if column not in names:
        listed = ", ".join(names)
        raise ConfigError(field, f"column {column!r} is not in the table; columns: {listed}")


def _column(table, name: str, field: str):
    import pyarrow as pa

    col = table[name].combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.null_count:
        raise ConfigError(field, f"column {name!r} has {col.null_count} null values")
    return col


def _features(table, columns: list[str]) -> np.ndarray:
    """``[N, F]`` float32 from numeric columns or from one list column."""
    import pyarrow as pa

    field = "stream.feature_columns"
    cols = [_column(table, c, field) for c in columns]
    lists = [c for c, col in zip(columns, cols) if _is_list(col.type)]
    if lists and len(columns) > 1:
        raise ConfigError(field, f"list column {lists[0]!r} must be the only feature column")
    if lists:
        return _list_features(cols[0], columns[0])
    for name, col in zip(columns, cols):
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                or pa.types.is_boolean(col.type)):
            raise ConfigError(field, f"column {name!r} is {col.type}, not numeric")
    return np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols]).astype(np.float32)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_features(col, name: str) -> np.ndarray:
    import pyarrow.compute as pc

    field = "stream.feature_columns"
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ConfigError(
            field, f"list column {name!r} has rows of lengths {lengths.min()}..{lengths.max()}"
        )
    values = col.flatten()
    if values.null_count:
        raise ConfigError(field, f"list column {name!r} holds null values")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), int(lengths[0]))


def _reshape(x: np.ndarray, input_shape: Sequence[int] | None) -> np.ndarray:
    if input_shape is None:
        return np.ascontiguousarray(x)
    if math.prod(input_shape) != x.shape[1]:
        raise ConfigError(
            "stream.input_shape",
            f"{list(input_shape)} holds {math.prod(input_shape)} values, "
            f"the table has {x.shape[1]} features per row",
        )
    return np.ascontiguousarray(x.reshape(len(x), *input_shape))


def _labels(table, name: str) -> np.ndarray:
    import pyarrow as pa

    col = _column(table, name, "stream.label_column")
    if not pa.types.is_integer(col.type):
        raise ConfigError("stream.label_column", f"column {name!r} is {col.type}, not integer")
    y = col.to_numpy(zero_copy_only=False).astype(np.int64)
    if y.min() < 0:
        raise ConfigError("stream.label_column", f"column {name!r} has negative labels")
    return y


def _task_ids(table, name: str) -> tuple[tuple, np.ndarray]:
    """The sorted distinct task values and each row's task id (its position among them)."""
    import pyarrow as pa

    col = _column(table, name, "stream.task_column")
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)):
        raise ConfigError(
            "stream.task_column", f"column {name!r} is {col.type}, not integer or string"
        )
    values, ids = np.unique(col.to_numpy(zero_copy_only=False), return_inverse=True)
    return tuple(v.item() if hasattr(v, "item") else v for v in values), ids.astype(np.int64)
