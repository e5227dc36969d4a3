"""Options and defaults shared by the commands that run on Ray and write results."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_ray_output_arguments(p: argparse.ArgumentParser, name: str = "EXPERIMENT") -> None:
    """``--output`` (default ``results/NAME``), ``--address`` and ``--num-cpus``."""
    p.add_argument("--output", help=f"results directory (default: results/{name})")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a Ray job)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    p.add_argument("--dashboard", action="store_true",
                   help="start the embedded Ray's dashboard (on 127.0.0.1; off by default)")


def output_dir(args: argparse.Namespace, name: str) -> str:
    """``--output``, or ``results/<name>`` (the experiment's or study's name)."""
    return args.output or str(Path("results") / name)
