"""Optuna's multi-fidelity pruners for any stage, and torch's threads picked per process and recorded."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import tuner
from tuner.study.runner import TunerInputError, pick_threads


def _spec(lr_pruner: str, shape_pruner: str) -> tuner.StudySpec:
    return tuner.spec_from_dict({
        "name": "pruned", "data": {"name": "wine"}, "model": {"width": 8}, "train": {"epochs": 9, "batch_size": 32},
        "stages": {"lr": {"trials": 12, "lr_min": 1e-5, "lr_max": 1.0, "pruner": lr_pruner, "batch_trials": 6},
                   # first_rung = 1: Optuna's pruner as it is, from epoch 1 (tests/test_pruning.py: "auto")
                   "shape": {"trials": 9, "width": [4, 16], "depth": [1, 2], "pruner": shape_pruner, "first_rung": 1}},
    })


@pytest.mark.parametrize(("lr_pruner", "shape_pruner"), [("successive_halving", "hyperband"), ("hyperband", "successive_halving")])
def test_hyperband_and_successive_halving_prune_on_epochs_and_are_recorded(tmp_path: Path, lr_pruner: str, shape_pruner: str) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    result = tuner.run_study(_spec(lr_pruner, shape_pruner), storage=url, device="cpu")
    for stage, kind in (("lr", lr_pruner), ("shape", shape_pruner)):
        study = optuna.load_study(study_name=f"pruned/{stage}", storage=url)
        recorded = study.user_attrs["search"]["pruner"]
        assert recorded["name"] == kind and recorded["min_resource"] == 1 and recorded["reduction_factor"] == 3
        if kind == "hyperband":
            assert recorded["max_resource"] == 9
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == result.stages[stage].budget
        for trial in study.trials:  # every report of a trial was stored, pruned or not (a diverged epoch is not reported)
            assert len(trial.intermediate_values) == trial.user_attrs["epochs_done"] - trial.user_attrs["diverged"]
    # Batched copies too: some lr trials stopped at an early rung, not diverged, with fewer epochs.
    lr_trials = optuna.load_study(study_name="pruned/lr", storage=url).trials
    assert any(t.state == TrialState.PRUNED and not t.user_attrs["diverged"] and t.user_attrs["epochs_done"] < 9
               for t in lr_trials)


def test_threads_default_to_one_on_the_cpu_can_be_set_and_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv("TUNER_THREADS", raising=False)
    assert pick_threads(None, cpu) == 1
    assert pick_threads(3, cpu) == 3
    assert pick_threads(None, torch.device("cuda")) is None  # a GPU trains: torch's own setting stays
    monkeypatch.setenv("TUNER_THREADS", "2")
    assert pick_threads(None, cpu) == 2 and pick_threads(1, cpu) == 1  # the argument wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("TUNER_THREADS", bad)
        with pytest.raises(TunerInputError, match="TUNER_THREADS"):
            pick_threads(None, cpu)
    monkeypatch.setenv("TUNER_THREADS", "2")
    url = f"sqlite:///{tmp_path / 't.db'}"
    tuner.run_study(_spec("none", "none"), storage=url, device="cpu")
    trials = optuna.load_study(study_name="pruned/shape", storage=url).trials
    assert {t.user_attrs["threads"] for t in trials} == {2}
