"""How close ``llray run`` comes to the hardware: the real command against the in-process floor.

Three measurements, side by side in one run (the machine may be shared: the load average
is printed with every number):

1. **Quickstart.** Wall time of ``llray run jobs/quickstart.yaml`` (the real command, a
   subprocess, as ``make demo`` runs it) against the *floor*: the same 12 runs executed
   one after another in this process (``llray.experiment.execute``, one torch thread)
   divided by the CPUs given to Ray. Ray's start is measured on its own: the embedded
   Ray's lean start (``llray.distributed.embedded.start``) in a fresh process, as the
   command starts it. (The command starts it in a child process while it imports torch
   and checks the config, so it prints only what it still waited for: "ray start".)
   Target: wall <= 1.5 x floor + Ray's start.
2. **60 runs** (the quickstart's four core strategies x 5 seeds x 3 orders), where the
   start-up is amortised: the floor over the command's own sweep time (Ray started).
   Target: at least 85% of the floor. Repeated ``--repeats`` times, each repeat's ratio
   taken side by side; the median is the result.
   Beside each floor, the *process floor*: the same runs split over ``--cpus`` plain
   Python processes (no Ray) started at once, each learning its share one run after
   another. On machines whose cores slow each other down (shared caches, SMT siblings,
   frequency) it is above the floor; the gap between it and ``llray run`` is what Ray and
   llray's driver cost, the gap between it and the floor is what the hardware costs.
3. **Per-task actor overhead** for every core strategy: the actor path (a remote call per
   task, a checkpoint after every task) vs ``run_stream`` in this process, per task from
   the end of task 1 to the end of task T (``bench_actor_overhead``). Target: under 5%.

The command's CPU seconds (its own, its Ray's, every process it started; Linux) are
printed with the quickstart: over the CPUs, a bound no scheduling can beat. They come
from one more run whose process tree is polled (:class:`CpuMeter`), after the timed ones:
the poll takes 10-25% of a core, which on 2 cores slows the learners it watches.

Usage: ``python benchmarks/bench_sweep_efficiency.py [--cpus 2] [--repeats 3] [--skip-quickstart]
[--skip-60] [--skip-overhead]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402
import yaml  # noqa: E402

from llray.config import load_config, parse_config  # noqa: E402
from llray.data import make_stream  # noqa: E402
from llray.distributed import embedded  # noqa: E402
from llray.experiment import execute  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "..", "jobs", "quickstart.yaml")
LLRAY = os.path.join(os.path.dirname(sys.executable), "llray")


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def floor_seconds(cfg) -> float:
    """Sum of the runs' in-process wall times (one torch thread, one after another)."""
    torch.set_num_threads(1)
    stream = make_stream(cfg.stream)
    total = 0.0
    for spec in cfg.runs():
        t0 = time.perf_counter()
        execute(spec, stream)
        total += time.perf_counter() - t0
    return total


def _prepare(config_path: str):
    """A worker of :func:`process_floor`, before the start: the config and its stream."""
    torch.set_num_threads(1)
    cfg = load_config(config_path)
    return cfg, make_stream(cfg.stream)


def _share(cfg, stream, part: int, parts: int) -> None:
    """A worker of :func:`process_floor`: learn runs ``part::parts`` of the config."""
    for spec in cfg.runs()[part::parts]:
        execute(spec, stream)


def process_floor(config_path: str, cpus: int) -> float:
    """Wall seconds of the runs split over ``cpus`` plain processes started together
    (imports and stream building excluded: each worker waits at a barrier file)."""
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        code = ("import os, sys, time\n"
                f"sys.path.insert(0, {HERE!r})\n"
                "import bench_sweep_efficiency as b\n"
                "cfg, stream = b._prepare(sys.argv[1])\n"
                "open(sys.argv[3], 'w').close()\n"
                "while not os.path.exists(sys.argv[4]): time.sleep(0.01)\n"
                "b._share(cfg, stream, int(sys.argv[2]), int(sys.argv[5]))\n")
        ready = [os.path.join(tmp, f"ready{i}") for i in range(cpus)]
        procs = [subprocess.Popen([sys.executable, "-c", code, config_path, str(i), ready[i],
                                   go, str(cpus)]) for i in range(cpus)]
        while not all(os.path.exists(r) for r in ready):
            time.sleep(0.01)
        t0 = time.perf_counter()
        open(go, "w").close()
        for p in procs:
            if p.wait() != 0:
                sys.exit("a process-floor worker failed")
        return time.perf_counter() - t0


