"""Packs in the Optuna backend: K trials asked at once, trained as one pack, pruned alone."""

import numpy as np
import yaml

from llray.cli import main
from llray.experiment import execute
from llray.tuning.optuna_backend import run_optuna
from llray.tuning.spec import parse_spec

SPEC = {
    "study": "packed", "stream": {"dataset": "digits", "kind": "permuted", "num_tasks": 3},
    "model": {"hidden": [32]}, "train": {"epochs": 1, "lr": 0.01, "optimizer": "adam"},
    "strategy": "naive", "num_trials": 3, "seed": 0, "resources": {"pack": 3},
    "search": {"train.lr": {"loguniform": [1.0e-6, 0.1]}},
    # the second trial's tiny lr is the worst after the first task: SHA prunes it there
    "enqueue": [{"train.lr": 0.01}, {"train.lr": 1.0e-6}, {"train.lr": 0.02}],
    "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
}


def test_a_pack_of_trials_is_pruned_per_trial_and_matches_each_trial_alone():
    study = parse_spec(SPEC)
    records = run_optuna(study, output=None)
    assert len(records) == 3
    assert records[0].status == "ok" and records[0].tasks_learned == 3
    assert records[1].status == "stopped" and records[1].tasks_learned == 1
    for r in records:
        alone = execute(study.run_spec(r.values)).R
        k = r.tasks_learned
        np.testing.assert_allclose(r.R[: k + 1], alone[: k + 1], atol=0.02, rtol=0)
        assert np.isnan(r.R[k + 1:]).all()
    # the pruned trial was masked out: its pack-mates learned every task after it stopped
    assert records[2].tasks_learned == 3 or records[2].status == "stopped"


def test_the_ray_tune_backend_refuses_packs(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    code = main(["tune", str(path), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "resources.pack" in err[0] and "optuna" in err[0]
    assert not (tmp_path / "out").exists()
