"""The report of a study: every figure a real PNG, an index.html that links them all, the CLI's exits."""

from __future__ import annotations

import html
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from PIL import Image
from typer.testing import CliRunner

import tuner
from tuner.cli import app
from tuner.report import (
    Report,
    epochs_to_target,
    importance_sentences,
    load_stages,
    plot_importance,
    plot_lr_cost,
    plot_lr_curves,
    plot_lr_sensitivity,
    plot_shape,
    write_report,
)
from tuner.report.runs import Run, StageRuns, error_target, objective_label, run_of, trial_costs
from tuner.report.words import lr_time_caption, target_sentence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FIGURES = ("lr_sensitivity", "lr_time", "lr_curves", "shape", "importance")

# Wine, 3 epochs: seconds. The lr range reaches far past what SGD with momentum survives, so some
# trials diverge; 10 shape trials are the fewest the importance analysis accepts.
REPORTED_SPEC = {
    "name": "reported",
    "seed": 0,
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 3, "batch_size": 32},
    "stages": {
        "lr": {"trials": 10, "lr_min": 1e-3, "lr_max": 100.0},
        # No pruner: every shape trial completes, as the importance figure needs.
        "shape": {"trials": 10, "width": [4, 32], "depth": [1, 2], "sampler": "random", "pruner": "none"},
    },
}


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('reported') / 'study.db'}"
    tuner.run_study(tuner.spec_from_dict(REPORTED_SPEC), storage=url, device="cpu")
    return url


@pytest.fixture(scope="module")
def report(storage: str, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return write_report("reported", storage=storage, out=tmp_path_factory.mktemp("report"))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.targets.add(value)


def test_the_tiny_study_has_diverged_and_healthy_lr_trials(storage: str) -> None:
    # The figures below are only meaningful if both kinds exist: check the fixture, not the report.
    trials = optuna.load_study(study_name="reported/lr", storage=storage).trials
    assert any(t.user_attrs.get("diverged") for t in trials)
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("key", PNG_FIGURES)
def test_each_figure_is_a_real_png_of_some_size(report: Report, key: str) -> None:
    path = report.figures[key]
    assert path.suffix == ".png" and path.parent == report.out
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 15_000  # a blank canvas of this size compresses to a few kB
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float) / 255
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels.std() > 0.05  # not one flat colour


def test_optunas_interactive_figures_are_written_with_one_local_plotly(report: Report) -> None:
    for key in ("history_lr", "history_shape", "contour_shape"):
        page = report.figures[key].read_text()
        assert report.figures[key].suffix == ".html"
        assert 'src="plotly.min.js"' in page  # one local copy beside the pages: works offline
    assert (report.out / "plotly.min.js").stat().st_size > 1_000_000


def test_index_links_every_figure_and_every_link_resolves(report: Report) -> None:
    links = _Links()
    links.feed(report.index.read_text())
    assert {path.name for path in report.figures.values()} <= links.targets
    local = {t for t in links.targets if "://" not in t}
    assert all((report.out / target).is_file() for target in local)


def test_index_summarises_each_stage_and_puts_the_diagnosis_beside_the_figures(report: Report, storage: str) -> None:
    page = report.index.read_text()
    lr_study = optuna.load_study(study_name="reported/lr", storage=storage)
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in lr_study.trials)
    n_diverged = sum(bool(t.user_attrs.get("diverged")) for t in lr_study.trials)
    assert f"{n_complete} complete" in page and f"({n_diverged} diverged)" in page
    # The best trial's rate beside its value, and the rate handed on (the robust hand-off may read another).
    best_lr, handed_on = lr_study.best_trial.params["lr"], lr_study.user_attrs["best_lr"]
    assert f"lr {best_lr:.3g}" in page
    assert f"{best_lr:.3g}" == f"{handed_on:.3g}" or f"(handed on: {handed_on:.3g})" in page
    shape_best = optuna.load_study(study_name="reported/shape", storage=storage).best_trial
    assert f"width {shape_best.params['width']}" in page
    assert "time spent" in page
    for sentence in report.diagnosis["lr"] + report.diagnosis["shape"]:
        assert html.escape(sentence) in page
    assert any("diverge" in sentence for sentence in report.diagnosis["lr"])


