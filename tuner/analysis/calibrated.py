"""The audit's learning rates read as stage lr calibrates them, where stage shape carries the rate by a rule.

With ``stages.shape.lr_transfer = "rule"`` each shape trains at the calibrated rate moved for its
width and depth (:mod:`tuner.study.lr_scale`), and the rule is stored on ``<name>/shape``. The audit
samples raw rates; divided by each trial's move they become the rate the small network would have
been calibrated at, the coordinate in which the staging's low-interaction assumption is made.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from tuner.study.lr_scale import rule_moves, rule_words, shape_move
from tuner.study.stored import CALIBRATED_BASIS, LR_TRANSFER_ATTR, stage_study_name


def stored_rule(name: str, storage: BaseStorage) -> dict[str, Any] | None:
    """The rule stage shape carried the calibrated rate by (:data:`LR_TRANSFER_ATTR` on ``<name>/shape``), if any."""
    try:
        rule = optuna.load_study(study_name=stage_study_name(name, "shape"), storage=storage).user_attrs.get(LR_TRANSFER_ATTR)
    except KeyError:  # no stage shape (yet)
        return None
    return rule if isinstance(rule, dict) and rule.get("exponents") else None


def as_calibrated(trials: list[FrozenTrial], rule: dict[str, Any] | None) -> tuple[list[FrozenTrial], str]:
    """``trials`` with each ``lr`` divided by the ``rule``'s move for its shape (the rate stage lr would have
    calibrated for it), and how ``lr`` was read, in words: "" (as trained) without a rule that moves a rate."""
    if rule is None or not any(a or b for a, b in rule["exponents"].values()):
        return trials, ""
    exponents = rule_moves(rule)
    only = next(iter(exponents)) if len(exponents) == 1 else None
    if not all("lr" in trial.params for trial in trials):
        return trials, ""  # lr not sampled in every trial: the verdict cannot judge it either way
    rates = []
    for trial in trials:
        optimizer = trial.params.get("optimizer", only)
        if optimizer not in exponents:  # a trial the rule says nothing of: every lr is read as trained
            return trials, (f"as trained: stage shape's rule moves the rates of {', '.join(exponents)}, not of a trial "
                            f"with optimizer {optimizer or 'unnamed'}")
        rates.append(trial.params["lr"] / shape_move(trial.params, exponents, rule["width"], rule["depth"], optimizer))
    # The rates moved back may leave the audit's lr range: the copies' lr is log-scaled over where they lie.
    distribution = FloatDistribution(min(rates), max(rates), log=True) if rates else None
    moved = [optuna.trial.create_trial(params={**trial.params, "lr": rate}, distributions={**trial.distributions, "lr": distribution},
                                       value=trial.value)
             for trial, rate in zip(trials, rates)]
    words = rule_words({o: (a, b) for o, (a, b) in exponents.items() if a or b}, rule["width"], rule["depth"])
    return moved, f"{CALIBRATED_BASIS}: each trial's lr divided by its shape's move under stage shape's rule ({words})"
