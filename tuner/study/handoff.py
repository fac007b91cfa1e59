"""The hand-off: the learning rate stage ``lr`` hands on to stage ``shape``, chosen once, with its record.

Once every trial of stage ``lr`` has finished, the rate is chosen by the spec's
``stages.lr.handoff``: ``"backed"`` (the default) reads it from the smoothed U of all the stage's
trials, diverged ones as its right wall, among the rates within noise of its minimum, on a curve
where a trial a neighbour backs keeps its weight (:func:`tuner.study.rate_rule.choose_rate`);
``"basin"`` (contract 6-7) on the plain robust curve; ``"robust"`` (contract 3-5) anywhere on the U;
``"best"`` (how studies stored before contract 3 were made) takes the best trial's rate. The rate, the best trial
and how the rate was chosen are stored on ``<name>/lr``, the rate on ``<name>/shape``; a resumed
study reads the stored rate back and never chooses again. With ``train.optimizer`` or
``train.batch_size`` listed, each variant's stage lr (``<name>/lr[optimizer=adam]``) chooses its own
rate by the same rule, and ``<name>/shape`` keeps them all (:func:`hand_off_rates`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.inputs.choices import Variant, listed, variants
from tuner.inputs.spec import StudySpec
from tuner.inputs.usercode import UserCode
from tuner.study import results
from tuner.study.lr_scale import transfer_moves, transfer_words
from tuner.study.pruning import counts_rows
from tuner.study.rate_rule import RULES, SMOOTHED_RULES, RateChoice, choose_rate, rows_behind
from tuner.study.stage_studies import open_stage_study
from tuner.study.stages import settle_lr_scale, shape_stage

if TYPE_CHECKING:
    from tuner.study.progress import Reporter

__all__ = ["HandOff", "hand_off_lr", "hand_off_rates", "rate_choice", "sweep_choice"]


def hand_off_lr(spec: StudySpec, storage: optuna.storages.BaseStorage, reporter: Reporter | None = None,
                code: UserCode | None = None) -> float:
    """The calibrated learning rate, chosen once and stored on both stage studies.

    ``code``: the spec's own code as resolved by the caller (its identity joins the shape study's
    settings; default: read from the spec's files). With ``train.optimizer`` or ``batch_size``
    listed, a rate is chosen for each variant (:func:`hand_off_rates`); this is the rate of the
    variant whose stage lr did best.

    Example:
        >>> rate = hand_off_lr(spec, open_storage("sqlite:///tuner.db"))  # doctest: +SKIP
    """
    return hand_off_rates(spec, storage, reporter, code).rate


@dataclasses.dataclass(frozen=True)
class HandOff:
    """What stage lr hands on: ``rate``, and with listed choices each variant's (:attr:`Stage.rates`)."""

    rate: float  # the rate of the only variant, or of the one whose stage lr did best
    rates: tuple[tuple[tuple[tuple[str, Any], ...], float], ...] = ()
    labels: dict[str, float] = dataclasses.field(default_factory=dict)  # stage lr's name -> its rate


