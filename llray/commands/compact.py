"""``llray compact DIR``: merge each experiment's per-run Parquet files into a few large ones.

``llray run`` and ``llray tune`` write one file per run; scanning 100,000 small files is
many times slower than scanning the same rows in a few files. Compaction keeps every run
(each once, its newest copy), is safe while others read the store, and does nothing
when run again. See :func:`llray.results.compact`.
"""

from __future__ import annotations

import argparse

NAME = "compact"
HELP = "merge the per-run Parquet files of each experiment into a few large files"
DEFAULT_MAX_ROWS = 1_000_000  # llray.results.COMPACT_MAX_ROWS, without importing it here


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="results directory written by 'llray run' or 'llray tune'")
    p.add_argument("--experiment", metavar="NAME", help="compact only this experiment")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, metavar="N",
                   help=f"rows per merged file (default {DEFAULT_MAX_ROWS:,})")


def interrupted_hint(args: argparse.Namespace) -> str:
    """After SIGINT/SIGTERM the store is whole (every run once); the rest merges later."""
    return f"every run is still there; run 'llray compact {args.output}' again to finish"


def execute(args: argparse.Namespace) -> int:
    from llray.results import compact

    print(compact(args.output, experiment=args.experiment, max_rows=args.max_rows))
    return 0
