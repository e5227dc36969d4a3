"""Task orders as Lehmer codes, so that a sampler searches a fixed space of integers.

A permutation of ``T`` tasks is written as ``T - 1`` digits ``c_k`` with
``0 <= c_k <= T - 1 - k``: ``c_k`` is the index of the k-th task of the order among the
tasks not yet placed (sorted by id). The last digit would always be 0 and is dropped.
Every digit vector in that box is exactly one permutation and vice versa, so Optuna
samples ``suggest_int(f"order_{k}", 0, T - 1 - k)`` without ever proposing an invalid
order, and its search space stays the same from trial to trial.

Example:
    >>> encode((2, 0, 1))
    (2, 0)
    >>> decode((2, 0), 3)
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
    """The Lehmer code of ``order`` (a permutation of ``0..T-1``), without its last 0."""
    order = [int(t) for t in order]
    if sorted(order) != list(range(len(order))):
        raise ValueError(f"{order} is not a permutation of 0..{len(order) - 1}")
    left = list(range(len(order)))
    code = []
    for task in order[:-1]:
        i = left.index(task)
        code.append(i)
        left.pop(i)
    return tuple(code)


def decode(code: Sequence[int], num_tasks: int) -> tuple[int, ...]:
    """The order whose Lehmer code is ``code`` (``num_tasks - 1`` digits)."""
    if len(code) != num_digits(num_tasks):
        raise ValueError(f"a code for {num_tasks} tasks has {num_digits(num_tasks)} digits")
    left = list(range(num_tasks))
    order = []
    for k, c in enumerate(code):
        if not 0 <= int(c) <= digit_high(k, num_tasks):
            raise ValueError(f"digit {k} must be in 0..{digit_high(k, num_tasks)}, got {c}")
        order.append(left.pop(int(c)))
    return tuple(order + left)
