"""Fuzz: random mutations of the shipped configs and study specs end in exit 2 with one line
(nothing written) or pass every check, never a traceback or a hang.

Each case mutates one file of ``jobs/`` or ``tuning/`` (seeded, so a failure names a
reproducible case): a value replaced by a hostile one (wrong type, out of range, huge,
non-finite, a path, a boolean), a key dropped, renamed or added, a value wrapped in a list
or a mapping, the text truncated, re-encoded (UTF-16, Latin-1, a stray byte), or given a
YAML tag (``!!python/object/apply``, ``!!binary``, ``!!set``, an unknown local tag), a
self-referencing alias or deep nesting. It runs ``llray run`` (configs) or ``llray tune``
(specs) in this process through ``llray.cli.main`` with Ray never started: a case that
passes every check stops where Ray would start. Every case has a time limit.
"""

from __future__ import annotations

import collections
import copy
import functools
import random
import signal
from pathlib import Path

import pytest
import yaml

import llray.distributed.session as session
from llray.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs").rglob("*.yaml"))
SPECS = sorted((ROOT / "tuning").glob("*.yaml"))
CASES_PER_FILE = 30
SECONDS_PER_CASE = 30
HOSTILE = [-1, 0, 1, 2**63, -(2**70), 2**70, 1e308, float("inf"), float("-inf"),
           float("nan"), True, False, None, "", "x", "../..", "/etc", [], {}, [0, 0], [1, "a"],
           {"name": {}}, "random:0", "identity", 0.5, "é\u2028", "a" * 300]
TAGGED = ["!!python/object/apply:os.system ['touch PWNED']", "!!binary aGVsbG8=",
          "!!set {a, b}", "!custom 1", "&loop [*loop]", "[" * 200 + "]" * 200,
          "!!timestamp 2001-12-14", "!!float nan", "0x7fffffffffffffffff"]


class Accepted(Exception):
    """The command passed every check and would start Ray now."""


def paths(node, prefix=()):
    """Every (path, value) of a YAML document, depth first."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for key, value in items:
        yield from paths(value, prefix + (key,))


def set_at(doc, path, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value


def mutate(text: str, rng: random.Random) -> bytes:
    """One random mutation of a YAML file's text, as the bytes written to disk."""
    doc = yaml.safe_load(text)
    inner = [p for p, _ in paths(doc) if p]
    kind = rng.choice(["value", "value", "value", "drop", "rename", "add", "wrap", "tag",
                       "truncate", "encoding"])
    path = rng.choice(inner)
    if kind == "value":
        set_at(doc, path, copy.deepcopy(rng.choice(HOSTILE)))
    elif kind == "drop":
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    elif kind == "rename" and isinstance(path[-1], str):
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1] + "_x"] = parent.pop(path[-1])
    elif kind == "add":
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            parent[rng.choice(["lr", "name", "seed", "nope", "path", "1"])] = rng.choice(HOSTILE)
    elif kind == "wrap":
        old = dict(paths(doc))[path]
        set_at(doc, path, rng.choice([[old], {"value": old}, [old, old]]))
    if kind == "tag":
        set_at(doc, path, "@@TAG@@")
        out = yaml.safe_dump(doc, allow_unicode=True).replace("'@@TAG@@'", rng.choice(TAGGED))
        return out.encode()
    out = yaml.safe_dump(doc, allow_unicode=True)
    if kind == "truncate":
        return out.encode()[: rng.randrange(len(out))]
    if kind == "encoding":
        return rng.choice([out.encode("utf-16"), out.encode("latin-1", "replace") + b"\xe9",
                           b"\xff" + out.encode(), "\ufeff".encode() + out.encode()])
    return out.encode()


def _alarm(signum, frame):
    raise TimeoutError(f"a case ran longer than {SECONDS_PER_CASE} s")


@pytest.mark.parametrize("source", CONFIGS + SPECS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mutations_end_in_exit_2_or_pass_every_check(source, tmp_path, monkeypatch, capsys):
    def at_ray(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(session, "connect", at_ray)
    import llray.data

    # the same stream for the many cases that leave it alone: built once (still checked)
    monkeypatch.setattr(llray.data, "make_stream", functools.lru_cache(8)(llray.data.make_stream))
    command = "tune" if source in SPECS else "run"
    rng = random.Random(source.name)
    outcomes: collections.Counter = collections.Counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES_PER_FILE):
            data = mutate(source.read_text(), rng)
            path = source.parent / f".fuzz-{tmp_path.name}-{case}.yaml"  # `base:` still resolves
            out = tmp_path / f"out{case}"
            path.write_bytes(data)
            signal.alarm(SECONDS_PER_CASE)
            try:
                code = main([command, str(path), "--output", str(out)])
            except Accepted:
                code = "checks passed"
            finally:
                signal.alarm(0)
                path.unlink()
            err = capsys.readouterr().err
            where = f"{source.name} case {case}: {data[:300]!r}"
            assert code in (2, "checks passed"), f"{where}: exit {code}: {err}"
            if code == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("llray: error: "), f"{where}: {err}"
                assert not out.exists(), f"{where}: exit 2 left {out}"
            outcomes[code] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not (Path.cwd() / "PWNED").exists()
    print(f"fuzz {source.name}: {dict(outcomes)}")