def test_the_page_says_the_rate_the_shape_winner_trained_at(report: Report, storage: str) -> None:
    page = report.index.read_text()
    shape = optuna.load_study(study_name="reported/shape", storage=storage)
    best = shape.best_trial
    trained = best.user_attrs["trained_lr"]
    assert best.user_attrs["lr_move"] == 1.0  # SGD: the rule leaves the calibrated rate where it is
    assert trained == pytest.approx(best.user_attrs["lr"] * best.params["lr_scale"])  # the calibrated rate x its scale
    said = f"lr {trained:.3g} (calibrated {best.user_attrs['lr']:.3g} × lr_scale {best.params['lr_scale']:.3g})"
    assert html.escape(said) in page  # in the summary table and in the diagnosis
    assert page.count(html.escape(said)) >= 2
    assert "all at the calibrated learning rate" not in page


def test_sensitivity_figure_keeps_diverged_runs_apart_and_marks_the_chosen_rate(storage: str) -> None:
    stages = load_stages("reported", storage)
    best_lr = stages["lr"].study.user_attrs["best_lr"]
    fig = plot_lr_sensitivity(stages["lr"].runs, best_lr, "validation error")
    _, labels = fig.axes[0].get_legend_handles_labels()
    assert any(label.startswith("diverged") for label in labels)
    assert f"chosen lr = {best_lr:.3g}" in labels
    # Diverged runs are drawn in axes coordinates (a band on top), not at their last value.
    diverged = [c for c in fig.axes[0].collections if c.get_label().startswith("diverged")][0]
    assert all(0.9 < y <= 1.0 for _, y in diverged.get_offsets())


def test_epochs_to_target_counts_from_one_and_skips_non_finite_values() -> None:
    assert epochs_to_target([0.9, 0.5, 0.2, 0.1], 0.2) == 3
    assert epochs_to_target([0.9, math.nan, 0.1], 0.2) == 3
    assert epochs_to_target([0.9, 0.8], 0.2) is None


