"""``llray report DIR``: the summary table from the Parquet files alone.

``--html FILE`` also writes one self-contained page of figures (R heatmaps, accuracy of
each task over time, ACC/BWT/FWT against the naive and joint bounds, study parameters
and importances); ``--png DIR`` writes the same figures as PNG files. The table is
printed either way; the paths written go to stderr, so ``--json`` output stays JSON.
"""

from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "print the summary table (ACC, BWT, FWT per strategy) of a results directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="results directory written by 'llray run'")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--html", metavar="FILE",
                   help="also write a self-contained HTML report with embedded figures")
    p.add_argument("--png", metavar="DIR", help="also write the report's figures as PNG files")


def execute(args: argparse.Namespace) -> int:
    from llray.report import report
    from llray.results import check_store

    figures = bool(args.html or args.png)
    # every file it will read, before it prints or creates anything: footers for the
    # table; the figures read every entry, so then the data too
    check_store(args.output, full=figures)
    if figures:
        from llray import html_report

        html_report.check_targets(args.html, args.png)  # before any work
    print(report(args.output, as_json=args.json))
    if args.html or args.png:
        sections = html_report.build(args.output)
        if args.html:
            path = html_report.write_html(args.output, args.html, sections)
            print(f"html report: {path}", file=sys.stderr)
        if args.png:
            paths = html_report.write_pngs(args.output, args.png, sections)
            print(f"{len(paths)} figures: {args.png}", file=sys.stderr)
    return 0
