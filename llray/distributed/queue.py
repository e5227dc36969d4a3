"""The order in which waiting runs get a slot: longest expected first.

A sweep ends when its last run ends. On a few slots, a long run (joint training, GEM)
started last keeps one slot busy while the others have nothing left to do. Handing out
the longest waiting run first (Graham's LPT rule, "Bounds on multiprocessing timing
anomalies", SIAM J. Appl. Math. 1969: within 4/3 of the shortest possible makespan)
leaves short runs for the end, where they fill the slots evenly.

A run's cost is not known before it ran, but runs that differ only in their seed and
task order cost about the same: the mean wall time of the finished runs of a *kind*
(same model, training and strategy) is the estimate for its waiting runs. Kinds not
measured yet go first, in grid order, one run each, so every kind is measured early;
a kind with a run in flight but none finished ranks with the longest. Which slot
learns a run never changes its results: a run is a pure function of its config.

Example:
    >>> q = LongestFirst(["a1", "b1", "a2", "b2", "c1"], key=lambda r: r[0])
    >>> q.popleft(), q.popleft()  # one of each kind first, in grid order
    ('a1', 'b1')
    >>> q.finished("a1", 1.0); q.finished("b1", 5.0)
    >>> q.popleft()  # kind c was never tried
    'c1'
    >>> q.popleft(), q.popleft()  # then the longest measured kind
    ('b2', 'a2')
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class LongestFirst(Generic[T]):
    """Waiting runs; :meth:`popleft` hands out the one expected to take longest.

    Runs are grouped by kind (``key``), so a pick costs one look at each kind.
    """

    def __init__(self, items: Iterable[T], key: Callable[[T], Hashable]) -> None:
        self._key = key
        self._kinds: dict[Hashable, deque[T]] = {}  # in grid order of first appearance
        for item in items:
            self._kinds.setdefault(key(item), deque()).append(item)
        self._started: set[Hashable] = set()
        self._seconds: dict[Hashable, list[float]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._kinds.values())

    def __bool__(self) -> bool:
        return bool(self._kinds)

    def __iter__(self) -> Iterator[T]:
        for q in self._kinds.values():
            yield from q

    def popleft(self) -> T:
        """The next run for a free slot (see the module docstring).

        Raises:
            IndexError: nothing waits.
        """
        if not self._kinds:
            raise IndexError("pop from an empty queue")
        kind = max(self._kinds, key=self._rank)  # max keeps the first of equals
        q = self._kinds[kind]
        item = q.popleft()
        if not q:
            del self._kinds[kind]
        self._started.add(kind)
        return item

    def finished(self, item: T, seconds: float) -> None:
        """``item`` took ``seconds`` (of its own learning): the estimate of its kind."""
        if math.isfinite(seconds) and seconds >= 0:
            self._seconds.setdefault(self._key(item), []).append(seconds)

    def _rank(self, kind: Hashable) -> tuple[int, float]:
        if kind not in self._started:
            return (2, 0.0)  # never tried: first, in grid order
        done = self._seconds.get(kind)
        if not done:
            return (1, math.inf)  # in flight, not measured: with the longest
        return (1, sum(done) / len(done))
