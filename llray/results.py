"""The Parquet results store: every R entry and one row per run, partitioned by experiment.

Layout under an output directory (a local path or any ``pyarrow.fs`` URI such as
``s3://bucket/results``)::

    OUTPUT/r_matrix/experiment=NAME/<run_id>.parquet    one row per R entry
    OUTPUT/runs/experiment=NAME/<run_id>.parquet        one row per run

The columns are :data:`R_MATRIX_SCHEMA` and :data:`RUNS_SCHEMA`; the ``experiment``
column lives in the directory name (hive partitioning), so the files themselves hold
:data:`R_MATRIX_FILE_SCHEMA` and :data:`RUNS_FILE_SCHEMA`. Each file is written under a
temporary name in its final directory and renamed, so a reader never sees half a file;
a run's R rows are written before its run row, so a run listed in ``runs/`` is complete.
Writing a run again replaces its file (idempotent by ``run_id``). :func:`write_runs`
puts many runs in one file named ``batch-<hash of the run ids>.parquet``; if the same run
ends up in two files, :func:`load` and :func:`finished_run_ids` still return it once: its
newest copy (see ``docs/results.md`` for the rule and the SQL equivalent).
:func:`compact` merges the many small files of each experiment into a few large ones.

A run's status is one of :data:`STATUSES`: ``ok``, ``diverged`` (the loss stopped being
finite), ``stopped`` (a scheduler such as ASHA ended it before its last task) or
``failed``. Entries a run never reached (the rows after a divergence or a stop) are
stored as NaN accuracy, exactly as in R, so aggregates over them are NaN too; metrics in
``runs/`` that are not defined (ACC of a diverged or stopped run, BWT with one task)
are null.

Example:
    >>> import numpy as np, tempfile
    >>> from llray.learner import RunResult
    >>> R = np.array([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]])
    >>> res = RunResult(R=R, order=(1, 0), status="ok", n_test=np.array([50, 50]),
    ...                 wall_s=1.0, train_s=0.5, samples_trained=100)
    >>> meta = RunMeta("r1", "demo", "naive", "digits", "domain", 0, (1, 0), {"seed": 0})
    >>> out = tempfile.mkdtemp()
    >>> write_run(out, meta, res)
    >>> results = load(out)
    >>> bool((r_matrix_of(results, "r1") == R).all()), results.runs.acc.round(2).tolist()
    (True, [0.7])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llray import metrics
from llray.errors import ConfigError

if TYPE_CHECKING:  # readers of results need no torch
    from llray.learner import RunResult

__all__ = [
    "PARTITION",
    "RUNS_FILE_SCHEMA",
    "RUNS_SCHEMA",
    "R_MATRIX_FILE_SCHEMA",
    "R_MATRIX_SCHEMA",
    "STATUSES",
    "CompactStats",
    "Results",
    "ResultsError",
    "RunMeta",
    "check_writable",
    "compact",
    "finished_run_ids",
    "load",
    "load_r_matrix",
    "load_runs",
    "r_matrix_of",
    "r_matrix_stack",
    "r_matrix_table",
    "runs_table",
    "write_run",
    "write_runs",
]

PARTITION = "experiment"
#: ``stopped``: a scheduler (ASHA, an Optuna pruner) ended the run before its last task.
STATUSES = ("ok", "diverged", "stopped", "failed")
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
    ]
)

#: One row per run; metrics are null where undefined, ``config`` is the run's JSON.
RUNS_SCHEMA = pa.schema(
    _RUN_COLUMNS
    + [
        ("status", pa.string()),  # "ok" | "diverged" | "stopped" | "failed"
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

    def r_matrix_of(self, run_id: str) -> np.ndarray:
        """The ``[T + 1, T]`` R of one run; see :func:`r_matrix_of`."""
        return r_matrix_of(self.r_matrix, run_id)


# -- building tables ----------------------------------------------------------------------
def _checked(meta: RunMeta, result: RunResult) -> np.ndarray:
    """``result.R`` as float64 after checking it matches ``meta``; ValueError otherwise."""
    if tuple(int(i) for i in result.order) != meta.order:
        raise ValueError(
            f"run {meta.run_id}: meta.order {list(meta.order)} != result.order "
            f"{list(result.order)}"
        )
    T = len(meta.order)
    R = np.asarray(result.R, dtype=np.float64)
    if T < 1 or R.shape != (T + 1, T):
        raise ValueError(f"run {meta.run_id}: R must have shape {(T + 1, T)}, got {R.shape}")
    if np.shape(result.n_test) != (T,):
        raise ValueError(f"run {meta.run_id}: n_test must have {T} entries")
    if result.status not in STATUSES:
        raise ValueError(f"run {meta.run_id}: status must be one of {STATUSES}")
    return R


def _repeat(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _run_columns(meta: RunMeta, n: int) -> dict[str, pa.Array]:
    """The columns both datasets start with, each repeated ``n`` times."""
    values = {
        "run_id": meta.run_id,
        "experiment": meta.experiment,
        "strategy": meta.strategy,
        "benchmark": meta.benchmark,
        "scenario": meta.scenario,
        "seed": int(meta.seed),
        "task_order": list(meta.order),
    }
    return {name: _repeat(values[name], type_, n) for name, type_ in _RUN_COLUMNS}


def r_matrix_table(meta: RunMeta, result: RunResult) -> pa.Table:
    """The ``(T + 1) · T`` R entries of one run as a table with :data:`R_MATRIX_SCHEMA`.

    Example:
        >>> import numpy as np
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((3, 2)), (1, 0), "ok", np.array([5, 5]), 0.0, 0.0, 0)
        >>> t = r_matrix_table(RunMeta("r1", "x", "naive", "digits", "domain", 0, (1, 0)), res)
        >>> t.num_rows, t.column("eval_task").to_pylist()[:2]
        (6, [1, 0])
    """
    R = _checked(meta, result)
    T = len(meta.order)
    order = np.asarray(meta.order, dtype=np.int32)
    step = np.repeat(np.arange(T + 1, dtype=np.int32), T)
    eval_pos = np.tile(np.arange(1, T + 1, dtype=np.int32), T + 1)
    columns = _run_columns(meta, (T + 1) * T)
    columns["step"] = pa.array(step)
    columns["train_task"] = pa.array(order[np.maximum(step - 1, 0)], mask=step == 0)
    columns["eval_task"] = pa.array(order[eval_pos - 1])
    columns["eval_pos"] = pa.array(eval_pos)
    columns["accuracy"] = pa.array(R.ravel())
    columns["n_test"] = pa.array(np.tile(np.asarray(result.n_test, dtype=np.int64), T + 1))
    return pa.table(columns, schema=R_MATRIX_SCHEMA)


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def runs_table(meta: RunMeta, result: RunResult) -> pa.Table:
    """The run's one row (status, metrics, timings, config) with :data:`RUNS_SCHEMA`.

    Example:
        >>> import numpy as np
        >>> from llray.learner import RunResult
        >>> R = np.array([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]])
        >>> res = RunResult(R, (0, 1), "ok", np.array([5, 5]), 2.0, 1.0, 300)
        >>> row = runs_table(RunMeta("r1", "x", "naive", "d", "domain", 0, (0, 1)), res)
        >>> row.column("train_samples_per_s").to_pylist(), round(row["bwt"][0].as_py(), 3)
        ([300.0], -0.3)
    """
    m = metrics.summary(_checked(meta, result))
    values = {
        "status": result.status,
        **{k: _finite_or_none(m[k]) for k in ("acc", "bwt", "fwt", "forgetting")},
        "wall_s": float(result.wall_s),
        "train_samples_per_s": float(result.train_samples_per_s),
        "config": json.dumps(meta.config, sort_keys=True, default=str),
        "started_at": _utc(meta.started_at),
        "finished_at": _utc(meta.finished_at),
    }
    columns = _run_columns(meta, 1)
    for f in RUNS_SCHEMA:
        if f.name not in columns:
            columns[f.name] = pa.array([values[f.name]], f.type)
    return pa.table(columns, schema=RUNS_SCHEMA)


# -- filesystem ---------------------------------------------------------------------------
def _filesystem(output_dir: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of ``output_dir`` (a local path or a URI)."""
    text = os.fspath(output_dir)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def check_writable(output_dir: str | os.PathLike[str]) -> None:
    """Create ``output_dir`` and check a file can be written there, before any work.

    Raises:
        ConfigError: ``output`` field, when the directory cannot be created or written.

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp() + "/new/results")
    """
    try:
        fs, root = _filesystem(output_dir)
        fs.create_dir(root, recursive=True)
        probe = f"{root}/.llray-write-check-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as sink:
            sink.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ConfigError("output", f"cannot write results to {os.fspath(output_dir)!r}: {e}") from None


