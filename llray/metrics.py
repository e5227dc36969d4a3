"""Continual-learning metrics as pure NumPy functions of the accuracy matrix R.

``R`` has shape ``[T + 1, T]`` (see :mod:`llray.learner`): row 0 is the randomly
initialised model, row ``i`` the model after the ``i``-th task of the order, and column
``j`` (0-based here) the ``(j + 1)``-th task *of the order*. In the paper's 1-based
notation ``R_paper[i, j] = R[i, j - 1]``, so the diagonal "just learned" entries
``R_paper[j, j]`` are the diagonal of ``R[1:]`` and the random-init baseline
``b[j]`` is ``R[0]``.

Definitions (GEM: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
Learning", NeurIPS 2017; forgetting: Chaudhry et al., "Riemannian Walk for Incremental
Learning", ECCV 2018):

- ACC = 1/T · Σ_j R[T, j]
- BWT = 1/(T−1) · Σ_{j<T} (R[T, j] − R[j, j])
- FWT = 1/(T−1) · Σ_{j≥2} (R[j−1, j] − b[j])
- forgetting = 1/(T−1) · Σ_{j<T} (max_{l∈j..T−1} R[l, j] − R[T, j])
- learning accuracy = 1/T · Σ_j R[j, j]

llray divides BWT and FWT by ``T − 1`` as the paper does; the GEM reference code
(``metrics/metrics.py``) divides by ``T``, so its numbers are ``(T − 1)/T`` times ours.

Every function accepts one matrix ``[T + 1, T]`` (and returns a float) or a stack with
any leading batch dimensions ``[..., T + 1, T]`` (and returns an array of the batch
shape), computed without a Python loop over runs. NaN entries (rows a diverged run never
reached) propagate: the metric of such a run is NaN.

Example:
    >>> import numpy as np
    >>> R = np.array([[0.1, 0.2],
    ...               [0.9, 0.3],
    ...               [0.7, 0.8]])
    >>> round(acc(R), 3), round(bwt(R), 3), round(fwt(R), 3)
    (0.75, -0.2, 0.1)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "acc",
    "bwt",
    "forgetting",
    "fwt",
    "learning_accuracy",
    "running_metrics",
    "summary",
]


def _check(R: Any, min_tasks: int = 1) -> np.ndarray:
    """``R`` as a float array of shape ``[..., T + 1, T]`` with ``T >= min_tasks``."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2:
        raise ValueError(f"R must have shape [..., T+1, T], got shape {R.shape}")
    rows, T = R.shape[-2:]
    if rows != T + 1:
        raise ValueError(
            f"R must have shape [..., T+1, T] (row 0 = random init), got shape {R.shape}"
        )
    if T < min_tasks:
        raise ValueError(f"this metric needs at least {min_tasks} tasks, R has T={T}")
    return R


def _out(x: np.ndarray) -> float | np.ndarray:
    """A Python float for one matrix, the array for a batch."""
    return float(x) if np.ndim(x) == 0 else x


def _diag(R: np.ndarray) -> np.ndarray:
    """``[..., T]``: ``R[j, j]`` in the paper's 1-based notation (just learned)."""
    return np.diagonal(R[..., 1:, :], axis1=-2, axis2=-1)


def acc(R: Any) -> float | np.ndarray:
    """Average accuracy after the last task: ``mean_j R[T, j]`` (GEM, Lopez-Paz 2017).

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix (row 0 = random init).

    Returns:
        A float for one matrix, an array of the batch shape for a stack.

    Example:
        >>> acc([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]])
        0.7
    """
    R = _check(R)
    return _out(R[..., -1, :].mean(axis=-1))


def bwt(R: Any) -> float | np.ndarray:
    """Backward transfer ``1/(T−1) Σ_{j<T} (R[T, j] − R[j, j])`` (GEM, Lopez-Paz 2017).

    Negative values are forgetting. llray divides by ``T − 1`` as in the paper; the GEM
    reference code divides by ``T``.

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix, ``T >= 2``.

    Example:
        >>> round(bwt([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]]), 3)
        -0.3
    """
    R = _check(R, min_tasks=2)
    final = R[..., -1, :-1]
    learned = _diag(R)[..., :-1]
    return _out((final - learned).mean(axis=-1))


