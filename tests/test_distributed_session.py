"""The embedded Ray that ``llray run`` starts: loopback only, token authentication on.

Runs ``connect()`` in a fresh Python process without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
in its environment (so llray must set it itself) and lists the TCP sockets its Ray
processes listen on, from /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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

    from llray.distributed.session import connect

    connect(num_cpus=1)
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    node = ray._private.worker.global_worker.node
    print(json.dumps({
        "node_ip": node.node_ip_address,
        "token_auth": is_token_auth_enabled(),
        "listen": sorted(listening_hex_addresses(descendants(os.getpid()))),
    }))
    ray.shutdown()
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_embedded_ray_listens_on_loopback_only_with_token_auth():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["node_ip"] == "127.0.0.1"
    assert got["token_auth"] is True
    assert got["listen"], "found no listening Ray sockets"
    assert set(got["listen"]) <= LOOPBACK, f"Ray listens beyond 127.0.0.1: {got['listen']}"
