"""Reading the store back: every run once (its newest copy), checked file by file.

``load(OUTPUT)`` returns both datasets as pandas DataFrames; a file that is not an
llray file is named with what is wrong (:class:`~llray.results.schema.ResultsError`).
A file written before a column of :data:`~llray.results.schema.OPTIONAL_COLUMNS` existed
reads with that column's default. If the same run ends up in two files, :func:`load`
and :func:`finished_run_ids` return it once: its newest copy (see ``docs/results.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llray.results.schema import (
    _DATASETS,
    OPTIONAL_COLUMNS,
    PARTITION,
    Results,
    ResultsError,
    _experiment_of,
    _filesystem,
    _repeat,
    _without_partition,
    schema_problems,
)

_COMPACTED = "compact-"  # name prefix of the files :func:`compact` writes
_DEFAULTS = {c: v for defaults in OPTIONAL_COLUMNS.values() for c, v in defaults.items()}
_NO_TIME = int(np.iinfo(np.int64).min)  # a null finished_at: older than any time


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
    present = [c for c in file_columns if c in pf.schema_arrow.names]
    try:
        table = pf.read(columns=present, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(path, f"cannot read Parquet file: {e}") from None
    finally:
        f.close()
    for c in file_columns:  # a file from before an optional column: its default
        if c not in present:
            table = table.append_column(c, _repeat(_DEFAULTS[c], expected.field(c).type,
                                                   table.num_rows))
    table = table.select(file_columns)
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


def existing_store(output_dir: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root of a results directory that must already exist.

    Raises:
        ResultsError: ``output``, when it does not exist or is not a directory.
    """
    fs, root = _filesystem(output_dir)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        raise ResultsError("output", f"results directory {os.fspath(output_dir)!r} does not exist")
    if kind != pafs.FileType.Directory:
        raise ResultsError("output", f"{os.fspath(output_dir)!r} is not a directory")
    return fs, root


def check_store(
    output_dir: str | os.PathLike[str],
    datasets: Sequence[str] = ("r_matrix", "runs"),
    experiment: str | None = None,
    full: bool = False,
) -> int:
    """Check every file of a results directory before a command reads or changes it.

    Each file must sit in an ``experiment=NAME`` directory and have an llray schema
    (its footer is read); with ``full`` every column is read too, which also finds
    corrupt data pages behind an intact footer. Nothing is changed.

    Args:
        output_dir: results directory (local path or ``pyarrow.fs`` URI).
        datasets: which of ``r_matrix`` and ``runs`` to check.
        experiment: only this experiment's files.
        full: read the data as well as the footers.

    Returns:
        The number of files checked.

    Raises:
        ResultsError: the directory does not exist or is not a directory, or a file is
            unreadable or foreign: names the file and what is wrong.

    Example:
        >>> import tempfile
        >>> check_store(tempfile.mkdtemp())
        0
    """
    fs, root = existing_store(output_dir)
    checked = 0
    for dataset in datasets:
        base = f"{root}/{dataset}"
        infos = [i for i in _data_files(fs, base)
                 if experiment is None or _experiment_of(i.path, base) == experiment]
        for info in infos:
            _experiment_of(info.path, base)
        _map(lambda i: _check_file(fs, i.path, base, _DATASETS[dataset], full), infos)
        checked += len(infos)
    return checked


def _check_file(fs: pafs.FileSystem, path: str, base: str, schema: pa.Schema,
                full: bool) -> None:
    try:
        f, pf = _open_checked(fs, path, base, schema)
    except _Vanished:
        return  # a compaction merged it meanwhile: its rows are in the merged file
    try:
        if full:
            for g in range(pf.metadata.num_row_groups):
                pf.read_row_group(g, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(path, f"cannot read Parquet file: {e}") from None
    finally:
        f.close()


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


# -- rebuilding R -------------------------------------------------------------------------
def r_matrix_of(
    df_or_results: pd.DataFrame | Results, run_id: str, split: str = "test"
) -> np.ndarray:
    """The ``[T + 1, T]`` R of ``run_id`` from an r_matrix DataFrame (or :class:`Results`).

    Entries missing from the table are NaN. ``split`` picks the test R (default) or the
    validation R ("val") when the table has a ``split`` column; a table without one is
    the test R.

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
    df = _of_split(df, split)
    rows = df[df["run_id"] == run_id]
    if rows.empty:
        raise KeyError(f"run_id {run_id!r} is not in the r_matrix table")
    T = int(rows["eval_pos"].max())
    if "task_order" in rows:
        T = len(rows["task_order"].iloc[0])
    R = np.full((T + 1, T), np.nan)
    R[rows["step"].to_numpy(), rows["eval_pos"].to_numpy() - 1] = rows["accuracy"].to_numpy(float)
    return R


def _of_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of ``split`` (all rows are test rows in a table without the column)."""
    if "split" not in df:
        if split != "test":
            raise KeyError(f"split {split!r}: the r_matrix table has test rows only")
        return df
    return df[df["split"] == split]


def r_matrix_stack(df: pd.DataFrame, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """All runs of an r_matrix DataFrame as one ``[N, T + 1, T]`` array, without a loop.

    ``split`` as in :func:`r_matrix_of`.

    For the vectorised metrics: ``metrics.acc(stack)`` gives every run's ACC. All runs
    must have the same number of tasks ``T`` (filter on ``task_order`` length first).

    Returns:
        ``(run_ids, R)``: the ``N`` run ids (in order of first appearance) and their R.

    Example:
        >>> import pandas as pd
        >>> from llray import metrics
        >>> df = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [0, 1, 0, 1],
        ...                    "eval_pos": [1] * 4, "accuracy": [0.1, 0.9, 0.2, 0.7]})
        >>> ids, R = r_matrix_stack(df)
        >>> ids.tolist(), R.shape, metrics.acc(R).tolist()
        (['a', 'b'], (2, 2, 1), [0.9, 0.7])
    """
    df = _of_split(df, split)
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
