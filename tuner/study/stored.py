"""The stored contract: what ``tuner`` writes into a storage, spelled once, and how it changed.

Everything ``tuner`` knows about a study lives in its storage: each stage is the Optuna study
``<name>/<stage>`` (:func:`stage_study_name`), and what it stores sits under the user attribute
names below. The runner writes them; the analyses, the report, the export and ``tuner best`` read
them. Renaming one breaks every study stored before, so every module takes them from here.

The rates, one schema: stage ``lr`` stores the rate it hands on (``best_lr``), its best trial
(``best_trial``; the rate handed on is that trial's under ``stages.lr.handoff = "best"``, else read
from the smoothed U of all its trials) and how the rate was chosen (``handoff``); stage ``shape`` and each of its trials store the rate they train at
before their own ``lr_scale`` (``lr``); a trial's own rate is its ``lr`` param (stage ``lr``) or
``lr`` times ``lr_scale`` (stage ``shape``: :func:`tuner.study.results.trained_params`), stored on
each trial as ``trained_lr`` since it was asked.

**Versions.** Each change to what a study is made with (a default that changed, a field that
appeared) is a :class:`Migration` in :data:`MIGRATIONS`, in order, with the values studies stored
before it were made with. Every stage study made from now on stores the contract version it was
made under (:data:`CONTRACT_VERSION_ATTR`); one stored by a newer ``tuner`` than this one is
refused in one line (:func:`check_version`) instead of being misread. A study stored before
versions existed has none and is read as it always was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuner.errors import StudyMismatchError
from tuner.inputs.choices import is_lr_label

STAGES = ("lr", "shape", "audit")  # every stage a study may have, in order
# With train.optimizer or train.batch_size listed (since contract 5), stage lr is one study per combination of
# the listed values, each named by its label instead of "lr": <name>/lr[optimizer=adam] (tuner.inputs.choices).

# User attributes of a stage study.
SETTINGS_ATTR = "settings"  # the spec's settings the stage's results depend on
SETTINGS_HASH_ATTR = "settings_hash"
SEARCH_ATTR = "search"  # sampler and pruner with their settings, and the Optuna version
OBJECTIVE_ATTR = "objective"
BUDGET_ATTR = "budget"
BEST_LR_ATTR = "best_lr"  # on <name>/lr, at the hand-off: the rate handed on
BEST_TRIAL_ATTR = "best_trial"  # on <name>/lr, at the hand-off: its best trial (whose rate it is, by rule "best")
# On <name>/lr, at the hand-off (since contract 3): how the rate was chosen, a small JSON record:
# rule, lr, basin [low, high], noise, noise_basis, curve [[log10 lr, smoothed value]...],
# candidates [[lr, worst smoothed value within ±0.25 decade]...], why, n_points (rate_rule.RateChoice); and
# backed: true where the curve was read as rule "backed" reads it (since contract 8; absent otherwise).
HANDOFF_ATTR = "handoff"
HANDOFF_TRIALS_ATTR = "handoff_trials"  # on <name>/lr: finished lr trials the hand-off saw
LR_ATTR = "lr"  # on <name>/shape and its trials: the calibrated rate they train at (before lr_scale)
# With listed choices: on each <name>/lr[...], the listed fields and its values ({"optimizer": "adam"}); on
# <name>/shape, every variant's rate, [{"stage": "lr[optimizer=adam]", "choice": {...}, "lr": rate}...], in the
# spec's order. <name>/shape's own LR_ATTR is then the rate of the variant whose stage lr did best; each shape
# trial's LR_ATTR is the rate of the variant it trained as.
CHOICE_ATTR = "choice"
RATES_ATTR = "lr_per_choice"
LR_SCALE_RANGE_ATTR = "lr_scale_range"  # on <name>/shape: [low, high] that lr_scale = "auto" resolved to, once
# On <name>/shape with stages.shape.lr_transfer = "rule": the rule its shapes start by (the small network's width
# and depth, each optimizer's exponents); on each of its trials, LR_MOVE_ATTR: the factor its shape's start is
# of the calibrated rate (trained_lr = lr x lr_move x lr_scale).
LR_TRANSFER_ATTR = "lr_transfer"
LR_MOVE_ATTR = "lr_move"
TASK_ATTR = "task"  # "classification" or "regression": what the data asked for, as loaded
SPEC_PATH_ATTR = "spec_path"  # the spec file a study was made from: where its own code is imported from
LR_FIND_ATTR = "lr_find"  # on <name>/lr: the range test of lr_range = "auto", kept for resume
VERDICT_ATTR = "verdict"  # on <name>/audit: the audit's verdict, in words
# On <name>/audit: how the verdict read lr; "" as trained, or, where stage shape's rule moved the rates,
# starting with CALIBRATED_BASIS (each lr divided by its shape's move), or with "as trained:" saying why not.
VERDICT_LR_BASIS_ATTR = "verdict_lr_basis"
CALIBRATED_BASIS = "as stage lr calibrates it"
# On <name>/shape with stages.shape.first_rung = "auto": {"epoch": N or None, "reason": words, "noise": the
# noise unit its pruner's "no decision while nothing has learned" guard uses}, chosen once from stage lr's curves.
FIRST_RUNG_ATTR = "first_rung"
CONTRACT_VERSION_ATTR = "contract_version"  # the version of this contract a stage study was made under

# User attributes of a trial.
LEARNING_CURVE_ATTR = "learning_curve"
TRAIN_LOSS_CURVE_ATTR = "train_loss_curve"
TRAIN_SECONDS_ATTR = "train_seconds"
TIME_MEASURE_ATTR = "time_measure"  # "alone", or "batch_share": its share of each epoch of its batch
DEVICE_ATTR = "device"
THREADS_ATTR = "threads"
DIVERGED_ATTR = "diverged"
N_PARAMS_ATTR = "n_params"
EPOCHS_DONE_ATTR = "epochs_done"
BATCHED_WITH_ATTR = "batched_with"
ERROR_ATTR = "error"
TRACEBACK_ATTR = "traceback"
SURPLUS_ATTR = "surplus"  # on a trial failed untrained because other workers had filled the budget
# On a trial that trained alone though it was asked with others (and, since issue 23, on its stage study, the
# latest such reason): why, in one line.
FALLBACK_ATTR = "fallback"
# On a stage study whose every trial failed and that went on with changed code or data: the identities it
# left behind, so that a worker with an old copy of the code never takes it back.
LEFT_IDENTITIES_ATTR = "left_identities"
# On a stage study (since issue 23): K, how many trials its latest batch trained as one model (absent: 1). The
# ask batch is apart from it, in SEARCH_ATTR under ASK_BATCH_KEY: what TPE saw, whatever trained together.
TRAINED_TOGETHER_ATTR = "trained_together"
ASK_BATCH_KEY = "ask_batch"
# The objective of the trial's model before any step (epoch 0); absent for a user's own loop (it has no epoch 0).
UNTRAINED_VALUE_ATTR = "untrained_value"
# The learning rate the trial trained at, written when it is asked: its ``lr`` param (stages lr and audit) or the
# calibrated ``lr`` times its ``lr_scale`` (stage shape). Absent on trials stored before it: read
# :func:`tuner.study.results.trial_trained_lr`, which works it out for those.
TRAINED_LR_ATTR = "trained_lr"
# The trial's place in its stage's sequence of asks, which seeded its sampler (tuner.study.trials.place_of); absent
# on trials stored before it, whose place is read from their number.
POSITION_ATTR = "ask_position"


def stage_study_name(study: str, stage: str) -> str:
    """The Optuna study that holds stage ``stage`` of study ``study``: ``<study>/<stage>``."""
    return f"{study}/{stage}"


def split_stage_study_name(name: str) -> tuple[str, str] | None:
    """(study, stage) of a stage study's name, or None for a study ``tuner`` did not name.

    ``stage`` is one of :data:`STAGES` or a variant's stage lr, ``lr[optimizer=adam]``.
    """
    study, slash, stage = name.rpartition("/")
    return (study, stage) if slash and study and (stage in STAGES or is_lr_label(stage)) else None


def stage_kind(stage: str) -> str:
    """The stage a stage name is one of: ``lr`` for ``lr[optimizer=adam]``, else the name itself."""
    return "lr" if is_lr_label(stage) else stage


def stage_order(stage: str) -> int:
    """Where a stage comes in a study: stage lr's variants first, then shape, then the audit."""
    return STAGES.index(stage_kind(stage)) if stage_kind(stage) in STAGES else len(STAGES)


