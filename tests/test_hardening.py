"""Hostile input to every command: exit 2 with one line naming the field or file, before any
work, nothing written; wrong answers to valid input; leftovers of interrupted work."""

import os
import time
from pathlib import Path

import pytest
import yaml

import llray.distributed.session as session
from llray.cli import main
from llray.config import parse_config
from llray.errors import ConfigError
from llray.results import load, write_run
from llray.tuning.spec import parse_spec
from tests.test_results import make_run

CONFIG = {
    "experiment": "h",
    "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3, "seed": 0},
    "model": {"hidden": [8]},
    "train": {"epochs": 1, "lr": 0.01},
    "strategies": ["naive"],
    "seeds": [0],
    "orders": ["identity"],
}
SPEC = {"study": "s", "stream": CONFIG["stream"], "model": CONFIG["model"],
        "train": CONFIG["train"], "strategy": "ewc",
        "search": {"ewc.lambda_": {"loguniform": [0.1, 1.0e4]}}, "num_trials": 2}


class RayStarted(Exception):
    """Raised instead of starting Ray: the command got past its checks."""


@pytest.fixture
def no_ray(monkeypatch):
    """Any command that would start or join Ray stops there with :class:`RayStarted`."""
    def refuse(*args, **kwargs):
        raise RayStarted

    monkeypatch.setattr(session, "connect", refuse)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")} if Path(root).exists() \
        else set()


def one_error_line(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llray: error: "), captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def corrupt_pages(path: Path) -> None:
    """Flip bytes of the first data page; the footer stays intact and readable."""
    data = bytearray(path.read_bytes())
    for i in range(8, 300):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


# -- item 4: tracebacks become exit 2 ---------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
@pytest.mark.parametrize("command", ["run", "tune"])
def test_config_or_spec_not_utf8_is_one_line(tmp_path, capsys, command, encoding):
    data = {**CONFIG, "experiment": "é"} if command == "run" else {**SPEC, "study": "é"}
    path = tmp_path / "c.yaml"
    path.write_bytes(yaml.safe_dump(data, allow_unicode=True).encode(encoding))
    out = tmp_path / "out"
    assert main([command, str(path), "--output", str(out)]) == 2
    one_error_line(capsys, "c.yaml", "not UTF-8")
    assert not out.exists()


@pytest.mark.parametrize("changes, field", [
    ({"seeds": [2**70]}, "seeds[0]"),
    ({"seeds": [-1]}, "seeds[0]"),
    ({"stream": {**CONFIG["stream"], "seed": 2**64}}, "stream.seed"),
    ({"stream": {**CONFIG["stream"], "num_tasks": 100000}}, "stream.num_tasks"),
    ({"train": {"epochs": 2**80}}, "train.epochs"),
])
def test_huge_numbers_in_a_config_are_exit_2(tmp_path, capsys, no_ray, changes, field):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["run", str(write_yaml(tmp_path / "c.yaml", {**CONFIG, **changes})),
                 "--output", str(out)]) == 2
    assert time.perf_counter() - t0 < 10  # checked, not attempted
    one_error_line(capsys, field)
    assert not out.exists()


