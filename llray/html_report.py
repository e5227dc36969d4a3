"""``llray report DIR --html FILE``: one self-contained page of figures from the store.

Per experiment:

- the summary table of :mod:`llray.report` (mean ± std per strategy, naive/joint bounds,
  runs per status: ok, diverged, stopped early by a tuning scheduler, failed);
- an R heatmap per strategy: mean over its runs (seeds, orders) of R ``[T + 1, T]``,
  row 0 (random init) included, columns = the j-th task of the order;
- accuracy of each task over time: one panel per strategy, one line per task;
- ACC, BWT and FWT per strategy with Student-t 95% intervals over the runs, the naive
  (lower) and joint (upper) bounds drawn as reference lines;
- for a study (``llray tune``): each searched parameter against the objectives, and
  the parameter importances (``optuna.importance`` on the study's Optuna storage when
  there is one, else on the trials in the runs table).

Runs a tuning scheduler stopped early are counted in the table and left out of every
mean (heatmaps, curves, bars), as diverged and failed runs are.

Images are PNGs drawn with matplotlib's Agg renderer (no display, no pyplot state) and
embedded as base64 ``data:`` URIs, so the page needs no other file; ``--png DIR`` writes
the same figures as files.

Example:
    write_html("results/quickstart", "report.html")
    write_pngs("results/quickstart", "figures/")
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llray import analysis
from llray.errors import ConfigError

BOUNDS = {"naive": "lower", "joint": "upper"}
CONFIRM = "-confirm"  # experiment of a study's confirmation runs (llray.tuning.confirm)
MIN_IMPORTANCE_TRIALS = 10  # fANOVA on fewer finished trials is noise
FANOVA_TREES = 32  # half of Optuna's default (64), for speed
_BAR_METRICS = ("acc", "bwt", "fwt")
_COLORS = {"lower": "#d62728", "upper": "#2ca02c", "": "#1f77b4"}


@dataclass
class Figure:
    """One rendered figure: what it shows and its PNG bytes."""

    name: str  # file stem, unique in a report
    kind: str  # heatmap | curves | bars | params | importance
    experiment: str
    caption: str
    png: bytes
    strategy: str = ""

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    """One experiment (or study): its summary table and figures."""

    experiment: str
    study: bool
    table: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- data -----------------------------------------------------------------------------------
def _registered(config: Any) -> str:
    try:
        name = json.loads(config)["strategy"]["name"]
    except (TypeError, ValueError, KeyError):
        return ""
    return name if isinstance(name, str) else ""


def _runs(output: str | Path) -> pd.DataFrame:
    from llray.results import load_runs

    return load_runs(output, columns=["run_id", "experiment", "strategy", "status", "config"])


def build(output: str | Path, dpi: int = 100) -> list[Section]:
    """Every section of the report of ``output``, figures rendered.

    Raises:
        ConfigError: no results, or a file that is not an llray results file (named).
    """
    from llray.report import summary_table

    per_run = analysis.run_metrics(output)
    runs = _runs(output)
    bound = {(r.experiment, r.strategy): BOUNDS.get(_registered(r.config), "")
             for r in runs.itertuples(index=False)}
    per_run["bound"] = [bound.get(k, BOUNDS.get(k[1], "")) for k in
                        zip(per_run["experiment"], per_run["strategy"])]
    mean = analysis.mean_r(output, by=["experiment", "strategy"])
    full_runs = _full_runs(output)
    table = summary_table(full_runs) if not full_runs.empty else pd.DataFrame()
    sections = []
    experiments = set(per_run["experiment"])
    for exp, group in per_run.groupby("experiment", sort=True):
        roles = _confirm_roles(runs, exp)
        if roles is not None:  # llray tune --confirm: best and baseline apart
            group = group.assign(strategy=group["run_id"].map(roles).fillna(group["strategy"]))
            mean = _relabelled_mean(output, mean, exp, roles)
        study = bool(group["study"].notna().any()) and roles is None
        sec = Section(exp, study, table[table["experiment"] == exp] if len(table) else table)
        kept = group[~group["status"].isin(["stopped"])]  # mean_r leaves them out too
        if len(kept) < len(group):
            n = len(group) - len(kept)
            sec.notes.append(f"{exp}: {n} run{'s' * (n != 1)} stopped early by the tuning "
                             "scheduler: counted in the table, left out of every mean.")
        if len(kept):
            sec.figures += _heatmaps(exp, kept, mean[mean["experiment"] == exp], dpi)
            sec.figures += _curves(exp, kept, mean[mean["experiment"] == exp], dpi)
        confirmed = study and exp + CONFIRM in experiments
        if confirmed:
            sec.notes.append(f"{exp}: the best configuration and the baseline re-run on fresh "
                             f"seeds are in section {exp + CONFIRM} (means and intervals over "
                             f"seeds); no bars over this study's configurations.")
        else:
            sec.figures += _bars(exp, group, sec.notes, dpi, over_configs=study)
        if study:
            sec.figures += _study_figures(output, exp, group, runs, sec.notes, dpi)
        sections.append(sec)
    return sorted(sections, key=lambda sec: (sec.study, sec.experiment))  # studies last


def _confirm_roles(runs: pd.DataFrame, exp: str) -> dict[str, str] | None:
    """run id -> "<strategy> (best)" / "(baseline)" for a confirmation experiment, else None."""
    if not exp.endswith(CONFIRM):
        return None
    roles = {}
    for r in runs[runs["experiment"] == exp].itertuples(index=False):
        try:
            role = (json.loads(r.config).get("tuning") or {}).get("confirm")
        except (TypeError, ValueError, AttributeError):
            role = None
        if role:
            roles[r.run_id] = f"{r.strategy} ({role})"
    return roles or None


def _relabelled_mean(output: str | Path, mean: pd.DataFrame, exp: str,
                     roles: dict[str, str]) -> pd.DataFrame:
    """Mean R of a confirmation experiment per role instead of per strategy."""
    from llray.results import load_r_matrix

    r = load_r_matrix(output, columns=["run_id", "step", "eval_pos", "accuracy"],
                      experiment=exp)
    r = r[r["run_id"].isin(list(roles)) & np.isfinite(r["accuracy"])]
    r["strategy"] = r["run_id"].map(roles)
    r["num_tasks"] = r.groupby("run_id")["eval_pos"].transform("max").astype("int32")
    g = r.groupby(["strategy", "num_tasks", "step", "eval_pos"])["accuracy"]
    cells = g.agg(accuracy="mean", n="count").reset_index().assign(experiment=exp)
    return pd.concat([mean[mean["experiment"] != exp], cells], ignore_index=True)


def _full_runs(output: str | Path) -> pd.DataFrame:
    from llray.results import load_runs

    return load_runs(output)


# -- drawing helpers ------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), layout="constrained")


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _slug(*parts: str) -> str:
    text = "-".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "figure"


def _strategies(group: pd.DataFrame) -> list[str]:
    """Strategies of an experiment: lower bound first, upper bound last, others by name."""
    rank = {"lower": 0, "": 1, "upper": 2}
    pairs = group[["strategy", "bound"]].drop_duplicates("strategy")
    return [s for _, s in sorted((rank[b], s) for s, b in pairs.itertuples(index=False))]


def _column_labels(runs: pd.DataFrame, T: int) -> tuple[list[str], str]:
    """Task ids when all runs share one order, else positions in the order."""
    orders = runs.loc[runs["num_tasks"] == T, "order"].dropna().unique()
    if len(orders) == 1:
        return [f"t{x}" for x in str(orders[0]).split(",")], "task (in the order learned)"
    return [f"#{j}" for j in range(1, T + 1)], f"j-th task of the order ({len(orders)} orders)"


def _matrix(cells: pd.DataFrame, T: int) -> np.ndarray:
    R = np.full((T + 1, T), np.nan)
    R[cells["step"].to_numpy(), cells["eval_pos"].to_numpy() - 1] = cells["accuracy"].to_numpy()
    return R


# -- figures --------------------------------------------------------------------------------
def _heatmaps(exp: str, group: pd.DataFrame, mean: pd.DataFrame, dpi: int) -> list[Figure]:
    out = []
    for strategy in _strategies(group):
        runs = group[group["strategy"] == strategy]
        cells_s = mean[mean["strategy"] == strategy]
        for T in sorted(cells_s["num_tasks"].unique()):
            R = _matrix(cells_s[cells_s["num_tasks"] == T], int(T))
            n = int((runs["num_tasks"] == T).sum())
            labels, xlabel = _column_labels(runs, int(T))
            fig = _new_figure(1.2 + 0.55 * T, 1.0 + 0.42 * (T + 1))
            ax = fig.add_subplot()
            im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            if T <= 12:
                for (i, j), v in np.ndenumerate(R):
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 else "black")
            ax.set_xticks(range(int(T)), labels, fontsize=8)
            ax.set_yticks(range(int(T) + 1), ["init"] + [str(i) for i in range(1, int(T) + 1)],
                          fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("tasks learned", fontsize=8)
            ax.set_title(f"R: {strategy}", fontsize=10)
            fig.colorbar(im, ax=ax, shrink=0.8, label="test accuracy")
            suffix = f"{T} tasks, " if cells_s["num_tasks"].nunique() > 1 else ""
            caption = (f"R heatmap of {strategy} ({suffix}mean over {n} run{'s' * (n != 1)}); "
                       "row 0 is the random initialisation, the diagonal the task just learned.")
            name = _slug(exp, "heatmap", strategy, f"T{T}" if suffix else "")
            out.append(Figure(name, "heatmap", exp, caption, _png(fig, dpi), strategy))
    return out


def _curves(exp: str, group: pd.DataFrame, mean: pd.DataFrame, dpi: int) -> list[Figure]:
    strategies = _strategies(group)
    T = int(group["num_tasks"].max())
    cols = min(len(strategies), 3)
    rows = math.ceil(len(strategies) / cols)
    fig = _new_figure(3.4 * cols + 1.2, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    cmap = _cmap(T)
    for k, strategy in enumerate(strategies):
        ax = axes[k // cols][k % cols]
        runs = group[group["strategy"] == strategy]
        cells = mean[(mean["strategy"] == strategy) & (mean["num_tasks"] == T)]
        R = _matrix(cells, T)
        labels, _ = _column_labels(runs, T)
        for j in range(T):
            ax.plot(range(T + 1), R[:, j], color=cmap(j), lw=1.4, label=labels[j])
            ax.plot([j + 1], [R[j + 1, j]], "o", color=cmap(j), ms=3.5)
        ax.set_title(strategy, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(T + 1))
        ax.set_xlabel("tasks learned", fontsize=8)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("test accuracy", fontsize=8)
    for k in range(len(strategies), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="task",
               title_fontsize=7)
    caption = ("Accuracy of each task over time (mean over runs): one line per task, a dot "
               "where it was learned; a line falling after its dot is forgetting.")
    return [Figure(_slug(exp, "curves"), "curves", exp, caption, _png(fig, dpi))]


def _cmap(T: int) -> Any:
    from matplotlib import colormaps

    base = colormaps["tab10" if T <= 10 else "tab20"]
    return lambda j: base(j % base.N)


def _bars(exp: str, group: pd.DataFrame, notes: list[str], dpi: int,
          over_configs: bool = False) -> list[Figure]:
    """ACC/BWT/FWT per strategy. Over runs of one configuration (seeds): mean and t-interval.
    ``over_configs`` (a study's trials, each its own configuration): mean, and the range
    (min to max) over configurations, which is not a confidence interval."""
    strategies = _strategies(group)
    stats = analysis.summarize(group, by="strategy", metrics=_BAR_METRICS).set_index("strategy")
    if over_configs:
        ok = group[group["status"].isin(["ok"]) | group["status"].isna()]
        spread = ok.groupby("strategy")[list(_BAR_METRICS)].agg(["min", "max"])
        for m in _BAR_METRICS:
            stats[f"{m}_ci_low"] = spread[(m, "min")].reindex(stats.index)
            stats[f"{m}_ci_high"] = spread[(m, "max")].reindex(stats.index)
    bound = dict(zip(group["strategy"], group["bound"]))
    fig = _new_figure(3 * max(2.4, 0.5 * len(strategies) + 1.0), 3.2)
    axes = fig.subplots(1, 3)
    x = np.arange(len(strategies))
    for ax, m in zip(axes, _BAR_METRICS):
        mean = stats.loc[strategies, m].to_numpy(dtype=float)
        low = mean - stats.loc[strategies, f"{m}_ci_low"].to_numpy(dtype=float)
        high = stats.loc[strategies, f"{m}_ci_high"].to_numpy(dtype=float) - mean
        err = np.nan_to_num(np.vstack([low, high]))
        colors = [_COLORS[bound.get(s, "")] for s in strategies]
        ax.bar(x, np.nan_to_num(mean), yerr=err, color=colors, capsize=3, alpha=0.9)
        for s, v in zip(strategies, mean):
            b = bound.get(s, "")
            if b and np.isfinite(v):
                ax.axhline(v, color=_COLORS[b], ls="--", lw=1,
                           label=f"{'naive (lower)' if b == 'lower' else 'joint (upper)'}")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, strategies, rotation=30, ha="right", fontsize=8)
        ax.set_title(m.upper() + (" over configurations" if over_configs else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    present = {bound.get(s, "") for s in strategies}
    missing = [n for n, b in (("naive (lower bound)", "lower"), ("joint (upper bound)", "upper"))
               if b not in present]
    caption = ("ACC, BWT and FWT per strategy: mean over runs with a Student-t 95% interval "
               "(runs that diverged, failed or were stopped early are left out); dashed lines: "
               "the naive and joint bounds.")
    if over_configs:
        n = int((group["status"].isin(["ok"]) | group["status"].isna()).sum())
        caption = (f"ACC, BWT and FWT over the study's {n} finished configurations (each trial "
                   "its own hyperparameters): the mean over configurations and the range from "
                   "the worst to the best, not a confidence interval; run llray tune --confirm "
                   "K to measure the best configuration on fresh seeds.")
    if missing:
        note = f"{exp}: no {' and no '.join(missing)} runs, so that reference line is missing."
        notes.append(note)
        caption += " " + note.split(": ", 1)[1]
    return [Figure(_slug(exp, "bars"), "bars", exp, caption, _png(fig, dpi))]


# -- studies --------------------------------------------------------------------------------
def study_params(configs: Sequence[Any]) -> list[str]:
    """The searched keys of a study's trials, in first-seen order."""
    keys: dict[str, None] = {}
    for c in configs:
        try:
            params = (json.loads(c).get("tuning") or {}).get("params") or {}
        except (TypeError, ValueError, AttributeError):
            continue
        keys.update(dict.fromkeys(params))
    return list(keys)


def _study_figures(output: str | Path, exp: str, group: pd.DataFrame, runs: pd.DataFrame,
                   notes: list[str], dpi: int) -> list[Figure]:
    configs = runs[runs["experiment"] == exp].set_index("run_id")["config"]
    keys = study_params(configs)
    if not keys:
        return []
    trials = analysis.add_params(group, keys, group["run_id"].map(configs))
    fig = param_figure(exp, trials, keys, study_log_keys(configs))
    stopped = int(trials["status"].isin(["stopped"]).sum()) if "status" in trials else 0
    finished = int(np.isfinite(trials["acc"]).sum())
    hidden = f", {stopped} stopped early and not shown" if stopped else ""
    caption = (f"Study {exp}: each searched parameter against ACC and BWT, one dot per "
               f"finished trial ({finished} of {len(trials)} trials{hidden}; circled: the best "
               f"ACC). Log-uniform parameters on log axes; orders sorted by ACC, best first.")
    out = [Figure(_slug(exp, "params"), "params", exp, caption, _png(fig, dpi))]
    if finished < MIN_IMPORTANCE_TRIALS:
        notes.append(f"{exp}: parameter importances need at least {MIN_IMPORTANCE_TRIALS} "
                     f"finished trials; this study has {finished}, so none are shown.")
        return out
    importance, source = importances(output, exp, trials, keys)
    if importance:
        out.append(_importance_plot(exp, importance, source, dpi))
    else:
        notes.append(f"{exp}: parameter importances need finished trials that differ in a "
                     f"parameter ({source}).")
    return out


def study_log_keys(configs: Sequence[Any]) -> set[str]:
    """Searched keys a study sampled on a log scale (``tuning.log_keys`` of its runs)."""
    keys: set[str] = set()
    for c in configs:
        try:
            keys.update((json.loads(c).get("tuning") or {}).get("log_keys") or [])
        except (TypeError, ValueError, AttributeError):
            continue
    return keys


MAX_TICK_LABELS = 12  # categorical labels per axis; more categories: every k-th is named


def _categories(values: pd.Series, acc: pd.Series) -> list[str]:
    """Categories as text, best mean ACC first (orders ``2,0,1`` as ``2-0-1``)."""
    text = values.astype(str)
    means = acc.groupby(text).mean().sort_values(ascending=False, na_position="last")
    return list(means.index)


def _label(cat: str) -> str:
    return cat.replace(",", "-") if "," in cat else cat


def param_figure(exp: str, trials: pd.DataFrame, keys: list[str],
                 log_keys: set[str] = frozenset()) -> Any:
    """The matplotlib figure of each searched parameter against ACC and BWT.

    Numeric parameters on a log axis when the study sampled them log-uniformly (or, for
    stores without that record, when they span two decades); categorical ones (orders,
    choices) sorted by mean ACC, at most :data:`MAX_TICK_LABELS` named, rotated, in a
    column wide enough for them.
    """
    objectives = ["acc", "bwt"]
    trials = trials[np.isfinite(trials["acc"].to_numpy(dtype=float))]  # finished only
    widths = []
    cats_of: dict[str, list[str]] = {}
    for key in keys:
        if pd.api.types.is_numeric_dtype(trials[key]):
            widths.append(2.6)
        else:
            cats_of[key] = _categories(trials[key], trials["acc"])
            widths.append(max(2.6, 0.13 * min(len(cats_of[key]), 60) + 0.8))
    fig = _new_figure(sum(widths) + 0.6, 2.3 * len(objectives) + 0.6)
    axes = fig.subplots(len(objectives), len(keys), squeeze=False,
                        gridspec_kw={"width_ratios": widths})
    best = trials["acc"].idxmax() if trials["acc"].notna().any() else None
    for c, key in enumerate(keys):
        values = trials[key]
        if key in cats_of:
            cats = cats_of[key]
            x = values.astype(str).map({v: i for i, v in enumerate(cats)}).to_numpy(dtype=float)
        else:
            x = values.to_numpy(dtype=float)
        log = key in log_keys or (key not in cats_of and not log_keys and np.nanmin(x) > 0
                                  and np.nanmax(x) / np.nanmin(x) >= 100)
        for r, m in enumerate(objectives):
            ax = axes[r][c]
            ax.scatter(x, trials[m], s=16, alpha=0.75, color="#1f77b4")
            if best is not None:
                ax.scatter([x[trials.index.get_loc(best)]], [trials.loc[best, m]], s=60,
                           facecolors="none", edgecolors="#d62728", label="best ACC")
            if log:
                from matplotlib.ticker import NullLocator

                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(NullLocator())  # decades only: 3x faster to lay out
            ax.tick_params(labelsize=7)
            if key in cats_of:
                step = math.ceil(len(cats) / MAX_TICK_LABELS)
                shown = list(range(0, len(cats), step))
                ax.set_xticks(shown, [_label(cats[i]) if r == len(objectives) - 1 else ""
                                      for i in shown], rotation=90, fontsize=6,
                              family="monospace")
                ax.set_xlim(-0.7, len(cats) - 0.3)
            elif r < len(objectives) - 1:
                ax.tick_params(labelbottom=False)
            ax.grid(alpha=0.3)
            if r == len(objectives) - 1:
                named = "" if key not in cats_of or len(cats) <= MAX_TICK_LABELS else \
                    f" (1 in {step} of {len(cats)} named)"
                ax.set_xlabel(key + (" (log)" if log else "") + named, fontsize=8)
            if c == 0:
                ax.set_ylabel(m.upper(), fontsize=8)
    return fig


def importances(output: str | Path, study: str, trials: pd.DataFrame,
                keys: Sequence[str]) -> tuple[dict[str, float], str]:
    """Parameter importances (fANOVA) and where they come from.

    From the study's Optuna storage ``OUTPUT/optuna/STUDY.journal`` when it exists
    (the optuna backend writes it), else from an in-memory Optuna study rebuilt from
    the trials' ACC and searched values in the runs table.
    """
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        journal = Path(output) / "optuna" / f"{study}.journal"
        if journal.is_file():
            try:
                found, n = _optuna_importances(journal, study)
                return found, f"Optuna storage {journal.name}, {n} complete trials"
            except (ValueError, RuntimeError, KeyError) as e:
                source = f"Optuna storage unusable: {e}; from the runs table"
        else:
            source = "from the runs table"
        n = int(np.isfinite(trials["acc"]).sum())
        return _trial_importances(trials, keys), f"{source}, {n} finished trials"
    finally:
        optuna.logging.set_verbosity(level)


def _optuna_importances(journal: Path, name: str) -> tuple[dict[str, float], int]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}, len(done)
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    return dict(found), len(done)


