"""torch's Adam and SGD, without importing the compiler (``torch._dynamo``) to train.

Two places in ``torch.optim`` import ``torch._dynamo`` on first use although nothing is
being compiled: every ``step`` (its ``_use_grad_for_differentiable`` wrapper imports it
to mark a graph break, then sets the grad mode), and the methods marked with
``torch._disable_dynamo`` (``add_param_group``, ``zero_grad``, ``state_dict``, ...),
whose wrapper imports it once to build a "compiler-disabled" version of the method. On a
2-core machine the import takes about 1.5-1.8 s, as long as importing torch itself, and
every learner process paid it on its first run, although llray never compiles anything.

:class:`Adam` and :class:`SGD` are torch's optimizers with one change: while
``torch._dynamo`` has not been imported by anyone, ``step`` runs torch's own step under
the grad mode torch's wrapper would set, without the graph-break marker (a graph break
means nothing when nothing is compiled). Once anything imports ``torch._dynamo`` (a
user's ``torch.compile``), ``step`` is torch's, unchanged. :func:`defer_dynamo_import`
does the same for the marked methods: each gets, in advance, a "disabled" version that
calls the method as it is while ``torch._dynamo`` is not imported, and torch's own
disabled version once it is. The arithmetic is torch's in every case: weights after any
number of steps are bit-identical to ``torch.optim``'s (``tests/test_optimizers.py``).

Both rely on how torch 2.x builds those wrappers (the wrapper's ``__wrapped__``, and the
``__dynamo_disable`` attribute the marker caches its result in). Under a torch whose
wrappers look otherwise nothing is changed: the optimizers then import the compiler as
torch's do.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: The attribute torch's ``_disable_dynamo`` wrapper caches its disabled function in.
CACHE = "__dynamo_disable"
#: Modules whose functions and classes' methods are prepared.
MODULES = ("torch.optim.optimizer", "torch.optim.lr_scheduler")
_prepared = False


class _Prepared:
    """Mixin for a ``torch.optim`` optimizer: prepares the marked methods before use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defer_dynamo_import()  # before the base class calls add_param_group
        super().__init__(*args, **kwargs)


def _step_of(base: type) -> Callable | None:
    """A ``step`` for a subclass of ``base``: torch's step without the compiler import
    while ``torch._dynamo`` is not imported, torch's own (grad-mode wrapper included)
    once it is; None when ``base.step`` is not built as this module expects.

    torch wraps each optimizer class's ``step`` again for its profiling and step hooks
    (on the class's first instance); those wrappers are skipped here, since torch wraps
    the subclass's own ``step`` the same way and its hooks run there, once.
    """
    guarded = vars(base).get("step")
    for _ in range(4):  # at most: hook wrapper -> grad-mode wrapper -> torch's step
        if getattr(getattr(guarded, "__code__", None), "co_name", None) == "_use_grad":
            break
        guarded = getattr(guarded, "__wrapped__", None)
    else:
        return None
    raw = getattr(guarded, "__wrapped__", None)
    if raw is None:
        return None

    def step(self: Any, closure: Callable[[], float] | None = None) -> Any:
        if "torch._dynamo" in sys.modules:
            return guarded(self, closure)
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # as torch's wrapper
            return raw(self, closure)

    step.__doc__ = raw.__doc__
    return step


class Adam(_Prepared, torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments, state and steps) that does not import the compiler."""


class SGD(_Prepared, torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments, state and steps) that does not import the compiler."""


for _cls, _base in ((Adam, torch.optim.Adam), (SGD, torch.optim.SGD)):
    _step = _step_of(_base)
    if _step is not None:
        _cls.step = _step
del _cls, _base, _step


def defer_dynamo_import() -> int:
    """Prepare ``torch.optim``'s compiler-disabled methods; the number prepared.

    Call it once per process before the first optimizer is built (again is harmless: it
    prepares only what is not yet prepared). Does nothing once ``torch._dynamo`` is
    imported: torch's own wrappers then work without an extra import.
    """
    global _prepared
    if _prepared or "torch._dynamo" in sys.modules:
        return 0
    _prepared = True
    import importlib

    marker = getattr(torch, "_disable_dynamo", None)
    if marker is None:
        return 0
    wrapper_code = marker(_probe).__code__  # the code object of torch's wrapper
    count = 0
    for name in MODULES:
        module = importlib.import_module(name)
        for wrapped in _candidates(module):
            if getattr(wrapped, "__code__", None) is not wrapper_code:
                continue
            cells = dict(zip(wrapped.__code__.co_freevars,
                             (c.cell_contents for c in wrapped.__closure__ or ())))
            fn, recursive = cells.get("fn"), cells.get("recursive", True)
            if fn is None or CACHE in getattr(fn, "__dict__", {}):
                continue
            setattr(fn, CACHE, _deferred(fn, recursive))
            count += 1
    return count


def _probe() -> None:
    """A function to wrap, only to learn the wrapper's code object."""


def _candidates(module: Any) -> Iterator[Callable]:
    """Functions of ``module`` and the methods of its classes defined there."""
    for value in vars(module).values():
        if callable(value) and getattr(value, "__module__", None) == module.__name__:
            yield value
            if isinstance(value, type):
                yield from (v for v in vars(value).values() if callable(v))


def _deferred(fn: Callable, recursive: bool) -> Callable:
    """``fn`` as is until ``torch._dynamo`` is imported; then torch's disabled ``fn``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None or not hasattr(dynamo, "disable"):
            return fn(*args, **kwargs)
        disabled = dynamo.disable(fn, recursive, wrapping=False)
        setattr(fn, CACHE, disabled)  # from now on torch's wrapper calls it directly
        return disabled(*args, **kwargs)

    return call
