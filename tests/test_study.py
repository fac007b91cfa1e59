"""The staged study end to end: stages, hand-off, attributes, CLI, resume."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

import tuner
from tuner.cli import app


def test_cli_study_leaves_both_stages_with_their_attributes(tiny_spec: Path, storage_url: str) -> None:
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", storage_url, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "best val_error" in result.output  # the summary table

    lr_study = optuna.load_study(study_name="tiny/lr", storage=storage_url)
    shape_study = optuna.load_study(study_name="tiny/shape", storage=storage_url)
    lr_finished = [t for t in lr_study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(lr_finished) == 4
    assert len([t for t in shape_study.trials if t.state == TrialState.COMPLETE]) + len(
        [t for t in shape_study.trials if t.state == TrialState.PRUNED]) == 3

    best_lr = lr_study.best_trial.params["lr"]
    assert shape_study.user_attrs["lr"] == best_lr
    assert lr_study.user_attrs["best_lr"] == best_lr
    low, high = shape_study.user_attrs["lr_scale_range"]  # lr_scale = "auto", resolved at the hand-off
    for trial in shape_study.trials:
        assert trial.user_attrs["lr"] == best_lr  # every shape trial trained near the calibrated rate
        # decay only where the schedule decays: 'constant' ignores it (stages.shape.conditional)
        assert set(trial.params) == {"width", "depth", "schedule", "lr_scale"} | (
            set() if trial.params["schedule"] == "constant" else {"decay"})
        assert low <= trial.params["lr_scale"] <= high
        assert trial.params["schedule"] in ("constant", "step", "exponential", "inverse_time")
    assert shape_study.user_attrs["search"]["sampler"]["group"] is True  # TPE models the conditional space in groups
    for trial in lr_finished:
        assert set(trial.params) == {"lr"}
        assert 1e-4 <= trial.params["lr"] <= 1.0
        curve = trial.user_attrs["learning_curve"]
        assert 1 <= len(curve) <= 4
        assert trial.user_attrs["device"] == "cpu"
        assert trial.user_attrs["train_seconds"] > 0
        if trial.state == TrialState.COMPLETE:
            assert trial.value == curve[-1]
            assert trial.intermediate_values == {i + 1: v for i, v in enumerate(curve)}
    for study in (lr_study, shape_study):
        search = study.user_attrs["search"]
        assert search["optuna_version"] == optuna.__version__
        assert search["sampler"]["name"] == "tpe" and search["sampler"]["multivariate"] is True
        assert "settings_hash" in study.user_attrs


def test_library_call_returns_the_same_story(tiny_spec: Path, storage_url: str) -> None:
    result = tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    lr_study = optuna.load_study(study_name="tiny/lr", storage=storage_url)
    assert result.best_lr == lr_study.user_attrs["best_lr"]
    assert result.best_lr == lr_study.best_trial.params["lr"]  # 4 trials: too few for the smoothed U, the best one's
    shape_best = result.stages["shape"].best_params
    best = optuna.load_study(study_name="tiny/shape", storage=storage_url).best_trial
    assert shape_best["lr"] == pytest.approx(result.best_lr * best.user_attrs["lr_move"] * shape_best["lr_scale"])
    assert result.stages["lr"].n_complete + result.stages["lr"].n_pruned == 4
    assert result.best_value == min(result.stages["lr"].best_value, result.stages["shape"].best_value)
    assert result.best_value == result.stages[result.best_stage].best_value


def test_diverging_trials_are_pruned_and_flagged_and_the_study_goes_on(tmp_path: Path, storage_url: str) -> None:
    spec = tuner.spec_from_dict({
        "name": "wild", "data": {"name": "wine"}, "train": {"epochs": 5},
        "stages": {"lr": {"trials": 6, "lr_min": 1e2, "lr_max": 1e4}, "shape": {"trials": 1}},
    })
    with pytest.raises(tuner.TunerError, match="none of its 6 trials completed"):
        tuner.run_study(spec, storage=storage_url, device="cpu")
    trials = optuna.load_study(study_name="wild/lr", storage=storage_url).trials
    assert len(trials) == 6
    assert all(t.state == TrialState.PRUNED and t.user_attrs["diverged"] is True for t in trials)


def test_rerun_of_a_finished_study_runs_nothing_again(tiny_spec: Path, storage_url: str) -> None:
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    before = {s: len(optuna.load_study(study_name=f"tiny/{s}", storage=storage_url).trials) for s in ("lr", "shape")}
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    after = {s: len(optuna.load_study(study_name=f"tiny/{s}", storage=storage_url).trials) for s in ("lr", "shape")}
    assert before == after == {"lr": 4, "shape": 3}


def test_same_seed_reproduces_the_study_on_cpu(tiny_spec: Path, tmp_path: Path) -> None:
    values = []
    for run in range(2):
        url = f"sqlite:///{tmp_path / f'run{run}.db'}"
        tuner.run_study(tiny_spec, storage=url, device="cpu")
        trials = optuna.load_study(study_name="tiny/shape", storage=url).trials
        values.append([(t.params, t.value) for t in trials])
    assert values[0] == values[1]


def test_changed_search_settings_are_refused_not_mixed(tiny_spec: Path, storage_url: str) -> None:
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    changed = tiny_spec.read_text().replace("lr_max = 1.0", "lr_max = 0.5")
    tiny_spec.write_text(changed)
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", storage_url])
    assert result.exit_code == 2
    assert "stages.lr.lr_max: 1.0 -> 0.5" in result.output
    assert "new name" in result.output
    assert len(optuna.load_study(study_name="tiny/lr", storage=storage_url).trials) == 4


def test_raising_a_budget_resumes_with_only_the_extra_trials(tiny_spec: Path, storage_url: str) -> None:
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    tiny_spec.write_text(tiny_spec.read_text().replace("trials = 3", "trials = 5"))
    tuner.run_study(tiny_spec, storage=storage_url, device="cpu")
    shape = optuna.load_study(study_name="tiny/shape", storage=storage_url)
    assert len(shape.trials) == 5
    assert len(optuna.load_study(study_name="tiny/lr", storage=storage_url).trials) == 4


def test_regression_and_lstm_studies_run(tmp_path: Path, storage_url: str) -> None:
    spec = tuner.spec_from_dict({
        "name": "seq", "data": {"name": "adding", "samples": 200, "sequence_length": 6},
        "model": {"family": "lstm", "width": 4}, "train": {"epochs": 2, "optimizer": "adam"},
        "stages": {"lr": {"trials": 2, "lr_min": 1e-3, "lr_max": 1e-1}, "shape": {"trials": 1, "width": [4, 8], "depth": [1, 1]}},
    })
    result = tuner.run_study(spec, storage=storage_url, device="cpu")
    assert result.best_value is not None and math.isfinite(result.best_value)