@dataclass(frozen=True)
class Migration:
    """One change to what stage studies are made with, and how studies stored before it were made.

    ``legacy``: ``(table, field)`` -> the value of ``<table>.<field>`` (``stages.shape.pruner``,
    ``data.drop_constant_columns``) that a study stored before this change was made with while its
    spec left the field at its default (for a field that did not exist yet, what the code did then).
    """

    version: int  # the contract version this change brought
    change: str
    legacy: Mapping[tuple[str, str], Any]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "stage 'shape' prunes with Hyperband and refines the calibrated rate by lr_scale (issue 13)",
              {("stages.shape", "pruner"): "none", ("stages.shape", "lr_scale"): (1.0, 1.0)}),
    Migration(2, "a CSV's constant feature columns are dropped, with a warning (issue 24)",
              {("data", "drop_constant_columns"): False}),
    Migration(3, "stage 'lr' hands on the rate of its smoothed U's broadest low basin, not its best trial's; stage "
                 "'shape' prunes from a first rung read from stage lr's curves, never while nothing has learned, and "
                 "searches lr_scale over a range from the optimizer and the shapes, \"auto\" (issue 21)",
              {("stages.lr", "handoff"): "best", ("stages.shape", "first_rung"): 1,
               ("stages.shape", "lr_scale"): (0.5, 4.0)}),
    Migration(4, "a parameter is sampled only where it acts (decay for schedules that decay) and "
                 "TPE models the stage's parameters in groups (issue 25)",
              {("stages.shape", "conditional"): False}),
    Migration(5, "train.optimizer and train.batch_size may list values: stage lr is one study per combination, "
                 "<name>/lr[optimizer=adam], and stage shape searches the choice (issue 25)",
              {}),
    Migration(6, "stage 'lr' hands on the broadest window among the rates within noise of the smoothed minimum, not "
                 "anywhere on the U; stage 'shape''s first rung ranks only stage lr's trials that learned (issue 21, "
                 "adding problem)",
              {("stages.lr", "handoff"): "robust", ("stages.shape", "first_rung"): "auto"}),
    Migration(7, "stage 'shape' carries the calibrated rate to each shape by the optimizer's rule (Adam down with "
                 "width and depth, SGD not moved) and lr_scale = \"auto\" searches a narrow range "
                 "around that rate (issue 21)",
              {("stages.shape", "lr_transfer"): "none"}),
    Migration(8, "stage 'lr' reads its basin from a curve where a trial a neighbour backs keeps its weight and no "
                 "rate looks better than the trials near it (rule 'backed'; issue 21, the bundled digits_optimizers "
                 "study's SGD sweep)",
              {("stages.lr", "handoff"): "basin"}),
)
CONTRACT_VERSION = MIGRATIONS[-1].version  # what this tuner writes, and the newest it reads

