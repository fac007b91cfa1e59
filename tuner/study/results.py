"""A stored study read back: its stage studies, their trials, and each stage's summary.

The names it is stored under (the contract) are spelled in :mod:`tuner.study.stored`; they are
importable from here too, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import open_existing_storage, redact, resolve_url
from tuner.study.stored import (  # noqa: F401 -- the contract's names, read from here by many modules
    BATCHED_WITH_ATTR, BEST_LR_ATTR, BEST_TRIAL_ATTR, BUDGET_ATTR, CONTRACT_VERSION_ATTR, DEVICE_ATTR, DIVERGED_ATTR,
    EPOCHS_DONE_ATTR, ERROR_ATTR, FALLBACK_ATTR, HANDOFF_ATTR, HANDOFF_TRIALS_ATTR, LEARNING_CURVE_ATTR, LR_ATTR, LR_FIND_ATTR, N_PARAMS_ATTR,
    OBJECTIVE_ATTR, SEARCH_ATTR, SETTINGS_ATTR, SETTINGS_HASH_ATTR, SPEC_PATH_ATTR, STAGES, SURPLUS_ATTR, TASK_ATTR,
    THREADS_ATTR, TIME_MEASURE_ATTR, TRACEBACK_ATTR, TRAIN_LOSS_CURVE_ATTR, TRAIN_SECONDS_ATTR, TRAINED_TOGETHER_ATTR,
    UNTRAINED_VALUE_ATTR,
    VERDICT_ATTR,
    check_version, split_stage_study_name, stage_study_name,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class StageSummary:
    stage: str
    study_name: str
    budget: int
    n_complete: int
    n_pruned: int
    n_diverged: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    wall_seconds: float  # first trial start to last trial end, across resumed runs
    train_seconds: float  # summed training time of the stage's trials
    best_trial: int | None = None  # the number of the trial that gave best_value
    trained_together: int = 1  # K: how many trials its latest batch trained as one model
    fallback: str | None = None  # why trials asked together trained apart (one line), if they did


def trained_params(params: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's sampled ``params`` with its stage's ``fixed`` settings, ``lr`` the rate it trained at.

    In stage ``shape`` that is the calibrated rate (fixed) times the trial's ``lr_scale``.
    """
    values = {**(fixed or {}), **params}
    if "lr_scale" in values and "lr" in values:
        values["lr"] = values["lr"] * values["lr_scale"]
    return values


def stage_summary(study: optuna.Study, stage: str, budget: int, fixed: dict[str, Any] | None = None) -> StageSummary:
    """What a stage's stored trials add up to; ``fixed``: settings shared by its trials (e.g. lr)."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    starts = [t.datetime_start for t in finished if t.datetime_start]
    ends = [t.datetime_complete for t in finished if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    return StageSummary(
        stage=stage,
        study_name=study.study_name,
        budget=budget,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_diverged=sum(bool(t.user_attrs.get(DIVERGED_ATTR)) for t in finished),
        n_failed=sum(t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS_ATTR) for t in trials),
        best_value=best.value if best else None,
        best_params=trained_params(best.params, fixed) if best else {},
        wall_seconds=wall,
        train_seconds=sum(float(t.user_attrs.get(TRAIN_SECONDS_ATTR, 0.0)) for t in finished),
        best_trial=best.number if best else None,
        trained_together=int(study.user_attrs.get(TRAINED_TOGETHER_ATTR, 1)),
        fallback=study.user_attrs.get(FALLBACK_ATTR),
    )


class UnknownStudyError(LookupError):
    """No stored study of that name; the message lists the names that exist."""


class NotMadeByTunerError(ValueError):
    """Stage studies that hold trials but no settings of tuner's: another tool made them."""


def check_made_by_tuner(name: str, studies: Mapping[str, optuna.Study]) -> None:
    """Refuse study ``name`` if a stage holds trials without the settings ``tuner study`` stores first.

    A stage without settings and without trials is what an interrupted start of tuner leaves: it passes.

    Raises:
        NotMadeByTunerError: naming the first such stage, and what can show that study instead.
    """
    for stage, study in studies.items():
        if SETTINGS_ATTR not in study.user_attrs and study.get_trials(deepcopy=False):
            raise NotMadeByTunerError(
                f"study {name!r}: stage '{stage}' has trials but no stored settings; was it made by tuner? "
                f"tuner reads the studies `tuner study` ran; browse this one with `tuner dashboard`"
            )


def open_for_reading(storage: str | BaseStorage | None) -> tuple[BaseStorage, str]:
    """The storage, and its URL to name in messages. A missing SQLite file is not created."""
    if isinstance(storage, BaseStorage):
        url = getattr(storage, "url", None)  # RDBStorage keeps the URL it was opened with
        return storage, redact(url) if isinstance(url, str) else type(storage).__name__
    url = resolve_url(storage)
    return open_existing_storage(url), redact(url)


def stored_study_names(storage: str | BaseStorage | None = None) -> list[str]:
    """The names of the tuner studies in a storage (``quickstart`` for ``quickstart/lr`` ...)."""
    opened, _ = open_for_reading(storage)
    return _tuner_names(optuna.get_all_study_names(opened))


def _tuner_names(study_names: Sequence[str]) -> list[str]:
    return sorted({split[0] for n in study_names if (split := split_stage_study_name(n))})


def load_stage_studies(name: str, storage: str | BaseStorage | None = None) -> dict[str, optuna.Study]:
    """The stored stage studies of study ``name``, by stage, in stage order.

    Raises:
        UnknownStudyError: no stage of that name is stored (or the SQLite file does not exist); the
            message lists the names that are.
    """
    opened, where = open_for_reading(storage)
    existing = set(optuna.get_all_study_names(opened))
    stages = [stage for stage in STAGES if stage_study_name(name, stage) in existing]
    if not stages:
        known = ", ".join(_tuner_names(sorted(existing))) or "none"
        raise UnknownStudyError(f"study {name!r}: not found in {where}; studies there: {known}")
    studies = {stage: optuna.load_study(study_name=stage_study_name(name, stage), storage=opened) for stage in stages}
    for study in studies.values():
        check_version(study.study_name, study.user_attrs)
    return studies


def load_stage_trials(name: str, storage: str | BaseStorage | None = None) -> dict[str, list[FrozenTrial]]:
    """Every trial of each stored stage of study ``name``, by stage (see :func:`load_stage_studies`)."""
    return {stage: study.get_trials(deepcopy=False) for stage, study in load_stage_studies(name, storage).items()}
