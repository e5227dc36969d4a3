"""Ray Tune's pickled study state is restored only when no one but the current user could
have written it: a planted pickle never runs."""

import os
import pickle
import stat
import subprocess
import sys

import pytest
import yaml

from llray.cli import main
from llray.errors import ConfigError
from llray.tuning import trust
from tests.test_hardening import SPEC, RayStarted, no_ray  # noqa: F401 - fixture

STATE = "experiment_state-2026-01-01_00-00-00.json"


class Payload:
    """A pickle that runs a shell command when loaded, as an attacker would plant."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(out, marker, mode=0o644):
    """``OUTPUT/tune/s`` with a malicious ``tuner.pkl`` Tune would restore from."""
    study = out / "tune" / "s"
    study.mkdir(parents=True)
    (study / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (study / STATE).write_text("{}")
    for p in (out, out / "tune", study, study / "tuner.pkl", study / STATE):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(study / "tuner.pkl", mode)
    return study


def resume(tmp_path, out):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    return main(["tune", str(spec), "--output", str(out), "--resume"])


def test_the_planted_pickle_is_real_code_execution_when_restored(tmp_path):
    marker = tmp_path / "ran"
    study = plant(tmp_path / "out", marker)
    code = ("from ray import tune\n"
            f"try: tune.Tuner.restore({str(study)!r}, trainable=lambda c: None)\n"
            "except Exception: pass\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert marker.exists()  # what Tune's restore does with it: why llray checks first


@pytest.mark.parametrize("weaken", ["file group-writable", "file world-writable",
                                    "study dir group-writable", "tune dir world-writable",
                                    "symlinked file"])
def test_resume_refuses_state_others_could_write_and_the_pickle_never_runs(
        tmp_path, capsys, no_ray, weaken):  # noqa: F811 - the fixture
    out, marker = tmp_path / "out", tmp_path / "ran"
    study = plant(out, marker)
    if weaken == "file group-writable":
        os.chmod(study / "tuner.pkl", 0o664)
    elif weaken == "file world-writable":
        os.chmod(study / "tuner.pkl", 0o646)
    elif weaken == "study dir group-writable":
        os.chmod(study, 0o775)
    elif weaken == "tune dir world-writable":
        os.chmod(out / "tune", 0o777)
    else:
        real = tmp_path / "elsewhere.pkl"
        (study / "tuner.pkl").rename(real)
        (study / "tuner.pkl").symlink_to(real)
    assert resume(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert "refusing to restore Ray Tune state" in err and "--backend optuna" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists()


def test_trusted_state_passes_the_check_and_gets_to_ray(tmp_path, capsys, no_ray):  # noqa: F811
    out = tmp_path / "out"
    plant(out, tmp_path / "ran")
    with pytest.raises(RayStarted):  # past every check; the restore itself is Tune's
        resume(tmp_path, out)


def test_state_of_another_user_is_refused(tmp_path):
    study = plant(tmp_path / "out", tmp_path / "ran")
    assert trust.problems(study) == []
    other = os.getuid() + 1
    found = trust.problems(study, uid=other)
    assert found and all(f"not to you ({other})" in p for p in found)
    with pytest.raises(ConfigError, match="belongs to user"):
        trust.check_restorable([str(study)], uid=other)


def test_state_on_an_object_store_is_never_restored():
    with pytest.raises(ConfigError, match="object store"):
        trust.check_restorable(["s3://bucket/results/tune/s"])


def test_parents_are_checked_themselves_only(tmp_path):
    tune_dir = tmp_path / "tune"
    (tune_dir / "other-study").mkdir(parents=True)
    os.chmod(tune_dir, 0o755)
    os.chmod(tune_dir / "other-study", 0o777)  # another study's state: not read
    trust.check_restorable([], parents=(str(tune_dir),))
    assert stat.S_IMODE(os.stat(tune_dir).st_mode) == 0o755
    with pytest.raises(ConfigError, match="other-study"):
        trust.check_restorable([str(tune_dir)])
