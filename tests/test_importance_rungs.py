"""Importance of a stage whose pruner stopped most of its trials: read at the deepest rung enough
trials reached, said so in the table, the CLI and the report, and never silently left out.

The stored studies are made with Optuna directly (trials with their per-epoch reports), no training.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from typer.testing import CliRunner

from tuner.analysis.importance import (
    COLUMNS,
    MIN_TRIALS,
    RUNG_CAVEAT,
    audit_verdict,
    basis_notes,
    importance_table,
)
from tuner.analysis.rungs import deepest_rung, reported_values
from tuner.cli import app
from tuner.report import importance_sentences, plot_importance

EPOCHS = 20
SPACE = {
    "width": IntDistribution(8, 128, log=True),
    "depth": IntDistribution(1, 3),
    "schedule": CategoricalDistribution(["constant", "step"]),
    "lr_scale": FloatDistribution(0.5, 4.0, log=True),
}
FIRST_SIX = ["stage", "evaluator", "param", "param_b", "importance", "std"]


def _curve(params: dict, epochs: int) -> dict[int, float]:
    """An error that falls with the epochs, mostly by width, a little by lr_scale and width x depth."""
    final = 0.3 - 0.05 * math.log2(params["width"]) + 0.02 * math.log2(params["lr_scale"]) \
        + 0.01 * math.log2(params["width"]) * (params["depth"] - 2)
    return {epoch: final + 0.5 / epoch for epoch in range(1, epochs + 1)}


def _stage(storage: optuna.storages.BaseStorage, name: str, stage: str, stopped_at: list[int | None],
           seed: int = 0, diverged: Collection[int] = (), curves_only: bool = False) -> None:
    """Stage study ``name/stage``: one trial per entry of ``stopped_at``, the epoch the pruner stopped it
    at (None: complete, all EPOCHS epochs). ``diverged``: indices of pruned trials that diverged instead.
    ``curves_only``: store the per-epoch values only as the ``learning_curve`` attribute (no reports)."""
    study = optuna.create_study(study_name=f"{name}/{stage}", storage=storage)
    rng = np.random.default_rng(seed)
    for index, stop in enumerate(stopped_at):
        params = {"width": round(2 ** rng.uniform(3, 7)), "depth": int(rng.integers(1, 4)),
                  "schedule": str(rng.choice(["constant", "step"])), "lr_scale": float(2 ** rng.uniform(-1, 2))}
        reports = _curve(params, EPOCHS if stop is None else stop)
        attrs = {"learning_curve": list(reports.values()), "diverged": index in diverged}
        if index in diverged:
            attrs["learning_curve"].append(None)  # the epoch it blew up in, never reported
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if stop is None else TrialState.PRUNED,
            value=reports[EPOCHS] if stop is None else None,
            params=params, distributions=SPACE, user_attrs=attrs,
            intermediate_values={} if curves_only else reports,
        ))


def _hyperband_like(n_complete: int, pruned: dict[int, int]) -> list[int | None]:
    """``n_complete`` complete trials, then ``pruned[epoch]`` trials stopped at each epoch."""
    return [None] * n_complete + [epoch for epoch, count in pruned.items() for _ in range(count)]


def test_a_stage_with_eight_complete_trials_is_analysed_at_the_deepest_rung_ten_reached() -> None:
    # The quickstart's shape stage: 8 complete, 16 pruned by Hyperband at epochs 1, 3 and 9.
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "qs", "shape", _hyperband_like(8, {9: 6, 3: 5, 1: 5}))
    table, skipped = importance_table("qs", storage)
    assert skipped == []
    assert list(table.columns) == COLUMNS and COLUMNS[:6] == FIRST_SIX and COLUMNS[6:] == ["basis", "trials"]
    assert set(table.basis) == {"epoch 9"} and set(table.trials) == {8 + 6}  # the complete ones count too
    fanova = table[table.evaluator == "fanova"]
    assert set(fanova[fanova.param_b == ""].param) == set(SPACE)
    assert len(fanova[fanova.param_b != ""]) == 6  # every pair of the four parameters
    mains = fanova[fanova.param_b == ""].set_index("param").importance
    assert mains.idxmax() == "width"


def test_the_rung_moves_up_when_too_few_trials_reached_the_deeper_one() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "up", "shape", _hyperband_like(6, {9: 3, 3: 5, 1: 10}))
    table, skipped = importance_table("up", storage)
    assert skipped == [] and set(table.basis) == {"epoch 3"} and set(table.trials) == {6 + 3 + 5}


def test_a_stage_with_enough_complete_trials_gets_both_bases_each_with_its_count() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "both", "shape", _hyperband_like(12, {3: 4, 1: 4}))
    table, skipped = importance_table("both", storage)
    assert skipped == []
    counts = table.drop_duplicates("basis").set_index("basis").trials.to_dict()
    assert counts == {"complete": 12, "epoch 3": 16}
    assert list(dict.fromkeys(table.basis)) == ["complete", "epoch 3"]  # final values first
    for _, rows in table[table.evaluator == "fanova"].groupby("basis"):
        assert rows.importance.sum() <= 1 + 1e-9  # each basis is an analysis of its own


def test_without_a_pruner_a_stage_keeps_its_complete_basis_only() -> None:
    # Diverged trials end pruned but the pruner did not stop them: they set no rung.
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "lr_only", "shape", [None] * 12 + [2, 4], diverged={12, 13})
    table, skipped = importance_table("lr_only", storage)
    assert skipped == [] and set(table.basis) == {"complete"} and set(table.trials) == {12}
    assert deepest_rung(optuna.load_study(study_name="lr_only/shape", storage=storage).trials, MIN_TRIALS) == (None, None)


def test_a_stage_with_too_few_trials_anywhere_is_named_with_both_counts() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "few", "lr", [None] * 8)
    _stage(storage, "few", "shape", _hyperband_like(5, {1: 4}))
    table, skipped = importance_table("few", storage)
    assert table.empty and list(table.columns) == COLUMNS
    assert dict(skipped) == {
        "lr": f"8 complete trials; at least {MIN_TRIALS} are needed",
        "shape": f"5 complete trials, and at most 9 at any epoch a pruned trial reached; at least {MIN_TRIALS} are needed",
    }


def test_a_trial_stored_without_reports_is_read_from_its_learning_curve() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "old", "shape", _hyperband_like(8, {9: 6}) + [4], diverged={14}, curves_only=True)
    trials = optuna.load_study(study_name="old/shape", storage=storage).trials
    assert sorted(reported_values(trials[14])) == [1, 2, 3, 4]  # not the epoch it diverged in
    table, _ = importance_table("old", storage)
    assert set(table.basis) == {"epoch 9"} and set(table.trials) == {14}


def test_the_audit_verdict_still_reads_complete_trials_only() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "aud", "audit", _hyperband_like(8, {5: 6}))
    table, _ = importance_table("aud", storage)
    assert set(table.basis) == {"epoch 5"}
    verdict = audit_verdict("aud", storage)
    assert verdict.held is None and verdict.n_trials == 8 and "8 complete trials" in verdict.reason


def test_cli_importance_says_what_a_rung_leans_against_and_names_every_skipped_stage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rungs.db'}"
    storage = optuna.storages.RDBStorage(url)
    _stage(storage, "cli", "lr", [None] * 7)
    _stage(storage, "cli", "shape", _hyperband_like(8, {9: 6, 3: 5, 1: 5}))
    result = CliRunner().invoke(app, ["importance", "cli", "--storage", url, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "skipped stage lr: 7 complete trials; at least 10 are needed" in lines
    rung = [line for line in lines if line.startswith("stage shape at epoch 9: 14 trials reached it")]
    assert len(rung) == 1 and "slow starters" in rung[0] and "Wu et al. 2018" in rung[0]
    with (tmp_path / "out" / "importance.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:6] == FIRST_SIX and rows[0][6:] == ["basis", "trials"]
    assert {(row[0], row[6], row[7]) for row in rows[1:]} == {("shape", "epoch 9", "14")}


def test_the_report_shows_each_basis_apart_and_says_what_a_rung_leans_against() -> None:
    storage = optuna.storages.InMemoryStorage()
    _stage(storage, "rep", "shape", _hyperband_like(12, {3: 4, 1: 4}))
    table, _ = importance_table("rep", storage)
    sentences = importance_sentences(table)
    assert sentences[0].startswith("Stage shape (fanova, 12 complete trials): width matters most")
    assert sentences[1].startswith("Stage shape (fanova, at epoch 3, 16 trials): width matters most")
    assert sentences[2] == RUNG_CAVEAT[0].upper() + RUNG_CAVEAT[1:] + "."
    assert basis_notes(table) == [(
        f"stage shape at epoch 3: 16 trials reached it, pruned ones included (its complete trials are also "
        f"analysed alone); {RUNG_CAVEAT}"
    )]
    fig = plot_importance(table)
    assert [ax.get_title() for ax in fig.axes] == ["stage shape (12 complete trials)", "stage shape at epoch 3 (16 trials)"]


@pytest.mark.parametrize("stage", ["shape", "audit"])
def test_a_rung_basis_of_a_stage_with_nothing_varying_is_named(stage: str) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=f"flat/{stage}", storage=storage)
    fixed = {"width": 16}
    for stop in _hyperband_like(4, {2: 8}):
        reports = {epoch: 0.5 for epoch in range(1, (stop or EPOCHS) + 1)}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if stop is None else TrialState.PRUNED, value=0.5 if stop is None else None,
            params=fixed, distributions={"width": IntDistribution(8, 128)}, intermediate_values=reports))
    table, skipped = importance_table("flat", storage)
    assert table.empty and skipped == [(stage, "no parameter varies across its trials")]