def hand_off_rates(spec: StudySpec, storage: optuna.storages.BaseStorage, reporter: Reporter | None = None,
                   code: UserCode | None = None) -> HandOff:
    """The rate each variant's stage lr hands on, chosen once for all and stored on the stage studies.

    Each ``<name>/lr[...]`` keeps its own rate and how it was chosen; ``<name>/shape`` keeps every
    variant's rate (:data:`RATES_ATTR`) and, written last, the leading one (:data:`LR_ATTR`): the
    mark that the hand-off happened, read back by every later run.
    """
    shape_name = results.stage_study_name(spec.name, "shape")
    if shape_name in optuna.get_all_study_names(storage):
        stored = _stored(optuna.load_study(study_name=shape_name, storage=storage).user_attrs)
        if stored is not None:
            if reporter is not None:  # resumed: the rate stage shape goes on from, as the first run said it
                each = ", ".join(f"'{label}' {rate:.3g}" for label, rate in stored.labels.items()) if stored.rates else ""
                reporter.message(f"stage 'lr' handed on the learning rate {stored.rate:.3g} when it ended (stored on "
                                 f"{shape_name}{'; per choice: ' + each if each else ''}): stage 'shape' goes on from it")
            return stored
    chosen = [_choose(variant, storage) for variant in variants(spec)]
    lead = min(chosen, key=lambda c: results.loss_like(c.best.value, c.direction))  # type: ignore[arg-type]
    rates = tuple((tuple(c.variant.choice.items()), c.choice.rate) for c in chosen) if len(chosen) > 1 else ()
    shape = open_stage_study(spec, shape_stage(spec, lead.choice.rate, rates=rates), storage, code)
    stored = _stored(shape.user_attrs)
    if stored is not None:  # another worker handed on meanwhile: its records hold
        return stored
    for c in chosen:
        c.study.set_user_attr(results.BEST_LR_ATTR, c.choice.rate)
        c.study.set_user_attr(results.BEST_TRIAL_ATTR, c.best.number)
        c.study.set_user_attr(results.HANDOFF_TRIALS_ATTR, c.n_finished)
        c.study.set_user_attr(results.HANDOFF_ATTR, c.choice.as_record())
    # lr_scale = "auto": resolved once, widened by the basins (as multiples of their rates), before the rate counts as handed on.
    basin = (min(c.choice.basin[0] / c.choice.rate for c in chosen), max(c.choice.basin[1] / c.choice.rate for c in chosen))
    low, high = settle_lr_scale(spec, shape, basin)
    if rates:
        shape.set_user_attr(results.RATES_ATTR, [{"stage": c.variant.label, "choice": c.variant.choice, "lr": c.choice.rate}
                                                 for c in chosen])
    shape.set_user_attr(results.LR_ATTR, lead.choice.rate)
    if reporter is not None:
        scaled = f"; stage 'shape' scales it by lr_scale in [{low:.3g}, {high:.3g}]" if low < high else ""
        moved = any(a or b for a, b in (transfer_moves(spec) or {}).values())  # the rule moves some shape's rate
        if moved:
            scaled = (f"; stage 'shape' moves it to each shape by the optimizer's rule ({transfer_words(spec)})"
                      + (f" and scales that by lr_scale in [{low:.3g}, {high:.3g}]" if low < high else ""))
        for c in chosen:
            which = f"stage '{c.variant.label}' ({c.variant.words()})" if rates else "stage 'lr'"
            reporter.message(f"{which} calibrated the learning rate: {c.choice.rate:.3g} "
                             f"({_in_words(c.choice, c.best)}){'' if rates else scaled}")
            if (edge := _at_an_edge(c)) is not None:
                reporter.message(f"{which}: {edge}")
        if rates:
            each = f", scaled by lr_scale in [{low:.3g}, {high:.3g}]" if low < high else ""
            if moved:
                each = f", moved to its shape by the optimizer's rule ({transfer_words(spec)}){each}"
            reporter.message(f"stage 'shape' searches {' and '.join(listed(spec))} with the rest, each trial at the rate "
                             f"calibrated for its choice{each}; the best stage lr was '{lead.variant.label}'")
    return HandOff(lead.choice.rate, rates, {c.variant.label: c.choice.rate for c in chosen})


@dataclasses.dataclass(frozen=True)
class _Chosen:
    variant: Variant
    study: optuna.Study
    best: FrozenTrial
    choice: RateChoice
    n_finished: int
    direction: str


