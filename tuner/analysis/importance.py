"""Importance analyses of a stored study, as one table, and the audit of the low-interaction assumption.

:func:`importance_table` analyses every stage of ``<name>/<stage>`` with two evaluators: fANOVA (our
:mod:`tuner.analysis.fanova`: main effects and every pairwise interaction, as fractions of the total
variance) and Optuna's PED-ANOVA (main effects only), on up to two bases: the final values of its
complete trials, and, where a pruner stopped some trials, the values at the deepest epoch that enough
trials reached, pruned and complete ones alike (a rung: Optuna's own evaluators read complete trials
only, so a Hyperband stage would otherwise rest on its few survivors). :func:`audit_verdict`
reads the ``audit`` stage's fANOVA and says whether the learning rate's interactions were small next to
its main effect (Greff et al.'s finding that the staged approach rests on), and stores the verdict on
the ``<name>/audit`` study.

Example:
    >>> table, skipped = importance_table("quickstart", "sqlite:///tuner.db")  # doctest: +SKIP
    >>> write_importance("quickstart", out="results", storage="sqlite:///tuner.db")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.bases import COMPLETE_BASIS, RUNG_CAVEAT, basis_notes, describe_basis, headline_rows  # noqa: F401
from tuner.analysis.calibrated import as_calibrated, stored_rule
from tuner.analysis.fanova import fanova_importances
from tuner.analysis.rungs import deepest_rung
from tuner.deprecation import keyword_only_since
from tuner.errors import optuna_silenced
from tuner.inputs.choices import CHOICE_FIELDS

# The loaders of a stored study live in tuner.study.results; importable from here as before.
from tuner.study.results import (
    STAGES,
    UnknownStudyError,
    direction_of,
    load_stage_studies,
    loss_like,
    load_stage_trials,
    open_for_reading,
    stored_study_names,
)
from tuner.study.stored import VERDICT_ATTR, VERDICT_LR_BASIS_ATTR, stage_study_name

__all__ = [
    "AuditVerdict",
    "COLUMNS",
    "COMPLETE_BASIS",
    "MIN_TRIALS",
    "RUNG_CAVEAT",
    "STAGES",
    "UnknownStudyError",
    "audit_verdict",
    "basis_notes",
    "headline_rows",
    "importance_table",
    "load_stage_studies",
    "load_stage_trials",
    "stored_study_names",
    "write_importance",
]

# The first six are the columns importance.csv always had, in their order; later ones are appended.
# basis: "complete" (final values of complete trials) or "epoch N" (values at epoch N of every trial
# that reached it), either followed by ", where P is set" for a parameter P set only in some trials
# (decay, for the schedules that decay), analysed on those; trials: how many trials the row rests on.
COLUMNS = ["stage", "evaluator", "param", "param_b", "importance", "std", "basis", "trials"]

# Below this many trials a forest of 64 trees (or PED-ANOVA's top 10 %, one trial) says more about
# the noise than about the parameters: a basis with fewer is not analysed, and a stage with no basis
# left is skipped, with the reason.
MIN_COMPLETE_TRIALS = 10
MIN_TRIALS = MIN_COMPLETE_TRIALS  # the same floor for a rung's trials
# PED-ANOVA gives no spread of its own, so `std` is taken over this many bootstrap resamples of the
# stage's complete trials (it takes milliseconds per resample).
PED_ANOVA_BOOTSTRAPS = 20
# The low-interaction assumption holds when the largest pairwise fANOVA interaction involving `lr`
# is at most this fraction of the `lr` main effect. A quarter: an interaction that large would move
# the best learning rate visibly with the other parameters, which is what staging must not do;
# Greff et al. saw lr take > 2/3 of the variance and its largest interaction a few per cent.
AUDIT_MAX_INTERACTION_RATIO = 0.25

_SEED = 0  # forest and bootstrap seed: the same trials give the same table


@dataclass(frozen=True)
class AuditVerdict:
    """Whether the learning rate's interactions were small on this problem (None: could not judge)."""

    study_name: str  # the audit stage's Optuna study, ``<name>/audit``
    held: bool | None
    n_trials: int  # complete trials analysed
    lr_main_effect: float | None  # fraction of the total variance
    largest_interaction: float | None  # largest pure pairwise share involving lr
    largest_interaction_with: str | None  # the other parameter of that pair
    max_ratio: float = AUDIT_MAX_INTERACTION_RATIO
    reason: str = ""  # why it could not judge, when held is None
    # Parameters set in some trials only (where they act, e.g. decay), which fANOVA cannot judge with
    # the rest: in words, "" when none.
    not_judged: str = ""
    # How lr was read: "" as each trial trained at; or, where stage shape carries the calibrated rate to
    # each shape by a rule (lr_transfer = "rule"), "as stage lr calibrates it: ... (the rule)": each
    # trial's lr divided by its shape's move, the rate stage lr calibrates, so that lr x width measures
    # what the rule leaves (or "as trained: ..." saying why not, where the rule does not cover a trial).
    lr_basis: str = ""

    @property
    def message(self) -> str:
        """A sentence or two for the end of ``tuner study``."""
        said = self._message()
        return f"{said.rstrip('.')}. Not judged: {self.not_judged}." if self.not_judged else said

    def _message(self) -> str:
        if self.held is None:
            return f"audit ({self.study_name}): could not judge the low-interaction assumption: {self.reason}"
        largest = (f"its largest interaction (with {self.largest_interaction_with}) {self.largest_interaction:.1%}"
                   if self.largest_interaction_with is not None else "no interaction judged")
        numbers = f"lr explains {self.lr_main_effect:.1%} of the variance; {largest}, over {self.n_trials} trials"
        if self.lr_basis:
            numbers += f"; lr read {self.lr_basis}"
        if self.held:
            return (
                f"audit ({self.study_name}): the low-interaction assumption held ({numbers}; threshold: "
                f"{self.max_ratio:g} x the lr effect): calibrating the learning rate first is sound here."
            )
        advice = (
            f"audit ({self.study_name}): the low-interaction assumption did NOT hold ({numbers}, above "
            f"{self.max_ratio:g} x the lr effect): the best learning rate moves with "
            f"{self.largest_interaction_with}; tune lr jointly with it rather than calibrating it first "
            f"(e.g. take the audit's best trial, or give the audit more trials)."
        )
        if self.largest_interaction_with == "one_minus_momentum":
            # The lr and shape stages hold momentum fixed (train.momentum), so staging itself is safe.
            advice += " The lr and shape stages keep momentum fixed, so re-calibrate lr whenever you change it."
        return advice

    def user_attrs(self) -> dict[str, Any]:
        return {
            "low_interaction_held": self.held,
            "lr_main_effect": self.lr_main_effect,
            "lr_largest_interaction": self.largest_interaction,
            "lr_largest_interaction_with": self.largest_interaction_with,
            "interaction_max_ratio": self.max_ratio,
            "verdict_n_trials": self.n_trials,
            VERDICT_LR_BASIS_ATTR: self.lr_basis,
            VERDICT_ATTR: self.message,
        }


