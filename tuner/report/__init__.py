"""The report of a stored study: PNG figures, Optuna's interactive figures, and an index.html.

``write_report(name, storage=..., out=...)`` reads the stage studies ``<name>/lr``, ``<name>/shape`` and
``<name>/audit`` from the storage (nothing else: every number comes from the trials and their
user attributes) and writes into ``out``:

* ``lr_sensitivity.png``: final validation error against learning rate, the "U", with the runs
  that diverged drawn apart and the chosen rate marked;
* ``lr_time.png``: what a rate costs: training time, and epochs to reach a target error;
* ``lr_curves.png``: the lr stage's learning curves, coloured by rate on a log scale;
* ``shape.png``: the shape stage's error against width, depth, schedule and decay;
* ``importance.png``: importances with error bars and pairwise interactions;
* ``history_<stage>.html`` and ``contour_shape.html``: Optuna's interactive plotly figures;
* ``index.html``: a summary (best configuration per stage, trials by state, time spent) with the
  figures and the diagnosis in words (:mod:`tuner.report.words`) beside them.

The pieces: :mod:`~tuner.report.runs` (stored trials as plain data), :mod:`~tuner.report.figures`
and :mod:`~tuner.report.lr_figures` (matplotlib), :mod:`~tuner.report.interactive` (plotly), :mod:`~tuner.report.words` and
:mod:`~tuner.report.html`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from tuner.deprecation import keyword_only_since
from tuner.folders import default_folder
from tuner.report.figures import plot_importance, plot_shape, save
from tuner.report.html import index_html
from tuner.report.interactive import write_interactive
from tuner.report.lr_figures import plot_lr_cost, plot_lr_curves, plot_lr_sensitivity
from tuner.report.runs import (
    best_lr_stage, chosen_lr, epochs_to_target, file_key, importance_data, load_stages, lr_stage_runs, objective_label,
    objective_word, stage_rate,
)
from tuner.study.results import HANDOFF_ATTR, check_made_by_tuner
from tuner.report.words import audit_diagnosis, importance_sentences, lr_diagnosis, shape_diagnosis
from tuner.storage import resolve_url

__all__ = [
    "Report",
    "epochs_to_target",
    "importance_data",
    "importance_sentences",
    "load_stages",
    "plot_importance",
    "plot_lr_cost",
    "plot_lr_curves",
    "plot_lr_sensitivity",
    "plot_shape",
    "write_report",
]


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote."""

    out: Path
    index: Path
    figures: dict[str, Path]  # figure key (e.g. "lr_sensitivity") -> file written
    missing: dict[str, str]  # figure key -> why it was not drawn and how to get it
    diagnosis: dict[str, list[str]] = field(default_factory=dict)  # stage -> sentences


@keyword_only_since(("storage", "out"))
def write_report(name: str, *, storage: str | None = None, out: str | Path | None = None) -> Report:
    """Write the figures and ``index.html`` of the stored study ``name`` into ``out``.

    Example:
        >>> report = tuner.write_report("quickstart", storage="sqlite:///tuner.db", out="quickstart-report")  # doctest: +SKIP
        >>> report.index  # doctest: +SKIP
        PosixPath('quickstart-report/index.html')

    Args:
        name: the study name (as in the spec), not a stage's name.
        storage: an Optuna storage URL; default ``sqlite:///tuner.db``.
        out: the folder to write into (created); default ``<name>-report`` in the working folder
            (made a safe folder name: see :func:`tuner.folders.default_folder`).

    The old positional order ``write_report(name, storage, out)`` still works, with a
    ``DeprecationWarning``.

    Raises:
        tuner.storage.StorageError: the storage does not exist (a SQLite file is not created).
        tuner.analysis.importance.UnknownStudyError: no study of that name in the storage.
        tuner.study.results.NotMadeByTunerError: a stage holds trials that ``tuner study`` did not run
            (nothing written).
    """
    url = resolve_url(storage) if storage is None or isinstance(storage, str) else storage
    stages = load_stages(name, url)
    # Before the folder: the figures read what tuner stores, and another tool's trials lack it.
    check_made_by_tuner(name, {stage: runs.study for stage, runs in stages.items()})
    out_dir = Path(out) if out is not None else Path(default_folder(name, "-report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = objective_label(stages)

    figures: dict[str, Path] = {}
    missing: dict[str, str] = {}
    diagnosis: dict[str, list[str]] = {}

    def draw(key: str, fig: Figure | None, why_not: str) -> None:
        if fig is None:
            missing[key] = why_not
        else:
            figures[key] = save(fig, out_dir / f"{key}.png")

    lr, shape = best_lr_stage(stages), stages.get("shape")
    rate = chosen_lr(stages)
    for each in lr_stage_runs(stages):  # one stage lr, or one per listed choice (lr[optimizer=adam]...), each its own U
        own = stage_rate(each) if each.name != "lr" else rate
        suffix = "" if each.name == "lr" else "_" + file_key(each.name)
        no_runs = f"stage {each.name} has no complete trial"
        handoff = each.study.user_attrs.get(HANDOFF_ATTR)
        draw(f"lr_sensitivity{suffix}", plot_lr_sensitivity(each.runs, own, objective, handoff, each.maximizes), no_runs)
        draw(f"lr_time{suffix}", plot_lr_cost(each.runs, own, objective, each.maximizes), no_runs)
        draw(f"lr_curves{suffix}", plot_lr_curves(each.runs, own, objective), f"stage {each.name} has no learning curve")
        diagnosis[each.name] = lr_diagnosis(each, own, objective)
    if shape is not None:
        reference = lr.best.value if lr is not None and lr.best is not None else None
        draw("shape", plot_shape(shape.runs, objective, reference, shape.maximizes), "the shape stage has no complete trial")
        diagnosis["shape"] = shape_diagnosis(shape, reference, objective)
    if "audit" in stages:
        diagnosis["audit"] = audit_diagnosis(stages["audit"], objective)

    table, why = importance_data(name, url)
    if table is not None and not table.empty:
        # No panel when every stage analysed searched one parameter; say which stages were not analysed and why.
        word = objective_word(objective, next(iter(stages.values())).maximizes)
        draw("importance", plot_importance(table, word), f"{why}; the stages analysed searched one parameter each" if why
             else "every stage analysed searched one parameter: nothing to compare")
        diagnosis["importance"] = importance_sentences(table)
        if why:  # some stages had too few trials: say so beside the figure
            diagnosis["importance"].append(why[0].upper() + why[1:] + ".")
    else:
        missing["importance"] = why or "the importance analysis returned no rows"

    interactive, why_not = write_interactive(stages, table, out_dir)
    figures.update(interactive)
    missing.update(why_not)

    index = out_dir / "index.html"
    index.write_text(index_html(name, url, stages, rate, objective, figures, missing, diagnosis), encoding="utf-8")
    return Report(out_dir, index, figures, missing, diagnosis)
