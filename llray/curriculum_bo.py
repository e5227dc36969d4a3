"""Bayesian optimisation over task orders: a Gaussian process with the Mallows kernel,
fitted to the orders measured so far, picks the next order by expected improvement.

An order is described by its precedence vector (for each pair of tasks i < j: does i
come before j); the number of pairs two orders disagree on is their Kendall tau
distance, and the *Mallows kernel* ``k(a, b) = exp(-λ · d_Kendall(a, b))`` is positive
definite on permutations (Jiao & Vert, "The Kendall and Mallows kernels for
permutations", ICML 2015). A GP with that kernel is the surrogate of permutation-space
Bayesian optimisation (Deshwal, Belakaria, Doppa & Fern, "Bayesian optimization over
permutation spaces", AAAI 2022, BOPS-T); with ≤ 9 tasks every unmeasured order is scored
exactly, so no acquisition optimiser is needed. The observations are standardised, and
the length scale ``λ`` and the noise are chosen per step by the marginal likelihood of the
measured values (type-II maximum likelihood over a small grid), never from held-out data.

It needs no pairwise runs: every task training of the budget goes into full runs of
orders. What it buys over random search and over the retention model
(:mod:`llray.curriculum_search`) at equal compute is measured by
``benchmarks/bench_curriculum_search.py`` and reported in docs/tuning.md.

Example:
    >>> import itertools
    >>> truth = {o: -abs(o.index(2) - 4) for o in itertools.permutations(range(5))}
    >>> found = gp_search(truth.__getitem__, 5, runs=8, seed=0)
    >>> len(found), len({o for o, _ in found})
    (8, 8)
    >>> max(found, key=lambda x: x[1])[0][-1]  # task 2 last is best: found in 8 of 120
    2
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from llray.curriculum_search import MAX_TASKS

Order = tuple[int, ...]
#: Length scales tried, times the number of task pairs: ``λ = c / (T(T-1)/2)``.
SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Observation noise variances tried, in units of the standardised values' variance.
NOISES = (0.01, 0.1)


def precedence(orders: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """``[N, T(T-1)/2]`` 0/1: for each pair i < j of task ids, whether i comes before j.

    Example:
        >>> precedence([(0, 1, 2), (2, 1, 0), (1, 0, 2)]).astype(int).tolist()
        [[1, 1, 1], [0, 0, 0], [0, 1, 1]]
    """
    P = np.asarray(orders, dtype=np.int64)
    T = P.shape[1]
    where = np.argsort(P, axis=1)  # where[n, i]: position of task i
    i, j = np.triu_indices(T, 1)
    return (where[:, i] < where[:, j]).astype(np.float64)


def kendall(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` Kendall tau distances (discordant pairs) between precedence rows: the
    Hamming distance of 0/1 vectors, ``|a| + |b| - 2 a·b`` (no ``[N, M, P]`` temporary)."""
    return a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - 2.0 * (a @ b.T)


