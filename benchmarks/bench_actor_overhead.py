"""Per-task time of the Ray actor path vs ``run_stream`` in this process.

Both learn the quickstart job's stream with its model and training settings
(``jobs/quickstart.yaml``: permuted digits, 5 tasks, MLP 64-100-100-10, 3 epochs) with
one torch thread. The actor path is the real sweep driver with one ``LearnerActor``: a
remote call per task, a checkpoint written after every task, the stream read from the
object store. Per-task time is measured the same way on both sides, from the end of
task 1 to the end of task T, divided by T-1 (so the actor's start-up is not counted:
it is paid once per run, not per task). Runs alternate; the median and the best of
several repeats are printed (the best is the least disturbed by other processes on a
shared machine), and the median of each repeat's own overhead (its two sides measured
back to back, so a slow minute of the machine slows both). Target: the actor path's per-task overhead is under 5%.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers at nice 15 (so that its own services stay responsive). On a
# machine shared with other users' processes that alone takes CPU from the actors, which
# is not what is measured here: run the workers at the driver's priority.
os.environ.setdefault("RAY_worker_niceness", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from llray.config import load_config  # noqa: E402
from llray.data import make_stream  # noqa: E402
from llray.distributed.sweep import SweepOptions, run_sweep  # noqa: E402
from llray.experiment import build_run  # noqa: E402
from llray.learner import run_stream  # noqa: E402

REPEATS = 9
JOB = os.path.join(os.path.dirname(__file__), "..", "jobs", "quickstart.yaml")


def per_task(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def in_process(spec, stream) -> float:
    run = build_run(spec, stream)  # the same model and strategy the actor builds
    stamps: list[float] = []
    run_stream(stream, run.model, run.strategy, spec.train, spec.order, spec.seed,
               on_task=lambda step, row: stamps.append(time.perf_counter()))
    return per_task(stamps)


def actor_path(spec, stream) -> float:
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_sweep([spec], stream, None, SweepOptions(checkpoint=tmp),
                  on_task=lambda e: stamps.append(time.perf_counter()))
    return per_task(stamps)


def main() -> None:
    torch.set_num_threads(1)
    cfg = load_config(JOB)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    stream = make_stream(cfg.stream)
    names = sorted({s.strategy.name for s in cfg.runs()})
    print(f"quickstart stream: {stream.num_tasks} tasks, "
          f"{sum(len(t.y_train) for t in stream.tasks)} train samples; seed 0")
    for name in names:
        spec = next(s for s in cfg.runs() if s.strategy.name == name and s.seed == 0)
        times: dict[str, list[float]] = {"in-process": [], "actor": []}
        actor_path(spec, stream)  # warm up
        for _ in range(REPEATS):
            times["in-process"].append(in_process(spec, stream))
            times["actor"].append(actor_path(spec, stream))
        paired = [a / b - 1 for a, b in zip(times["actor"], times["in-process"])]
        print(f"{name:>8} paired: median of the {REPEATS} repeats' own overheads "
              f"{100 * statistics.median(paired):+5.1f}% (each repeat's two sides back to back)")
        for label, pick in (("median", statistics.median), ("best", min)):
            t = {k: pick(v) for k, v in times.items()}
            extra = t["actor"] - t["in-process"]
            print(f"{name:>8} {label:>6}: in-process {t['in-process'] * 1000:7.1f} ms/task, "
                  f"actor {t['actor'] * 1000:7.1f} ms/task, overhead {extra * 1000:+5.1f} ms "
                  f"= {100 * extra / t['in-process']:+5.1f}% (target < 5%)")
        print(f"          samples: {times}", file=sys.stderr)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    ray.shutdown()


if __name__ == "__main__":
    main()