# Spec fields added after studies were first stored, with the value they had implicitly before:
# left out of the stored settings while at that value, so that a study stored before them still
# matches its spec (and its settings hash stays the same).
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "data": {"loader": None, "test_fraction": 0.0, "drop_constant_columns": False},
    "train": {"loop": None, "loss": None, "metric": None, "direction": "minimize"},
    "stages.shape": {"lr_scale": (1.0, 1.0), "first_rung": 1, "params": {}, "conditional": False, "lr_transfer": "none"},  # params: the user's declared ones (issue 25)
    "stages.lr": {"handoff": "best"},
}


def past_defaults() -> dict[tuple[str, str], list[Any]]:
    """``(table, field)`` -> every default it had before the current one, oldest first."""
    found: dict[tuple[str, str], list[Any]] = {}
    for migration in MIGRATIONS:
        for key, value in migration.legacy.items():
            found.setdefault(key, []).append(value)
    return found


def default_when_made(table: str, field: str, version: int | None) -> Any | None:
    """The default of ``<table>.<field>`` that a study made under contract ``version`` had.

    None when it has the current default. A study with no stored version (made before versions
    were stored) is taken as made before every migration: its stored settings say the rest.
    """
    for migration in MIGRATIONS:
        if (version is None or version < migration.version) and (table, field) in migration.legacy:
            return migration.legacy[(table, field)]
    return None


def made_with(table: str, field: str, settings: Mapping[str, Any], version: int | None) -> Any:
    """The value of ``<table>.<field>`` a stage study with these stored ``settings`` was made with."""
    values: Mapping[str, Any] = settings
    for part in table.split("."):
        values = values.get(part, {})
    if field in values:
        return values[field]
    added = ADDED_FIELDS.get(table, {})
    if field in added:
        return added[field]  # left out of the stored settings at the value it had before it existed
    return default_when_made(table, field, version)


def with_added_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Stored ``settings`` with each field left out at its added value (:data:`ADDED_FIELDS`) written in.

    A spec rebuilt from stored settings must get those values, not today's defaults.
    """
    filled = json.loads(json.dumps(settings))
    for table, fields in ADDED_FIELDS.items():
        values = filled
        for part in table.split("."):
            values = values.setdefault(part, {})
        for key, value in fields.items():
            if values.get(key) is None:
                values[key] = list(value) if isinstance(value, tuple) else value
    return filled


def stored_version(user_attrs: Mapping[str, Any]) -> int | None:
    """The contract version a stage study was made under (None: made before versions were stored)."""
    version = user_attrs.get(CONTRACT_VERSION_ATTR)
    return int(version) if version is not None else None


def check_version(study_name: str, user_attrs: Mapping[str, Any]) -> None:
    """Refuse a stage study stored by a newer ``tuner``, whose contract this one cannot know."""
    version = stored_version(user_attrs)
    if version is not None and version > CONTRACT_VERSION:
        raise StudyMismatchError(
            f"study '{study_name}' was stored by a newer tuner (stored contract version {version}; this "
            f"tuner reads up to {CONTRACT_VERSION}); upgrade tuner (pip install -U tuner) to resume or read it"
        )
