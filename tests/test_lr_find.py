"""The LR range test: on every bundled spec, from the command line, and as the lr stage's bounds."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

import tuner
import tuner.training.lr_find
from tuner.cli import app
from tuner.study import lr_range
from tuner.study.stored import LR_FIND_ATTR as STUDY_ATTR
from tuner.training.lr_find import LRFindResult, lr_find, plot_lr_find, write_lr_find
from tuner.training.lr_suggest import Suggestion

STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("*.toml"))
FEW_STEPS = 40  # a coarse ramp: enough for a suggestion, cheap enough for a test


@pytest.mark.parametrize("spec_path", STUDIES, ids=lambda p: p.stem)
def test_lr_find_suggests_a_rate_and_writes_csv_and_png_for_every_bundled_spec(spec_path: Path, tmp_path: Path) -> None:
    # The adding problem's LSTM sits on a plateau for most of a coarse ramp: 40 steps read as noise (its smoothed
    # loss lowest at the start; refused, test below) where the default 100 read a descent at 0.03-0.5.
    steps = 100 if spec_path.stem == "adding_lstm" else FEW_STEPS
    result = lr_find(spec_path, steps=steps, device="cpu")
    assert 5 <= len(result.lrs) <= steps
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, ratios[0])  # exponential ramp: the same factor every step
    assert result.lrs[0] == pytest.approx(1e-7)
    s = result.suggestion
    assert s is not None, result.problem
    assert s.low <= s.lr <= s.high and min(s.rules.values()) == s.low and max(s.rules.values()) == s.high
    assert result.lrs[0] <= s.search_min < s.search_max <= result.lrs[-1]
    assert s.search_min <= s.lr <= s.search_max  # the suggestion lies in the range it suggests searching

    csv_path, png_path = write_lr_find(result, tmp_path / "out")
    with csv_path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["lr", "loss", "smoothed"]
    assert len(rows) == len(result.lrs) + 1
    assert float(rows[1][0]) == pytest.approx(result.lrs[0])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_coarse_ramp_the_rules_cannot_read_is_refused_in_words() -> None:
    result = lr_find(STUDIES[0].parent / "adding_lstm.toml", steps=FEW_STEPS, device="cpu")
    assert result.suggestion is None and "cannot be read" in result.problem and "narrow the ramp" in result.problem


def test_the_ramp_stops_once_the_loss_has_blown_up(tiny_spec: Path) -> None:
    result = lr_find(tiny_spec, steps=100, end_lr=1e4, device="cpu")
    assert len(result.lrs) < 100  # 1e4 would have been reached only at the last step
    finite = [v for v in result.smoothed if math.isfinite(v)]
    last = result.smoothed[-1]
    assert not math.isfinite(result.losses[-1]) or not math.isfinite(last) or last > 4 * min(finite)


def test_cli_lr_find_prints_the_rate_each_rule_and_the_range(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "lr"
    result = CliRunner().invoke(app, ["lr-find", str(tiny_spec), "--out", str(out), "--device", "cpu", "--steps", "60"])
    assert result.exit_code == 0, result.output
    for text in ("suggested learning rate:", "steep", "valley", "minimum", "rules agree on:", "suggested search range:"):
        assert text in result.output
    assert (out / "lr_find.csv").is_file() and (out / "lr_find.png").is_file()


def test_cli_lr_find_refuses_bad_input_and_writes_nothing(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "lr"
    for args in (["--start-lr", "1", "--end-lr", "0.1"], ["--steps", "2"], ["--device", "tpu"]):
        result = CliRunner().invoke(app, ["lr-find", str(tiny_spec), "--out", str(out), *args])
        assert result.exit_code == 2, (args, result.output)
    missing = CliRunner().invoke(app, ["lr-find", str(tmp_path / "nope.toml"), "--out", str(out)])
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert not out.exists()


def _auto_spec(trials: int, shape_trials: int = 1) -> tuner.StudySpec:
    return tuner.spec_from_dict({
        "name": "auto", "data": {"name": "wine"}, "model": {"width": 8},
        "train": {"epochs": 3, "batch_size": 32},
        "stages": {"lr": {"trials": trials, "lr_min": 1e-5, "lr_max": 0.2, "lr_range": "auto", "batch_trials": 4},
                   "shape": {"trials": shape_trials, "width": [4, 8], "depth": [1, 1]}},
    })


def test_lr_range_auto_runs_the_test_once_sets_the_bounds_and_a_resume_reuses_it(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(lr_range, "lr_find", lambda *a, **k: calls.append(k) or lr_find(*a, **k))
    tuner.run_study(_auto_spec(trials=4), storage=storage_url, device="cpu")
    assert len(calls) == 1
    assert calls[0]["start_lr"] <= 1e-7 and calls[0]["end_lr"] >= 10  # the ramp reaches past the allowed range

    lr_study = optuna.load_study(study_name="auto/lr", storage=storage_url)
    record = lr_study.user_attrs[STUDY_ATTR]
    low, high = record["bounds"]
    assert 1e-5 <= low < high <= 0.2  # the suggestion, kept within lr_min/lr_max
    assert (low, high) != (1e-5, 0.2)
    assert record["suggestion"]["search_max"] >= high and len(record["lrs"]) == len(record["losses"])
    for trial in lr_study.trials:
        assert trial.distributions["lr"] == FloatDistribution(low, high, log=True)
        assert low <= trial.params["lr"] <= high

    # Resume (a larger shape budget): the stored result sets the same bounds; no second range test.
    tuner.run_study(_auto_spec(trials=4, shape_trials=2), storage=storage_url, device="cpu")
    assert len(calls) == 1
    assert len(optuna.load_study(study_name="auto/shape", storage=storage_url).trials) == 2
    trials = optuna.load_study(study_name="auto/lr", storage=storage_url).trials
    assert len(trials) == 4
    assert all(t.distributions["lr"] == FloatDistribution(low, high, log=True) for t in trials)


def test_lr_range_auto_without_a_usable_suggestion_searches_the_whole_allowed_range(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_suggestion(*args: object, **kwargs: object) -> None:
        raise ValueError("loss never decreases over the tested range")

    monkeypatch.setattr(tuner.training.lr_find, "suggest", no_suggestion)
    messages: list[str] = []

    class Listener(tuner.Reporter):
        def message(self, text: str) -> None:
            messages.append(text)

    tuner.run_study(_auto_spec(trials=2), storage=storage_url, device="cpu", reporter=Listener())
    lr_study = optuna.load_study(study_name="auto/lr", storage=storage_url)
    assert lr_study.user_attrs[STUDY_ATTR]["bounds"] == [1e-5, 0.2]
    assert "never decreases" in lr_study.user_attrs[STUDY_ATTR]["problem"]
    assert any("no usable suggestion" in m for m in messages)


def test_lr_range_is_checked_and_auto_is_part_of_the_study_settings() -> None:
    from tuner.study.stages import stage_settings

    with pytest.raises(tuner.SpecError, match=r"stages\.lr\.lr_range.*choose one of: fixed, auto"):
        tuner.spec_from_dict({"name": "x", "stages": {"lr": {"lr_range": "sometimes"}}})
    fixed = tuner.spec_from_dict({"name": "x"})
    auto = tuner.spec_from_dict({"name": "x", "stages": {"lr": {"lr_range": "auto"}}})
    assert stage_settings(fixed, "lr") != stage_settings(auto, "lr")  # a different search: a new study
    assert "lr_range" not in stage_settings(fixed, "lr")["stages"]["lr"]  # studies made before it resume


def test_lr_find_plot_shows_each_rule_above_the_suggestion_and_every_loss_before_the_blow_up() -> None:
    lrs = list(np.geomspace(1e-5, 10.0, 12))
    losses = [2.4, 2.5, 2.3, 2.4, 2.0, 0.4, 1.5, 0.8, 0.9, 1.8, 9.0, 40.0]  # a noisy step dips to 0.4
    smoothed = [2.4, 2.42, 2.4, 2.4, 2.3, 1.9, 1.8, 1.6, 1.5, 1.6, 3.0, 8.0]
    # The suggestion is the median of the rules: here it is the steep rule itself.
    suggestion = Suggestion(steep=lrs[5], valley=lrs[4], minimum=lrs[7], lr=lrs[5], low=lrs[4], high=lrs[7],
                            search_min=lrs[3], search_max=lrs[8])
    fig = plot_lr_find(LRFindResult(lrs, losses, smoothed, suggestion))
    ax = fig.axes[0]
    lines = {line.get_label().split()[0]: line for line in ax.get_lines()}
    suggested = lines["suggested"]
    for rule in ("steep", "valley", "minimum"):
        assert lines[rule].get_zorder() > suggested.get_zorder()  # drawn on top: never hidden
        assert lines[rule].get_linewidth() < suggested.get_linewidth()
    assert lines["steep"].get_xdata()[0] == suggested.get_xdata()[0]
    low, high = ax.get_ylim()
    assert low < 0.4 and high > 2.5  # every raw loss up to the blow-up (index 10) is inside
    assert high < 9.0  # the blow-up itself is not: it would squash the curve
    assert any("blows up" in text.get_text() for text in ax.texts)


def test_the_minimum_printed_is_a_tenth_of_the_rate_where_the_written_curve_is_lowest(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "lr"
    shown = CliRunner().invoke(app, ["lr-find", str(tiny_spec), "--out", str(out), "--device", "cpu", "--steps", "60"])
    assert shown.exit_code == 0, shown.output
    with (out / "lr_find.csv").open() as handle:
        rows = [(float(row["lr"]), float(row["smoothed"])) for row in csv.DictReader(handle) if row["smoothed"]]
    lowest_at = min(rows, key=lambda row: row[1])[0]
    printed = next(line for line in shown.output.splitlines() if line.strip().startswith("minimum"))
    minimum = float(printed.split()[1])
    assert minimum == pytest.approx(lowest_at / 10, rel=0.01)  # one smoothing: the one written is the one read
    assert f"lowest at lr {lowest_at:.3g}" in printed