def test_importances_in_words_and_bars_main_effects_first_then_the_pair() -> None:
    table = pd.DataFrame({
        "stage": ["shape"] * 3, "evaluator": ["fanova"] * 3, "param": ["width", "depth", "width"],
        "param_b": ["", "", "depth"], "importance": [0.6, 0.2, 0.1], "std": [0.1, 0.05, 0.02],
    })
    assert importance_sentences(table) == [
        "Stage shape (fanova): width matters most (60%); the largest interaction is width × depth (10%)."
    ]
    fig = plot_importance(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["width", "depth", "width × depth"]  # main effects by size, then the pair
    bars = next(c for c in fig.axes[0].containers if isinstance(c, BarContainer))
    assert [round(bar.get_width(), 3) for bar in bars] == [0.6, 0.2, 0.1]
    whiskers = bars.errorbar.lines[2][0].get_segments()  # each from importance - std to + std
    assert [round(seg[1][0] - seg[0][0], 3) for seg in whiskers] == [0.2, 0.1, 0.04]


def test_the_report_draws_without_pyplot_and_sets_no_global_backend() -> None:
    import subprocess

    # The raw rcParams entry: reading it through get_backend() would itself import pyplot.
    code = ("import matplotlib, sys; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); "
            "before = raw(); import tuner.report; "
            "assert 'matplotlib.pyplot' not in sys.modules; assert raw() == before")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_write_report_in_the_old_positional_order_still_works_with_a_warning(storage: str, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="pass storage=, out= by keyword"):
        written = write_report("reported", storage, tmp_path / "old")
    assert written.out == tmp_path / "old" and written.index.is_file()
    with pytest.raises(TypeError, match="multiple values"):
        write_report("reported", storage, storage=storage)


def test_cli_version_and_the_report_outs_default_in_help() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"tuner {version('tuner')}"
    result = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"})
    assert "[default: (NAME-report)]" in " ".join(result.output.split())


def test_cli_report_writes_the_folder_and_exits_0(storage: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "reported", "--storage", storage, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").is_file()
    assert "index.html" in result.output


def test_cli_report_of_an_unknown_study_exits_2_naming_the_studies_that_exist(storage: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "reportd", "--storage", storage, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "'reportd'" in result.output and "studies there: reported" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.parametrize("stages", [("shape",), ("lr", "shape")], ids=["shape", "lr-shape"])
def test_cli_report_of_a_study_tuner_did_not_make_exits_2_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stages: tuple[str, ...]
) -> None:
    storage = f"sqlite:///{tmp_path / 'plain.db'}"
    for stage in stages:  # plain Optuna studies under a tuner study's stage names
        study = optuna.create_study(study_name=f"plain/{stage}", storage=storage)
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0) ** 2, n_trials=3)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in ([], ["--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(app, ["report", "plain", "--storage", storage, *out])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: study 'plain': stage "), result.stderr
        assert "was it made by tuner?" in result.stderr and "tuner dashboard" in result.stderr
        assert list(here.iterdir()) == [] and not (tmp_path / "r").exists()  # refused before writing anything


def test_cli_report_on_a_missing_sqlite_file_exits_2_and_creates_no_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = CliRunner().invoke(app, ["report", "reported", "--storage", f"sqlite:///{missing}"])
    assert result.exit_code == 2
    assert "nope.db" in result.output
    assert not missing.exists()


def _stages_with_settings(spec: dict) -> dict:
    study = optuna.create_study()
    study.set_user_attr("settings", tuner.spec_from_dict({"name": "labelled", **spec}).settings())
    study.set_user_attr("objective", spec.get("train", {}).get("objective", "val_error"))
    return {"lr": StageRuns("lr", study, [], [])}


def test_the_objective_is_named_by_the_task_the_data_asks_for_csv_files_included(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame.assign(label=rng.integers(0, 3, 60)).to_csv(tmp_path / "classes.csv", index=False)
    frame.assign(y=rng.normal(size=60)).to_csv(tmp_path / "values.csv", index=False)
    label = lambda data, **train: objective_label(_stages_with_settings({"data": data, "train": train}))  # noqa: E731
    assert label({"name": "diabetes"}) == "validation error (RMSE)"
    assert label({"name": "adding"}) == "validation error (RMSE)"
    assert label({"name": "wine"}) == "validation error (1 − accuracy)"
    # task = "auto": the file decides (whole numbers, few of them: classes), as it did for training.
    assert label({"name": "csv", "path": str(tmp_path / "classes.csv"), "target": "label"}) == \
        "validation error (1 − accuracy)"
    assert label({"name": "csv", "path": str(tmp_path / "values.csv"), "target": "y"}) == "validation error (RMSE)"
    moved = _stages_with_settings({"data": {"name": "csv", "path": str(tmp_path / "values.csv"), "target": "y"}})
    (tmp_path / "values.csv").unlink()  # the study outlived its file: say less rather than guess
    assert objective_label(moved) == "validation error"
    assert label({"name": "wine"}, objective="val_loss") == "validation loss"


def _run(lr: float, curve: list[float], *, diverged: bool = False, **fields: object) -> Run:
    """A finished lr trial made by hand: complete unless it diverged."""
    state = optuna.trial.TrialState.PRUNED if diverged else optuna.trial.TrialState.COMPLETE
    defaults = {"number": 0, "state": state, "params": {"lr": lr}, "value": None if diverged else curve[-1],
                "curve": curve, "train_curve": [], "seconds": 1.0, "diverged": diverged}
    return Run(**{**defaults, **fields})  # type: ignore[arg-type]


def _tick_labels(fig: object, axis: str = "y", index: int = 0) -> list[tuple[float, str]]:
    fig.canvas.draw()  # type: ignore[attr-defined]  # tick labels are made at draw time
    ax = fig.axes[index]  # type: ignore[attr-defined]
    ticks = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    return [(t.get_loc(), t.label1.get_text()) for t in ticks.get_major_ticks() if low <= t.get_loc() <= high]


def test_sensitivity_labels_a_linear_error_axis_when_a_run_diverged() -> None:
    # Regression errors spanning less than 20x keep a linear axis; one run diverged (diabetes).
    runs = [_run(lr, [150.0, err]) for lr, err in [(1e-5, 150.0), (1e-4, 90.0), (1e-3, 57.0), (1e-2, 70.0)]]
    runs.append(_run(0.5, [150.0, math.inf], diverged=True))
    fig = plot_lr_sensitivity(runs, 1e-3, "validation error (RMSE)")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    labelled = [(y, text) for y, text in _tick_labels(fig) if text]
    assert len(labelled) >= 3  # numbers on the axis, not bare ticks
    assert all(float(text.replace("−", "-")) == pytest.approx(y) for y, text in labelled)
    band_floor = max(r.value for r in runs if r.value is not None)
    assert all(y <= band_floor + 1e-9 for y, _ in labelled)  # none in the band of diverged runs


def test_epochs_to_target_counts_to_90_percent_of_the_way_from_untrained_to_best() -> None:
    # Diabetes-like: twice the best (2 x 56) lies above the untrained error (~100), so the old target
    # was "reached" after one epoch by rates that barely learn.
    runs = [
        _run(1e-5, [100.0, 99.0, 98.0, 97.0]),  # crawls: its first epoch stands for "untrained"
        _run(1e-4, [90.0, 80.0, 75.0, 72.0]),
        _run(1e-3, [70.0, 62.0, 59.0, 56.0]),  # the best
        _run(1e-2, [60.0, 58.0, 57.0, 58.0]),  # the quickest to the target
        _run(0.5, [100.0, math.inf], diverged=True),
    ]
    target = error_target(runs)
    assert target is not None and (target.start, target.best) == (100.0, 56.0)
    assert target.value == pytest.approx(56.0 + 0.1 * 44.0)
    sentence = target_sentence(runs, "validation error")
    assert "≤ 60.4: 90% of the way from 100 (the smallest rate, 1e-05, after one epoch" in sentence
    assert sentence.endswith("The quickest run reached it in 1 epoch(s), at learning rate 0.01.")
    fig = plot_lr_cost(runs, 1e-3, "validation error (RMSE)")
    reached = next(c for c in fig.axes[1].collections if c.get_label().startswith("reached"))
    assert sorted(map(tuple, reached.get_offsets())) == [(1e-3, 3.0), (1e-2, 1.0)]
    never = next(c for c in fig.axes[1].collections if c.get_label().startswith("not within"))
    assert sorted(x for x, _ in never.get_offsets()) == [1e-5, 1e-4]


def test_no_target_when_no_rate_ended_below_where_the_slowest_began() -> None:
    runs = [_run(1e-5, [0.5, 0.6]), _run(1e-3, [0.55, 0.52])]
    assert error_target(runs) is None
    assert "no target to count epochs to" in target_sentence(runs, "validation error")
    fig = plot_lr_cost(runs, 1e-3, "validation error")
    assert "no target" in " ".join(t.get_text() for t in fig.axes[1].texts)


def _stored_runs(attrs_by_lr: dict[float, dict]) -> list[Run]:
    """Trials made by hand in an in-memory study, read back as the report reads stored ones."""
    study = optuna.create_study()
    lr = optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)
    for rate, attrs in attrs_by_lr.items():
        diverged = bool(attrs.get("diverged"))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": rate}, distributions={"lr": lr},
            state=optuna.trial.TrialState.PRUNED if diverged else optuna.trial.TrialState.COMPLETE,
            value=None if diverged else 0.2, user_attrs={"learning_curve": [0.5, 0.2], **attrs}))
    return [run_of(t) for t in study.trials]