def importance_table(
    name: str, storage: str | BaseStorage | None = None
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """fANOVA (main effects and pairs) and PED-ANOVA (main effects) of every stage of study ``name``.

    Example:
        >>> table, skipped = importance_table("quickstart", "sqlite:///tuner.db")  # doctest: +SKIP
        >>> table[table.evaluator == "fanova"].head()  # doctest: +SKIP

    Args:
        name: the study's name (its stages are the Optuna studies ``<name>/<stage>``).
        storage: an Optuna storage URL (default ``sqlite:///tuner.db``) or storage object.

    Returns:
        The table, columns :data:`COLUMNS` (``stage, evaluator, param, param_b, importance, std, basis,
        trials``), and what was not analysed as ``(stage, reason)``: every stage with no rows, and a
        basis of a stage that could not be analysed. ``fanova`` rows are fractions of the total variance
        (main effects with ``param_b == ""``, then the pure interaction of each pair); within a stage and
        basis they sum to at most 1, the rest being higher-order interaction; ``std`` is their spread
        over the trees. ``ped_anova`` rows are Optuna's PED-ANOVA importances normalised to sum to 1 over
        the stage's parameters (they are not variance fractions); ``std`` is their spread over bootstrap
        resamples.

        Each stage is analysed on up to two bases (``basis``; ``trials``: how many trials the rows rest
        on), each with at least :data:`MIN_TRIALS` trials: ``complete``, the final values of its complete
        trials with a finite value (diverged trials end pruned: not analysed); and, when the pruner
        stopped some of its trials, ``epoch N``: every trial's reported value at epoch N, the deepest
        epoch reached by at least :data:`MIN_TRIALS` trials and by a pruned one (complete trials
        included, with their value at that epoch). Both are written when both have enough trials. A rung's
        importances lean against slow starters (:data:`RUNG_CAVEAT`).

    Raises:
        UnknownStudyError: no study of that name in the storage.
    """
    rows: list[pd.DataFrame] = []
    skipped: list[tuple[str, str]] = []
    for stage, study in load_stage_studies(name, storage).items():
        trials = study.get_trials(deepcopy=False)
        bases, too_few = _bases(trials)
        # PED-ANOVA reads the best quantile as the lowest values: a score (direction "maximize") is turned.
        direction = direction_of(study)
        bases = [(basis, analysed, [loss_like(v, direction) for v in values]) for basis, analysed, values in bases]
        if not bases:
            skipped.append((stage, too_few))
            continue
        for basis, analysed, values in bases:
            found = _analyse(analysed, values)
            if isinstance(found, str):
                skipped.append((stage, found if len(bases) == 1 else f"{basis}: {found}"))
                continue
            for evaluator, table in found:
                rows.append(table.assign(stage=stage, evaluator=evaluator, basis=basis, trials=len(analysed)))
            # A parameter set in some trials only (it acts only there, e.g. decay for a schedule that
            # decays) is not in the rows above: it is analysed on the trials that have it.
            for param, having in _set_in_some(analysed).items():
                where = f"{basis}, where {param} is set"
                if len(having) < MIN_TRIALS:
                    skipped.append((stage, f"{where}: {param} is set in {len(having)} of {len(analysed)} trials (it "
                                           f"acts only there) and left out of the '{basis}' rows; at least {MIN_TRIALS} "
                                           f"are needed to analyse it on its own trials"))
                    continue
                found = _analyse([analysed[i] for i in having], [values[i] for i in having])
                if isinstance(found, str):
                    skipped.append((stage, f"{where}: {found}"))
                    continue
                for evaluator, table in found:
                    rows.append(table.assign(stage=stage, evaluator=evaluator, basis=where, trials=len(having)))
    table = pd.concat(rows, ignore_index=True)[COLUMNS] if rows else pd.DataFrame(columns=COLUMNS)
    return table, skipped


@keyword_only_since(("out", "storage"), renamed={"out_dir": "out"})
def write_importance(
    name: str, *, out: str | Path = ".", storage: str | BaseStorage | None = None
) -> tuple[Path, pd.DataFrame, list[tuple[str, str]]]:
    """Write ``importance.csv`` (see :func:`importance_table`) into the folder ``out``; return its path too.

    Example:
        >>> path, table, skipped = write_importance("quickstart", out="results", storage="sqlite:///tuner.db")  # doctest: +SKIP

    Args:
        name: the study's name (its stages are the Optuna studies ``<name>/<stage>``).
        out: the folder to write into (created); default the current one.
        storage: an Optuna storage URL (default ``sqlite:///tuner.db``) or storage object.

    The old positional order ``write_importance(name, out_dir, storage)`` still works, with a
    ``DeprecationWarning``.
    """
    table, skipped = importance_table(name, storage)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "importance.csv"
    table.to_csv(path, index=False)
    return path, table, skipped


def audit_verdict(name: str, storage: str | BaseStorage | None = None) -> AuditVerdict:
    """Judge the low-interaction assumption on the ``audit`` stage and store the verdict on it.

    Held when the largest fANOVA pairwise interaction involving ``lr`` is at most
    :data:`AUDIT_MAX_INTERACTION_RATIO` times the ``lr`` main effect. The verdict and its numbers are
    stored as user attributes of the study ``<name>/audit`` (see :meth:`AuditVerdict.user_attrs`). Diverged trials are pruned, so not analysed.

    Where stage ``shape`` carried the calibrated rate to each shape by a rule (``lr_transfer =
    "rule"``, stored on ``<name>/shape``), what staging assumes is that the rule's rate suits every
    shape, not one raw rate: each audit trial's ``lr`` is then read divided by its shape's move, so
    that an interaction the rule already accounts for (Adam's best rate falling with width) is not
    held against the staging (:attr:`AuditVerdict.lr_basis` says so).
    """
    opened, _ = open_for_reading(storage, writable=True)  # the verdict is stored on the audit study
    study_name = stage_study_name(name, "audit")
    study = optuna.load_study(study_name=study_name, storage=opened)
    complete, lr_basis = as_calibrated(_complete(study.get_trials(deepcopy=False)), stored_rule(name, opened))
    distributions = _varying_distributions(complete)
    calibrated = [name for name in CHOICE_FIELDS if name in distributions]  # train.optimizer = ["adam", "sgd"]...
    verdict = AuditVerdict(study_name, None, len(complete), None, None, None, lr_basis=lr_basis)
    if len(complete) < MIN_COMPLETE_TRIALS:
        verdict = replace(verdict, reason=f"{len(complete)} complete trials; at least {MIN_COMPLETE_TRIALS} are needed "
                          "(diverged and pruned ones do not count: raise stages.audit.trials)")
    elif "lr" not in distributions or len(distributions) < 2:
        verdict = replace(verdict, reason="lr and at least one other parameter must vary across its trials")
    elif len({t.value for t in complete}) == 1:
        verdict = replace(verdict, reason="every complete trial scored the same, so nothing explains any variance")
    else:
        try:
            shares = _fanova_rows(complete, [t.value for t in complete], distributions)  # type: ignore[misc]
        except ValueError as error:
            shares = None
            verdict = replace(verdict, reason=f"fANOVA could not analyse it: {error}")
        if shares is not None:
            lr_main = float(shares[(shares.param == "lr") & (shares.param_b == "")].importance.iloc[0])
            pairs = shares[(shares.param_b != "") & ((shares.param == "lr") | (shares.param_b == "lr"))]
            # A listed optimizer or batch size is calibrated for on its own (a rate for each): lr's interaction
            # with it is what that calibration serves, not a breach of the assumption the staging rests on.
            pairs = pairs[~pairs.param.isin(calibrated) & ~pairs.param_b.isin(calibrated)]
            lr_std = float(shares[(shares.param == "lr") & (shares.param_b == "")]["std"].iloc[0])
            top = pairs.loc[pairs.importance.idxmax()] if not pairs.empty else None
            largest = float(top.importance) if top is not None else 0.0
            largest_std = float(top["std"]) if top is not None else 0.0
            other = str(top.param_b if top.param == "lr" else top.param) if top is not None else None
            # No pair left to judge (every one with a calibrated choice): nothing breaks the assumption.
            held = judge(lr_main, lr_std, largest, largest_std) if top is not None else True
            verdict = AuditVerdict(study_name, held, len(complete), lr_main, largest, other, lr_basis=lr_basis,
                                   reason="" if held is not None else _too_close(lr_main, lr_std, largest, largest_std, other))
    partial = _set_in_some(complete)
    unjudged = [f"{param} and its interaction with lr ({param} is set in {len(having)} of {len(complete)} trials, "
                f"where it acts)" for param, having in partial.items()]  # fANOVA needs every parameter in every trial
    unjudged += [f"lr's interaction with {param} (stage lr calibrates a rate for each {param.replace('_', ' ')})"
                 for param in calibrated if verdict.lr_main_effect is not None]  # fANOVA ran
    if unjudged:
        verdict = replace(verdict, not_judged=", ".join(unjudged))
    for key, value in verdict.user_attrs().items():
        study.set_user_attr(key, value)
    return verdict


def judge(lr_main: float, lr_std: float, largest: float, largest_std: float,
          ratio: float = AUDIT_MAX_INTERACTION_RATIO) -> bool | None:
    """Whether lr's largest interaction stays within ``ratio`` x its main effect: True, False, or None where
    the two sides lie within one spread of each other (fANOVA's trees disagree about which side it falls on).

    The spread is that of the difference ``ratio * lr_main - largest``, its parts' spreads over the
    trees taken as independent: a verdict is given only where the margin is larger than that.
    """
    margin = ratio * lr_main - largest
    spread = math.hypot(ratio * lr_std, largest_std)
    if abs(margin) <= spread:
        return None
    return margin > 0


def _too_close(lr_main: float, lr_std: float, largest: float, largest_std: float, other: str | None) -> str:
    threshold = AUDIT_MAX_INTERACTION_RATIO * lr_main
    return (f"too close to call: lr's largest interaction (with {other}) {largest:.1%} ± {largest_std:.1%} against "
            f"{AUDIT_MAX_INTERACTION_RATIO:g} x its effect {lr_main:.1%} ± {lr_std:.1%} = {threshold:.1%}, within the spread "
            f"of fANOVA's trees (±): give the audit more trials (stages.audit.trials)")


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]


