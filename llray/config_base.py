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
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from llray.errors import ConfigError

T = TypeVar("T")


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
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
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


def require(ok: bool, field: str, message: str) -> None:
    """Raise ``ConfigError(field, message)`` unless ``ok``; for ``__post_init__`` checks."""
    if not ok:
        raise ConfigError(field, message)