def test_lr_time_shows_each_trials_own_time_alone_or_its_share_of_a_batch() -> None:
    runs = _stored_runs({
        1e-3: {"train_seconds": 2.0, "time_measure": "alone", "batched_with": 1},
        1e-2: {"train_seconds": 0.25, "time_measure": "batch_share", "batched_with": 8, "epochs_done": 20},
        0.5: {"train_seconds": 0.05, "time_measure": "batch_share", "batched_with": 8, "epochs_done": 3,
              "diverged": True},
    })
    costs = trial_costs(runs)
    assert costs.unit == "seconds" and costs.shares and costs.left_out == 0
    fig = plot_lr_cost(runs, 1e-3, "validation error")
    ax = fig.axes[0]
    shown = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
    assert shown == [(1e-3, 2.0), (1e-2, 0.25), (0.5, 0.05)]
    assert ax.get_ylabel() == "training time per trial (s)\nbatched: its share of each epoch"
    assert ax.get_ylim()[1] >= 2.0 * 1.1  # the highest dot is not cut by the frame
    assert "share of each epoch it trained" in lr_time_caption(costs)


def test_batched_trials_stored_before_time_measure_show_epochs_trained_never_an_even_split() -> None:
    # Stored earlier: a batch of 4 shares its 2 s evenly, whatever each trial trained.
    old = {rate: {"train_seconds": 0.5, "batched_with": 4, "epochs_done": epochs}
           for rate, epochs in [(1e-4, 20), (1e-3, 20), (1e-2, 20), (0.5, 2)]}
    old[0.5]["diverged"] = True
    runs = _stored_runs(old)
    costs = trial_costs(runs)
    assert costs.unit == "epochs"
    fig = plot_lr_cost(runs, 1e-3, "validation error")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "epochs trained per trial"
    assert sorted(y for c in ax.collections for _, y in c.get_offsets()) == [2.0, 20.0, 20.0, 20.0]
    assert "Epochs trained" in ax.get_title()
    assert "Left: epochs each trial trained" in lr_time_caption(costs)
    # Mixed with trials that have a time of their own: the even splits are left out, and counted.
    mixed = _stored_runs({**old, 1e-5: {"train_seconds": 3.0, "time_measure": "alone"}})
    costs = trial_costs(mixed)
    assert costs.unit == "seconds" and [r.params["lr"] for r, _ in costs.points] == [1e-5]
    assert costs.left_out == 4
    fig = plot_lr_cost(mixed, 1e-3, "validation error")
    assert "4 batched trial(s) left out" in " ".join(t.get_text() for t in fig.axes[0].texts)


