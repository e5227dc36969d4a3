"""HTML report: one heatmap per strategy, valid embedded PNGs, study figures, CLI, bad input."""

import base64
import struct
from html.parser import HTMLParser

import numpy as np
import pytest

from llray import html_report
from llray.cli import main
from llray.learner import RunResult
from llray.report import report
from llray.results import RunMeta, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(out, run_id, experiment, strategy, seed, order, config, rng, stop_after=None):
    T = len(order)
    R = rng.random((T + 1, T))
    status = "ok"
    if stop_after is not None:  # a trial a scheduler stopped: NaN rows after its last task
        R[stop_after + 1:], status = np.nan, "stopped"
    write_run(out, RunMeta(run_id, experiment, strategy, "digits", "domain", seed, order, config),
              RunResult(R, tuple(order), status, np.full(T, 10), 1.0, 1.0, 10))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experiment 'sweep': naive, ewc, joint x 2 seeds; study 'lam': 4 ewc trials and one
    that the scheduler stopped after 2 of 3 tasks."""
    out = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    for strategy in ("naive", "ewc", "joint"):
        for seed in (0, 1):
            _write(out, f"{strategy}{seed}", "sweep", strategy, seed, (2, 0, 1),
                   {"strategy": {"name": strategy, "label": strategy}}, rng)
    for i, lam in enumerate([0.1, 1.0, 10.0, 100.0]):
        order = [(0, 1, 2), (1, 0, 2)][i % 2]
        cfg = {"strategy": {"name": "ewc", "label": "ewc", "lambda_": lam},
               "tuning": {"study": "lam", "params": {"ewc.lambda_": lam, "order": list(order)}}}
        _write(out, f"trial{i}", "lam", "ewc", 0, order, cfg, rng)
    cfg = {"strategy": {"name": "ewc", "label": "ewc", "lambda_": 1e3},
           "tuning": {"study": "lam", "params": {"ewc.lambda_": 1e3, "order": [0, 1, 2]}}}
    _write(out, "trial4", "lam", "ewc", 0, (0, 1, 2), cfg, rng, stop_after=2)
    return out


@pytest.fixture(scope="module")
def page(store, tmp_path_factory):
    sections = html_report.build(store, dpi=50)
    path = html_report.write_html(store, tmp_path_factory.mktemp("html") / "r.html", sections)
    return sections, path.read_text()


class _Figures(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.current = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.current = {**attrs, "imgs": []}
            self.figures.append(self.current)
        elif tag == "img" and self.current is not None:
            self.current["imgs"].append(attrs["src"])
        elif tag in ("link", "script") or (tag == "img" and self.current is None):
            raise AssertionError(f"page refers to something outside it: <{tag} {attrs}>")

    def handle_endtag(self, tag):
        if tag == "figure":
            self.current = None


def _png_size(src):
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_heatmap_per_strategy_with_valid_pngs(page):
    _, text = page
    parser = _Figures()
    parser.feed(text)
    heat = [f for f in parser.figures if f["data-kind"] == "heatmap"]
    keys = sorted((f["data-experiment"], f["data-strategy"]) for f in heat)
    assert keys == [("lam", "ewc"), ("sweep", "ewc"), ("sweep", "joint"), ("sweep", "naive")]
    for f in parser.figures:
        assert len(f["imgs"]) == 1
        w, h = _png_size(f["imgs"][0])
        assert w > 50 and h > 50
    kinds = {(f["data-experiment"], f["data-kind"]) for f in parser.figures}
    assert {("sweep", "curves"), ("sweep", "bars"), ("lam", "params"), ("lam", "bars")} <= kinds
    assert ("sweep", "params") not in kinds  # only studies get parameter plots
    assert ("lam", "importance") not in kinds  # 4 finished trials are too few


def test_captions_and_bounds(page):
    sections, text = page
    sweep = next(s for s in sections if s.experiment == "sweep")
    caps = [f.caption for f in sweep.figures if f.kind == "heatmap"]
    assert all("mean over 2 runs" in c and "row 0" in c for c in caps)
    assert not sweep.notes  # naive and joint present: both bounds drawn
    lam = next(s for s in sections if s.experiment == "lam")
    assert any("no naive" in n for n in lam.notes)
    assert "<table>" in text and "study lam" in text


def test_stopped_trial_is_counted_in_the_table_and_left_out_of_the_means(page, store):
    from llray import analysis

    sections, text = page
    lam = next(s for s in sections if s.experiment == "lam")
    row = lam.table.iloc[0]
    assert (row["runs"], row["ok"], row["stopped"]) == (5, 4, 1)
    assert any("1 run stopped early" in n for n in lam.notes)
    heat = next(f for f in lam.figures if f.kind == "heatmap")
    assert "mean over 4 runs" in heat.caption
    params = next(f for f in lam.figures if f.kind == "params")
    assert "4 of 5 trials, 1 stopped early and not shown" in params.caption
    assert any("need at least 10 finished trials; this study has 4" in n for n in lam.notes)
    bars = next(f for f in lam.figures if f.kind == "bars")
    assert "over the study's 4 finished configurations" in bars.caption
    assert "not a confidence interval" in bars.caption
    assert "<th>stopped</th>" in text
    mean = analysis.mean_r(store, by=["experiment"])
    first = mean[(mean.experiment == "lam") & (mean.step == 1) & (mean.eval_pos == 1)]
    assert first["n"].item() == 4


def test_importances_from_trials_rank_a_parameter_that_matters():
    import pandas as pd

    rng = np.random.default_rng(0)
    lam = 10 ** rng.uniform(-1, 3, 40)
    noise = rng.uniform(0, 1, 40)
    trials = pd.DataFrame({"lam": lam, "noise": noise, "acc": np.log10(lam) / 3})
    imp = html_report._trial_importances(trials, ["lam", "noise"])
    assert imp["lam"] > 0.9 > imp["noise"]


def test_cli_html_and_png(store, tmp_path, capsys):
    table = report(store)
    html_path, png_dir = tmp_path / "r.html", tmp_path / "figs"
    assert main(["report", str(store), "--html", str(html_path), "--png", str(png_dir)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == table.strip()  # the table is printed exactly as before
    pngs = sorted(png_dir.glob("*.png"))
    parser = _Figures()
    parser.feed(html_path.read_text())
    assert len(pngs) == len(parser.figures) == 9  # 4 heatmaps, 2 curves, 2 bars, 1 study
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_bad_input_exits_2(tmp_path, store, capsys):
    assert main(["report", str(tmp_path), "--html", str(tmp_path / "r.html")]) == 2
    assert "no results" in capsys.readouterr().err
    assert main(["report", str(store), "--html", str(tmp_path / "missing" / "r.html")]) == 2
    assert "--html" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_importances_prefer_the_studys_optuna_storage(tmp_path):
    import optuna
    import pandas as pd
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (tmp_path / "optuna").mkdir()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna" / "s.journal")))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + 0 * t.suggest_float("y", 0, 1), 20)
    imp, source = html_report.importances(tmp_path, "s", pd.DataFrame({"acc": [0.1]}), ["x"])
    assert source.startswith("Optuna storage s.journal, 20 complete")
    assert imp["x"] > 0.9 > imp["y"]
    imp, source = html_report.importances(tmp_path, "other", pd.DataFrame(
        {"acc": [0.1, 0.5, 0.9], "x": [1.0, 5.0, 9.0]}), ["x"])
    assert source.startswith("from the runs table, 3 finished") and set(imp) == {"x"}
