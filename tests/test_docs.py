"""Every ```python and ```bash snippet of README.md and docs/*.md runs, so a snippet that
stops working fails the suite. The snippets are found when the tests run: whatever the
documents hold is what is tested.

How a document is run (in a scratch directory, one per test module):

- The scratch directory holds copies of ``jobs/``, ``tuning/`` and ``cluster.yaml``,
  *shrunk* so that every command takes seconds: streams of 3 tasks (split streams keep
  their task count) and at most 30 training samples per task (mnist1d: 500 samples), an
  MLP with 8 hidden units, 1 epoch, the first seed and the identity order, 1 CPU and no
  GPU per run; studies run 2 trials, one at a time, with their first enqueued point
  (list orders become ``identity``) and an ASHA grace period of 1. Nothing else changes:
  every strategy of a job still runs.
- It also holds a results store made before the first snippet runs:
  ``results/quickstart`` (every run of the shrunk quickstart job, run in this process)
  and ``results/ewc_lambda`` (the shrunk ``tuning/ewc_lambda.yaml`` study, Optuna
  backend), and ``datasets/`` with tiny fake MNIST, FashionMNIST, CIFAR-10 and CIFAR-100
  files in their official layouts. No ``data/`` folder: a snippet that writes there
  must create it.
- Python snippets of one document run in order in one namespace (as in a notebook).
- Bash snippets run line by line (``\\`` continuations joined, comments dropped):
  ``llray ...`` and ``.venv/bin/llray ...`` run in this process through
  ``llray.cli.main`` and must exit 0. They run without Ray: ``llray run`` and ``llray
  curriculum`` learn their runs in this process (``llray.experiment.execute``, then the
  same results files) instead of on Ray actors, ``llray tune`` runs its study with the
  Optuna backend in this process instead of Ray Tune, and commands whose work only Ray
  does (``llray taskonomy``'s pairwise jobs) are checked up to the point where they would
  start Ray. Everything else of a command (its checks, the store it writes and reads,
  compaction, reports) runs as it does for a user; the Ray paths themselves are tested
  in test_cli, test_distributed, test_tuning_studies and test_taskonomy.
  ``export K=V`` sets the variable; ``make T`` runs the Makefile recipe of T the same way
  (``for f in GLOB; do ...; done`` expanded), except ``make test`` (this suite),
  ``install``, ``clean`` and ``bench``; ``ray job submit ... -- CMD`` runs CMD here,
  without ``--address`` and with an absolute ``--output`` moved into the scratch
  directory. Commands that need a cloud account or a running cluster, or that start or
  stop one on this machine (``ray up``, ``ray start``, ``ray stop``, ``ray dashboard``,
  ``ray job logs``, ``ray get-auth-token``, ``pip install``, ``llray submit``, which
  test_submit runs against a real head) are not run; the files they name must exist. Any other command runs in ``bash`` and must exit 0.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llray.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(python|bash)[^\n]*\n(.*?)^```", re.S | re.M)
NOT_HERE = ("ray up", "ray down", "ray start", "ray stop", "ray dashboard", "ray job logs",
            "ray job stop", "ray get-auth-token", "ray attach", "ray rsync", "pip install",
            "llray submit")  # llray submit needs a cluster's job API: tests/test_submit.py
MAKE_NOT_RUN = {"test", "install", "clean", "bench"}


def snippets(path: Path) -> list[tuple[str, int, str]]:
    """``(language, line, code)`` of every python and bash fence of a document."""
    text = path.read_text()
    return [(m.group(1), text[:m.start()].count("\n") + 2, m.group(2))
            for m in FENCE.finditer(text)]


# -- the scratch directory ----------------------------------------------------------------------
def shrink_stream(stream: dict) -> None:
    if stream.get("kind") != "split":
        stream["num_tasks"] = 3
    if stream.get("dataset") == "mnist1d":
        stream["num_samples"] = 500
    stream["max_train_per_task"] = 30


def shrink_experiment(data: dict) -> dict:
    if isinstance(data.get("stream"), dict):
        shrink_stream(data["stream"])
    if "model" in data:
        data["model"] = {**data["model"], "hidden": [8]}
    data["train"] = {**(data.get("train") or {}), "epochs": 1}
    for key, first in (("seeds", 0), ("orders", "identity")):
        if key in data:
            data[key] = [data[key][0] if key == "seeds" else first]
    if "resources" in data or "study" in data:
        data["resources"] = {"num_cpus": 1}
    return data


def shrink_study(data: dict) -> dict:
    data = shrink_experiment(data)
    data.update(num_trials=2, max_concurrent_trials=1)
    enqueue = [{k: ("identity" if k == "order" and isinstance(v, list) else v)
                for k, v in point.items()} for point in data.get("enqueue", [])[:1]]
    if enqueue:
        data["enqueue"] = enqueue
    if isinstance(data.get("scheduler"), dict) and "asha" in data["scheduler"]:
        data["scheduler"] = {"asha": {**(data["scheduler"]["asha"] or {}), "grace_period": 1}}
    return data


def write_datasets(folder: Path) -> None:
    from tests.test_vision_streams import write_fake_cifar, write_fake_mnist

    write_fake_mnist(folder, n_train=40, n_test=20)
    fashion = folder / "fashion"
    write_fake_mnist(fashion, n_train=40, n_test=20)
    (fashion / "MNIST").rename(folder / "FashionMNIST")
    write_fake_cifar(folder, 10, per_class_train=1, per_class_test=1)
    write_fake_cifar(folder, 100, per_class_train=1, per_class_test=1)


def build_store(scratch: Path) -> None:
    from llray.config import load_config
    from llray.experiment import execute
    from llray.results import RunMeta, write_run
    from llray.tuning.optuna_backend import default_storage, run_optuna
    from llray.tuning.spec import load_spec

    cfg = load_config(scratch / "jobs" / "quickstart.yaml")
    for spec in cfg.runs():
        res = execute(spec)
        write_run(scratch / "results" / "quickstart",
                  RunMeta(spec.run_id, spec.experiment, spec.strategy.display, "permuted-digits",
                          spec.stream.scenario_name, spec.seed, spec.order,
                          spec.config_dict()), res)
    study = load_spec(scratch / "tuning" / "ewc_lambda.yaml")
    out = scratch / "results" / "ewc_lambda"
    run_optuna(study, output=out, storage=default_storage(out, study))  # as llray tune does


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    for folder, shrink in (("jobs", shrink_experiment), ("tuning", shrink_study)):
        shutil.copytree(ROOT / folder, root / folder)
        for path in (root / folder).rglob("*.yaml"):
            path.write_text(yaml.safe_dump(shrink(yaml.safe_load(path.read_text()))))
    shutil.copy(ROOT / "cluster.yaml", root / "cluster.yaml")
    shutil.copy(ROOT / "Makefile", root / "Makefile")
    write_datasets(root / "datasets")
    build_store(root)
    return root


# -- running snippets ---------------------------------------------------------------------------
def command_lines(code: str) -> list[str]:
    """Shell lines with continuations joined and comments dropped."""
    lines = code.replace("\\\n", " ").splitlines()
    return [line for line in lines if shlex.split(line, comments=True)]


def make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target, ``$(BIN)/`` dropped and for-loops expanded."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", text, re.M)
    assert match, f"no Makefile target {target!r}"
    out = []
    for line in match.group(1).splitlines():
        line = line.strip().replace("$(BIN)/", "").replace("$$", "$")
        loop = re.fullmatch(r"for (\w+) in (\S+); do (.+?)(?: \|\| exit 1)?; done", line)
        if loop:
            var, pattern, body = loop.groups()
            out += [body.replace(f"${var}", f) for f in sorted(glob.glob(pattern))]
        else:
            out.append(line)
    return out


def local_argv(argv: list[str], scratch: Path) -> list[str]:
    """A job's command as it runs here: no ``--address``; absolute outputs in scratch."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--address":
            skip = True
            continue
        if i and argv[i - 1] == "--output" and arg.startswith("/"):
            arg = str(scratch / "abs" / arg.lstrip("/"))
        out.append(arg)
    return out


