"""``llray submit`` and the README's ``ray job submit`` line, end to end on a real Ray head.

The head is ``ray start --head`` in a subprocess (tests/ray_head.py): token auth on with
its own token file, loopback only, free ports, its own temp dir, stopped by its own
process ids. It is started the way docs/cluster.md starts a local head (with the
virtualenv's ``bin`` on PATH); the entrypoint's other branch (llray not on PATH) is
tested on its own below.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from llray.cli import main
from llray.commands.submit import entrypoint, read_excludes
from llray.config import load_config
from ray_head import BIN, start_head

ROOT = Path(__file__).resolve().parents[1]
JOB = "tests/jobs/submit_small.yaml"
RUN_FLAGS = ["--", "--max-in-flight", "1", "--no-progress"]


# -- the upload ---------------------------------------------------------------------------

def _uploaded(root: Path, tmp_path: Path) -> set[str]:
    """The files Ray's own packaging puts in the job's zip with llray's excludes."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "pkg.zip"
    create_package(str(root), target, include_parent_dir=False,
                   excludes=read_excludes(root), include_gitignore=False)
    with zipfile.ZipFile(target) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_the_upload_leaves_out_venv_results_git_and_caches(tmp_path):
    root = tmp_path / "checkout"
    keep = ["llray/cli.py", "llray/results/read.py", "jobs/a.yaml", "tests/jobs/b.yaml",
            "docs/results/notes.md", "cluster.yaml"]
    drop = [".venv/lib/python3.11/site-packages/torch/x.so", ".git/objects/ab/cd",
            "results/exp/runs/part-0.parquet", "llray/__pycache__/cli.cpython-311.pyc",
            "build/lib/llray/cli.py", "dist/llray-0.1.0.whl", "llray.egg-info/PKG-INFO",
            ".pytest_cache/v/cache/nodeids"]
    for name in keep + drop:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (root / ".rayignore").write_text((ROOT / ".rayignore").read_text())
    got = _uploaded(root, tmp_path)
    assert set(keep) <= got
    assert not got & set(drop), got & set(drop)


