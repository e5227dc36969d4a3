"""Taskonomy for a task stream: pairwise transfer on Ray, and curricula proposed from it.

For every ordered pair of tasks ``(i, j)`` and every seed, one Ray task learns ``i``
then ``j`` (a two-task stream cut from the full one), and one learns ``j`` alone from
the same initialisation (same seed). From their R matrices:

- ``transfer[i, j]`` = acc on j after learning i then j − acc on j after j alone
  (positive: learning i first helps j);
- ``forgetting[i, j]`` = acc on i right after learning it − acc on i after j came
  next (how much learning j next damages i);
- ``zero_shot[i, j]`` = acc on j after learning i only − acc on j at initialisation.

A curriculum is an order of all tasks; its score is the sum over consecutive pairs of
``score[i, j] = transfer[i, j] − forgetting[i, j]``. :func:`greedy_path` starts with the
best pair and keeps going to the best next task; :func:`best_path` finds the highest
scoring order exactly (Held-Karp dynamic programming over subsets, ``O(2^T T^2)``, for
``T <= EXACT_MAX_TASKS``).

Written under ``OUTPUT/taskonomy/<strategy>/``: ``pairs.parquet`` (one row per learned
stream), ``affinity.parquet`` (one row per pair, means over seeds), ``curricula.parquet``
(the proposed orders and their scores) and ``affinity.png``.

Example:
    >>> import numpy as np
    >>> M = np.array([[np.nan, 0.5, 0.0], [0.0, np.nan, 0.2], [0.1, 0.0, np.nan]])
    >>> greedy_path(M), best_path(M), round(path_score(M, best_path(M)), 3)
    ((0, 1, 2), (0, 1, 2), 0.7)
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llray.config import RunSpec
from llray.errors import ConfigError

EXACT_MAX_TASKS = 16
SCORES = ("transfer-forgetting", "transfer")


# -- curricula from an affinity matrix -----------------------------------------------------
def _check_square(M: Any) -> np.ndarray:
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"affinity matrix must be square, got shape {M.shape}")
    return M


def _edges(M: np.ndarray) -> np.ndarray:
    """``M`` with the diagonal and NaN entries (unmeasured pairs) as -inf."""
    E = np.where(np.isfinite(M), M, -np.inf)
    np.fill_diagonal(E, -np.inf)
    return E


def path_score(M: Any, path: Sequence[int]) -> float:
    """Sum of ``M[a, b]`` over consecutive tasks ``a, b`` of ``path``.

    Example:
        >>> path_score([[0, 1.0], [2.0, 0]], (1, 0))
        2.0
    """
    M = _check_square(M)
    return float(sum(M[a, b] for a, b in zip(path[:-1], path[1:])))


def greedy_path(M: Any) -> tuple[int, ...]:
    """Start with the highest-affinity pair, then always go to the best unvisited task.

    Ties go to the lowest task id (row first). ``M[i, j]`` is the gain of learning ``j``
    right after ``i``; the diagonal is ignored.

    Example:
        >>> greedy_path([[0, 0.1, 0.9], [0.3, 0, 0.0], [0.0, 0.8, 0]])
        (0, 2, 1)
    """
    M = _check_square(M)
    T = len(M)
    if T == 1:
        return (0,)
    E = _edges(M)
    first = int(np.argmax(E))  # row-major: lowest i, then lowest j, among the maxima
    path = [first // T, first % T]
    while len(path) < T:
        row = E[path[-1]].copy()
        row[path] = -np.inf
        path.append(int(np.argmax(row)) if np.isfinite(row).any() else
                    min(set(range(T)) - set(path)))
    return tuple(path)


def best_path(M: Any, max_tasks: int = EXACT_MAX_TASKS) -> tuple[int, ...]:
    """The order of all tasks with the highest :func:`path_score` (Held-Karp DP).

    ``dp[S, j]`` is the best score of a path through the task set ``S`` ending at
    ``j``; each set extends by one task at a time, so the cost is ``O(2^T T^2)``
    (vectorised over the end tasks). Ties keep the path found first.

    Raises:
        ValueError: ``T > max_tasks`` (use :func:`greedy_path`).

    Example:
        >>> best_path([[0, 0.1, 0.9], [0.3, 0, 0.0], [0.0, 0.8, 0]])
        (0, 2, 1)
    """
    M = _check_square(M)
    T = len(M)
    if T > max_tasks:
        raise ValueError(f"exact search over {T} tasks needs 2^{T} states; at most {max_tasks}")
    if T == 1:
        return (0,)
    E = _edges(M)
    full = 1 << T
    dp = np.full((full, T), -np.inf)
    parent = np.full((full, T), -1, dtype=np.int64)
    for j in range(T):
        dp[1 << j, j] = 0.0
    bits = 1 << np.arange(T)
    for S in range(1, full):
        ends = np.flatnonzero(np.isfinite(dp[S]) & ((S & bits) != 0))
        if len(ends) == 0:
            continue
        cand = dp[S, ends][:, None] + E[ends]  # [ends, next task]
        best = np.argmax(cand, axis=0)  # the best end to come from, per next task
        value = cand[best, np.arange(T)]
        nxt = S | bits  # the set after adding each next task
        better = ((S & bits) == 0) & (value > dp[nxt, np.arange(T)])
        dp[nxt[better], np.flatnonzero(better)] = value[better]
        parent[nxt[better], np.flatnonzero(better)] = ends[best[better]]
    end = int(np.argmax(dp[full - 1]))
    if not np.isfinite(dp[full - 1, end]):  # no finite path: unmeasured pairs everywhere
        return greedy_path(M)
    path, S = [end], full - 1
    while parent[S, path[-1]] >= 0:
        prev = int(parent[S, path[-1]])
        S ^= 1 << path[-1]
        path.append(prev)
    return tuple(reversed(path))


# -- the pairwise experiment on Ray --------------------------------------------------------
def template(cfg: Any, strategy: str | None = None) -> RunSpec:
    """The run every job of ``cfg`` uses: the strategy labelled ``strategy`` (default:
    the config's first), identity order, the first seed (jobs replace seed and order).

    Raises:
        ConfigError: ``strategy`` is not one of the config's strategies (they are named).
    """
    specs = {s.display: s for s in cfg.strategies}
    if strategy is None:
        chosen = cfg.strategies[0]
    elif strategy in specs:
        chosen = specs[strategy]
    else:
        raise ConfigError("--strategy", f"{strategy!r} is not in the config; its strategies: "
                                        f"{', '.join(specs)}")
    if cfg.stream.num_tasks < 2:
        raise ConfigError("stream.num_tasks", "pairwise transfer needs at least 2 tasks")
    return RunSpec(cfg.experiment, cfg.stream, cfg.model, cfg.train, chosen, cfg.seeds[0],
                   tuple(range(cfg.stream.num_tasks)), cfg.resources)



@dataclass(frozen=True)
class Job:
    """One learned stream: ``tasks`` (task ids, learned in this order) with one seed."""

    seed: int
    tasks: tuple[int, ...]  # (i, j) for a pair, (j,) for j from scratch

    @property
    def kind(self) -> str:
        return "pair" if len(self.tasks) == 2 else "scratch"


def jobs(num_tasks: int, seeds: Sequence[int]) -> list[Job]:
    """Every pair ``(i, j)``, ``i != j``, and every task alone, for each seed.

    Example:
        >>> [j.tasks for j in jobs(2, [0])]
        [(0,), (1,), (0, 1), (1, 0)]
    """
    out = []
    for seed in seeds:
        out += [Job(seed, (j,)) for j in range(num_tasks)]
        out += [Job(seed, (i, j)) for i in range(num_tasks) for j in range(num_tasks) if i != j]
    return out


def _learn(spec: RunSpec, handle: Any) -> tuple[np.ndarray, str, float]:
    """Ray task body: learn the sub-stream ``handle`` in its order; R, status, seconds.

    The R is the validation R when the stream has validation splits (the taskonomy
    selects orders, and selection uses held-out training data, never the test split);
    the test R otherwise."""
    from llray.distributed.actor import pick_device, set_threads, warm
    from llray.distributed.streaming import get_stream
    from llray.experiment import execute

    set_threads()
    warm()  # the first job on a worker imports torch's optimizer machinery here
    stream = get_stream(handle)
    res = execute(replace(spec, order=tuple(range(stream.num_tasks))), stream, pick_device())
    return (res.R_val if res.R_val is not None else res.R), res.status, res.wall_s


def run_pairs(
    stream: Any,
    spec: RunSpec,
    seeds: Sequence[int],
    on_job: Callable[[Job, int, int], None] | None = None,
    fixed_cluster: bool = False,
    wait_message_s: float = 30.0,
) -> pd.DataFrame:
    """Learn every :func:`jobs` stream on Ray (already connected); one row per job.

    Like the sweep driver, it keeps in flight only what the alive nodes fit (the other
    jobs wait in the driver; Ray reuses each worker process for job after job), refuses
    resources no node has on a ``fixed_cluster`` (the embedded Ray), and on a real
    cluster says what it waits for when nothing fits for ``wait_message_s``.

    Args:
        stream: the full :class:`~llray.data.TaskStream`; each task goes into the
            object store once and every job fetches only the tasks it learns.
        spec: the run whose model, training and strategy every job uses (its seed and
            order are replaced per job).
        seeds: model-init and batch-order seeds; a pair and the scratch run it is
            compared with share their seed, hence their initialisation.
        on_job: called as ``on_job(job, done, total)`` when a job finishes.
        fixed_cluster: the cluster cannot grow: resources no node has are an error.
        wait_message_s: how long nothing may move before the wait is stated.

    Returns:
        Columns ``seed, kind, source, target, status, wall_s, split`` ("val": the
        entries are validation accuracies; "test" for a stream without validation
        splits) and the R entries
        ``init_source, source_after_source, target_after_source, source_final,
        target_final, init_target`` (NaN where they do not apply, or where the job
        diverged; a job whose code raised or whose worker died has status ``failed``).

    Raises:
        ConfigError: ``fixed_cluster`` and no node can hold one job (resource named).
    """
    import sys
    import time
    from collections import deque

    import ray
    from ray.exceptions import RayError

    from llray.distributed import capacity
    from llray.distributed.streaming import put_stream
    from llray.distributed.sweep import check_fits, in_flight_limit

    shape = capacity.shape_of(spec.resources)
    if fixed_cluster:
        check_fits(shape, capacity.alive_nodes())
    handle = put_stream(stream)
    remote = ray.remote(_learn).options(num_cpus=spec.resources.num_cpus,
                                        num_gpus=spec.resources.num_gpus)
    todo = jobs(stream.num_tasks, seeds)
    split = "val" if stream.has_val else "test"  # which accuracies _learn returns
    waiting, refs = deque(todo), {}
    rows: list[dict[str, Any]] = []
    moved = told = time.monotonic()
    while waiting or refs:
        limit = in_flight_limit(shape, capacity.alive_nodes())
        while waiting and len(refs) < limit:
            job = waiting.popleft()
            refs[remote.remote(replace(spec, seed=job.seed), _sub_handle(handle, job.tasks))] = job
        done, _ = ray.wait(list(refs), num_returns=1, timeout=5.0) if refs else ([], [])
        if not done:
            now = time.monotonic()
            if limit == 0 and now - max(moved, told) >= wait_message_s:
                told = now
                print(capacity.waiting_message(shape, len(waiting), len(refs), now - moved,
                                               False), file=sys.stderr, flush=True)
            if not refs:
                time.sleep(1.0)
            continue
        moved = time.monotonic()
        job = refs.pop(done[0])
        try:
            R, status, wall = ray.get(done[0])
        except RayError:  # the job's code raised or its worker died: NaN, status failed
            R, status, wall = np.full((len(job.tasks) + 1, len(job.tasks)), np.nan), "failed", 0.0
        rows.append({**_row(job, R, status, wall), "split": split})
        if on_job is not None:
            on_job(job, len(rows), len(todo))
    return pd.DataFrame(rows).sort_values(["seed", "kind", "source", "target"], ignore_index=True)


def sub_stream(stream: Any, tasks: tuple[int, ...]) -> Any:
    """The tasks ``tasks`` of ``stream``, renumbered 0.. in that order (in memory)."""
    picked = tuple(replace(stream.tasks[t], id=i) for i, t in enumerate(tasks))
    return replace(stream, tasks=picked)


def run_pairs_here(spec: RunSpec, stream: Any, seeds: Sequence[int]) -> pd.DataFrame:
    """:func:`run_pairs` in this process, one job after another, without Ray.

    For small streams and notebooks; the columns are those of :func:`run_pairs`.

    Example:
        >>> from llray.config import parse_config
        >>> from llray.data import make_stream
        >>> cfg = parse_config({"stream": {"dataset": "digits", "num_tasks": 2,
        ...                                "max_train_per_task": 40},
        ...                     "model": {"hidden": [8]}, "strategies": ["naive"]})
        >>> pairs = run_pairs_here(cfg.runs()[0], make_stream(cfg.stream), seeds=[0])
        >>> sorted(set(pairs["kind"])), len(pairs)
        (['pair', 'scratch'], 4)
    """
    from llray.experiment import execute

    split = "val" if getattr(stream, "has_val", False) else "test"
    rows = []
    for job in jobs(stream.num_tasks, seeds):
        res = execute(replace(spec, seed=job.seed, order=tuple(range(len(job.tasks)))),
                      sub_stream(stream, job.tasks))
        R = res.R_val if res.R_val is not None else res.R
        rows.append({**_row(job, R, res.status, res.wall_s), "split": split})
    return pd.DataFrame(rows).sort_values(["seed", "kind", "source", "target"], ignore_index=True)


def _sub_handle(handle: Any, tasks: tuple[int, ...]) -> Any:
    """The stream handle of ``tasks`` only, re-numbered 0.. in that order."""
    return replace(handle, refs=tuple(handle.refs[t] for t in tasks),
                   names=tuple(handle.names[t] for t in tasks),
                   classes=tuple(handle.classes[t] for t in tasks))


def _row(job: Job, R: np.ndarray, status: str, wall: float) -> dict[str, Any]:
    nan = float("nan")
    row = {"seed": job.seed, "kind": job.kind, "source": -1, "target": job.tasks[-1],
           "status": status, "wall_s": wall, "init_source": nan, "source_after_source": nan,
           "target_after_source": nan, "source_final": nan, "init_target": float(R[0, -1]),
           "target_final": float(R[-1, -1])}
    if job.kind == "pair":
        row.update(source=job.tasks[0], init_source=float(R[0, 0]),
                   source_after_source=float(R[1, 0]), target_after_source=float(R[1, 1]),
                   source_final=float(R[2, 0]))
    return row


def affinity(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per ordered pair: transfer, forgetting, zero-shot transfer (means over seeds).

    Each pair run is compared with the scratch run of its target *with the same seed*;
    ``transfer_std`` is the sample std of that difference over seeds.

    Example:
        >>> p = pd.DataFrame({"seed": 0, "kind": ["scratch", "pair"], "source": [-1, 0],
        ...     "target": [1, 1], "target_final": [0.6, 0.8], "source_after_source": [None, 0.9],
        ...     "source_final": [None, 0.7], "target_after_source": [None, 0.2],
        ...     "init_target": [0.1, 0.1]})
        >>> affinity(p)[["source", "target", "transfer", "forgetting"]].round(2).values.tolist()
        [[0.0, 1.0, 0.2, 0.2]]
    """
    scratch = pairs[pairs["kind"] == "scratch"].set_index(["seed", "target"])["target_final"]
    p = pairs[pairs["kind"] == "pair"].copy()
    p["scratch"] = scratch.reindex(pd.MultiIndex.from_arrays([p["seed"], p["target"]])).to_numpy()
    p["transfer"] = p["target_final"] - p["scratch"]
    p["forgetting"] = p["source_after_source"] - p["source_final"]
    p["zero_shot"] = p["target_after_source"] - p["init_target"]
    g = p.groupby(["source", "target"], sort=True)
    out = g.agg(transfer=("transfer", "mean"), transfer_std=("transfer", "std"),
                forgetting=("forgetting", "mean"), zero_shot=("zero_shot", "mean"),
                pair_acc=("target_final", "mean"), scratch_acc=("scratch", "mean"),
                seeds=("seed", "nunique")).reset_index()
    out["score"] = out["transfer"] - out["forgetting"]
    return out


def matrix(aff: pd.DataFrame, column: str, num_tasks: int) -> np.ndarray:
    """``[T, T]`` matrix of ``column`` (rows: source, columns: target); NaN diagonal."""
    M = np.full((num_tasks, num_tasks), np.nan)
    M[aff["source"].to_numpy(int), aff["target"].to_numpy(int)] = aff[column].to_numpy(float)
    return M


def curricula(aff: pd.DataFrame, num_tasks: int, score: str = "transfer-forgetting",
              exact_max_tasks: int = EXACT_MAX_TASKS) -> pd.DataFrame:
    """The greedy and (for small T) the exact best order, with their path scores.

    ``score``: ``transfer-forgetting`` (default) or ``transfer`` (ignore forgetting).
    """
    if score not in SCORES:
        raise ConfigError("score", f"must be one of {', '.join(SCORES)}, got {score!r}")
    M = matrix(aff, "score" if score == "transfer-forgetting" else "transfer", num_tasks)
    rows = [("greedy", greedy_path(M))]
    if num_tasks <= exact_max_tasks:
        rows.append(("best", best_path(M, exact_max_tasks)))
    return pd.DataFrame({
        "name": [n for n, _ in rows],
        "order": [list(o) for _, o in rows],
        "score": [path_score(M, o) for _, o in rows],
        "objective": score,
    })


# -- files ----------------------------------------------------------------------------------
def folder(output: str | Path, strategy: str) -> Path:
    """``OUTPUT/taskonomy/<strategy>``."""
    return Path(output) / "taskonomy" / strategy


def describe(spec: RunSpec, seeds: Sequence[int]) -> str:
    """JSON of what the affinity depends on: stream, model, training, strategy, seeds."""
    d = spec.config_dict()
    return json.dumps({k: d[k] for k in ("stream", "model", "train", "strategy")}
                      | {"seeds": list(seeds)}, sort_keys=True, default=str)


SUFFIX = "-taskonomy"


def write(output: str | Path, strategy: str, pairs: pd.DataFrame, aff: pd.DataFrame,
          curr: pd.DataFrame, config: str, png: bytes | None = None,
          experiment: str | None = None) -> Path:
    """Write the taskonomy files (each to a temporary name, then renamed).

    Every row carries ``experiment``: the config's experiment name plus ``-taskonomy``
    (the pairwise runs are an experiment of their own, as ``-curriculum`` runs are).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = folder(output, strategy)
    where.mkdir(parents=True, exist_ok=True)
    for name, df in (("pairs", pairs), ("affinity", aff), ("curricula", curr)):
        table = pa.Table.from_pandas(df.assign(experiment=experiment, strategy=strategy,
                                               config=config), preserve_index=False)
        write_atomically(where / f"{name}.parquet", lambda f, t=table: pq.write_table(t, f))
    if png is not None:
        write_atomically(where / "affinity.png", lambda f: f.write(png))
    return where


def write_atomically(path: Path, write_to: Callable[[Any], None]) -> None:
    """``write_to(f)`` into a hidden temporary file beside ``path``, then rename it over
    ``path``: a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_to(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(output: str | Path, strategy: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(affinity, curricula)`` written by :func:`write`, or None if there are none.

    Raises:
        ConfigError: the files exist but cannot be read (named).
    """
    import pyarrow.parquet as pq

    where = folder(output, strategy)
    if not (where / "curricula.parquet").is_file():
        return None
    try:
        return tuple(pq.read_table(where / f"{n}.parquet").to_pandas()  # type: ignore[return-value]
                     for n in ("affinity", "curricula"))
    except Exception as e:  # noqa: BLE001 - any reader error: name the folder
        raise ConfigError(str(where), f"cannot read the taskonomy files: {e}") from None


def load_pairs(output: str | Path, strategy: str) -> pd.DataFrame | None:
    """The ``pairs.parquet`` rows written by :func:`write` (one per short run), or None.

    Raises:
        ConfigError: the file exists but cannot be read (named).
    """
    import pyarrow.parquet as pq

    path = folder(output, strategy) / "pairs.parquet"
    if not path.is_file():
        return None
    try:
        return pq.read_table(path).to_pandas()
    except Exception as e:  # noqa: BLE001 - any reader error: name the file
        raise ConfigError(str(path), f"cannot read the pairwise runs: {e}") from None


# -- plot -----------------------------------------------------------------------------------
def plot(aff: pd.DataFrame, curr: pd.DataFrame, num_tasks: int, title: str,
         dpi: int = 100) -> bytes:
    """PNG of the transfer and forgetting matrices, the proposed orders in the title."""
    from matplotlib.figure import Figure

    T = num_tasks
    fig = Figure(figsize=(2.2 + 1.1 * T, 1.4 + 0.5 * T), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, cmap, label in ((axes[0], "transfer", "RdBu", "transfer i→j (blue: helps j)"),
                                    (axes[1], "forgetting", "RdBu_r",
                                     "forgetting of i (red: j erases i)")):
        M = matrix(aff, column, T)
        lim = max(float(np.nanmax(np.abs(M))) if np.isfinite(M).any() else 0.0, 1e-3)
        im = ax.imshow(M, cmap=cmap, vmin=-lim, vmax=lim)
        if T <= 12:
            for (i, j), v in np.ndenumerate(M):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(T), [f"t{j}" for j in range(T)], fontsize=8)
        ax.set_yticks(range(T), [f"t{i}" for i in range(T)], fontsize=8)
        ax.set_xlabel("then j (target)", fontsize=8)
        ax.set_ylabel("first i (source)", fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    orders = "; ".join(f"{r.name}: {'→'.join(map(str, r.order))} ({r.score:+.2f})"
                       for r in curr.itertuples())
    fig.suptitle(f"{title}\n{orders}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def format_matrix(aff: pd.DataFrame, column: str, num_tasks: int) -> str:
    """A matrix as text, rows = source, columns = target."""
    M = matrix(aff, column, num_tasks)
    df = pd.DataFrame(M, index=[f"t{i}" for i in range(num_tasks)],
                      columns=[f"t{j}" for j in range(num_tasks)])
    return df.to_string(float_format=lambda x: f"{x:+.3f}", na_rep="-")
