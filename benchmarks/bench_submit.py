"""``llray submit``: upload size with and without ``.rayignore``, and time to the first
task learned on a local head, side by side with an embedded ``llray run``.

1. Upload: the checkout as a job's working directory. *Before* is every file under it
   (what ``ray job submit --working-dir .`` carried when nothing was excluded: the
   virtualenv, the results, ``.git``); *after* is the zip that Ray's own packaging
   builds with the excludes of ``.rayignore`` (what ``llray submit`` uploads).
2. Start: a loopback head (``ray start --head``, token auth, free ports; see
   tests/ray_head.py) is started first and not timed. Then, ``--repeat`` times each,
   alternating: seconds from running ``llray submit`` until the job's first checkpoint
   file exists (a task learned and checkpointed on the head; the job is then stopped),
   and the same for an embedded ``llray run`` of the same job (which starts its own
   Ray). The job is tests/jobs/submit_small.yaml, one run at a time.

The machine may be shared: the load average is printed with the numbers.

Usage::

    python benchmarks/bench_submit.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ray_head import BIN, start_head  # noqa: E402

from llray.commands.submit import read_excludes  # noqa: E402

JOB = "tests/jobs/submit_small.yaml"


def upload_sizes() -> None:
    from ray._private.runtime_env.packaging import create_package

    files = [p for p in ROOT.rglob("*") if p.is_file() and not p.is_symlink()]
    before = sum(p.stat().st_size for p in files)
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "pkg.zip"
        create_package(str(ROOT), target, include_parent_dir=False,
                       excludes=read_excludes(ROOT), include_gitignore=False)
        with zipfile.ZipFile(target) as z:
            infos = [i for i in z.infolist() if not i.is_dir()]
        zipped = target.stat().st_size
    after = sum(i.file_size for i in infos)
    print(f"upload before excludes: {len(files):7d} files, {before / 2**20:9.1f} MiB")
    print(f"upload after .rayignore: {len(infos):6d} files, {after / 2**20:9.2f} MiB "
          f"({zipped / 2**20:.2f} MiB zipped)")
    print(f"  ratio before/after: {before / after:.0f}x (bytes on disk)")


def _first_checkpoint(out: Path, t0: float, limit: float = 600) -> float:
    ckpts = out / "checkpoints"
    while not (ckpts.is_dir() and any(ckpts.iterdir())):
        if time.perf_counter() - t0 > limit:
            raise TimeoutError("no task learned")
        time.sleep(0.05)
    return time.perf_counter() - t0


def time_submit(head, work: Path, i: int) -> tuple[float, float]:
    from ray.job_submission import JobSubmissionClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(head.client_env)
    out = work / f"submit{i}"
    t0 = time.perf_counter()
    res = subprocess.run([str(BIN / "llray"), "submit", JOB, "--address", head.address,
                          "--output", str(out), "--", "--max-in-flight", "1",
                          "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    submitted = time.perf_counter() - t0
    first = _first_checkpoint(out, t0)
    job_id = res.stdout.split()[2]
    token = head.token_file.read_text().strip()
    client = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})
    client.stop_job(job_id)
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(0.2)
    return submitted, first


def time_embedded(work: Path, i: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = work / f"embedded{i}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "llray"), "run", JOB, "--output", str(out),
                             "--num-cpus", "2", "--max-in-flight", "1", "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return _first_checkpoint(out, t0)
    finally:
        proc.terminate()  # SIGTERM: the clean interrupt path
        proc.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    upload_sizes()
    t = time.perf_counter()
    head = start_head(num_cpus=2, env_extra={"PATH": f"{BIN}:{os.environ['PATH']}"})
    print(f"head started in {time.perf_counter() - t:.1f} s (not counted below)")
    sub, first, emb = [], [], []
    try:
        with tempfile.TemporaryDirectory() as d:
            for i in range(args.repeat):
                s, f = time_submit(head, Path(d), i)
                sub.append(s)
                first.append(f)
                emb.append(time_embedded(Path(d), i))
                print(f"  try {i}: submit returned {s:.1f} s, first task learned "
                      f"{f:.1f} s; embedded llray run first task {emb[-1]:.1f} s")
    finally:
        head.stop()
    m = statistics.median
    print(f"llray submit -> first task learned on the head: median {m(first):.1f} s "
          f"(the submit command itself {m(sub):.1f} s)")
    print(f"embedded llray run -> first task learned:       median {m(emb):.1f} s")
    print(f"  ratio submit/embedded: {m(first) / m(emb):.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