def _choose(variant: Variant, storage: optuna.storages.BaseStorage) -> _Chosen:
    """The rate one variant's stage lr hands on, from its finished trials (nothing stored yet)."""
    study = optuna.load_study(study_name=results.stage_study_name(variant.spec.name, variant.label), storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    n_finished = sum(t.state in results.FINISHED for t in trials)
    if not complete:
        drop = "".join(f"; or leave {value!r} out of train.{key}" for key, value in variant.choice.items())
        raise TunerError(
            f"stage '{variant.label}': none of its {n_finished} trials completed (all diverged or were pruned); lower "
            f"stages.lr.lr_max or check the data{drop}, then run again under a new name (--name NEW)"
        )
    direction = results.direction_of(study)
    best = results.best_complete(complete, direction)
    assert best is not None
    choice = rate_choice(variant.spec, trials, study.user_attrs.get(results.TASK_ATTR))
    return _Chosen(variant, study, best, choice, n_finished, direction)


EDGE_DECADES = 0.1  # a basin this close to a bound of the searched rates reaches it


def _at_an_edge(chosen: _Chosen) -> str | None:
    """Words for a basin that reaches a bound of the rates stage lr searched (a range test's narrow range,
    an lr_max set low): better rates may lie beyond it, and nothing else would say so; None otherwise."""
    searched = chosen.best.distributions.get("lr")
    low, high = chosen.choice.basin
    near = 10 ** EDGE_DECADES
    if (not isinstance(searched, optuna.distributions.FloatDistribution) or not low < high
            or searched.high < searched.low * near ** 4):
        return None  # no basin (one trial's rate, as best.toml pins it), or no range to speak of
    lr = chosen.variant.spec.stages.lr
    for side, bound, limit, above, name in (("top", searched.high, lr.lr_max, high * near >= searched.high, "lr_max"),
                                            ("bottom", searched.low, lr.lr_min, low <= searched.low * near, "lr_min")):
        if above:
            # lr_range = "auto" searched the range test's suggestion, within lr_min to lr_max.
            widen = ('set [stages.lr] lr_range = "fixed" (it searches lr_min to lr_max)'
                     if lr.lr_range == "auto" and not math.isclose(bound, limit, rel_tol=1e-9) else f"widen [stages.lr] {name}")
            return (f"its basin reaches the {side} of the rates it searched ({bound:.3g}): the best rate may lie "
                    f"{'above' if side == 'top' else 'below'} it; to see, {widen} and run under a new name (--name NEW)")
    return None


def _stored(shape_attrs: dict[str, Any]) -> HandOff | None:
    """The hand-off as a run before stored it on ``<name>/shape``; None if it has not happened."""
    stored = shape_attrs.get(results.LR_ATTR)
    if stored is None:
        return None
    rates = tuple((tuple(r["choice"].items()), float(r["lr"])) for r in shape_attrs.get(results.RATES_ATTR) or [])
    return HandOff(float(stored), rates, results.handed_rates(shape_attrs) or {"lr": float(stored)})


def rate_choice(spec: StudySpec, trials: list[FrozenTrial], task: str | None) -> RateChoice:
    """The rate stage ``lr``'s finished ``trials`` hand on, by the spec's ``stages.lr.handoff``."""
    best = results.best_complete(trials, spec.train.direction)
    assert best is not None, "rate_choice needs a complete trial"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if spec.stages.lr.handoff == "best":
        rate = float(best.params["lr"])
        return RateChoice(rate, "best trial", (rate, rate), None, "", why='stages.lr.handoff = "best"',
                          n_points=len(complete))
    # An error rate counts wrong rows: binomial noise, for tuner's own classification error only.
    return sweep_choice(trials, counts_rows=counts_rows(spec.train.objective, task, bool(spec.train.metric or spec.train.loop)),
                        direction=spec.train.direction, within_noise=spec.stages.lr.handoff in ("basin", "backed"),
                        backed=spec.stages.lr.handoff == "backed")


def sweep_choice(trials: list[FrozenTrial], *, counts_rows: bool = False, direction: str = results.MINIMIZE,
                 within_noise: bool = True, backed: bool = True) -> RateChoice:
    """The robust rule on stage ``lr``'s trials: complete ones at their value, diverged ones as the wall.

    The wall stands at the worst value seen: any untrained (epoch-0) value stored, or any value a
    trial that did not diverge reached (a rate too small to learn stays near the untrained one). Pruned trials that did not diverge
    have no final value and are left out. ``counts_rows``: the values are error rates of whole
    validation rows, whose number is read from them for the binomial noise. ``direction``
    "maximize": the values are scores, turned (:func:`tuner.study.results.loss_like`) into a U whose
    bottom is the best; the stored curve and candidates are in the score's own units. ``within_noise``:
    rule "basin" (False: "robust", contract 3-5; :func:`tuner.study.rate_rule.choose_rate`); with ``backed``
    too, rule "backed" (contract 8 on).
    """
    points = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    walls = [t for t in trials if t.state in results.FINISHED and t.user_attrs.get(results.DIVERGED_ATTR)]
    def turned(value: float) -> float:
        return results.loss_like(float(value), direction)

    seen = [turned(t.value) for t in points]  # type: ignore[arg-type]
    for trial in trials:
        if trial.state in results.FINISHED and not trial.user_attrs.get(results.DIVERGED_ATTR):
            seen += [turned(v) for v in trial.user_attrs.get(results.LEARNING_CURVE_ATTR) or []
                     if v is not None and math.isfinite(v)]
        untrained = trial.user_attrs.get(results.UNTRAINED_VALUE_ATTR)  # stored since the pruner waits for learning
        if untrained is not None and math.isfinite(untrained):
            seen.append(turned(untrained))
    choice = choose_rate(
        [float(t.params["lr"]) for t in [*points, *walls]],
        [*(turned(t.value) for t in points), *(math.nan for _ in walls)],  # type: ignore[arg-type]
        [False] * len(points) + [True] * len(walls),
        wall=max(seen),
        error_rows=rows_behind(seen) if counts_rows else None,
        within_noise=within_noise,
        backed=backed,
    )
    if direction == results.MAXIMIZE:  # back to the score's own units for the record and the figures
        choice = dataclasses.replace(choice, curve=tuple((x, turned(y)) for x, y in choice.curve),
                                     candidates=tuple((lr, turned(y)) for lr, y in choice.candidates))
    return choice


def _in_words(choice: RateChoice, best: FrozenTrial) -> str:
    """How the rate was chosen, in a few words for the console."""
    said = f"rule '{choice.rule}': {RULES[choice.rule]}"
    if choice.backed and choice.rule != "backed":  # fell back, on the curve rule "backed" reads
        said += " (on the curve of rule 'backed')"
    if choice.rule in SMOOTHED_RULES:
        low, high = choice.basin
        said += f"; basin {low:.3g} to {high:.3g}, within one noise unit ({choice.noise:.2g}) of the best smoothed value"
    if choice.why:
        said += f"; {choice.why}"
    return f"{said}; best trial {best.number}: lr {float(best.params['lr']):.3g}, value {best.value:.4g}"
