"""The embedded Ray started in a process of its own, while the command gets ready.

A command without ``--address`` needs a local Ray, and before it can use one it imports
torch, reads and checks the config and builds the task stream: about 3 s on 2 cores, on
one core. Starting Ray takes about 2-3 s more, mostly spent by Ray's own processes (the
GCS, the raylet) while the starting process waits. :func:`launch`, called first thing by
a command, starts that Ray in a child process (``python -m llray.distributed.head``)
which does only this (:func:`llray.distributed.embedded.start`: the lean start), so the
two happen at once on the two cores; :func:`llray.distributed.session.connect` then joins
the Ray the child started, a connection of a fraction of a second.

The child prints one line, ``ready <GCS address>``, and keeps its Ray until its standard
input closes: the command closes it when it is done (:func:`stop`), and the operating
system closes it when the command dies in any way, so no Ray outlives its command. Then
the child stops Ray's processes together (:func:`llray.distributed.embedded.stop`), as it
does on a SIGTERM of its own, and then whatever else it started: when Ray failed to start
(an overloaded machine), the GCS, the raylet and the raylet's agents may already run. It
ignores SIGINT: a Ctrl+C in the terminal reaches the whole process group, and the command,
not its Ray, decides what happens then.

The child's stderr is the command's: Ray's start-up messages, and its error when it
cannot start (then :meth:`Head.address` raises), reach the user as before.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys

#: Seconds a command waits for the child's Ray before giving up.
START_TIMEOUT_S = 120.0
#: Seconds the child may take to stop its Ray once told to; then it is killed.
STOP_TIMEOUT_S = 5.0

#: What Ray's worker processes import before they take work (learner actors, Tune
#: trials, taskonomy tasks all need torch and llray's learner).
PRELOAD = "llray.distributed.actor"
#: Prestart warm workers on an embedded Ray of at most this many CPUs.
PRESTART_MAX_CPUS = 8

_head: Head | None = None


def warm_workers(num_cpus: int) -> dict[str, str]:
    """Ray's settings (environment) for worker processes that are warm before they are asked for.

    Ray starts one idle worker process per CPU when a node's first driver connects, and
    gives them to the first tasks and actors of any job. With
    ``RAY_enable_worker_prestart`` the raylet starts them as soon as it starts, and with
    ``RAY_preload_python_modules`` each imports :data:`PRELOAD` (torch and llray's
    learner, about 2.5 s on 2 cores) before it takes work: while the command is still
    importing torch and reading its config, and not after it asked for its learners.
    Measured on 2 cores, the first learner starts 0.2-1 s after the command joins Ray
    instead of 1.5-3 s. Only on machines of up to :data:`PRESTART_MAX_CPUS` CPUs: idle
    workers stay (Ray keeps one per CPU), and holding torch in dozens of them that a
    sweep of multi-CPU runs never uses would cost gigabytes. A setting already in the
    environment is kept.
    """
    if num_cpus > PRESTART_MAX_CPUS:
        return {}
    return {k: os.environ.get(k, v) for k, v in (("RAY_enable_worker_prestart", "1"),
                                                  ("RAY_preload_python_modules", PRELOAD))}


class Head:
    """A child process starting, then holding, this command's embedded Ray."""

    def __init__(self, num_cpus: int, dashboard: bool) -> None:
        cmd = [sys.executable, "-m", "llray.distributed.head", "--num-cpus", str(num_cpus)]
        if dashboard:
            cmd.append("--dashboard")
        # its stderr is the command's: Ray's own start-up messages reach the user as before
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **warm_workers(num_cpus)})
        self._address: str | None = None

    def address(self, timeout: float = START_TIMEOUT_S) -> str:
        """The GCS address of the child's Ray, once it has started.

        Raises:
            RuntimeError: the child exited or did not answer within ``timeout`` (its
                error, if any, is on the command's stderr already).
        """
        if self._address is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
            if not line.startswith("ready "):
                self.stop()
                why = (f"it exited with code {self.proc.returncode}" if ready
                       else f"no answer within {timeout:g} s")
                raise RuntimeError(f"the embedded Ray did not start: {why}")
            self._address = line.split()[1]
        return self._address

    def stop(self, wait: bool = True) -> None:
        """Tell the child to stop its Ray (close its input); wait for it to exit."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if not wait:
            return
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def launch(num_cpus: int | None, dashboard: bool = False) -> None:
    """Start this command's embedded Ray in a child process, unless one is started
    already or this process has imported Ray (a caller of ``main()`` in Python, whose
    Ray, if any, the command uses as before)."""
    global _head
    if _head is not None or "ray" in sys.modules:
        return  # the environment below must be set before Ray is imported
    from llray.distributed.session import embedded_environment

    embedded_environment()  # the child inherits it
    # A new local ray.init() turns token authentication on unless RAY_AUTH_MODE says
    # otherwise, but only in its own process; the command joins with the same mode.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    _head = Head(num_cpus or os.cpu_count() or 1, dashboard)


def launched() -> Head | None:
    """The child started by :func:`launch`, if any."""
    return _head


def stop(wait: bool = True) -> None:
    """Stop the child's Ray, if one was launched; ``wait``: until the child has exited."""
    global _head
    if _head is not None:
        head, _head = _head, None
        head.stop(wait)


def _serve(num_cpus: int, dashboard: bool) -> None:
    """The child: start Ray, say where it is, keep it until stdin closes (or a SIGTERM
    comes), stop it, and every process it started, even when Ray failed to start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminated)
    from llray.distributed import embedded
    from llray.distributed.capacity import local_gpus

    embedded.adopt_orphans()
    try:
        info = embedded.start(num_cpus, local_gpus(), dashboard)
        signal.signal(signal.SIGTERM, _terminated)  # ray.init installed its own
        with contextlib.suppress(BrokenPipeError):  # the command is gone already
            print(f"ready {info['gcs_address']}", flush=True)
            sys.stdin.read()  # until the command closes it, or dies
    finally:
        embedded.stop()
        embedded.stop_descendants()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # stop Ray on the way out (``_serve``'s finally)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m llray.distributed.head")
    p.add_argument("--num-cpus", type=int, required=True)
    p.add_argument("--dashboard", action="store_true")
    a = p.parse_args()
    _serve(a.num_cpus, a.dashboard)
    sys.stdout.flush()
    os._exit(0)
