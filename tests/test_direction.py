"""``train.direction = "maximize"``: a score of the user's own (accuracy) is maximized end to end (issue 25, item 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState
from typer.testing import CliRunner

import tuner
from tuner.cli import app
from tuner.inputs.checks import check_direction
from tuner.inputs.spec import SpecError
from tuner.study.handoff import sweep_choice
from tuner.study.stored import DIVERGED_ATTR

SPEC = {
    "name": "scored",
    "seed": 0,
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 3, "batch_size": 32, "direction": "maximize"},
    "stages": {"lr": {"trials": 6, "lr_min": 1e-3, "lr_max": 3.0},
               "shape": {"trials": 4, "width": [4, 16], "depth": [1, 2], "pruner": "none"}},
}


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(dim=1) == targets).float().mean())


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def test_a_maximized_accuracy_is_best_where_highest_in_every_stage_and_in_tuner_best(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scored.db'}"
    result = tuner.run_study(tuner.spec_from_dict(SPEC), storage=url, device="cpu", metric=accuracy)
    lr = optuna.load_study(study_name="scored/lr", storage=url)
    shape = optuna.load_study(study_name="scored/shape", storage=url)
    assert lr.direction == shape.direction == StudyDirection.MAXIMIZE
    lr_values, shape_values = [t.value for t in _complete(lr)], [t.value for t in _complete(shape)]
    assert len(set(lr_values)) > 1  # the rates scored differently: "best" is a real choice
    assert all(0.0 <= v <= 1.0 for v in lr_values + shape_values)  # accuracies, not errors
    assert result.stages["lr"].best_value == max(lr_values) and result.stages["shape"].best_value == max(shape_values)
    assert result.best_value == max(lr_values + shape_values)
    assert result.best_stage == ("shape" if max(shape_values) >= max(lr_values) else "lr")
    best_lr_trial = lr.user_attrs["best_trial"]
    assert next(t.value for t in lr.trials if t.number == best_lr_trial) == max(lr_values)

    best = tuner.write_best("scored", storage=url, out=tmp_path / "best", device="cpu", metric=accuracy)
    assert best.metrics["stored_value"] == result.best_value  # the highest accuracy across the stages
    assert best.metrics["validation"]["value"] == pytest.approx(result.best_value, abs=1e-6)
    lower = tuner.write_best("scored", storage=url, out=tmp_path / "lr_best", device="cpu", metric=accuracy, stage="lr")
    assert lower.metrics["stored_value"] == max(lr_values)

    from tuner.report import write_report
    from tuner.report.runs import load_stages
    stages = load_stages("scored", url)
    assert stages["shape"].best.value == max(shape_values) and stages["lr"].best.value == max(lr_values)  # type: ignore[union-attr]
    page = write_report("scored", storage=url, out=tmp_path / "report").index.read_text()
    assert "your metric on the validation part (higher is better)" in page  # never "validation error"


def test_the_hand_off_reads_a_score_as_a_u_upside_down() -> None:
    # The jagged U of tests/test_handoff.py with its lucky spike, given once as an error and once as
    # an accuracy (1 - error): the same rate and basin either way, and the record in each one's units.
    def trials(values: np.ndarray, x: np.ndarray) -> list[optuna.trial.FrozenTrial]:
        made = []
        for log_lr, value in zip(x, values):
            diverged = bool(log_lr > -0.3)
            made.append(optuna.trial.create_trial(
                params={"lr": float(10 ** log_lr)},
                distributions={"lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)},
                value=None if diverged else float(value), state=TrialState.PRUNED if diverged else TrialState.COMPLETE,
                user_attrs={DIVERGED_ATTR: diverged}))
        return made

    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = np.sort(np.concatenate([rng.uniform(-4, 0, 10), np.clip(rng.normal(-2, 0.6, 10), -4, 0)]))
        away = np.abs(x + 2)
        error = np.clip(0.3 + 0.25 * away ** 2 * (away > 0.5), 0, 0.9) + rng.normal(0, 0.04, len(x))
        error[int(np.argmin(np.abs(x + 0.7)))] = 0.1  # the lucky trial
        as_error = sweep_choice(trials(error, x))
        as_accuracy = sweep_choice(trials(1.0 - error, x), direction="maximize")
        assert as_accuracy.rate == as_error.rate and as_accuracy.basin == as_error.basin, seed
        assert [y for _, y in as_accuracy.curve] == pytest.approx([1.0 - y for _, y in as_error.curve])


def test_maximize_without_a_score_of_ones_own_is_refused_in_one_line_naming_the_field(tmp_path: Path) -> None:
    spec = tuner.spec_from_dict({**SPEC, "name": "unscored"})
    with pytest.raises(SpecError, match=r"train\.direction.*always minimized.*train\.metric"):
        check_direction(spec)
    url = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(SpecError):
        tuner.run_study(spec, storage=url, device="cpu")
    assert not (tmp_path / "none.db").exists() or not optuna.get_all_study_names(url)  # nothing written

    toml = tmp_path / "unscored.toml"
    toml.write_text('name = "unscored"\n[data]\nname = "wine"\n[train]\ndirection = "maximize"\n')
    result = CliRunner().invoke(app, ["study", str(toml), "--storage", url, "--device", "cpu"])
    assert result.exit_code == 2 and "train.direction" in result.output and "Traceback" not in result.output
    toml.write_text('name = "unscored"\n[data]\nname = "wine"\n[train]\ndirection = "max"\n')
    result = CliRunner().invoke(app, ["study", str(toml), "--storage", url, "--device", "cpu"])
    assert result.exit_code == 2 and "did you mean 'maximize'" in result.output


def test_a_study_made_to_minimize_is_not_resumed_to_maximize(tmp_path: Path) -> None:
    small = {**SPEC, "name": "turned", "train": {"epochs": 1, "batch_size": 32},
             "stages": {"lr": {"trials": 2}, "shape": {"trials": 1}}}
    url = f"sqlite:///{tmp_path / 'turned.db'}"
    tuner.run_study(tuner.spec_from_dict(small), storage=url, device="cpu", metric=accuracy)
    turned = {**small, "train": {**small["train"], "direction": "maximize"}}
    with pytest.raises(tuner.StudyMismatchError, match="train.direction: 'minimize' -> 'maximize'"):
        tuner.run_study(tuner.spec_from_dict(turned), storage=url, device="cpu", metric=accuracy)


# --- a wall-clock limit: run_study(timeout=) and `tuner study --timeout` -------------------------------------

class _Clock:
    """The runner's ``time`` module, with a monotonic clock a test can move forward."""

    def __init__(self) -> None:
        import time
        self._time, self.offset = time, 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(self._time, name)

    def monotonic(self) -> float:
        return self._time.monotonic() + self.offset


