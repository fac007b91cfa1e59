"""A stored study as two flat CSV files: one row per trial, and the learning curves in long format.

``trials.csv``: one row per trial of every stage (``lr``, ``shape``, ``audit``, in that order), with
columns ``stage, number, state, value, datetime_start, datetime_complete, duration_s``, then
``params_<name>`` for every parameter seen in any stage (empty where a stage does not search it) and
``user_attrs_<key>`` for every user attribute; ``user_attrs_trained_lr`` is the learning rate the
trial trained at (in stage ``shape``: ``user_attrs_lr``, the calibrated rate, times ``params_lr_scale``),
filled in for trials stored before it was kept. The per-epoch ``learning_curve`` is left out there: it
is ``curves.csv``. Other list or dict attributes (``train_loss_curve``, ...) are JSON-encoded, so a
cell always holds one value and nothing is lost.

``curves.csv``: exactly ``stage, trial, epoch, value``; one row per epoch of each trial's
``learning_curve`` (the validation objective, epochs from 1; empty ``value`` where it was NaN/inf), or
of its reported intermediate values for a trial stored without that attribute.

Example:
    >>> write_export("quickstart", out="results", storage="sqlite:///tuner.db")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from tuner.deprecation import keyword_only_since
from tuner.inputs.choices import label_choice
from tuner.study.results import load_stage_trials, trial_trained_lr
from tuner.study.stored import LEARNING_CURVE_ATTR, TRAINED_LR_ATTR

__all__ = ["CURVE_COLUMNS", "curves_frame", "trials_frame", "write_export"]

CURVE_COLUMNS = ["stage", "trial", "epoch", "value"]
TRIAL_COLUMNS = ["stage", "number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
CURVE_ATTR = LEARNING_CURVE_ATTR


def trials_frame(name: str, storage: str | BaseStorage | None = None) -> pd.DataFrame:
    """One row per trial of every stage of study ``name`` (see the module docstring for columns)."""
    return _trials_frame(load_stage_trials(name, storage))


def _trials_frame(stage_trials: dict[str, list[FrozenTrial]]) -> pd.DataFrame:
    rows = [_trial_row(stage, trial) for stage, trials in stage_trials.items() for trial in trials]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    # Fixed columns first, then params, then user attributes, each group sorted, for stable files.
    params = sorted(c for c in frame.columns if c.startswith("params_"))
    attrs = sorted(c for c in frame.columns if c.startswith("user_attrs_"))
    # Nullable dtypes keep an int attribute an int in the file where other stages leave it empty.
    return frame[TRIAL_COLUMNS + params + attrs].convert_dtypes()


def curves_frame(name: str, storage: str | BaseStorage | None = None) -> pd.DataFrame:
    """Learning curves of every trial of study ``name``, long format: ``stage, trial, epoch, value``."""
    return _curves_frame(load_stage_trials(name, storage))


def _curves_frame(stage_trials: dict[str, list[FrozenTrial]]) -> pd.DataFrame:
    rows = [
        (stage, trial.number, epoch, value)
        for stage, trials in stage_trials.items()
        for trial in trials
        for epoch, value in _curve(trial)
    ]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


@keyword_only_since(("out", "storage"), renamed={"out_dir": "out"})
def write_export(name: str, *, out: str | Path = ".", storage: str | BaseStorage | None = None) -> tuple[Path, Path]:
    """Write ``trials.csv`` and ``curves.csv`` of study ``name`` into the folder ``out``; return their paths.

    Args:
        name: the study's name (its stages are the Optuna studies ``<name>/<stage>``).
        out: the folder to write into (created); default the current one.
        storage: an Optuna storage URL (default ``sqlite:///tuner.db``) or storage object.

    The old positional order ``write_export(name, out_dir, storage)`` still works, with a
    ``DeprecationWarning``.

    Raises:
        tuner.analysis.importance.UnknownStudyError: no study of that name in the storage (nothing written).
    """
    stage_trials = load_stage_trials(name, storage)
    trials, curves = _trials_frame(stage_trials), _curves_frame(stage_trials)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    trials_path, curves_path = folder / "trials.csv", folder / "curves.csv"
    trials.to_csv(trials_path, index=False)
    curves.to_csv(curves_path, index=False)
    return trials_path, curves_path


def _trial_row(stage: str, trial: FrozenTrial) -> dict[str, Any]:
    start, end = trial.datetime_start, trial.datetime_complete
    row: dict[str, Any] = {
        "stage": stage,
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "datetime_start": start.isoformat() if start else None,
        "datetime_complete": end.isoformat() if end else None,
        "duration_s": (end - start).total_seconds() if start and end else None,
    }
    row.update({f"params_{key}": value for key, value in trial.params.items()})
    # A variant's stage lr (lr[optimizer=adam]) trained with its choice: its rows say so, as shape's sampled ones do.
    row.update({f"params_{key}": value for key, value in label_choice(stage).items()})
    for key, value in trial.user_attrs.items():
        if key == CURVE_ATTR:
            continue
        row[f"user_attrs_{key}"] = json.dumps(value) if isinstance(value, (list, dict, tuple)) else value
    # The rate the trial trained at, also for trials stored before they kept it (worked out as it was).
    row[f"user_attrs_{TRAINED_LR_ATTR}"] = trial_trained_lr(trial)
    return row


def _curve(trial: FrozenTrial) -> list[tuple[int, float | None]]:
    curve = trial.user_attrs.get(CURVE_ATTR)
    if isinstance(curve, list):
        return [(epoch, value) for epoch, value in enumerate(curve, start=1)]
    return sorted(trial.intermediate_values.items())
