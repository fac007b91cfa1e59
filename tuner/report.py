"""The report of a stored study: PNG figures, Optuna's interactive figures, and an index.html.

``write_report(name, storage, out)`` reads the stage studies ``<name>/lr``, ``<name>/shape`` and
``<name>/audit`` from the storage (nothing else: every number comes from the trials and their
user attributes) and writes into ``out``:

* ``lr_sensitivity.png``: final validation error against learning rate, the "U", with the runs
  that diverged drawn apart and the chosen rate marked;
* ``lr_time.png``: what a rate costs: training time, and epochs to reach a target error;
* ``lr_curves.png``: the lr stage's learning curves, coloured by rate on a log scale;
* ``shape.png``: the shape stage's error against width, depth, schedule and decay;
* ``importance.png``: importances with error bars and pairwise interactions, when the importance
  analysis (``tuner importance NAME``) is available;
* ``history_<stage>.html`` and ``contour_shape.html``: Optuna's interactive plotly figures;
* ``index.html``: a summary (best configuration per stage, trials by state, time spent) with the
  figures and the diagnosis in words (``tuner.diagnose``) beside them.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and none is touched

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from tuner.diagnose import classify_curve, describe_lr_sweep, divergence_onset  # noqa: E402
from tuner.importance import load_stage_studies  # noqa: E402
from tuner.storage import DEFAULT_STORAGE, open_existing_storage, redact  # noqa: E402

STAGES = ("lr", "shape", "audit")
DPI = 100
DIVERGED_COLOR = "#d62728"
CHOSEN_COLOR = "#2ca02c"
# Epochs-to-target uses this multiple of the stage's best final value as the target: near enough
# to the best to mean "trained", loose enough that more than the single best run gets there.
TARGET_FACTOR = 2.0
SCHEDULE_COLORS = {
    "constant": "#1f77b4",
    "step": "#ff7f0e",
    "exponential": "#9467bd",
    "inverse_time": "#8c564b",
    "cosine": "#e377c2",
}
IMPORTANCE_HOWTO = "tuner importance NAME"
EVALUATOR_LABELS = {
    "fanova": "fANOVA: share of the variance",
    "ped_anova": "PED-ANOVA: normalised to sum to 1",
}


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote."""

    out: Path
    index: Path
    figures: dict[str, Path]  # figure key (e.g. "lr_sensitivity") -> file written
    missing: dict[str, str]  # figure key -> why it was not drawn and how to get it
    diagnosis: dict[str, list[str]] = field(default_factory=dict)  # stage -> sentences


@dataclass(frozen=True)
class _Run:
    """One finished trial, as the figures need it."""

    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None  # final objective of a complete trial
    curve: list[float]  # objective per epoch, NaN where it was not finite
    train_curve: list[float]
    seconds: float | None
    diverged: bool

    @property
    def last(self) -> float | None:
        finite = [v for v in self.curve if math.isfinite(v)]
        return finite[-1] if finite else None


@dataclass(frozen=True)
class _Stage:
    name: str
    study: optuna.Study
    trials: list[FrozenTrial]
    runs: list[_Run]  # finished (complete or pruned) trials

    @property
    def complete(self) -> list[_Run]:
        return [r for r in self.runs if r.state == TrialState.COMPLETE and r.value is not None]

    @property
    def best(self) -> _Run | None:
        return min(self.complete, key=lambda r: r.value) if self.complete else None  # type: ignore[arg-type,return-value]


def write_report(name: str, storage: str | None = None, out: str | Path | None = None) -> Report:
    """Write the figures and ``index.html`` of the stored study ``name`` into ``out``.

    Example:
        >>> report = tuner.write_report("quickstart", "sqlite:///tuner.db", "quickstart-report")  # doctest: +SKIP
        >>> report.index  # doctest: +SKIP
        PosixPath('quickstart-report/index.html')

    Args:
        name: the study name (as in the spec), not a stage's name.
        storage: an Optuna storage URL; default ``sqlite:///tuner.db``.
        out: the folder to write into (created); default ``<name>-report``.

    Raises:
        tuner.storage.StorageError: the storage does not exist (a SQLite file is not created).
        tuner.importance.UnknownStudyError: no study of that name in the storage.
    """
    url = storage or DEFAULT_STORAGE
    stages = load_stages(name, url)
    out_dir = Path(out) if out is not None else Path(f"{name}-report")
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = _objective_label(stages)

    figures: dict[str, Path] = {}
    missing: dict[str, str] = {}
    diagnosis: dict[str, list[str]] = {}

    def save(key: str, fig: Figure | None, why_not: str) -> None:
        if fig is None:
            missing[key] = why_not
            return
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        figures[key] = path

    lr, shape = stages.get("lr"), stages.get("shape")
    chosen_lr = _chosen_lr(stages)
    if lr is not None:
        no_runs = "the lr stage has no complete trial"
        save("lr_sensitivity", plot_lr_sensitivity(lr.runs, chosen_lr, objective), no_runs)
        save("lr_time", plot_lr_cost(lr.runs, chosen_lr, objective), no_runs)
        save("lr_curves", plot_lr_curves(lr.runs, chosen_lr, objective), "the lr stage has no learning curve")
        diagnosis["lr"] = _lr_diagnosis(lr, chosen_lr, objective)
    if shape is not None:
        reference = lr.best.value if lr is not None and lr.best is not None else None
        save("shape", plot_shape(shape.runs, objective, reference), "the shape stage has no complete trial")
        diagnosis["shape"] = _shape_diagnosis(shape, reference, objective)
    if "audit" in stages:
        diagnosis["audit"] = _audit_diagnosis(stages["audit"], objective)

    table, why = importance_data(name, url, out_dir)
    if table is not None and not table.empty:
        save("importance", plot_importance(table), "")
        diagnosis["importance"] = importance_sentences(table)
        if why:  # some stages had too few trials: say so beside the figure
            diagnosis["importance"].append(why[0].upper() + why[1:] + ".")
    else:
        missing["importance"] = why or "the importance analysis returned no rows"

    interactive, why_not = _write_interactive(stages, table, out_dir)
    figures.update(interactive)
    missing.update(why_not)

    index = out_dir / "index.html"
    index.write_text(_index_html(name, url, stages, chosen_lr, objective, figures, missing, diagnosis), encoding="utf-8")
    return Report(out_dir, index, figures, missing, diagnosis)