def _shape_runs() -> list[Run]:
    settings = [(8, 1, "constant", 0.5), (16, 2, "step", 0.01), (32, 1, "step", 0.1), (64, 3, "exponential", 0.3),
                (20, 2, "constant", 0.002), (128, 2, "exponential", 0.05)]
    return [_run(0.05, [0.5, 0.1 + 0.01 * i], number=i,
                 params={"width": w, "depth": d, "schedule": s, "decay": decay})
            for i, (w, d, s, decay) in enumerate(settings)]


def test_shape_draws_constant_apart_from_decay_names_the_median_and_labels_width_plainly() -> None:
    runs = _shape_runs()
    fig = plot_shape(runs, "validation error", 0.09)
    width_ax, _, schedule_ax, decay_ax = fig.axes
    # 'constant' ignores decay: its dots sit in a column of their own, right of every decay tried.
    constant = next(c for c in decay_ax.collections if c.get_label() == "constant")
    largest_decay = max(r.params["decay"] for r in runs if r.params["schedule"] != "constant")
    assert all(x > 2 * largest_decay for x, _ in constant.get_offsets())
    assert "constant" in [text for _, text in _tick_labels(fig, "x", 3)]
    stepped = next(c for c in decay_ax.collections if c.get_label() == "step")
    assert sorted(x for x, _ in stepped.get_offsets()) == [0.01, 0.1]
    # The median bars of the schedule panel have their legend entry.
    assert "median" in [t.get_text() for t in fig.legends[0].get_texts()]
    # Width in plain numbers (10, 20, 50), not 2x10^1.
    labels = [text for _, text in _tick_labels(fig, "x", 0) if text]
    assert labels and all(text.isdigit() for text in labels), labels


def test_importance_leaves_out_a_stage_that_searched_one_parameter() -> None:
    table = pd.DataFrame({
        "stage": ["lr", "shape", "shape"], "evaluator": ["fanova"] * 3, "param": ["lr", "width", "decay"],
        "param_b": ["", "", ""], "importance": [1.0, 0.7, 0.2], "std": [0.0, 0.1, 0.05],
    })
    fig = plot_importance(table)
    assert [ax.get_title() for ax in fig.axes] == ["stage shape"]  # lr explains 100 % of itself: no panel
    assert plot_importance(table[table["stage"] == "lr"]) is None


def test_lr_curves_keep_healthy_runs_readable_when_one_blew_up_to_1e14() -> None:
    runs = [_run(lr, [75.0 - k * i for i in range(10)]) for lr, k in [(1e-5, 0.2), (1e-3, 1.5), (1e-2, 2.0)]]
    runs.append(_run(0.5, [80.0, 1e5, 1.9e14], diverged=True))
    fig = plot_lr_curves(runs, 1e-3, "validation error (RMSE)")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 40.0 < low < 57.0 and 75.0 < high < 150.0  # the healthy curves (57 to 75) fill the panel
    assert [text for _, text in _tick_labels(fig) if text]  # and it has numbers (many decades had none)
    cross = next(c for c in ax.collections if c.get_offsets().shape[0] == 1)
    assert cross.get_offsets()[0][1] == pytest.approx(high) and not cross.get_clip_on()  # on the top edge
    assert any("diverged runs leave the top" in t.get_text() for t in ax.texts)


