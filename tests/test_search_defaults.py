"""The shape stage's refinement of the calibrated rate, and defaults that changed since studies were stored.

``stages.shape.lr_scale`` lets the shape stage search a multiplier on the calibrated rate with the
shape (scripts/lr_shift.py: the best rate moves with the shape, by how much depends on the optimizer).
Defaults that changed (see ``tuner.study.stored.MIGRATIONS``) must not stop a study an
earlier version stored from resuming: it resumes with the values it was made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

import tuner
import tuner.inputs.data
from tuner.inputs.spec import DataSpec, LRStageSpec, ShapeStageSpec, SpecError, spec_from_dict
from tuner.study.stage_studies import with_stage_value
from tuner.study.stored import past_defaults
from tuner.study.stages import shape_stage

from _tiny_study import as_stored_before_versions, before_the_changed_defaults

SPEC: dict[str, Any] = {
    "name": "scaled",
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 3, "batch_size": 32},
    "stages": {"lr": {"trials": 4, "lr_min": 1e-3, "lr_max": 0.3}, "shape": {"trials": 3, "width": [4, 16], "depth": [1, 2]}},
}


def _spec(**shape: Any) -> tuner.StudySpec:
    table = {**SPEC, "stages": {**SPEC["stages"], "shape": {**SPEC["stages"]["shape"], **shape}}}
    return spec_from_dict(table)


@pytest.mark.parametrize("bounds", [[2.0, 4.0], [0.1, 0.5], [0.0, 2.0], [3.0, 1.0]])
def test_lr_scale_must_be_a_range_around_1(bounds: list[float]) -> None:
    with pytest.raises(SpecError, match="stages.shape.lr_scale"):
        _spec(lr_scale=bounds)


def test_the_shape_stage_searches_a_multiplier_on_the_calibrated_rate() -> None:
    stage = shape_stage(_spec(lr_scale=[0.5, 4.0]), best_lr=0.01)
    assert stage.space["lr_scale"].low == 0.5 and stage.space["lr_scale"].high == 4.0 and stage.space["lr_scale"].log
    plan = stage.plan({"width": 8, "depth": 1, "schedule": "constant", "decay": 1.0, "lr_scale": 3.0})
    assert plan.train.lr == pytest.approx(0.03)
    # [1, 1]: the calibrated rate as it is, and no parameter for it.
    fixed = shape_stage(_spec(lr_scale=[1.0, 1.0]), best_lr=0.01)
    assert "lr_scale" not in fixed.space
    assert fixed.plan({"width": 8, "depth": 1, "schedule": "constant", "decay": 1.0}).train.lr == pytest.approx(0.01)


def test_changed_defaults_are_really_changed() -> None:
    # Each entry names a real field whose default today differs from what studies were stored with.
    assert past_defaults()
    for (table, key), legacies in past_defaults().items():
        today = {"stages.lr": LRStageSpec(), "stages.shape": ShapeStageSpec(), "data": DataSpec()}[table]
        assert all(getattr(today, key) != legacy for legacy in legacies)


def test_a_study_stored_with_the_old_defaults_resumes_with_them(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = before_the_changed_defaults(_spec())
    tuner.run_study(old, storage=storage, device="cpu")
    as_stored_before_versions(storage, "scaled")
    shape = optuna.load_study(study_name="scaled/shape", storage=storage)
    stored = dict(shape.user_attrs["settings"])
    assert "lr_scale" not in stored["stages"]["shape"]  # as an earlier version stored it
    assert all("lr_scale" not in t.params for t in shape.trials)
    n_before = len(shape.trials)

    # The same file with today's defaults, one more shape trial: resumed, not refused.
    notes: list[str] = []

    class Notes(tuner.Reporter):
        def message(self, text: str) -> None:
            notes.append(text)

    newer = with_stage_value(_spec(), "shape", "trials", 4)
    tuner.run_study(newer, storage=storage, device="cpu", reporter=Notes())
    shape = optuna.load_study(study_name="scaled/shape", storage=storage)
    assert len(shape.trials) == n_before + 1
    assert shape.user_attrs["settings"] == stored  # the stored settings are untouched
    assert all("lr_scale" not in t.params for t in shape.trials)  # the new trial searches as the old ones did
    said = " ".join(notes)
    for table, key in past_defaults():
        assert f"{table}.{key}" in said


def test_a_new_study_searches_with_todays_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'new.db'}"
    result = tuner.run_study(_spec(), storage=storage, device="cpu")
    said = "".join(capsys.readouterr())  # SGD: the rule leaves the rate where it was calibrated, and says only the scale
    assert "stage 'shape' scales it by lr_scale in [" in said and "moves it to each shape" not in said
    shape = optuna.load_study(study_name="scaled/shape", storage=storage)
    # The summary names the rate the winner trained at: the calibrated one moved to its shape, times its scale.
    best = shape.best_trial
    moved = result.best_lr * best.user_attrs["lr_move"]  # moved to its shape by the optimizer's rule (lr_transfer)
    assert result.stages["shape"].best_params["lr"] == pytest.approx(moved * best.params["lr_scale"])
    assert best.user_attrs["lr"] == pytest.approx(result.best_lr)
    settings = shape.user_attrs["settings"]["stages"]["shape"]
    default = ShapeStageSpec()
    assert settings["pruner"] == default.pruner
    assert settings["lr_scale"] == default.lr_scale == "auto"  # what the user wrote; the range it resolved to:
    low, high = shape.user_attrs["lr_scale_range"]
    assert low < 1 < high
    assert all(low <= t.params["lr_scale"] <= high for t in shape.trials if t.state.is_finished())


def test_a_value_the_spec_sets_is_compared_as_any_other(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    tuner.run_study(before_the_changed_defaults(_spec()), storage=storage, device="cpu")
    as_stored_before_versions(storage, "scaled")
    with pytest.raises(tuner.StudyMismatchError, match="lr_scale"):
        tuner.run_study(_spec(lr_scale=[0.2, 5.0]), storage=storage, device="cpu")


def test_a_field_whose_default_changed_twice_resumes_each_study_with_its_own() -> None:
    from tuner.study import stored

    # lr_scale's default changed twice: [1, 1] (before it existed), [0.5, 4] (version 1), "auto" (version 3).
    later = next(m for m in stored.MIGRATIONS if m.version > 1 and ("stages.shape", "lr_scale") in m.legacy)
    assert stored.past_defaults()[("stages.shape", "lr_scale")] == [(1.0, 1.0), (0.5, 4.0)]
    before_v1 = {"stages": {"shape": {"pruner": "none"}}}  # lr_scale left out: it did not exist
    at_v1 = {"stages": {"shape": {"pruner": "hyperband", "lr_scale": [0.5, 4.0]}}}
    assert stored.made_with("stages.shape", "lr_scale", before_v1, None) == (1.0, 1.0)
    assert stored.made_with("stages.shape", "lr_scale", at_v1, None) == [0.5, 4.0]
    assert stored.made_with("stages.shape", "pruner", before_v1, None) == "none"
    # A field never stored (none is today, but a future one may be) takes the default of its version.
    assert stored.default_when_made("stages.shape", "lr_scale", 1) == (0.5, 4.0)
    assert stored.default_when_made("stages.shape", "lr_scale", 2) == (0.5, 4.0)
    assert stored.default_when_made("stages.shape", "lr_scale", 0) == (1.0, 1.0)
    assert stored.default_when_made("stages.shape", "lr_scale", later.version) is None  # today's default


def test_a_new_stage_study_stores_the_contract_version_it_was_made_under(tmp_path: Path) -> None:
    from tuner.study.stored import CONTRACT_VERSION, MIGRATIONS

    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)) and CONTRACT_VERSION == len(MIGRATIONS)
    storage = f"sqlite:///{tmp_path / 'new.db'}"
    tuner.run_study(_spec(), storage=storage, device="cpu")
    for stage in ("lr", "shape"):
        assert optuna.load_study(study_name=f"scaled/{stage}", storage=storage).user_attrs["contract_version"] == CONTRACT_VERSION


def test_a_csv_study_stored_before_constant_columns_were_dropped_resumes_keeping_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    rows = ["a,b,c,flat,label"] + [f"{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},7,{int(r[0] + r[1] > 0)}" for r in x]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    table = {**SPEC, "name": "flatcsv", "data": {"name": "csv", "path": str(tmp_path / "t.csv"), "target": "label"}}
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = before_the_changed_defaults(spec_from_dict(table))
    assert old.data.drop_constant_columns is False
    tuner.run_study(old, storage=storage, device="cpu")  # as the release before stored it: 4 inputs
    as_stored_before_versions(storage, "flatcsv")
    lr = optuna.load_study(study_name="flatcsv/lr", storage=storage)
    n_params = {t.user_attrs["n_params"] for t in lr.trials}
    assert n_params == {(4 + 1) * 8 + (8 + 1) * 2}

    notes: list[str] = []

    class Notes(tuner.Reporter):
        def message(self, text: str) -> None:
            notes.append(text)

    today = spec_from_dict({**table, "stages": {**table["stages"], "shape": {**table["stages"]["shape"], "trials": 4}}})
    assert today.data.drop_constant_columns is True
    tuner.run_study(today, storage=storage, device="cpu", reporter=Notes())
    assert any("data.drop_constant_columns" in note for note in notes)
    shape = optuna.load_study(study_name="flatcsv/shape", storage=storage)
    assert len(shape.trials) == 4
    # The new trial trained on the same 4 inputs as the stored ones: its input layer has 4 columns.
    newest = max(shape.trials, key=lambda t: t.number)
    width, depth = newest.params["width"], newest.params["depth"]
    assert newest.user_attrs["n_params"] == (4 + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * 2

    # tuner best rebuilds the spec from the stored settings: the columns stay, the stored value is reproduced.
    best = tuner.write_best("flatcsv", storage, tmp_path / "best", device="cpu")
    assert best.metrics["validation"]["value"] == pytest.approx(best.metrics["stored_value"], abs=1e-6)
    assert "drop_constant_columns = false" in (tmp_path / "best" / "best.toml").read_text()

    fresh = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.warns(tuner.inputs.data.DataWarning, match="'flat' holds one value only: dropped"):
        tuner.run_study(today, storage=fresh, device="cpu")
    assert {t.user_attrs["n_params"] for t in optuna.load_study(study_name="flatcsv/lr", storage=fresh).trials} == {
        (3 + 1) * 8 + (8 + 1) * 2}


def test_a_value_written_out_in_a_versioned_study_is_not_taken_for_a_past_default(tmp_path: Path) -> None:
    from tuner.errors import StudyMismatchError

    storage = f"sqlite:///{tmp_path / 'explicit.db'}"
    tuner.run_study(_spec(pruner="none"), storage=storage, device="cpu")  # written out, today: not a default
    with pytest.raises(StudyMismatchError, match="pruner"):
        tuner.run_study(_spec(), storage=storage, device="cpu")  # the line removed: hyperband, a real change
