"""The report's PNG figures, drawn with matplotlib's object API (no pyplot, no global backend).

Each ``plot_*`` function takes runs (:mod:`tuner.report.runs`) and returns a
:class:`matplotlib.figure.Figure` with an Agg canvas, or None when there is nothing to draw;
:func:`save` writes one to a PNG file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import Formatter, FuncFormatter, LogLocator, MaxNLocator

from tuner.report.runs import STAGES, Run, TrialCosts, epochs_to_target, error_target, trial_costs
from tuner.report.words import divergence_onset

DPI = 100
DIVERGED_COLOR = "#d62728"
CHOSEN_COLOR = "#2ca02c"
SCHEDULE_COLORS = {
    "constant": "#1f77b4",
    "step": "#ff7f0e",
    "exponential": "#9467bd",
    "inverse_time": "#8c564b",
    "cosine": "#e377c2",
}
EVALUATOR_LABELS = {
    "fanova": "fANOVA: share of the variance",
    "ped_anova": "PED-ANOVA: normalised to sum to 1",
}


def new_figure(**kwargs: Any) -> Figure:
    """A figure on its own Agg canvas: drawn and saved without pyplot or a display."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _lr_axis(ax: Axes) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.grid(True, which="major", alpha=0.3)


def _use_log_y(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return len(finite) > 1 and max(finite) / min(finite) > 20


def _plain_log_y(ax: Axes) -> None:
    """A log y axis labelled 0.02, 0.05, 0.1... rather than 2x10^-2: read at a glance."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


class _LabelsUpTo(Formatter):
    """The axis's own tick labels, blank above ``top`` (where a band of diverged runs sits).

    It hands the tick positions on: a ``ScalarFormatter`` chooses its format from them, and called
    without them (as a plain function) it labels nothing.
    """

    def __init__(self, inner: Formatter, top: float) -> None:
        self.inner, self.top = inner, top

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        labels = self.inner.format_ticks(values)
        return [label if v <= self.top else "" for v, label in zip(values, labels)]

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.inner(x, pos) if x <= self.top else ""

    def get_offset(self) -> str:
        return self.inner.get_offset()


def _outlier_cap(values: Sequence[float]) -> float | None:
    """A y limit that keeps the bulk readable when a few values sit far above it; None if none do."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 4:
        return None
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    cap = max(q3 + 3.0 * (q3 - q1), 2.0 * median)
    return float(cap) if (v > cap).any() else None


def _mark_chosen(ax: Axes, chosen_lr: float | None) -> None:
    if chosen_lr is not None:
        ax.axvline(chosen_lr, color=CHOSEN_COLOR, ls="--", lw=1.5, label=f"chosen lr = {chosen_lr:.3g}")


def _mark_divergence(ax: Axes, onset: float | None, lr_max: float) -> None:
    if onset is not None:
        ax.axvspan(onset, lr_max * 1.5, color=DIVERGED_COLOR, alpha=0.08, lw=0,
                   label=f"runs diverge from lr ≈ {onset:.2g}")


def plot_lr_sensitivity(runs: Sequence[Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """Final error against learning rate: the "U". Diverged runs sit in a band of their own on top."""
    complete = sorted((r for r in runs if r.value is not None), key=lambda r: r.params["lr"])
    if not complete:
        return None
    pruned = [r for r in runs if r.value is None and not r.diverged and r.last is not None]
    diverged = [r for r in runs if r.diverged]
    lrs = [r.params["lr"] for r in runs]
    fig = new_figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
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
        ax.yaxis.set_major_formatter(_LabelsUpTo(ax.yaxis.get_major_formatter(), high))
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


def plot_lr_cost(runs: Sequence[Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """The speed side: what each trial cost, and epochs until the error reaches the target, by rate."""
    if not any(r.value is not None for r in runs):
        return None
    what = objective.split(" (")[0]
    n_epochs = max(len(r.curve) for r in runs)
    fig = new_figure(figsize=(10, 4.2))
    ax_t, ax_e = fig.subplots(1, 2, sharex=True)

    costs = trial_costs(runs)
    if costs is not None:
        for diverged in (False, True):
            pts = [(r.params["lr"], y) for r, y in costs.points if r.diverged == diverged]
            if pts:
                style = ({"marker": "x", "s": 40, "color": DIVERGED_COLOR, "label": "diverged (stopped early)"}
                         if diverged else {"s": 24, "color": "#1f77b4", "label": "trained"})
                ax_t.scatter(*zip(*pts), clip_on=False, zorder=3, **style)
        top = max(y for _, y in costs.points)
        ax_t.set_ylim(0, top * 1.12 if top > 0 else 1.0)  # room above the highest dot: none is cut
        ax_t.set_ylabel(cost_label(costs))
        ax_t.set_title("Training time by rate\n" if costs.unit == "seconds" else
                       "Epochs trained by rate\n(batched trials stored without a time of their own)", fontsize=10)
        if costs.left_out:
            ax_t.text(0.02, 0.02, f"{costs.left_out} batched trial(s) left out: stored with their batch's time "
                      "split evenly", transform=ax_t.transAxes, fontsize=8, color="0.35")
    else:
        ax_t.text(0.5, 0.5, "no training time stored", transform=ax_t.transAxes, ha="center")

    target = error_target(runs)
    never_y = n_epochs + 1.5
    if target is not None:
        reached = [(r, epochs_to_target(r.curve, target.value)) for r in runs if not r.diverged]
        hit = [(r, e) for r, e in reached if e is not None]
        ax_e.scatter([r.params["lr"] for r, _ in hit], [e for _, e in hit], s=24, color="#1f77b4",
                     clip_on=False, zorder=3, label=f"reached {what} ≤ {target.value:.3g}")
        never = [r for r, e in reached if e is None]
        if never:
            ax_e.scatter([r.params["lr"] for r in never], [never_y] * len(never), marker="^", s=30,
                         facecolor="none", edgecolor="0.3", clip_on=False, label=f"not within {n_epochs} epochs")
        ax_e.set_title(f"Epochs until {what} ≤ {target.value:.3g}\n({target.share:.0%} of the way from "
                       f"{target.start:.3g}, untrained, to the best {target.best:.3g})", fontsize=10)
    else:
        ax_e.text(0.5, 0.5, "no target: no rate ended below the error\nof the smallest rate after one epoch",
                  transform=ax_e.transAxes, ha="center", va="center", fontsize=9)
        ax_e.set_title("Epochs to reach a target error", fontsize=10)
    diverged = [r for r in runs if r.diverged]
    if diverged:
        ax_e.scatter([r.params["lr"] for r in diverged], [never_y] * len(diverged), marker="x", s=40,
                     color=DIVERGED_COLOR, clip_on=False, label="diverged")
    ax_e.axhline(n_epochs + 0.5, color="0.7", lw=0.8)
    ax_e.set_ylim(0, n_epochs + 2.5)
    ticks = sorted({1, *range(0, n_epochs + 1, max(1, n_epochs // 5))} - {0})
    ax_e.set_yticks([*ticks, never_y], [*map(str, ticks), "never"])
    ax_e.set_ylabel("epochs to reach the target")
    for ax in (ax_t, ax_e):
        _mark_chosen(ax, chosen_lr)
        _lr_axis(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("What a learning rate costs (stage lr)", fontsize=11)
    return fig


def cost_label(costs: TrialCosts) -> str:
    """The y-axis label of the cost panel: what its numbers are."""
    if costs.unit == "epochs":
        return "epochs trained per trial"
    return "training time per trial (s)" + ("\nbatched: its share of each epoch" if costs.shares else "")


def plot_lr_curves(runs: Sequence[Run], chosen_lr: float | None, objective: str) -> Figure | None:
    """Validation and training curves per epoch, coloured by rate on a log scale."""
    runs = sorted((r for r in runs if r.curve), key=lambda r: r.params["lr"])
    if not runs:
        return None
    lrs = [r.params["lr"] for r in runs]
    norm = LogNorm(vmin=min(lrs), vmax=max(lrs) if max(lrs) > min(lrs) else min(lrs) * 10)
    cmap = matplotlib.colormaps["viridis"]
    has_train = any(any(math.isfinite(v) for v in r.train_curve) for r in runs)
    fig = new_figure(figsize=(11 if has_train else 6.5, 4.4))
    axes = fig.subplots(1, 2 if has_train else 1, squeeze=False)
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
    handles = [Line2D([], [], color="black", lw=4, label=f"chosen lr {chosen_lr:.3g}")] if chosen else []
    if any(r.diverged for r in runs):
        handles.append(Line2D([], [], color=DIVERGED_COLOR, marker="x", ls="", label="diverged: last finite epoch"))
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), pad=0.01)
    bar.set_label("learning rate (log colour scale)")
    fig.suptitle("Learning curves of stage lr, coloured by rate: dark (small) crawls, yellow (large) "
                 "oscillates or explodes", fontsize=10)
    return fig


def plot_shape(runs: Sequence[Run], objective: str, reference: float | None) -> Figure | None:
    """Final error against width, depth, schedule and decay, coloured by schedule."""
    complete = [r for r in runs if r.value is not None]
    if not complete:
        return None
    fig = new_figure(figsize=(10, 7.5))
    axes = fig.subplots(2, 2, sharey=True)
    best = min(complete, key=lambda r: r.value)  # type: ignore[arg-type,return-value]
    schedules = sorted({str(r.params.get("schedule", "constant")) for r in complete})
    rng = np.random.default_rng(0)  # jitter for depth and schedule; fixed, so reruns draw the same
    # A few very bad trials would squash the rest against the floor: cut the axis above the bulk
    # and draw those few as triangles on the top edge.
    cap = _outlier_cap([r.value for r in complete] + ([reference] if reference is not None else []))

    def points(ax: Axes, x_of: Any, jitter: float = 0.0) -> None:
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
    fig = new_figure(figsize=(8.5, 1.8 + 0.42 * sum(heights)))
    axes = fig.subplots(len(stages), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    colors = matplotlib.colormaps["tab10"]
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
