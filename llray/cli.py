"""The ``llray`` command: ``run`` a sweep, ``report`` its results.

Exit codes: 0 success, 1 a run failed, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llray.errors import ConfigError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llray", description="Lifelong learning on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the strategies x seeds x orders grid of a config")
    run.add_argument("config", help="experiment YAML (see jobs/)")
    run.add_argument("--output", help="results directory (default: results/EXPERIMENT)")
    run.add_argument("--address", help="Ray cluster address ('auto' inside a Ray job)")
    run.add_argument("--resume", action="store_true", help="skip runs already in --output")
    run.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    rep = sub.add_parser("report", help="print the summary table of a results directory")
    rep.add_argument("output", help="results directory written by 'llray run'")
    rep.add_argument("--json", action="store_true", help="JSON instead of a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from llray.commands.run import run_command

            return run_command(args)
        if args.command == "report":
            from llray.report import report

            print(report(args.output, as_json=args.json))
            return 0
    except ConfigError as e:
        print(f"llray: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
