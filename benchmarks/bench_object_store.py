"""Object-store memory of 16 learner actors on one stream vs one copy of the stream.

The driver puts the stream's tasks into the object store once (``put_stream``); 16
``LearnerActor``s on an embedded Ray each build their run from the same references and
evaluate R row 0, so all of them hold the stream. The object store's used bytes (from
the GCS, as ``ray status`` shows them) are compared with one copy of the stream's
arrays, and, side by side, with what putting the stream once per run would store.
Target: at most 1.5x one copy.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
from ray.autoscaler.v2.sdk import get_cluster_status  # noqa: E402

from llray.config import load_config  # noqa: E402
from llray.data import make_stream  # noqa: E402
from llray.distributed.actor import LearnerActor  # noqa: E402
from llray.distributed.streaming import put_stream  # noqa: E402

RUNS = 16
JOB = os.path.join(os.path.dirname(__file__), "..", "jobs", "quickstart.yaml")


def store_used() -> float:
    """Bytes in use in the object store(s) of the cluster, as the GCS reports them."""
    time.sleep(1.5)  # usage reaches the GCS with the raylet's periodic report
    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    return sum(r.used for r in status.cluster_resource_usage
               if r.resource_name == "object_store_memory")


def main() -> None:
    cfg = load_config(JOB)
    base = next(s for s in cfg.runs() if s.strategy.name == "naive")
    stream = make_stream(cfg.stream)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20)
    empty = store_used()
    handle = put_stream(stream)
    actors = [LearnerActor.options(num_cpus=2 / RUNS).remote(handle, None)
              for _ in range(RUNS)]
    steps = ray.get([a.load.remote(replace(base, seed=i), False)  # each builds its run
                     for i, a in enumerate(actors)])
    assert len(steps) == RUNS
    ours = store_used() - empty
    per_run = [ray.put(stream) for _ in range(RUNS)]  # the alternative: one put per run
    theirs = store_used() - empty - ours
    one = handle.nbytes
    print(f"one copy of the stream: {one / 2**20:7.2f} MiB ({stream.num_tasks} tasks)")
    print(f"{RUNS} actors, stream put once: {ours / 2**20:7.2f} MiB in the object store")
    print(f"stream put once per run:   {theirs / 2**20:7.2f} MiB ({len(per_run)} puts)")
    print(f"ratio to one copy: {ours / one:.2f}x (target <= 1.5x); "
          f"one put per run: {theirs / one:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
