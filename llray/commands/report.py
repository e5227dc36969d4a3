"""``llray report DIR``: the summary table from the Parquet files alone."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "print the summary table (ACC, BWT, FWT per strategy) of a results directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="results directory written by 'llray run'")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")


def execute(args: argparse.Namespace) -> int:
    from llray.report import report

    print(report(args.output, as_json=args.json))
    return 0
