"""Streaming shards: throughput against the in-memory path, and a stream 3x this machine's memory.

(a) ``--part speed``: one stream of 64x64x3 uint8 images small enough for both paths,
    trained with ``storage: memory`` and ``storage: streaming`` alternately in this process
    (``--rounds`` each, same seed and model); prints training samples/s of each and their
    ratio (target: streaming >= 80% of in-memory).
(b) ``--part large``: writes a synthetic stream of ``--gib`` GiB decoded (class prototypes
    plus a low-entropy noise pattern drawn from a small pool, so zstd shrinks it on disk)
    under ``--dir``, runs ``llray run`` on it (``storage: auto`` picks streaming), one epoch
    per task, polls /proc of the ``llray`` process tree every 0.5 s and prints the peak RSS
    of the driver and of the learner actor (target: both under 4 GiB), the decoded size,
    the bytes on disk and samples/s. Deletes the shards afterwards unless ``--keep``.

The machine may be shared and noisy: each part prints ``os.getloadavg()`` with its numbers.

Usage::

    python benchmarks/bench_streaming.py --part speed
    python benchmarks/bench_streaming.py --part large --gib 72 --dir /big/disk/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

SHAPE = (3, 64, 64)
ROW = int(np.prod(SHAPE))
CLASSES_PER_TASK = 2
POOL = 64  # noise patterns: low entropy, so the shards compress


def write_task(root: Path, task: int, split: str, rows: int, rows_per_file: int,
               protos: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> None:
    """``rows`` images of ``task`` (prototype + a pooled noise pattern) in zstd shards."""
    d = root / f"task={task}" / f"split={split}"
    d.mkdir(parents=True, exist_ok=True)
    classes = np.arange(task * CLASSES_PER_TASK, (task + 1) * CLASSES_PER_TASK)
    for k, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        y = rng.choice(classes, n)
        x = protos[y] + pool[rng.integers(0, POOL, n)]  # [n, ROW] uint8
        col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(ROW), n,
                                                   [None, pa.py_buffer(x.tobytes())])
        table = pa.table({"x": col, "label": pa.array(y.astype(np.int64))})
        pq.write_table(table, d / f"part-{k:05d}.parquet", compression="zstd",
                       row_group_size=max(1, (8 << 20) // ROW))


def write_stream(root: Path, tasks: int, train: int, test: int, rows_per_file: int,
                 seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 200, (tasks * CLASSES_PER_TASK, ROW), dtype=np.uint8)
    pool = rng.integers(0, 40, (POOL, ROW), dtype=np.uint8)
    for t in range(tasks):
        write_task(root, t, "train", train, rows_per_file, protos, pool, rng)
        write_task(root, t, "test", test, rows_per_file, protos, pool, rng)


def experiment(root: Path, tasks: int, storage: str, batch: int) -> dict:
    return {
        "experiment": "bench-streaming", "strategies": ["naive"], "seeds": [0],
        "stream": {"dataset": "shards", "kind": "tasks", "scenario": "task", "num_tasks": tasks,
                   "path": str(root), "input_shape": list(SHAPE), "storage": storage},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 1, "batch_size": batch, "lr": 0.01, "eval_batch_size": 512},
    }


def disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*.parquet"))


# -- (a) ------------------------------------------------------------------------------------------
def part_speed(args: argparse.Namespace) -> None:
    import torch

    from llray.config import parse_config
    from llray.experiment import execute

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="llray-bench-speed-"))
    try:
        write_stream(root, args.tasks, args.train, 500, rows_per_file=5000)
        rates: dict[str, list[float]] = {"memory": [], "streaming": []}
        for r in range(args.rounds + 1):  # round 0 warms torch and pyarrow up, not counted
            for storage in rates:
                spec = parse_config(experiment(root, args.tasks, storage, args.batch)).runs()[0]
                res = execute(spec)
                assert res.status == "ok", res.error
                if r > 0:
                    rates[storage].append(res.train_samples_per_s)
        mem, st = np.median(rates["memory"]), np.median(rates["streaming"])
        decoded = args.tasks * (args.train + 500) * ROW
        print(f"(a) {args.tasks} tasks x {args.train} train images {SHAPE}, "
              f"{decoded / 2**20:.0f} MiB decoded, mlp[16], batch {args.batch}, 1 thread, "
              f"{args.rounds} rounds alternating after a warm-up round")
        print(f"    in-memory  {mem:9.0f} samples/s  (rounds: "
              f"{', '.join(f'{r:.0f}' for r in rates['memory'])})")
        print(f"    streaming  {st:9.0f} samples/s  (rounds: "
              f"{', '.join(f'{r:.0f}' for r in rates['streaming'])})")
        print(f"    streaming / in-memory = {st / mem:.2f}  (target >= 0.80)   "
              f"loadavg {os.getloadavg()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- (b) ------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out


def _rss_and_name(pid: int) -> tuple[int, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS")), 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            name = f.read().replace(b"\0", b" ").decode(errors="replace")
        return rss, name
    except OSError:
        return 0, ""


def part_large(args: argparse.Namespace) -> None:
    base = Path(args.dir or tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="llray-bench-large-", dir=base))
    test = 2000
    train = int(args.gib * 2**30 / ROW / args.tasks) - test
    try:
        t0 = time.perf_counter()
        write_stream(root, args.tasks, train, test, rows_per_file=args.rows_per_file)
        gen_s = time.perf_counter() - t0
        decoded, on_disk = args.tasks * (train + test) * ROW, disk_bytes(root)
        print(f"(b) wrote {args.tasks} tasks x {train} train + {test} test images {SHAPE} in "
              f"{gen_s:.0f} s: {decoded / 2**30:.1f} GiB decoded, {on_disk / 2**30:.2f} GiB on "
              f"disk (zstd)   loadavg {os.getloadavg()}")
        cfg = root / "exp.yaml"
        cfg.write_text(yaml.safe_dump(experiment(root, args.tasks, "auto", args.batch)))
        out = root / "out"
        cmd = [str(Path(sys.executable).parent / "llray"), "run", str(cfg), "--output", str(out),
               "--num-cpus", "1", "--no-progress"]
        peaks = {"driver": 0, "learner": 0, "tree": 0}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd)
        while proc.poll() is None:
            total = 0
            for pid in _tree(proc.pid):
                rss, name = _rss_and_name(pid)
                total += rss
                if pid == proc.pid:
                    peaks["driver"] = max(peaks["driver"], rss)
                elif "LearnerActor" in name:
                    peaks["learner"] = max(peaks["learner"], rss)
            peaks["tree"] = max(peaks["tree"], total)
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        assert proc.returncode == 0, f"llray run exited {proc.returncode}"
        from llray.results import load

        runs = load(out).runs
        row = runs.iloc[0]
        print(f"    llray run: status {row['status']}, ACC {row['acc']:.3f}, "
              f"{row['train_samples_per_s']:.0f} train samples/s, wall {wall:.0f} s")
        print(f"    peak RSS: driver {peaks['driver'] / 2**30:.2f} GiB, learner "
              f"{peaks['learner'] / 2**30:.2f} GiB (target < 4 GiB each); whole llray process "
              f"tree (Ray's own processes included) {peaks['tree'] / 2**30:.2f} GiB")
        print(f"    loadavg {os.getloadavg()}")
        print(json.dumps({"decoded_gib": decoded / 2**30, "disk_gib": on_disk / 2**30,
                          "driver_peak_gib": peaks["driver"] / 2**30,
                          "learner_peak_gib": peaks["learner"] / 2**30,
                          "samples_per_s": float(row["train_samples_per_s"]), "wall_s": wall}))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["speed", "large"], default="speed")
    p.add_argument("--tasks", type=int, default=None)
    p.add_argument("--train", type=int, default=4000, help="(a) train images per task")
    p.add_argument("--rounds", type=int, default=3, help="(a) runs of each path")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--gib", type=float, default=72.0, help="(b) decoded size of the stream")
    p.add_argument("--rows-per-file", type=int, default=50_000)
    p.add_argument("--dir", default=None, help="(b) where to write the shards")
    p.add_argument("--keep", action="store_true", help="(b) keep the shards")
    args = p.parse_args()
    if args.tasks is None:
        args.tasks = 2 if args.part == "speed" else 4
    (part_speed if args.part == "speed" else part_large)(args)


if __name__ == "__main__":
    main()
