"""SIGTERM takes the SIGINT path: ``kill``, ``ray job stop`` and Ctrl+C end a command alike.

The ``llray`` command installs :func:`sigterm_as_sigint` before it runs a command. The
SIGTERM handler calls whatever handles SIGINT at that moment: Python's default (a
``KeyboardInterrupt``, which the command line turns into exit 130 and the resume hint),
or the handler of a library that catches SIGINT itself (Ray Tune's, which saves the
study and stops it). ``ray.init`` installs a SIGTERM handler of its own (it exits
through Ray's shutdown, which aborts the process); :func:`reinstall` puts ours back and
is called right after Ray starts.

Example:
    >>> import os, signal
    >>> sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own
    >>> previous = sigterm_as_sigint()
    >>> try:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     signal.sigtimedwait([], 0.1)  # let the handler run
    ... except KeyboardInterrupt:
    ...     print("interrupted")
    ... finally:
    ...     restore(previous)
    ...     _ = signal.signal(signal.SIGINT, sigint)
    interrupted
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_installed = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Do what SIGINT does now; a SIGINT that is ignored or left to the system (a job
    started in the background ignores it) still interrupts: SIGTERM asks to stop."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _on_sigterm:
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt("SIGTERM")


def sigterm_as_sigint() -> Any:
    """Make SIGTERM take the SIGINT path in this process; returns the previous handler.

    Does nothing (and returns None) outside the main thread, where Python cannot set
    signal handlers.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
    return previous


def reinstall() -> None:
    """Put the SIGTERM handler back if :func:`sigterm_as_sigint` set it and something
    (``ray.init``) has replaced it since; otherwise leave SIGTERM alone."""
    if (_installed and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is not _on_sigterm):
        signal.signal(signal.SIGTERM, _on_sigterm)


def restore(previous: Any) -> None:
    """Give SIGTERM back the handler :func:`sigterm_as_sigint` returned."""
    global _installed
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, previous)
    _installed = False
