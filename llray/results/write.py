"""Writing runs to the store: tables of one run, atomic files, ``check_writable``.

Each file is written under a temporary name in its final directory and renamed, so a
reader never sees half a file; a run's R rows are written before its run row, so a run
listed in ``runs/`` is complete. Writing a run again replaces its file (idempotent by
``run_id``). :func:`write_runs` puts many runs in one file named
``batch-<hash of the run ids>.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llray import metrics
from llray.errors import ConfigError
from llray.results.schema import (
    _RUN_COLUMNS,
    PARTITION,
    R_MATRIX_SCHEMA,
    RUNS_SCHEMA,
    SPLITS,
    STATUSES,
    RunMeta,
    _filesystem,
    _partition_dir,
    _repeat,
)

if TYPE_CHECKING:  # readers of results need no torch
    from llray.learner import RunResult


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

    The rows are the test R (``split`` "test"), followed, when the run has one, by the
    validation R (``result.R_val``, ``split`` "val", whose ``n_test`` column counts
    validation samples).

    Example:
        >>> import numpy as np
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((3, 2)), (1, 0), "ok", np.array([5, 5]), 0.0, 0.0, 0)
        >>> t = r_matrix_table(RunMeta("r1", "x", "naive", "digits", "domain", 0, (1, 0)), res)
        >>> t.num_rows, t.column("eval_task").to_pylist()[:2], t["split"][0].as_py()
        (6, [1, 0], 'test')
    """
    test = _r_rows(meta, _checked(meta, result), result.n_test, "test")
    R_val = getattr(result, "R_val", None)
    if R_val is None:
        return test
    R_val = np.asarray(R_val, dtype=np.float64)
    if R_val.shape != _r_shape(meta) or np.shape(result.n_val) != (len(meta.order),):
        raise ValueError(f"run {meta.run_id}: R_val must have shape {_r_shape(meta)} "
                         f"and n_val {len(meta.order)} entries")
    return pa.concat_tables([test, _r_rows(meta, R_val, result.n_val, "val")])


def _r_shape(meta: RunMeta) -> tuple[int, int]:
    """``(T + 1, T)``: the shape of a run's R."""
    return len(meta.order) + 1, len(meta.order)


def _r_rows(meta: RunMeta, R: np.ndarray, n: Any, split: str) -> pa.Table:
    """The entries of one ``[T + 1, T]`` matrix ``R`` of a run (``n`` samples per column)
    as rows of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"run {meta.run_id}: split must be one of {SPLITS}, got {split!r}")
    T = len(meta.order)
    order = np.asarray(meta.order, dtype=np.int32)
    step = np.repeat(np.arange(T + 1, dtype=np.int32), T)
    eval_pos = np.tile(np.arange(1, T + 1, dtype=np.int32), T + 1)
    columns = _run_columns(meta, (T + 1) * T)
    columns["step"] = pa.array(step)
    columns["train_task"] = pa.array(order[np.maximum(step - 1, 0)], mask=step == 0)
    columns["eval_task"] = pa.array(order[eval_pos - 1])
    columns["eval_pos"] = pa.array(eval_pos)
    columns["accuracy"] = pa.array(np.asarray(R, dtype=np.float64).ravel())
    columns["n_test"] = pa.array(np.tile(np.asarray(n, dtype=np.int64), T + 1))
    columns["split"] = _repeat(split, pa.string(), (T + 1) * T)
    return pa.table(columns, schema=R_MATRIX_SCHEMA)


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def runs_table(meta: RunMeta, result: RunResult) -> pa.Table:
    """The run's one row (status, its error, metrics, timings, config) with
    :data:`RUNS_SCHEMA`. ``error`` is ``result.error``: why the run failed or diverged.

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
    error = getattr(result, "error", None)
    values = {
        "status": result.status,
        "error": None if error is None else str(error),
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




# -- writing ------------------------------------------------------------------------------
def check_writable(output_dir: str | os.PathLike[str]) -> None:
    """Create ``output_dir`` and check a file can be written there, before any work.

    The directories it creates are remembered: if the command then stops on bad input,
    :func:`remove_created_if_empty` removes them again (bad input writes nothing).

    Raises:
        ConfigError: ``output`` field, when the directory cannot be created or written.

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp() + "/new/results")
    """
    try:
        fs, root = _filesystem(output_dir)
        created = _first_missing(root) if isinstance(fs, pafs.LocalFileSystem) else None
        fs.create_dir(root, recursive=True)
        if created is not None:
            _created.append(created)
        probe = f"{root}/.llray-write-check-{uuid.uuid4().hex}"
        try:
            with fs.open_output_stream(probe) as sink:
                sink.write(b"ok")
        finally:
            if fs.get_file_info(probe).type != pafs.FileType.NotFound:
                fs.delete_file(probe)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ConfigError("output", f"cannot write results to {os.fspath(output_dir)!r}: {e}") from None


_created: list[str] = []  # directories check_writable created in this process


def _first_missing(path: str) -> str | None:
    """The topmost directory of ``path`` that does not exist yet (None: it exists)."""
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def forget_created() -> None:
    """Forget the directories :func:`check_writable` created (a command ended well)."""
    _created.clear()


def remove_created_if_empty() -> list[str]:
    """Remove the directories :func:`check_writable` created that hold no file (only
    empty directories); returns those removed. The command line calls it on exit 2.

    Example:
        >>> import tempfile, os
        >>> base = tempfile.mkdtemp()
        >>> forget_created()
        >>> check_writable(base + "/a/b")
        >>> [os.path.relpath(p, base) for p in remove_created_if_empty()], os.listdir(base)
        (['a'], [])
    """
    removed = []
    while _created:
        top = _created.pop()
        if os.path.isdir(top) and not any(files for _, _, files in os.walk(top)):
            for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                os.rmdir(folder)
            removed.append(top)
    return removed


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
        >>> from llray.results import finished_run_ids
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
        >>> from llray.results import finished_run_ids
        >>> from llray.learner import RunResult
        >>> res = RunResult(np.zeros((2, 1)), (0,), "ok", np.array([5]), 0.0, 0.0, 0)
        >>> out = tempfile.mkdtemp()
        >>> write_run(out, RunMeta("r1", "x", "naive", "d", "domain", 0, (0,)), res)
        >>> finished_run_ids(out)
        {'r1'}
    """
    write_runs(output_dir, [(meta, result)])


