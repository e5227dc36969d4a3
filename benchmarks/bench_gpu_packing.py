"""Samples/s of 1, 4 and 8 runs packed on one GPU (fractional ``num_gpus``) vs 1 run.

Small lifelong runs leave most of a GPU idle; giving each run ``num_gpus: 1/N`` puts N
learner actors on one card. This script runs the quickstart stream (naive, MLP
64-100-100-10, 3 epochs) as sweeps of N runs with ``num_gpus=1/N`` on an embedded Ray
with one GPU, and prints the sweep's total training samples/s for N = 1, 4, 8 against
N = 1. On a machine without a CUDA GPU it says so and exits.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

from llray.config import Resources, load_config  # noqa: E402
from llray.data import make_stream  # noqa: E402

PACKS = (1, 4, 8)
JOB = os.path.join(os.path.dirname(__file__), "..", "jobs", "quickstart.yaml")


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: GPU packing not measured")
        return
    import ray

    from llray.distributed.sweep import SweepOptions, run_sweep

    cfg = load_config(JOB)
    base = next(s for s in cfg.runs() if s.strategy.name == "naive")
    stream = make_stream(cfg.stream)
    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, num_gpus=1, include_dashboard=False,
             log_to_driver=False)
    rate: dict[int, float] = {}
    for n in PACKS:
        res = Resources(num_cpus=max(1, cpus // max(PACKS)), num_gpus=1 / n)
        specs = [replace(base, seed=i, resources=res) for i in range(n)]
        run_sweep(specs, stream, None, SweepOptions(max_in_flight=n))  # warm up
        t0 = time.perf_counter()
        done = run_sweep(specs, stream, None, SweepOptions(max_in_flight=n))
        wall = time.perf_counter() - t0
        assert all(f.attempts[-1].device == "cuda" for f in done), "runs not on the GPU"
        rate[n] = sum(f.result.samples_trained for f in done) / wall
        print(f"{n} run(s) on one GPU: {rate[n]:10.0f} train samples/s "
              f"({rate[n] / rate[PACKS[0]]:.2f}x of 1 run)", flush=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}", file=sys.stderr)
    ray.shutdown()


if __name__ == "__main__":
    main()
