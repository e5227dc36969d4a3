"""The Parquet results store: every R entry and one row per run, partitioned by experiment.

Layout under an output directory (a local path or any ``pyarrow.fs`` URI such as
``s3://bucket/results``)::

    OUTPUT/r_matrix/experiment=NAME/<run_id>.parquet    one row per R entry
    OUTPUT/runs/experiment=NAME/<run_id>.parquet        one row per run

The package has four parts: :mod:`~llray.results.schema` (columns, statuses,
:class:`RunMeta`, the file checks), :mod:`~llray.results.write` (one run's tables, atomic
files), :mod:`~llray.results.read` (:func:`load` and friends, rebuilding R) and
:mod:`~llray.results.compact` (merging small files). Every public name is re-exported
here, so ``llray.results.load`` and ``from llray.results import write_run`` work.

The columns are :data:`R_MATRIX_SCHEMA` and :data:`RUNS_SCHEMA`; the ``experiment``
column lives in the directory name (hive partitioning), so the files themselves hold
:data:`R_MATRIX_FILE_SCHEMA` and :data:`RUNS_FILE_SCHEMA`. An R entry has a ``split``
("test", or "val" for the validation R); a run row has an ``error`` (why it failed or
diverged; null when ok). Both columns came after the first release: a file without
them still reads (``split`` "test", ``error`` null). Each file is written under a
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

from llray.results.compact import COMPACT_MAX_ROWS, CompactStats, compact
from llray.results.read import (
    finished_run_ids,
    load,
    load_r_matrix,
    load_runs,
    r_matrix_of,
    r_matrix_stack,
)
from llray.results.schema import (
    OPTIONAL_COLUMNS,
    PARTITION,
    R_MATRIX_FILE_SCHEMA,
    R_MATRIX_SCHEMA,
    RUNS_FILE_SCHEMA,
    RUNS_SCHEMA,
    SPLITS,
    STATUSES,
    Results,
    ResultsError,
    RunMeta,
    schema_problems,
)
from llray.results.write import (
    check_writable,
    r_matrix_table,
    runs_table,
    write_run,
    write_runs,
)

__all__ = [
    "COMPACT_MAX_ROWS",
    "OPTIONAL_COLUMNS",
    "PARTITION",
    "RUNS_FILE_SCHEMA",
    "RUNS_SCHEMA",
    "R_MATRIX_FILE_SCHEMA",
    "R_MATRIX_SCHEMA",
    "SPLITS",
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
    "schema_problems",
    "write_run",
    "write_runs",
]
