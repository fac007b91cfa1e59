"""Pruning that waits until learning has begun: stage ``shape``'s first rung, and a pruner that holds off.

Li et al. (2018) ask that Hyperband's minimum resource be one at which a configuration's rank
already says something about its final rank. Stage ``lr`` has trained many copies of the small
network to the end, so its curves show both when learning begins and from when the early ranking
holds; :func:`first_rung` reads them (plain lists, no Optuna). :class:`UntilLearningPruner` wraps
one of Optuna's pruners and makes no decision at a step where every trial's value there still sits
within noise of its own untrained (epoch-0) value: a rung of networks all at chance ranks nothing.
:func:`shape_first_rung` chooses the rung once per study and stores it on ``<name>/shape``.

The rules, with their constants:

- **Noise** (one unit): for an error rate (``val_error`` of a classification, tuner's own metric)
  on ``n`` validation rows, the binomial standard error ``sqrt(p (1 - p) / n)`` at the untrained
  error ``p``; otherwise ``1.4826 x MAD`` of the curves' pseudo-residuals
  ``(v[i] - (v[i-1] + v[i+1]) / 2) / sqrt(1.5)`` (Gasser et al. 1986), which leaves out the trend.
- **The basin**: stage ``lr``'s complete trials whose final value lies within
  :data:`NOISE_UNITS` noise units of the best, and at least the best quarter of them.
- **Learning has begun** for a basin trial at the first epoch whose value lies below its untrained
  value by more than :data:`NOISE_UNITS` noise units and by :data:`GAIN_SHARE` of its eventual
  gain (so that learning the class prior alone, a small drop of the loss, does not count); for the
  basin, at the epoch by which all of its trials have begun (trials that never begin are left out).
- **The margin**: larger shapes may begin later: no rung before ``ceil(MARGIN x that epoch)``.
- **The ranking**: from the rung on, at every epoch of stage ``lr``, the Spearman correlation
  between the values there and at the last epoch of the trials that learned (left their untrained
  value as above) is at least :data:`MIN_RANK_CORRELATION`. Trials that never learned sit at their
  untrained value at every epoch, so they rank "right" at any rung (a loss) or at random (an error
  at chance), whatever the trials that learned do: counted, they carried the correlation of the
  adding problem's sweeps past the bar where the trials that learned ranked down to 0.54 and 0.60
  (issue 21's ``adding_long``, seeds 1 and 2: rungs 6 and 9, now 9 and 12), and the pruner stopped
  shapes on their plateau before their drop. (``first_rung = "auto"``, contract 3-5, counts every
  trial.)
- Where no epoch qualifies (too few trials, nothing learned, a ranking that settles only at the
  end), the stage does not prune, and the reason says why.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.study.rate_rule import MAD_TO_SD, binomial_noise
from tuner.study.results import direction_of, loss_like
from tuner.study.stored import FIRST_RUNG_ATTR, LEARNING_CURVE_ATTR, SEARCH_ATTR, UNTRAINED_VALUE_ATTR, stage_study_name

NOISE_UNITS = 3.0  # "clearly": further than this many noise units
GAIN_SHARE = 0.1  # and this share of the trial's eventual gain (learning the class prior alone is less)
MARGIN = 1.5  # larger shapes may start later than the small network
MIN_RANK_CORRELATION = 0.7  # Spearman, between a rung's values and the last epoch's
MIN_TRIALS = 5  # fewer complete stage-lr trials cannot tell a ranking


@dataclass(frozen=True)
class FirstRung:
    """The epoch from which stage ``shape``'s pruner may act (None: it never does), why, and the noise unit."""

    epoch: int | None
    reason: str
    noise: float | None = None

    def as_record(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "reason": self.reason, "noise": self.noise}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FirstRung:
        epoch, noise = record.get("epoch"), record.get("noise")
        return cls(int(epoch) if epoch is not None else None, str(record.get("reason", "")),
                   float(noise) if noise is not None else None)

    def sentence(self, stage: str = "shape") -> str:
        if self.epoch is None:
            return f"stage '{stage}' does not prune: {self.reason}"
        return f"stage '{stage}' prunes from epoch {self.epoch}: {self.reason}"