def test_the_upload_of_this_checkout_has_all_of_llray_and_the_jobs(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "llray", "jobs", "tests/jobs"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    if not tracked:  # not a git checkout (an sdist): list the package's files instead
        tracked = [str(p.relative_to(ROOT)) for p in (ROOT / "llray").rglob("*.py")]
    got = _uploaded(ROOT, tmp_path)
    assert set(tracked) - {".rayignore"} <= got
    assert not [n for n in got if n.startswith((".venv/", ".git/", "results/"))]


# -- the entrypoint ------------------------------------------------------------------------

def test_entrypoint_uses_the_submitting_python_when_llray_is_not_on_path():
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run(["sh", "-c", entrypoint(["--help"], sys.executable)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: llray" in out.stdout and "submit" in out.stdout


def test_entrypoint_without_llray_anywhere_is_one_clear_error():
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", entrypoint(["--help"], "/nonexistent/bin/python")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 127
    assert out.stderr.startswith("llray: error: llray is not on the PATH")
    assert len(out.stderr.strip().splitlines()) == 1


# -- bad input: exit 2, one line, nothing submitted ---------------------------------------

@pytest.mark.parametrize("argv, field", [
    ([JOB, "--output", "results/x"], "--output: must be an absolute path"),
    ([JOB], "--output: required"),
    ([JOB, "--output", "/r", "--", "--address", "h:1"], "RUN_FLAGS: --address is set"),
    ([JOB, "--output", "/r", "--working-dir", "docs"], "is not inside --working-dir"),
    (["tests/jobs/missing.yaml", "--output", "/r"], "config: file not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, field, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["submit", *argv, "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llray: error:") and field in err and "\n" not in err


def test_a_missing_token_file_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no_token"))
    assert main(["submit", JOB, "--output", "/r", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llray: error: RAY_AUTH_TOKEN_PATH: RAY_AUTH_MODE=token but no token "
                   f"in {tmp_path / 'no_token'}: copy the cluster's token there "
                   "('ray get-auth-token' on the head prints it)")


# -- end to end on a loopback head --------------------------------------------------------

@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=2, env_extra={"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    try:
        yield h
    finally:
        h.stop()
    assert not h.alive(), "the head left processes behind"


def _cli_env(head, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(head.client_env, **extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300):
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _client(head):
    from ray.job_submission import JobSubmissionClient

    token = head.token_file.read_text().strip()
    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {token}"})


def _wait(client, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.3)
    return status


def _submit(head, output: Path, *more: str) -> str:
    out = _run([str(BIN / "llray"), "submit", JOB, "--address", head.address,
                "--output", str(output), *more, *RUN_FLAGS], _cli_env(head))
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.match(r"submitted job (\S+) to ", out.stdout)
    assert m, out.stdout
    job_id = m.group(1)
    assert f"ray job logs --address {head.address} --follow {job_id}" in out.stdout
    assert f"ray job stop --address {head.address} {job_id}" in out.stdout
    assert "--resume" in out.stdout.split("resume:")[1]
    return job_id


def _store(output: Path):
    """The raw rows of the store (every copy, not the readers' newest-copy view)."""
    runs = ds.dataset(output / "runs", format="parquet", partitioning="hive").to_table()
    r = ds.dataset(output / "r_matrix", format="parquet", partitioning="hive").to_table()
    return runs.to_pandas(), r.to_pandas()


def _check_once_and_equal(output: Path, reference: Path) -> None:
    runs, r = _store(output)
    ref_runs, ref_r = _store(reference)
    cfg = load_config(ROOT / JOB)
    ids = sorted(s.run_id for s in cfg.runs())
    assert sorted(runs["run_id"]) == ids  # every run exactly once
    assert not r.duplicated(["run_id", "split", "step", "eval_pos"]).any()
    assert (runs["status"] == "ok").all()
    key = ["run_id", "split", "step", "eval_pos"]
    got = r.sort_values(key)[key + ["accuracy"]].reset_index(drop=True)
    want = ref_r.sort_values(key)[key + ["accuracy"]].reset_index(drop=True)
    assert got[key].equals(want[key])
    np.testing.assert_array_equal(got["accuracy"], want["accuracy"])
    cols = ["acc", "bwt", "fwt", "forgetting"]
    np.testing.assert_array_equal(runs.sort_values("run_id")[cols].to_numpy(),
                                  ref_runs.sort_values("run_id")[cols].to_numpy())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The same job run by ``llray run`` on an embedded Ray, for the reference numbers."""
    out = tmp_path_factory.mktemp("embedded") / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    res = _run([str(BIN / "llray"), "run", JOB, "--output", str(out), "--num-cpus", "2",
                "--no-progress"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_submit_stop_resume_keeps_every_run_once_with_embedded_metrics(head, embedded,
                                                                       tmp_path):
    out = tmp_path / "out"
    client = _client(head)
    job_id = _submit(head, out)
    ckpts = out / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts.is_dir() and any(ckpts.iterdir())):  # the first task is learned
        assert not client.get_job_status(job_id).is_terminal(), client.get_job_logs(job_id)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stop = _run([str(BIN / "ray"), "job", "stop", "--address", head.address, job_id],
                _cli_env(head))
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert _wait(client, job_id).name == "STOPPED"
    logs = client.get_job_logs(job_id)
    assert "llray: interrupted:" in logs and "--resume" in logs, logs[-3000:]  # exit 130 path
    assert "Traceback" not in logs
    done = len(_store(out)[0]) if (out / "runs").is_dir() else 0
    assert done < len(load_config(ROOT / JOB).runs())  # stopped mid-sweep
    assert any(ckpts.iterdir())  # the checkpoints are kept

    resumed = _submit(head, out, "--resume")
    assert _wait(client, resumed).name == "SUCCEEDED", client.get_job_logs(resumed)[-3000:]
    logs = client.get_job_logs(resumed)
    assert f"resume: {done} runs already done" in logs
    assert re.search(r"[1-9]\d* continue from checkpoints", logs), logs[-3000:]
    _check_once_and_equal(out, embedded)


def _readme_submit_line() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^ray job submit .*?(?<!\\)$", section.replace("\\\n", ""), flags=re.M)
    assert m, "README 'Run on a cluster' has no 'ray job submit' line"
    return shlex.split(m.group(0).split("#")[0])


def test_the_readme_ray_job_submit_line_runs_the_job(head, embedded, tmp_path):
    cmd = _readme_submit_line()
    sep = cmd.index("--")
    ray_part, entry = cmd[:sep], cmd[sep + 1:]
    assert ray_part[:3] == ["ray", "job", "submit"] and "--working-dir" in ray_part
    assert ray_part[ray_part.index("--working-dir") + 1] == "."
    assert entry[:2] == ["llray", "run"] and entry[entry.index("--address") + 1] == "auto"
    assert entry[entry.index("--output") + 1].startswith("/")
    out = tmp_path / "out"
    ray_part[0] = str(BIN / "ray")
    ray_part[ray_part.index("--address") + 1] = head.address
    entry[2] = JOB
    entry[entry.index("--output") + 1] = str(out)
    res = _run([*ray_part, "--", *entry, "--no-progress"], _cli_env(head))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "succeeded" in (res.stdout + res.stderr).lower()
    _check_once_and_equal(out, embedded)


@pytest.mark.parametrize("case", ["wrong token", "no RAY_AUTH_MODE"])
def test_a_token_the_head_refuses_is_one_line_and_exit_2(head, tmp_path, case):
    env = _cli_env(head)
    if case == "wrong token":
        bad = tmp_path / "token"
        bad.write_text("0" * 64)
        env["RAY_AUTH_TOKEN_PATH"] = str(bad)
        want = "rejected the token (HTTP 403)"
    else:
        env.pop("RAY_AUTH_MODE")
        want = "requires a token (HTTP 401): export RAY_AUTH_MODE=token"
    before = len(_client(head).list_jobs())
    res = _run([str(BIN / "llray"), "submit", JOB, "--address", head.address,
                "--output", str(tmp_path / "out")], env)
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("llray:")]
    assert len(err) == 1 and want in err[0], res.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    assert len(_client(head).list_jobs()) == before  # nothing submitted
