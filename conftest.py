"""Shared by tests/ and the doctests in llray/: loopback-only Ray, one local Ray per session."""

import os

# Before Ray is imported anywhere: keep every Ray service on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def ray_local():
    """A local single-node Ray with 2 CPUs, started once and shared across tests.

    Tests that build their own multi-node ``ray.cluster_utils.Cluster`` shut it down
    first; the next test that asks for this fixture starts it again.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