@pytest.mark.parametrize("changes, field", [
    ({"run_seed": 2**70}, "run_seed"),
    ({"seed": 2**40}, "seed"),  # Optuna's samplers take a 32-bit seed
    ({"study": "../up"}, "study"),
    ({"train": {"lr": float("nan")}}, "train.lr"),
])
def test_bad_spec_values_are_exit_2(tmp_path, capsys, no_ray, changes, field):
    out = tmp_path / "out"
    assert main(["tune", str(write_yaml(tmp_path / "s.yaml", {**SPEC, **changes})),
                 "--output", str(out)]) == 2
    assert one_error_line(capsys).startswith(f"llray: error: {field}:")
    assert not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["run", "CFG", "--max-in-flight", "-1"], "--max-in-flight"),
    (["run", "CFG", "--num-cpus", "-1"], "--num-cpus"),
    (["run", "CFG", "--num-cpus", "0"], "--num-cpus"),
    (["curriculum", "CFG", "--random", "-2"], "--random"),
    (["tune", "SPEC", "--top", "0"], "--top"),
    (["tune", "SPEC", "--backend", "optuna", "--worker", "-3"], "--worker"),
    (["compact", "OUT", "--max-rows", "-5"], "--max-rows"),
])
def test_negative_flags_are_exit_2(tmp_path, capsys, no_ray, argv, flag):
    subst = {"CFG": str(write_yaml(tmp_path / "c.yaml", CONFIG)),
             "SPEC": str(write_yaml(tmp_path / "s.yaml", SPEC)), "OUT": str(tmp_path)}
    out = tmp_path / "out"
    argv = [subst.get(a, a) for a in argv] + (["--output", str(out)] if argv[0] != "compact"
                                               else [])
    assert main(argv) == 2
    one_error_line(capsys, flag)
    assert not out.exists()


def test_address_auto_without_a_cluster_is_exit_2_and_leaves_no_output(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray-here"))  # no 'ray start' record
    out = tmp_path / "deep" / "out"
    cfg = write_yaml(tmp_path / "c.yaml", CONFIG)
    assert main(["run", str(cfg), "--output", str(out), "--address", "auto"]) == 2
    one_error_line(capsys, "--address", "no Ray cluster found")
    assert not (tmp_path / "deep").exists()  # the output check created it; removed again


# -- item 5: wrong answers --------------------------------------------------------------------
def test_random_orders_of_many_tasks_use_exact_factorials():
    cfg = parse_config({**CONFIG, "stream": {**CONFIG["stream"], "num_tasks": 21},
                        "orders": ["random:1"]})
    assert sorted(cfg.orders[0]) == list(range(21))
    with pytest.raises(ConfigError, match="more orders than the 6 that exist"):
        parse_config({**CONFIG, "orders": ["random:7"]})
    with pytest.raises(ConfigError, match="random:0"):
        parse_config({**CONFIG, "orders": ["random:0"]})


@pytest.mark.parametrize("changes, field", [
    ({"train": {"lr": float("inf")}}, "train.lr"),
    ({"strategies": [{"name": "ewc", "lambda_": float("-inf")}]}, "strategies[0].lambda_"),
    ({"resources": {"num_cpus": float("nan")}}, "resources.num_cpus"),
    ({"orders": [[True, 0, 2]]}, "orders[0]"),
    ({"orders": [[0, 1, False]]}, "orders[0]"),
    ({"experiment": ".."}, "experiment"),
    ({"experiment": "."}, "experiment"),
    ({"experiment": "../x"}, "experiment"),
    ({"experiment": ".hidden"}, "experiment"),
    ({"experiment": "a" * 101}, "experiment"),
])
def test_values_that_were_accepted_are_refused(tmp_path, capsys, no_ray, changes, field):
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(tmp_path / "c.yaml", {**CONFIG, **changes})),
                 "--output", str(out)]) == 2
    assert one_error_line(capsys).startswith(f"llray: error: {field}:")
    assert not out.exists() and files(tmp_path) == {"c.yaml"}