def _bases(trials: Sequence[FrozenTrial]) -> tuple[list[tuple[str, list[FrozenTrial], list[float]]], str]:
    """The bases with enough trials, as ``(basis, trials, values)``, and why there is none when so."""
    complete = _complete(trials)
    bases = []
    if len(complete) >= MIN_TRIALS:
        bases.append((COMPLETE_BASIS, complete, [float(t.value) for t in complete]))  # type: ignore[arg-type]
    rung, most = deepest_rung(trials, MIN_TRIALS)
    if rung is not None:
        bases.append((f"epoch {rung.epoch}", rung.trials, rung.values))
    too_few = f"{len(complete)} complete trials"
    if most is not None:
        too_few += f", and at most {most} at any epoch a pruned trial reached"
    return bases, f"{too_few}; at least {MIN_TRIALS} are needed"


def _analyse(
    trials: list[FrozenTrial], values: list[float]
) -> list[tuple[str, pd.DataFrame]] | str:
    """fANOVA and PED-ANOVA rows of one basis, or why it cannot be analysed."""
    distributions = _varying_distributions(trials)
    if not distributions:
        return "no parameter varies across its trials"
    try:
        fanova = _fanova_rows(trials, values, distributions)
    except ValueError as error:  # e.g. a forest that found nothing to split on
        return f"fANOVA could not analyse it: {error}"
    return [("fanova", fanova), ("ped_anova", _ped_anova_rows(trials, values, distributions))]


