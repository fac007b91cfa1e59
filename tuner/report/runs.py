"""A stored study as plain data for the report: its stages, their finished trials, the chosen rate.

Nothing here draws. Every number comes from the stage studies ``<name>/lr``, ``<name>/shape`` and
``<name>/audit`` and their user attributes.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.importance import importance_table
from tuner.inputs.spec import DataSpec, SpecError
from tuner.storage import open_existing_storage
from tuner.study.results import MAXIMIZE, direction_of, load_stage_studies, loss_like, lr_stages, trial_trained_lr
from tuner.study.stored import (  # noqa: F401 -- STAGES: figures reads it from here
    BEST_LR_ATTR, DIVERGED_ATTR, LEARNING_CURVE_ATTR, LR_ATTR, LR_MOVE_ATTR, SETTINGS_ATTR, STAGES, TASK_ATTR,
    UNTRAINED_VALUE_ATTR, stage_kind,
)

# The error a run must reach to count as "trained", for the epochs-to-target panel and sentence:
# this share of the way from the untrained error down to the stage's best final error. A multiple
# of the best (2x, earlier) says nothing when the untrained error is below it (diabetes: every
# rate "reached" it after one epoch, even those that barely learn).
TARGET_SHARE = 0.9
# What a trial's `train_seconds` measures (user attribute `time_measure`): trained by itself, or
# its share of each epoch of a batch (the epoch's wall time / copies training in that epoch).
OWN_TIME_MEASURES = ("alone", "batch_share")


@dataclass(frozen=True)
class Run:
    """One finished (complete or pruned) trial, as the figures and the words need it."""

    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None  # final objective of a complete trial
    curve: list[float]  # objective per epoch, NaN where it was not finite
    train_curve: list[float]
    seconds: float | None
    diverged: bool
    time_measure: str | None = None  # see OWN_TIME_MEASURES; None on studies stored before it
    batched_with: int = 1  # trials trained together in its batch
    epochs_done: int | None = None
    trained_lr: float | None = None  # the rate it trained at (stage shape: the calibrated lr times its lr_scale)
    lr_move: float | None = None  # stage shape with lr_transfer = "rule": the factor its shape moved the calibrated rate by
    untrained: float | None = None  # its objective before training (epoch 0); None on trials stored before it

    @property
    def move(self) -> float:
        """What stage shape's rule moved the calibrated rate by for this run's shape: 1 where it did not (a study
        made without the rule, a trial of another stage, the small network's own shape, SGD)."""
        return float(self.lr_move) if self.lr_move is not None else 1.0

    @property
    def own_seconds(self) -> float | None:
        """Its training time, when that is its own cost (not a batch's time split evenly)."""
        if self.seconds is None:
            return None
        if self.time_measure in OWN_TIME_MEASURES or (self.time_measure is None and self.batched_with <= 1):
            return self.seconds
        return None

    @property
    def last(self) -> float | None:
        finite = [v for v in self.curve if math.isfinite(v)]
        return finite[-1] if finite else None


@dataclass(frozen=True)
class StageRuns:
    """One stage study, its trials, and its finished trials as runs."""

    name: str
    study: optuna.Study
    trials: list[FrozenTrial]
    runs: list[Run]

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.state == TrialState.COMPLETE and r.value is not None]

    @property
    def direction(self) -> str:
        """``"maximize"`` where the stage's objective is a score (``train.direction``), else ``"minimize"``."""
        return direction_of(self.study)

    @property
    def maximizes(self) -> bool:
        return self.direction == MAXIMIZE

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` is better than ``than`` in this stage's direction."""
        return loss_like(value, self.direction) < loss_like(than, self.direction)

    @property
    def best(self) -> Run | None:
        return min(self.complete, key=lambda r: loss_like(r.value, self.direction)) if self.complete else None  # type: ignore[arg-type]


def load_stages(name: str, url: str) -> dict[str, StageRuns]:
    """The stages of study ``name`` in the storage at ``url``, in stage order."""
    stages = {}
    for stage, study in load_stage_studies(name, open_existing_storage(url)).items():
        trials = study.get_trials(deepcopy=False)
        runs = [run_of(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        stages[stage] = StageRuns(stage, study, trials, runs)
    return stages


def _floats(values: Sequence[float | None] | None) -> list[float]:
    return [float("nan") if v is None else float(v) for v in (values or [])]


def run_of(trial: FrozenTrial) -> Run:
    """A stored trial as a run: its curve from ``learning_curve`` (else Optuna's intermediate values)."""
    attrs = trial.user_attrs
    curve = _floats(attrs.get(LEARNING_CURVE_ATTR))
    if not curve and trial.intermediate_values:  # trials of another tool: Optuna's own record
        curve = [float(trial.intermediate_values[k]) for k in sorted(trial.intermediate_values)]
    complete = trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value)
    seconds = attrs.get("train_seconds")
    return Run(
        number=trial.number,
        state=trial.state,
        params={**{k: v for k, v in attrs.items() if k == LR_ATTR and "lr" not in trial.params}, **trial.params},
        value=float(trial.value) if complete else None,
        curve=curve,
        train_curve=_floats(attrs.get("train_loss_curve")),
        seconds=float(seconds) if seconds is not None else None,
        diverged=bool(attrs.get(DIVERGED_ATTR)),
        time_measure=attrs.get("time_measure"),
        batched_with=int(attrs.get("batched_with") or 1),
        epochs_done=int(attrs["epochs_done"]) if attrs.get("epochs_done") is not None else None,
        trained_lr=trial_trained_lr(trial),
        lr_move=attrs.get(LR_MOVE_ATTR),
        untrained=float(attrs[UNTRAINED_VALUE_ATTR]) if attrs.get(UNTRAINED_VALUE_ATTR) is not None else None,
    )


def as_errors(curves: Sequence[Sequence[float]], maximize: bool) -> list[list[float]]:
    """Curves as the curve rules read them, lower is better: a score's as its gap to the best score seen.

    The rules (decaying, oscillating, exploding, divergence onset) are written for errors; a score
    (``train.direction = "maximize"``) is read as ``best - value``, which falls as the score rises.
    """
    if not maximize:
        return [list(c) for c in curves]
    top = _top(curves)
    return [[top - v for v in c] for c in curves]


def untrained_errors(runs: Sequence[Run], maximize: bool) -> list[float | None]:
    """Each run's untrained value read as :func:`as_errors` reads its curve (None where unknown).

    A score's run with no untrained value (a user's loop reports no epoch 0) takes the largest gap the
    runs that did not diverge show instead, the level learning started from for want of its own: read
    from its first epoch, a gap of 0.02 that grew to 0.04 (accuracy 0.98, then 0.96) was a run that
    "exploded". A run then explodes as an error's run does against its untrained value: when it loses half
    of what it had learned (0.95 to 0.55 where the stage's worst was 0.10 is a loss of 47%: not yet).
    """
    if not maximize:
        return [r.untrained for r in runs]
    top = _top([r.curve for r in runs])
    gaps = as_errors([r.curve for r in runs], True)
    largest = max((v for r, c in zip(runs, gaps) if not r.diverged for v in c if math.isfinite(v)), default=0.0)
    return [largest if r.untrained is None else top - r.untrained for r in runs]


def _top(curves: Sequence[Sequence[float]]) -> float:
    finite = [v for c in curves for v in c if math.isfinite(v)]
    return max(finite) if finite else 0.0


def chosen_lr(stages: dict[str, StageRuns]) -> float | None:
    """The rate handed to the shape stage (stored once at hand-off), else the lr stage's best.

    With listed choices (several stages lr, ``lr[optimizer=adam]``...), the rate of the one whose
    stage lr did best; :func:`stage_rate` gives each its own.
    """
    if "shape" in stages and stages["shape"].study.user_attrs.get(LR_ATTR) is not None:
        return float(stages["shape"].study.user_attrs[LR_ATTR])
    lr = best_lr_stage(stages)
    return stage_rate(lr) if lr is not None else None


def stage_rate(stage: StageRuns) -> float | None:
    """The rate a stage lr handed on (stored at the hand-off), else its best trial's."""
    if stage.study.user_attrs.get(BEST_LR_ATTR) is not None:
        return float(stage.study.user_attrs[BEST_LR_ATTR])
    return float(stage.best.params["lr"]) if stage.best is not None else None


def lr_stage_runs(stages: dict[str, StageRuns]) -> list[StageRuns]:
    """The study's stages lr: ``lr``, or each variant's with listed choices (``lr[optimizer=adam]``...)."""
    return [stages[name] for name in lr_stages(stages)]


def best_lr_stage(stages: dict[str, StageRuns]) -> StageRuns | None:
    """The stage lr with the best trial (of the variants', the one; the first when none has one)."""
    found = lr_stage_runs(stages)
    done = [s for s in found if s.best is not None]
    return min(done, key=lambda s: loss_like(s.best.value, s.direction)) if done else (found[0] if found else None)  # type: ignore[union-attr,arg-type]


def file_key(stage: str) -> str:
    """A stage's name as part of a file name: ``lr[optimizer=adam,batch_size=32]`` -> ``lr-optimizer-adam-batch_size-32``."""
    return stage.replace("[", "-").replace("]", "").replace("=", "-").replace(",", "-")


AXIS_LABEL_WIDTH = 40  # characters on one line of a y-axis label: what a figure 4.5 inches high holds at 10 points


def final_label(objective: str) -> str:
    """The axis label of a run's last value: "final validation error"; a label that names its owner first
    ("your metric on the validation part (higher is better)") reads "... at the last epoch (...)"."""
    if not objective.startswith(("your ", "objective ")):
        return f"final {objective}"
    base, _, rest = objective.partition(" (")
    return f"{base} at the last epoch" + (f" ({rest}" if rest else "")


def axis_label(text: str, width: int = AXIS_LABEL_WIDTH) -> str:
    """``text`` folded into lines of at most ``width`` characters (its own line breaks kept): a figure's y
    axis holds about that many, and longer labels ran off it ("... at the last epoch (higher is b")."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def objective_label(stages: dict[str, StageRuns]) -> str:
    """The y-axis label: what the objective is, in words a reader knows."""
    first = next(iter(stages.values())).study.user_attrs
    higher = " (higher is better)" if next(iter(stages.values())).maximizes else ""
    if first.get("objective") == "loop":
        return "objective reported by your loop" + higher
    train = (first.get(SETTINGS_ATTR) or {}).get("train") or {}
    if train.get("metric") and first.get("objective", "val_error") == "val_error":
        return "your metric on the validation part" + higher  # it replaces tuner's val_error (not val_loss)
    if first.get("objective", "val_error") == "val_loss":
        return "validation loss"
    return {
        "classification": "validation error (1 − accuracy)",
        "regression": "validation error (RMSE)",
    }.get(first.get(TASK_ATTR) or stored_task(first.get(SETTINGS_ATTR) or {}), "validation error")


def objective_word(objective: str, maximize: bool = False) -> str:
    """The one word a caption or title uses for the objective of :func:`objective_label`: score, loss, error or value."""
    noun = objective.split(" (")[0]
    return "score" if maximize else "loss" if noun.endswith("loss") else "error" if noun.endswith("error") else "value"


def stored_task(settings: dict[str, Any]) -> str | None:
    """The task of a study's stored settings; None when it cannot be told (a CSV file no longer there)."""
    stored = settings.get("data") or {}
    if stored.get("name") == "python":
        return None  # a user's loader: only the study's stored task says (see objective_label)
    if stored.get("name") != "csv":
        return "regression" if stored.get("name") in ("diabetes", "adding") else "classification"
    if stored.get("task", "auto") != "auto":
        return str(stored["task"])
    from tuner.inputs.data import task_of  # only a CSV of task "auto", stored before the task was: reads the file (and torch)

    try:
        spec = DataSpec(**{f.name: stored[f.name] for f in dataclasses.fields(DataSpec) if f.name in stored})
        return task_of(spec)
    except (TypeError, SpecError):  # settings of another version, or a CSV read relative to another folder
        return None


def epochs_to_target(curve: Sequence[float], target: float) -> int | None:
    """First epoch (1-based) whose value is at or below ``target``; None if it never gets there."""
    for epoch, value in enumerate(curve, start=1):
        if math.isfinite(value) and value <= target:
            return epoch
    return None


@dataclass(frozen=True)
class Target:
    """The error that counts as "trained": ``share`` of the way from ``start`` down to ``best``."""

    value: float
    start: float  # the error after one epoch at the smallest rate tried: about the untrained error
    start_lr: float
    best: float  # the stage's best final error
    share: float = TARGET_SHARE


def error_target(runs: Sequence[Run]) -> Target | None:
    """The target error of an lr stage; None when no rate ended below where the slowest one began.

    The untrained error is not stored: the first epoch of the smallest rate that did not diverge
    stands for it (a rate that small has hardly moved after one epoch).
    """
    complete = [r for r in runs if r.value is not None]
    started = sorted((r for r in runs if not r.diverged and r.curve and math.isfinite(r.curve[0])),
                     key=lambda r: r.params["lr"])
    if not complete or not started:
        return None
    best = min(r.value for r in complete)  # type: ignore[type-var]
    start = started[0].curve[0]
    if not start > best:
        return None
    return Target(best + (1.0 - TARGET_SHARE) * (start - best), start, started[0].params["lr"], best)  # type: ignore[operator]


@dataclass(frozen=True)
class TrialCosts:
    """What each trial of a stage cost, in the one measure that is its own."""

    unit: str  # "seconds" or "epochs"
    points: list[tuple[Run, float]]
    shares: bool  # some seconds are a batched trial's share of each epoch
    left_out: int  # trials whose stored time is a batch's time split evenly, not shown


def trial_costs(runs: Sequence[Run]) -> TrialCosts | None:
    """Seconds per trial where each trial's time is its own; else, for studies stored before batched
    trials had a time of their own, the epochs each trained. An even split of a batch's time is never
    a trial's cost: such trials are left out (and counted) when others have a time of their own.
    """
    timed = [(r, r.own_seconds) for r in runs if r.own_seconds is not None]
    split = [r for r in runs if r.seconds is not None and r.own_seconds is None]
    if timed:
        shares = any(r.time_measure == "batch_share" for r, _ in timed)
        return TrialCosts("seconds", timed, shares, len(split))  # type: ignore[arg-type]
    epochs = [(r, float(r.epochs_done if r.epochs_done is not None else len(r.curve))) for r in split]
    return TrialCosts("epochs", epochs, False, 0) if epochs else None


def importance_data(name: str, url: str) -> tuple[pd.DataFrame | None, str]:
    """The importance table (stage, evaluator, param, param_b, importance, std, basis, trials), or why there is none.

    The second item names the stages skipped (too few trials) and why; empty when none were.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table, skipped = importance_table(name, url)
    except Exception as error:  # noqa: BLE001 -- a report without importances is still a report
        return None, f"the importance analysis failed ({type(error).__name__}: {error})"
    why = "; ".join(f"stage {stage} skipped: {reason}" for stage, reason in skipped)
    return table.assign(param_b=table["param_b"].fillna("").astype(str)), why
