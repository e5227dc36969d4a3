"""The ``llray`` command line.

Each subcommand is one module in :mod:`llray.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``execute(args) -> int``; this file only dispatches.
Exit codes: 0 success, 1 some run failed, 2 bad input (reported before any work, with
nothing written), 130 interrupted (SIGINT or SIGTERM, at any point of any command: one
line and, where the command has one, how to continue; no traceback). A command module
may define ``interrupted_hint(args) -> str | None`` for that line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from llray import signals
from llray.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _command_modules() -> list[ModuleType]:
    import llray.commands as pkg

    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"llray.commands.{n}") for n in names]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(prog="llray", description="Lifelong learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for mod in _command_modules():
        mod.add_arguments(sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP))
        modules[mod.NAME] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    module = modules[args.command]
    previous = signals.sigterm_as_sigint()  # SIGTERM (kill, ray job stop) acts as Ctrl+C
    try:
        return module.execute(args)
    except ConfigError as e:
        print(f"llray: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted(module, args)
    finally:
        signals.restore(previous)


def _interrupted(module: ModuleType, args: argparse.Namespace) -> int:
    """One line on stderr (with the command's hint on how to continue), exit 130."""
    hint = getattr(module, "interrupted_hint", lambda a: None)(args)
    print(f"\nllray: interrupted{': ' + hint if hint else ''}", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
