"""Does the order matter? One stream and strategy learned in several orders, compared.

The candidates (:func:`candidates`): the identity order, K random orders, the orders
the taskonomy proposes (:mod:`llray.taskonomy`: greedy and exact best path), and the
order of the best trial of each study in the output directory that searched the order
(``llray tune``). An order proposed twice is run once, under both labels.

Every candidate is run for every seed of the config as an ordinary run of the
experiment ``<experiment>-curriculum`` (so the runs land in the Parquet store with the
others, and a rerun skips the ones already there). :func:`compare` then reads their
metrics from the store (:func:`llray.analysis.run_metrics`) and gives, per order, ACC
and BWT on the test split (mean and Student-t interval over seeds) with the order's
rank among all candidates and where it falls in the distribution over the random
orders. The rank and that percentile are by ACC on the *validation* split
(``acc_val``): choosing an order is selection, and selection uses held-out training
data, never the test split (runs without validation rows are ranked by test ACC).

Example:
    >>> c = candidates(3, identity=True, random_orders=[(2, 1, 0), (0, 1, 2)],
    ...                proposed={"taskonomy-best": (2, 1, 0)})
    >>> [(x.label, x.order) for x in c]
    [('identity = random-2', (0, 1, 2)), ('random-1 = taskonomy-best', (2, 1, 0))]
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llray import analysis
from llray.config import RunSpec
from llray.errors import ConfigError

SUFFIX = "-curriculum"


@dataclass(frozen=True)
class Candidate:
    """One order to try and every name it was proposed under."""

    label: str
    order: tuple[int, ...]

    @property
    def text(self) -> str:
        return ",".join(map(str, self.order))


def candidates(
    num_tasks: int,
    identity: bool = True,
    random_orders: Sequence[Sequence[int]] = (),
    proposed: Mapping[str, Sequence[int]] | None = None,
) -> list[Candidate]:
    """The orders to compare, each once; labels of the same order joined with ``=``."""
    labels: dict[tuple[int, ...], list[str]] = {}
    if identity:
        labels.setdefault(tuple(range(num_tasks)), []).append("identity")
    for k, order in enumerate(random_orders, 1):
        labels.setdefault(tuple(int(x) for x in order), []).append(f"random-{k}")
    for name, order in (proposed or {}).items():
        order = tuple(int(x) for x in order)
        if sorted(order) != list(range(num_tasks)):
            raise ConfigError(name, f"order {list(order)} is not a permutation of "
                                    f"0..{num_tasks - 1}")
        labels.setdefault(order, []).append(name)
    return [Candidate(" = ".join(names), order) for order, names in labels.items()]


def random_orders(k: int, num_tasks: int, seed: int) -> list[tuple[int, ...]]:
    """K distinct random orders, as a config's ``random:K`` draws them from ``seed``."""
    from llray.config import parse_orders

    return list(parse_orders([f"random:{k}"], num_tasks, seed)) if k > 0 else []


# -- the tuned order ------------------------------------------------------------------------
def studies(output: str | Path) -> pd.DataFrame:
    """The tuning trials in ``output``'s runs table: study, order, status, acc, searched keys."""
    from llray.results import load_runs

    root = Path(output)
    if not (root / "runs").is_dir():
        return pd.DataFrame(columns=["study", "benchmark", "order", "status", "acc", "searched"])
    runs = load_runs(output, columns=["run_id", "benchmark", "task_order", "status", "acc",
                                      "config"])
    tuning = [(json.loads(c) if isinstance(c, str) else {}).get("tuning") or {}
              for c in runs["config"]]
    # a study's trials; not its confirmation runs (llray tune --confirm), which re-run
    # chosen configurations on other seeds
    runs["study"] = [None if t.get("confirm") else t.get("study") for t in tuning]
    runs["searched"] = [sorted((t.get("params") or {})) for t in tuning]
    runs["order"] = [tuple(int(x) for x in o) for o in runs["task_order"]]
    return runs[runs["study"].notna()][["study", "benchmark", "order", "status", "acc",
                                        "searched"]]


def tuned_orders(output: str | Path, num_tasks: int, benchmark: str,
                 study: str | None = None) -> dict[str, tuple[int, ...]]:
    """``{"tuned:<study>": order}``: the order of each study's best finished trial (ACC).

    Without ``study``: every study in ``output`` that searched ``order`` on a stream of
    the same benchmark and number of tasks. With ``study``: that one.

    Raises:
        ConfigError: ``study`` is not in ``output`` (the studies there are listed), or
            its trials are on another stream, or none of them finished.
    """
    trials = studies(output)
    names = sorted(trials["study"].unique())
    if study is not None and study not in names:
        there = ", ".join(names) if names else "none"
        raise ConfigError("--study", f"no study {study!r} in {os.fspath(output)!r}; studies "
                                     f"there: {there}")
    if trials.empty:
        return {}
    same = trials[(trials["benchmark"] == benchmark)
                  & (trials["order"].map(len) == num_tasks).astype(bool)]
    if study is not None:
        mine = same[same["study"] == study]
        if mine.empty:
            raise ConfigError("--study", f"study {study!r} was run on another stream (not "
                                         f"{benchmark} with {num_tasks} tasks)")
        chosen = [study]
    else:
        searched = same[same["searched"].map(lambda keys: "order" in keys).astype(bool)]
        chosen = sorted(searched["study"].unique())
    out = {}
    for name in chosen:
        done = same[(same["study"] == name) & (same["status"] == "ok") & same["acc"].notna()]
        if done.empty:
            if study is not None:
                raise ConfigError("--study", f"study {study!r} has no finished trial yet")
            continue
        out[f"tuned:{name}"] = done.sort_values("acc", ascending=False)["order"].iloc[0]
    return out


