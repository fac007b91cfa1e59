"""How importance.csv's bases read: the rows a person sees first, and each basis in words.

A basis is what a stage's rows rest on: its complete trials (``complete``), the trials that
reached an epoch (``epoch N``, pruned ones included), or either restricted to the trials where a
parameter acts (``complete, where decay is set``). Split from :mod:`tuner.analysis.importance`,
which imports these names as before.
"""

from __future__ import annotations

import pandas as pd

COMPLETE_BASIS = "complete"
# Said wherever importances at an epoch are shown (Wu et al. 2018, short-horizon bias).
RUNG_CAVEAT = ("importances at an epoch before the last lean against slow starters: schedules that decay "
               "look worse early than they end (short-horizon bias, Wu et al. 2018)")


def headline_rows(table: pd.DataFrame, n_pairs: int = 3) -> pd.DataFrame:
    """Per stage, basis and evaluator: the main effects, then the ``n_pairs`` largest interactions."""
    parts = []
    keys = ["stage", "basis", "evaluator"] if "basis" in table else ["stage", "evaluator"]
    for _, rows in table.groupby(keys, sort=False):
        parts.append(rows[rows.param_b == ""].sort_values("importance", ascending=False))
        parts.append(rows[rows.param_b != ""].sort_values("importance", ascending=False).head(n_pairs))
    return pd.concat(parts, ignore_index=True) if parts else table


def describe_basis(basis: str, n: int | None) -> str:
    """A basis in words: ``12 complete trials``, ``at epoch 3, 16 trials``, ``12 complete trials where decay is set``."""
    head, _, where = basis.partition(", where ")
    where = f" where {where}" if where else ""
    if head == COMPLETE_BASIS:
        return f"{n} complete trials{where}" if n is not None else f"complete trials{where}"
    return f"at {head}, {n} trials{where}" if n is not None else f"at {head}{', trials' + where if where else ''}"


def basis_notes(table: pd.DataFrame) -> list[str]:
    """One line per stage analysed at an epoch: on how many trials, and why to read it with care.

    Example:
        >>> basis_notes(table)  # doctest: +SKIP
        ['stage shape at epoch 9: 14 trials reached it, pruned ones included (too few complete trials alone); ...']
    """
    if "basis" not in table or table.empty:
        return []
    lines = []
    for (stage, basis), rows in table.groupby(["stage", "basis"], sort=False):
        if ", where " in basis:  # a parameter set only where it acts, analysed on those trials
            param = basis.split(", where ")[1].removesuffix(" is set")
            lines.append(f"stage {stage}, {basis}: {int(rows['trials'].iloc[0])} trials; {param} acts only in some "
                         f"trials (it is left out of the rows of all trials), so it is analysed on those alone")
            continue
        if basis == COMPLETE_BASIS:
            continue
        alone = ((table["stage"] == stage) & (table["basis"] == COMPLETE_BASIS)).any()
        complete = "its complete trials are also analysed alone" if alone else "too few complete trials alone"
        lines.append(f"stage {stage} at {basis}: {int(rows['trials'].iloc[0])} trials reached it, pruned ones "
                     f"included ({complete}); {RUNG_CAVEAT}")
    return lines