def noise_unit(curves: Sequence[Sequence[float]], untrained: float, error_rows: int | None) -> float:
    """One noise unit of an epoch's value: binomial at the untrained error on ``error_rows`` rows, else robust."""
    if error_rows:
        return binomial_noise(untrained, error_rows)  # one formula with the hand-off's
    residuals = [(c[i] - (c[i - 1] + c[i + 1]) / 2) / math.sqrt(1.5) for c in curves for i in range(1, len(c) - 1)]
    if not residuals:
        return 0.0
    centre = statistics.median(residuals)
    return MAD_TO_SD * statistics.median(abs(r - centre) for r in residuals)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (ties share their mean rank); 0 where either is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var > 0 else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def first_rung(curves: Sequence[Sequence[float | None]], untrained: Sequence[float | None],
               error_rows: int | None = None, max_epochs: int | None = None, *, learned_only: bool = True) -> FirstRung:
    """The first rung for stage ``shape`` from stage ``lr``'s complete trials (see the module's rules).

    Args:
        curves: each complete stage-lr trial's objective per epoch (lower is better).
        untrained: each one's value before training (None: unknown; its first epoch stands in).
        error_rows: the validation rows, where the objective is an error rate (binomial noise).
        max_epochs: stage ``shape``'s epochs: a rung must lie below them to prune anything.
        learned_only: rank only the trials that learned (``first_rung = "learned"``); False: every
            trial, those that never left their untrained value too (``"auto"``, contract 3-5).

    Example:
        >>> plateau = [[0.9] * 5 + [0.9 - 0.05 * k * (1 + i / 10) for k in range(1, 11)] for i in range(8)]
        >>> first_rung(plateau, [0.9] * 8, error_rows=500).epoch  # learning began at epoch 7; x1.5
        11
    """
    length = max((len(c) for c in curves), default=0)
    runs = [([float(v) for v in c], float(u) if u is not None else float(c[0]))  # type: ignore[arg-type]
            for c, u in zip(curves, untrained)
            if len(c) == length and all(v is not None and math.isfinite(v) for v in c)]
    if len(runs) < MIN_TRIALS:
        return FirstRung(None, f"only {len(runs)} complete trial(s) of stage lr with a full curve; "
                               f"{MIN_TRIALS} are needed to tell whether early epochs rank shapes as the last does")
    stand_in = " (stage lr's trials have no untrained value: each first epoch stands in)" \
        if all(u is None for u in untrained) else ""
    start = statistics.median(u for _, u in runs)
    unit = noise_unit([c for c, _ in runs], start, error_rows)
    bar = NOISE_UNITS * unit
    ranked = sorted(runs, key=lambda run: run[0][-1])
    best = ranked[0][0][-1]
    basin = [run for run in ranked if run[0][-1] <= best + bar]
    basin = basin if len(basin) >= math.ceil(len(ranked) / 4) else ranked[:math.ceil(len(ranked) / 4)]
    began = [_learning_began(c, u, bar) for c, u in basin]
    began_at = [e for e in began if e is not None]
    if not began_at:
        return FirstRung(None, f"no trial of stage lr's basin moved more than {NOISE_UNITS:g} noise units "
                               f"({bar:.3g}) from its untrained value: nothing to rank by{stand_in}", unit)
    begun = max(began_at)
    earliest = math.ceil(MARGIN * begun)
    ranked_runs = [run for run in runs if _learning_began(*run, bar) is not None] if learned_only else runs
    if len(ranked_runs) < MIN_TRIALS:
        return FirstRung(None, f"only {len(ranked_runs)} of stage lr's {len(runs)} complete trials left their untrained "
                               f"value (by more than {NOISE_UNITS:g} noise units, {bar:.3g}); {MIN_TRIALS} are needed "
                               f"to tell whether early epochs rank them as the last does", unit)
    which = f"{len(ranked_runs)} trials that learned" if learned_only else f"{len(runs)} trials"
    finals = [c[-1] for c, _ in ranked_runs]
    correlations = [spearman([c[e - 1] for c, _ in ranked_runs], finals) for e in range(1, length + 1)]
    rung = next((e for e in range(earliest, length)
                 if all(rho >= MIN_RANK_CORRELATION for rho in correlations[e - 1:])), None)
    never = f", {len(basin) - len(began_at)} of them never did" if len(began_at) < len(basin) else ""
    learned = (f"stage lr's {len(basin)} best trials had left their untrained value by epoch {begun} (by more "
               f"than {NOISE_UNITS:g} noise units, {bar:.3g}{never}){stand_in}")
    if rung is None and earliest >= length:
        return FirstRung(None, f"{learned}; with room for larger shapes to start later (x{MARGIN:g}) that is "
                               f"epoch {earliest}, at or past stage lr's last epoch ({length}): no earlier epoch "
                               f"is known to rank as the last does", unit)
    if rung is None:
        worst = min(correlations[earliest - 1:length - 1], default=float("nan"))
        return FirstRung(None, f"{learned}, but from epoch {earliest} (x{MARGIN:g} for larger shapes) to its last "
                               f"epoch the ranking of stage lr's {which} differs from the final one "
                               f"(Spearman down to {worst:.2f} < {MIN_RANK_CORRELATION:g})", unit)
    if max_epochs is not None and rung >= max_epochs:
        return FirstRung(None, f"{learned}; the first rung that ranks as the last epoch does, epoch {rung}, "
                               f"is not below stage shape's {max_epochs} epochs", unit)
    return FirstRung(rung, f"{learned}; with room for larger shapes to start later (x{MARGIN:g}), and from epoch "
                           f"{rung} on stage lr's {which} rank as at their last epoch "
                           f"(Spearman >= {MIN_RANK_CORRELATION:g})", unit)


