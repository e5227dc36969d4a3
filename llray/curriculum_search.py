"""Curriculum search from task affinity: predict every order's ACC from the pairwise runs,
evaluate the most promising orders, then search their neighbourhood.

The pairwise runs of :mod:`llray.taskonomy` (learn i then j; j alone) say, per ordered
pair, how accurate task i is right after it was learned (``source_after_source``) and
how much of that survives when j comes next (``source_final``). A *retention model*
chains them: the final accuracy of the task at position p of an order is its accuracy
when learned times its retention under every task learned after it,

    pred(order) = 1/T · Σ_p a[o_p] · Π_{q > p} ρ[o_p, o_q],
    a[i] = mean_j source_after_source[i, j],  ρ[i, k] = source_final[i, k] / a[i, k],

a score of the whole order (not only of consecutive pairs as
:func:`llray.taskonomy.path_score`), so all T! orders of a small stream can be ranked
exactly. :func:`search` then spends a budget of runs: the top predicted orders first,
then the unvisited neighbours (one task moved to another position) of the best order
measured so far, most promising (by the model) first.

Example:
    >>> import numpy as np
    >>> a = np.array([0.9, 0.9, 0.9])
    >>> rho = np.array([[1, 0.5, 1.0], [1.0, 1, 1.0], [1.0, 1.0, 1]])  # 1 forgets 0
    >>> model = RetentionModel(a, rho)
    >>> round(model.predict((0, 1, 2)), 3), round(model.predict((1, 0, 2)), 3)
    (0.75, 0.9)
    >>> model.ranked(3)[0] in [(1, 0, 2), (1, 2, 0), (2, 1, 0)]
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

Order = tuple[int, ...]


@dataclass(frozen=True)
class RetentionModel:
    """``learned[i]``: accuracy of task i right after learning it; ``retention[i, k]``:
    the share of it left after task k is learned next (diagonal unused)."""

    learned: np.ndarray  # [T]
    retention: np.ndarray  # [T, T]

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame) -> RetentionModel:
        """From :func:`llray.taskonomy.run_pairs` rows (means over seeds; NaN pairs: 1)."""
        p = pairs[(pairs["kind"] == "pair") & (pairs["status"] == "ok")]
        T = int(max(pairs["target"].max(), pairs["source"].max())) + 1
        g = p.groupby(["source", "target"])[["source_after_source", "source_final"]].mean()
        after = np.full((T, T), np.nan)
        final = np.full((T, T), np.nan)
        idx = g.index.to_frame().to_numpy(int)
        after[idx[:, 0], idx[:, 1]] = g["source_after_source"].to_numpy()
        final[idx[:, 0], idx[:, 1]] = g["source_final"].to_numpy()
        learned = np.nanmean(after, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            retention = np.clip(final / after, 0.0, 1.5)
        return cls(np.nan_to_num(learned), np.nan_to_num(retention, nan=1.0))

    @property
    def num_tasks(self) -> int:
        return len(self.learned)

    def predict(self, order: Sequence[int]) -> float:
        """The predicted final ACC of ``order``."""
        total = 0.0
        for p, i in enumerate(order):
            total += self.learned[i] * float(np.prod([self.retention[i, k] for k in order[p + 1:]]))
        return float(total / len(order))

    def ranked(self, num_tasks: int | None = None) -> list[Order]:
        """Every order, best predicted first (ties by the order itself)."""
        T = num_tasks or self.num_tasks
        orders = list(itertools.permutations(range(T)))
        return sorted(orders, key=lambda o: (-self.predict(o), o))


def neighbours(order: Sequence[int]) -> list[Order]:
    """Every order reached by moving one task to another position (includes the swaps of
    adjacent tasks); ``(T-1)^2`` of them.

    Example:
        >>> sorted(neighbours((0, 1, 2)))
        [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1)]
    """
    out: dict[Order, None] = {}
    order = list(order)
    for i in range(len(order)):
        rest = order[:i] + order[i + 1:]
        for j in range(len(order)):
            moved = tuple(rest[:j] + [order[i]] + rest[j:])
            if moved != tuple(order):
                out[moved] = None
    return list(out)


def search(
    evaluate: Callable[[Order], float],
    model: RetentionModel,
    runs: int,
    start: int = 3,
) -> list[tuple[Order, float]]:
    """Spend ``runs`` evaluations: the ``start`` best predicted orders, then neighbours of
    the best measured order, best predicted first; each order at most once.

    Returns:
        ``(order, measured ACC)`` in the order evaluated.
    """
    ranked = model.ranked()
    seen: dict[Order, float] = {}
    queue: Iterable[Order] = ranked[:start]
    for o in queue:
        if len(seen) >= runs:
            break
        seen[o] = evaluate(o)
    while len(seen) < runs:
        best = max(seen, key=seen.get)
        fresh = [o for o in neighbours(best) if o not in seen]
        if not fresh:  # a local optimum whose neighbourhood is measured: next predicted
            fresh = [o for o in ranked if o not in seen][:1]
            if not fresh:
                break
        o = max(fresh, key=lambda o: (model.predict(o), o))
        seen[o] = evaluate(o)
    return list(seen.items())
