"""The embedded Ray of a command without ``--address``: start only what llray uses, stop fast.

``ray.init()`` on a new local cluster starts, besides the GCS, the raylet and its agents,
three Python services llray never talks to: the autoscaler monitor (a fixed local node
has nothing to scale), the log monitor (llray runs with ``log_to_driver=False``: actors'
errors come back as exceptions, their output stays in Ray's log files) and the API
server behind the dashboard and the job API (started even with
``include_dashboard=False``; ``ray.init`` waits up to a second for it). Measured on a
2-core machine they cost about 2 CPU-seconds at start, taken from the first runs, and
ray.init waits for the API server. :func:`start` leaves them out, unless the dashboard is
asked for: then it is Ray's own ``ray.init`` with the dashboard on 127.0.0.1. Either way
the dashboard agent takes a free port, not Ray's fixed one, which another Ray on the
machine may hold (:func:`_agent_port_free`).

Leaving them out means skipping three of Ray's private start-up methods while
``ray.init`` runs. Where this Ray release does not have them under these names,
:func:`start` says nothing and starts Ray in full: only the start-up cost changes.

:func:`stop` ends the embedded Ray at the end of a command: it signals every Ray process
at once and then lets ``ray.shutdown`` reap them, instead of Ray's own shutdown at
interpreter exit, which stops them one after another (up to a second each) after a
fixed half-second pause.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Iterator

#: Ray's head-node services llray does not use, as methods of ``ray._private.node.Node``.
UNUSED_SERVICES = ("start_monitor", "start_log_monitor", "start_api_server")


def start(num_cpus: int, num_gpus: int | None, dashboard: bool) -> dict:
    """``ray.init`` a new local Ray on this machine (the caller keeps it on 127.0.0.1);
    its address info (``gcs_address``, ...).

    Args:
        num_cpus: CPUs of the node.
        num_gpus: GPUs of the node (``None``: as Ray detects them).
        dashboard: start Ray's dashboard (on 127.0.0.1) and every service of a full start.
    """
    import ray

    kwargs = dict(address="local",  # a new Ray of our own, even if another runs here
                  num_cpus=num_cpus, include_dashboard=dashboard,
                  dashboard_host="127.0.0.1", log_to_driver=False)
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    lean = contextlib.nullcontext() if dashboard else _without(UNUSED_SERVICES)
    with _agent_port_free(), lean:
        return ray.init(**kwargs).address_info


@contextlib.contextmanager
def _agent_port_free() -> Iterator[None]:
    """While inside: a new node's dashboard agent serves HTTP on a port the system picks.

    ``ray.init`` gives every new local node's dashboard agent the same fixed HTTP port
    (52365). When another Ray on this machine holds it (a second llray command, a
    test session, a ``ray start``), the agent retries with backoff and the raylet, which
    waits for the agent, is registered 3.3 s later (measured on 2 cores), and the agent
    then serves no HTTP at all. Port 0, which Ray's agent accepts, lets the system pick a
    free port; Ray records the bound one for the dashboard and the job API. Where this
    Ray release has no such default, nothing is changed.
    """
    try:
        from ray._private import ray_constants
        from ray._private.node import Node
    except ImportError:
        yield  # another Ray release: its own ports
        return
    fixed = getattr(ray_constants, "DEFAULT_DASHBOARD_AGENT_LISTEN_PORT", None)
    init = Node.__dict__.get("__init__")
    if fixed is None or init is None:
        yield
        return

    @functools.wraps(init)
    def __init__(self, ray_params, *args, **kwargs):
        if getattr(ray_params, "dashboard_agent_listen_port", None) == fixed:
            ray_params.dashboard_agent_listen_port = 0
        init(self, ray_params, *args, **kwargs)

    with _swapped(Node, {"__init__": __init__}):
        yield


@contextlib.contextmanager
def _without(names: tuple[str, ...]) -> Iterator[None]:
    """While inside: the head node's ``names`` start nothing (all or none of them)."""
    try:
        from ray._private.node import Node
    except ImportError:
        Node = None
    if Node is None or not all(callable(getattr(Node, n, None)) for n in names):
        yield  # another Ray release: its full start
        return
    with _swapped(Node, dict.fromkeys(names, _skipped)):
        yield