def _learning_began(curve: Sequence[float], untrained: float, bar: float) -> int | None:
    """The first epoch (from 1) whose value lies clearly below ``untrained``: by ``bar`` and a share of the gain."""
    gain = untrained - min(curve)
    if gain <= bar:
        return None
    needed = max(bar, GAIN_SHARE * gain)
    return next(epoch for epoch, value in enumerate(curve, start=1) if untrained - value >= needed)


class UntilLearningPruner(optuna.pruners.BasePruner):
    """Optuna's pruner ``inner``, asked only from ``first_rung`` on, and only once some trial has learned.

    At a step where every value reported there (by this trial and every other one of the study
    that reported it) lies within ``NOISE_UNITS x noise`` of that trial's untrained value (user
    attribute ``untrained_value``), nothing is ranked: the trial goes on. Trials without an
    untrained value are left out of that test; if none has one, ``inner`` decides as it would alone.

    Unlike Optuna's ``HyperbandPruner`` itself, this wrapper is not one, so a sampler sees all of the
    stage's trials rather than those of the asking trial's bracket only (a small stage split in
    brackets hardly leaves TPE's random start-up). Once the test lets ``inner`` decide past a rung
    it held off, ``SuccessiveHalvingPruner`` files the value of that later step for the rung.

    Example:
        >>> inner = optuna.pruners.HyperbandPruner(min_resource=5, max_resource=20, reduction_factor=3)
        >>> pruner = UntilLearningPruner(inner, first_rung=5, noise=0.01)
        >>> study = optuna.create_study(pruner=pruner)  # doctest: +SKIP
    """

    def __init__(self, inner: optuna.pruners.BasePruner, first_rung: int, noise: float) -> None:
        self.inner = inner
        self.first_rung = first_rung
        self.noise = noise

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.first_rung or self.nothing_learned(study, trial, step):
            return False
        return self.inner.prune(study, trial)

    def nothing_learned(self, study: optuna.Study, trial: FrozenTrial, step: int) -> bool:
        """Whether every value reported at ``step`` sits within noise of its trial's untrained value."""
        bar = NOISE_UNITS * self.noise
        others = (t for t in study.get_trials(deepcopy=False) if t.number != trial.number)
        judged = 0
        for seen in (trial, *others):
            value, untrained = seen.intermediate_values.get(step), seen.user_attrs.get(UNTRAINED_VALUE_ATTR)
            if value is None or untrained is None:
                continue
            if not abs(value - untrained) <= bar:  # NaN too: not "within noise"
                return False
            judged += 1
        return judged > 0