def _set_in_some(trials: Sequence[FrozenTrial]) -> dict[str, list[int]]:
    """Parameters set in some of ``trials`` but not all, each with the indices of the trials that have it."""
    names = dict.fromkeys(name for t in trials for name in t.params)
    return {name: having for name in names
            if 0 < len(having := [i for i, t in enumerate(trials) if name in t.params]) < len(trials)}


def _varying_distributions(trials: Sequence[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Parameters set in every trial and taking more than one value (fANOVA cannot use the rest)."""
    if not trials:
        return {}
    common = set.intersection(*(set(t.params) for t in trials))
    ordered = [p for p in trials[0].distributions if p in common]
    return {
        p: trials[0].distributions[p]
        for p in ordered
        if len({repr(t.params[p]) for t in trials}) > 1
    }


def _design(trials: Sequence[FrozenTrial], distributions: dict[str, BaseDistribution]) -> pd.DataFrame:
    """One column per parameter on the scale it was sampled on: log10 for log-scaled ones, so that
    fANOVA marginalises a log-uniform lr uniformly in log space (as Greff et al. did)."""
    columns: dict[str, Any] = {}
    for param, distribution in distributions.items():
        values = [t.params[param] for t in trials]
        if isinstance(distribution, CategoricalDistribution):
            columns[param] = pd.Series([str(v) for v in values], dtype=object)
        elif isinstance(distribution, (FloatDistribution, IntDistribution)) and distribution.log:
            columns[param] = np.log10(np.asarray(values, dtype=np.float64))
        else:
            columns[param] = np.asarray(values, dtype=np.float64)
    return pd.DataFrame(columns)


def _fanova_rows(
    trials: Sequence[FrozenTrial], values: Sequence[float], distributions: dict[str, BaseDistribution]
) -> pd.DataFrame:
    X = _design(trials, distributions)
    y = np.array(values, dtype=np.float64)
    if np.ptp(y) == 0.0:  # every trial scored the same: nothing explains anything
        return _zero_rows(list(distributions), interactions=True)
    return fanova_importances(X, y, seed=_SEED)


def _zero_rows(params: list[str], interactions: bool) -> pd.DataFrame:
    pairs = list(itertools.combinations(params, 2)) if interactions else []
    return pd.DataFrame({
        "param": params + [a for a, _ in pairs],
        "param_b": [""] * len(params) + [b for _, b in pairs],
        "importance": 0.0,
        "std": 0.0,
    })


def _ped_anova_rows(
    trials: Sequence[FrozenTrial], values: Sequence[float], distributions: dict[str, BaseDistribution]
) -> pd.DataFrame:
    params = list(distributions)
    full = _ped_anova_shares(trials, values, params)
    rng = np.random.default_rng(_SEED)
    draws = [rng.integers(0, len(trials), len(trials)) for _ in range(PED_ANOVA_BOOTSTRAPS)]
    resampled = [_ped_anova_shares([trials[i] for i in draw], [values[i] for i in draw], params) for draw in draws]
    spread = np.array([[shares[p] for p in params] for shares in resampled]).std(axis=0)
    return pd.DataFrame({"param": params, "param_b": "", "importance": [full[p] for p in params], "std": spread})


def _ped_anova_shares(trials: Sequence[FrozenTrial], values: Sequence[float], params: list[str]) -> dict[str, float]:
    """PED-ANOVA importances normalised to sum to 1 (all 0 when they are all 0, e.g. constant values)."""
    with optuna_silenced(), warnings.catch_warnings():  # our own sums' study: none of Optuna's lines about it
        warnings.simplefilter("ignore")  # its small-sample advice: our minimum trial count is the answer
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="minimize")
        study.add_trials([
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value)
            for t, value in zip(trials, values)
        ])
        raw = optuna.importance.PedAnovaImportanceEvaluator().evaluate(study, params=params)
    total = sum(raw.values())
    return {p: (raw.get(p, 0.0) / total if total > 0 else 0.0) for p in params}
