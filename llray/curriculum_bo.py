"""Bayesian optimisation over task orders: a Gaussian process fitted to what the runs
measured so far picks the next order by expected improvement.

Each run of an order measures more than its final ACC: its validation R holds the model
after every *prefix* of the order on every task. When the search is given those rows
(``evaluate`` returns the validation ACC over all T tasks after each step), the surrogate
is :class:`SuffixGP`: a GP over task sequences whose kernel compares two sequences from
their ends, ``k(p, q) = exp(-c · Σ_r w_r [p_{-r} ≠ q_{-r}])`` with recency weights
``w_r ∝ γ^r`` (r = 0: the task learned last; a shorter sequence has "nothing" at the
positions it lacks). It is a product of overlap (Hamming) kernels, one per position
counted from the end, each positive definite on its categories; the overlap kernel with
per-position weights is the categorical surrogate of CASMOPOLITAN (Wan, Nguyen, Ha, Ru &
Osborne, "Think global and act local: Bayesian optimisation over high-dimensional
categorical and mixed search spaces", ICML 2021). Aligned at the end, it lets every
prefix of length ≥ :data:`MIN_PREFIX` of a measured run inform the orders that end the
same way: T − 1 observations per run instead of one, about the tasks learned last, which
decide most of what fine-tuning remembers.

When only the final ACC is known (``evaluate`` returns a number), the surrogate is
:class:`MallowsGP` over whole orders: an order is described by its precedence vector (for
each pair of tasks i < j: does i come before j); the number of pairs two orders disagree
on is their Kendall tau distance, and the *Mallows kernel* ``k(a, b) = exp(-λ ·
d_Kendall(a, b))`` is positive definite on permutations (Jiao & Vert, "The Kendall and
Mallows kernels for permutations", ICML 2015); a GP with it is the surrogate of
permutation-space Bayesian optimisation (Deshwal, Belakaria, Doppa & Fern, "Bayesian
optimization over permutation spaces", AAAI 2022, BOPS-T).

With ≤ 9 tasks every unmeasured order is scored exactly, so no acquisition optimiser is
needed. Observations are standardised; length scale and noise are chosen per step by the
marginal likelihood of the measured values (type-II maximum likelihood over a small
grid), never from held-out data. The recency rate ``γ`` = :data:`RECENCY`, the minimum
prefix length and the 2 random start orders were chosen on study seeds that the
reported measurement does not use (``benchmarks/bench_curriculum_search.py``).

It needs no pairwise runs: every task training of the budget goes into full runs of
orders. What it buys over random search and over the retention model
(:mod:`llray.curriculum_search`) at equal compute is measured by
``benchmarks/bench_curriculum_search.py`` and reported in docs/tuning.md.

Example:
    >>> import itertools
    >>> truth = {o: -abs(o.index(2) - 4) for o in itertools.permutations(range(5))}
    >>> found = gp_search(truth.__getitem__, 5, runs=8, seed=0)  # final values: Mallows
    >>> len(found), len({o for o, _ in found})
    (8, 8)
    >>> max(found, key=lambda x: x[1])[0][-1]  # task 2 last is best: found in 8 of 120
    2
    >>> steps = lambda o: [0.0] + [float(o[i - 1] == 2) for i in range(1, 6)]  # per step
    >>> max(gp_search(steps, 5, runs=4, seed=0), key=lambda x: x[1])[0][-1]
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
#: Recency rate of :class:`SuffixGP`'s weights: the r-th task from the end weighs ``γ^r``.
RECENCY = 0.5
#: Kernel scales ``c`` of :class:`SuffixGP` tried (the weights sum to 1).
SUFFIX_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The shortest prefix of a measured run that :func:`gp_search` fits (a single task's
#: model is a poor guide to orders ending with it).
MIN_PREFIX = 2
#: Candidate orders scored at once (bounds the kernel matrices' memory).
CHUNK = 50_000


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


def _values(values: Sequence[float], n: int, what: str) -> np.ndarray:
    """``values`` as floats, one per measured ``what`` (at least one).

    Raises:
        ValueError: no values, or not ``n`` of them.
    """
    y = np.asarray(values, dtype=np.float64)
    if len(y) == 0 or len(y) != n:
        raise ValueError(f"need as many values as {what} (>= 1), got {len(y)} values "
                         f"for {n} {what}")
    return y


def _standardised(y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(mean, scale, z)`` with ``z = (y - mean) / scale`` (scale 1 for constant ``y``)."""
    sd = float(y.std())
    mean, scale = float(y.mean()), sd if sd > 0 else 1.0
    return mean, scale, (y - mean) / scale