def test_shape_uses_a_log_error_axis_when_errors_span_orders_of_magnitude() -> None:
    runs = [_run(0.05, [0.5, value], number=i, params={"width": 8 * (i + 1), "depth": 1, "schedule": "step",
                                                         "decay": 0.1})
            for i, value in enumerate([1e-5, 3e-4, 2e-3, 0.02, 0.1])]
    fig = plot_shape(runs, "validation loss", None)
    assert fig.axes[0].get_yscale() == "log"
    assert [text for _, text in _tick_labels(fig) if text]


def test_shape_keeps_an_off_scale_trial_on_its_panel_as_a_triangle_on_the_top_edge() -> None:
    # Five good trials and one far worse, whose decay is the smallest: its triangle must stay in view.
    runs = [_run(0.05, [0.5, 0.1 + 0.001 * i], number=i, params={"width": 16, "depth": 1, "schedule": "step",
                                                                  "decay": 0.1 + 0.1 * i}) for i in range(5)]
    runs.append(_run(0.05, [0.9, 0.9], number=5, params={"width": 16, "depth": 1, "schedule": "step", "decay": 0.005}))
    decay_ax = plot_shape(runs, "validation error", None).axes[3]
    triangle = next(c for c in decay_ax.collections if c.get_offsets().shape[0] == 1 and c.get_offsets()[0][1] == 0.97)
    assert decay_ax.get_xlim()[0] < triangle.get_offsets()[0][0] == 0.005


def test_an_importance_figure_not_drawn_says_which_stages_were_skipped_and_why(tmp_path: Path) -> None:
    spec = {**REPORTED_SPEC, "name": "few_shapes", "train": {"epochs": 1, "batch_size": 32},
            "stages": {"lr": {"trials": 10, "lr_min": 1e-3, "lr_max": 1.0},
                       "shape": {"trials": 3, "width": [4, 32], "sampler": "random", "pruner": "none"}}}
    url = f"sqlite:///{tmp_path / 'few.db'}"
    tuner.run_study(tuner.spec_from_dict(spec), storage=url, device="cpu")
    written = write_report("few_shapes", storage=url, out=tmp_path / "report")
    why = written.missing["importance"]
    # The real reason there is nothing to compare first (a new user read "every stage searched one parameter"
    # as the reason shape was missing), then what the stages that were analysed searched.
    assert why.startswith("stage shape skipped: 3 complete trials")
    assert why.endswith("the stages analysed searched one parameter each")


def test_a_study_of_the_validation_loss_is_captioned_and_titled_in_its_own_word(tmp_path: Path) -> None:
    # A new user's wine study (objective val_loss): "its validation error after the last epoch", "the final error",
    # "the target error" beside a diagnosis that rightly spoke of the validation loss.
    table = {**REPORTED_SPEC, "name": "lossy", "train": {**REPORTED_SPEC["train"], "objective": "val_loss"},
             "stages": {"lr": {"trials": 10, "lr_min": 1e-3, "lr_max": 1.0},
                        "shape": {**REPORTED_SPEC["stages"]["shape"], "trials": 10}}}
    url = f"sqlite:///{tmp_path / 'lossy.db'}"
    tuner.run_study(tuner.spec_from_dict(table), storage=url, device="cpu")
    page = write_report("lossy", storage=url, out=tmp_path / "report").index.read_text()
    assert "its validation loss after the last epoch" in page and "variation of the final loss" in page
    assert "target loss" in page and "validation error" not in page and "final error" not in page


def test_a_studys_own_metric_and_a_score_are_captioned_in_words_that_read() -> None:
    from tuner.report.words import lr_time_caption

    # "its your metric on the validation part after the last epoch" read badly; a score has no target to reach.
    assert "a score has no target" in lr_time_caption(None, "score") and "target score" not in lr_time_caption(None, "score")
    assert "reach the target loss" in lr_time_caption(None, "loss")


