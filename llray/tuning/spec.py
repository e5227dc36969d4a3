"""Study specs: YAML -> :class:`StudySpec`, checked completely before any work starts.

A spec names a base experiment (a job file, inline sections, or both: inline sections
override the base's fields), the strategy to tune, and a search space over config
fields by their names. See ``docs/tuning.md`` for every key.

Example YAML::

    study: ewc_lambda
    base: ../jobs/quickstart.yaml      # relative to this file
    stream: {num_tasks: 3}             # overrides the base's stream fields
    strategy: ewc                      # fixed fields come from the base's ewc entry
    search:
      ewc.lambda_: {loguniform: [1.0e-2, 1.0e5]}
      train.lr: {loguniform: [1.0e-3, 0.3]}
      order: permutation
    enqueue: [{order: identity}]       # evaluated first (points_to_evaluate)
    objectives: [acc]                  # or [acc, bwt]: a Pareto front
    num_trials: 12
    max_concurrent_trials: 2
    scheduler: {asha: {grace_period: 1}}
    resources: {num_cpus: 1, num_gpus: 0}
    seed: 0

Example:
    >>> spec = parse_spec({"study": "s", "strategy": "naive", "stream": {"num_tasks": 3},
    ...                    "search": {"order": "permutation",
    ...                               "train.lr": {"uniform": [0.01, 0.1]}}})
    >>> spec.space.keys, spec.directions
    (['order', 'train.lr'], ['maximize'])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llray.config import (
    TOP_LEVEL as EXPERIMENT_KEYS,
    ExperimentConfig,
    check_name,
    Resources,
    RunSpec,
    StrategySpec,
    parse_config,
)
from llray.config_base import check_seed, field_names, from_dict, read_yaml
from llray.errors import ConfigError
from llray.models import ModelConfig
from llray.strategies import TrainConfig, make_config, strategy_class
from llray.tuning.space import ORDER, STRATEGY, Dim, SearchSpace, parse_space

TOP_LEVEL = (
    "study", "base", "stream", "model", "train", "strategies", "strategy", "run_seed",
    "search", "enqueue", "objectives", "num_trials", "max_concurrent_trials", "sampler",
    "scheduler", "resources", "seed", "confirm",
)
INLINE = ("stream", "model", "train", "strategies", "resources")  # may override the base

#: objective -> (direction, worst possible value, reported for a diverged trial)
OBJECTIVES: dict[str, tuple[str, float]] = {
    "acc": ("max", 0.0),
    "bwt": ("max", -1.0),
    "fwt": ("max", -1.0),
    "forgetting": ("min", 1.0),
    "learning_accuracy": ("max", 0.0),
}
SAMPLERS = ("tpe", "random")
SAMPLER_MAX_SEED = 2**32 - 1  # Optuna's samplers seed a numpy RandomState
TPE_OPTIONS = {"n_startup_trials": int, "n_ei_candidates": int, "multivariate": bool,
               "group": bool, "constant_liar": bool, "consider_endpoints": bool}


@dataclass(frozen=True)
class SamplerSpec:
    """Optuna sampler: ``tpe`` (default) or ``random``, seeded by the study's seed."""

    name: str = "tpe"
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, seed: int | None) -> Any:
        import optuna

        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, **dict(self.options))


@dataclass(frozen=True)
class AshaSpec:
    """Asynchronous successive halving over tasks learned (``training_iteration``)."""

    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class StudySpec:
    """A parsed, checked study: base run + search space + how to search."""

    study: str
    experiment: ExperimentConfig  # the base, with ``experiment`` = study name
    strategy: str | None  # tuned strategy; None when ``strategy`` is searched
    space: SearchSpace
    enqueue: tuple[dict[str, Any], ...] = ()  # raw Optuna params of known points
    objectives: tuple[str, ...] = ("acc",)
    num_trials: int = 10
    max_concurrent_trials: int | None = None
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: AshaSpec | None = None
    resources: Resources = field(default_factory=Resources)
    seed: int = 0
    run_seed: int = 0
    confirm: int = 0  # fresh seeds to re-run the best config and the baseline on

    @property
    def num_tasks(self) -> int:
        return self.experiment.stream.num_tasks

    @property
    def modes(self) -> list[str]:
        """``max``/``min`` per objective (Ray Tune's spelling)."""
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        """``maximize``/``minimize`` per objective (Optuna's spelling)."""
        return [m + "imize" for m in self.modes]

    def worst(self, objective: str) -> float:
        return OBJECTIVES[objective][1]

    def run_spec(self, values: Mapping[str, Any]) -> RunSpec:
        """The run of a trial whose searched keys have ``values`` (see SearchSpace.values)."""
        exp = self.experiment
        name = values.get(STRATEGY, self.strategy)
        base = self._strategy(name)
        params = dict(base.params)
        params.update({k.split(".", 1)[1]: v for k, v in values.items()
                       if k.startswith(name + ".")})
        train = _with(TrainConfig, exp.train, values, "train")
        model = _with(ModelConfig, exp.model, values, "model")
        order = tuple(values.get(ORDER, exp.orders[0]))
        strategy = StrategySpec(name, tuple(sorted(params.items())), base.label)
        return RunSpec(self.study, exp.stream, model, train, strategy, self.run_seed, order,
                       self.resources)

    def describe(self) -> dict[str, Any]:
        """JSON-able description; a resumed study must have the same one."""
        return json.loads(json.dumps(asdict(self), default=str))

    def _strategy(self, name: str) -> StrategySpec:
        return next(s for s in self.experiment.strategies if s.name == name)