# -- runs and comparison --------------------------------------------------------------------
def specs(template: RunSpec, seeds: Sequence[int], cands: Sequence[Candidate]) -> list[RunSpec]:
    """One run per (candidate order, seed) in the experiment ``<experiment>-curriculum``."""
    from dataclasses import replace

    name = template.experiment + SUFFIX
    return [replace(template, experiment=name, seed=seed, order=c.order)
            for c in cands for seed in seeds]


def compare(output: str | Path, experiment: str, strategy: str,
            cands: Sequence[Candidate],
            confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per candidate: test ACC/BWT over seeds, and the rank and percentile among the
    random orders by validation ACC (``acc_val``).

    Returns:
        ``(table, per_run)``: one row per candidate (best ACC first), and the per-run
        metrics with a ``label`` column.
    """
    per_run = analysis.run_metrics(output, metrics=["acc", "bwt", "fwt"],
                                   experiment=experiment)
    per_run = per_run[per_run["strategy"] == strategy]
    label = {c.text: c.label for c in cands}
    per_run = per_run[per_run["order"].isin(label)].assign(label=per_run["order"].map(label))
    if per_run.empty:
        raise ConfigError("output", f"no runs of {strategy!r} in {experiment!r} to compare")
    per_run = per_run.merge(_val_acc(output, experiment), on="run_id", how="left")
    per_run["acc_val"] = per_run["acc_val"].fillna(per_run["acc"])  # no validation rows
    table = analysis.summarize(per_run, by=["label", "order"],
                               metrics=["acc", "bwt", "fwt", "acc_val"], confidence=confidence)
    sel = table["acc_val"]
    table["acc_rank"] = sel.rank(ascending=False, method="min").astype(int)
    rand = sel[table["label"].str.contains("random-")].to_numpy()
    table["acc_vs_random"] = [float((rand < a).mean()) if len(rand) else np.nan for a in sel]
    table = table.sort_values(["acc_rank", "label"], ignore_index=True)
    return table, per_run


def _val_acc(output: str | Path, experiment: str) -> pd.DataFrame:
    """``run_id, acc_val``: ACC of each run's validation R (empty when there is none)."""
    try:
        val = analysis.run_metrics(output, metrics=["acc"], experiment=experiment, split="val")
    except ConfigError:  # results written before validation splits existed
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "acc_val": pd.Series(dtype=float)})
    return val[["run_id", "acc"]].rename(columns={"acc": "acc_val"})


def _runs_of(output: str | Path, experiment: str, strategy: str,
             order: Sequence[int]) -> pd.DataFrame:
    """The finished runs' metrics (test ACC) of ``strategy`` learning ``order``."""
    per_run = analysis.run_metrics(output, metrics=["acc"], experiment=experiment)
    return per_run[(per_run["strategy"] == strategy)
                   & (per_run["order"] == ",".join(map(str, order)))]


