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
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from llray import signals
from llray.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: The least value of each integer option (by its argparse dest), where a command has it.
AT_LEAST = {"num_cpus": 1, "max_in_flight": 1, "max_trials": 1, "top": 1, "max_rows": 1,
            "random": 0, "worker": 0}
#: Options that become counts or sizes: beyond this they are a typo, not a request.
AT_MOST = 2**31 - 1


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
        check_options(args)
        _start_ray_early(module, args)
        return module.execute(args)
    except ConfigError as e:
        print(f"llray: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        _remove_empty_outputs()
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted(module, args)
    finally:
        signals.restore(previous)
        if (write := sys.modules.get("llray.results.write")) is not None:
            write.forget_created()
        _stop_unused_ray()


def _start_ray_early(module: ModuleType, args: argparse.Namespace) -> None:
    """Start the command's embedded Ray now, in a process of its own, so that it starts
    while the command imports torch and checks its input (:mod:`llray.distributed.head`).
    Only for a command that says it will use one (``uses_embedded_ray``)."""
    uses = getattr(module, "uses_embedded_ray", None)
    if uses is not None and uses(args):
        from llray.distributed import head

        head.launch(args.num_cpus, dashboard=args.dashboard)


def _stop_unused_ray() -> None:
    """Stop an early-started Ray the command never joined (it failed before, or had
    nothing to run); a joined one stays for the caller, as Ray does after ``ray.init``.
    Not waited for: the child stops its Ray as soon as it has started."""
    head = sys.modules.get("llray.distributed.head")
    ray = sys.modules.get("ray")
    if head is not None and head.launched() is not None and not (ray and ray.is_initialized()):
        head.stop(wait=False)


def entry() -> NoReturn:
    """The ``llray`` console script: :func:`main`, then exit without the slow teardown.

    When the command is done, its files are closed and its output printed; what is left
    is stopping the embedded Ray and Python's own teardown (finalising torch, pandas and
    Ray modules, about 0.8-1.5 s on 2 cores). This stops Ray's processes together
    (:func:`llray.distributed.embedded.stop`), flushes the output and exits at once.
    An exception out of :func:`main` takes Python's normal way out.
    """
    code = main()
    try:
        if "ray" in sys.modules:
            from llray.distributed.embedded import stop

            stop(wait=False)  # the process exits next
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED if code == 0 else code
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def check_options(args: argparse.Namespace) -> None:
    """Integer options in range (:data:`AT_LEAST`, :data:`AT_MOST`), before any work.

    Example:
        >>> check_options(argparse.Namespace(num_cpus=-1))
        Traceback (most recent call last):
        llray.errors.ConfigError: --num-cpus: must be an integer in 1..2147483647, got -1
    """
    for dest, least in AT_LEAST.items():
        value = getattr(args, dest, None)
        if value is not None and not least <= value <= AT_MOST:
            raise ConfigError(f"--{dest.replace('_', '-')}",
                              f"must be an integer in {least}..{AT_MOST}, got {value}")


def _remove_empty_outputs() -> None:
    """Bad input writes nothing: remove the output directories this command created
    (``llray.results.check_writable``) if they are still empty."""
    write = sys.modules.get("llray.results.write")  # imported only if a command wrote
    if write is not None:
        write.remove_created_if_empty()


def _interrupted(module: ModuleType, args: argparse.Namespace) -> int:
    """One line on stderr (with the command's hint on how to continue), exit 130."""
    hint = getattr(module, "interrupted_hint", lambda a: None)(args)
    print(f"\nllray: interrupted{': ' + hint if hint else ''}", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    entry()