def _write_atomic(
    fs: pafs.FileSystem, path: str, table: pa.Table, mtime_ns: int | None = None
) -> None:
    """Write ``table`` to a hidden temporary file next to ``path``, then rename it.

    ``mtime_ns`` (local files only) back-dates the file: :func:`compact` gives a merged
    file the time of the newest file it merges, so that a copy of a run written while
    it ran stays the newer one.
    """
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(tmp) as sink:
                pq.write_table(table, sink, compression="zstd")
            fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except (OSError, pa.ArrowException):
            pass
        raise


def _partition_dir(root: str, dataset: str, experiment: str) -> str:
    return f"{root}/{dataset}/{PARTITION}={quote(experiment, safe='')}"


def _file_name(run_ids: Sequence[str]) -> str:
    """``<run_id>.parquet`` for one run, ``batch-<hash of the sorted ids>.parquet`` else."""
    if len(run_ids) == 1:
        return f"{run_ids[0]}.parquet"
    digest = hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:16]
    return f"batch-{digest}.parquet"


def write_runs(
    output_dir: str | os.PathLike[str], items: Iterable[tuple[RunMeta, RunResult]]
) -> None:
    """Write many runs: per experiment, one ``r_matrix`` file and one ``runs`` file.

    The R files of every experiment are written before the run files, each atomically.
    A run id given twice is written once (the last one). Writing the same set of runs
    again replaces the same files.

    Example:
        >>> import numpy as np, tempfile
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((2, 1)), (0,), "ok", np.array([5]), 0.0, 0.0, 0)
        >>> metas = [RunMeta(f"r{s}", "x", "naive", "d", "domain", s, (0,)) for s in range(3)]
        >>> out = tempfile.mkdtemp()
        >>> write_runs(out, [(m, res) for m in metas])
        >>> sorted(finished_run_ids(out))
        ['r0', 'r1', 'r2']
    """
    by_experiment: dict[str, dict[str, tuple[RunMeta, RunResult]]] = {}
    for meta, result in items:
        by_experiment.setdefault(meta.experiment, {})[meta.run_id] = (meta, result)
    fs, root = _filesystem(output_dir)
    for dataset, build in (("r_matrix", r_matrix_table), ("runs", runs_table)):
        for experiment, runs in by_experiment.items():
            table = pa.concat_tables([build(m, r) for m, r in runs.values()])
            path = f"{_partition_dir(root, dataset, experiment)}/{_file_name(list(runs))}"
            _write_atomic(fs, path, table.drop_columns([PARTITION]))