def test_the_chosen_rates_note_points_into_the_plot_below_a_high_score_and_above_a_low_error() -> None:
    # A score's best lies near the top, where a note placed above it ran into the title (a new user's F1 study).
    from matplotlib.text import Annotation

    runs = [_run(lr, [0.1, value]) for lr, value in [(1e-4, 0.3), (1e-3, 0.9), (1e-2, 0.95), (1e-1, 0.6)]]
    for maximize, downward in ((True, True), (False, False)):
        fig = plot_lr_sensitivity(runs, 1e-2, "your metric on the validation part", maximize=maximize)
        notes = [t for t in fig.axes[0].texts if isinstance(t, Annotation) and t.get_text().startswith("chosen")]
        assert len(notes) == 1 and (notes[0].xyann[1] < 0) == downward


def test_the_chosen_rates_note_names_the_nearest_trial_when_the_rate_lies_between_trials() -> None:
    # A new user's figure said "chosen: lr 0.0348, validation error 0.403" with the star on the trial at 0.0104.
    from matplotlib.text import Annotation

    runs = [_run(lr, [0.6, value]) for lr, value in [(1e-3, 0.5), (0.0104, 0.403), (0.168, 0.153), (0.6, 0.32)]]
    notes = {}
    for chosen in (0.0348, 0.168):
        fig = plot_lr_sensitivity(runs, chosen, "validation error")
        notes[chosen] = [t.get_text() for t in fig.axes[0].texts if isinstance(t, Annotation)]
    assert notes[0.0348] == ["chosen: lr 0.0348\nnearest trial, lr 0.0104: validation error 0.403"]
    assert notes[0.168] == ["chosen: lr 0.168\nvalidation error 0.153"]  # a trial's own rate: its value, as before


def test_an_axis_of_a_last_value_reads_as_english_for_every_objective() -> None:
    from tuner.report.runs import final_label

    assert final_label("validation error (RMSE)") == "final validation error (RMSE)"
    # Not "final your metric on the validation part (higher is better)", as a new user's F1 report read.
    assert final_label("your metric on the validation part (higher is better)") == \
        "your metric on the validation part at the last epoch (higher is better)"
    assert final_label("objective reported by your loop") == "objective reported by your loop at the last epoch"


def test_the_summary_and_the_report_count_a_stages_time_alike_pauses_and_stopped_trials_included(tmp_path: Path) -> None:
    # A first run stopped by Ctrl-C (its trial failed, user attribute stopped), resumed 30 s later.
    from datetime import datetime, timedelta

    from tuner.study.results import stage_summary, wall_seconds

    start = datetime(2026, 12, 6, 12, 0, 0)
    study = optuna.create_study(study_name="timed/lr", storage=f"sqlite:///{tmp_path / 't.db'}")
    distribution = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    for offset, state in ((0, optuna.trial.TrialState.FAIL), (30, optuna.trial.TrialState.COMPLETE),
                          (32, optuna.trial.TrialState.COMPLETE)):
        trial = optuna.trial.create_trial(params={"lr": 0.01}, distributions=distribution, state=state,
                                          value=0.5 if state == optuna.trial.TrialState.COMPLETE else None)
        trial.datetime_start, trial.datetime_complete = start + timedelta(seconds=offset), start + timedelta(seconds=offset + 1)
        study.add_trial(trial)
    # The summary's column, from the stopped trial's start to the last end (it read 3.0 s, finished trials only),
    # and the report's (report/html.py), one function.
    assert stage_summary(study, "lr", budget=2).wall_seconds == 33.0 == wall_seconds(study.get_trials())


def test_a_long_axis_label_is_folded_and_drawn_whole_inside_the_figure() -> None:
    # "objective reported by your loop at the last epoch (higher is better)" ran off a new user's figure.
    runs = [_run(lr, [0.5, value]) for lr, value in [(1e-4, 0.6), (1e-3, 0.9), (1e-2, 0.95), (1e-1, 0.7)]]
    for maximize in (True, False):
        fig = plot_lr_sensitivity(runs, 1e-2, "objective reported by your loop (higher is better)" if maximize
                                  else "objective reported by your loop", maximize=maximize)
        label = fig.axes[0].yaxis.label
        assert all(len(line) <= 40 for line in label.get_text().split("\n"))
        assert " ".join(label.get_text().split()).startswith("objective reported by your loop at the last epoch")
        fig.canvas.draw()
        drawn = label.get_window_extent()
        assert drawn.y0 >= 0 and drawn.y1 <= fig.bbox.y1 and drawn.x0 >= 0  # no letter outside the picture