def test_a_time_limit_stops_after_the_trials_in_progress_and_a_rerun_finishes_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.study.runner as runner

    clock = _Clock()
    monkeypatch.setattr(runner, "time", clock)

    class LateAfterTwo(runner.Reporter):
        said: list[str] = []

        def trial_finished(self, stage, trial, n_finished, best_value) -> None:  # type: ignore[no-untyped-def]
            if n_finished == 2:
                clock.offset = 3600.0  # an hour passes during the second trial

        def message(self, text: str) -> None:
            self.said.append(text)

    spec = tuner.spec_from_dict({"name": "limited", "seed": 0, "data": {"name": "wine"}, "model": {"width": 8},
                                 "train": {"epochs": 1, "batch_size": 32},
                                 "stages": {"lr": {"trials": 5, "batched": False}, "shape": {"trials": 2}}})
    url = f"sqlite:///{tmp_path / 'limited.db'}"
    late = LateAfterTwo()
    stopped = tuner.run_study(spec, storage=url, device="cpu", reporter=late, timeout=60.0)
    assert stopped.timed_out == 60.0 and stopped.best_lr is None and set(stopped.stages) == {"lr"}
    assert "stage 'lr' stopped at the time limit (60 s) once its trials in progress had finished: 2 of 5" in late.said[-1]
    lr = optuna.load_study(study_name="limited/lr", storage=url)
    assert [t.state for t in lr.trials] == [TrialState.COMPLETE] * 2  # nothing RUNNING, nothing more asked
    assert "shape" not in [n.split("/")[1] for n in optuna.get_all_study_names(url)]  # no hand-off from 2 of 5

    clock.offset = 0.0
    done = tuner.run_study(spec, storage=url, device="cpu")
    assert done.timed_out is None and done.stages["lr"].n_complete + done.stages["lr"].n_pruned == 5
    assert len(optuna.load_study(study_name="limited/shape", storage=url).trials) == 2


def test_a_bad_timeout_is_refused_in_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('name = "t"\n[data]\nname = "wine"\n')
    for bad in ("2x", "0m", "soon", "1h30"):  # 1h30: a number without its unit, not 1 h 30 s
        result = CliRunner().invoke(app, ["study", str(toml), "--storage", f"sqlite:///{tmp_path / 't.db'}", "--timeout", bad])
        assert result.exit_code == 2 and "--timeout" in result.output and "e.g. 2h" in result.output, bad
    assert not (tmp_path / "t.db").exists()


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("600", 600)])
def test_durations(text: str, seconds: float) -> None:
    from tuner.cli import parse_duration
    assert parse_duration(text, "--timeout") == seconds


def test_maximize_with_the_validation_loss_is_refused_even_with_a_metric() -> None:
    spec = tuner.spec_from_dict({**SPEC, "name": "lossy", "train": {**SPEC["train"], "objective": "val_loss",
                                                                      "metric": "net:accuracy"}})
    with pytest.raises(SpecError, match=r"train\.direction.*validation loss, always minimized.*objective = \"val_error\""):
        check_direction(spec)


def test_the_progress_shows_the_highest_score_as_the_best_when_maximizing() -> None:
    from tuner.study.progress import _BestShown

    def told(value: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(value=value, state=TrialState.COMPLETE)

    highest, lowest = _BestShown("maximize"), _BestShown()
    shown = [(highest.after(told(v), None), lowest.after(told(v), None)) for v in (0.5, 0.9, 0.7)]
    assert shown == [(0.5, 0.5), (0.9, 0.5), (0.9, 0.5)]