def test_a_yaml_inf_anywhere_is_refused_and_a_valid_config_gets_to_ray(tmp_path, capsys,
                                                                       no_ray):
    text = yaml.safe_dump(CONFIG).replace("lr: 0.01", "lr: .inf")
    (tmp_path / "c.yaml").write_text(text)
    assert main(["run", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "train.lr", "finite")
    with pytest.raises(RayStarted):  # the same config without it passes every check
        main(["run", str(write_yaml(tmp_path / "c.yaml", CONFIG)), "--output",
              str(tmp_path / "o")])


def test_spec_study_names_are_plain_names():
    for bad in ("..", "a/b", "-x"):
        with pytest.raises(ConfigError, match="^study"):
            parse_spec({**SPEC, "study": bad})


# -- item 3: every file checked before any work ----------------------------------------------
@pytest.fixture
def store(tmp_path):
    out = tmp_path / "store"
    for i in range(3):
        write_run(out, *make_run(f"r{i}", seed=i))
    return out


def test_report_checks_r_matrix_files_too(store, capsys):
    (store / "r_matrix/experiment=exp/r1.parquet").write_bytes(b"PAR1 truncated")
    assert main(["report", str(store)]) == 2
    one_error_line(capsys, "r1.parquet")


@pytest.mark.parametrize("flag", ["--html", "--png"])
def test_report_figures_check_every_page_before_printing(store, tmp_path, capsys, flag):
    corrupt_pages(store / "r_matrix/experiment=exp/r1.parquet")
    target = tmp_path / ("report.html" if flag == "--html" else "figs")
    assert main(["report", str(store), flag, str(target)]) == 2
    assert capsys.readouterr().out == ""  # no table printed before the error
    assert main(["report", str(store), flag, str(target)]) == 2
    one_error_line(capsys, "r1.parquet")
    assert not target.exists()


def test_compact_with_a_corrupt_runs_page_changes_nothing(store, capsys):
    corrupt_pages(store / "runs/experiment=exp/r2.parquet")
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*.parquet")}
    assert main(["compact", str(store)]) == 2
    one_error_line(capsys, "r2.parquet")
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*.parquet")} == before


def test_curriculum_with_a_truncated_file_stops_before_ray_and_writes_nothing(
        tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    meta, res = make_run("c1", order=(0, 1, 2), experiment="h-curriculum")
    write_run(out, meta, res)
    bad = out / "r_matrix/experiment=h-curriculum/c1.parquet"
    bad.write_bytes(bad.read_bytes()[:40])
    before = files(out)
    cfg = write_yaml(tmp_path / "c.yaml", CONFIG)
    assert main(["curriculum", str(cfg), "--output", str(out), "--random", "1"]) == 2
    one_error_line(capsys, "c1.parquet")
    assert files(out) == before


def test_resumed_run_with_a_corrupt_file_in_its_partition_stops_before_ray(tmp_path, capsys,
                                                                            no_ray):
    out = tmp_path / "out"
    write_run(out, *make_run("old", order=(0, 1, 2), experiment="h"))
    corrupt_pages(out / "r_matrix/experiment=h/old.parquet")
    before = files(out)
    cfg = write_yaml(tmp_path / "c.yaml", CONFIG)
    assert main(["run", str(cfg), "--output", str(out), "--resume"]) == 2
    one_error_line(capsys, "old.parquet")
    assert files(out) == before


# -- item 6: leftovers ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "empty directory"])
def test_compact_of_a_file_or_an_empty_directory_is_exit_2(tmp_path, capsys, kind):
    target = tmp_path / "target"
    target.write_text("x") if kind == "file" else target.mkdir()
    assert main(["compact", str(target)]) == 2
    one_error_line(capsys, str(target))


def test_compaction_removes_a_killed_writers_stale_temporary_only(store, capsys):
    folder = store / "r_matrix/experiment=exp"
    stale = folder / f".compact-0123456789abcdef.parquet.{'a' * 32}.tmp"
    fresh = folder / f".r9.parquet.{'b' * 32}.tmp"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    assert main(["compact", str(store)]) == 0
    assert "removed 1 temporary files" in capsys.readouterr().out
    assert not stale.exists() and fresh.exists()  # a live writer's file stays
    assert sorted(load(store).runs.run_id) == ["r0", "r1", "r2"]


def test_exit_2_after_the_output_check_leaves_no_empty_output(tmp_path, capsys, no_ray):
    out = tmp_path / "new" / "out"
    cfg = write_yaml(tmp_path / "c.yaml", CONFIG)
    # --study is checked against the store after the output check
    assert main(["curriculum", str(cfg), "--output", str(out), "--study", "nope"]) == 2
    one_error_line(capsys, "study")
    assert not (tmp_path / "new").exists()
