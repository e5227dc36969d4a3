"""Compaction: merge an experiment's many small files into a few large ones.

Merged files hold every column of the current schema, so compacting a store written
by an older llray also fills in the columns added since (with their defaults).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from llray.errors import ConfigError
from llray.results.read import (
    _COMPACTED,
    _NO_TIME,
    _age_ranks,
    _data_files,
    _map,
    _open_checked,
    _read_file,
    _Vanished,
    existing_store,
)
from llray.results.schema import (
    _DATASETS,
    ResultsError,
    _experiment_of,
    _without_partition,
)
from llray.results.write import _write_atomic

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
    stale_removed: int = 0  # temporary files a killed writer left (see STALE_TEMP_S)

    def __str__(self) -> str:
        where = f"{len(self.experiments)} experiment{'s' * (len(self.experiments) != 1)}"
        stale = (f"; removed {self.stale_removed:,} temporary files a killed writer left"
                 if self.stale_removed else "")
        if not self.files_written:
            return f"nothing to compact: {self.files_before:,} files in {where}{stale}"
        return (f"compacted {where}: {self.files_before:,} -> {self.files_after:,} files, "
                f"{self.rows_written:,} rows in {self.files_written:,} new files, "
                f"{self.copies_dropped:,} rows of older copies dropped, {self.seconds:.2f} s"
                + stale)


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
        >>> from llray.results import RunMeta, load, write_run
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
    fs, root = existing_store(output_dir)
    listed: dict[tuple[str, str], list[pafs.FileInfo]] = {}
    for dataset in _DATASETS:
        base = f"{root}/{dataset}"
        for info in _data_files(fs, base):
            listed.setdefault((dataset, _experiment_of(info.path, base)), []).append(info)
    if not listed:
        raise ResultsError("output", f"{os.fspath(output_dir)!r} holds no llray results "
                                     "(no Parquet files under r_matrix/ or runs/)")
    stale = _remove_stale_temporaries(fs, root)
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
    return CompactStats(tuple(chosen), *totals, seconds=time.perf_counter() - t0,
                        stale_removed=stale)


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
    _map(lambda p: _check_data(fs, base, schema, p.info), merge)  # before any write
    keep = [{r for r in p.runs if newest[r][1] == p.rank} for p in merge]
    estimate = [p.rows * len(k) // max(1, len(p.runs)) for p, k in zip(merge, keep)]
    return _Plan(n, merge, keep, _bins(estimate, max_rows))


def _check_data(fs: pafs.FileSystem, base: str, schema: pa.Schema,
                info: pafs.FileInfo) -> None:
    """Read every page of a file that will be merged: a corrupt data page behind an
    intact footer is found before anything of the experiment is written."""
    f, pf = _open_checked(fs, info.path, base, schema)
    try:
        for g in range(pf.metadata.num_row_groups):
            pf.read_row_group(g, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ResultsError(info.path, f"cannot read Parquet file: {e}") from None
    finally:
        f.close()


#: A writer's temporary file (``.NAME.<32 hex>.tmp``) untouched this long was left by a
#: writer that was killed: compaction removes it. A live writer touches its file often.
STALE_TEMP_S = 15 * 60
_TEMP = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")


def _remove_stale_temporaries(fs: pafs.FileSystem, root: str) -> int:
    """Remove the temporary files of killed writers under ``r_matrix/`` and ``runs/``."""
    cutoff = time.time_ns() - STALE_TEMP_S * 10**9
    removed = 0
    for dataset in _DATASETS:
        selector = pafs.FileSelector(f"{root}/{dataset}", recursive=True, allow_not_found=True)
        for info in fs.get_file_info(selector):
            if (info.type == pafs.FileType.File and _TEMP.fullmatch(info.base_name)
                    and (info.mtime_ns or 0) < cutoff):
                try:
                    fs.delete_file(info.path)
                    removed += 1
                except (FileNotFoundError, pa.ArrowException):
                    pass
    return removed


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