def llray_run(config_path: str, cpus: int, by_kind: bool = False
              ) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``llray run`` as a subprocess, and the timings it printed.

    ``by_kind`` also polls the process tree (:class:`CpuMeter`) for ``"cpu"``: the CPU
    seconds of the command and of every process it started (its Ray included, Linux),
    and ``"cpu <kind>"`` per kind of process. The poll costs this process 10-25% of a
    core, taken from the command's learners on a small machine: a polled run is never timed.
    """
    adopted = embedded.adopt_orphans()  # its Ray stays among this process's descendants
    meter = CpuMeter() if by_kind and adopted else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen([LLRAY, "run", config_path, "--output", out, "--no-progress",
                              "--num-cpus", str(cpus)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        with meter:
            stdout, stderr = p.communicate()
            wall = time.perf_counter() - t0
            _reap_all()  # the command's Ray stops after the command has exited: not timed
    if p.returncode != 0:
        sys.exit(f"llray run failed:\n{stderr[-3000:]}")
    line = next(x for x in stderr.splitlines() if x.startswith("llray: ray start"))
    timings = {k.strip(): float(v) for k, v in re.findall(r"([a-z ]+) ([0-9.]+) s", line[7:])}
    if isinstance(meter, CpuMeter):
        timings["cpu"] = meter.seconds
        timings.update({f"cpu {k}": v for k, v in meter.by_kind().items()})
    return wall, timings


class CpuMeter:
    """CPU seconds of this process's descendants while inside, polled every 50 ms (each
    process's last 50 ms may be missed: a lower bound). With ``embedded.adopt_orphans`` in
    force, a process whose parent exited stays a descendant."""

    def __init__(self) -> None:
        import threading

        self.seen: dict[tuple[int, float], float] = {}
        self.kinds: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (the llray driver, Ray's processes by name)."""
        out: dict[str, float] = {}
        for key, secs in self.seen.items():
            out[self.kinds[key]] = out.get(self.kinds[key], 0.0) + secs
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _poll(self) -> None:
        import ray  # noqa: F401 (the psutil Ray ships)
        import psutil

        del ray
        me = psutil.Process()
        while not self._stop.wait(0.05):
            for p in me.children(recursive=True):
                try:
                    key = (p.pid, p.create_time())
                    if key not in self.kinds:
                        self.kinds[key] = _kind(p.cmdline())
                    t = p.cpu_times()
                    self.seen[key] = t.user + t.system
                except psutil.Error:
                    pass


def _kind(cmdline: list[str]) -> str:
    """What a process of the command is, from its command line when first seen."""
    line = " ".join(cmdline)
    kinds = (("default_worker.py", "Ray workers"), ("ray::IDLE", "Ray workers"),
             ("ray::Learner", "Ray workers"), ("dashboard/agent.py", "dashboard agent"),
             ("DashboardAgent", "dashboard agent"), ("runtime_env/agent", "runtime-env agent"),
             ("RuntimeEnvAgent", "runtime-env agent"), ("llray.distributed.head", "Ray's child"),
             ("gcs_server", "GCS"), ("raylet/raylet", "raylet"), (" run ", "llray driver"))
    return next((kind for key, kind in kinds if key in line), os.path.basename(cmdline[0])
                if cmdline else "?")


def _reap_all(timeout: float = 30.0) -> None:
    """Wait for every child of this process (adopted ones included) to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


RAY_START = """
import os, sys, time
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
t0 = time.perf_counter()
from llray.distributed import embedded
embedded.start(int(sys.argv[1]), None, False)
print(time.perf_counter() - t0)
embedded.stop()
"""


def ray_start_alone(cpus: int) -> float:
    """Seconds of the embedded Ray's start (import included) in a fresh process."""
    p = subprocess.run([sys.executable, "-c", RAY_START, str(cpus)], capture_output=True,
                       text=True, check=True)
    return float(p.stdout.split()[-1])


