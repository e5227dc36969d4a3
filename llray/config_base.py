"""Building frozen config dataclasses from plain dicts, with one clear error per field.

Every config in llray is a frozen dataclass whose ``__post_init__`` checks values and
raises :class:`~llray.errors.ConfigError`. :func:`from_dict` adds the checks that are
the same everywhere: unknown keys (listing the allowed ones) and value types.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class C:
    ...     lr: float = 0.1
    >>> from_dict(C, {"lr": 1}, "train").lr
    1.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llray.errors import ConfigError

T = TypeVar("T")

#: Seeds (of runs, streams and studies) are integers in ``0..MAX_SEED``: they fit int64
#: (Parquet's ``seed`` column) and ``torch.Generator.manual_seed``.
MAX_SEED = 2**63 - 1
#: Any integer in a config: int64, so that no value overflows NumPy, torch or Parquet.
_INT64 = (-(2**63), 2**63 - 1)


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``: every failure is one ConfigError.

    The file must be UTF-8 text; YAML tags other than the standard ones are refused
    (``safe_load``); no number anywhere in it may be NaN or infinite (:func:`check_finite`).

    Raises:
        ConfigError: ``what`` (e.g. ``config``), naming the file and what is wrong.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = p.write_bytes("lr: .inf".encode())
        >>> read_yaml(p, "config")
        Traceback (most recent call last):
        llray.errors.ConfigError: lr: must be a finite number, got inf
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(what, f"file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(what, f"{path} is not UTF-8 text (byte {e.start}); save it as "
                                "UTF-8") from None
    except OSError as e:
        raise ConfigError(what, f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text.removeprefix("\ufeff"))
    except yaml.YAMLError as e:
        raise ConfigError(what, f"{path} is not valid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise ConfigError(what, f"{path} is nested too deeply") from None
    if not isinstance(data, Mapping):
        raise ConfigError(what, f"{path} must hold a mapping of sections")
    check_finite(data)
    return dict(data)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def check_finite(data: Any, where: str = "") -> None:
    """Refuse NaN and infinite numbers anywhere in ``data`` (nested dicts and lists).

    Shared (aliased) and self-referencing parts of a YAML document are visited once.

    Raises:
        ConfigError: the dotted path of the first such number.

    Example:
        >>> check_finite({"train": {"lr": 0.1}, "seeds": [0, 1]})
        >>> check_finite({"strategies": [{"name": "ewc", "lambda_": float("nan")}]})
        Traceback (most recent call last):
        llray.errors.ConfigError: strategies[0].lambda_: must be a finite number, got nan
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(where, data)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(at or "value", f"must be a finite number, got {value}")
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            children = [(f"{at}.{k}" if at else str(k)) if isinstance(value, Mapping)
                        else f"{at}[{k}]" for k, _ in items]
            values = value.values() if isinstance(value, Mapping) else value
            stack.extend(reversed(list(zip(children, values))))


def field_names(cls: type) -> list[str]:
    """The init fields of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build ``cls`` from ``data``; ``where`` prefixes field names in errors."""
    data = dict(data or {})
    allowed = field_names(cls)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if e.field.startswith(where):
            raise
        raise ConfigError(f"{where}.{e.field}", e.message) from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint, converting int->float and lists->tuples."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        errors = []
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e.message)
        if len(errors) == 1:  # X | None: the error of X says what is allowed
            raise ConfigError(where, errors[0])
        raise ConfigError(where, f"expected one of: {'; '.join(errors)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(where, f"expected null, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        allowed = ", ".join(repr(a) for a in typing.get_args(hint))
        raise ConfigError(where, f"must be one of {allowed}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(where, f"is out of range: {value}")
        if not math.isfinite(value):
            raise ConfigError(where, f"must be a finite number, got {value}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        if not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(where, f"is out of range (a 64-bit integer), got {value}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return value
    return value


def check_seed(value: Any, where: str, maximum: int = MAX_SEED) -> int:
    """An integer seed in ``0..maximum``; ConfigError naming ``where`` otherwise.

    Example:
        >>> check_seed(2**70, "seeds[0]")
        Traceback (most recent call last):
        llray.errors.ConfigError: seeds[0]: must be an integer in 0..9223372036854775807, got 1180591620717411303424
    """
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
    require(ok, where, f"must be an integer in 0..{maximum}, got {value!r}")
    return value


def require(ok: bool, field: str, message: str) -> None:
    """Raise ``ConfigError(field, message)`` unless ``ok``; for ``__post_init__`` checks."""
    if not ok:
        raise ConfigError(field, message)
