"""``torch.func``'s ``grad``, ``vjp`` and ``jacrev`` without importing the compiler.

Every backward pass of a ``torch.func`` transform goes through one private helper,
``torch._functorch.eager_transforms._autograd_grad``, which wraps ``torch.autograd.grad``
in ``torch._dynamo.compiled_autograd._disable()``: a guard that switches off compiled
autograd for the duration. Reaching that guard imports ``torch._dynamo``, which takes
1.5-1.8 s on a 2-core machine, as long as importing torch itself, and every learner
process that computed an EWC Fisher, a MAS importance or GEM's memory gradients paid it,
although llray never compiles anything.

:func:`install` replaces that helper with one that, while ``torch._dynamo`` is not
imported, applies the same guard directly on the C++ switch the Python guard sets
(``torch._C._dynamo.compiled_autograd.set_autograd_compiler``; only ``torch._dynamo``
ever turns compiled autograd on, so before it is imported the switch is already off),
and then calls ``torch.autograd.grad`` exactly as torch does. Once anything imports
``torch._dynamo`` (a user's ``torch.compile``), torch's own helper runs, unchanged. The
gradients are bit-identical either way (``tests/test_lean_grad.py``), as they are the same
``torch.autograd.grad`` call.

This relies on how torch 2.x builds the helper (its name, signature and the guard it
uses). Under a torch where it looks otherwise nothing is replaced, and the transforms
import the compiler as torch's do (see :mod:`llray.optimizers` for the optimizers' side).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence

import torch

#: The parameters of torch's helper, in order: replaced only when they are these.
PARAMETERS = ("outputs", "inputs", "grad_outputs", "retain_graph", "create_graph")


def _switch() -> Callable | None:
    """The C++ setter of the compiled-autograd compiler, or None when torch lacks it."""
    c_dynamo = getattr(torch._C, "_dynamo", None)
    compiled = getattr(c_dynamo, "compiled_autograd", None)
    return getattr(compiled, "set_autograd_compiler", None)


def _replaceable(helper: Callable | None) -> bool:
    """Whether ``helper`` is torch's helper as this module expects it."""
    code = getattr(helper, "__code__", None)
    if code is None or "_dynamo" not in code.co_names or _switch() is None:
        return False
    return tuple(inspect.signature(helper).parameters) == PARAMETERS


def _lean(original: Callable) -> Callable:
    """torch's ``_autograd_grad`` without the import while ``torch._dynamo`` is absent."""
    set_compiler = _switch()

    @functools.wraps(original)
    def _autograd_grad(
        outputs: Sequence[torch.Tensor],
        inputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor] | None = None,
        retain_graph: bool = False,
        create_graph: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        if "torch._dynamo" in sys.modules:
            return original(outputs, inputs, grad_outputs, retain_graph, create_graph)
        if grad_outputs is None:
            diff_outputs = tuple(out for out in outputs if out.requires_grad)
        else:
            kept = tuple((o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad)
            diff_outputs, grad_outputs = tuple(zip(*kept)) if kept else ((), ())
        if not diff_outputs:
            return tuple(torch.zeros_like(inp) for inp in inputs)
        prior = set_compiler(None, False)  # what torch's guard does on the C++ side
        try:
            grads = torch.autograd.grad(
                diff_outputs, inputs, grad_outputs, retain_graph=retain_graph,
                create_graph=create_graph, allow_unused=True,
            )
        finally:
            set_compiler(*prior)
        return tuple(torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs))

    _autograd_grad.lean = True  # type: ignore[attr-defined]
    return _autograd_grad


def install() -> bool:
    """Replace torch's helper (once per process); whether the lean helper is in place.

    Does nothing once ``torch._dynamo`` is imported (torch's helper then costs nothing
    extra) or when torch's helper is not built as this module expects.
    """
    from torch._functorch import eager_transforms

    helper = getattr(eager_transforms, "_autograd_grad", None)
    if getattr(helper, "lean", False):
        return True
    if "torch._dynamo" in sys.modules or not _replaceable(helper):
        return False
    eager_transforms._autograd_grad = _lean(helper)
    return True
