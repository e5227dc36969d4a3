"""Experiment configs: YAML -> :class:`ExperimentConfig` -> one :class:`RunSpec` per run.

A config names one task stream, one model, the training settings and a grid of
strategies × seeds × orders. Every field is checked before any work starts; a wrong one
raises :class:`~llray.errors.ConfigError` naming it and what is allowed.

Example YAML::

    experiment: quickstart
    stream: {dataset: digits, kind: permuted, num_tasks: 5}
    model: {name: mlp, hidden: [100, 100]}
    train: {epochs: 2, batch_size: 32, lr: 0.05}
    strategies: [naive, {name: ewc, lambda_: 1000}, joint]
    seeds: [0, 1, 2]
    orders: [identity, "random:2"]

Example:
    >>> cfg = parse_config({"experiment": "x", "strategies": ["naive"]})
    >>> [s.strategy.name for s in cfg.runs()]
    ['naive']
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llray.backbones import check_strategy_support
from llray.config_base import check_seed, from_dict, read_yaml, require
from llray.data import StreamConfig
from llray.errors import ConfigError
from llray.models import ModelConfig
from llray.strategies import TrainConfig, check_scenario, make_config

TOP_LEVEL = (
    "experiment",
    "stream",
    "model",
    "train",
    "strategies",
    "seeds",
    "orders",
    "resources",
    "checkpoint",
)
#: Most tasks a stream may have: R has (T + 1) · T entries per run, and every task is
#: tested after every task.
MAX_TASKS = 1000
#: An experiment or study name: a plain name that is safe as one directory level.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


@dataclass(frozen=True)
class Resources:
    """What each run's Ray actor asks for; fractional GPUs pack runs on one card.

    ``pack`` > 1 trains up to that many runs of one stream, model and strategy as one
    batched model on one actor, which asks for ``num_cpus``/``num_gpus`` once for the
    whole pack (:mod:`llray.packs`); 1 (default) is one run per actor.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    pack: int = 1

    def __post_init__(self) -> None:
        require(self.num_cpus > 0, "num_cpus", f"must be > 0, got {self.num_cpus}")
        require(self.num_gpus >= 0, "num_gpus", f"must be >= 0, got {self.num_gpus}")
        require(self.pack >= 1, "pack", f"must be an integer >= 1, got {self.pack}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how runs checkpoint after each task (see the distributed layer)."""

    path: str | None = None  # None: OUTPUT/checkpoints; or any pyarrow.fs URI
    max_retries: int = 3  # restarts of a run whose actor or node died

    def __post_init__(self) -> None:
        require(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class StrategySpec:
    """One strategy entry of the grid: its registered name, parameters and label."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def display(self) -> str:
        """The name that results and tables use (``label`` if given)."""
        return self.label or self.name

    def config(self) -> Any:
        return make_config(self.name, dict(self.params))


@dataclass(frozen=True)
class RunSpec:
    """One lifelong run: everything that determines its R, plus its resources."""

    experiment: str
    stream: StreamConfig
    model: ModelConfig
    train: TrainConfig
    strategy: StrategySpec
    seed: int
    order: tuple[int, ...]
    resources: Resources = field(default_factory=Resources)

    def config_dict(self) -> dict[str, Any]:
        """JSON-able description of the work (resources excluded: same work anywhere)."""
        return {
            "experiment": self.experiment,
            "stream": asdict(self.stream),
            "model": asdict(self.model),
            "train": asdict(self.train),
            "strategy": {"name": self.strategy.name, "label": self.strategy.display,
                         **asdict(self.strategy.config())},
            "seed": self.seed,
            "order": list(self.order),
        }

    @property
    def run_id(self) -> str:
        """A stable hash of :meth:`config_dict`: names the same work on any machine."""
        text = json.dumps(self.config_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed, checked experiment config; :meth:`runs` expands its grid."""

    experiment: str
    stream: StreamConfig
    model: ModelConfig
    train: TrainConfig
    strategies: tuple[StrategySpec, ...]
    seeds: tuple[int, ...]
    orders: tuple[tuple[int, ...], ...]
    resources: Resources
    checkpoint: CheckpointConfig

    def runs(self) -> list[RunSpec]:
        """The grid strategies × seeds × orders, in that nesting."""
        return [
            RunSpec(self.experiment, self.stream, self.model, self.train, s, seed, order,
                    self.resources)
            for s in self.strategies
            for seed in self.seeds
            for order in self.orders
        ]


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and check a YAML experiment config (UTF-8, finite numbers; see ``read_yaml``)."""
    path = Path(path)
    data = read_yaml(path, "config")
    data.setdefault("experiment", path.stem)
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> ExperimentConfig:
    """Check a config mapping (as from YAML) and build the :class:`ExperimentConfig`."""
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(str(key), f"unknown section; allowed: {', '.join(TOP_LEVEL)}")
    experiment = _experiment_name(data.get("experiment", "default"))
    stream = from_dict(StreamConfig, _section(data, "stream"), "stream")
    check_seed(stream.seed, "stream.seed")
    require(stream.num_tasks <= MAX_TASKS, "stream.num_tasks",
            f"must be <= {MAX_TASKS}, got {stream.num_tasks}")
    model = from_dict(ModelConfig, _section(data, "model"), "model")
    train = from_dict(TrainConfig, _section(data, "train"), "train")
    strategies = parse_strategies(data.get("strategies"), stream.scenario_name)
    for i, spec in enumerate(strategies):
        check_strategy_support(model.name, spec.name, f"strategies[{i}]")
    return ExperimentConfig(
        experiment=experiment,
        stream=stream,
        model=model,
        train=train,
        strategies=strategies,
        seeds=_seeds(data.get("seeds", [0])),
        orders=parse_orders(data.get("orders", ["identity"]), stream.num_tasks, stream.seed),
        resources=from_dict(Resources, _section(data, "resources"), "resources"),
        checkpoint=from_dict(CheckpointConfig, _section(data, "checkpoint"), "checkpoint"),
    )


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping of fields, got {value!r}")
    return value


def check_name(value: Any, where: str) -> str:
    """A plain name (letters, digits, '_', '-', '.'; a letter or digit first; at most
    100 characters): it becomes a directory, so no '..', no '/', no hidden name."""
    ok = isinstance(value, str) and NAME.fullmatch(value) is not None
    require(ok, where, f"must be a name of letters, digits, '_', '-', '.' that starts with "
                       f"a letter or digit (at most 100 characters), got {value!r}")
    return value


def _experiment_name(value: Any) -> str:
    return check_name(value, "experiment")


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, list) and len(value) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    require(ok, "seeds", f"must be a non-empty list of integers, got {value!r}")
    for i, seed in enumerate(value):
        check_seed(seed, f"seeds[{i}]")
    require(len(set(value)) == len(value), "seeds", f"has duplicates: {value}")
    return tuple(value)


def parse_strategies(value: Any, scenario: str) -> tuple[StrategySpec, ...]:
    """Strategy entries: ``name`` or ``{name: ..., label: ..., <fields>}``."""
    if not isinstance(value, list) or not value:
        raise ConfigError("strategies", "must be a non-empty list, e.g. [naive, ewc, joint]")
    specs = []
    for i, entry in enumerate(value):
        where = f"strategies[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(where, f"must be a name or a mapping with 'name', got {entry!r}")
        params = {k: v for k, v in entry.items() if k not in ("name", "label")}
        name = entry["name"]
        make_config(name, params)  # checks name and every field
        check_scenario(name, scenario)
        label = str(entry.get("label", ""))
        specs.append(StrategySpec(name, tuple(sorted(params.items())), label))
    labels = [s.display for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    require(not dupes, "strategies", f"{dupes} appear twice; give each a distinct 'label'")
    return tuple(specs)


def parse_orders(value: Any, num_tasks: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """``identity``, ``random:K`` (K distinct random orders from ``seed``) or explicit lists."""
    if not isinstance(value, list) or not value:
        raise ConfigError("orders", "must be a non-empty list, e.g. [identity, 'random:3']")
    orders: list[tuple[int, ...]] = []
    for i, entry in enumerate(value):
        where = f"orders[{i}]"
        if entry == "identity":
            orders.append(tuple(range(num_tasks)))
        elif isinstance(entry, str) and re.fullmatch(r"random:\d+", entry):
            orders += _random_orders(int(entry.split(":")[1]), num_tasks, seed)
        elif isinstance(entry, list):
            ok = all(isinstance(x, int) and not isinstance(x, bool) for x in entry)
            ok = ok and sorted(entry) == list(range(num_tasks))
            require(ok, where, f"{entry} is not a permutation of the task ids 0..{num_tasks - 1}")
            orders.append(tuple(entry))
        else:
            raise ConfigError(where, f"must be 'identity', 'random:K' or a list, got {entry!r}")
    return tuple(dict.fromkeys(orders))  # drop repeats, keep first-seen order


def _random_orders(k: int, num_tasks: int, seed: int) -> list[tuple[int, ...]]:
    require(k >= 1, "orders", f"random:{k} asks for no order; use random:1 or more")
    limit = math.factorial(num_tasks)  # a Python int: exact for any number of tasks
    require(k <= limit, "orders", f"random:{k} asks for more orders than the {limit} that exist")
    require(k <= 100_000, "orders", f"random:{k}: at most 100000 random orders")
    rng = np.random.default_rng([seed, 0x0DE5])
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < k:
        seen[tuple(int(x) for x in rng.permutation(num_tasks))] = None
    return list(seen)
