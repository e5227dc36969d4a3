"""SIGTERM takes the SIGINT path in every command: exit 130, the resume hint, no traceback,
no temporary files, also after Ray has started (and replaced the handler)."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llray import signals
from llray.cli import main
from llray.results import load, write_run
from tests.test_results import make_run

CONFIG = {
    "experiment": "sig",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3, "seed": 2},
    "model": {"hidden": [16]},
    "train": {"epochs": 2, "optimizer": "adam", "lr": 0.01},
    "strategies": ["naive", "joint"],
    "seeds": [0, 1, 2, 3],
    "orders": [[2, 0, 1]],
}


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or
            p.name.startswith(".llray-write-check")]


@pytest.fixture
def sigterm_handler_restored():
    """SIGTERM's handler restored after the test; SIGINT Python's own during it (a Ray
    Tune run earlier in this process may have left its SIGINT handler installed)."""
    before = signal.getsignal(signal.SIGTERM)
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, before)
    signal.signal(signal.SIGINT, sigint)


def test_sigterm_calls_what_handles_sigint_now(sigterm_handler_restored):
    calls = []
    previous_int = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        previous = signals.sigterm_as_sigint()
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.05)  # the handler runs here
        assert calls == [signal.SIGINT]  # e.g. Ray Tune's graceful stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started in the background
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.05)
        signals.restore(previous)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGINT, previous_int)


def test_reinstall_puts_the_handler_back_only_when_llray_set_it(sigterm_handler_restored):
    def ray_like(signum, frame):
        sys.exit(signum)

    signal.signal(signal.SIGTERM, ray_like)
    signals.reinstall()  # llray's command line did not install it: Ray's stays
    assert signal.getsignal(signal.SIGTERM) is ray_like
    previous = signals.sigterm_as_sigint()
    signal.signal(signal.SIGTERM, ray_like)  # what ray.init does
    signals.reinstall()
    assert signal.getsignal(signal.SIGTERM) is signals._on_sigterm
    signals.restore(previous)


def test_sigterm_during_the_final_compaction_exits_130_and_keeps_the_store(
        tmp_path, ray_local, monkeypatch, capsys, sigterm_handler_restored):
    import llray.results

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "seeds": [0], "strategies": ["naive"]}))
    out = tmp_path / "out"
    real = llray.results.compact

    def terminated_while_compacting(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(llray.results, "compact", terminated_while_compacting)
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert len(load(out).runs) == 1 and not _leftovers(out)


def test_sigint_in_compact_command_exits_130_with_hint(tmp_path, monkeypatch, capsys,
                                                      sigterm_handler_restored):
    write_run(tmp_path, *make_run("a"))
    write_run(tmp_path, *make_run("b", seed=1))
    module = importlib.import_module("llray.results.compact")  # not the function
    real = module._apply

    def interrupted(*args):
        real(*args)
        raise KeyboardInterrupt  # Ctrl+C between the two datasets

    monkeypatch.setattr(module, "_apply", interrupted)
    assert main(["compact", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "run 'llray compact" in err and "Traceback" not in err
    assert sorted(load(tmp_path).runs.run_id) == ["a", "b"] and not _leftovers(tmp_path)


def test_sigterm_to_llray_run_after_ray_started_exits_130_with_the_resume_hint(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llray.cli", "run", str(cfg), "--output", str(out),
           "--num-cpus", "1", "--no-progress", "--max-in-flight", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        deadline = time.time() + 120
        while not list((out / "checkpoints").rglob("*")) and time.time() < deadline:
            time.sleep(0.2)  # Ray is up and a run is training
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "llray: interrupted" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and "SIGABRT" not in stderr
    assert not _leftovers(out)
