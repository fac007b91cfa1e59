"""A stored study read back: its stage studies, their trials, each stage's summary and the study's result.

The names it is stored under (the contract) are spelled in :mod:`tuner.study.stored`; they are
importable from here too, as before.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import DEFAULT_STORAGE, PASSWORD_NOTE, open_existing_storage, redact, resolve_url, without_password
from tuner.study.stored import (  # noqa: F401 -- the contract's names, read from here by many modules
    BATCHED_WITH_ATTR,
    BEST_LR_ATTR,
    BEST_TRIAL_ATTR,
    BUDGET_ATTR,
    CONTRACT_VERSION_ATTR,
    DEVICE_ATTR,
    DIVERGED_ATTR,
    EPOCHS_DONE_ATTR,
    ERROR_ATTR,
    FALLBACK_ATTR,
    HANDOFF_ATTR,
    HANDOFF_TRIALS_ATTR,
    LEARNING_CURVE_ATTR,
    LR_ATTR,
    LR_FIND_ATTR,
    LR_MOVE_ATTR,
    N_PARAMS_ATTR,
    OBJECTIVE_ATTR,
    SEARCH_ATTR,
    SETTINGS_ATTR,
    POSITION_ATTR,
    SETTINGS_HASH_ATTR,
    SPEC_PATH_ATTR,
    STAGES,
    SURPLUS_ATTR,
    TASK_ATTR,
    THREADS_ATTR,
    TIME_MEASURE_ATTR,
    TRACEBACK_ATTR,
    TRAIN_LOSS_CURVE_ATTR,
    TRAIN_SECONDS_ATTR,
    TRAINED_LR_ATTR,
    TRAINED_TOGETHER_ATTR,
    UNTRAINED_VALUE_ATTR,
    VERDICT_ATTR,
    CHOICE_ATTR,
    RATES_ATTR,
    check_version,
    split_stage_study_name,
    stage_kind,
    stage_order,
    stage_study_name,
)

if TYPE_CHECKING:
    from tuner.analysis.importance import AuditVerdict

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MINIMIZE, MAXIMIZE = "minimize", "maximize"  # train.direction; each stage study is made with it


def direction_of(study: optuna.Study) -> str:
    """``"maximize"`` for a study that maximizes its objective (``train.direction``), else ``"minimize"``."""
    return MAXIMIZE if getattr(study, "direction", None) == optuna.study.StudyDirection.MAXIMIZE else MINIMIZE


def loss_like(value: float, direction: str) -> float:
    """``value`` turned so that lower is better: itself when minimizing, its negative when maximizing.

    The rules that read values (best trial, the hand-off's U, the first rung, the stage to pick)
    are written for lower-is-better values and read scores through this.
    """
    return -value if direction == MAXIMIZE else value


def best_complete(trials: Sequence[FrozenTrial], direction: str = MINIMIZE) -> FrozenTrial | None:
    """The best complete trial (the lowest value, or the highest when maximizing); the first on a tie."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: (loss_like(t.value, direction), t.number)) if complete else None  # type: ignore[arg-type]


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
    direction: str = MINIMIZE  # "maximize": best_value is the highest
    trained_together: int = 1  # K: how many trials its latest batch trained as one model
    fallback: str | None = None  # why trials asked together trained apart (one line), if they did
    # Trials whose worker stopped them (Ctrl-C, SIGTERM, a killed worker) and that were asked again:
    # not counted in n_failed, which counts trials that raised.
    n_stopped: int = 0
    best_epochs: int | None = None  # the epochs its best trial trained (None: not stored)


def trained_params(params: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's sampled ``params`` with its stage's ``fixed`` settings, ``lr`` the rate it trained at.

    In stage ``shape`` that is the calibrated rate (fixed) times the trial's ``lr_scale``; with
    ``lr_transfer = "rule"`` the stage moves it to the trial's shape too (:meth:`tuner.study.stages.Stage.trained`).
    """
    values = {**(fixed or {}), **params}
    if "lr_scale" in values and "lr" in values:
        values["lr"] = values["lr"] * values["lr_scale"]
    return values


def trial_trained_lr(trial: FrozenTrial) -> float | None:
    """The learning rate ``trial`` trained at: its stored ``trained_lr``, else worked out as it was then.

    Trials stored before ``trained_lr`` existed have their ``lr`` param (stages lr and audit) or the
    calibrated ``lr`` user attribute times their ``lr_scale`` (stage shape). None for a trial without a rate.
    """
    stored = trial.user_attrs.get(TRAINED_LR_ATTR)
    if stored is not None:
        return float(stored)
    moved = float(trial.user_attrs.get(LR_MOVE_ATTR, 1.0))
    fixed = {LR_ATTR: trial.user_attrs[LR_ATTR] * moved} if LR_ATTR in trial.user_attrs else {}
    rate = trained_params(trial.params, fixed).get("lr")
    return float(rate) if rate is not None else None


def was_stopped(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed because its worker stopped it, not by raising: Ctrl-C, SIGTERM, a worker
    that died or lost the storage (each failed with the reason as its ``error``, no traceback). It gives its
    place up: the stage asks another trial in it (:func:`tuner.study.trials.holds_position`)."""
    attrs = trial.user_attrs
    return (trial.state == TrialState.FAIL and ERROR_ATTR in attrs and TRACEBACK_ATTR not in attrs
            and not attrs.get(SURPLUS_ATTR))


def failure_counts(trials: Sequence[FrozenTrial]) -> tuple[int, int, int]:
    """Of the FAIL trials: (failed by raising or a non-finite value, stopped by their worker (:func:`was_stopped`),
    surplus: failed untrained because other workers had filled the budget)."""
    failed = [t for t in trials if t.state == TrialState.FAIL]
    surplus = sum(bool(t.user_attrs.get(SURPLUS_ATTR)) for t in failed)
    stopped = sum(was_stopped(t) for t in failed)
    return len(failed) - surplus - stopped, stopped, surplus


def as_shown(name: str, value: Any) -> tuple[str, Any]:
    """A parameter as the summary and the report show it: the audit samples SGD's momentum as
    ``one_minus_momentum`` (on a log scale, near 1 where it matters), shown as the momentum it trained with."""
    if name == "one_minus_momentum" and isinstance(value, float):
        return "momentum", 1.0 - value
    return name, value


def wall_seconds(trials: Sequence[FrozenTrial]) -> float:
    """A stage's time from its first trial's start to its last trial's end, every trial counted (stopped ones too):
    across resumed runs, with the pauses between them."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def stage_summary(study: optuna.Study, stage: str, budget: int, fixed: dict[str, Any] | None = None) -> StageSummary:
    """What a stage's stored trials add up to; ``fixed``: settings shared by its trials (e.g. lr)."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    direction = direction_of(study)
    best = best_complete(complete, direction)
    if best is not None and LR_ATTR in best.user_attrs:  # the calibrated rate of its own choice (optimizer...)
        fixed = {**(fixed or {}), LR_ATTR: best.user_attrs[LR_ATTR]}
    wall = wall_seconds(trials)
    n_failed, n_stopped, _ = failure_counts(trials)
    return StageSummary(
        stage=stage,
        study_name=study.study_name,
        budget=budget,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_diverged=sum(bool(t.user_attrs.get(DIVERGED_ATTR)) for t in finished),
        n_failed=n_failed,
        best_value=best.value if best else None,
        best_params=_best_params(best, fixed) if best else {},
        wall_seconds=wall,
        train_seconds=sum(float(t.user_attrs.get(TRAIN_SECONDS_ATTR, 0.0)) for t in finished),
        best_trial=best.number if best else None,
        direction=direction,
        trained_together=int(study.user_attrs.get(TRAINED_TOGETHER_ATTR, 1)),
        fallback=study.user_attrs.get(FALLBACK_ATTR),
        n_stopped=n_stopped,
        best_epochs=int(best.user_attrs[EPOCHS_DONE_ATTR]) if best and EPOCHS_DONE_ATTR in best.user_attrs else None,
    )


def _best_params(best: FrozenTrial, fixed: dict[str, Any] | None) -> dict[str, Any]:
    """The best trial's params as it trained, ``lr`` its stored rate (moved to its shape by the rule, where it was)."""
    values = trained_params(best.params, fixed)
    rate = trial_trained_lr(best) if "lr" in values else None
    return {**values, "lr": rate} if rate is not None else values


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


def open_for_reading(storage: str | BaseStorage | None, *, writable: bool = False) -> tuple[BaseStorage, str]:
    """The storage, and its URL to name in messages. A missing SQLite file is not created; unless
    ``writable`` (for what stores a result on a study it reads, as the audit's verdict), a URL is opened read-only."""
    if isinstance(storage, BaseStorage):
        url = getattr(storage, "url", None)  # RDBStorage keeps the URL it was opened with
        return storage, redact(url) if isinstance(url, str) else type(storage).__name__
    url = resolve_url(storage)
    return open_existing_storage(url, writable=writable), redact(url)


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
    # Stage lr's variants (lr[optimizer=adam]...) in the order they were made, which is the spec's.
    ours = [n for n in existing if (split := split_stage_study_name(n)) and split[0] == name]
    ours.sort(key=lambda n: _made_order(opened, n))
    stages = sorted((n.removeprefix(f"{name}/") for n in ours), key=stage_order)
    if not stages:
        known = ", ".join(_tuner_names(sorted(existing))) or "none"
        raise UnknownStudyError(f"study {name!r}: not found in {where}; studies there: {known}")
    studies = {stage: optuna.load_study(study_name=stage_study_name(name, stage), storage=opened) for stage in stages}
    for study in studies.values():
        check_version(study.study_name, study.user_attrs)
    return studies


def _made_order(storage: BaseStorage, study_name: str) -> int:
    """Where a study was made among the storage's (its id), so that a study's stages read in the order they were run."""
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:  # removed meanwhile
        return -1


def handed_rates(shape_attrs: Mapping[str, Any]) -> dict[str, float]:
    """Each variant's stage lr and the rate it handed on, as ``<name>/shape`` stores them (:data:`RATES_ATTR`);
    empty where nothing is listed (or nothing was handed on yet)."""
    return {record["stage"]: float(record["lr"]) for record in shape_attrs.get(RATES_ATTR) or []}


def lr_stages(stages: Mapping[str, Any]) -> list[str]:
    """The stage lr names among ``stages`` (a study's stages by name): ``lr``, or each variant's ``lr[...]``."""
    return [stage for stage in stages if stage_kind(stage) == "lr"]


def load_stage_trials(name: str, storage: str | BaseStorage | None = None) -> dict[str, list[FrozenTrial]]:
    """Every trial of each stored stage of study ``name``, by stage (see :func:`load_stage_studies`)."""
    return {stage: study.get_trials(deepcopy=False) for stage, study in load_stage_studies(name, storage).items()}


class StageSummaries(dict[str, StageSummary]):
    """A study's stage summaries by stage name; a name it lacks raises a KeyError that lists the names it has
    (with listed optimizers or batch sizes, stage lr is one stage per variant: ``lr[optimizer=adam]``)."""

    def __missing__(self, stage: str) -> StageSummary:
        variants = lr_stages(self) if stage == "lr" else []
        hint = (f"; stage lr ran once per variant: {', '.join(variants)} (result.rates holds each one's rate, "
                f"result.best_lr the best variant's)" if variants else "")
        raise KeyError(f"no stage {stage!r} in this result; its stages: {', '.join(self) or 'none'}{hint}")


@dataclass(frozen=True)
class StudyResult:
    name: str
    storage: str  # redacted: safe to print
    best_lr: float | None
    stages: StageSummaries = field(default_factory=StageSummaries)
    audit: AuditVerdict | None = None  # set when the study has an audit stage
    # Set when run_study(timeout=) stopped it: the time limit in seconds. The stages hold what was done
    # (the last one unfinished); running it again resumes there.
    timed_out: float | None = None
    # With train.optimizer or batch_size listed: each variant's stage lr and the rate it handed on
    # ({"lr[optimizer=adam]": 0.0031, ...}); best_lr is then the rate of the variant whose stage lr did best.
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", StageSummaries(self.stages))

    @property
    def best_stage(self) -> str | None:
        """The stage whose best trial is the study's best: ``shape``, unless ``lr``'s small network did better.

        The audit is a check, not a stage to pick from. On a tie the later stage wins.
        """
        tuned = [s for s in self.stages.values() if s.stage != "audit" and s.best_value is not None]
        return min(reversed(tuned), key=lambda s: loss_like(s.best_value, s.direction)).stage \
            if tuned else None  # type: ignore[arg-type]

    @property
    def best_value(self) -> float | None:
        """The best value across stages ``lr`` and ``shape`` (see :attr:`best_stage`)."""
        stage = self.best_stage
        return self.stages[stage].best_value if stage is not None else None

    @property
    def worse_than_lr(self) -> str | None:
        """One line when stage ``shape`` ended worse than stage ``lr``'s small network (None otherwise)."""
        lr, shape = best_lr_summary(self.stages), self.stages.get("shape")
        if lr is None or shape is None or lr.best_value is None or shape.best_value is None:
            return None
        if loss_like(shape.best_value, shape.direction) <= loss_like(lr.best_value, lr.direction):
            return None
        epochs = (f" (after {shape.best_epochs} epoch{'s' if shape.best_epochs != 1 else ''}, where stage '{lr.stage}' trained {lr.best_epochs})"
                  if None not in (lr.best_epochs, shape.best_epochs) and lr.best_epochs != shape.best_epochs else "")
        return (f"stage 'shape' ended worse than stage '{lr.stage}': its best is {shape.best_value:.4g}{epochs} against "
                f"{lr.best_value:.4g} for the small network of stage '{lr.stage}'; the study's best is stage "
                f"'{lr.stage}' (its trial {lr.best_trial}), and `{shlex.join(['tuner', 'best', self.name, *self.storage_option])}` "
                f"trains it (`--stage shape` for shape's own best){self.password_note}")

    @property
    def storage_option(self) -> list[str]:
        """``["--storage", URL]`` for a command that reads this study, where it is not in the default storage: the URL
        without its password (a ``***`` in its place would not connect; :attr:`password_note` says how to give it)."""
        if self.storage in (DEFAULT_STORAGE, redact(resolve_url(None))):
            return []
        return ["--storage", without_password(self.storage)[0]]

    @property
    def password_note(self) -> str:
        return PASSWORD_NOTE if without_password(self.storage)[1] else ""


def best_lr_summary(stages: Mapping[str, StageSummary]) -> StageSummary | None:
    """The summary of the stage lr (of the variants', the one) with the best value; None if none has one."""
    found = [stages[s] for s in lr_stages(stages) if stages[s].best_value is not None]
    return min(found, key=lambda s: loss_like(s.best_value, s.direction)) if found else None  # type: ignore[arg-type]
