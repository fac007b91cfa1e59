"""How a stage searches: its sampler and pruner, built per trial with their settings written out, and the record of them.

Split from :mod:`tuner.study.stages` (what a stage searches); importable from there as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.inputs.names import RUNG_RULES
from tuner.study.pruning import UntilLearningPruner
from tuner.study.stored import ASK_BATCH_KEY, STAGES

if TYPE_CHECKING:
    from tuner.study.stages import Stage


def sampler_for(stage: Stage, study_seed: int, position: int) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The sampler and pruner that ask the trial at ``position`` (trials the stage held before it) of ``stage``.

    Built anew for each trial and seeded by its position, on purpose: a stage resumed after a kill,
    or shared by several workers, asks at each position what an uninterrupted stage would have.
    """
    return _sampler_at(stage, study_seed, position), pruner_for(stage)


def pruner_for(stage: Stage) -> optuna.pruners.BasePruner:
    return make_pruner(stage.pruner, stage.epochs, stage.first_rung, stage.untrained_noise)


def _sampler_at(stage: Stage, study_seed: int, position: int) -> optuna.samplers.BaseSampler:
    seed = (study_seed * 1_000_003 + STAGES.index(stage.kind) * 10_007 + stage.variant_index * 104_729 + position) % 2**32
    return make_sampler(stage.sampler, seed, stage.budget, stage.batch_trials, bool(stage.conditions))


class PlacedSampler(optuna.samplers.BaseSampler):
    """The sampler of :func:`sampler_for` at the trial's own position, read once the trial exists.

    A worker that counted the stage's trials before it asks would, beside another that counted at the
    same moment, count the same position, seed its sampler alike and draw the same parameters (a new
    user's two workers on one SQLite file trained 8 of 20 rates twice). ``position_of(trial)`` reads the
    position from the storage once the trial is numbered (:meth:`optuna.samplers.BaseSampler.before_trial`
    comes after it is made, before it is sampled): :func:`tuner.study.trials.place_of`, the lowest place
    no other trial holds.
    """

    def __init__(self, stage: Stage, study_seed: int, position_of: Callable[[FrozenTrial], int]) -> None:
        self._stage, self._seed, self._position_of = stage, study_seed, position_of
        self._sampler: optuna.samplers.BaseSampler | None = None
        self.position: int | None = None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.position = self._position_of(trial)
        self._sampler = _sampler_at(self._stage, self._seed, self.position)
        self._sampler.before_trial(study, trial)

    def _placed(self) -> optuna.samplers.BaseSampler:
        if self._sampler is None:
            raise RuntimeError("PlacedSampler: before_trial was not called")
        return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._placed().infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._placed().sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._placed().sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        if self._sampler is not None:
            self._sampler.after_trial(study, trial, state, values)


def make_sampler(kind: str, seed: int, budget: int, batch_trials: int = 1, group: bool = False) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, **tpe_settings(budget, batch_trials, group))


def tpe_settings(budget: int, batch_trials: int = 1, group: bool = False) -> dict[str, Any]:
    # Written out, not left to defaults: Optuna 5 changed TPE's defaults, and results must say
    # what made them. A third of the budget (at most 10) is random start-up, as TPE needs.
    # Batched: the whole first batch is random start-up. Its trials are asked before any has a
    # value, so TPE would model nothing but constant-liar stand-ins; the next batch then models
    # a full batch of real results, and constant_liar spreads its points apart.
    # group: parameters sampled only in some trials (conditional) are modelled in groups of those
    # that occur together, as multivariate TPE needs for them (else it samples them independently).
    n_startup = max(3, min(10, math.ceil(budget / 3)), min(batch_trials, budget))
    return {"n_startup_trials": n_startup, "multivariate": True, "constant_liar": True, **({"group": True} if group else {})}


def pruner_settings(kind: str, epochs: int, first_rung: int | None = 1) -> dict[str, Any]:
    """The settings of the pruner ``kind`` for trials of ``epochs`` epochs (epochs are its resource).

    ``first_rung``: the first epoch at which it may stop a trial (None: never; no settings).
    """
    if first_rung is None:
        return {}
    if kind == "median":
        return {"n_startup_trials": 5, "n_warmup_steps": max(first_rung, epochs // 4)}
    if kind == "hyperband":
        return {"min_resource": first_rung, "max_resource": epochs, "reduction_factor": 3}
    if kind == "successive_halving":
        return {"min_resource": first_rung, "reduction_factor": 3, "min_early_stopping_rate": 0}
    return {}


def make_pruner(kind: str, epochs: int, first_rung: int | None = 1,
                untrained_noise: float | None = None) -> optuna.pruners.BasePruner:
    """Optuna's pruner of that name, epochs as the resource; ``none`` (or no first rung): no pruning.

    ``untrained_noise``: wrap it so that it decides nothing while every value at a step sits within
    noise of its trial's untrained value (:class:`tuner.study.pruning.UntilLearningPruner`).
    """
    pruners = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }
    if kind not in pruners or first_rung is None:
        return optuna.pruners.NopPruner()
    pruner = pruners[kind](**pruner_settings(kind, epochs, first_rung))
    return pruner if untrained_noise is None else UntilLearningPruner(pruner, first_rung, untrained_noise)


def describe_search(stage: Stage) -> dict[str, Any]:
    """Sampler and pruner with their settings and the Optuna version, stored on each study."""
    sampler: dict[str, Any] = {"name": stage.sampler}
    if stage.sampler == "tpe":
        sampler.update(tpe_settings(stage.budget, stage.batch_trials, bool(stage.conditions)))
    pruner: dict[str, Any] = {"name": stage.pruner}
    pruner.update(pruner_settings(stage.pruner, stage.epochs, stage.first_rung))
    if stage.rung_rule in RUNG_RULES:  # the rung read from stage lr (None: not pruning), and the guard's noise unit
        pruner.update({"first_rung": stage.rung_rule, "prunes_from": stage.first_rung, "untrained_noise": stage.untrained_noise})
    # The ask batch (since issue 23): how many trials were asked at once, whatever then trained together.
    return {"sampler": sampler, "pruner": pruner, "optuna_version": optuna.__version__, ASK_BATCH_KEY: stage.batch_trials}
