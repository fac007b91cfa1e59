"""Exporting a study to flat CSV files: one row per trial, and the learning curves in long format."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

import tuner
from tuner.analysis.export import CURVE_COLUMNS, write_export
from tuner.cli import app

from _tiny_study import audited_study


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuner.StudyResult]:
    return audited_study(tmp_path_factory.getbasetemp())


def _stored_trials(storage: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    return {stage: optuna.load_study(study_name=f"audited/{stage}", storage=storage).trials for stage in ("lr", "shape", "audit")}


def test_trials_csv_has_one_row_per_trial_of_every_stage(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    trials_path, _ = write_export("audited", out=tmp_path, storage=storage)
    table = pd.read_csv(trials_path)
    stored = _stored_trials(storage)

    assert list(table.columns[:4]) == ["stage", "number", "state", "value"]
    assert table.groupby("stage").size().to_dict() == {stage: len(trials) for stage, trials in stored.items()}
    assert {"params_lr", "params_width", "params_one_minus_momentum", "user_attrs_train_seconds"} <= set(table.columns)
    assert "user_attrs_learning_curve" not in table.columns  # that is curves.csv

    audit = table[table.stage == "audit"].set_index("number")
    for trial in stored["audit"]:
        row = audit.loc[trial.number]
        assert row.state == trial.state.name
        assert row.params_lr == pytest.approx(trial.params["lr"])
        assert json.loads(row.user_attrs_train_loss_curve) == pytest.approx(trial.user_attrs["train_loss_curve"])
    shape = table[table.stage == "shape"]
    assert shape.params_lr.isna().all()  # not searched in stage shape...
    assert (shape.user_attrs_lr == stored["shape"][0].user_attrs["lr"]).all()  # ...but fixed, as an attribute


def test_trials_csv_has_the_rate_each_trial_trained_at(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    table = pd.read_csv(write_export("audited", out=tmp_path, storage=storage)[0])
    stored = _stored_trials(storage)
    searched = table[table.stage != "shape"]
    assert searched.user_attrs_trained_lr.to_numpy() == pytest.approx(searched.params_lr.to_numpy())
    shape = table[table.stage == "shape"]
    assert "lr_scale" in stored["shape"][0].params  # the multiplier was searched: the two rates differ
    assert shape.user_attrs_trained_lr.to_numpy() == pytest.approx(
        (shape.user_attrs_lr * shape.user_attrs_lr_move * shape.params_lr_scale).to_numpy())
    assert all(t.user_attrs["trained_lr"] == pytest.approx(t.user_attrs["lr"] * t.user_attrs["lr_move"] * t.params["lr_scale"])
               for t in stored["shape"])


def test_curves_csv_is_long_with_a_row_per_epoch(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    _, curves_path = write_export("audited", out=tmp_path, storage=storage)
    curves = pd.read_csv(curves_path)
    stored = _stored_trials(storage)

    assert list(curves.columns) == CURVE_COLUMNS
    assert len(curves) == sum(len(t.user_attrs["learning_curve"]) for ts in stored.values() for t in ts)
    for stage, trials in stored.items():
        for trial in trials:
            rows = curves[(curves.stage == stage) & (curves.trial == trial.number)]
            assert rows.epoch.tolist() == list(range(1, len(trial.user_attrs["learning_curve"]) + 1))
            assert rows.value.tolist() == pytest.approx(trial.user_attrs["learning_curve"], nan_ok=True)


def test_cli_export_writes_both_files(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    result = CliRunner().invoke(app, ["export", "audited", "--storage", storage, "--out", str(tmp_path / "csv")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["curves.csv", "trials.csv"]


def test_cli_export_of_an_unknown_study_exits_2_and_writes_nothing(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    result = CliRunner().invoke(app, ["export", "audit", "--storage", storage, "--out", str(tmp_path / "csv")])
    assert result.exit_code == 2
    assert "study 'audit': not found" in result.output and "studies there: audited" in result.output
    assert not (tmp_path / "csv").exists()


def test_write_export_takes_out_and_storage_by_keyword_and_the_old_order_with_a_warning(
    audited: tuple[str, tuner.StudyResult], tmp_path: Path
) -> None:
    storage, _ = audited
    new = write_export("audited", out=tmp_path / "new", storage=storage)
    with pytest.warns(DeprecationWarning, match="pass out=, storage= by keyword"):
        old = write_export("audited", tmp_path / "old", storage)
    assert [p.parent for p in old] == [tmp_path / "old"] * 2
    assert [p.read_text() for p in old] == [p.read_text() for p in new]
    with pytest.warns(DeprecationWarning):
        write_export("audited", out_dir=tmp_path / "renamed", storage=storage)
    assert (tmp_path / "renamed" / "curves.csv").is_file()
