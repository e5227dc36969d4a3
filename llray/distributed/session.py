"""Connecting to Ray: an embedded local Ray on 127.0.0.1, or an existing cluster.

Security defaults of the embedded Ray: every service listens on 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), the dashboard is not started (and would bind
to 127.0.0.1), and Ray's token authentication stays on (Ray >= 2.59 enables it for a
local ``ray.init()`` and keeps the token in ``~/.ray/auth_token``); llray never sets
``RAY_AUTH_MODE=disabled`` and warns when the environment does.
"""

from __future__ import annotations

import os
import sys

from llray.distributed.checkpoint import is_node_local


def loopback_only() -> None:
    """Keep an embedded Ray's services on 127.0.0.1 (must run before ``import ray``).

    With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray binds to the loopback address as
    it does on macOS; ``ray.cluster_utils.Cluster`` still runs several nodes.
    """
    if "ray" in sys.modules:
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    Args:
        address: ``None`` starts an embedded local Ray (127.0.0.1 only, no dashboard,
            token authentication on); ``"auto"`` (inside ``ray job submit``) or
            ``"HOST:PORT"`` joins an existing cluster.
        num_cpus: CPUs of the embedded Ray (default: all of this machine's).
    """
    if address is None:
        loopback_only()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("llray: warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication;"
              " anyone who can reach this Ray can run code on it", file=sys.stderr)
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(
            address="local",  # a new Ray of our own, even if another runs on this machine
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)
    from llray import signals

    signals.reinstall()  # ray.init replaced the command line's SIGTERM handler


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