def _with(cls: type, base: Any, values: Mapping[str, Any], section: str) -> Any:
    changes = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(section + ".")}
    return from_dict(cls, {**asdict(base), **changes}, section) if changes else base


# -- parsing --------------------------------------------------------------------------------
def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study spec; ``base`` is resolved relative to the spec's folder."""
    path = Path(path)
    data = _read_yaml(path, "spec")
    data.setdefault("study", path.stem)
    return parse_spec(data, path.parent)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    return read_yaml(path, what)  # UTF-8, safe tags, finite numbers: one ConfigError


def parse_spec(data: Mapping[str, Any], base_dir: str | Path = ".") -> StudySpec:
    """Check a spec mapping (as from YAML) and build the :class:`StudySpec`."""
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(str(key), f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    study = check_name(data.get("study", "study"), "study")
    search = data.get("search")
    if not isinstance(search, Mapping) or not search:
        raise ConfigError("search", "must be a non-empty mapping of keys to ranges, e.g. "
                                    "{ewc.lambda_: {loguniform: [1.0e-2, 1.0e5]}}")
    base = _base(data, Path(base_dir))
    strategy, tuned = _tuned_strategies(data, search, base)
    exp = _experiment(study, base, tuned)
    num_tasks = exp.stream.num_tasks
    space = parse_space(search, num_tasks, _searchable(tuned), strategy)
    _check_bounds(space, exp)
    objectives = _objectives(data.get("objectives", ["acc"]))
    return StudySpec(
        study=exp.experiment,
        experiment=exp,
        strategy=strategy,
        space=space,
        enqueue=_enqueue(data.get("enqueue", []), space),
        objectives=objectives,
        num_trials=_int(data.get("num_trials", 10), "num_trials", 1),
        max_concurrent_trials=_optional_int(data.get("max_concurrent_trials"),
                                            "max_concurrent_trials"),
        sampler=_sampler(data.get("sampler", "tpe")),
        scheduler=_scheduler(data.get("scheduler"), num_tasks, objectives),
        resources=exp.resources,
        seed=check_seed(data.get("seed", 0), "seed", SAMPLER_MAX_SEED),
        run_seed=check_seed(data.get("run_seed", exp.seeds[0]), "run_seed"),
        confirm=_int(data.get("confirm", 0), "confirm", 0),
    )


def _base(data: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """The base experiment's sections with the spec's inline sections merged in."""
    merged: dict[str, Any] = {}
    if "base" in data:
        if not isinstance(data["base"], str):
            raise ConfigError("base", f"must be the path of an experiment YAML, "
                                      f"got {data['base']!r}")
        merged = _read_yaml(base_dir / data["base"], "base")
        for key in merged:
            if key not in EXPERIMENT_KEYS:
                raise ConfigError(f"base.{key}", f"unknown section; allowed: "
                                                 f"{', '.join(EXPERIMENT_KEYS)}")
    for key in INLINE:
        if key not in data:
            continue
        value = data[key]
        mergeable = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        if key != "strategies" and mergeable:
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _tuned_strategies(
    data: Mapping[str, Any], search: Mapping[str, Any], base: Mapping[str, Any]
) -> tuple[str | None, list[str]]:
    """(fixed strategy or None, the strategies whose fields may be searched)."""
    if STRATEGY in search:
        if "strategy" in data:
            raise ConfigError("strategy", "is searched (search.strategy); remove the fixed one")
        dim = Dim.parse(STRATEGY, search[STRATEGY])
        if dim.kind != "choice" or not all(isinstance(c, str) for c in dim.choices):
            raise ConfigError("search.strategy", "must be {choice: [name, ...]}")
        for name in dim.choices:
            strategy_class(name, "search.strategy")
        return None, list(dim.choices)
    name = data.get("strategy")
    if name is None:
        listed = base.get("strategies") or []
        if len(listed) != 1:
            raise ConfigError("strategy", f"name the strategy to tune (the base lists "
                                          f"{len(listed)} strategies)")
        entry = listed[0]
        name = entry if isinstance(entry, str) else (entry or {}).get("name")
    if not isinstance(name, str):
        raise ConfigError("strategy", f"must be a strategy name, got {name!r}")
    strategy_class(name, "strategy")
    return name, [name]


def _experiment(study: Any, base: Mapping[str, Any], tuned: list[str]) -> ExperimentConfig:
    """The base as an ExperimentConfig: every section checked by llray.config.

    Only the tuned strategies' entries of the base's ``strategies`` are kept (they give
    the fixed fields); a tuned strategy without an entry uses its defaults.
    """
    listed = base.get("strategies") or []
    if not isinstance(listed, list):
        raise ConfigError("strategies", f"must be a list, got {listed!r}")
    entries = [e for e in listed if _entry_name(e) in tuned]
    names = [_entry_name(e) for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError("strategies", f"{twice} listed twice; a tuned strategy needs one entry")
    entries += [n for n in tuned if n not in names]
    data = {k: base[k] for k in ("stream", "model", "train", "seeds", "orders", "resources")
            if k in base}
    return parse_config({"experiment": study, **data, "strategies": entries})


def _entry_name(entry: Any) -> Any:
    return entry.get("name") if isinstance(entry, Mapping) else entry


def _searchable(tuned: list[str]) -> list[str]:
    keys = [f"train.{f}" for f in field_names(TrainConfig)]
    keys += [f"model.{f}" for f in field_names(ModelConfig)]
    for name in tuned:
        keys += [f"{name}.{f}" for f in field_names(strategy_class(name).Config)]
    return keys + [ORDER, STRATEGY]


def _check_bounds(space: SearchSpace, exp: ExperimentConfig) -> None:
    """Build the config at each end of every range: a bad bound fails now, not mid-study."""
    fixed = {s.name: dict(s.params) for s in exp.strategies}
    for dim in space.dims:
        if dim.key in (ORDER, STRATEGY):
            continue
        for v in dim.bounds():
            try:
                if dim.section == "train":
                    from_dict(TrainConfig, {**asdict(exp.train), dim.field: v}, "train")
                elif dim.section == "model":
                    from_dict(ModelConfig, {**asdict(exp.model), dim.field: v}, "model")
                else:
                    make_config(dim.section, {**fixed[dim.section], dim.field: v})
            except ConfigError as e:
                raise ConfigError(f"search.{dim.key}", f"value {v!r} is not allowed: "
                                                       f"{e.message}") from None


def _enqueue(value: Any, space: SearchSpace) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(p, Mapping) for p in value):
        raise ConfigError("enqueue", f"must be a list of mappings of searched keys to values, "
                                     f"e.g. [{{order: identity}}], got {value!r}")
    return tuple(space.raw(p, f"enqueue[{i}]") for i, p in enumerate(value))


def _objectives(value: Any) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    ok = isinstance(value, list) and value and all(v in OBJECTIVES for v in value)
    if not ok:
        raise ConfigError("objectives", f"must be a non-empty list of {', '.join(OBJECTIVES)}, "
                                        f"got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError("objectives", f"has repeats: {value}")
    return tuple(value)


def _sampler(value: Any) -> SamplerSpec:
    name, options = (value, {}) if isinstance(value, str) else (None, None)
    if isinstance(value, Mapping) and len(value) == 1:
        name, options = next(iter(value.items()))
        options = options or {}
    if name not in SAMPLERS or not isinstance(options, Mapping):
        raise ConfigError("sampler", f"must be tpe, random or {{tpe: {{options}}}}, got {value!r}")
    allowed = TPE_OPTIONS if name == "tpe" else {}
    for key, v in options.items():
        if key not in allowed:
            raise ConfigError(f"sampler.{name}.{key}", f"unknown option; allowed: "
                                                       f"{', '.join(allowed) or 'none'}")
        if allowed[key] is int:
            _int(v, f"sampler.{name}.{key}", 1 if key == "n_ei_candidates" else 0)
        elif not isinstance(v, bool):
            raise ConfigError(f"sampler.{name}.{key}", f"expected true or false, got {v!r}")
    return SamplerSpec(name, tuple(sorted(options.items())))


def _scheduler(value: Any, num_tasks: int, objectives: tuple[str, ...]) -> AshaSpec | None:
    if value in (None, "none", "fifo"):
        return None
    if value == "asha":
        value = {"asha": {}}
    if not isinstance(value, Mapping) or list(value) != ["asha"]:
        raise ConfigError("scheduler", f"must be none or {{asha: {{grace_period: 1, "
                                       f"reduction_factor: 2}}}}, got {value!r}")
    if len(objectives) > 1:
        raise ConfigError("scheduler", "ASHA ranks trials by one objective; use a single "
                                       "objective or no scheduler")
    asha = from_dict(AshaSpec, value["asha"] or {}, "scheduler.asha")
    if not 1 <= asha.grace_period < num_tasks:
        raise ConfigError("scheduler.asha.grace_period",
                          f"must be in 1..{num_tasks - 1} (tasks learned before a trial may "
                          f"be stopped), got {asha.grace_period}")
    if asha.reduction_factor < 2:
        raise ConfigError("scheduler.asha.reduction_factor",
                          f"must be >= 2, got {asha.reduction_factor}")
    return asha


def _int(value: Any, where: str, minimum: int | None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(where, f"must be an integer{bound}, got {value!r}")
    return value


def _optional_int(value: Any, where: str) -> int | None:
    return None if value is None else _int(value, where, 1)
