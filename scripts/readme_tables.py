"""The README's tables that come from llray's output, produced from the job configs.

Each table follows a ``<!-- table: NAME -->`` line in README.md and is the summary table
of ``llray report`` (its table lines, not the note under it) for the runs of NAME's job
configs. The runs are learned with ``llray.experiment.execute`` in ``--workers`` local
processes (default 2), one thread each as a Ray worker with ``num_cpus: 1``: on CPU a run
is a pure function of its config and seed, so they give exactly the R (and the table) of
``make demo`` / ``make reference``, which run the same configs on Ray.

Usage::

    python scripts/readme_tables.py quickstart            # print the table
    python scripts/readme_tables.py --check quickstart    # exit 1 if README.md differs
    python scripts/readme_tables.py --write quickstart reference   # update README.md

``reference`` learns 190 runs (minutes); ``quickstart`` 12 (seconds).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLES = {"quickstart": ["jobs/quickstart.yaml"], "reference": ["jobs/reference/*.yaml"]}
BLOCK = r"(<!-- table: {name} -->\n(?:.*\n)*?```\n)(.*?)(```)"


def _learn(spec: object) -> object:
    """The RunResult of ``spec``, learned in this (worker) process on one thread, as a
    Ray worker with ``num_cpus: 1`` learns it."""
    import torch

    from llray.data import make_stream
    from llray.experiment import execute

    torch.set_num_threads(1)
    return execute(spec, make_stream(spec.stream))


def table(name: str, workers: int = 2) -> str:
    """The report table of the runs of table ``name``'s job configs (text, newline-ended),
    learned by ``workers`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    from llray.config import load_config
    from llray.distributed.sweep import meta_for
    from llray.data import make_stream
    from llray.report import report
    from llray.results import write_run

    specs, streams = [], []
    for pattern in TABLES[name]:
        for path in sorted(ROOT.glob(pattern)):
            cfg = load_config(path)
            stream = make_stream(cfg.stream)
            for spec in cfg.runs():
                specs.append(spec)
                streams.append(stream)
    import multiprocessing

    # spawn: a fresh interpreter per worker, also when the caller already runs Ray's threads
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=spawn) as pool:
        results = list(pool.map(_learn, specs))
    with tempfile.TemporaryDirectory() as out:
        for spec, stream, result in zip(specs, streams, results):
            write_run(out, meta_for(spec, None, None, stream), result)
        text = report(out)
    return text.split("\n\n")[0].rstrip("\n") + "\n"


def readme_table(name: str, readme: str) -> str | None:
    """The table under ``<!-- table: NAME -->`` in the README text (None: no marker)."""
    match = re.search(BLOCK.format(name=re.escape(name)), readme, re.S)
    return match.group(2) if match else None


def replace_table(name: str, readme: str, new: str) -> str:
    pattern = BLOCK.format(name=re.escape(name))
    if not re.search(pattern, readme, re.S):
        raise SystemExit(f"README.md has no '<!-- table: {name} -->' block")
    return re.sub(pattern, lambda m: m.group(1) + new + m.group(3), readme, count=1, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(TABLES))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    mode.add_argument("--write", action="store_true", help="update README.md in place")
    parser.add_argument("--workers", type=int, default=2, help="processes learning the runs")
    args = parser.parse_args(argv)
    readme = README.read_text()
    differ = []
    for name in args.names:
        new = table(name, args.workers)
        if args.write:
            readme = replace_table(name, readme, new)
        elif args.check:
            if readme_table(name, readme) != new:
                differ.append(name)
        else:
            print(new, end="")
    if args.write:
        README.write_text(readme)
    if differ:
        print(f"README.md differs from the output for: {', '.join(differ)}; run "
              f"python scripts/readme_tables.py --write {' '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
