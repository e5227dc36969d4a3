"""The store's layout and schemas: columns, statuses, run metadata, file checks.

The columns are :data:`R_MATRIX_SCHEMA` and :data:`RUNS_SCHEMA`; the ``experiment``
column lives in the directory name (hive partitioning), so the files themselves hold
:data:`R_MATRIX_FILE_SCHEMA` and :data:`RUNS_FILE_SCHEMA`. Columns added after the
first release are in :data:`OPTIONAL_COLUMNS`: a file written before them still reads,
each missing column filled with its default (``split`` "test", ``error`` null).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from llray.errors import ConfigError

PARTITION = "experiment"
#: ``stopped``: a scheduler (ASHA, an Optuna pruner) ended the run before its last task.
STATUSES = ("ok", "diverged", "stopped", "failed")
#: ``split`` of an R entry: accuracy on the task's test data or on its validation data.
SPLITS = ("test", "val")
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_RUN_COLUMNS = [
    ("run_id", pa.string()),
    ("experiment", pa.string()),
    ("strategy", pa.string()),
    ("benchmark", pa.string()),
    ("scenario", pa.string()),
    ("seed", pa.int64()),
    ("task_order", pa.list_(pa.int32())),
]

#: One row per R entry. ``step`` 0 = random init, i = after the i-th task of the order;
#: ``eval_pos`` is the 1-based position of ``eval_task`` in the order, so
#: ``R[step, eval_pos - 1] == accuracy`` and the diagonal is ``step == eval_pos``.
R_MATRIX_SCHEMA = pa.schema(
    _RUN_COLUMNS
    + [
        ("step", pa.int32()),
        ("train_task", pa.int32()),  # null at step 0
        ("eval_task", pa.int32()),  # task id
        ("eval_pos", pa.int32()),
        ("accuracy", pa.float64()),  # NaN where the run never got (diverged, stopped)
        ("n_test", pa.int64()),
        ("split", pa.string()),  # "test" | "val" (a file without the column: "test")
    ]
)

#: One row per run; metrics are null where undefined, ``config`` is the run's JSON.
RUNS_SCHEMA = pa.schema(
    _RUN_COLUMNS
    + [
        ("status", pa.string()),  # "ok" | "diverged" | "stopped" | "failed"
        ("error", pa.string()),  # why the run failed or diverged; null when ok
        ("acc", pa.float64()),
        ("bwt", pa.float64()),
        ("fwt", pa.float64()),
        ("forgetting", pa.float64()),
        ("wall_s", pa.float64()),
        ("train_samples_per_s", pa.float64()),
        ("config", pa.string()),
        ("started_at", _TIMESTAMP),
        ("finished_at", _TIMESTAMP),
    ]
)


def _without_partition(schema: pa.Schema) -> pa.Schema:
    return schema.remove(schema.get_field_index(PARTITION))


#: What the Parquet files hold: the schemas above less the partition column.
R_MATRIX_FILE_SCHEMA = _without_partition(R_MATRIX_SCHEMA)
RUNS_FILE_SCHEMA = _without_partition(RUNS_SCHEMA)

_DATASETS = {"r_matrix": R_MATRIX_SCHEMA, "runs": RUNS_SCHEMA}

#: Columns a file may lack (it was written before they existed), with the value each
#: missing one reads as. Readers fill them in; compaction writes them out.
OPTIONAL_COLUMNS: dict[str, dict[str, Any]] = {"r_matrix": {"split": "test"},
                                               "runs": {"error": None}}
_OPTIONAL = {name for columns in OPTIONAL_COLUMNS.values() for name in columns}
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ResultsError(ConfigError):
    """A results directory llray cannot read: names the file (or ``output``) and why.

    A :class:`~llray.errors.ConfigError` (so the CLI prints one line and exits 2) and
    therefore a ``ValueError``.
    """


@dataclass(frozen=True)
class RunMeta:
    """What the store records about a run besides its :class:`~llray.learner.RunResult`.

    Times are UTC; a naive ``datetime`` is taken to be UTC already.

    Example:
        >>> RunMeta("ab12", "demo", "ewc", "digits", "domain", 0, [1, 0]).order
        (1, 0)
    """

    run_id: str
    experiment: str
    strategy: str
    benchmark: str
    scenario: str
    seed: int
    order: Sequence[int]
    config: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(
                f"run_id must be letters, digits, '.', '_' or '-' (not first), got {self.run_id!r}"
            )
        if not isinstance(self.experiment, str) or not self.experiment:
            raise ValueError(f"experiment must be a non-empty string, got {self.experiment!r}")
        object.__setattr__(self, "order", tuple(int(i) for i in self.order))


@dataclass
class Results:
    """A loaded results directory: ``r_matrix`` and ``runs`` as pandas DataFrames."""

    r_matrix: pd.DataFrame
    runs: pd.DataFrame

    def r_matrix_of(self, run_id: str, split: str = "test") -> np.ndarray:
        """The ``[T + 1, T]`` R of one run; see :func:`~llray.results.read.r_matrix_of`."""
        from llray.results.read import r_matrix_of

        return r_matrix_of(self.r_matrix, run_id, split)


def _repeat(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _filesystem(output_dir: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of ``output_dir`` (a local path or a URI)."""
    text = os.fspath(output_dir)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _partition_dir(root: str, dataset: str, experiment: str) -> str:
    return f"{root}/{dataset}/{PARTITION}={quote(experiment, safe='')}"


def _experiment_of(path: str, base: str) -> str:
    """The experiment a file's hive directory names; ResultsError if it has none."""
    parts = path[len(base) + 1 :].split("/")
    prefix = f"{PARTITION}="
    if len(parts) != 2 or not parts[0].startswith(prefix):
        raise ResultsError(path, f"not in a '{prefix}NAME' directory directly under {base}")
    return unquote(parts[0][len(prefix) :])


def schema_problems(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Why a file's ``actual`` schema is not ``expected`` (names and types; nullability
    ignored); empty for an llray file. Readers of the store name a file with these.

    A column of :data:`OPTIONAL_COLUMNS` may be missing (a file from an older llray).

    Example:
        >>> old = R_MATRIX_FILE_SCHEMA.remove(R_MATRIX_FILE_SCHEMA.get_field_index("split"))
        >>> schema_problems(old, R_MATRIX_FILE_SCHEMA)
        []
        >>> schema_problems(old.remove(0), R_MATRIX_FILE_SCHEMA)
        ['missing column run_id (string)']
    """
    names = set(actual.names)
    problems = [f"missing column {f.name} ({f.type})" for f in expected
                if f.name not in names and f.name not in _OPTIONAL]
    problems += [f"unexpected column {n}" for n in actual.names if n not in expected.names]
    for f in expected:
        if f.name in names and not actual.field(f.name).type.equals(f.type):
            problems.append(f"column {f.name} is {actual.field(f.name).type}, expected {f.type}")
    return problems


