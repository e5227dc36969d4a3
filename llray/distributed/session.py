"""Connecting to Ray: an embedded local Ray on 127.0.0.1, or an existing cluster.

Security defaults of the embedded Ray: every service listens on 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), the dashboard is not started (and would bind
to 127.0.0.1), nor are Ray's other services llray does not use
(:mod:`llray.distributed.embedded`), and Ray's token authentication stays on (Ray >=
2.59 enables it for a local ``ray.init()`` and keeps the token in
``~/.ray/auth_token``); llray never sets ``RAY_AUTH_MODE=disabled`` and warns when the
environment does.
"""

from __future__ import annotations

import os
import socket
import sys

from llray.errors import ConfigError

PROBE_TIMEOUT_S = 10.0  # a cluster address that does not accept a connection in this time


def loopback_only() -> None:
    """Keep an embedded Ray's services on 127.0.0.1 (must run before ``import ray``).

    With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray binds to the loopback address as
    it does on macOS; ``ray.cluster_utils.Cluster`` still runs several nodes.
    """
    if "ray" in sys.modules:
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def connect(address: str | None = None, num_cpus: int | None = None,
            dashboard: bool = False) -> None:
    """Start or join Ray once per process.

    Args:
        address: ``None`` starts an embedded local Ray (127.0.0.1 only, no dashboard,
            token authentication on); ``"auto"`` (inside ``ray job submit``) or
            ``"HOST:PORT"`` joins an existing cluster.
        num_cpus: CPUs of the embedded Ray (default: all of this machine's).
        dashboard: start the embedded Ray's dashboard (on 127.0.0.1).

    Raises:
        ConfigError: ``--address`` names no reachable Ray cluster (after at most
            :data:`PROBE_TIMEOUT_S` for a ``HOST:PORT`` that does not answer).
    """
    address = resolve_address(address)
    if address is None:
        embedded_environment()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("llray: warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication;"
              " anyone who can reach this Ray can run code on it", file=sys.stderr)
    import ray

    if ray.is_initialized():
        return
    from llray.distributed import head

    if address is None and head.launched() is not None:  # started by the command: join it
        import logging

        ray.init(address=head.launched().address(), log_to_driver=False,
                 logging_level=logging.WARNING)  # no second "connecting" message
        _reinstall_sigterm()
        return
    if address is None:
        from llray.distributed.capacity import local_gpus

        from llray.distributed import embedded

        gpus = local_gpus()  # as Ray counts them; given explicitly so checks agree
        embedded.start(num_cpus or os.cpu_count() or 1, gpus, dashboard)
        _reinstall_sigterm()
        return
    probe(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise ConfigError("--address", f"no Ray cluster at {address!r}: "
                                       f"{str(e).splitlines()[0]}") from None
    _reinstall_sigterm()


def embedded_environment() -> None:
    """The environment of an embedded Ray, set before it starts (and ``ray`` is imported).

    Its services stay on 127.0.0.1 (:func:`loopback_only`), and its learners run at the
    user's priority like any other process (Ray's default starts workers at nice 15,
    behind every other program on the machine).
    """
    loopback_only()
    os.environ.setdefault("RAY_worker_niceness", "0")


def _reinstall_sigterm() -> None:
    from llray import signals

    signals.reinstall()  # ray.init replaced the command line's SIGTERM handler


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when ``HOST:PORT`` is not a Ray (gRPC) server answering within ``timeout``.

    Ray itself retries an address that refuses connections, or accepts them and never
    answers, for many minutes. This opens a TCP connection, sends the HTTP/2 client
    preface and waits for the server's SETTINGS frame, which every gRPC server (Ray's
    GCS) sends at once. ``auto`` and ``ray://`` addresses are left to Ray (``auto``
    fails at once when no cluster runs here); with ``RAY_USE_TLS`` only TCP is checked.

    Raises:
        ConfigError: the address is unreachable or silent (``--address``, with the reason).
    """
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
                conn.settimeout(timeout)
                conn.sendall(_H2_PREFACE)
                frame = conn.recv(9)
                if len(frame) < 9 or frame[3] != 0x4:  # 0x4: SETTINGS
                    raise OSError("it answered, but not as a gRPC (Ray GCS) server")
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError("--address", f"cannot reach a Ray cluster at {address!r} "
                                       f"within {timeout:g} s: {reason}") from None


# HTTP/2 connection preface + an empty SETTINGS frame (RFC 9113, section 3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def resolve_address(address: str | None) -> str | None:
    """``--address auto`` as the cluster it means: ``RAY_ADDRESS`` (set by ``ray job
    submit``) or the cluster ``ray start`` last started on this machine.

    Ray's own ``auto`` falls back to any Ray process it finds on the machine (another
    user's embedded Ray included); llray asks for a cluster that was meant to be joined.

    Raises:
        ConfigError: ``--address``, when ``auto`` finds no cluster.
    """
    if address != "auto":
        return address
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # a Ray without the helper: let ray.init look for itself
        return address
    found = get_ray_address_from_environment(None, None)
    if not found:
        raise ConfigError("--address", "auto: no Ray cluster found (RAY_ADDRESS is not set "
                                       "and no 'ray start' cluster runs on this machine); "
                                       "start one with 'ray start --head', or leave "
                                       "--address out for an embedded Ray")
    return found


def alive_nodes() -> int:
    """Number of alive nodes in the connected Ray cluster."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def storage_warnings(output: str, checkpoint: str, num_nodes: int) -> list[str]:
    """Warnings for paths on one machine's disk when the cluster has several nodes.

    Checkpoints are written by the actors, on whatever node each runs: a node-local
    checkpoint directory means an actor restarted on another node cannot find its run's
    checkpoint. Results are written by the driver, so they land on the driver's node
    (the head node under ``ray job submit``).

    Example:
        >>> storage_warnings("results/x", "s3://bucket/ckpt", num_nodes=1)
        []
    """
    if num_nodes <= 1:
        return []
    from llray.distributed.checkpoint import is_node_local  # imports torch

    out = []
    if is_node_local(checkpoint):
        out.append(
            f"checkpoints go to {checkpoint!r}, a path on each node's own disk, on a "
            f"cluster of {num_nodes} nodes: a run restarted on another node after a "
            "failure will not find its checkpoint and starts over. Unless this path is a "
            "shared mount (NFS) on every node, set `checkpoint: {path: s3://...}` or "
            "another shared location."
        )
    if is_node_local(output):
        out.append(
            f"results go to {output!r} on the driver's node only (the head node under "
            "`ray job submit`); copy them with `ray rsync-down cluster.yaml` or point "
            "--output at a shared mount."
        )
    return out