@contextlib.contextmanager
def _swapped(cls: type, replacements: dict[str, object]) -> Iterator[None]:
    """While inside: ``cls``'s attributes ``replacements`` are set; afterwards each is
    what it was (removed again where ``cls`` only inherited it)."""
    saved = {n: cls.__dict__.get(n) for n in replacements}
    try:
        for n, value in replacements.items():
            setattr(cls, n, value)
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                delattr(cls, n)
            else:
                setattr(cls, n, value)


def _skipped(self, *args, **kwargs) -> None:
    """A head-node service llray does not use: not started."""


def stop(grace: float = 0.2, wait: bool = True) -> None:
    """Shut down this process's Ray; an embedded Ray's processes are stopped together.

    ``ray.shutdown`` disconnects the driver, then stops the node's processes one after
    another, giving each up to a second after its SIGTERM; the raylet and the GCS use
    all of it and are then killed (measured: after a SIGTERM only the dashboard agent
    exits within 3 s). Here, in that same step, every process of the node and their
    children (workers, agents) get their SIGTERM at once, what still runs after
    ``grace`` seconds is killed, and Ray's own one-by-one stop finds them gone. Call it
    only when nothing more is asked of Ray: every result is back in the driver. A
    joined cluster (``--address``) is only disconnected from; a Ray the command started in
    a process of its own (:mod:`llray.distributed.head`) is stopped there, in this same
    way. Safe to call when Ray was never started.

    ``wait=False`` is for a process that exits right after (the ``llray`` command): a Ray
    in a child process is told to stop and not waited for, and this process does not
    disconnect from it first (its exit does that); the child stops Ray's processes while
    the shell already has its prompt back (0.3 + 0.5 s on 2 cores).
    """
    from llray.distributed import head

    if not wait and head.launched() is not None:
        head.stop(wait=False)
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        node = getattr(ray._private.worker, "_global_node", None)  # the node ray.init started
        kill_all = getattr(node, "kill_all_processes", None)
        if kill_all is not None and getattr(node, "all_processes", None):
            def kill_all_processes(*args, **kwargs):
                _end_together(_processes(node), grace)
                return kill_all(*args, **kwargs)

            node.kill_all_processes = kill_all_processes
        ray.shutdown()
    head.stop()  # a Ray started in a process of its own stops there, the same way


def stop_descendants(grace: float = 0.2) -> None:
    """End every process descended from this one, as :func:`stop` ends a node's.

    For the process that started a Ray of its own (:mod:`llray.distributed.head`): a
    start that fails (on an overloaded machine Ray's node can time out while starting)
    leaves no initialised Ray for :func:`stop` to stop, but the GCS, the raylet and the
    agents the raylet already started may run. With :func:`adopt_orphans` in force, the
    ones whose parent already exited are this process's children too.
    """
    try:
        import psutil
    except ImportError:
        return
    with contextlib.suppress(psutil.Error):
        children = [p.pid for p in psutil.Process().children()
                    if p.status() != psutil.STATUS_ZOMBIE]
        if children:
            _end_together(children, grace)


def adopt_orphans() -> bool:
    """Make this process the parent of its orphaned descendants (Linux's "child
    subreaper"), so that :func:`stop_descendants` still finds a Ray agent whose raylet
    died first; whether that is in force."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0


def _processes(node) -> list[int]:
    """Live processes a Ray node started, but its reaper (which cleans up after a crash
    and is stopped last, as Ray does); none for a node that joined a cluster."""
    pids = []
    for kind, infos in dict(node.all_processes).items():
        if kind == "reaper":
            continue
        for info in infos:
            if info.process.poll() is None:
                pids.append(info.process.pid)
    return pids


def _end_together(pids: list[int], grace: float) -> None:
    """SIGTERM ``pids`` and their descendants at once, SIGKILL what runs after ``grace``."""
    try:
        import psutil  # Ray ships it (ray/thirdparty_files)
    except ImportError:
        psutil = None
    if psutil is None:  # the node's own processes only; Ray stops the rest
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        return
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