def write_run(output_dir: str | os.PathLike[str], meta: RunMeta, result: RunResult) -> None:
    """Write one run's R entries and run row as ``<run_id>.parquet`` files (idempotent).

    Example:
        >>> import numpy as np, tempfile
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((2, 1)), (0,), "ok", np.array([5]), 0.0, 0.0, 0)
        >>> out = tempfile.mkdtemp()
        >>> write_run(out, RunMeta("r1", "x", "naive", "d", "domain", 0, (0,)), res)
        >>> finished_run_ids(out)
        {'r1'}
    """
    write_runs(output_dir, [(meta, result)])


# -- reading ------------------------------------------------------------------------------
_COMPACTED = "compact-"  # name prefix of the files :func:`compact` writes


def _data_files(fs: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    """The Parquet files under ``base`` (hidden and ``_`` names skipped), sorted by path."""
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = [
        info
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    ]
    return sorted(infos, key=lambda info: info.path)


def _age_ranks(infos: Sequence[pafs.FileInfo]) -> np.ndarray:
    """Each file's rank from oldest to newest: by modification time, then a file of one
    run or batch before a merged one (ties: the same rows, or a run written again right
    after a compaction), then by path."""
    keys = [(i.mtime_ns or 0, not i.base_name.startswith(_COMPACTED), i.path) for i in infos]
    ranks = np.empty(len(infos), dtype=np.int64)
    ranks[sorted(range(len(infos)), key=keys.__getitem__)] = np.arange(len(infos))
    return ranks


def _experiment_of(path: str, base: str) -> str:
    """The experiment a file's hive directory names; ResultsError if it has none."""
    parts = path[len(base) + 1 :].split("/")
    prefix = f"{PARTITION}="
    if len(parts) != 2 or not parts[0].startswith(prefix):
        raise ResultsError(path, f"not in a '{prefix}NAME' directory directly under {base}")
    return unquote(parts[0][len(prefix) :])


def schema_problems(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Why a file's ``actual`` schema is not ``expected`` (names and types; nullability
    ignored); empty for an llray file. Readers of the store name a file with these."""
    names = set(actual.names)
    problems = [f"missing column {f.name} ({f.type})" for f in expected if f.name not in names]
    problems += [f"unexpected column {n}" for n in actual.names if n not in expected.names]
    for f in expected:
        if f.name in names and not actual.field(f.name).type.equals(f.type):
            problems.append(f"column {f.name} is {actual.field(f.name).type}, expected {f.type}")
    return problems


class _Vanished(Exception):
    """A listed file was gone when it was opened (a compaction removed it meanwhile)."""


def _open_checked(fs: pafs.FileSystem, path: str, base: str, schema: pa.Schema) -> Any:
    """The open file and its ParquetFile, after checking its schema; the caller closes."""
    expected = _without_partition(schema)
    try:
        f = fs.open_input_file(path)
    except FileNotFoundError:
        raise _Vanished(path) from None
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(path, f"cannot read Parquet file: {e}") from None
    try:
        pf = pq.ParquetFile(f)
        problems = schema_problems(pf.schema_arrow, expected)
    except (OSError, pa.ArrowException) as e:
        f.close()
        raise ResultsError(path, f"cannot read Parquet file: {e}") from None
    if problems:
        f.close()
        kind = base.rsplit("/", 1)[-1]
        raise ResultsError(path, f"not an llray {kind} file: " + "; ".join(problems))
    return f, pf


def _read_file(
    fs: pafs.FileSystem, path: str, base: str, schema: pa.Schema, columns: list[str]
) -> pa.Table:
    """One file's ``columns`` (the partition column added), after checking its schema."""
    experiment = _experiment_of(path, base)
    expected = _without_partition(schema)
    file_columns = [c for c in columns if c != PARTITION]
    f, pf = _open_checked(fs, path, base, schema)
    try:
        table = pf.read(columns=file_columns, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(path, f"cannot read Parquet file: {e}") from None
    finally:
        f.close()
    table = table.cast(pa.schema([expected.field(c) for c in file_columns]))
    if PARTITION in columns:
        part = _repeat(experiment, pa.string(), table.num_rows)
        table = table.add_column(columns.index(PARTITION), schema.field(PARTITION), part)
    return table


def _columns(dataset: str, columns: Sequence[str] | None) -> list[str]:
    schema = _DATASETS[dataset]
    columns = list(schema.names if columns is None else columns)
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise ValueError(f"unknown {dataset} columns {unknown}; allowed: {schema.names}")
    return columns


def _read_dataset(
    output_dir: str | os.PathLike[str],
    dataset: str,
    columns: Sequence[str] | None,
    experiment: str | None,
    must_exist: bool = True,
) -> pa.Table:
    """All files of ``OUTPUT/<dataset>`` as one table (optionally one experiment's).

    A run stored in several files is read once, from its newest copy (:func:`_newest`).
    A file that a compaction removes between listing and reading makes the listing
    start again: the merged file holds its rows.
    """
    columns = _columns(dataset, columns)
    fs, root = _filesystem(output_dir)
    if must_exist and fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise ResultsError("output", f"results directory {os.fspath(output_dir)!r} does not exist")
    base = f"{root}/{dataset}"
    for attempt in range(5):
        infos = _data_files(fs, base)
        if experiment is not None:
            infos = [i for i in infos if _experiment_of(i.path, base) == experiment]
        try:
            return _read_newest(fs, base, dataset, columns, infos)
        except _Vanished as e:
            if attempt == 4:
                raise ResultsError(str(e), "removed while it was being read, five times") from None
    raise AssertionError("unreachable")


def _read_newest(fs: pafs.FileSystem, base: str, dataset: str, columns: list[str],
                 infos: list[pafs.FileInfo]) -> pa.Table:
    schema = _DATASETS[dataset]
    keys = ["run_id"] + (["finished_at"] if dataset == "runs" else [])
    read = columns + [k for k in keys if k not in columns]
    tables = _map(lambda i: _read_file(fs, i.path, base, schema, read), infos)
    if not tables:
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    table = pa.concat_tables(tables)
    keep = _newest(table, [t.num_rows for t in tables], _age_ranks(infos))
    if keep is not None:
        table = table.filter(pa.array(keep))
    return table.select(columns)


def _map(fn: Any, items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` in threads (Parquet reads release the GIL), order kept."""
    if len(items) <= 1:
        return [fn(p) for p in items]
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        return list(pool.map(fn, items))


def _newest(table: pa.Table, file_rows: Sequence[int], ranks: np.ndarray) -> np.ndarray | None:
    """Rows to keep so that each run comes from one file: the one with its newest copy.

    ``table`` is files concatenated (``file_rows`` rows each, age ``ranks``); a run whose
    rows are in several files keeps those of the file with the latest ``finished_at``
    for it (``runs`` only), then the newest file (:func:`_age_ranks`). None when every
    run is in one file already (nothing to drop). In ``runs`` one row per run remains.
    """
    if len(file_rows) < 2 or table.num_rows == 0:
        return None
    ids = pc.dictionary_encode(table["run_id"]).combine_chunks()
    codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_runs = len(ids.dictionary)
    file_of = np.repeat(np.arange(len(file_rows)), file_rows)
    starts = np.ones(len(codes), dtype=bool)  # first row of a run's stretch in a file
    starts[1:] = (codes[1:] != codes[:-1]) | (file_of[1:] != file_of[:-1])
    if not (np.bincount(codes[starts], minlength=n_runs) > 1).any():
        return None
    row_rank = ranks[file_of]
    if "finished_at" in table.column_names:  # runs: one row per copy
        fin = table["finished_at"].cast(pa.int64()).fill_null(_NO_TIME)
        order = np.lexsort((row_rank, fin.to_numpy(), codes))  # per run, newest last
        last = np.ones(len(order), dtype=bool)
        last[:-1] = codes[order][1:] != codes[order][:-1]
        keep = np.zeros(len(codes), dtype=bool)
        keep[order[last]] = True
        return keep
    best = np.full(n_runs, -1, dtype=np.int64)
    np.maximum.at(best, codes, row_rank)
    return row_rank == best[codes]


def load_runs(
    output_dir: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    experiment: str | None = None,
) -> pd.DataFrame:
    """The ``runs`` dataset as a DataFrame, one row per run id.

    Args:
        output_dir: results directory (local path or ``pyarrow.fs`` URI).
        columns: columns of :data:`RUNS_SCHEMA` to read (default: all).
        experiment: read only this experiment's partition.

    Raises:
        ResultsError: the directory does not exist, or a file in it is not an llray
            runs file (the message names the file and the mismatching columns).

    Example:
        >>> import tempfile
        >>> load_runs(tempfile.mkdtemp()).columns[:3].tolist()
        ['run_id', 'experiment', 'strategy']
    """
    return _read_dataset(output_dir, "runs", columns, experiment).to_pandas()


def load_r_matrix(
    output_dir: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    experiment: str | None = None,
) -> pd.DataFrame:
    """The ``r_matrix`` dataset as a DataFrame, one row per (run id, step, eval_pos).

    Arguments and errors as in :func:`load_runs`. Leaving out ``task_order`` makes
    large reads faster (it becomes one NumPy array per row in pandas).

    Example:
        >>> import tempfile
        >>> load_r_matrix(tempfile.mkdtemp(), columns=["run_id", "accuracy"]).shape
        (0, 2)
    """
    return _read_dataset(output_dir, "r_matrix", columns, experiment).to_pandas()


def load(output_dir: str | os.PathLike[str], experiment: str | None = None) -> Results:
    """Both datasets of a results directory as pandas DataFrames.

    The ``experiment`` column comes from the partition directory, as a string.

    Raises:
        ResultsError: as :func:`load_runs`.

    Example:
        >>> import tempfile
        >>> r = load(tempfile.mkdtemp())
        >>> len(r.runs), len(r.r_matrix)
        (0, 0)
    """
    return Results(
        r_matrix=load_r_matrix(output_dir, experiment=experiment),
        runs=load_runs(output_dir, experiment=experiment),
    )


def finished_run_ids(output_dir: str | os.PathLike[str]) -> set[str]:
    """The run ids with a row in ``runs/`` (any status), for ``--resume``.

    Reads only the ``run_id`` column; a directory that does not exist yet has none.

    Example:
        >>> import tempfile
        >>> finished_run_ids(tempfile.mkdtemp() + "/not-yet")
        set()
    """
    table = _read_dataset(output_dir, "runs", ["run_id"], None, must_exist=False)
    return set(table.column("run_id").to_pylist())


# -- compaction ---------------------------------------------------------------------------
#: Rows per file :func:`compact` aims for (the last file of a partition may hold fewer).
COMPACT_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class CompactStats:
    """What :func:`compact` did: files of the experiments it looked at, before and after.

    ``rows_written`` counts the rows of the merged files; ``copies_dropped`` the rows of
    older copies of a run (a run written twice) that were left out of them.
    """

    experiments: tuple[str, ...]
    files_before: int
    files_after: int
    files_written: int
    files_removed: int
    rows_written: int
    copies_dropped: int
    seconds: float

    def __str__(self) -> str:
        where = f"{len(self.experiments)} experiment{'s' * (len(self.experiments) != 1)}"
        if not self.files_written:
            return f"nothing to compact: {self.files_before:,} files in {where}"
        return (f"compacted {where}: {self.files_before:,} -> {self.files_after:,} files, "
                f"{self.rows_written:,} rows in {self.files_written:,} new files, "
                f"{self.copies_dropped:,} rows of older copies dropped, {self.seconds:.2f} s")


@dataclass
class _Part:
    """One file of a partition as compaction sees it."""

    info: pafs.FileInfo
    rank: int
    rows: int
    runs: dict[str, int]  # run id -> finished_at (µs; runs/ only, else 0)


def compact(
    output_dir: str | os.PathLike[str],
    experiment: str | None = None,
    max_rows: int = COMPACT_MAX_ROWS,
) -> CompactStats:
    """Merge the many small files of each experiment into a few files of ``max_rows`` rows.

    Per experiment and dataset (``r_matrix/``, ``runs/``), the files with fewer than
    ``max_rows // 2`` rows, and any file holding a run that another file holds too, are
    merged into ``compact-<random>.parquet`` files of about ``max_rows`` rows (whole
    runs, each file sorted by run id; a run in several files keeps its newest copy, as
    :func:`load` does). The footers (and run ids) are read first, then one merged file
    at a time is built, so memory stays about one merged file's rows whatever the
    number of runs. Each new file is written under a temporary name and renamed into
    place before the files it replaces are removed, so at every moment a reader finds
    every run (and a crash in between leaves copies that :func:`load` reads once and the
    next compaction merges). A source file changed since it was read is left in place.
    Running it again finds nothing to merge and changes nothing.

    Args:
        output_dir: results directory (local path or ``pyarrow.fs`` URI).
        experiment: only this experiment (default: all).
        max_rows: rows per merged file (about a million: few files, and one file's rows
            fit in memory comfortably).

    Raises:
        ResultsError: the directory does not exist, or a file is not an llray file
            (named). Every footer of an experiment is checked before anything of it is
            written, so nothing of the experiment with a foreign file changes
            (experiments before it in name order are compacted already, a valid store).
        ConfigError: ``experiment`` is not in the results; ``max_rows`` < 1.

    Example:
        >>> import numpy as np, tempfile
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((2, 1)), (0,), "ok", np.array([5]), 0.0, 0.0, 0)
        >>> out = tempfile.mkdtemp()
        >>> for s in range(3):
        ...     write_run(out, RunMeta(f"r{s}", "x", "naive", "d", "domain", s, (0,)), res)
        >>> stats = compact(out)
        >>> stats.files_before, stats.files_after, sorted(load(out).runs.run_id)
        (6, 2, ['r0', 'r1', 'r2'])
        >>> compact(out).files_written
        0
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError("max_rows", f"must be an integer >= 1, got {max_rows!r}")
    t0 = time.perf_counter()
    fs, root = _filesystem(output_dir)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise ResultsError("output", f"results directory {os.fspath(output_dir)!r} does not exist")
    listed: dict[tuple[str, str], list[pafs.FileInfo]] = {}
    for dataset in _DATASETS:
        base = f"{root}/{dataset}"
        for info in _data_files(fs, base):
            listed.setdefault((dataset, _experiment_of(info.path, base)), []).append(info)
    names = sorted({exp for _, exp in listed})
    if experiment is not None and experiment not in names:
        raise ConfigError("experiment", f"{experiment!r} is not in the results; experiments "
                                        f"there: {', '.join(names) or 'none'}")
    chosen = names if experiment is None else [experiment]
    totals = [0] * 6  # files before, after, written, removed; rows written, dropped
    try:
        for exp in chosen:  # read both datasets' footers, then write (r_matrix first)
            plans = [_plan(fs, f"{root}/{ds}", ds, listed.get((ds, exp), []), max_rows)
                     for ds in _DATASETS]
            for ds, plan in zip(_DATASETS, plans):
                done = _apply(fs, f"{root}/{ds}", ds, plan)
                totals = [a + b for a, b in zip(totals, done)]
    except _Vanished as e:  # another compaction removed it; the store is still whole
        raise ResultsError(str(e), "removed while compacting (is another 'llray compact' "
                                   "running?); run it again") from None
    return CompactStats(tuple(chosen), *totals, seconds=time.perf_counter() - t0)


@dataclass
class _Plan:
    """What compacting one partition will do: which files merge, which runs each keeps,
    and how the merged files are cut (``bins``: lists of indices into ``merge``)."""

    files: int
    merge: list[_Part] = field(default_factory=list)
    keep: list[set[str]] = field(default_factory=list)
    bins: list[list[int]] = field(default_factory=list)


def _plan(
    fs: pafs.FileSystem, base: str, dataset: str, infos: list[pafs.FileInfo], max_rows: int
) -> _Plan:
    """Read the footers (and the run ids) of one partition and decide; nothing written.

    Every file's schema is checked here, before any file of the experiment is written.
    """
    n = len(infos)
    if n < 2:
        return _Plan(n)
    schema = _DATASETS[dataset]
    ranks = _age_ranks(infos)
    parts = _map(lambda k: _scan(fs, base, schema, infos[k], int(ranks[k])), range(n))
    newest: dict[str, tuple[int, int]] = {}  # run id -> (finished_at, rank) of its newest copy
    copies: dict[str, int] = {}
    for p in parts:
        for run_id, finished in p.runs.items():
            copies[run_id] = copies.get(run_id, 0) + 1
            newest[run_id] = max(newest.get(run_id, (finished, p.rank)), (finished, p.rank))
    merge = [p for p in parts
             if p.rows < max_rows // 2 or any(copies[r] > 1 for r in p.runs)]
    if len(merge) < 2:
        return _Plan(n)
    keep = [{r for r in p.runs if newest[r][1] == p.rank} for p in merge]
    estimate = [p.rows * len(k) // max(1, len(p.runs)) for p, k in zip(merge, keep)]
    return _Plan(n, merge, keep, _bins(estimate, max_rows))


def _bins(rows: Sequence[int], max_rows: int) -> list[list[int]]:
    """Consecutive files in ``ceil(total / max_rows)`` bins of about equal rows: a bin ends
    before the file that would take it further from its share than it is."""
    total = sum(rows)
    k = max(1, -(-total // max_rows))
    cuts = [total * i / k for i in range(1, k)]
    bins: list[list[int]] = [[]]
    filled, c = 0, 0
    for j, r in enumerate(rows):
        if bins[-1] and c < len(cuts) and abs(filled - cuts[c]) <= abs(filled + r - cuts[c]):
            bins.append([])
            c += 1
            while c < len(cuts) and cuts[c] <= filled:  # a large file spanned several
                c += 1
        bins[-1].append(j)
        filled += r
    return bins


def _apply(fs: pafs.FileSystem, base: str, dataset: str, plan: _Plan) -> list[int]:
    """Write a plan's merged files one bin at a time, then remove the files they replace.

    Returns ``[files before, after, written, removed, rows written, rows dropped]``.
    """
    if not plan.merge:
        return [plan.files, plan.files, 0, 0, 0, 0]
    schema = _without_partition(_DATASETS[dataset])
    mtime = max((p.info.mtime_ns or 0) for p in plan.merge) or None
    folder = plan.merge[0].info.path.rsplit("/", 1)[0]
    written = rows = dropped = 0
    for members in plan.bins:
        tables = _map(lambda k: _kept_rows(fs, base, dataset, plan.merge[k], plan.keep[k]),
                      members)
        table = pa.concat_tables([t for t, _ in tables]).cast(schema)
        table = table.take(pc.sort_indices(table, sort_keys=[("run_id", "ascending")]))
        if table.num_rows:
            path = f"{folder}/{_COMPACTED}{uuid.uuid4().hex[:16]}.parquet"
            _write_atomic(fs, path, table, mtime)
            written += 1
        rows += table.num_rows
        dropped += sum(d for _, d in tables)
    _sync_dir(fs, folder)
    removed = sum(_remove_unchanged(fs, p.info) for p in plan.merge)
    return [plan.files, plan.files + written - removed, written, removed, rows, dropped]


def _kept_rows(fs: pafs.FileSystem, base: str, dataset: str, part: _Part,
               keep: set[str]) -> tuple[pa.Table, int]:
    """A merged file's rows of the runs whose newest copy it holds; and how many it drops."""
    table = _read_file(fs, part.info.path, base, _DATASETS[dataset],
                       _without_partition(_DATASETS[dataset]).names)
    if len(keep) == len(part.runs):
        return table, 0
    kept = table.filter(pc.is_in(table["run_id"], value_set=pa.array(sorted(keep), pa.string())))
    return kept, table.num_rows - kept.num_rows


def _scan(fs: pafs.FileSystem, base: str, schema: pa.Schema, info: pafs.FileInfo,
          rank: int) -> _Part:
    """A file's rows and runs (with, in ``runs/``, the ``finished_at`` that decides which
    copy of a run is the newest). A file of one run says both in its footer's column
    statistics; of other files the two columns are read."""
    f, pf = _open_checked(fs, info.path, base, schema)
    try:
        md = pf.metadata
        single = _single_run(md, "finished_at" in schema.names)
        if single is not None:
            return _Part(info, rank, md.num_rows, dict([single]))
        columns = ["run_id"] + (["finished_at"] if "finished_at" in schema.names else [])
        table = pf.read(columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(info.path, f"cannot read Parquet file: {e}") from None
    finally:
        f.close()
    ids = table["run_id"].to_pylist()
    if "finished_at" not in columns:
        return _Part(info, rank, md.num_rows, dict.fromkeys(ids, 0))
    fin = table["finished_at"].cast(pa.int64()).fill_null(_NO_TIME).to_pylist()
    runs: dict[str, int] = {}
    for run_id, t in zip(ids, fin):
        runs[run_id] = max(runs.get(run_id, t), t)
    return _Part(info, rank, md.num_rows, runs)


_NO_TIME = int(np.iinfo(np.int64).min)  # a null finished_at: older than any time
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _single_run(md: Any, finished: bool) -> tuple[str, int] | None:
    """``(run id, finished_at in µs or 0)`` when the footer's statistics show that every
    row has the same run id (and finished_at); None when they cannot tell."""
    leaves = {md.row_group(0).column(j).path_in_schema: j
              for j in range(md.num_columns)} if md.num_row_groups else {}
    found: set[tuple[str, int]] = set()
    for g in range(md.num_row_groups):
        run_id = _only_value(md.row_group(g).column(leaves["run_id"]).statistics)
        if run_id is None:
            return None
        time_ = 0
        if finished:
            stats = md.row_group(g).column(leaves["finished_at"]).statistics
            if stats is not None and stats.null_count == stats.num_values:
                time_ = _NO_TIME
            elif (t := _only_value(stats)) is not None and stats.null_count == 0:
                time_ = (t - _EPOCH) // timedelta(microseconds=1)
            else:
                return None
        found.add((run_id.decode() if isinstance(run_id, bytes) else run_id, time_))
    return found.pop() if len(found) == 1 else None


def _only_value(stats: Any) -> Any:
    if stats is None or not stats.has_min_max or stats.min != stats.max:
        return None
    return stats.min


def _sync_dir(fs: pafs.FileSystem, folder: str) -> None:
    """Make the renames into ``folder`` durable before the merged files are removed."""
    if isinstance(fs, pafs.LocalFileSystem) and hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_unchanged(fs: pafs.FileSystem, info: pafs.FileInfo) -> bool:
    """Delete a merged file unless it changed (was written again) since it was read."""
    now = fs.get_file_info(info.path)
    if now.type != pafs.FileType.File:
        return False
    if now.mtime_ns != info.mtime_ns or now.size != info.size:
        return False
    try:
        fs.delete_file(info.path)
    except FileNotFoundError:
        return False
    return True


# -- rebuilding R -------------------------------------------------------------------------
def r_matrix_of(df_or_results: pd.DataFrame | Results, run_id: str) -> np.ndarray:
    """The ``[T + 1, T]`` R of ``run_id`` from an r_matrix DataFrame (or :class:`Results`).

    Entries missing from the table are NaN.

    Raises:
        KeyError: no row has this run id.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"run_id": ["a"] * 2, "step": [0, 1], "eval_pos": [1, 1],
        ...                    "accuracy": [0.1, 0.9]})
        >>> r_matrix_of(df, "a").tolist()
        [[0.1], [0.9]]
    """
    df = df_or_results.r_matrix if isinstance(df_or_results, Results) else df_or_results
    rows = df[df["run_id"] == run_id]
    if rows.empty:
        raise KeyError(f"run_id {run_id!r} is not in the r_matrix table")
    T = int(rows["eval_pos"].max())
    if "task_order" in rows:
        T = len(rows["task_order"].iloc[0])
    R = np.full((T + 1, T), np.nan)
    R[rows["step"].to_numpy(), rows["eval_pos"].to_numpy() - 1] = rows["accuracy"].to_numpy(float)
    return R


def r_matrix_stack(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """All runs of an r_matrix DataFrame as one ``[N, T + 1, T]`` array, without a loop.

    For the vectorised metrics: ``metrics.acc(stack)`` gives every run's ACC. All runs
    must have the same number of tasks ``T`` (filter on ``task_order`` length first).

    Returns:
        ``(run_ids, R)``: the ``N`` run ids (in order of first appearance) and their R.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 1, 0, 1],
        ...                    "eval_pos": [1] * 4, "accuracy": [0.1, 0.9, 0.2, 0.7]})
        >>> ids, R = r_matrix_stack(df)
        >>> ids.tolist(), R.shape, metrics.acc(R).tolist()
        (['a', 'b'], (2, 2, 1), [0.9, 0.7])
    """
    codes, run_ids = pd.factorize(df["run_id"])
    pos = df["eval_pos"].to_numpy()
    per_run_T = np.zeros(len(run_ids), dtype=np.int64)
    np.maximum.at(per_run_T, codes, pos)
    T = int(per_run_T.max()) if len(run_ids) else 0
    if (per_run_T != T).any():
        raise ValueError(f"runs have different task counts {sorted(set(per_run_T.tolist()))}")
    R = np.full((len(run_ids), T + 1, T), np.nan)
    R[codes, df["step"].to_numpy(), pos - 1] = df["accuracy"].to_numpy(float)
    return np.asarray(run_ids, dtype=object), R