def quickstart(cpus: int, repeats: int) -> None:
    cfg = load_config(JOB)
    n = len(cfg.runs())
    print(f"== quickstart: {n} runs, {cpus} CPUs for Ray")
    best: dict[str, float] = {}
    ratios = []
    for i in range(repeats):  # alternate, keep each side's best (least disturbed)
        floor = floor_seconds(cfg) / cpus
        procs = process_floor(JOB, cpus)
        wall, t = llray_run(JOB, cpus)
        alone = ray_start_alone(cpus)
        ratios.append((wall - alone) / floor)
        print(f"  repeat {i + 1}: floor {floor:.1f} s, process floor {procs:.1f} s, "
              f"Ray start alone {alone:.1f} s, llray run {wall:.1f} s (waited for Ray "
              f"{t['ray start']:.1f} s, sweep {t['sweep']:.1f} s, compaction "
              f"{t.get('compaction', 0):.2f} s, report {t['report']:.2f} s) = "
              f"{ratios[-1]:.2f} x floor + Ray start; {load()}")
        for k, v in {"floor": floor, "procs": procs, "wall": wall, "alone": alone,
                     **t}.items():
            best[k] = min(best.get(k, v), v)
    f, w, rs = best["floor"], best["wall"], best["alone"]
    print(f"  median of {repeats}: llray run = {statistics.median(ratios):.2f} x floor + Ray "
          f"start (target <= 1.5 x); best of each: llray run {w:.1f} s = {(w - rs) / f:.2f} x "
          f"floor ({f:.1f} s) + Ray start ({rs:.1f} s); sweep alone {best['sweep'] / f:.2f} x "
          f"floor, {best['sweep'] / best['procs']:.2f} x process floor ({best['procs']:.1f} "
          f"s); {load()}")
    _, t = llray_run(JOB, cpus, by_kind=True)  # a polled run: its time is not reported
    if "cpu" in t:
        print(f"  CPU of the command and its Ray (one more run, its process tree polled every "
              f"50 ms): {t['cpu']:.1f} s = {t['cpu'] / cpus:.1f} s on {cpus} CPUs at best; by "
              f"process: " + ", ".join(f"{k[4:]} {v:.1f}" for k, v in t.items()
                                       if k.startswith("cpu ")))


def sixty(cpus: int, repeats: int) -> None:
    data = yaml.safe_load(open(JOB))
    data.update(experiment="bench60", seeds=[0, 1, 2, 3, 4], orders=["identity", "random:2"])
    cfg = parse_config(data)
    print(f"== {len(cfg.runs())} runs (4 strategies x 5 seeds x 3 orders), {cpus} CPUs")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(data, f)
    ratios, proc_ratios = [], []
    try:
        for i in range(repeats):  # interleaved: each repeat's ratio is taken side by side
            floor = floor_seconds(cfg) / cpus
            procs = process_floor(f.name, cpus)
            wall, t = llray_run(f.name, cpus)
            ratios.append(floor / t["sweep"])
            proc_ratios.append(procs / t["sweep"])
            print(f"  repeat {i + 1}: floor {floor:.1f} s; process floor {procs:.1f} s; llray "
                  f"run {wall:.1f} s (waited for Ray {t['ray start']:.1f} s, sweep "
                  f"{t['sweep']:.1f} s, compaction {t.get('compaction', 0):.2f} s); floor / "
                  f"sweep = {100 * ratios[-1]:.0f}%, process floor / sweep = "
                  f"{100 * proc_ratios[-1]:.0f}%, floor / whole command = "
                  f"{100 * floor / wall:.0f}%; {load()}")
    finally:
        os.unlink(f.name)
    print(f"  sweep efficiency, median of {repeats}: floor / sweep = "
          f"{100 * statistics.median(ratios):.0f}% (target >= 85%); process floor / sweep = "
          f"{100 * statistics.median(proc_ratios):.0f}%; {load()}")


def overhead(repeats: int) -> None:
    print("== per-task actor-path overhead (bench_actor_overhead)")
    sys.path.insert(0, HERE)
    import bench_actor_overhead as b

    b.REPEATS = repeats
    b.main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--skip-60", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    if not args.skip_quickstart:
        quickstart(args.cpus, args.repeats)
    if not args.skip_60:
        sixty(args.cpus, args.repeats)
    if not args.skip_overhead:
        overhead(max(3, args.repeats))


if __name__ == "__main__":
    main()
