"""Searching hyperparameters and task orders: Ray Tune + Optuna, or plain Optuna.

- :mod:`llray.tuning.spec` — study specs (YAML) and their checks.
- :mod:`llray.tuning.space` — search spaces over config fields, sampled define-by-run.
- :mod:`llray.tuning.lehmer` — task orders as Lehmer codes.
- :mod:`llray.tuning.trial` — one trial: a lifelong run reporting after every task.
- :mod:`llray.tuning.tune_backend` — Ray Tune with ``OptunaSearch`` and ASHA.
- :mod:`llray.tuning.optuna_backend` — plain Optuna on a shared storage.
- :mod:`llray.tuning.summary` — trial records, the best trial and the Pareto front.
"""

from llray.tuning.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudySpec", "load_spec", "parse_spec"]
