"""Task affinity without training: which orders to try first in a curriculum search.

A task's *input statistics* say how alike two tasks are before any model is trained:
:func:`input_affinity` compares, for every label two tasks share, the mean training
input of that label in one task with the other's (cosine similarity of class-conditional
means: the normalised linear-kernel mean embeddings of the class-conditional input
distributions, Gretton et al., "A kernel two-sample test", JMLR 2012), averaged over the
shared labels; tasks with no label in common are compared by their mean inputs.

Which orders that favours follows Li & Hiratani, "Optimal task order for continual
learning of multiple tasks" (ICML 2025): in their teacher-student analysis, and on the
image streams they test, *adjacent tasks should be dissimilar* (in a related
teacher-student analysis forgetting peaks at intermediate task similarity: Lee, Goldt &
Saxe, ICML 2021). :func:`affinity_scores` scores an order by the
similarity of its consecutive tasks, weighted towards the end of the order (what
fine-tuning keeps is decided most by the tasks learned last), ``score(o) = -Σ_p w_p
S[o_p, o_{p+1}]`` with ``w_p = γ^(T-2-p)``, ``γ`` = :data:`llray.curriculum_bo.RECENCY`
(the same recency as the search's GP, not tuned on its own); :func:`affinity_ranked`
ranks all ``T!`` orders by it.

``llray curriculum CONFIG --search gp-affinity`` runs the top-ranked order first and
then lets the GP over prefixes (:func:`llray.curriculum_bo.gp_search`) choose every next
order: the first run's prefixes tell the GP about orders ending in dissimilar pairs.
It costs no training beyond the search's own runs. The first-order transfer probe of
Taskonomy (Zamir et al., CVPR 2018: T single-task models, each tested on every task) was
measured as the affinity instead and not kept: it costs one run's worth of training and
did worse than the input affinity at every budget (docs/tuning.md).

The affinity depends on the stream's training inputs only, so every study of a stream
starts from the same order; what the search buys, on rotated digits (2x random search's
top-10% rate and more at 2-6 full runs) and on split digits (less), is measured by
``benchmarks/bench_curriculum_search.py`` and reported in docs/tuning.md.

Example:
    >>> import numpy as np
    >>> S = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])  # 0 ~ 1
    >>> affinity_ranked(S)[0]  # 0 and 1 never adjacent, the last pair least alike
    (1, 2, 0)
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from llray.curriculum_bo import RECENCY
from llray.curriculum_search import MAX_TASKS
from llray.data import TaskStream

Order = tuple[int, ...]


def _class_means(x: torch.Tensor, y: torch.Tensor) -> tuple[dict[int, torch.Tensor],
                                                             torch.Tensor]:
    """Mean flattened input per label and over the task (float64; one label's inputs
    converted at a time, so a large task is never copied whole)."""
    flat = x.reshape(len(x), -1)
    means, total = {}, torch.zeros(flat.shape[1], dtype=torch.float64)
    for c in torch.unique(y):
        rows = flat[y == c].to(torch.float64)
        means[int(c)] = rows.mean(dim=0)
        total += rows.sum(dim=0)
    return means, total / len(flat)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-12))


def input_affinity(stream: TaskStream) -> np.ndarray:
    """``[T, T]`` similarity of the tasks' training inputs (symmetric, 1 on the diagonal
    for tasks with non-constant inputs): the mean over shared labels of the cosine
    similarity of the label's mean input in each task; the tasks' mean inputs when they
    share no label. Uses the training split only (never validation or test), as the
    stream holds it (normalised floats, or uint8 pixels for image streams).

    Raises:
        ValueError: a task without training examples.
    """
    tasks = sorted(stream.tasks, key=lambda t: t.id)
    if any(len(t.y_train) == 0 for t in tasks):
        raise ValueError("every task needs training examples to compare its inputs")
    means, overall = zip(*(_class_means(t.x_train, t.y_train) for t in tasks))
    T = len(tasks)
    S = np.eye(T)
    for i, j in itertools.combinations(range(T), 2):
        shared = sorted(set(means[i]) & set(means[j]))
        sims = [_cosine(means[i][c], means[j][c]) for c in shared]
        S[i, j] = S[j, i] = float(np.mean(sims)) if sims else _cosine(overall[i], overall[j])
    return S


def affinity_scores(orders: np.ndarray, affinity: np.ndarray,
                    recency: float = RECENCY) -> np.ndarray:
    """``[N]``: ``-Σ_p recency^(T-2-p) · S[o_p, o_{p+1}]`` for each row of ``orders``
    (``[N, T]`` task ids): higher when consecutive tasks, the last ones most, are unlike.

    Example:
        >>> S = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
        >>> affinity_scores(np.array([[0, 1, 2], [0, 2, 1]]), S, recency=0.5).round(2)
        array([-0.65, -0.25])
    """
    P = np.asarray(orders, dtype=np.int64)
    S = np.asarray(affinity, dtype=np.float64)
    T = P.shape[1]
    w = recency ** np.arange(T - 2, -1, -1, dtype=np.float64)  # [T-1]: the last pair 1
    return -(S[P[:, :-1], P[:, 1:]] * w).sum(axis=1)


def affinity_ranked(affinity: np.ndarray, recency: float = RECENCY) -> list[Order]:
    """Every order of the ``T`` tasks, best :func:`affinity_scores` first (ties: the
    first in lexicographic order).

    Raises:
        ValueError: ``affinity`` not square, or more than :data:`MAX_TASKS` tasks.
    """
    S = np.asarray(affinity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"affinity must be a square [T, T] matrix, got shape {S.shape}")
    T = S.shape[0]
    if T > MAX_TASKS:
        raise ValueError(f"ranking all {T}! orders of {T} tasks; at most {MAX_TASKS} tasks")
    orders = np.array(list(itertools.permutations(range(T))), dtype=np.int64).reshape(-1, T)
    score = affinity_scores(orders, S, recency) if T > 1 else np.zeros(len(orders))
    return [tuple(int(x) for x in orders[i]) for i in np.argsort(-score, kind="stable")]
