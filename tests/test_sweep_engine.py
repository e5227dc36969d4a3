"""The sweep engine on the embedded-style local Ray (2 CPUs): slots, failures, checks.

Runs are tiny (permuted digits, 2 tasks, MLP 16-10, 1 epoch). Live learner processes are
counted from /proc (descendants of this process whose title is ``ray::LearnerActor``).
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from llray.cli import main as cli_main
from llray.config import parse_config
from llray.data import make_stream
from llray.distributed.checkpoint import CheckpointStore
from llray.distributed.session import probe
from llray.distributed.sweep import SweepOptions, failure_lines, meta_for, run_sweep
from llray.errors import ConfigError
from llray.experiment import execute, utc_now
from llray.results import load, write_run

T = 2
CONFIG = {
    "experiment": "engine",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": T},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "strategies": ["naive"],
    "seeds": [0, 1, 2, 3, 4, 5],
    "resources": {"num_cpus": 1},
}


def config(**over):
    return parse_config({**CONFIG, **over})


@pytest.fixture(scope="module")
def stream():
    return make_stream(config().stream)


def write_job(tmp_path, **over) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **over}))
    return str(path)


def live_learners() -> set[int]:
    """Pids of this process's descendants that are learner actors (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            ppid = int(open(stat).read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    out, todo, seen = set(), [os.getpid()], set()
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid in seen:
                continue
            seen.add(pid)
            todo.append(pid)
            try:
                title = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::LearnerActor"):
                out.add(pid)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_slots_are_what_fits_and_each_process_hosts_several_runs(ray_local, stream):
    specs = config().runs()  # 6 runs of 1 CPU on a 2-CPU Ray: 2 slots, 3 runs each
    counts: list[int] = []
    finished = run_sweep(specs, stream, None, SweepOptions(),
                         on_task=lambda e: counts.append(len(live_learners())))
    assert all(f.result.status == "ok" for f in finished) and len(finished) == 6
    assert counts and max(counts) <= 2, counts  # never more learner processes than fit
    hosted: dict[int, list[int]] = {}
    for f in finished:
        [a] = f.attempts
        hosted.setdefault(a.info["pid"], []).append(a.info["runs_hosted"])
        assert a.info["warm_s"] > 0  # warmed up once, when the process started
    assert len(hosted) == 2, hosted  # one process per slot for the whole sweep ...
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in hosted.values())
    assert max(len(v) for v in hosted.values()) >= 3  # ... each hosting run after run


def test_a_run_whose_code_raises_fails_with_its_reason_and_the_slot_goes_on(
        ray_local, stream, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    specs = config(seeds=[0, 1, 2]).runs()
    out = tmp_path / "out"
    finished = run_sweep(specs, stream, str(out), SweepOptions(
        checkpoint=str(blocker / "ckpt"), max_in_flight=1))
    assert [f.result.status for f in finished] == ["failed"] * 3
    for f in finished:
        assert "cannot write the checkpoint to" in f.result.error
        assert str(blocker / "ckpt") in f.result.error and "\n" not in f.result.error
    pids = {f.attempts[0].info.get("pid") for f in finished}
    assert len(pids) == 1  # the healthy process took the next run each time
    runs = load(out).runs.set_index("run_id")
    assert set(runs.loc[[s.run_id for s in specs], "status"]) == {"failed"}
    lines = failure_lines(finished)
    assert len(lines) == 3 and all("naive seed=" in x and "cannot write" in x for x in lines)


def test_unwritable_checkpoint_directory_exits_2_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    job = write_job(tmp_path, checkpoint={"path": str(blocker / "ckpt")})
    code = cli_main(["run", job, "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint.path" in err and "is not a directory" in err
    assert not any((tmp_path / "out").rglob("*.parquet"))


def test_unreadable_checkpoint_is_moved_aside_and_the_run_starts_over(
        ray_local, stream, tmp_path, capsys):
    [spec] = config(seeds=[3]).runs()
    ckpt = CheckpointStore(str(tmp_path / "ckpt"))
    ckpt.save(spec.run_id, {"x": 1})
    path = ckpt.path(spec.run_id)
    with open(path, "r+b") as f:  # a truncated / corrupt file
        f.truncate(10)
    [f] = run_sweep([spec], stream, None, SweepOptions(checkpoint=ckpt.root, resume=True))
    assert f.result.status == "ok" and f.attempts[0].resumed_from == 0
    np.testing.assert_array_equal(f.result.R, execute(spec, stream).R)  # from scratch
    assert os.path.isfile(path + ".bad") and ckpt.run_ids() == set()
    err = capsys.readouterr().err
    assert "could not be read" in err and "moved to" in err and spec.run_id[:12] in err


@pytest.mark.parametrize("command,resources,field", [
    ("run", {"num_cpus": 64}, "resources.num_cpus"),
    ("run", {"num_cpus": 1, "num_gpus": 64}, "resources.num_gpus"),
    ("taskonomy", {"num_cpus": 1, "num_gpus": 64}, "resources.num_gpus"),
    ("curriculum", {"num_cpus": 3}, "resources.num_cpus"),
])
def test_unsatisfiable_resources_exit_2_naming_the_resource_with_nothing_written(
        tmp_path, capsys, command, resources, field):
    job = write_job(tmp_path, resources=resources)
    out = tmp_path / "out"
    code = cli_main([command, job, "--output", str(out), "--num-cpus", "2"]
                    + (["--no-progress"] if command == "run" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"llray: error: {field}:") and "no node has that much" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_run_sweep_on_a_fixed_cluster_refuses_what_no_node_holds(ray_local, stream, tmp_path):
    specs = config(seeds=[0], resources={"num_cpus": 3}).runs()  # the local Ray has 2
    with pytest.raises(ConfigError, match="resources.num_cpus"):
        run_sweep(specs, stream, str(tmp_path / "out"), SweepOptions(fixed_cluster=True))
    assert not (tmp_path / "out").exists()


def test_unreachable_address_fails_within_bounded_time(tmp_path, capsys):
    with socket.socket() as silent:  # accepts TCP connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(ConfigError, match="--address.*within 1 s: no answer"):
            probe(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = closed.getsockname()[1]
        out = tmp_path / "out"
        code = cli_main(["run", write_job(tmp_path), "--address", f"127.0.0.1:{port}",
                         "--output", str(out), "--no-progress"])
        closed.close()
    err = capsys.readouterr().err
    assert code == 2 and "--address" in err and "refused" in err
    assert not out.exists()


RESUME = textwrap.dedent('''
    import sys
    from llray.cli import main
    code = main(sys.argv[1:])
    print("RAY_STARTED", "ray" in sys.modules and __import__("ray").is_initialized())
    sys.exit(code)
''')


def test_resume_with_nothing_left_to_do_does_not_start_ray(tmp_path, stream):
    out = tmp_path / "out"
    specs = config(seeds=[0, 1]).runs()
    for s in specs:  # a finished sweep's results, written without Ray
        res = execute(s, stream)
        write_run(out, meta_for(s, utc_now(), utc_now(), stream), res)
    job = write_job(tmp_path, seeds=[0, 1])
    p = subprocess.run([sys.executable, "-c", RESUME, "run", job, "--output", str(out),
                        "--resume", "--no-progress"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resume: 2 runs already done" in p.stderr
    assert "RAY_STARTED False" in p.stdout
    assert "naive" in p.stdout  # the report of what is there
