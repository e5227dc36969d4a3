"""Task orders as Lehmer codes, so that a sampler searches a fixed space of integers.

A permutation of ``T`` tasks is written as ``T - 1`` digits ``c_k`` with
``0 <= c_k <= T - 1 - k``, so Optuna samples ``suggest_int(f"order_{k}", 0, T - 1 - k)``
and its search space is the same in every trial. Every digit vector in that box is
exactly one order and vice versa: no sample is wasted on an invalid order.

The code is read from the *end* of the order: digit ``k`` chooses the task at position
``T - 1 - k`` (``k = 0``: the last task learned) among the tasks not yet placed, counted
from the highest id down; the first task is what is left. All zeros is the identity.
Reading from the end matters for the search: the final accuracy of a lifelong run
depends most on the last tasks (the earlier ones are partly forgotten), and this way one
digit alone decides the last task, so a sampler that models digits separately (TPE)
can learn which tasks should come last. Read from the front, the last task would be a
function of all digits together.

Example:
    >>> encode((2, 0, 1))
    (1, 1)
    >>> decode((1, 1), 3)
    (2, 0, 1)
    >>> decode((0, 0), 3)   # all zeros: the identity order
    (0, 1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence


def num_digits(num_tasks: int) -> int:
    """How many digits encode an order of ``num_tasks`` tasks."""
    return max(num_tasks - 1, 0)


def digit_high(k: int, num_tasks: int) -> int:
    """Largest allowed value of digit ``k`` (inclusive)."""
    return num_tasks - 1 - k


def encode(order: Sequence[int]) -> tuple[int, ...]:
    """The code of ``order`` (a permutation of ``0..T-1``): ``T - 1`` digits."""
    order = [int(t) for t in order]
    T = len(order)
    if sorted(order) != list(range(T)):
        raise ValueError(f"{order} is not a permutation of 0..{T - 1}")
    left = list(range(T - 1, -1, -1))  # not yet placed, highest id first
    code = []
    for task in reversed(order[1:]):  # positions T-1 down to 1
        i = left.index(task)
        code.append(i)
        left.pop(i)
    return tuple(code)


def decode(code: Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """The order whose code is ``code`` (``num_tasks - 1`` digits)."""
    if len(code) != num_digits(num_tasks):
        raise ValueError(f"a code for {num_tasks} tasks has {num_digits(num_tasks)} digits")
    left = list(range(num_tasks - 1, -1, -1))
    tail = []
    for k, c in enumerate(code):
        if not 0 <= int(c) <= digit_high(k, num_tasks):
            raise ValueError(f"digit {k} must be in 0..{digit_high(k, num_tasks)}, got {c}")
        tail.append(left.pop(int(c)))
    return tuple(left + tail[::-1])
