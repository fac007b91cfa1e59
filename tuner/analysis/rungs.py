"""A stage's trials at one epoch: the values the importance analysis reads where a pruner stopped trials.

Optuna's importance evaluators read complete trials only (optuna/optuna#3709 asked for pruned ones and
was closed without a change), so a Hyperband stage that pruned most of its trials would rest on its few
survivors. :func:`deepest_rung` finds the deepest epoch that enough trials reached, pruned and complete
ones alike, and each one's value there.

Example:
    >>> rung, most = deepest_rung(study.trials, min_trials=10)  # doctest: +SKIP
    >>> rung.epoch, len(rung.trials)  # doctest: +SKIP
    (9, 14)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from tuner.study.stored import DIVERGED_ATTR, LEARNING_CURVE_ATTR

__all__ = ["Rung", "deepest_rung", "reported_values"]


@dataclass(frozen=True)
class Rung:
    """The trials that reached ``epoch`` and their objective values there, in the same order."""

    epoch: int
    trials: list[FrozenTrial]
    values: list[float]


def deepest_rung(trials: Sequence[FrozenTrial], min_trials: int) -> tuple[Rung | None, int | None]:
    """The deepest epoch reached by at least ``min_trials`` trials and by one the pruner stopped.

    Only complete and pruned trials count; a trial counts at an epoch where it reported a finite value.
    The epoch is no deeper than the deepest one a pruned trial reached (a trial that diverged ended
    pruned but was not stopped by the pruner: it sets no rung), so the rung always holds pruned trials
    and is not merely the complete ones again.

    Returns:
        ``(rung, n)``: the rung and its number of trials; or ``(None, n)``, ``n`` being the most trials
        at any epoch a pruned trial reached (fewer than ``min_trials``); or ``(None, None)`` when the
        pruner stopped no trial.
    """
    reported = {t.number: reported_values(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    stopped = [t for t in trials if t.state == TrialState.PRUNED and not t.user_attrs.get(DIVERGED_ATTR)]
    deepest = max((max(reported[t.number], default=0) for t in stopped), default=0)
    if deepest == 0:
        return None, None
    most = 0
    for epoch in range(deepest, 0, -1):
        reached = [t for t in trials if epoch in reported.get(t.number, {})]
        if len(reached) >= min_trials:
            return Rung(epoch, reached, [reported[t.number][epoch] for t in reached]), len(reached)
        most = max(most, len(reached))
    return None, most


def reported_values(trial: FrozenTrial) -> dict[int, float]:
    """Epoch (from 1) -> the finite objective value ``trial`` reported at that epoch.

    Optuna's intermediate values are what the pruner saw (tuner stores them live with a pruner, at the
    trial's end without one). A trial stored without any falls back on its ``learning_curve``, less
    the epoch it diverged in, which it never reported.
    """
    values = dict(trial.intermediate_values)
    if not values:
        curve = trial.user_attrs.get(LEARNING_CURVE_ATTR)
        if isinstance(curve, list):
            kept = curve[:-1] if trial.user_attrs.get(DIVERGED_ATTR) else curve
            values = {epoch: value for epoch, value in enumerate(kept, start=1) if isinstance(value, (int, float))}
    return {int(epoch): float(value) for epoch, value in values.items() if math.isfinite(value)}