def counts_rows(objective: str, task: str | None, own_code: bool) -> bool:
    """Whether the objective is an error rate of whole validation rows: binomial noise (tuner's own
    classification error only; ``own_code``: a user's loop or metric computes it, its noise unknown)."""
    return objective == "val_error" and task == "classification" and not own_code


def error_rate_rows(objective: str, task: str, own_code: bool, data: Any) -> int | None:
    """The validation rows of ``data`` where the objective is an error rate (binomial noise), else None."""
    if not counts_rows(objective, task, own_code):
        return None
    rows = getattr(data, "x_val", None)
    try:
        return len(rows if rows is not None else data.val_set) or None
    except TypeError:  # a streamed part without a length
        return None


def stage_lr_runs(lr_study: optuna.Study) -> tuple[list[list[float | None]], list[float | None]]:
    """The learning curves and untrained values of stage ``lr``'s complete trials, lower is better.

    Scores of a study that maximizes are turned (negated) so that learning goes down, as the rung's rules read it.
    """
    direction = direction_of(lr_study)

    def turned(value: float | None) -> float | None:
        return None if value is None else loss_like(value, direction)

    complete = lr_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    curves = [[turned(v) for v in t.user_attrs.get(LEARNING_CURVE_ATTR) or []] for t in complete]
    return curves, [turned(t.user_attrs.get(UNTRAINED_VALUE_ATTR)) for t in complete]


def shape_first_rung(study_name: str, storage: optuna.storages.BaseStorage, shape_study: optuna.Study,
                     error_rows: int | None, max_epochs: int,
                     describe: Callable[[FirstRung], dict[str, Any]] | None = None,
                     lr_stages: Sequence[str] = ("lr",), *, learned_only: bool = True) -> FirstRung:
    """Stage ``shape``'s first rung: as stored on ``shape_study``, else chosen from stage ``lr`` and stored.

    Chosen once, after the hand-off: every worker and every resume reads the stored one (workers
    that choose at the same moment choose the same, from the same finished trials). ``describe``
    gives the stage's search record with the rung, stored with it. ``lr_stages``: the stage lr of
    each variant where choices are listed (``lr[optimizer=adam]``...): the latest of their rungs,
    so that no variant's trials are judged before they learn (never pruning, if one of them says so).
    ``learned_only``: as :func:`first_rung`.
    """
    stored = shape_study.user_attrs.get(FIRST_RUNG_ATTR)
    if stored is not None:
        return FirstRung.from_record(stored)
    rungs = []
    for stage in lr_stages:
        lr_study = optuna.load_study(study_name=stage_study_name(study_name, stage), storage=storage)
        rungs.append(first_rung(*stage_lr_runs(lr_study), error_rows=error_rows, max_epochs=max_epochs,
                                learned_only=learned_only))
    rung = max(rungs, key=lambda r: math.inf if r.epoch is None else r.epoch)
    if len(rungs) > 1:
        latest = f"the latest epoch of the {len(rungs)} stage lr variants' rungs: none judged before it learns"
        rung = dataclasses.replace(rung, reason=f"{rung.reason} ({latest})")
    if describe is not None:
        shape_study.set_user_attr(SEARCH_ATTR, describe(rung))
    shape_study.set_user_attr(FIRST_RUNG_ATTR, rung.as_record())
    return rung
