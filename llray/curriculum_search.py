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
measured so far, most promising (by the model) first; :func:`assess` says how sure the
choice is (margin over the runner-up with its interval over seeds, whether the
neighbourhood is all measured, how well the model agreed with the runs). What the
search buys at equal compute, and where it is worse than random search (small budgets;
streams where the pairwise model does not describe the order's effect), is measured by
``benchmarks/bench_curriculum_search.py`` and reported in docs/tuning.md.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

Order = tuple[int, ...]
#: :meth:`RetentionModel.ranked` ranks all T! orders: 9! = 362,880 in about a second.
MAX_TASKS = 9


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

    def predict_many(self, orders: np.ndarray) -> np.ndarray:
        """:meth:`predict` of every row of ``orders`` (``[N, T]`` task ids), vectorised."""
        P = np.asarray(orders, dtype=np.int64)
        T = P.shape[1]
        later = np.triu(np.ones((T, T), dtype=bool), k=1)  # [p, q]: q comes after p
        rho = np.where(later, self.retention[P[:, :, None], P[:, None, :]], 1.0)  # [N, T, T]
        return (self.learned[P] * rho.prod(axis=2)).mean(axis=1)

    def ranked(self, num_tasks: int | None = None, chunk: int = 50_000) -> list[Order]:
        """Every order, best predicted first (ties by the order itself).

        Raises:
            ValueError: more than :data:`MAX_TASKS` tasks (``T!`` orders to rank).
        """
        T = num_tasks or self.num_tasks
        if T > MAX_TASKS:
            raise ValueError(f"ranking all {T}! orders of {T} tasks; at most {MAX_TASKS} tasks")
        orders = np.array(list(itertools.permutations(range(T))), dtype=np.int64)
        pred = np.concatenate([self.predict_many(orders[i:i + chunk])
                               for i in range(0, len(orders), chunk)])
        # permutations() is lexicographic, so a stable sort keeps ties in order
        return [tuple(int(x) for x in orders[i]) for i in np.argsort(-pred, kind="stable")]


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


def assess(measured: Mapping[Order, Sequence[float]], model: RetentionModel | None,
           confidence: float = 0.95) -> dict[str, Any]:
    """How sure the search is of its choice: the best measured order and what backs it.

    Args:
        measured: per evaluated order, its validation ACC on each seed (the same seeds, in
            the same order, for every order: the comparison is paired).
        model: the retention model the search used (None: a search without one, such as
            :func:`llray.curriculum_bo.gp_search`; no predicted rank or model Spearman).

    Returns:
        ``order``, ``acc`` (mean over seeds), ``seeds``; ``runner_up`` and ``margin`` (mean
        paired difference to it) with ``margin_ci`` (t-interval; NaN with one seed);
        ``predicted_rank`` (1 = the model's top of all ``T!`` orders); ``neighbours_measured``
        of ``neighbours_total`` (all measured: a local optimum); ``model_spearman`` between
        the model and the measured orders (NaN with fewer than 3).

    Example:
        >>> m = RetentionModel(np.full(3, 0.9), np.ones((3, 3)))
        >>> a = assess({(0, 1, 2): [0.8, 0.7], (1, 0, 2): [0.6, 0.6]}, m)
        >>> a["order"], round(a["margin"], 2), a["neighbours_measured"]
        ((0, 1, 2), 0.15, 1)
    """
    from scipy import stats

    means = {o: float(np.mean(v)) for o, v in measured.items()}
    ranking = sorted(means, key=lambda o: (-means[o], o))
    best = ranking[0]
    out: dict[str, Any] = {"order": best, "acc": means[best], "seeds": len(measured[best]),
                           "runner_up": None, "margin": float("nan"),
                           "margin_ci": (float("nan"), float("nan"))}
    if len(ranking) > 1:
        d = np.asarray(measured[best], float) - np.asarray(measured[ranking[1]], float)
        half = (float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1)
                      / np.sqrt(len(d))) if len(d) > 1 else float("nan"))
        out.update(runner_up=ranking[1], margin=float(d.mean()),
                   margin_ci=(float(d.mean() - half), float(d.mean() + half)))
    near = neighbours(best)
    out["neighbours_measured"] = sum(o in measured for o in near)
    out["neighbours_total"] = len(near)
    out["predicted_rank"], out["model_spearman"] = None, float("nan")
    if model is None:
        return out
    if model.num_tasks <= MAX_TASKS:
        out["predicted_rank"] = model.ranked().index(best) + 1
    pred = [model.predict(o) for o in ranking]
    got = [means[o] for o in ranking]
    varied = len(ranking) >= 3 and np.ptp(pred) > 0 and np.ptp(got) > 0
    out["model_spearman"] = float(stats.spearmanr(pred, got)[0]) if varied else float("nan")
    return out


def format_assessment(a: Mapping[str, Any], num_orders: int) -> str:
    """:func:`assess` as a few lines of text for the command line (``a["search"]`` names
    the search; default ``retention``)."""
    text = lambda o: " ".join(map(str, o))  # noqa: E731
    ranked = ("" if a["predicted_rank"] is None else
              f"; the model ranked it {a['predicted_rank']} of {num_orders}")
    lines = [f"{a.get('search', 'retention')} search: chose {text(a['order'])} (validation ACC "
             f"{a['acc']:.3f}, {a['seeds']} seed(s){ranked})"]
    if a["runner_up"] is not None:
        lo, hi = a["margin_ci"]
        if np.isfinite(lo):
            verdict = ("ahead on these seeds" if lo > 0 else
                       "not distinguishable from it on these seeds")
            ci = f" [{lo:+.3f}, {hi:+.3f}], {verdict}"
        else:
            ci = " (one seed: no interval; add seeds to the config to get one)"
        lines.append(f"  margin over the runner-up {text(a['runner_up'])}: {a['margin']:+.3f}{ci}")
    local = ("all measured: a local optimum" if a["neighbours_measured"] == a["neighbours_total"]
             else "unmeasured ones may be better")
    lines.append(f"  neighbours (one task moved) measured: {a['neighbours_measured']} of "
                 f"{a['neighbours_total']} ({local})")
    if np.isfinite(a["model_spearman"]):
        lines.append(f"  model vs measured over the searched orders: Spearman "
                     f"{a['model_spearman']:+.2f}")
    return "\n".join(lines)