# --- reading the study ------------------------------------------------------------------------


def load_stages(name: str, url: str) -> dict[str, _Stage]:
    stages = {}
    for stage, study in load_stage_studies(name, open_existing_storage(url)).items():
        trials = study.get_trials(deepcopy=False)
        runs = [_run(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        stages[stage] = _Stage(stage, study, trials, runs)
    return stages


def _floats(values: Sequence[float | None] | None) -> list[float]:
    return [float("nan") if v is None else float(v) for v in (values or [])]


def _run(trial: FrozenTrial) -> _Run:
    attrs = trial.user_attrs
    curve = _floats(attrs.get("learning_curve"))
    if not curve and trial.intermediate_values:  # trials of another tool: Optuna's own record
        curve = [float(trial.intermediate_values[k]) for k in sorted(trial.intermediate_values)]
    complete = trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value)
    seconds = attrs.get("train_seconds")
    return _Run(
        number=trial.number,
        state=trial.state,
        params={**{k: v for k, v in attrs.items() if k == "lr" and "lr" not in trial.params}, **trial.params},
        value=float(trial.value) if complete else None,
        curve=curve,
        train_curve=_floats(attrs.get("train_loss_curve")),
        seconds=float(seconds) if seconds is not None else None,
        diverged=bool(attrs.get("diverged")),
    )


def _chosen_lr(stages: dict[str, _Stage]) -> float | None:
    """The rate handed to the shape stage (stored once at hand-off), else the lr stage's best."""
    for stage, attr in (("shape", "lr"), ("lr", "best_lr")):
        if stage in stages and stages[stage].study.user_attrs.get(attr) is not None:
            return float(stages[stage].study.user_attrs[attr])
    best = stages["lr"].best if "lr" in stages else None
    return float(best.params["lr"]) if best is not None else None


def _objective_label(stages: dict[str, _Stage]) -> str:
    """The y-axis label: what the objective is, in words a reader knows."""
    first = next(iter(stages.values())).study.user_attrs
    objective = first.get("objective", "val_error")
    if objective == "val_loss":
        return "validation loss"
    data = (first.get("settings") or {}).get("data") or {}
    task = data.get("task", "auto")
    if data.get("name") in ("diabetes", "adding") or task == "regression":
        return "validation error (RMSE)"
    if data.get("name") in ("digits", "wine", "breast_cancer", "digits_rows") or task == "classification":
        return "validation error (1 − accuracy)"
    return "validation error"


# --- figures -----------------------------------------------------------------------------------


def _lr_axis(ax: plt.Axes) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.grid(True, which="major", alpha=0.3)


def _use_log_y(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return len(finite) > 1 and max(finite) / min(finite) > 20


def _plain_log_y(ax: plt.Axes) -> None:
    """A log y axis labelled 0.02, 0.05, 0.1... rather than 2x10^-2: read at a glance."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _outlier_cap(values: Sequence[float]) -> float | None:
    """A y limit that keeps the bulk readable when a few values sit far above it; None if none do."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 4:
        return None
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    cap = max(q3 + 3.0 * (q3 - q1), 2.0 * median)
    return float(cap) if (v > cap).any() else None


def _mark_chosen(ax: plt.Axes, chosen_lr: float | None) -> None:
    if chosen_lr is not None:
        ax.axvline(chosen_lr, color=CHOSEN_COLOR, ls="--", lw=1.5, label=f"chosen lr = {chosen_lr:.3g}")


def _mark_divergence(ax: plt.Axes, onset: float | None, lr_max: float) -> None:
    if onset is not None:
        ax.axvspan(onset, lr_max * 1.5, color=DIVERGED_COLOR, alpha=0.08, lw=0,
                   label=f"runs diverge from lr ≈ {onset:.2g}")


def plot_lr_sensitivity(runs: Sequence[_Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """Final error against learning rate: the "U". Diverged runs sit in a band of their own on top."""
    complete = sorted((r for r in runs if r.value is not None), key=lambda r: r.params["lr"])
    if not complete:
        return None
    pruned = [r for r in runs if r.value is None and not r.diverged and r.last is not None]
    diverged = [r for r in runs if r.diverged]
    lrs = [r.params["lr"] for r in runs]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    x = [r.params["lr"] for r in complete]
    y = [r.value for r in complete]
    ax.plot(x, y, color="0.6", lw=1, zorder=1)
    ax.scatter(x, y, color="#1f77b4", s=28, zorder=3, label=f"trained all epochs ({len(complete)})")
    if pruned:
        ax.scatter([r.params["lr"] for r in pruned], [r.last for r in pruned], facecolor="none",
                   edgecolor="0.35", s=28, zorder=3, label=f"stopped early by the pruner ({len(pruned)}), last value")
    if _use_log_y(y):
        _plain_log_y(ax)
    if diverged:
        # Their last value says nothing about the rate's quality: they go in a band of their own at
        # the top (in axes coordinates), above a line, so they cannot be read as results.
        low, high = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(low, high * (high / low) ** 0.18)
        else:
            ax.set_ylim(low, high + 0.18 * (high - low))
        band = ax.get_xaxis_transform()
        ax.axhline(high, color="0.75", lw=0.8)
        label = ax.yaxis.get_major_formatter()
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, pos: label(v, pos) if v <= high else ""))
        ax.scatter([r.params["lr"] for r in diverged], [0.93] * len(diverged), marker="x", s=50,
                   color=DIVERGED_COLOR, transform=band, zorder=4, label=f"diverged: loss blew up ({len(diverged)})")
        ax.text(min(r.params["lr"] for r in diverged) / 1.4, 0.93, "diverged", transform=band, ha="right",
                va="center", color=DIVERGED_COLOR, fontsize=9)
    onset = divergence_onset(lrs, [r.curve for r in runs], [r.diverged for r in runs])
    _mark_divergence(ax, onset, max(lrs))
    if chosen_lr is not None:
        _mark_chosen(ax, chosen_lr)
        best = min(complete, key=lambda r: abs(math.log(r.params["lr"] / chosen_lr)))
        ax.scatter([best.params["lr"]], [best.value], marker="*", s=220, color=CHOSEN_COLOR,
                   edgecolor="black", zorder=5)
        ax.annotate(f"chosen: lr {chosen_lr:.3g}\n{objective.split(' (')[0]} {best.value:.3g}", xy=(best.params["lr"], best.value),
                    xytext=(-14, 34), textcoords="offset points", ha="right", fontsize=9, color="#1a6b1a",
                    arrowprops={"arrowstyle": "-", "color": "#1a6b1a", "lw": 0.8})
    _lr_axis(ax)
    ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
    ax.set_ylabel(f"final {objective}\n(lower is better)")
    ax.set_title("Learning-rate sensitivity (stage lr): error after the last epoch, by rate\n"
                 "too small crawls (left), too large oscillates or diverges (right)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return fig


def epochs_to_target(curve: Sequence[float], target: float) -> int | None:
    """First epoch (1-based) whose value is at or below ``target``; None if it never gets there."""
    for epoch, value in enumerate(curve, start=1):
        if math.isfinite(value) and value <= target:
            return epoch
    return None


def plot_lr_cost(runs: Sequence[_Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """The speed side: seconds per trial, and epochs until the error reaches a target, by rate."""
    complete = [r for r in runs if r.value is not None]
    if not complete:
        return None
    best = min(r.value for r in complete if r.value is not None)
    target = TARGET_FACTOR * best if best > 0 else best
    n_epochs = max(len(r.curve) for r in runs)
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained", sharex=True)

    timed = [r for r in runs if r.seconds is not None]
    ok = [r for r in timed if not r.diverged]
    ax_t.scatter([r.params["lr"] for r in ok], [r.seconds for r in ok], s=24, color="#1f77b4", label="trained")
    bad = [r for r in timed if r.diverged]
    if bad:
        ax_t.scatter([r.params["lr"] for r in bad], [r.seconds for r in bad], marker="x", s=40,
                     color=DIVERGED_COLOR, label="diverged (stopped early)")
    ax_t.set_ylim(bottom=0)
    ax_t.set_ylabel("training time per trial (s)")
    ax_t.set_title("Training time by rate", fontsize=10)

    reached = [(r, epochs_to_target(r.curve, target)) for r in runs]
    hit = [(r, e) for r, e in reached if e is not None and not r.diverged]
    ax_e.scatter([r.params["lr"] for r, _ in hit], [e for _, e in hit], s=24, color="#1f77b4",
                 label=f"reached {objective.split(' (')[0]} ≤ {target:.3g}")
    never = [r for r, e in reached if e is None and not r.diverged]
    never_y = n_epochs + 1.5
    if never:
        ax_e.scatter([r.params["lr"] for r in never], [never_y] * len(never), marker="^", s=30,
                     facecolor="none", edgecolor="0.3", label=f"not within {n_epochs} epochs")
    diverged = [r for r in runs if r.diverged]
    if diverged:
        ax_e.scatter([r.params["lr"] for r in diverged], [never_y] * len(diverged), marker="x", s=40,
                     color=DIVERGED_COLOR, label="diverged")
    ax_e.axhline(n_epochs + 0.5, color="0.7", lw=0.8)
    ax_e.set_ylim(0, n_epochs + 2.5)
    ax_e.set_yticks(sorted({1, *range(0, n_epochs + 1, max(1, n_epochs // 5))} - {0}) + [never_y])
    ax_e.set_yticklabels([str(t) for t in ax_e.get_yticks()[:-1].astype(int)] + ["never"])
    ax_e.set_ylabel("epochs to reach the target")
    ax_e.set_title(f"Epochs until {objective.split(' (')[0]} ≤ {target:.3g} ({TARGET_FACTOR:g}× the best final)",
                   fontsize=10)
    for ax in (ax_t, ax_e):
        _mark_chosen(ax, chosen_lr)
        _lr_axis(ax)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("What a learning rate costs (stage lr)", fontsize=11)
    return fig


def plot_lr_curves(runs: Sequence[_Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """Validation and training curves per epoch, coloured by rate on a log scale."""
    runs = sorted((r for r in runs if r.curve), key=lambda r: r.params["lr"])
    if not runs:
        return None
    lrs = [r.params["lr"] for r in runs]
    norm = LogNorm(vmin=min(lrs), vmax=max(lrs) if max(lrs) > min(lrs) else min(lrs) * 10)
    cmap = plt.get_cmap("viridis")
    has_train = any(any(math.isfinite(v) for v in r.train_curve) for r in runs)
    fig, axes = plt.subplots(1, 2 if has_train else 1, figsize=(11 if has_train else 6.5, 4.4),
                             layout="constrained", squeeze=False)
    panels = [(axes[0][0], "curve", objective)]
    if has_train:
        panels.append((axes[0][1], "train_curve", "training loss (log scale)"))
    chosen = min(runs, key=lambda r: abs(math.log(r.params["lr"] / chosen_lr))) if chosen_lr else None
    for ax, attr, label in panels:
        for r in runs:
            values = np.asarray(getattr(r, attr), dtype=float)
            epochs = np.arange(1, len(values) + 1)
            color = cmap(norm(r.params["lr"]))
            if r is chosen:  # a dark outline under the chosen run's line
                ax.plot(epochs, values, color="black", lw=4.0, zorder=2)
            ax.plot(epochs, values, color=color, lw=1.4, marker="o" if len(values) == 1 else None, ms=3, zorder=3)
            finite = np.flatnonzero(np.isfinite(values))
            if r.diverged and finite.size:
                ax.scatter([epochs[finite[-1]]], [values[finite[-1]]], marker="x", s=50, color=DIVERGED_COLOR, zorder=4)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(len(r.curve) for r in runs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if attr == "train_curve" or _use_log_y([v for r in runs for v in getattr(r, attr)]):
            _plain_log_y(ax)
    axes[0][0].set_title("Validation, per epoch", fontsize=10)
    if has_train:
        axes[0][-1].set_title("Training loss, per epoch", fontsize=10)
    handles = [plt.Line2D([], [], color="black", lw=4, label=f"chosen lr {chosen_lr:.3g}")] if chosen else []
    if any(r.diverged for r in runs):
        handles.append(plt.Line2D([], [], color=DIVERGED_COLOR, marker="x", ls="", label="diverged: last finite epoch"))
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), pad=0.01)
    bar.set_label("learning rate (log colour scale)")
    fig.suptitle("Learning curves of stage lr, coloured by rate: dark (small) crawls, yellow (large) "
                 "oscillates or explodes", fontsize=10)
    return fig


def plot_shape(runs: Sequence[_Run], objective: str, reference: float | None) -> Figure | None:
    """Final error against width, depth, schedule and decay, coloured by schedule."""
    complete = [r for r in runs if r.value is not None]
    if not complete:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), layout="constrained", sharey=True)
    best = min(complete, key=lambda r: r.value)  # type: ignore[arg-type,return-value]
    schedules = sorted({str(r.params.get("schedule", "constant")) for r in complete})
    rng = np.random.default_rng(0)  # jitter for depth and schedule; fixed, so reruns draw the same
    # A few very bad trials would squash the rest against the floor: cut the axis above the bulk
    # and draw those few as triangles on the top edge.
    cap = _outlier_cap([r.value for r in complete] + ([reference] if reference is not None else []))

    def points(ax: plt.Axes, x_of: Any, jitter: float = 0.0) -> None:
        for schedule in schedules:
            rs = [r for r in complete if str(r.params.get("schedule", "constant")) == schedule]
            xs = np.asarray([x_of(r) for r in rs], dtype=float) + rng.uniform(-jitter, jitter, len(rs))
            ys = np.asarray([r.value for r in rs], dtype=float)
            inside = ys <= cap if cap is not None else np.ones(len(rs), dtype=bool)
            color = SCHEDULE_COLORS.get(schedule, "0.4")
            ax.scatter(xs[inside], ys[inside], s=30, alpha=0.85, color=color, label=schedule)
            if not inside.all():
                ax.scatter(xs[~inside], [0.97] * int((~inside).sum()), marker="^", s=45, color=color,
                           transform=ax.get_xaxis_transform(), clip_on=False)
        ax.scatter([x_of(best)], [best.value], marker="*", s=260, facecolor="none", edgecolor="black", lw=1.5,
                   zorder=5, label="best")
        if reference is not None:
            ax.axhline(reference, color="0.4", ls=":", lw=1.2, label="stage lr best (small network)")
        ax.grid(True, alpha=0.3)

    ax = axes[0][0]
    if "width" in best.params:
        points(ax, lambda r: r.params["width"])
        ax.set_xscale("log")
        ax.set_xlabel("width: hidden units per layer (log scale)")
    ax.set_ylabel(f"final {objective}")
    ax.set_title("Error by width", fontsize=10)

    ax = axes[0][1]
    if "depth" in best.params:
        points(ax, lambda r: r.params["depth"], jitter=0.08)
        depths = sorted({int(r.params["depth"]) for r in complete})
        ax.set_xticks(depths)
        ax.set_xlabel("depth: hidden layers")
    ax.set_title("Error by depth", fontsize=10)

    ax = axes[1][0]
    positions = {s: i for i, s in enumerate(schedules)}
    groups = [[r.value for r in complete if str(r.params.get("schedule", "constant")) == s] for s in schedules]
    # A median bar, not a box: with a handful of trials per schedule, quartiles are noise.
    for i, group in enumerate(groups):
        ax.plot([i - 0.3, i + 0.3], [np.median(group)] * 2, color="black", lw=1.5,
                label="median" if i == 0 else None)
    points(ax, lambda r: positions[str(r.params.get("schedule", "constant"))], jitter=0.12)
    ax.set_xticks(range(len(schedules)), [f"{s}\n({len(g)})" for s, g in zip(schedules, groups)])
    ax.set_xlabel("decay schedule (trials)")
    ax.set_ylabel(f"final {objective}")
    ax.set_title("Error by schedule", fontsize=10)

    ax = axes[1][1]
    if "decay" in best.params:
        points(ax, lambda r: r.params["decay"])
        ax.set_xscale("log")
        ax.set_xlabel("decay: final lr / initial lr (log scale; ignored by 'constant')")
    ax.set_title("Error by decay", fontsize=10)
    if cap is not None:
        axes[0][0].set_ylim(top=cap * 1.06)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    n_div = sum(r.diverged for r in runs)
    title = "Stage shape: final error by network size and learning-rate schedule, at the calibrated rate"
    notes = []
    if cap is not None:
        n_out = sum(r.value > cap for r in complete)  # type: ignore[operator]
        notes.append(f"▲ on the top edge: {n_out} trial(s) with error above {cap:.3g}, off the scale")
    if n_div:
        notes.append(f"{n_div} diverged trial(s) not shown")
    if notes:
        title += "\n" + "; ".join(notes)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_importance(table: pd.DataFrame) -> Figure:
    """Horizontal bars per stage: main effects, then pairwise interactions, with std as error bars."""
    table = table.copy()
    table["param_b"] = table["param_b"].fillna("").astype(str)
    table["std"] = pd.to_numeric(table.get("std", 0.0), errors="coerce").fillna(0.0)
    stages = [s for s in STAGES if s in set(table["stage"])] + sorted(set(table["stage"]) - set(STAGES))
    evaluators = list(dict.fromkeys(table["evaluator"]))
    heights = [max(2, table[table["stage"] == s][["param", "param_b"]].drop_duplicates().shape[0]) for s in stages]
    fig, axes = plt.subplots(len(stages), 1, figsize=(8.5, 1.8 + 0.42 * sum(heights)), layout="constrained",
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    colors = plt.get_cmap("tab10")
    for ax, stage in zip(axes[:, 0], stages):
        rows = table[table["stage"] == stage]
        keys = list(dict.fromkeys(zip(rows["param"], rows["param_b"])))
        # Main effects first, largest on top; interactions below them.
        mean = rows.groupby(["param", "param_b"])["importance"].mean()
        keys.sort(key=lambda k: (k[1] != "", -mean.get(k, 0.0)))
        bar_h = 0.8 / max(1, len(evaluators))
        for j, evaluator in enumerate(evaluators):
            sub = rows[rows["evaluator"] == evaluator].set_index(["param", "param_b"])
            ys, xs, errs, hatches = [], [], [], []
            for i, key in enumerate(keys):
                if key in sub.index:
                    row = sub.loc[key]
                    row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                    ys.append(i + (j - (len(evaluators) - 1) / 2) * bar_h)
                    xs.append(float(row["importance"]))
                    errs.append(float(row["std"]))
                    hatches.append("//" if key[1] else "")
            bars = ax.barh(ys, xs, height=bar_h, xerr=errs, color=colors(j), alpha=0.85, capsize=3,
                           label=EVALUATOR_LABELS.get(evaluator, evaluator), error_kw={"lw": 1})
            for bar, hatch in zip(bars, hatches):
                bar.set_hatch(hatch)
        ax.set_yticks(range(len(keys)), [f"{a} × {b}" if b else a for a, b in keys])
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(f"stage {stage}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    axes[-1][0].set_xlabel("importance (whiskers: ± one standard deviation)\nhatched: the interaction of two "
                           "parameters, beyond their separate effects", fontsize=9)
    fig.suptitle("Which hyperparameters matter: how much of the final error's variation each explains",
                 fontsize=11)
    return fig


# --- importances -------------------------------------------------------------------------------


def importance_data(name: str, url: str, out_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """The importance table (stage, evaluator, param, param_b, importance, std), or why there is none.

    From ``tuner.importance.importance_table`` when that module exists, else from an
    ``importance.csv`` already in the output folder.
    """
    howto = f"run `{IMPORTANCE_HOWTO.replace('NAME', name)}` to compute it"
    try:
        from tuner.importance import importance_table  # type: ignore[import-not-found]
    except ImportError:
        importance_table = None
    if importance_table is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table, skipped = importance_table(name, url)
        except Exception as error:  # noqa: BLE001 -- a report without importances is still a report
            return None, f"the importance analysis failed ({type(error).__name__}: {error})"
        why = "; ".join(f"stage {stage} skipped: {reason}" for stage, reason in skipped)
        return _main_effects_blank(table), why
    csv = out_dir / "importance.csv"
    if csv.is_file():
        table = pd.read_csv(csv)
        wanted = {"stage", "evaluator", "param", "param_b", "importance", "std"}
        if wanted <= set(table.columns):
            return _main_effects_blank(table), ""
        return None, f"{csv} lacks the columns {', '.join(sorted(wanted - set(table.columns)))}; {howto}"
    return None, f"no importance analysis yet: {howto} (or put its importance.csv into {out_dir})"


def importance_sentences(table: pd.DataFrame) -> list[str]:
    """Per stage: the parameter that matters most and the largest interaction, in words."""
    sentences = []
    for stage in dict.fromkeys(table["stage"]):
        rows = table[table["stage"] == stage]
        evaluator = "fanova" if (rows["evaluator"] == "fanova").any() else str(rows["evaluator"].iloc[0])
        rows = rows[rows["evaluator"] == evaluator]
        mains = rows[rows["param_b"] == ""].sort_values("importance", ascending=False)
        pairs = rows[rows["param_b"] != ""].sort_values("importance", ascending=False)
        if len(mains) < 2:
            continue  # one parameter searched: it explains everything, nothing to say
        top = mains.iloc[0]
        sentence = f"Stage {stage} ({evaluator}): {top['param']} matters most ({top['importance']:.0%})"
        others = table[(table["stage"] == stage) & (table["evaluator"] != evaluator) & (table["param_b"] == "")]
        for other, rows_other in others.groupby("evaluator", sort=False):
            first = rows_other.sort_values("importance", ascending=False)["param"].iloc[0]
            if first != top["param"]:  # evaluators disagree: say so rather than pick one silently
                sentence += f" ({other} ranks {first} first)"
        if len(pairs):
            pair = pairs.iloc[0]
            sentence += f"; the largest interaction is {pair['param']} × {pair['param_b']} ({pair['importance']:.0%})"
        sentences.append(sentence + ".")
    return sentences


def _main_effects_blank(table: pd.DataFrame) -> pd.DataFrame:
    """``param_b`` as text, "" for a main effect (a CSV read back gives NaN there)."""
    return table.assign(param_b=table["param_b"].fillna("").astype(str))


# --- Optuna's interactive figures --------------------------------------------------------------


def _write_interactive(
    stages: dict[str, _Stage], importance: pd.DataFrame | None, out_dir: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    written: dict[str, Path] = {}
    missing: dict[str, str] = {}
    try:
        import plotly  # noqa: F401 -- Optuna's figures need it
    except ImportError:
        missing["interactive"] = "plotly is not installed: pip install plotly"
        return written, missing
    from optuna.visualization import plot_contour, plot_optimization_history

    def write(key: str, figure: Any) -> None:
        path = out_dir / f"{key}.html"
        # One copy of plotly.js beside the pages, not 3 MB inside each: works offline, stays small.
        figure.write_html(path, include_plotlyjs="directory", full_html=True)
        written[key] = path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks these "experimental" in some versions
        for stage in stages.values():
            if stage.complete:
                figure = plot_optimization_history(stage.study)
                figure.update_layout(title=f"Optimization history of {stage.study.study_name}")
                write(f"history_{stage.name}", figure)
        shape = stages.get("shape")
        if shape is not None and len(shape.complete) >= 2:
            pair = _contour_pair(shape, importance)
            figure = plot_contour(shape.study, params=list(pair))
            figure.update_layout(title=f"{shape.study.study_name}: final error over {pair[0]} and {pair[1]}")
            write("contour_shape", figure)
        elif shape is not None:
            missing["contour_shape"] = "the shape stage needs two complete trials for a contour"
    return written, missing


def _contour_pair(shape: _Stage, importance: pd.DataFrame | None) -> tuple[str, str]:
    """The two most important numeric shape parameters when known, else width and decay."""
    numeric = [p for p in ("width", "decay", "depth") if all(p in r.params for r in shape.complete)]
    if importance is not None and not importance.empty:
        mains = importance[(importance["stage"] == "shape") & (importance["param_b"] == "")]
        ranked = mains.groupby("param")["importance"].mean().sort_values(ascending=False).index
        ranked = [p for p in ranked if p in numeric]
        numeric = ranked + [p for p in numeric if p not in ranked]
    names = numeric[:2] if len(numeric) >= 2 else sorted(shape.complete[0].params)[:2]
    return names[0], names[1]


# --- diagnosis in words ------------------------------------------------------------------------


def _lr_diagnosis(stage: _Stage, chosen_lr: float | None, objective: str) -> list[str]:
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
    sentences += [sentence.replace("the validation loss", f"the {what}")
                  for sentence in describe_lr_sweep(lrs, [r.curve for r in runs], chosen_lr, [r.diverged for r in runs])]
    best = stage.best
    if best is not None:
        target = TARGET_FACTOR * best.value if best.value and best.value > 0 else None
        if target is not None:
            fastest = [(epochs_to_target(r.curve, target), r) for r in runs if not r.diverged]
            fastest = [(e, r) for e, r in fastest if e is not None]
            if fastest:
                e, r = min(fastest, key=lambda p: (p[0], p[1].params["lr"]))
                sentences.append(
                    f"The quickest run reached {objective.split(' (')[0]} ≤ {target:.3g} in {e} epoch(s), at "
                    f"learning rate {r.params['lr']:.2g}."
                )
    return sentences


def _shape_diagnosis(stage: _Stage, reference: float | None, objective: str) -> list[str]:
    best = stage.best
    if best is None:
        return ["No shape trial completed."]
    what = objective.split(" (")[0]
    setting = ", ".join(f"{k} {_fmt_value(v)}" for k, v in best.params.items() if k != "lr")
    sentences = [f"Best of {len(stage.complete)} shapes: {setting}, final {what} {best.value:.3g}."]
    if reference is not None and reference > 0:
        change = (best.value - reference) / reference
        word = "lower" if change < 0 else "higher"
        sentences.append(
            f"That is {abs(change):.0%} {word} than the small network of stage lr at the same rate ({reference:.3g})."
        )
    by_schedule: dict[str, float] = {}
    for r in stage.complete:
        s = str(r.params.get("schedule", "constant"))
        by_schedule[s] = min(by_schedule.get(s, math.inf), r.value)  # type: ignore[type-var]
    if len(by_schedule) > 1:
        ranked = sorted(by_schedule.items(), key=lambda kv: kv[1])
        sentences.append("Best per schedule: " + ", ".join(f"{s} {v:.3g}" for s, v in ranked) + ".")
    verdict = classify_curve(best.curve)
    words = {
        "decaying": "decays steadily",
        "plateau": "hardly improves (a plateau)",
        "oscillating": "oscillates",
        "exploding": "blows up",
    }[verdict]
    sentences.append(f"The best shape's validation curve {words}.")
    n_div = sum(r.diverged for r in stage.runs)
    if n_div:
        sentences.append(f"{n_div} shape trial(s) diverged at the calibrated rate: a larger network may want a smaller rate.")
    return sentences


def _audit_diagnosis(stage: _Stage, objective: str) -> list[str]:
    best = stage.best
    if best is None:
        return ["No audit trial completed."]
    setting = ", ".join(f"{k} {_fmt_value(v)}" for k, v in best.params.items())
    sentences = [f"Best of {len(stage.complete)} joint random trials: {setting}, final "
                 f"{objective.split(' (')[0]} {best.value:.3g}."]
    verdict = stage.study.user_attrs.get("verdict")  # stored by tuner.importance.audit_verdict at the end
    sentences.append(str(verdict) if verdict else
                     "No verdict on the low-interaction assumption is stored yet: `tuner study` makes it when the "
                     "audit stage ends.")
    return sentences


def _fmt_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- index.html --------------------------------------------------------------------------------

CAPTIONS = {
    "lr_sensitivity": "Each dot is one trial of stage lr: its validation error after the last epoch against its "
    "learning rate. Too small a rate has not learned yet (left), too large a rate oscillates or diverges (right); "
    "the bottom of the “U” is where to train. Red crosses on top: runs whose loss blew up. Green: the rate handed "
    "on to stage shape.",
    "lr_time": "Left: training time per trial. Right: how many epochs each rate needed to reach the target error; "
    "a large enough rate gets there in few epochs, too large a one never does.",
    "lr_curves": "Every trial of stage lr, per epoch, coloured by its learning rate (log colour scale). Flat dark lines "
    "crawl; bright lines that jump or end in a red cross oscillate or explode. Black outline: the chosen rate.",
    "shape": "Each dot is one trial of stage shape, all at the calibrated learning rate, coloured by decay schedule; "
    "the star is the best. The dotted line is the best of stage lr on the small network, for comparison.",
    "importance": "How much of the variation of the final error each hyperparameter explains on its own, and (hatched) "
    "pairs of them together beyond their separate effects. Error bars: ± one standard deviation.",
}
WIDE_FIGURES = ("lr_curves", "lr_time", "shape")  # words below them, not beside
INTERACTIVE_TITLES = {
    "history": "optimization history of stage {stage} (best so far by trial)",
    "contour_shape": "contour of the final error over two shape parameters",
}


def _state_counts(stage: _Stage) -> str:
    counts = {s: sum(t.state == s for t in stage.trials) for s in TrialState}
    n_div = sum(r.diverged for r in stage.runs)
    parts = [f"{counts[TrialState.COMPLETE]} complete"]
    parts.append(f"{counts[TrialState.PRUNED]} pruned" + (f" ({n_div} diverged)" if n_div else ""))
    for state in (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING):
        if counts[state]:
            parts.append(f"{counts[state]} {state.name.lower()}")
    budget = stage.study.user_attrs.get("budget")
    return ", ".join(parts) + (f" (budget {budget})" if budget is not None else "")


def _wall_seconds(stage: _Stage) -> float:
    starts = [t.datetime_start for t in stage.trials if t.datetime_start]
    ends = [t.datetime_complete for t in stage.trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {secs:02d} s"


def _summary_rows(stages: dict[str, _Stage], chosen_lr: float | None) -> list[list[str]]:
    rows = []
    for stage in stages.values():
        best = stage.best
        if best is None:
            setting, value = "–", "–"
        elif stage.name == "lr":
            setting, value = f"lr {chosen_lr:.3g}" if chosen_lr else f"lr {best.params['lr']:.3g}", f"{best.value:.4g}"
        else:
            fixed = stage.study.user_attrs.get("lr")
            params = ({"lr": fixed} if fixed is not None else {}) | best.params
            setting = ", ".join(f"{k} {_fmt_value(v)}" for k, v in params.items())
            value = f"{best.value:.4g}"
        train = sum(r.seconds or 0.0 for r in stage.runs)
        rows.append([stage.study.study_name, setting, value, _state_counts(stage),
                     _duration(_wall_seconds(stage)), _duration(train)])
    return rows


def _index_html(
    name: str,
    url: str,
    stages: dict[str, _Stage],
    chosen_lr: float | None,
    objective: str,
    figures: dict[str, Path],
    missing: dict[str, str],
    diagnosis: dict[str, list[str]],
) -> str:
    e = html.escape
    settings = next(iter(stages.values())).study.user_attrs.get("settings") or {}
    data, model, train = settings.get("data", {}), settings.get("model", {}), settings.get("train", {})
    about = []
    if data:
        about.append(f"data <b>{e(str(data.get('name')))}</b>")
    if model:
        about.append(f"model <b>{e(str(model.get('family')))}</b> (stage lr: width {model.get('width')}, depth {model.get('depth')})")
    if train:
        about.append(f"optimizer <b>{e(str(train.get('optimizer')))}</b>, batch {train.get('batch_size')}, "
                     f"{train.get('epochs')} epochs; objective <b>{e(objective)}</b>, lower is better")
    parts = [f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuner report: {e(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.fig {{ display: flex; gap: 1.5em; align-items: flex-start; margin: 1.5em 0; flex-wrap: wrap; }}
.fig img {{ max-width: 760px; width: 100%; border: 1px solid #eee; }}
.fig .words {{ flex: 1; min-width: 260px; }}
.fig.wide {{ flex-direction: column; }}
.fig.wide img {{ max-width: 100%; width: auto; }}
.caption {{ color: #555; font-size: .92em; }}
.missing {{ color: #8a5a00; background: #fff8e5; padding: .6em; border-left: 4px solid #e0a800; }}
code {{ background: #f3f3f3; padding: 0 .25em; }}
</style></head><body>
<h1>Study <code>{e(name)}</code></h1>
<p>Storage <code>{e(redact(url))}</code>; report made {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.<br>
{'; '.join(about)}.</p>
<h2>Summary</h2>
<table><tr><th>stage</th><th>best configuration</th><th>best {e(objective)}</th><th>trials</th>
<th>time spent (first start to last end)</th><th>training time (sum over trials)</th></tr>"""]
    for row in _summary_rows(stages, chosen_lr):
        parts.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</table>")

    def figure_block(key: str, stage: str | None) -> None:
        if key in figures:
            words = "".join(f"<li>{e(s)}</li>" for s in diagnosis.get(stage, [])) if stage else ""
            side = f"<h3>Diagnosis</h3><ul>{words}</ul>" if words else ""
            wide = " wide" if key in WIDE_FIGURES else ""
            parts.append(
                f'<div class="fig{wide}"><a href="{e(figures[key].name)}"><img src="{e(figures[key].name)}" '
                f'alt="{e(key)}"></a><div class="words"><p class="caption">{e(CAPTIONS[key])}</p>{side}</div></div>'
            )
        elif key in missing:
            parts.append(f'<p class="missing">{e(key)}: not drawn: {e(missing[key])}.</p>')

    if "lr" in stages:
        parts.append("<h2>Stage lr: calibrating the learning rate on a small network</h2>")
        figure_block("lr_sensitivity", "lr")
        figure_block("lr_curves", None)
        figure_block("lr_time", None)
    if "shape" in stages:
        parts.append("<h2>Stage shape: network size and decay schedule at that rate</h2>")
        figure_block("shape", "shape")
    if "audit" in stages:
        parts.append("<h2>Stage audit: everything sampled jointly at random</h2><ul>"
                     + "".join(f"<li>{e(s)}</li>" for s in diagnosis.get("audit", [])) + "</ul>")
    parts.append("<h2>Importances</h2>")
    figure_block("importance", "importance")
    parts.append("<h2>Interactive figures (Optuna)</h2><ul>")
    for key, path in figures.items():
        if path.suffix == ".html":
            if key.startswith("history_"):
                title = INTERACTIVE_TITLES["history"].format(stage=key.removeprefix("history_"))
            else:
                title = INTERACTIVE_TITLES.get(key, key)
            parts.append(f'<li><a href="{e(path.name)}">{e(title)}</a></li>')
    for key in ("interactive", "contour_shape"):
        if key in missing:
            parts.append(f"<li>{e(key)}: not drawn: {e(missing[key])}.</li>")
    parts.append("</ul><p class=\"caption\">Browse every trial live with <code>tuner dashboard --storage "
                 f"{e(redact(url))}</code>.</p></body></html>\n")
    return "\n".join(parts)