def _trial_importances(trials: pd.DataFrame, keys: Sequence[str]) -> dict[str, float]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = trials[np.isfinite(trials["acc"])]
    dists, columns = {}, {}
    for key in keys:
        values = done[key]
        if values.isna().any() or values.nunique() < 2:
            continue
        if pd.api.types.is_numeric_dtype(values):
            lo, hi = float(values.min()), float(values.max())
            dists[key] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
            columns[key] = values.astype(float)
        else:
            columns[key] = values.astype(str)
            dists[key] = CategoricalDistribution(sorted(columns[key].unique()))
    if not dists or len(done) < 2:
        return {}
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(params={k: columns[k].loc[i] for k in dists},
                                  distributions=dists, value=float(done.loc[i, "acc"]))
        for i in done.index
    ])
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def _importance_plot(exp: str, importance: dict[str, float], source: str, dpi: int) -> Figure:
    names = list(importance)[::-1]
    fig = _new_figure(5.5, 0.6 + 0.35 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, [importance[n] for n in names], color="#9467bd")
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (fANOVA, share of ACC variance)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    caption = f"Study {exp}: parameter importances for ACC ({source})."
    return Figure(_slug(exp, "importance"), "importance", exp, caption, _png(fig, dpi))


# -- output ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;border:1px solid #eee;padding:.5em;background:#fff}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.8em;color:#555;max-width:520px;margin-top:.3em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;font-size:.9em}
"""


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p class='meta'>no runs table</p>"

    def fmt(mean: float, std: float) -> str:
        if not np.isfinite(mean):
            return "n/a"
        return f"{mean:.3f}" + (f" ± {std:.3f}" if np.isfinite(std) else "")

    head = ["strategy", "bound", "runs", "ok", "diverged", "stopped", "failed", "ACC", "BWT",
            "FWT", "forgetting"]
    rows = []
    for r in table.itertuples(index=False):
        cells = [r.strategy, r.bound, r.runs, r.ok, r.diverged, r.stopped, r.failed,
                 fmt(r.acc_mean, r.acc_std), fmt(r.bwt_mean, r.bwt_std),
                 fmt(r.fwt_mean, r.fwt_std), fmt(r.forgetting_mean, r.forgetting_std)]
        rows.append("<tr>" + "".join(
            f"<td{' class=l' if i < 2 else ''}>{html.escape(str(c))}</td>"
            for i, c in enumerate(cells)) + "</tr>")
    header = "".join(f"<th{' class=l' if i < 2 else ''}>{h}</th>" for i, h in enumerate(head))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _figure_html(f: Figure) -> str:
    attrs = (f'class="{f.kind}" data-kind="{f.kind}" data-experiment="{html.escape(f.experiment)}"'
             f' data-strategy="{html.escape(f.strategy)}" id="{html.escape(f.name)}"')
    return (f"<figure {attrs}><img src=\"{f.data_uri()}\" alt=\"{html.escape(f.caption)}\">"
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")


_HEADINGS = {"heatmap": "R heatmaps", "curves": "Accuracy of each task over time",
             "bars": "ACC, BWT, FWT against the bounds", "params": "Parameters vs objectives",
             "importance": "Parameter importances"}


def render(sections: Sequence[Section], output: str | Path) -> str:
    """The HTML page (a string) of ``sections``."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>llray report: {html.escape(Path(output).name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>llray report: {html.escape(Path(output).name)}</h1>",
             f"<p class='meta'>{len(sections)} experiment(s); generated {when}. "
             "Metrics as in GEM (Lopez-Paz &amp; Ranzato 2017), BWT/FWT divided by T−1. "
             "Every table and figure shows the <b>test split</b> (R on each task's test "
             "data); searches select on the validation split, held out of the training "
             "data.</p>"]
    for sec in sections:
        kind = "study" if sec.study else "experiment"
        parts.append(f"<section data-experiment='{html.escape(sec.experiment)}'>"
                     f"<h2>{kind} {html.escape(sec.experiment)}</h2>")
        parts.append(_table_html(sec.table))
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in sec.notes]
        for kind_ in _HEADINGS:
            figs = [f for f in sec.figures if f.kind == kind_]
            if figs:
                parts.append(f"<h3>{_HEADINGS[kind_]}</h3><div class='figs'>")
                parts += [_figure_html(f) for f in figs]
                parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(output: str | Path, path: str | Path,
               sections: Sequence[Section] | None = None) -> Path:
    """Write the self-contained report page of ``output`` to ``path``."""
    sections = build(output) if sections is None else sections
    path = Path(path)
    _writable(path.parent, "--html")
    path.write_text(render(sections, output), encoding="utf-8")
    return path


def write_pngs(output: str | Path, directory: str | Path,
               sections: Sequence[Section] | None = None) -> list[Path]:
    """Write every figure of the report as ``DIRECTORY/<name>.png``; return the paths."""
    sections = build(output) if sections is None else sections
    directory = Path(directory)
    _writable(directory, "--png", create=True)
    paths = []
    for sec in sections:
        for f in sec.figures:
            p = directory / f"{f.name}.png"
            p.write_bytes(f.png)
            paths.append(p)
    return paths


def check_targets(html_path: str | Path | None, png_dir: str | Path | None) -> None:
    """ConfigError unless the ``--html`` file's folder and the ``--png`` folder are writable."""
    if html_path:
        _writable(Path(html_path).parent, "--html")
    if png_dir:
        _writable(Path(png_dir), "--png", create=True)


def _writable(directory: Path, option: str, create: bool = False) -> None:
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(option, f"cannot create {os.fspath(directory)!r}: {e}") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise ConfigError(option, f"cannot write to {os.fspath(directory)!r}")
