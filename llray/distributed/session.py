"""Connecting to Ray: an embedded local Ray on 127.0.0.1, or an existing cluster."""

from __future__ import annotations

import os
import sys


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
        address: ``None`` starts an embedded local Ray (dashboard on 127.0.0.1 only);
            ``"auto"`` or ``"ray://..."``/``"HOST:PORT"`` joins an existing cluster.
        num_cpus: CPUs of the embedded Ray (default: all of this machine's).
    """
    if address is None:
        loopback_only()
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)
