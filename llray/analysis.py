"""Metrics of every run straight from the ``r_matrix/`` Parquet dataset, vectorised.

The store (:mod:`llray.results`) holds one row per R entry with ``step`` (0 = random
init, i = after the i-th task of the order) and ``eval_pos`` (1-based position of the
evaluated task in the order), so the diagonal ``R[j, j]`` is ``step == eval_pos``. With
these two columns the metrics of every run come out of one grouped query over the files
— DuckDB by default, or NumPy over a pyarrow read (the pandas fallback) — with no
Python loop over runs:

- ACC = mean_j R[T, j]
- BWT = 1/(T-1) Σ_{j<T} (R[T, j] − R[j, j])
- FWT = 1/(T-1) Σ_{j≥2} (R[j−1, j] − R[0, j])
- forgetting = 1/(T-1) Σ_{j<T} (max_{j≤l<T} R[l, j] − R[T, j])
- learning accuracy = mean_j R[j, j]

Every function reads one *split* of R: ``"test"`` (the default: what a report shows) or
``"val"`` (the validation R, on data held out of each task's training data, on which
searches select). Files written before the split existed hold test rows only.

These are the formulas of :mod:`llray.metrics` (divided by T−1 as in the GEM paper);
the tests check that both give the same numbers on the same R. A run whose R holds NaN
(it diverged, failed, or a tuning scheduler stopped it early) gets NaN for every metric
that needs the missing rows. :func:`summarize` leaves runs whose status is not ``ok``
out of the means (a stopped run's FWT may be defined, but it is not a finished run),
counts those with a NaN metric in ``n_nan`` and the stopped ones in ``n_stopped``.

Example:
    per_run = run_metrics("results/quickstart")
    summarize(per_run, by=["strategy"])
    summary("results/ewc_lambda", by=["ewc.lambda_"])

DuckDB users can query the same views directly::

    con = connect("results/quickstart")
    con.sql("SELECT strategy, avg(acc) FROM run_metrics GROUP BY strategy")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llray.errors import ConfigError

METRICS = ("acc", "bwt", "fwt", "forgetting", "learning_accuracy")
#: columns of :func:`run_metrics` besides the metrics and the requested parameters
RUN_COLUMNS = ("run_id", "experiment", "strategy", "benchmark", "scenario", "seed",
               "order", "num_tasks", "status", "study")
ENGINES = ("auto", "duckdb", "pandas")
_META = ("experiment", "strategy", "benchmark", "scenario", "seed")
_R_READ = ("run_id", *_META, "step", "eval_task", "eval_pos", "accuracy")
_SECTIONS = ("stream", "model", "train")
_PARTITION = "experiment="


# -- files ----------------------------------------------------------------------------------
def parquet_files(output: str | Path, dataset: str = "r_matrix") -> list[str]:
    """The data files of ``OUTPUT/<dataset>/`` (hidden, ``_`` and temporary names skipped).

    Raises:
        ConfigError: ``output`` is not a directory, or (for ``r_matrix``) holds no files.
    """
    root = Path(output)
    if not root.is_dir():
        raise ConfigError("output", f"results directory {os.fspath(output)!r} does not exist")
    files = sorted(str(p) for p in (root / dataset).rglob("*.parquet")
                   if not p.name.startswith((".", "_")) and p.is_file())
    if not files and dataset == "r_matrix":
        raise ConfigError("output", f"no results in {os.fspath(output)!r}: no Parquet files "
                                    f"under {root / dataset}/ (written by 'llray run' or "
                                    "'llray tune')")
    return files


def check_files(files: Sequence[str], dataset: str = "r_matrix") -> None:
    """Raise a :class:`ConfigError` naming the first file that is not an llray file.

    Reads each file's footer only: a corrupt file, a file outside an
    ``experiment=NAME`` directory, or a foreign one (columns or types not those of
    :mod:`llray.results`) is named with what is wrong. Used to explain a failed query.
    """
    import pyarrow.parquet as pq

    from llray import results

    expected = {"r_matrix": results.R_MATRIX_FILE_SCHEMA, "runs": results.RUNS_FILE_SCHEMA}[dataset]
    for f in files:
        if not Path(f).parent.name.startswith(_PARTITION):
            raise ConfigError(f, f"not in an '{_PARTITION}NAME' directory under {dataset}/")
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001 - any reader error means a bad file
            raise ConfigError(f, f"cannot read Parquet file ({type(e).__name__}: {e})") from None
        problems = results.schema_problems(schema, expected)
        if problems:
            raise ConfigError(f, f"not an llray {dataset} file: " + "; ".join(problems))


SPLITS = ("test", "val")
_HIVE = "hive_partitioning = true, "
_BY_NAME = "union_by_name = true, "  # files without the split column read it as NULL


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _split_filter(split: str) -> str:
    """SQL condition: the rows of ``split`` (a row without the column is a test row)."""
    return f"coalesce(split, 'test') = '{_check_split(split)}'"


def _source(param: str, split: str | None = None) -> str:
    """``read_parquet`` of the file list bound to the query parameter ``$param``; with
    ``split``, only that split's rows.

    The list travels as a parameter, not as SQL text: a store with one file per run
    can hold 100,000 files. A store that mixes files written before the ``split``
    column existed with newer ones is read again by column name (:func:`_query`).
    """
    read = (f"read_parquet(${param}, {_HIVE}"
            "hive_types = {'experiment': VARCHAR})")
    if split is None:
        return read
    return f"(SELECT * FROM {read} WHERE {_split_filter(split)})"


def _glob(output: str | Path, dataset: str) -> str:
    """``read_parquet`` of ``OUTPUT/<dataset>/*/*.parquet`` as SQL text (for views)."""
    pattern = str(Path(output).resolve() / dataset / "*" / "*.parquet").replace("'", "''")
    return (f"read_parquet('{pattern}', {_HIVE}{_BY_NAME}"
            "hive_types = {'experiment': VARCHAR})")


def _has_duckdb() -> bool:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


def _engine(engine: str, output: str | Path) -> str:
    if engine not in ENGINES:
        raise ConfigError("engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        remote = "://" in os.fspath(output)
        return "duckdb" if _has_duckdb() and not remote else "pandas"
    return engine


def _query(sql: str, files: Sequence[str], runs: Sequence[str] = (),
           threads: int | None = None) -> pd.DataFrame:
    """Run ``sql`` in a fresh DuckDB; a read error becomes a ConfigError naming the file."""
    import duckdb

    con = duckdb.connect(config={"threads": threads} if threads else {})
    params = {"files": list(files)}
    if "$runs" in sql:
        params["runs"] = list(runs)
    try:
        return _split_aware(con, sql, params)
    except duckdb.Error as e:
        _check_present([*files, *runs])
        check_files(files, "r_matrix")
        check_files(runs, "runs")
        raise ConfigError("output", f"cannot read the results: {e}") from None
    finally:
        con.close()


def _split_aware(con: Any, sql: str, params: dict) -> pd.DataFrame:
    """Run ``sql``; when its files do not all have the ``split`` column (some were
    written before it existed), read them by column name (missing: NULL, a test row),
    and when none has it, every row is a test row."""
    import duckdb

    def run(q: str) -> pd.DataFrame:
        return con.sql(q, params=params).to_arrow_table().to_pandas()

    try:
        return run(sql)
    except (duckdb.BinderException, duckdb.InvalidInputException) as e:
        if "split" not in str(e):
            raise
    check_files(params["files"], "r_matrix")  # a foreign file, not an older one: named
    try:
        return run(sql.replace(_HIVE, _HIVE + _BY_NAME))  # a mixed store
    except duckdb.BinderException as e:
        if '"split"' not in str(e):
            raise
    if _split_filter("val") in sql:  # no file has the column: test rows only
        raise ConfigError("split", "the results hold no validation rows (written before "
                                   "validation splits existed)") from None
    return run(sql.replace(_split_filter("test"), "TRUE"))


class _Vanished(Exception):
    """A listed file is gone: ``llray compact`` merged it meanwhile; list again."""


def _check_present(files: Sequence[str]) -> None:
    gone = [f for f in files if "://" not in f and not os.path.exists(f)]
    if gone:
        raise _Vanished(gone[0])


def _relisting(fn: Any) -> Any:
    """``fn()``, listed and read again (up to 5 times) when a listed file disappeared."""
    for attempt in range(5):
        try:
            return fn()
        except _Vanished as e:
            if attempt == 4:
                raise ConfigError(str(e), "removed while it was being read, five times") from None
    raise AssertionError("unreachable")


# -- per-run metrics -------------------------------------------------------------------------
def metrics_sql(source: str, metrics: Sequence[str] = METRICS, order: bool = True) -> str:
    """The per-run metrics query over ``source`` (a table, view or ``read_parquet``) that
    holds the rows of one split only (see :func:`_source`).

    T is ``max(eval_pos)`` over each run (a window). A run with missing entries gets
    NULL metrics rather than those of a smaller R; NaN accuracies propagate to NaN
    metrics as in NumPy. A run stored twice (see :mod:`llray.results`) counts once:
    every metric is a difference of means over masks of (step, eval_pos), which copies
    leave unchanged. Without ``forgetting`` this is one ``GROUP BY run_id``; forgetting
    needs each column's maximum first, which adds a stage grouped by (run, column).
    Either way the files are read once. ``order=False`` leaves out the ``order`` column
    (its ordered list aggregate is a quarter of the one-stage query's time).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError("metrics", f"unknown {unknown}; allowed: {', '.join(METRICS)}")
    meta = ", ".join(f"any_value({c}) AS {c}" for c in _META)
    cells = (f"WITH cells AS (SELECT run_id, {', '.join(_META)}, step, eval_task, eval_pos, "
             f"accuracy, max(eval_pos) OVER (PARTITION BY run_id) AS T FROM {source})")
    if "forgetting" not in metrics:
        exprs = {
            "acc": "avg(accuracy) FILTER (WHERE step = T)",
            "bwt": "avg(accuracy) FILTER (WHERE step = T AND eval_pos < T) - "
                   "avg(accuracy) FILTER (WHERE step = eval_pos AND eval_pos < T)",
            "fwt": "avg(accuracy) FILTER (WHERE step = eval_pos - 1 AND eval_pos >= 2) - "
                   "avg(accuracy) FILTER (WHERE step = 0 AND eval_pos >= 2)",
            "learning_accuracy": "avg(accuracy) FILTER (WHERE step = eval_pos)",
        }
        complete = ("count(accuracy) = count(*) FILTER (WHERE step = 0 AND eval_pos = 1) "
                    "* any_value(T) * (any_value(T) + 1)")
        cols = ", ".join(f"CASE WHEN {complete} THEN {exprs[m]} END AS {m}" for m in metrics)
        order_col = f"{_order_expr()} AS \"order\", " if order else ""
        return (f"{cells}\nSELECT run_id, {meta}, {order_col}"
                f"CAST(any_value(T) AS INTEGER) AS num_tasks, {cols}\n"
                f"FROM cells GROUP BY run_id")
    exprs = {
        "acc": "avg(fin)",
        "bwt": "avg(fin - diag) FILTER (WHERE eval_pos < T)",
        "fwt": "avg(prev - init) FILTER (WHERE eval_pos >= 2)",
        "forgetting": "avg(best - fin) FILTER (WHERE eval_pos < T)",
        "learning_accuracy": "avg(diag)",
    }
    complete = "sum(n) = sum(copies) * (any_value(T) + 1)"
    order_col = ("string_agg(CAST(task AS VARCHAR), ',' ORDER BY eval_pos) AS \"order\","
                 if order else "")
    cols = ", ".join(f"CASE WHEN {complete} THEN {exprs[m]} END AS {m}" for m in metrics)
    return f"""{cells},
cols AS (
  SELECT run_id, eval_pos, {meta}, any_value(T) AS T, count(accuracy) AS n,
    count(*) FILTER (WHERE step = 0) AS copies,
    any_value(eval_task) FILTER (WHERE step = 0) AS task,
    any_value(accuracy) FILTER (WHERE step = T) AS fin,
    any_value(accuracy) FILTER (WHERE step = eval_pos) AS diag,
    any_value(accuracy) FILTER (WHERE step = eval_pos - 1) AS prev,
    any_value(accuracy) FILTER (WHERE step = 0) AS init,
    max(accuracy) FILTER (WHERE step BETWEEN eval_pos AND T - 1) AS best
  FROM cells GROUP BY run_id, eval_pos)
SELECT run_id, {meta}, {order_col}
  CAST(any_value(T) AS INTEGER) AS num_tasks, {cols}
FROM cols GROUP BY run_id"""


def _order_expr() -> str:
    """The order as text from each position's step-0 row (every k-th entry: k copies)."""
    return ("array_to_string(list_slice(list(eval_task ORDER BY eval_pos) FILTER (WHERE step = 0), "
            "1, -1, count(*) FILTER (WHERE step = 0 AND eval_pos = 1)), ',')")


def run_metrics(
    output: str | Path,
    params: Sequence[str] = (),
    metrics: Sequence[str] = METRICS,
    engine: str = "auto",
    experiment: str | None = None,
    threads: int | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """One row per run: its metadata, ACC, BWT, FWT, forgetting, learning accuracy.

    Args:
        output: results directory (``OUTPUT/r_matrix/``; ``OUTPUT/runs/`` adds each
            run's ``status``, and ``study`` for tuning trials).
        params: config values to add as columns, by the names tuning uses:
            ``ewc.lambda_`` (a strategy's field), ``train.lr``, ``model.hidden``,
            ``order``; a trial's searched values come from its ``tuning`` record. Runs
            without the value get None. See :func:`param_value`.
        metrics: which of :data:`METRICS` to compute (without ``forgetting`` the query
            has one grouping stage instead of two: about twice as fast).
        engine: ``duckdb`` (one SQL query over the files), ``pandas`` (pyarrow +
            NumPy, no DuckDB needed, also for ``s3://`` URIs) or ``auto``.
        experiment: only this experiment (ConfigError naming the ones there if absent).
        threads: DuckDB threads (default: DuckDB's).
        split: ``"test"`` (default) or ``"val"``: which R the metrics are of.

    Returns:
        Columns :data:`RUN_COLUMNS` + ``metrics`` + ``params``, sorted by ``run_id``;
        ``order`` is the task order as text (``"2,0,1"``).

    Raises:
        ConfigError: no results, a corrupt or foreign file (named), an unknown
            experiment.

    Example:
        df = run_metrics("results/quickstart")
        df.groupby("strategy")["acc"].mean()
    """
    metrics = list(metrics)
    metrics_sql("t", metrics)  # checks the names
    _check_split(split)
    engine = _engine(engine, output)
    df = _relisting(lambda: _metrics(output, metrics, engine, experiment, threads, split))
    df = df.sort_values("run_id", ignore_index=True)
    params = [p for p in params if p not in df.columns]
    if params:
        df = add_params(df, params, _configs(output, df["run_id"]))
    return df


def _metrics(output: str | Path, metrics: list[str], engine: str, experiment: str | None,
             threads: int | None, split: str) -> pd.DataFrame:
    if engine == "duckdb":
        files = parquet_files(output, "r_matrix")
        runs = parquet_files(output, "runs")
        if experiment is not None:
            files, runs = _only(files, experiment), _only(runs, experiment)
            if not files:
                raise ConfigError("experiment", _absent(experiment, parquet_files(output)))
        return _duckdb_metrics(files, runs, metrics, threads, split)
    return _pandas_metrics(output, metrics, experiment, split)


def _only(files: Sequence[str], experiment: str) -> list[str]:
    from urllib.parse import quote

    return [f for f in files if Path(f).parent.name == _PARTITION + quote(experiment, safe="")]


def _absent(experiment: str, files: Sequence[str]) -> str:
    from urllib.parse import unquote

    names = sorted({unquote(Path(f).parent.name[len(_PARTITION):]) for f in files})
    return f"{experiment!r} is not in the results; experiments there: {', '.join(names)}"


def _duckdb_metrics(files: Sequence[str], runs: Sequence[str], metrics: Sequence[str],
                    threads: int | None, split: str) -> pd.DataFrame:
    """The metrics query; with a runs table, order, status and study come from it."""
    if not runs:
        return _finish(_query(metrics_sql(_source("files", split), metrics), files), metrics)
    study = ("CASE WHEN any_value(config) LIKE '%\"tuning\"%' THEN json_extract_string("
             "any_value(config), '$.tuning.study') END")
    sql = (f"SELECT m.*, r.\"order\", r.status, r.study FROM ("
           f"{metrics_sql(_source('files', split), metrics, order=False)}) m LEFT JOIN ("
           f"SELECT run_id, array_to_string(any_value(task_order), ',') AS \"order\", "
           f"any_value(status) AS status, {study} AS study "
           f"FROM {_source('runs')} GROUP BY run_id) r USING (run_id)")
    return _finish(_query(sql, files, runs, threads), metrics)


def _finish(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    for col in ("status", "study"):
        if col not in df:
            df[col] = None
    if df["seed"].notna().all():
        df["seed"] = df["seed"].astype("int64")
    df["num_tasks"] = df["num_tasks"].astype("int32")
    for m in metrics:
        df[m] = df[m].astype("float64")
    return df[list(RUN_COLUMNS) + list(metrics)]


# -- the pandas fallback ---------------------------------------------------------------------
def _read_r(output: str | Path, experiment: str | None, split: str = "test") -> tuple[Any, Any]:
    """``(cells, meta)``: the R columns the metrics need, and one metadata row per run.

    Local stores are read with ``pyarrow.dataset`` after every file's footer is checked
    (a foreign file is named, never silently null-filled); the metadata strings are read
    for the ``step == 0, eval_pos == 1`` rows only. URIs go through
    :func:`llray.results.load_r_matrix`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from llray import results

    if "://" in os.fspath(output):
        df = results.load_r_matrix(output, columns=[*_R_READ, "split"], experiment=experiment)
        df = df[df["split"] == split].drop(columns="split")
        table = pa.Table.from_pandas(df, preserve_index=False)
        return table, table.filter((pc.field("step") == 0) & (pc.field("eval_pos") == 1))
    files = parquet_files(output, "r_matrix")
    if experiment is not None:
        files = _only(files, experiment)
        if not files:
            raise ConfigError("experiment", _absent(experiment, parquet_files(output)))
    try:
        check_files(files, "r_matrix")
    except ConfigError:
        _check_present(files)
        raise
    hive = ds.partitioning(pa.schema([("experiment", pa.string())]), flavor="hive")
    options = ds.ParquetReadOptions(dictionary_columns=["run_id"])  # no string per row
    fmt = ds.ParquetFileFormat(read_options=options)
    schema = results.R_MATRIX_FILE_SCHEMA.append(pa.field("experiment", pa.string()))
    of_split = pc.field("split") == split  # a file without the column: null, test
    if split == "test":
        of_split = of_split | pc.field("split").is_null()
    try:
        dataset = ds.dataset(files, schema=schema, format=fmt, partitioning=hive,
                             partition_base_dir=str(Path(output) / "r_matrix"))
        cells = dataset.to_table(columns=["run_id", "step", "eval_task", "eval_pos", "accuracy"],
                                 filter=of_split)
        first = (pc.field("step") == 0) & (pc.field("eval_pos") == 1) & of_split
        return cells, dataset.to_table(columns=["run_id", *_META], filter=first)
    except OSError:
        _check_present(files)
        raise


def _pandas_metrics(output: str | Path, metrics: Sequence[str],
                    experiment: str | None, split: str = "test") -> pd.DataFrame:
    """The same per-run metrics with pyarrow + NumPy: R rows scattered into dense stacks.

    Run ids are dictionary-encoded in Arrow (no Python string per row); runs are
    grouped by their number of tasks T, each group becomes one array
    ``[n_runs, T + 1, T]`` and :func:`llray.metrics.summary` runs on the whole stack.
    """
    import pyarrow.compute as pc

    from llray import metrics as M

    table, meta = _read_r(output, experiment, split)
    if table.num_rows == 0:
        where = f" of the {split!r} split" if split != "test" else ""
        raise ConfigError("output", f"no results{where} in {os.fspath(output)!r}")
    encoded = pc.dictionary_encode(table["run_id"]).combine_chunks()  # unifies the chunks
    codes = encoded.indices.to_numpy().astype(np.int64)
    n = len(encoded.dictionary)
    T = np.zeros(n, dtype=np.int64)
    pos = table["eval_pos"].to_numpy()
    np.maximum.at(T, codes, pos)
    ids = pd.DataFrame({"run_id": encoded.dictionary.to_pandas()})  # in code order
    out = ids.merge(meta.to_pandas().drop_duplicates("run_id"), on="run_id", how="left")
    out["num_tasks"] = T
    order = np.full(n, "", dtype=object)
    values = {m: np.full(n, np.nan) for m in metrics}
    step, acc = table["step"].to_numpy(), table["accuracy"].to_numpy()
    task = table["eval_task"].to_numpy()
    for t in np.unique(T):  # one stack per number of tasks, not one per run
        runs_t = np.flatnonzero(T == t)
        local = np.full(n, -1)
        local[runs_t] = np.arange(len(runs_t))
        rows = T[codes] == t
        R = np.full((len(runs_t), t + 1, t), np.nan)
        R[local[codes[rows]], step[rows], pos[rows] - 1] = acc[rows]
        O = np.full((len(runs_t), t), -1, dtype=np.int64)
        init = rows & (step == 0)
        O[local[codes[init]], pos[init] - 1] = task[init]
        order[runs_t] = _join_columns(O)
        s = M.summary(R)
        for m in metrics:
            values[m][runs_t] = s[m]
    out["order"] = order
    for m in metrics:
        out[m] = values[m]
    out = out.merge(_status(output, experiment), on="run_id", how="left")
    return _finish(out, metrics)


def _status(output: str | Path, experiment: str | None) -> pd.DataFrame:
    """``run_id, status, study`` from the runs table (study: tuning trials only)."""
    from llray import results

    runs = results.load_runs(output, columns=["run_id", "status", "config"],
                             experiment=experiment)
    tuned = runs["config"].str.contains('"tuning"', regex=False, na=False).to_numpy()
    study = np.full(len(runs), None, dtype=object)
    study[tuned] = [(_loads(c).get("tuning") or {}).get("study")
                    for c in runs["config"][tuned]]
    return runs[["run_id", "status"]].assign(study=study)


def _join_columns(a: np.ndarray) -> np.ndarray:
    """Rows of an int matrix as ``"2,0,1"`` strings (a loop over columns, not rows)."""
    text = a[:, 0].astype(str).astype(object)
    for k in range(1, a.shape[1]):
        text = text + "," + a[:, k].astype(str).astype(object)
    return text


def _loads(text: Any) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- parameters from the config JSON ---------------------------------------------------------
def _configs(output: str | Path, run_ids: pd.Series) -> pd.Series:
    """Each run's config JSON (None when the runs table lacks it), aligned to ``run_ids``."""
    from llray import results

    runs = results.load_runs(output, columns=["run_id", "config"])
    return run_ids.map(runs.set_index("run_id")["config"])


def param_value(config: dict, key: str) -> Any:
    """A config value by its tuning name (``ewc.lambda_``, ``train.lr``, ``order``).

    A tuning trial's searched values (``config["tuning"]["params"]``) come first; then
    the ``stream``/``model``/``train`` sections; otherwise ``NAME.field`` is a field of
    the strategy ``NAME`` and is None for runs of other strategies.

    Example:
        >>> param_value({"strategy": {"name": "ewc", "lambda_": 10.0}}, "ewc.lambda_")
        10.0
        >>> param_value({"strategy": {"name": "naive"}}, "ewc.lambda_") is None
        True
    """
    searched = (config.get("tuning") or {}).get("params") or {}
    if key in searched:
        return searched[key]
    if key in ("order", "seed", "strategy"):
        value = config.get(key)
        return (value.get("label") or value.get("name")) if isinstance(value, dict) else value
    head, _, rest = key.partition(".")
    if head in _SECTIONS:
        value: Any = config.get(head)
    else:
        strategy = config.get("strategy") or {}
        value = strategy if strategy.get("name") == head else None
    for part in rest.split(".") if rest else []:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def add_params(df: pd.DataFrame, keys: Sequence[str], configs: pd.Series) -> pd.DataFrame:
    """``df`` with one column per key, read from each run's config JSON.

    Lists become text (``"2,0,1"``) so they can be grouped on; numbers stay numbers.
    """
    parsed = [_loads(c) for c in configs]
    df = df.copy()
    for key in keys:
        values = [_hashable(param_value(c, key)) for c in parsed]
        df[key] = _numeric(pd.Series(values, index=df.index, dtype=object))
    return df


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _numeric(s: pd.Series) -> pd.Series:
    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if s.notna().any() and s.map(lambda v: v is None or is_number(v)).all():
        return pd.to_numeric(s, errors="coerce")
    return s


# -- grouping and confidence intervals -------------------------------------------------------
def t_halfwidth(std: Any, n: Any, confidence: float = 0.95) -> np.ndarray:
    """Half-width of the Student-t interval of a mean: t_{(1+c)/2, n−1} · std / √n.

    ``std`` is the sample standard deviation (ddof 1); NaN where ``n < 2``.

    Example:
        >>> round(float(t_halfwidth(1.0, 4)), 4)   # t_{0.975, 3} / 2
        1.5912
    """
    from scipy import stats

    std = np.asarray(std, dtype="float64")
    n = np.asarray(n, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf((1 + confidence) / 2, np.where(n >= 2, n - 1, np.nan))
        return t * std / np.sqrt(n)


def summarize(
    per_run: pd.DataFrame,
    by: Sequence[str] | str = ("strategy",),
    metrics: Sequence[str] = ("acc", "bwt", "fwt"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean, sample std and Student-t confidence interval of each metric per group.

    Each run is one sample: grouped by ``strategy`` the interval is over that
    strategy's seeds (and orders, if the sweep had several; add ``order`` to ``by`` to
    keep them apart). With a ``status`` column, only ``ok`` runs (and runs of unknown
    status) are averaged: a run stopped early by a tuning scheduler is counted in
    ``n_stopped`` and left out even where a metric of it is defined; other runs with a
    NaN metric (diverged, failed) are left out of that metric and counted in ``n_nan``.

    Returns:
        One row per group: the ``by`` columns, ``n`` (runs), ``n_nan``, ``n_stopped``,
        and per metric ``M``: ``M`` (mean), ``M_std``, ``M_n``, ``M_ci_low``,
        ``M_ci_high``.

    Example:
        >>> df = pd.DataFrame({"strategy": ["a", "a", "b"], "acc": [0.5, 0.7, 0.9]})
        >>> s = summarize(df, metrics=["acc"])
        >>> s[["strategy", "n", "acc"]].round(3).to_dict("records")
        [{'strategy': 'a', 'n': 2, 'acc': 0.6}, {'strategy': 'b', 'n': 1, 'acc': 0.9}]
    """
    by = [by] if isinstance(by, str) else list(by)
    for col in [*by, *metrics]:
        if col not in per_run.columns:
            raise ConfigError("by" if col in by else "metrics",
                              f"unknown column {col!r}; columns: {', '.join(per_run.columns)}"
                              " (study parameters: pass params=[...] to run_metrics)")
    if not 0 < confidence < 1:
        raise ConfigError("confidence", f"must be in (0, 1), got {confidence}")
    status = per_run["status"] if "status" in per_run.columns else pd.Series(
        None, index=per_run.index, dtype=object)
    finished = (status.isna() | status.isin(["ok"])).to_numpy(dtype=bool)
    per_run = per_run.assign(**{m: per_run[m].where(finished) for m in metrics},
                             _stopped=status.isin(["stopped"]).to_numpy(dtype="int64"))
    grouped = per_run.groupby(by, dropna=False, sort=True)
    out = grouped.size().rename("n").to_frame()
    stopped = grouped["_stopped"].sum()
    counts = []
    for m in metrics:
        agg = grouped[m].agg(["mean", "std", "count"])
        half = t_halfwidth(agg["std"], agg["count"], confidence)
        out[m] = agg["mean"]
        out[f"{m}_std"] = agg["std"]
        out[f"{m}_n"] = agg["count"]
        out[f"{m}_ci_low"] = agg["mean"] - half
        out[f"{m}_ci_high"] = agg["mean"] + half
        counts.append(agg["count"])
    counted = pd.concat(counts, axis=1).min(axis=1) if counts else out["n"] - stopped
    out.insert(1, "n_nan", out["n"] - stopped - counted)
    out.insert(2, "n_stopped", stopped)
    return out.reset_index()


def summary(
    output: str | Path,
    by: Sequence[str] | str = ("strategy",),
    metrics: Sequence[str] = ("acc", "bwt", "fwt"),
    confidence: float = 0.95,
    engine: str = "auto",
    per_experiment: bool = True,
) -> pd.DataFrame:
    """:func:`run_metrics` then :func:`summarize`; ``by`` may name study parameters.

    Groups are also split by ``experiment`` (its first column) unless
    ``per_experiment=False``: one results directory may hold a sweep, a study, and the
    curriculum's runs (experiment ``<name>-curriculum``) of the same strategy, which are
    different experiments and are not averaged together unless asked.

    Example:
        summary("results/ewc_lambda", by=["ewc.lambda_"])
        summary("results/quickstart", by=["strategy"], per_experiment=False)  # pooled
    """
    by = [by] if isinstance(by, str) else list(by)
    if per_experiment and "experiment" not in by:
        by = ["experiment", *by]
    params = [b for b in by if b not in RUN_COLUMNS and b not in METRICS]
    need = list(dict.fromkeys([*metrics, "acc"]))
    return summarize(run_metrics(output, params, need, engine), by, metrics, confidence)


# -- mean R per group (heatmaps, curves) ------------------------------------------------------
def mean_r(output: str | Path, by: Sequence[str] = ("experiment", "strategy"),
           engine: str = "auto", skip_status: Sequence[str] = ("stopped",),
           split: str = "test") -> pd.DataFrame:
    """Mean accuracy per (group, T, step, eval_pos) over the group's runs, NaN left out,
    on the ``split`` R ("test" by default, or "val").

    Columns of R are order positions (``eval_pos``), so runs with different orders
    average as "the j-th task learned". ``n`` counts the runs with a finite value. Runs
    whose status in ``runs/`` is in ``skip_status`` are left out: by default those a
    tuning scheduler stopped early, whose first rows would otherwise be averaged over
    more (and worse) runs than the last ones.

    Example:
        mean_r("results/quickstart").head()
    """
    by = list(by)
    _check_split(split)
    if _engine(engine, output) == "duckdb":
        return _relisting(lambda: _mean_r_duckdb(output, by, skip_status, split))
    from llray import results

    df = results.load_r_matrix(output, columns=list(dict.fromkeys(
        ["run_id", *by, "step", "eval_pos", "accuracy", "split"])))
    df = df[df["split"] == split]
    if skip_status:
        runs = results.load_runs(output, columns=["run_id", "status"])
        df = df[~df["run_id"].isin(runs.loc[runs["status"].isin(skip_status), "run_id"])]
    df["num_tasks"] = df.groupby("run_id")["eval_pos"].transform("max").astype("int32")
    df = df[np.isfinite(df["accuracy"])]
    g = df.groupby([*by, "num_tasks", "step", "eval_pos"], sort=True)["accuracy"]
    return g.agg(accuracy="mean", n="count").reset_index()


def _mean_r_duckdb(output: str | Path, by: list[str], skip_status: Sequence[str],
                   split: str) -> pd.DataFrame:
    keys = ", ".join(f'"{b}"' for b in by)
    files = parquet_files(output, "r_matrix")
    runs = parquet_files(output, "runs") if skip_status else []
    where = ""
    if runs:
        listed = ", ".join("'" + str(s).replace("'", "''") + "'" for s in skip_status)
        where = (f"WHERE run_id NOT IN (SELECT run_id FROM {_source('runs')} "
                 f"WHERE status IN ({listed}) AND run_id IS NOT NULL)")
    sql = (f"WITH c AS (SELECT {keys}, step, eval_pos, accuracy, max(eval_pos) OVER "
           f"(PARTITION BY run_id) AS num_tasks FROM {_source('files', split)} {where}) "
           f"SELECT {keys}, CAST(num_tasks AS INTEGER) AS num_tasks, step, eval_pos, "
           f"avg(accuracy) FILTER (WHERE NOT isnan(accuracy)) AS accuracy, "
           f"count(accuracy) FILTER (WHERE NOT isnan(accuracy)) AS n FROM c "
           f"GROUP BY ALL ORDER BY ALL")
    return _query(sql, files, runs)


def connect(output: str | Path, threads: int | None = None) -> Any:
    """A DuckDB connection with views ``r_matrix`` (both splits: filter on ``split``),
    ``runs``, ``run_metrics`` (of the test R) and, when the store has validation rows,
    ``run_metrics_val``.

    Example:
        con = connect("results/quickstart")
        con.sql("SELECT strategy, avg(acc) FROM run_metrics GROUP BY 1").df()
    """
    import duckdb

    parquet_files(output, "r_matrix")  # ConfigError when there are no results
    runs = parquet_files(output, "runs")
    con = duckdb.connect(config={"threads": threads} if threads else {})
    con.execute(f"CREATE VIEW r_matrix AS SELECT * FROM {_glob(output, 'r_matrix')}")
    if runs:
        con.execute(f"CREATE VIEW runs AS SELECT * FROM {_glob(output, 'runs')}")
    try:
        con.execute("CREATE VIEW r_test AS SELECT * FROM r_matrix WHERE "
                    + _split_filter("test"))
        con.execute("CREATE VIEW r_val AS SELECT * FROM r_matrix WHERE " + _split_filter("val"))
        con.execute(f"CREATE VIEW run_metrics_val AS {metrics_sql('r_val')}")
        con.execute(f"CREATE VIEW run_metrics AS {metrics_sql('r_test')}")
    except duckdb.BinderException:  # no file has the split column: all rows are test rows
        con.execute(f"CREATE VIEW run_metrics AS {metrics_sql('r_matrix')}")
    return con
