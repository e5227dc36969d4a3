"""The embedded Ray that ``llray run`` starts: loopback only, token authentication on,
none of Ray's services llray does not use, and nothing left running after it stops.

Runs ``connect()`` in a fresh Python process without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
in its environment (so llray must set it itself) and lists the TCP sockets its Ray
processes listen on and their command lines, from /proc. Every process of that Ray
inherits a tag in its environment, so what outlives it is found even after it was
re-parented.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}

SCRIPT = textwrap.dedent(r'''
    import glob, json, os

    def descendants(root):
        kids = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                ppid = int(open(stat).read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(stat.split("/")[2]))
        out, todo = set(), [root]
        while todo:
            for k in kids.get(todo.pop(), []):
                if k not in out:
                    out.add(k)
                    todo.append(k)
        return out

    def listening_hex_addresses(pids):
        inodes = set()
        for p in pids:
            for fd in glob.glob(f"/proc/{p}/fd/*"):
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        addrs = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    addrs.add(cols[1].split(":")[0])
        return addrs

    def command_lines(pids):
        out = []
        for p in pids:
            try:
                out.append(open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode())
            except OSError:
                pass
        return out

    from llray.distributed.session import connect

    connect(num_cpus=1)
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    node = ray._private.worker.global_worker.node
    mine = descendants(os.getpid())
    print(json.dumps({
        "node_ip": node.node_ip_address,
        "token_auth": is_token_auth_enabled(),
        "listen": sorted(listening_hex_addresses(mine)),
        "commands": command_lines(mine),
        "task": ray.get(ray.remote(lambda: 41 + 1).remote()),
    }))
    from llray.distributed.embedded import stop

    stop()
''')


def tagged_processes(tag: str) -> list[str]:
    """Command lines of the live processes whose environment holds ``LLRAY_TEST_TAG=tag``."""
    found = []
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            if f"LLRAY_TEST_TAG={tag}".encode() in open(environ, "rb").read().split(b"\0"):
                pid = environ.split("/")[2]
                found.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
                             .decode(errors="replace")[:100])
        except OSError:
            continue
    return found


def outliving(tag: str, within: float = 5.0) -> list[str]:
    """The tagged processes still alive ``within`` seconds from now (sooner if none)."""
    deadline = time.monotonic() + within
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def fresh_env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    return {**env, "LLRAY_TEST_TAG": tag}


def write_job(tmp_path, name: str, num_tasks: int, epochs: int, seeds: list[int]):
    """A small naive-only job file."""
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""
        experiment: {name}
        stream: {{dataset: digits, kind: permuted, num_tasks: {num_tasks}, seed: 0}}
        model: {{name: mlp, hidden: [16]}}
        train: {{epochs: {epochs}, batch_size: 64, lr: 0.01}}
        strategies: [naive]
        seeds: {seeds}
    """))
    return job


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_embedded_ray_is_loopback_only_lean_and_leaves_nothing_running():
    tag = uuid.uuid4().hex
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=fresh_env(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["node_ip"] == "127.0.0.1"
    assert got["token_auth"] is True
    assert got["listen"], "found no listening Ray sockets"
    assert set(got["listen"]) <= LOOPBACK, f"Ray listens beyond 127.0.0.1: {got['listen']}"
    assert got["task"] == 42
    commands = " | ".join(got["commands"])
    assert "gcs_server" in commands and "raylet" in commands, commands
    for unused in ("autoscaler/_private/monitor.py", "log_monitor.py", "dashboard/dashboard.py"):
        assert unused not in commands, f"{unused} runs: {commands}"
    assert outliving(tag) == []  # workers and agents too, though the raylet was their parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_llray_command_exits_with_its_code_and_leaves_no_ray_process(tmp_path):
    job = write_job(tmp_path, "exits", num_tasks=2, epochs=1, seeds=[0, 1])
    tag = uuid.uuid4().hex
    run = [sys.executable, "-m", "llray.cli", "run", str(job), "--no-progress",
           "--num-cpus", "1", "--output"]
    ok = subprocess.run([*run, str(tmp_path / "out")], env=fresh_env(tag),
                        capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "naive" in ok.stdout and "ray start" in ok.stderr  # report, timings: all out
    assert len(glob.glob(str(tmp_path / "out" / "**" / "*.parquet"), recursive=True)) >= 2
    assert outliving(tag) == []
    bad = subprocess.run([*run, str(tmp_path / "bad"), "--max-in-flight", "0"],
                         env=fresh_env(tag), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--max-in-flight" in bad.stderr
    assert outliving(tag, within=20) == []  # the Ray started early for it stops too


HEAD_SCRIPT = textwrap.dedent(r'''
    import json, os
    from llray.distributed import head
    from llray.distributed.session import connect

    head.launch(1)
    child = head.launched().proc.pid
    connect()
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    def parent(pid):
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

    def pids_of(name):
        out = []
        for cmd in os.listdir("/proc"):
            try:
                argv0 = open(f"/proc/{cmd}/cmdline", "rb").read().split(b"\0")[0]
                if cmd.isdigit() and os.path.basename(argv0.decode()) == name:
                    out.append(int(cmd))
            except OSError:
                pass
        return out

    tag = os.environ["LLRAY_TEST_TAG"]
    mine = [p for p in pids_of("raylet") if f"LLRAY_TEST_TAG={tag}".encode()
            in open(f"/proc/{p}/environ", "rb").read().split(b"\0")]
    @ray.remote
    def preloaded():
        import sys
        return "llray.distributed.actor" in sys.modules  # imported before the task came

    print(json.dumps({
        "raylet_parents": [parent(p) == child for p in mine],
        "token_auth": is_token_auth_enabled(),
        "task": ray.get(ray.remote(lambda: 41 + 1).remote()),
        "preloaded": ray.get(preloaded.remote()),
    }))
    from llray.distributed.embedded import stop

    stop()
    print(json.dumps({"child_exit": head.launched() is None and
                      __import__("psutil").pid_exists(child) is False}))
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_early_ray_starts_in_a_child_and_the_command_joins_it():
    """head.launch: the Ray's raylet is the child's, the command's tasks run on it with
    token authentication on, in workers that imported llray's learner before they were
    asked for, and stop() ends the child and every Ray process."""
    tag = uuid.uuid4().hex
    out = subprocess.run([sys.executable, "-c", HEAD_SCRIPT], env=fresh_env(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert first == {"raylet_parents": [True], "token_auth": True, "task": 42,
                     "preloaded": True}
    assert last == {"child_exit": True}
    assert outliving(tag) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_command_leaves_no_ray_process(tmp_path):
    """SIGKILL of the command mid-sweep: its Ray's child sees its input close and stops
    every Ray process (nothing can run in the command any more)."""
    job = write_job(tmp_path, "killed", num_tasks=3, epochs=200, seeds=[0])
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "llray.cli", "run", str(job), "--no-progress",
                             "--num-cpus", "1", "--output", str(tmp_path / "out")],
                            env=fresh_env(tag), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any("LearnerActor" in c or "default_worker" in c
                      for c in tagged_processes(tag)) and time.monotonic() < deadline:
            time.sleep(0.2)
        running = tagged_processes(tag)
        assert any("raylet" in c for c in running), "Ray never started"
        assert any("llray.distributed.head" in c for c in running), running  # early start
    finally:
        proc.kill()
        proc.wait()
    assert outliving(tag, within=15) == []


def test_warm_workers_only_on_small_machines_and_never_over_the_users_settings(monkeypatch):
    from llray.distributed.head import PRELOAD, PRESTART_MAX_CPUS, warm_workers

    monkeypatch.delenv("RAY_enable_worker_prestart", raising=False)
    monkeypatch.delenv("RAY_preload_python_modules", raising=False)
    assert warm_workers(2) == {"RAY_enable_worker_prestart": "1",
                               "RAY_preload_python_modules": PRELOAD}
    assert warm_workers(PRESTART_MAX_CPUS + 1) == {}
    monkeypatch.setenv("RAY_enable_worker_prestart", "0")
    assert warm_workers(2)["RAY_enable_worker_prestart"] == "0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_terminated_ray_child_stops_its_ray():
    """SIGTERM to the child holding the Ray (a stop of the whole process group, say):
    it stops every Ray process on its way out, and exits 143."""
    code = textwrap.dedent("""
        import os, signal
        from llray.distributed import head
        head.launch(1)
        child = head.launched()
        child.address()
        os.kill(child.proc.pid, signal.SIGTERM)
        print(child.proc.wait(30))
    """)
    tag = uuid.uuid4().hex
    out = subprocess.run([sys.executable, "-c", code], env=fresh_env(tag),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "143"
    assert outliving(tag) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's child subreaper")
def test_the_ray_child_ends_descendants_whose_parent_exited_first():
    """A Ray whose start failed leaves no initialised Ray to stop, and the raylet's agents
    may outlive the raylet. The child adopts such orphans and ends them: here a middle
    process starts a sleeper and exits at once, as a dying raylet leaves its agent."""
    code = textwrap.dedent("""
        import json, os, subprocess, sys, time
        import ray  # noqa: F401 (the psutil Ray ships)
        import psutil
        from llray.distributed import embedded
        adopted = embedded.adopt_orphans()
        mid = subprocess.run([sys.executable, "-c", "import subprocess; "
                              "print(subprocess.Popen(['sleep', '60'], "
                              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
                             capture_output=True, text=True, check=True)
        orphan = psutil.Process(int(mid.stdout))
        parent = orphan.ppid()
        embedded.stop_descendants()
        time.sleep(0.2)
        running = orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE
        print(json.dumps([adopted, parent == os.getpid(), running]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [True, True, False]


AGENT_PORT = textwrap.dedent(r'''
    import json, socket
    from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT as FIXED
    held = socket.socket()  # another Ray on this machine holds Ray's fixed agent port
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind(("127.0.0.1", FIXED))
        held.listen(1)
    except OSError:
        pass  # held already: by a Ray of this test session or another one
    from llray.distributed import embedded
    from llray.distributed.session import loopback_only
    loopback_only()
    embedded.start(1, None, False)
    import ray
    node = ray.nodes()[0]
    logs = ray._private.worker._global_node.get_logs_dir_path()
    log = open(f"{logs}/dashboard_agent.log").read()
    print(json.dumps({"port": node["DashboardAgentListenPort"], "fixed": FIXED,
                      "retried": "Failed to bind" in log}))
    embedded.stop()
''')


def test_the_embedded_agent_serves_on_a_free_port_when_another_ray_holds_the_fixed_one():
    out = subprocess.run([sys.executable, "-c", AGENT_PORT], env=fresh_env(uuid.uuid4().hex),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["port"] > 0 and got["port"] != got["fixed"], got  # -1: it serves no HTTP
    assert not got["retried"], "the agent waited for the fixed port (3.3 s on 2 cores)"