def _fit_by_likelihood(z: np.ndarray, kernel: Callable[[float], np.ndarray],
                       scales: Sequence[float], noises: Sequence[float]
                       ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Type-II maximum likelihood over the grid: the ``(c, noise)`` whose GP (covariance
    ``kernel(c) + noise·I`` of the standardised values ``z``) has the highest marginal
    likelihood (the first on ties), with the Cholesky factor ``L`` and ``alpha = K⁻¹ z``."""
    best = None
    for c in scales:
        for noise in noises:
            L = np.linalg.cholesky(kernel(c) + noise * np.eye(len(z)))
            alpha = np.linalg.solve(L.T, np.linalg.solve(L, z))
            loglik = -0.5 * z @ alpha - np.log(np.diag(L)).sum()
            if best is None or loglik > best[0] + 1e-12:
                best = (loglik, c, noise, L, alpha)
    return best[1:]


def _posterior(Kc: np.ndarray, alpha: np.ndarray, chol: np.ndarray, mean: float,
               scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation (in the values' units) at points whose
    kernel rows against the measured ones are ``Kc``."""
    mu = Kc @ alpha
    v = np.linalg.solve(chol, Kc.T)
    sd = np.sqrt(np.clip(1.0 - (v * v).sum(axis=0), 1e-12, None))
    return mean + scale * mu, scale * sd


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
        y = _values(values, len(orders), "orders")
        X = precedence(orders)
        pairs = max(1, X.shape[1])
        mean, scale, z = _standardised(y)
        D = kendall(X, X)
        c, noise, L, alpha = _fit_by_likelihood(z, lambda c: np.exp(-c / pairs * D), scales,
                                                noises)
        return cls(X, alpha, L, c / pairs, noise, mean, scale, float(z.max()))

    def posterior(self, orders: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of ``orders``' ACC (in ACC units)."""
        Kc = np.exp(-self.lam * kendall(precedence(orders), self.measured))
        return _posterior(Kc, self.alpha, self.chol, self.mean, self.scale)

    def expected_improvement(self, orders: Sequence[Sequence[int]]) -> np.ndarray:
        """Expected improvement of each order over the best measured value."""
        mu, sd = self.posterior(orders)
        g = ((mu - self.mean) / self.scale - self.best) / (sd / self.scale)
        return _expected_improvement(sd, g)


def suffix_codes(seqs: Sequence[Sequence[int]], num_tasks: int) -> np.ndarray:
    """``[N, T]``: each sequence's tasks read from its end (column 0: the last task), and
    ``T`` ("nothing") where a sequence shorter than T has no task.

    Example:
        >>> suffix_codes([(0, 1, 2), (2, 0)], 3).tolist()
        [[2, 1, 0], [0, 2, 3]]
    """
    codes = np.full((len(seqs), num_tasks), num_tasks, dtype=np.int64)
    for n, seq in enumerate(seqs):
        if len(seq):
            codes[n, :len(seq)] = np.asarray(seq, dtype=np.int64)[::-1]
    return codes


def suffix_mismatch(a: np.ndarray, b: np.ndarray, recency: float = RECENCY) -> np.ndarray:
    """``[N, M]``: ``Σ_r w_r [a_r ≠ b_r]`` between :func:`suffix_codes` rows, ``w_r ∝
    recency^r`` summing to 1 (0: same sequence; 1: no position from the end agrees)."""
    w = recency ** np.arange(a.shape[1], dtype=np.float64)
    w /= w.sum()
    out = np.zeros((len(a), len(b)))
    for r in range(a.shape[1]):
        out += w[r] * (a[:, r][:, None] != b[:, r][None, :])
    return out


@dataclass(frozen=True)
class SuffixGP:
    """The GP posterior over task sequences' all-task validation ACC, compared from their
    ends (see the module docstring); ``fit`` builds it from prefixes of measured runs.

    ``measured``: :func:`suffix_codes` of the fitted sequences; ``alpha``: ``K⁻¹ z``;
    ``chol``: Cholesky factor of ``K + noise·I``; ``scale_c``: the kernel scale ``c``;
    ``mean``/``scale``: how the values were standardised (``z = (y - mean) / scale``).
    """

    measured: np.ndarray
    alpha: np.ndarray
    chol: np.ndarray
    scale_c: float
    noise: float
    mean: float
    scale: float
    recency: float = RECENCY

    @classmethod
    def fit(cls, seqs: Sequence[Sequence[int]], values: Sequence[float], num_tasks: int,
            recency: float = RECENCY, scales: Sequence[float] = SUFFIX_SCALES,
            noises: Sequence[float] = NOISES) -> SuffixGP:
        """Fit to measured ``(sequence, value)`` pairs; ``c`` and noise by marginal
        likelihood.

        Raises:
            ValueError: no sequences, or sequences and values of different lengths.
        """
        y = _values(values, len(seqs), "sequences")
        X = suffix_codes(seqs, num_tasks)
        mean, scale, z = _standardised(y)
        M = suffix_mismatch(X, X, recency)
        c, noise, L, alpha = _fit_by_likelihood(z, lambda c: np.exp(-c * M), scales, noises)
        return cls(X, alpha, L, float(c), float(noise), mean, scale, recency)

    def posterior(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of ``seqs``' value (in ACC units)."""
        Q = suffix_codes(seqs, self.measured.shape[1])
        Kc = np.exp(-self.scale_c * suffix_mismatch(Q, self.measured, self.recency))
        return _posterior(Kc, self.alpha, self.chol, self.mean, self.scale)

    def expected_improvement(self, seqs: Sequence[Sequence[int]], best: float) -> np.ndarray:
        """Expected improvement of each sequence's value over ``best`` (ACC units)."""
        mu, sd = self.posterior(seqs)
        return _expected_improvement(sd, (mu - best) / sd)


def _expected_improvement(sd: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``E[max(Y - best, 0)]`` for ``Y ~ N(mu, sd²)`` given ``sd`` and ``g = (mu - best) /
    sd`` (Jones, Schonlau & Welch 1998)."""
    return sd * (g * norm.cdf(g) + norm.pdf(g))


Measured = float | Sequence[float] | np.ndarray


def _steps(value: Measured, num_tasks: int) -> np.ndarray:
    """``[T + 1]`` per-step values from what ``evaluate`` returned (a number: the final
    value only, the other steps NaN)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        out = np.full(num_tasks + 1, np.nan)
        out[-1] = float(arr)
        return out
    if arr.shape != (num_tasks + 1,):
        raise ValueError(f"evaluate must return a number or {num_tasks + 1} per-step values "
                         f"(step 0 = untrained .. step {num_tasks}), got shape {arr.shape}")
    return arr


def gp_search(evaluate: Callable[[Order], Measured], num_tasks: int, runs: int, seed: int,
              start: int = 2,
              on_start: Callable[[list[Order]], None] | None = None,
              first: Sequence[Sequence[int]] | None = None) -> list[tuple[Order, float]]:
    """Spend ``runs`` evaluations: ``start`` random orders (or the given ``first`` ones),
    then each next order the one of
    highest expected improvement over the best measured order under a GP fitted to what
    was measured so far (ties: the first in lexicographic order); each order at most once.

    ``evaluate`` returns either the order's validation ACC (a number: the GP is
    :class:`MallowsGP` over whole orders) or its validation ACC over all T tasks after each
    step, ``[T + 1]`` values (step 0 = untrained, the last = the order's ACC: the GP is
    :class:`SuffixGP` over the prefixes of length ≥ :data:`MIN_PREFIX` of every measured
    run). A non-finite final value (e.g. every seed of that order failed) keeps the order
    out of the fit; non-finite step values are left out.

    Args:
        evaluate: what a run of an order measured, on validation (select on validation).
        num_tasks: T; all ``T!`` orders are candidates.
        runs: how many orders to evaluate (at most ``T!``).
        seed: seeds the random start.
        start: random orders before the GP chooses.
        on_start: called with the start orders before they are evaluated (to run them
            in one batch).
        first: the start orders instead of random ones (e.g. the top of
            :func:`llray.curriculum_affinity.affinity_ranked`); ``start`` is then unused.

    Returns:
        ``(order, measured final value)`` in the order evaluated.

    Raises:
        ValueError: more than :data:`MAX_TASKS` tasks, ``runs`` outside ``1..T!``,
            ``start`` < 1, ``first`` empty, repeated or not orders of the T tasks, or
            ``evaluate`` returned neither a number nor ``T + 1`` values.
    """
    if num_tasks > MAX_TASKS:
        raise ValueError(f"scoring all {num_tasks}! orders; at most {MAX_TASKS} tasks")
    orders = [tuple(int(x) for x in o) for o in itertools.permutations(range(num_tasks))]
    if not 1 <= runs <= len(orders) or start < 1:
        raise ValueError(f"runs must be in 1..{len(orders)} and start >= 1, got runs={runs}, "
                         f"start={start}")
    rng = np.random.default_rng(seed)
    if first is None:
        first = [orders[i] for i in rng.choice(len(orders), size=min(start, runs),
                                               replace=False)]
    else:
        first = _given_start(first, num_tasks)[:runs]
    if on_start is not None:
        on_start(first)
    seen: dict[Order, np.ndarray] = {o: _steps(evaluate(o), num_tasks) for o in first}
    left = np.ones(len(orders), dtype=bool)
    left[[orders.index(o) for o in first]] = False
    while len(seen) < runs:
        cand = np.flatnonzero(left)
        score = _acquisition(seen, [orders[i] for i in cand], num_tasks)
        pick = int(cand[int(np.argmax(score))]) if score is not None else int(rng.choice(cand))
        left[pick] = False
        seen[orders[pick]] = _steps(evaluate(orders[pick]), num_tasks)
    return [(o, float(v[-1])) for o, v in seen.items()]


def _given_start(first: Sequence[Sequence[int]], num_tasks: int) -> list[Order]:
    """The given start orders as tuples, checked.

    Raises:
        ValueError: none, a repeated one, or one that is not an order of the T tasks.
    """
    out = [tuple(int(x) for x in o) for o in first]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"first must hold distinct orders (at least one), got {first}")
    bad = [o for o in out if sorted(o) != list(range(num_tasks))]
    if bad:
        raise ValueError(f"first: {bad[0]} is not an order of the {num_tasks} tasks")
    return out


def _acquisition(seen: dict[Order, np.ndarray], cand: list[Order],
                 num_tasks: int) -> np.ndarray | None:
    """Expected improvement of each candidate over the best measured order, under the GP
    that what was measured supports (None: nothing measured yet)."""
    ok = {o: v for o, v in seen.items() if np.isfinite(v[-1])}  # a failed order: not fitted
    if not ok:
        return None
    best = max(float(v[-1]) for v in ok.values())
    prefixes = {o[:i]: float(v[i]) for o, v in ok.items()
                for i in range(MIN_PREFIX, num_tasks + 1) if np.isfinite(v[i])}
    if len(prefixes) > len(ok):  # step values were given: the GP over prefixes
        model = SuffixGP.fit(list(prefixes), list(prefixes.values()), num_tasks)
        ei = lambda chunk: model.expected_improvement(chunk, best)  # noqa: E731
    else:
        ei = MallowsGP.fit(list(ok), [float(v[-1]) for v in ok.values()]).expected_improvement
    return np.concatenate([ei(cand[k:k + CHUNK]) for k in range(0, len(cand), CHUNK)])
