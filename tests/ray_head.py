"""A loopback Ray head started with ``ray start --head`` in a subprocess, for tests and
benchmarks of the job path (``llray submit``, ``ray job submit``).

The head has token authentication on (its own token file, never ``~/.ray/auth_token``),
listens on 127.0.0.1 only, uses ports picked free at start (never Ray's defaults: other
Ray instances may run on the same machine) and its own short temp dir. :meth:`stop` ends
only the processes of this head: the ``ray start --block`` process, its descendants and
every process whose command line names the head's temp dir. Linux only (``/proc``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent

_PORT_FLAGS = ["--port", "--dashboard-port", "--ray-client-server-port",
               "--node-manager-port", "--object-manager-port",
               "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
               "--metrics-export-port", "--runtime-env-agent-port"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now (above the ephemeral range
    where possible, so that other programs' connections rarely land there)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        start = rng.randrange(20000, 30000 - n)
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _pids_naming(text: str) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def _descendants(root: int) -> set[int]:
    parents = {int(d.name): _ppid(int(d.name)) for d in Path("/proc").iterdir()
               if d.name.isdigit()}
    found, frontier = set(), {root}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= kids
        frontier = kids
    return found


@dataclass
class RayHead:
    """A started head: its job API address (``http://127.0.0.1:PORT``) and the
    environment a client needs (token auth, loopback) to reach it."""

    address: str
    temp_dir: Path
    token_file: Path
    proc: subprocess.Popen
    client_env: dict[str, str] = field(default_factory=dict)

    def pids(self) -> set[int]:
        """This head's processes (and the job drivers it started) alive now."""
        own = _pids_naming(str(self.temp_dir)) | _descendants(self.proc.pid)
        if self.proc.poll() is None:
            own.add(self.proc.pid)
        return own - {os.getpid()}

    def stop(self) -> None:
        """SIGTERM this head's processes, SIGKILL what is left after 5 s, remove the
        temp dir."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.alive():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def alive(self) -> bool:
        """Whether any process of this head is still running (zombies do not count)."""
        self.proc.poll()  # reap the ray start process once it has exited
        return any(_state(p) not in ("Z", "X") for p in self.pids())


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def start_head(num_cpus: int = 2, env_extra: dict[str, str] | None = None,
               timeout: float = 90.0) -> RayHead:
    """Start ``ray start --head --block`` on free loopback ports with token auth.

    Args:
        num_cpus: CPUs the head offers to tasks and actors.
        env_extra: more environment for the head (and so for its jobs' drivers).
        timeout: seconds to wait for the job API to answer.

    Returns:
        The running head; call :meth:`RayHead.stop` when done.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="llh", dir="/tmp"))
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(auth, RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    ports = {flag: _free_port() for flag in _PORT_FLAGS}
    workers = _free_range(40)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", f"--num-cpus={num_cpus}",
           "--object-store-memory=200000000", f"--temp-dir={temp_dir}",
           f"--min-worker-port={workers}", f"--max-worker-port={workers + 39}",
           *[f"{flag}={p}" for flag, p in ports.items()]]
    log = open(temp_dir / "ray_start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=temp_dir)
    head = RayHead(address=f"http://127.0.0.1:{ports['--dashboard-port']}",
                   temp_dir=temp_dir, token_file=token_file, proc=proc,
                   client_env=auth)
    try:
        _wait_for_job_api(head, timeout)
    except BaseException:
        head.stop()
        raise
    return head


def _wait_for_job_api(head: RayHead, timeout: float) -> None:
    import urllib.request

    token = head.token_file.read_text().strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            log = (head.temp_dir / "ray_start.log").read_text(errors="replace")
            raise RuntimeError(f"ray start exited {head.proc.returncode}:\n{log[-3000:]}")
        req = urllib.request.Request(f"{head.address}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the job API at {head.address} did not answer in {timeout:.0f} s")
