"""The report's words: a diagnosis of learning curves and of each stage, in sentences for a person.

A curve is a per-epoch validation loss (or error) list; a diverged run may stop early or end in
NaN/inf. ``classify_curve`` returns one of ``"decaying"``, ``"plateau"`` (hardly improves from its
start: rate too small, crawling), ``"oscillating"`` or ``"exploding"``; ``curve_stats`` gives the
numbers behind that verdict. ``divergence_onset`` and ``describe_lr_sweep`` summarise a sweep;
``lr_diagnosis``, ``shape_diagnosis``, ``audit_diagnosis`` and ``importance_sentences`` say what
the report's figures show.

Edge cases: an empty curve, or a single finite point, is ``"plateau"`` (no evidence of learning, and
none of divergence: flag such runs via ``diverged``). Any non-finite value makes the curve
``"exploding"``; values after it are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from tuner.analysis.importance import COMPLETE_BASIS, RUNG_CAVEAT, describe_basis
from tuner.report.runs import Run, StageRuns, TrialCosts, as_errors, epochs_to_target, error_target, untrained_errors
from tuner.study.rate_rule import RULES, SMOOTHED_RULES
from tuner.study.results import as_shown, loss_like
from tuner.study.stored import (
    BEST_TRIAL_ATTR, CALIBRATED_BASIS, FIRST_RUNG_ATTR, HANDOFF_ATTR, VERDICT_ATTR, VERDICT_LR_BASIS_ATTR,
)

# Exploding: the end level sits above the curve's minimum by at least half of the
# starting value (e.g. 1.0 -> 0.2 -> 0.7, or anything ending >= 1.5x its start).
# Ordinary val-loss overfitting or noise near convergence rises far less than that.
EXPLODE_RISE = 0.5
# Oscillating: total epoch-to-epoch movement is >= 3x the net change, i.e. at least
# two thirds of all movement is back-and-forth that cancels out ...
OSC_SCORE = 3.0
# ... the net change is floored at a quarter of the start value, so sub-percent
# jitter on a flat curve (tiny net change) is not mistaken for oscillation ...
OSC_NET_FLOOR = 0.25
# ... and the first difference changes sign in >= 30% of consecutive epoch pairs
# (a monotone curve has 0%, a pure zig-zag 100%).
OSC_MIN_FLIPS = 0.3
# Plateau: the end level is less than 10% below the start: the run is crawling.
PLATEAU_IMPROVEMENT = 0.10
# End level = mean of the last this-many finite epochs, so one alternating swing
# at the very end is not read as a blow-up or as a big improvement.
END_WINDOW = 2
REBOUND_SHARE = 0.05  # steadily: no later epoch rose above the best before it by this share of the gain


@dataclass(frozen=True)
class CurveStats:
    """Numbers behind a verdict (all relative to |start|)."""

    n_epochs: int  # length of the curve as given
    n_finite: int  # epochs before the first non-finite value
    finite: bool  # False if a NaN/inf occurs
    rel_improvement: float  # (start - end level) / |start|; 0.85 means -85%
    oscillation_score: float  # total variation / max(|net change|, floor)
    flip_fraction: float  # share of consecutive diffs that change sign
    blowup_ratio: float  # (end level - minimum) / |start|
    rebound: float = 0.0  # the largest rise above the best value before it, as a share of the gain (start - minimum)
    best_epoch: int = 0  # the epoch (from 1) of the lowest value


def curve_stats(values: Sequence[float], untrained: float | None = None) -> CurveStats:
    """Compute the statistics ``classify_curve`` uses.

    Where ``untrained`` (the value before training) is known, the improvement is read from it, and
    "relative to its start" from the larger of it and the first epoch's value: a run already at 0
    error after one epoch that then misses one validation row has not exploded.
    """
    v = np.asarray(list(values), dtype=float)
    bad = np.flatnonzero(~np.isfinite(v))
    v_ok = v[: bad[0]] if bad.size else v
    n = int(v_ok.size)
    if n < 2:
        return CurveStats(int(v.size), n, not bad.size, 0.0, 0.0, 0.0, 0.0)
    known = untrained is not None and math.isfinite(untrained)
    first = float(untrained) if known else float(v_ok[0])  # type: ignore[arg-type]
    scale = max(abs(float(v_ok[0])), abs(first), 1e-12)
    end = float(v_ok[-END_WINDOW:].mean())
    d = np.diff(v_ok)
    net = abs(float(v_ok[-1] - v_ok[0]))
    tv = float(np.abs(d).sum())
    flips = float(np.mean(d[:-1] * d[1:] < 0)) if d.size > 1 else 0.0
    return CurveStats(
        n_epochs=int(v.size),
        n_finite=n,
        finite=not bad.size,
        rel_improvement=(first - end) / scale,
        oscillation_score=tv / max(net, OSC_NET_FLOOR * scale),
        flip_fraction=flips,
        blowup_ratio=(end - float(v_ok.min())) / scale,
        rebound=float((v_ok[1:] - np.minimum.accumulate(v_ok)[:-1]).max(initial=0.0)) / max(first - float(v_ok.min()), 1e-12),
        best_epoch=int(np.argmin(v_ok)) + 1,
    )


def _verdict(s: CurveStats) -> str:
    if not s.finite or s.blowup_ratio >= EXPLODE_RISE:
        return "exploding"
    if s.oscillation_score >= OSC_SCORE and s.flip_fraction >= OSC_MIN_FLIPS:
        return "oscillating"
    if s.rel_improvement < PLATEAU_IMPROVEMENT:
        return "plateau"
    return "decaying"


def classify_curve(values: Sequence[float], untrained: float | None = None) -> str:
    """One of "decaying", "plateau", "oscillating", "exploding" (checked in reverse order)."""
    return _verdict(curve_stats(values, untrained))


def _exploded(curves: Sequence[Sequence[float]], diverged: Sequence[bool] | None,
              untrained: Sequence[float | None] | None = None) -> list[bool]:
    flags = list(diverged) if diverged is not None else [False] * len(curves)
    starts = list(untrained) if untrained is not None else [None] * len(curves)
    if len(flags) != len(curves) or len(starts) != len(curves):
        raise ValueError("diverged and untrained must have one entry per curve")
    return [bool(f) or classify_curve(c, u) == "exploding" for c, f, u in zip(curves, flags, starts)]


def divergence_onset(
    lrs: Sequence[float],
    curves: Sequence[Sequence[float]],
    diverged: Sequence[bool] | None = None,
    untrained: Sequence[float | None] | None = None,
) -> float | None:
    """Smallest LR from which runs explode, or None.

    Fits the step "explodes iff lr >= L" to the runs, choosing the tried LR L (or
    no onset at all) that misclassifies the fewest runs; ties go to the higher L,
    so a single exploding run among healthy ones is treated as noise. ``untrained``:
    each run's value before training, where known (see :func:`curve_stats`).
    """
    if len(lrs) != len(curves):
        raise ValueError("lrs and curves must have the same length")
    lr = np.asarray(lrs, dtype=float)
    ex = np.asarray(_exploded(curves, diverged, untrained), dtype=bool)
    if not ex.any():
        return None
    best_err, best = int(ex.sum()), None  # candidate "no onset"
    for cand in sorted(set(lr.tolist()), reverse=True):
        above = lr >= cand
        err = int((above & ~ex).sum() + (~above & ex).sum())
        if err < best_err:
            best_err, best = err, float(cand)
    return best


def _pct(rel: float) -> str:
    return f"{-100.0 * rel:+.0f}%".replace("-", "\u2212")


def decay_words(s: CurveStats, rises: bool = False) -> str:
    """How a curve that learned went: "decays steadily", or where a later epoch gave part of the gain back, says so."""
    moves = "rises" if rises else "decays"
    return f"{moves} steadily" if s.rebound < REBOUND_SHARE else (
        f"{moves}, not steadily: one epoch gave {100 * s.rebound:.0f}% of the gain back; its best was epoch {s.best_epoch} of {s.n_finite}")


def _sentence_for(head: str, s: CurveStats, verdict: str) -> str:
    span = f"{_pct(s.rel_improvement)} over {s.n_epochs} epochs"
    if verdict == "decaying":
        return f"{head} {decay_words(s)} ({span})."
    if verdict == "plateau":
        return f"{head} barely moves ({span}): the rate may be too small."
    if verdict == "oscillating":
        return (f"{head} oscillates strongly ({span}; up-and-down movement "
                f"{s.oscillation_score:.1f}x the net change).")
    if not s.finite:
        return f"{head} explodes (non-finite after {s.n_finite} of {s.n_epochs} epochs)."
    end = 1.0 - s.rel_improvement  # end level and best, as multiples of the start
    return (f"{head} explodes (ends at {end:.3g}x its starting value after a best of "
            f"{end - s.blowup_ratio:.2g}x, over {s.n_epochs} epochs).")


def describe_lr_sweep(
    lrs: Sequence[float],
    curves: Sequence[Sequence[float]],
    chosen_lr: float,
    diverged: Sequence[bool] | None = None,
    untrained: Sequence[float | None] | None = None,
) -> list[str]:
    """Short sentences for a person about the chosen LR, the onset and slow low LRs (``untrained``: as
    :func:`divergence_onset`)."""
    if len(lrs) != len(curves) or not lrs:
        raise ValueError("need one curve per learning rate, and at least one")
    lr = np.asarray(lrs, dtype=float)
    out: list[str] = []
    i = int(np.argmin(np.abs(np.log(lr) - math.log(chosen_lr))))
    starts = list(untrained) if untrained is not None else [None] * len(curves)
    s = curve_stats(curves[i], starts[i])
    verdict = "exploding" if diverged is not None and diverged[i] else _verdict(s)
    head = f"At the chosen learning rate {chosen_lr:.1e}"
    if not math.isclose(lr[i], chosen_lr, rel_tol=1e-6):
        head += f" (nearest trial: {lr[i]:.1e})"
    out.append(_sentence_for(head + " the validation loss", s, verdict))
    onset = divergence_onset(lrs, curves, diverged, starts)
    if onset is None:
        out.append(f"No run diverged, up to the highest rate tried ({lr.max():.1e}).")
    else:
        out.append(f"Runs with learning rates from {onset:.1e} upward diverge.")
        if chosen_lr >= onset:
            out.append("The chosen rate lies in the diverging range.")
    order = np.argsort(lr, kind="stable")
    low = []
    for j in order:  # longest run of plateau curves starting from the lowest LR
        if classify_curve(curves[j], starts[j]) != "plateau":
            break
        low.append(int(j))
    if low:
        epochs = int(np.median([len(curves[j]) for j in low]))
        hi = float(lr[low].max())
        who = "All rates tried" if len(low) == len(lrs) else f"Rates up to {hi:.1e}"
        out.append(f"{who} barely learn in {epochs} epochs (plateau).")
    return out


# --- the stages, in words ----------------------------------------------------------------------



def lr_diagnosis(stage: StageRuns, chosen_lr: float | None, objective: str) -> list[str]:
    runs = [r for r in stage.runs if r.curve]
    if not runs or chosen_lr is None:
        n_diverged = sum(r.diverged for r in stage.runs)
        return [f"No learning rate was chosen: none of the {len(stage.runs)} finished trials of stage lr completed "
                f"({n_diverged} diverged). Lower stages.lr.lr_max, or check the data."]
    lrs = [r.params["lr"] for r in runs]
    sentences = [
        f"{len(runs)} rates tried from {min(lrs):.1e} to {max(lrs):.1e}; "
        f"{sum(r.diverged for r in runs)} diverged."
    ]
    # describe_lr_sweep says "validation loss" for any curve; name what the curves really hold.
    what = objective.split(" (")[0]
    # A score (train.direction = "maximize") is read as its gap to the best score, lower is better, as the
    # curve rules are written; the sentences then speak of that gap.
    curves = as_errors([r.curve for r in runs], stage.maximizes)
    said_as = "the gap to the best score" if stage.maximizes else f"the {what}"
    sentences += [sentence.replace("the validation loss", said_as)
                  for sentence in describe_lr_sweep(lrs, curves, chosen_lr, [r.diverged for r in runs],
                                                    untrained_errors(runs, stage.maximizes))]
    if not stage.maximizes:  # the target is an error to get below
        sentences.append(target_sentence(stage.runs, what))
    said = handoff_sentence(stage, chosen_lr)
    if said:
        sentences.append(said)
    return sentences


def handoff_sentence(stage: StageRuns, chosen_lr: float) -> str | None:
    """How the rate handed on was chosen (rule, basin, noise), from the record stored at the hand-off.

    None for a study stored before the record was kept (it handed on its best trial's rate).
    """
    record = stage.study.user_attrs.get(HANDOFF_ATTR)
    if not isinstance(record, dict) or "rule" not in record:
        return None
    rule = record["rule"]
    n = record.get("n_points")
    if rule not in SMOOTHED_RULES:
        why = f": {record['why']}" if record.get("why") else ""
        return f"The rate handed on, {chosen_lr:.2g}, is the rate of the {'only' if rule == 'only trial' else 'best'} trial (rule '{rule}'{why})."
    low, high = record["basin"]
    said = (f"The rate handed on, {chosen_lr:.2g}, was read from the smoothed U of {n} trials (diverged ones as "
            f"its wall), not from the best single trial: rule '{rule}', "
            + (RULES[rule] if rule in ("backed", "basin", "robust") else f"{RULES['fitted minimum']} ({record.get('why')})")
            + (" (on the curve of rule 'backed')" if record.get("backed") and rule != "backed" else "")
            + f". Its basin, the rates whose smoothed value is within one noise unit ({record['noise']:.2g}; "
            f"{record.get('noise_basis')}) of the best, spans {low:.2g} to {high:.2g}.")
    best_number = stage.study.user_attrs.get(BEST_TRIAL_ATTR)
    best = next((r for r in stage.runs if r.number == best_number), None)
    if best is not None and best.value is not None and not low <= best.params["lr"] <= high:
        said += (f" The best single trial ({best_number}, lr {best.params['lr']:.2g}, {best.value:.3g}) lies outside "
                 f"it: its neighbours did not bear its value out.")
    return said


def target_sentence(runs: Sequence[Run], what: str) -> str:
    """How fast the rates learn: the quickest to reach the target error, or why there is none."""
    target = error_target(runs)
    if target is None:
        return (f"No rate ended below the {what} of the smallest rate after one epoch: "
                "no target to count epochs to.")
    head = (f"Target {what} ≤ {target.value:.3g}: {target.share:.0%} of the way from {target.start:.3g} "
            f"(the smallest rate, {target.start_lr:.2g}, after one epoch: about untrained) to the best {target.best:.3g}.")
    fastest = [(e, r) for r in runs if not r.diverged for e in [epochs_to_target(r.curve, target.value)] if e is not None]
    if not fastest:
        return head + " No rate reached it."
    e, r = min(fastest, key=lambda p: (p[0], p[1].params["lr"]))
    return head + f" The quickest run reached it in {e} epoch(s), at learning rate {r.params['lr']:.2g}."


def lr_time_caption(costs: TrialCosts | None, word: str = "error") -> str:
    """The caption of lr_time.png, naming what its left panel measures (``word``: the objective's, e.g. "loss")."""
    right = ("Right: a score has no target error to count epochs to." if word == "score" else
             f"Right: how many epochs each rate needed to reach the target {word}; a large enough rate gets there "
             "in few epochs, too large a one never does.")
    if costs is None:
        return "Left: no training time was stored. " + right
    if costs.unit == "epochs":
        left = ("Left: epochs each trial trained (a diverged one stops early). These batched trials were stored "
                "before each kept a time of its own: their batch's time split evenly would say nothing about a rate.")
    elif costs.shares:
        left = ("Left: training time per trial; a batched trial's time is its share of each epoch it trained (the "
                "epoch's time divided by the copies training in it), so one that stops early costs less.")
    else:
        left = "Left: training time per trial."
    if costs.left_out:
        left += (f" {costs.left_out} batched trial(s) stored with only their batch's time split evenly are left out.")
    return f"{left} {right}"


def shape_diagnosis(stage: StageRuns, reference: float | None, objective: str) -> list[str]:
    best = stage.best
    if best is None:
        return ["No shape trial completed."]
    what = objective.split(" (")[0]
    shown = (as_shown(k, v) for k, v in best.params.items() if k not in ("lr", "lr_scale"))
    setting = ", ".join(f"{name} {fmt_value(value)}" for name, value in shown)
    pruned = sum(r.state == TrialState.PRUNED for r in stage.runs)
    of = f"{len(stage.complete)} complete shapes" + (f" ({pruned} more were pruned)" if pruned else "")
    sentences = [f"Best of {of}: {setting}, trained at {rate_words(best)}; final {what} {best.value:.3g}."]
    if reference is not None and reference > 0:
        change = (best.value - reference) / reference
        word = "lower" if change < 0 else "higher"
        worse = stage.better(reference, best.value)
        # The reference is stage lr's best trial, at its own rate (the robust hand-off may calibrate
        # another); the shape trained at the calibrated rate times its own lr_scale (said above).
        share = f"{abs(change):.0%}" if abs(change) >= 0.005 else f"{100 * abs(change):.2g}%"  # never "0% higher"
        sentences.append(f"That is {share} {word} than the best small network of stage lr ({reference:.3g})." if change
                         else f"That equals the best small network of stage lr ({reference:.3g}).")
        if worse:
            sentences.append(
                "So the study's best configuration is stage lr's small network: `tuner best` trains it (`--stage shape` "
                "trains this stage's best). A shape stage ends worse than its first stage when its larger networks "
                "wanted another rate than the lr_scale range allowed, when its pruner stopped slow starters, or when "
                "its trials were too few for the space."
            )
    by_schedule: dict[str, float] = {}  # lower is better: a score is turned (stage.direction)
    for r in stage.runs:  # every schedule tried, also one whose trials were all pruned (its best: none)
        s = str(r.params.get("schedule", "constant"))
        turned = loss_like(r.value, stage.direction) if r.value is not None else math.inf
        by_schedule[s] = min(by_schedule.get(s, math.inf), turned)
    if len(by_schedule) > 1:
        ranked = sorted(by_schedule.items(), key=lambda kv: kv[1])
        sentences.append("Best per schedule: " + ", ".join(
            f"{s} {loss_like(v, stage.direction):.3g}" if math.isfinite(v) else f"{s} none complete (only pruned trials)"
            for s, v in ranked) + ".")
    # A score: its gap to the best; read against its untrained value, where stored.
    stats = curve_stats(as_errors([best.curve], stage.maximizes)[0], untrained_errors([best], stage.maximizes)[0])
    verdict = _verdict(stats)
    words = {
        "decaying": decay_words(stats, rises=stage.maximizes),
        "plateau": "hardly improves (a plateau)",
        "oscillating": "oscillates",
        "exploding": "blows up",
    }[verdict]
    sentences.append(f"The best shape's validation curve {words}.")
    n_div = sum(r.diverged for r in stage.runs)
    if n_div:
        sentences.append(f"{n_div} shape trial(s) diverged at the calibrated rate: a larger network may want a smaller rate.")
    rung = stage.study.user_attrs.get(FIRST_RUNG_ATTR)  # first_rung = "auto": chosen from stage lr's curves
    if isinstance(rung, dict):
        n_pruned = sum(r.state == TrialState.PRUNED and not r.diverged for r in stage.runs)
        sentences.append(f"Its pruner acted from epoch {rung['epoch']} ({n_pruned} trial(s) pruned): {rung['reason']}."
                         if rung.get("epoch") else f"It pruned no trial: {rung.get('reason')}.")
    return sentences


def rate_words(run: Run) -> str:
    """The learning rate ``run`` trained at, in words: ``lr 0.0326 (calibrated 0.0122 × lr_scale 2.67)``, or
    ``lr 0.00815 (calibrated 0.0122 × 0.25 for its shape × lr_scale 2.67)`` where stage shape's rule moved it."""
    rate = run.trained_lr
    if rate is None:
        return "an unknown rate"
    calibrated = run.params.get("lr")
    moved = f" × {run.move:.3g} for its shape" if run.move != 1.0 else ""
    if "lr_scale" not in run.params:  # lr_scale not searched ([1, 1]): the rule's move alone, where it moved
        return f"lr {rate:.3g} (calibrated {float(calibrated):.3g}{moved})" if moved and calibrated is not None else f"lr {rate:.3g}"
    return (f"lr {rate:.3g} (calibrated {float(calibrated):.3g}{moved} × lr_scale {float(run.params['lr_scale']):.3g})"
            if calibrated is not None else f"lr {rate:.3g} (lr_scale {float(run.params['lr_scale']):.3g})")


def audit_diagnosis(stage: StageRuns, objective: str) -> list[str]:
    best = stage.best
    if best is None:
        return ["No audit trial completed."]
    setting = ", ".join(f"{k} {fmt_value(v)}" for k, v in best.params.items())
    sentences = [f"Best of {len(stage.complete)} joint random trials: {setting}, final "
                 f"{objective.split(' (')[0]} {best.value:.3g}."]
    verdict = stage.study.user_attrs.get(VERDICT_ATTR)  # stored by tuner.analysis.importance.audit_verdict at the end
    sentences.append(str(verdict) if verdict else
                     "No verdict on the low-interaction assumption is stored yet: `tuner study` makes it when the "
                     "audit stage ends.")
    attrs = stage.study.user_attrs
    judged = attrs.get("lr_main_effect") is not None  # shares to compare: not where fANOVA could not run
    if verdict and judged and str(attrs.get(VERDICT_LR_BASIS_ATTR, "")).startswith(CALIBRATED_BASIS):
        sentences.append("Its shares differ from the audit's importances in this report, which read lr as each trial "
                         "trained at.")
    return sentences


def fmt_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def importance_sentences(table: pd.DataFrame) -> list[str]:
    """Per stage and basis: the parameter that matters most and the largest interaction, in words.

    Where a stage was analysed at an epoch (its pruned trials included), a last sentence says what
    such importances lean against (:data:`tuner.analysis.importance.RUNG_CAVEAT`).
    """
    table = table if "basis" in table else table.assign(basis=COMPLETE_BASIS)
    sentences = []
    for (stage, basis), rows in table.groupby(["stage", "basis"], sort=False):
        evaluator = "fanova" if (rows["evaluator"] == "fanova").any() else str(rows["evaluator"].iloc[0])
        others = rows[(rows["evaluator"] != evaluator) & (rows["param_b"] == "")]
        rows = rows[rows["evaluator"] == evaluator]
        mains = rows[rows["param_b"] == ""].sort_values("importance", ascending=False)
        pairs = rows[rows["param_b"] != ""].sort_values("importance", ascending=False)
        if len(mains) < 2:
            continue  # one parameter searched: it explains everything, nothing to say
        top = mains.iloc[0]
        sentence = f"Stage {stage} ({evaluator}{_basis_words(basis, rows)}): {top['param']} matters most ({top['importance']:.0%})"
        for other, rows_other in others.groupby("evaluator", sort=False):
            first = rows_other.sort_values("importance", ascending=False)["param"].iloc[0]
            if first != top["param"]:  # evaluators disagree: say so rather than pick one silently
                sentence += f" ({other} ranks {first} first)"
        if len(pairs):
            pair = pairs.iloc[0]
            sentence += f"; the largest interaction is {pair['param']} × {pair['param_b']} ({pair['importance']:.0%})"
        sentences.append(sentence + ".")
    if table["basis"].str.startswith("epoch").any():
        sentences.append(RUNG_CAVEAT[0].upper() + RUNG_CAVEAT[1:] + ".")
    return sentences


def _basis_words(basis: str, rows: pd.DataFrame) -> str:
    """``, 12 complete trials`` or ``, at epoch 3, 16 trials`` (nothing for a table without counts)."""
    if "trials" not in rows or rows["trials"].isna().all():
        return "" if basis == COMPLETE_BASIS else f", {describe_basis(basis, None)}"
    return f", {describe_basis(basis, int(rows['trials'].iloc[0]))}"