@dataclass(frozen=True)
class MallowsGP:
    """The GP posterior over orders' ACC given measured orders (``fit`` builds it).

    ``measured``: precedence rows ``[n, P]``; ``alpha``: ``K⁻¹ z``; ``chol``: Cholesky
    factor of ``K + noise·I``; ``lam``: the Mallows length scale; ``mean``/``scale``:
    how the measured values were standardised (``z = (y - mean) / scale``).
    """

    measured: np.ndarray
    alpha: np.ndarray
    chol: np.ndarray
    lam: float
    noise: float
    mean: float
    scale: float
    best: float  # the best measured value, standardised

    @classmethod
    def fit(cls, orders: Sequence[Sequence[int]], values: Sequence[float],
            scales: Sequence[float] = SCALES, noises: Sequence[float] = NOISES) -> MallowsGP:
        """Fit to measured ``(orders, values)``; ``λ`` and noise by marginal likelihood.

        Raises:
            ValueError: no orders, or orders and values of different lengths.
        """
        y = np.asarray(values, dtype=np.float64)
        if len(y) == 0 or len(y) != len(orders):
            raise ValueError(f"need as many values as orders (>= 1), got {len(y)} values "
                             f"for {len(orders)} orders")
        X = precedence(orders)
        pairs = max(1, X.shape[1])
        sd = float(y.std())
        mean, scale = float(y.mean()), sd if sd > 0 else 1.0
        z = (y - mean) / scale
        D = kendall(X, X)
        best = None
        for c in scales:
            for noise in noises:
                L = np.linalg.cholesky(np.exp(-c / pairs * D) + noise * np.eye(len(z)))
                alpha = np.linalg.solve(L.T, np.linalg.solve(L, z))
                loglik = -0.5 * z @ alpha - np.log(np.diag(L)).sum()
                if best is None or loglik > best[0] + 1e-12:
                    best = (loglik, c / pairs, noise, L, alpha)
        _, lam, noise, L, alpha = best
        return cls(X, alpha, L, lam, noise, mean, scale, float(z.max()))

    def posterior(self, orders: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of ``orders``' ACC (in ACC units)."""
        Kc = np.exp(-self.lam * kendall(precedence(orders), self.measured))
        mu = Kc @ self.alpha
        v = np.linalg.solve(self.chol, Kc.T)
        sd = np.sqrt(np.clip(1.0 - (v * v).sum(axis=0), 1e-12, None))
        return self.mean + self.scale * mu, self.scale * sd

    def expected_improvement(self, orders: Sequence[Sequence[int]]) -> np.ndarray:
        """Expected improvement of each order over the best measured value."""
        mu, sd = self.posterior(orders)
        g = ((mu - self.mean) / self.scale - self.best) / (sd / self.scale)
        return sd * (g * norm.cdf(g) + norm.pdf(g))


def gp_search(evaluate: Callable[[Order], float], num_tasks: int, runs: int, seed: int,
              start: int = 2,
              on_start: Callable[[list[Order]], None] | None = None) -> list[tuple[Order, float]]:
    """Spend ``runs`` evaluations: ``start`` random orders, then each next order the one of
    highest expected improvement under :class:`MallowsGP` fitted to the finite values so
    far (ties: the first in lexicographic order; a non-finite value, e.g. every seed of
    that order failed, is kept out of the fit); each order at most once.

    Args:
        evaluate: an order's measured value (validation ACC: select on validation).
        num_tasks: T; all ``T!`` orders are candidates.
        runs: how many orders to evaluate (at most ``T!``).
        seed: seeds the random start.
        on_start: called with the start orders before they are evaluated (to run them
            in one batch).

    Returns:
        ``(order, measured value)`` in the order evaluated.

    Raises:
        ValueError: more than :data:`MAX_TASKS` tasks, ``runs`` outside ``1..T!`` or
            ``start`` < 1.
    """
    if num_tasks > MAX_TASKS:
        raise ValueError(f"scoring all {num_tasks}! orders; at most {MAX_TASKS} tasks")
    orders = [tuple(int(x) for x in o) for o in itertools.permutations(range(num_tasks))]
    if not 1 <= runs <= len(orders) or start < 1:
        raise ValueError(f"runs must be in 1..{len(orders)} and start >= 1, got runs={runs}, "
                         f"start={start}")
    rng = np.random.default_rng(seed)
    first = [orders[i] for i in rng.choice(len(orders), size=min(start, runs), replace=False)]
    if on_start is not None:
        on_start(first)
    seen: dict[Order, float] = {o: float(evaluate(o)) for o in first}
    left = np.ones(len(orders), dtype=bool)
    left[[orders.index(o) for o in first]] = False
    while len(seen) < runs:
        cand = np.flatnonzero(left)
        ok = {o: v for o, v in seen.items() if np.isfinite(v)}  # a failed order: not fitted
        if ok:
            model = MallowsGP.fit(list(ok), list(ok.values()))
            ei = np.concatenate([model.expected_improvement([orders[i] for i in
                                                             cand[k:k + 50_000]])
                                 for k in range(0, len(cand), 50_000)])
            pick = int(cand[int(np.argmax(ei))])
        else:  # nothing measured yet: another random order
            pick = int(rng.choice(cand))
        left[pick] = False
        seen[orders[pick]] = float(evaluate(orders[pick]))
    return list(seen.items())