def run_line(line: str, scratch: Path, monkeypatch, where: str) -> None:
    argv = shlex.split(line, comments=True)
    text = " ".join(a for a in argv if not re.fullmatch(r"[A-Za-z_]\w*=.*", a))  # no VAR=
    if text.startswith(NOT_HERE):
        for arg in argv:
            if arg.endswith((".yaml", ".yml")):
                assert (scratch / arg).exists(), f"{where}: {arg} does not exist"
        return
    if argv[0] == "export":
        for assignment in argv[1:]:
            key, _, value = assignment.partition("=")
            monkeypatch.setenv(key, value)
        return
    if argv[0] == "make":
        for target in argv[1:]:
            if target not in MAKE_NOT_RUN:
                for recipe_line in make_recipe(target):
                    run_line(recipe_line, scratch, monkeypatch, f"{where} (make {target})")
        return
    if argv[:3] == ["ray", "job", "submit"]:
        run_line(shlex.join(local_argv(argv[argv.index("--") + 1:], scratch)), scratch,
                 monkeypatch, where)
        return
    if Path(argv[0]).name == "llray":
        try:
            code = main(argv[1:])
        except NeedsRay:  # checked up to where only Ray can go on
            return
        assert code == 0, f"{where}: {text} exited {code}"
        return
    done = subprocess.run(["bash", "-c", line], cwd=scratch, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{where}: {text}: {done.stderr[-2000:]}"


class NeedsRay(Exception):
    """A command got past its checks to work that only Ray does."""


def local_sweep(specs, stream, output, options=None, on_task=None, on_run=None):
    """``run_sweep`` in this process: each run learned by ``execute``, written the same way."""
    from datetime import datetime, timezone

    from llray.distributed.sweep import Attempt, Finished, meta_for
    from llray.experiment import execute
    from llray.results import write_run

    finished = []
    for spec in specs:
        t0 = datetime.now(timezone.utc)
        result = execute(spec, stream)
        t1 = datetime.now(timezone.utc)
        write_run(output, meta_for(spec, t0, t1, stream), result)
        finished.append(Finished(spec, result, t0, t1, [Attempt(trained=len(spec.order))]))
        if on_run is not None:
            on_run(finished[-1])
    return finished


def local_tune(study, output, resume=False, stream=None):
    """``run_tune`` in this process: the same study with the Optuna backend."""
    from llray.tuning.optuna_backend import default_storage, run_optuna

    return run_optuna(study, output, stream=stream)


@pytest.fixture
def without_ray(monkeypatch):
    import llray.distributed.session as session
    import llray.distributed.sweep as sweep
    import llray.taskonomy as taskonomy
    import llray.tuning.tune_backend as tune_backend

    def needs_ray(*args, **kwargs):
        raise NeedsRay

    monkeypatch.setattr(session, "connect", lambda *a, **k: None)
    monkeypatch.setattr(session, "alive_nodes", lambda: 1)
    monkeypatch.setattr(sweep, "run_sweep", local_sweep)
    monkeypatch.setattr(tune_backend, "run_tune", local_tune)
    monkeypatch.setattr(taskonomy, "run_pairs", needs_ray)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_snippet_runs(doc, scratch, without_ray, monkeypatch):
    monkeypatch.chdir(scratch)
    namespace: dict = {"__name__": "__docs__"}
    for lang, line, code in snippets(doc):
        where = f"{doc.relative_to(ROOT)}:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - our own docs
        else:
            for command in command_lines(code):
                run_line(command, scratch, monkeypatch, where)


def test_snippets_are_found_and_the_rules_apply():
    found = {doc.name: snippets(doc) for doc in DOCUMENTS}
    assert sum(len(s) for s in found.values()) >= 10
    assert any(lang == "bash" for lang, _, _ in found["README.md"])
    assert make_recipe("demo") == ["llray run jobs/quickstart.yaml --output results/quickstart"]
    argv = ["llray", "run", "j.yaml", "--address", "auto", "--output", "/shared/r"]
    assert local_argv(argv, Path("/s")) == ["llray", "run", "j.yaml", "--output", "/s/abs/shared/r"]
    small = shrink_study({"stream": {"kind": "permuted", "num_tasks": 9}, "num_trials": 20,
                          "enqueue": [{"order": [4, 3, 2, 1, 0]}, {"order": "identity"}]})
    assert small["stream"]["num_tasks"] == 3 and small["num_trials"] == 2
    assert small["enqueue"] == [{"order": "identity"}]
    assert json.dumps(small)  # plain data
    assert os.path.basename(__file__) == "test_docs.py"
