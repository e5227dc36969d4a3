"""Search spaces over config fields, sampled define-by-run by an Optuna trial.

A search space maps a *key* to a *range*. Keys name config fields the way a config
file does: ``train.lr``, ``model.hidden``, ``ewc.lambda_``, ``replay.ratio``, plus two
special keys: ``order`` (the task order, searched as a Lehmer code) and ``strategy``
(a choice among strategies; each strategy's own keys are then only sampled when it is
chosen). Ranges::

    {uniform: [low, high]}            float, optional step: {uniform: [0, 1], step: 0.1}
    {loguniform: [low, high]}         float on a log scale, 0 < low
    {int: [low, high]}                integer, both ends included, optional step
    {logint: [low, high]}             integer on a log scale, 1 <= low
    {choice: [a, b, ...]}             any YAML values (lists are fine: model.hidden)
    permutation                       only for ``order``

Both backends call :meth:`SearchSpace.sample` on an Optuna trial (Ray Tune's
``OptunaSearch`` takes the space object itself as its define-by-run function), so a
trial's raw Optuna parameters are the same everywhere; :meth:`SearchSpace.values`
turns them back into field values.

Example:
    >>> import optuna
    >>> space = SearchSpace((Dim.parse("order", "permutation", num_tasks=3),
    ...                      Dim.parse("train.lr", {"loguniform": [1e-3, 0.1]})), "naive")
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> v = space.sample(study.ask())
    >>> sorted(v["order"]), 1e-3 <= v["train.lr"] <= 0.1
    ([0, 1, 2], True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llray.errors import ConfigError
from llray.tuning import lehmer

KINDS = ("uniform", "loguniform", "int", "logint", "choice")
ORDER = "order"
STRATEGY = "strategy"
ORDER_PARAM = "order_{}"  # Optuna parameter name of the k-th Lehmer digit


@dataclass(frozen=True)
class Dim:
    """One searched key and its range."""

    key: str
    kind: str  # one of KINDS or "permutation"
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    num_tasks: int = 0  # for "permutation"

    @property
    def section(self) -> str:
        """``train``, ``model``, a strategy name, ``order`` or ``strategy``."""
        return self.key.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.key.split(".", 1)[1] if "." in self.key else self.key

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def parse(cls, key: str, value: Any, num_tasks: int = 0) -> "Dim":
        """Check one ``search:`` entry; ConfigError naming ``search.<key>`` otherwise."""
        where = f"search.{key}"
        if key == ORDER:
            if value != "permutation":
                raise ConfigError(where, f"the task order is searched with 'permutation', "
                                         f"got {value!r}")
            if num_tasks < 2:
                raise ConfigError(where, f"'permutation' needs at least 2 tasks, the stream "
                                         f"has {num_tasks}")
            return cls(key, "permutation", num_tasks=num_tasks)
        if not isinstance(value, Mapping) or len(value) not in (1, 2):
            raise ConfigError(where, f"must be one of {{{'|'.join(KINDS)}: ...}}, got {value!r}")
        kinds = [k for k in value if k in KINDS]
        extra = [k for k in value if k not in KINDS and k != "step"]
        if len(kinds) != 1 or extra:
            raise ConfigError(where, f"must be one of {{{'|'.join(KINDS)}: ...}} (plus an "
                                     f"optional 'step'), got {dict(value)!r}")
        kind = kinds[0]
        if kind == "choice":
            return cls._parse_choice(key, value)
        return cls._parse_range(key, kind, value[kind], value.get("step"))

    @classmethod
    def _parse_choice(cls, key: str, value: Mapping[str, Any]) -> "Dim":
        where = f"search.{key}"
        if "step" in value:
            raise ConfigError(where, "'step' is only for uniform and int ranges")
        choices = value["choice"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(where, f"choice needs a non-empty list, got {choices!r}")
        encoded = [_encode(c) for c in choices]
        if len(set(encoded)) != len(encoded):
            raise ConfigError(where, f"choice has repeated values: {choices}")
        return cls(key, "choice", choices=tuple(_freeze(c) for c in choices))

    @classmethod
    def _parse_range(cls, key: str, kind: str, bounds: Any, step: Any) -> "Dim":
        where = f"search.{key}"
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(where, f"{kind} needs [low, high], got {bounds!r}")
        integer = kind in ("int", "logint")
        low, high = (_number(b, integer, where) for b in bounds)
        if low == high:
            raise ConfigError(where, f"empty range [{low}, {high}]: low must be < high")
        if low > high:
            raise ConfigError(where, f"inverted range [{low}, {high}]: low must be < high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(where, f"loguniform needs 0 < low, got [{low}, {high}]")
        if kind == "logint" and low < 1:
            raise ConfigError(where, f"logint needs 1 <= low, got [{low}, {high}]")
        if step is not None:
            if kind not in ("uniform", "int"):
                raise ConfigError(where, "'step' is only for uniform and int ranges")
            step = _number(step, integer, f"{where}.step")
            if step <= 0 or step > high - low:
                raise ConfigError(f"{where}.step", f"must be in (0, {high - low}], got {step}")
        return cls(key, kind, low, high, step)

    # -- sampling --------------------------------------------------------------------------
    def suggest(self, trial: Any) -> Any:
        """Draw this key's value from an Optuna trial (define-by-run)."""
        if self.kind == "permutation":
            code = [
                trial.suggest_int(ORDER_PARAM.format(k), 0, lehmer.digit_high(k, self.num_tasks))
                for k in range(lehmer.num_digits(self.num_tasks))
            ]
            return lehmer.decode(code, self.num_tasks)
        if self.kind == "choice":
            raw = trial.suggest_categorical(self.key, [_encode(c) for c in self.choices])
            return _decode(raw)
        log = self.kind in ("loguniform", "logint")
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=log)

    def value(self, params: Mapping[str, Any]) -> Any:
        """This key's value from a trial's raw Optuna parameters."""
        if self.kind == "permutation":
            code = [params[ORDER_PARAM.format(k)] for k in range(lehmer.num_digits(self.num_tasks))]
            return lehmer.decode(code, self.num_tasks)
        raw = params[self.key]
        return _decode(raw) if self.kind == "choice" else raw

    def raw(self, value: Any, where: str) -> dict[str, Any]:
        """Raw Optuna parameters for a known ``value`` (for ``enqueue``); checks it."""
        if self.kind == "permutation":
            order = list(range(self.num_tasks)) if value == "identity" else value
            ok = isinstance(order, list) and sorted(order) == list(range(self.num_tasks))
            if not ok:
                raise ConfigError(where, f"must be 'identity' or a permutation of "
                                         f"0..{self.num_tasks - 1}, got {value!r}")
            return {ORDER_PARAM.format(k): c for k, c in enumerate(lehmer.encode(order))}
        if self.kind == "choice":
            if _encode(value) not in {_encode(c) for c in self.choices}:
                raise ConfigError(where, f"must be one of {list(self.choices)}, got {value!r}")
            return {self.key: _encode(value)}
        integer = self.kind in ("int", "logint")
        v = _number(value, integer, where)
        if not self.low <= v <= self.high:
            raise ConfigError(where, f"must be in [{self.low}, {self.high}], got {value!r}")
        return {self.key: v}

    def bounds(self) -> list[Any]:
        """Values at the edges of the range (checked against the config before any work)."""
        if self.kind == "choice":
            return [_thaw(c) for c in self.choices]
        if self.kind == "permutation":
            return []
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys; picklable, and callable as an Optuna define-by-run function.

    ``strategy`` is the tuned strategy, or None when the ``strategy`` key is searched;
    keys of a strategy are sampled only in trials that use that strategy.
    """

    dims: tuple[Dim, ...]
    strategy: str | None

    def __call__(self, trial: Any) -> None:
        """Define-by-run entry point (Ray Tune's ``OptunaSearch(space=...)``)."""
        self.sample(trial)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every active key from ``trial``; returns the field values."""
        chosen = self._strategy_dim()
        strategy = chosen.suggest(trial) if chosen else self.strategy
        values: dict[str, Any] = {STRATEGY: strategy} if chosen else {}
        for d in self.active(strategy):
            if d.key != STRATEGY:
                values[d.key] = d.suggest(trial)
        return values

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Field values (``order`` as a tuple of task ids) from raw Optuna parameters."""
        chosen = self._strategy_dim()
        strategy = chosen.value(params) if chosen else self.strategy
        return {d.key: d.value(params) for d in self.active(strategy)}

    def raw(self, point: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Raw Optuna parameters of a known point (a mapping of keys to values)."""
        by_key = {d.key: d for d in self.dims}
        out: dict[str, Any] = {}
        for key, value in point.items():
            if key not in by_key:
                raise ConfigError(f"{where}.{key}", f"is not searched; searched keys: "
                                                    f"{', '.join(by_key)}")
            out.update(by_key[key].raw(value, f"{where}.{key}"))
        return out

    def active(self, strategy: str | None) -> list[Dim]:
        """The dims sampled in a trial that uses ``strategy``."""
        names = {d.choices for d in self.dims if d.key == STRATEGY}
        tuned = {c for cs in names for c in cs} | {self.strategy}
        return [d for d in self.dims if d.section not in tuned or d.section == strategy]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def _strategy_dim(self) -> Dim | None:
        return next((d for d in self.dims if d.key == STRATEGY), None)


def _number(value: Any, integer: bool, where: str) -> float | int:
    """A bound as a number; numeric strings (YAML reads ``1e-3`` as a string) accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(where, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(where, f"expected a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _encode(value: Any) -> Any:
    """A choice as an Optuna categorical: scalars as they are, lists as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(_thaw(value))


def _decode(raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] in "[{":
        return json.loads(raw)
    return raw


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def parse_space(search: Any, num_tasks: int, searchable: Sequence[str],
                strategy: str | None) -> SearchSpace:
    """Check the ``search:`` section against the ``searchable`` keys."""
    if not isinstance(search, Mapping) or not search:
        raise ConfigError("search", "must be a non-empty mapping of keys to ranges, e.g. "
                                    "{ewc.lambda_: {loguniform: [1.0e-2, 1.0e5]}}")
    dims = []
    for key, value in search.items():
        if key not in searchable:
            section = str(key).split(".", 1)[0]
            hint = ""
            if section != key and not any(k.startswith(section + ".") for k in searchable):
                hint = (f" ({section!r} is not a section of this study; the tuned strategy "
                        f"is {strategy!r})" if strategy else f" ({section!r} is not among "
                        f"search.strategy's choices)")
            raise ConfigError(f"search.{key}", f"unknown field{hint}; searchable: "
                                               f"{', '.join(searchable)}")
        dims.append(Dim.parse(key, value, num_tasks))
    return SearchSpace(tuple(dims), strategy)