def fwt(R: Any) -> float | np.ndarray:
    """Forward transfer ``1/(T−1) Σ_{j≥2} (R[j−1, j] − b[j])``, ``b = R[0]`` (GEM, 2017).

    How much learning the earlier tasks helps a task not yet seen, against the random
    initialisation. llray divides by ``T − 1`` as in the paper; the GEM reference code
    divides by ``T``.

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix, ``T >= 2``.

    Example:
        >>> round(fwt([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]]), 3)
        0.1
    """
    R = _check(R, min_tasks=2)
    before = np.diagonal(R[..., :-1, :], axis1=-2, axis2=-1)[..., 1:]  # R[j-1, j], j>=2
    return _out((before - R[..., 0, 1:]).mean(axis=-1))


def forgetting(R: Any) -> float | np.ndarray:
    """Average forgetting (Chaudhry et al., "Riemannian Walk", ECCV 2018).

    For each task ``j < T`` (1-based), its best accuracy over the rows ``l = j..T−1``
    (from when it was learned to just before the last task) minus its final accuracy
    ``R[T, j]``, averaged over the ``T − 1`` first tasks. Non-negative for a column
    that never rises at the end; unlike BWT it counts a task learned late but
    improved in between.

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix, ``T >= 2``.

    Example:
        >>> round(forgetting([[0, 0, 0], [0.5, 0, 0], [0.9, 0.6, 0], [0.7, 0.6, 0.9]]), 3)
        0.1
    """
    R = _check(R, min_tasks=2)
    T = R.shape[-1]
    rows = R[..., 1:T, : T - 1]  # paper rows l = 1..T-1, columns j = 1..T-1
    l, j = np.indices((T - 1, T - 1))
    best = np.where(l >= j, rows, -np.inf).max(axis=-2)  # max over l >= j
    return _out((best - R[..., -1, : T - 1]).mean(axis=-1))


def learning_accuracy(R: Any) -> float | np.ndarray:
    """Mean accuracy on each task right after learning it: ``mean_j R[j, j]``.

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix.

    Example:
        >>> round(learning_accuracy([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]]), 3)
        0.85
    """
    R = _check(R)
    return _out(_diag(R).mean(axis=-1))


def summary(R: Any) -> dict[str, float | np.ndarray]:
    """All metrics of ``R``: ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``learning_accuracy``.

    With one task (``T == 1``) the metrics that compare tasks (``bwt``, ``fwt``,
    ``forgetting``) are NaN.

    Example:
        >>> s = summary([[0.1, 0.1], [0.9, 0.2], [0.6, 0.8]])
        >>> sorted(s), round(s["forgetting"], 3)
        (['acc', 'bwt', 'forgetting', 'fwt', 'learning_accuracy'], 0.3)
    """
    R = _check(R)
    out: dict[str, float | np.ndarray] = {"acc": acc(R), "learning_accuracy": learning_accuracy(R)}
    for name, fn in (("bwt", bwt), ("fwt", fwt), ("forgetting", forgetting)):
        out[name] = fn(R) if R.shape[-1] >= 2 else _out(np.full(R.shape[:-2], np.nan))
    return {k: out[k] for k in ("acc", "bwt", "fwt", "forgetting", "learning_accuracy")}


def running_metrics(R: Any, step: int) -> dict[str, float | np.ndarray]:
    """ACC and BWT over the tasks seen so far, after the ``step``-th task of the order.

    ``acc`` is ``mean(R[step, :step])`` and ``bwt`` is :func:`bwt` of the top-left
    block ``R[:step + 1, :step]`` (0.0 while only one task is known). At ``step == T``
    they equal the final :func:`acc` and :func:`bwt`. Meant for per-task reports to Ray
    Tune (``training_iteration`` = tasks learned).

    Args:
        R: ``[..., T + 1, T]`` accuracy matrix; rows after ``step`` may be NaN.
        step: tasks learned so far, ``1 <= step <= T``.

    Example:
        >>> import numpy as np
        >>> R = [[0.1, 0.1, 0.1], [0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [np.nan] * 3]
        >>> m = running_metrics(R, 2)
        >>> round(m["acc"], 3), round(m["bwt"], 3)
        (0.7, -0.3)
    """
    R = _check(R)
    T = R.shape[-1]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 1 <= step <= T:
        raise ValueError(f"step must be an integer in 1..{T}, got {step!r}")
    block = R[..., : step + 1, :step]
    back = bwt(block) if step >= 2 else _out(np.zeros(R.shape[:-2]))
    return {"acc": acc(block), "bwt": back}