def val_by_seed(output: str | Path, experiment: str, strategy: str,
                order: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """Validation ACC of ``order``'s run with each of ``seeds`` (in that order; NaN for a
    seed without a finished run). A store without validation rows gives test ACC, as
    :func:`compare` ranks it."""
    runs = _val_acc(output, experiment)
    per_run = _runs_of(output, experiment, strategy, order).merge(runs, on="run_id", how="left")
    value = per_run["acc_val"].fillna(per_run["acc"])
    by_seed = dict(zip(per_run["seed"].astype(int), value))
    return np.array([by_seed.get(int(s), np.nan) for s in seeds], dtype=float)


def val_steps_by_seed(output: str | Path, experiment: str, strategy: str,
                      order: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """``[len(seeds), T + 1]``: the validation ACC over all T tasks after each step of
    ``order``'s run with each seed (the row means of its validation R; step 0 is the
    untrained model, the last step the run's ACC); NaN rows for a seed without a finished
    run. A store without validation rows gives the test R's, as :func:`val_by_seed`.

    Example:
        steps = val_steps_by_seed("results/q", "q-curriculum", "naive", (2, 0, 1), [0, 1])
    """
    from llray.results import load_r_matrix, r_matrix_of

    T = len(order)
    per_run = _runs_of(output, experiment, strategy, order)
    out = np.full((len(seeds), T + 1), np.nan)
    if per_run.empty:
        return out
    rows = load_r_matrix(output, experiment=experiment)
    rows = rows[rows["run_id"].isin(set(per_run["run_id"]))]
    split = "val" if "split" in rows and (rows["split"] == "val").any() else "test"
    where = {int(s): k for k, s in enumerate(seeds)}
    for run_id, seed in zip(per_run["run_id"], per_run["seed"].astype(int)):
        if seed in where and (rows["run_id"] == run_id).any():
            out[where[seed]] = np.nanmean(r_matrix_of(rows, run_id, split), axis=1)
    return out


def write_search(output: str | Path, strategy: str, searched: pd.DataFrame) -> Path:
    """``OUTPUT/curriculum/<strategy>/search.parquet``: the orders a search ran (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llray.taskonomy import write_atomically

    where = Path(output) / "curriculum" / strategy
    where.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(searched.assign(strategy=strategy), preserve_index=False)
    write_atomically(where / "search.parquet", lambda f: pq.write_table(table, f))
    return where / "search.parquet"


def format_table(table: pd.DataFrame) -> str:
    """The comparison as aligned text."""
    def ci(r: Any, m: str) -> str:
        if not np.isfinite(r[m]):
            return "n/a"
        half = r[f"{m}_ci_high"] - r[m]
        return f"{r[m]:+.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else "")

    rows = [[str(r["acc_rank"]), r["label"], r["order"].replace(",", " "), str(int(r["n"])),
             ci(r, "acc_val"), ci(r, "acc"), ci(r, "bwt"),
             "-" if not np.isfinite(r["acc_vs_random"]) else f"{100 * r['acc_vs_random']:.0f}%"]
            for _, r in table.iterrows()]
    head = ["rank (val)", "order label", "order", "seeds", "val ACC", "test ACC", "test BWT",
            "beats random (val)"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [head, ["-" * w for w in widths], *rows]]
    return "\n".join(lines + ["", "mean ± half-width of the 95% t-interval over seeds; orders "
                                  "are ranked on the validation split and reported on the test "
                                  "split; 'beats random': share of the random orders with lower "
                                  "validation ACC"])


def summary_line(table: pd.DataFrame) -> str:
    """How much the order mattered: spread of ACC over all the orders tried."""
    accs = table["acc"].to_numpy(dtype=float)
    best, worst = table.iloc[0], table.iloc[-1]
    return (f"test ACC over {len(table)} orders: {np.nanmin(accs):.3f} .. "
            f"{np.nanmax(accs):.3f} (spread {np.nanmax(accs) - np.nanmin(accs):.3f}); best on "
            f"validation: {best['label']}, worst: {worst['label']}")


def plot(table: pd.DataFrame, per_run: pd.DataFrame, title: str, dpi: int = 100) -> bytes:
    """PNG: ACC and BWT of every order (dots: seeds; bar: t-interval), random in grey."""
    from matplotlib.figure import Figure

    labels = list(table["label"])
    fig = Figure(figsize=(3.5 + 0.45 * len(labels), 6.2), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(labels))
    for ax, m in zip(axes, ("acc", "bwt")):
        for i, lab in enumerate(labels):
            random_only = all(p.startswith("random-") for p in lab.split(" = "))
            color = "#8c8c8c" if random_only else "#d62728" if "tuned" in lab else "#1f77b4"
            vals = per_run.loc[per_run["label"] == lab, m].to_numpy(dtype=float)
            ax.scatter(np.full(len(vals), i), vals, s=14, color=color, alpha=0.6, zorder=3)
            r = table.iloc[i]
            lo, hi = r[f"{m}_ci_low"], r[f"{m}_ci_high"]
            if np.isfinite(lo):
                ax.vlines(i, lo, hi, color=color, lw=2)
            ax.scatter([i], [r[m]], marker="_", s=300, color=color, zorder=4)
        rand = table.loc[table["label"].map(
            lambda s: all(p.startswith("random-") for p in s.split(" = "))), m]
        if len(rand) >= 2:
            ax.axhspan(rand.min(), rand.max(), color="#cccccc", alpha=0.35, lw=0,
                       label="range of the random orders")
            ax.legend(fontsize=7, loc="best")
        ax.set_ylabel(m.upper())
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x, [f"{lab}\n{o.replace(',', '')}" for lab, o in
                           zip(labels, table["order"])], rotation=45, ha="right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write(output: str | Path, strategy: str, table: pd.DataFrame, png: bytes) -> Path:
    """``OUTPUT/curriculum/<strategy>/orders.parquet`` and ``curriculum.png`` (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llray.taskonomy import write_atomically

    where = Path(output) / "curriculum" / strategy
    where.mkdir(parents=True, exist_ok=True)
    orders = pa.Table.from_pandas(table.assign(strategy=strategy), preserve_index=False)
    write_atomically(where / "orders.parquet", lambda f: pq.write_table(orders, f))
    write_atomically(where / "curriculum.png", lambda f: f.write(png))
    return where
