"""The report's PNG figures, drawn with matplotlib's object API (no pyplot, no global backend).

Each ``plot_*`` function takes runs (:mod:`tuner.report.runs`) and returns a
:class:`matplotlib.figure.Figure` with an Agg canvas, or None when there is nothing to draw;
:func:`save` writes one to a PNG file. Here: the shared style and the shape and importance
figures; the lr stage's three figures are in :mod:`tuner.report.lr_figures`.
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
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from tuner.report.runs import STAGES, Run, axis_label, final_label, objective_word

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


def use_log_y(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return len(finite) > 1 and max(finite) / min(finite) > 20


class _SpanAwareLogLocator(LogLocator):
    """Ticks at 1, 2, 5 x 10^k over up to four decades, at every decade or so beyond."""

    def tick_values(self, vmin: float, vmax: float) -> Any:
        low, high = sorted((vmin, vmax))
        few = low > 0 and math.log10(high / low) <= 4
        self.set_params(subs=(1.0, 2.0, 5.0) if few else (1.0,), numticks=12)
        return super().tick_values(vmin, vmax)


def plain_log_y(ax: Axes) -> None:
    """A log y axis labelled 0.02, 0.05, 0.1... rather than 2x10^-2: read at a glance."""
    ax.set_yscale("log")
    # 1-2-5 steps over a few decades; over many, LogLocator with subs finds no tick at all: decades.
    ax.yaxis.set_major_locator(_SpanAwareLogLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def plain_log_x(ax: Axes) -> None:
    """Log x labels 5, 10, 20, 50 rather than 2x10^1."""
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _outlier_cap(values: Sequence[float]) -> float | None:
    """A y limit that keeps the bulk readable when a few values sit far above it; None if none do."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 4:
        return None
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    cap = max(q3 + 3.0 * (q3 - q1), 2.0 * median)
    return float(cap) if (v > cap).any() else None


def plot_shape(runs: Sequence[Run], objective: str, reference: float | None, maximize: bool = False) -> Figure | None:
    """Final error against width, depth, schedule and decay, coloured by schedule (a score where ``maximize``)."""
    complete = [r for r in runs if r.value is not None]
    if not complete:
        return None
    word = objective_word(objective, maximize)  # score, loss or error, as the objective is
    fig = new_figure(figsize=(10, 7.5))
    axes = fig.subplots(2, 2, sharey=True)
    best = (max if maximize else min)(complete, key=lambda r: r.value)  # type: ignore[arg-type,return-value]
    schedules = sorted({str(r.params.get("schedule", "constant")) for r in complete})
    rng = np.random.default_rng(0)  # jitter for depth and schedule; fixed, so reruns draw the same
    # A few very bad trials would squash the rest against the floor: cut the axis above the bulk
    # and draw those few as triangles on the top edge.
    # A score's bad trials sit at the bottom, its best at the top: no cap from above.
    cap = None if maximize else _outlier_cap([r.value for r in complete] + ([reference] if reference is not None else []))

    def schedule_of(run: Run) -> str:
        return str(run.params.get("schedule", "constant"))

    def points(ax: Axes, x_of: Any, jitter: float = 0.0) -> None:
        for schedule in schedules:
            rs = [r for r in complete if schedule_of(r) == schedule]
            xs = np.asarray([x_of(r) for r in rs], dtype=float) + rng.uniform(-jitter, jitter, len(rs))
            ys = np.asarray([r.value for r in rs], dtype=float)
            inside = ys <= cap if cap is not None else np.ones(len(rs), dtype=bool)
            color = SCHEDULE_COLORS.get(schedule, "0.4")
            ax.scatter(xs[inside], ys[inside], s=30, alpha=0.85, color=color, label=schedule)
            if not inside.all():
                ax.scatter(xs[~inside], [0.97] * int((~inside).sum()), marker="^", s=45, color=color,
                           transform=ax.get_xaxis_transform(), clip_on=False)
                ax.update_datalim([(x, cap) for x in xs[~inside]], updatey=False)  # the x axis must reach them
        ax.scatter([x_of(best)], [best.value], marker="*", s=260, facecolor="none", edgecolor="black", lw=1.5,
                   zorder=5, label="best")
        if reference is not None:
            ax.axhline(reference, color="0.4", ls=":", lw=1.2, label="stage lr best (small network)")
        ax.grid(True, alpha=0.3)

    ax = axes[0][0]
    if "width" in best.params:
        points(ax, lambda r: r.params["width"])
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.set_xlabel("width: hidden units per layer (log scale)")
    ax.set_ylabel(axis_label(final_label(objective)))
    ax.set_title(f"{word.capitalize()} by width", fontsize=10)

    ax = axes[0][1]
    if "depth" in best.params:
        points(ax, lambda r: r.params["depth"], jitter=0.08)
        depths = sorted({int(r.params["depth"]) for r in complete})
        ax.set_xticks(depths)
        ax.set_xlabel("depth: hidden layers")
    ax.set_title(f"{word.capitalize()} by depth", fontsize=10)

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
    ax.set_ylabel(axis_label(final_label(objective)))
    ax.set_title(f"{word.capitalize()} by schedule", fontsize=10)

    ax = axes[1][1]
    if any("decay" in r.params for r in complete):  # sampled only where the schedule decays (conditional)
        # 'constant' ignores decay: its trials get a column of their own right of the decay axis.
        decays = [r.params["decay"] for r in complete if schedule_of(r) != "constant"] or [1.0]
        apart = max(decays) * 4.0
        points(ax, lambda r: apart if schedule_of(r) == "constant" else r.params["decay"])
        ax.set_xscale("log")
        low, high = math.floor(math.log10(min(decays))), math.ceil(math.log10(max(decays)))
        subs = (1.0,) if high - low > 2 else (1.0, 2.0, 5.0)
        ticks = [m * 10.0**e for e in range(low, high + 1) for m in subs if min(decays) / 1.5 <= m * 10.0**e <= max(decays) * 1.5]
        labels = [f"{t:g}" for t in ticks]
        if any(schedule_of(r) == "constant" for r in complete):
            ax.axvline(max(decays) * 2.0, color="0.6", lw=0.8)
            ax.set_xlim(right=apart * 1.8)
            ticks, labels = [*ticks, apart], [*labels, "constant"]
        ax.set_xticks(ticks, labels)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("decay: final lr / initial lr (log scale)")
    else:  # decay is sampled only where the schedule decays: say why the panel is empty
        ax.text(0.5, 0.5, "no complete trial with a\nschedule that decays", transform=ax.transAxes, ha="center",
                va="center", color="0.35", fontsize=9)
    ax.set_title(f"{word.capitalize()} by decay", fontsize=10)
    shown = [r.value for r in complete if cap is None or r.value <= cap]  # type: ignore[operator]
    if use_log_y(shown):  # errors over orders of magnitude (a loss near 0): the best would sit on the floor
        plain_log_y(axes[0][0])
    if cap is not None:
        axes[0][0].set_ylim(top=cap * (1.3 if axes[0][0].get_yscale() == "log" else 1.06))
    legend: dict[str, Any] = {}
    for ax in axes.flat:  # every panel's entries once: the median bars live in the schedule panel
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend), fontsize=8,
               frameon=False)
    n_div = sum(r.diverged for r in runs)
    scaled = any("lr_scale" in r.params for r in runs)
    rate = "the rate calibrated for its optimizer" if any("optimizer" in r.params or "batch_size" in r.params
                                                          for r in runs) else "the calibrated rate"
    if any(r.move != 1.0 for r in runs):  # lr_transfer = "rule": each shape started from the rate moved for it
        rate += " moved for its shape"
    title = (f"Stage shape: final {word} by network size and learning-rate schedule,\n"  # two lines: it fits the figure
             + (f"each at {rate} × its lr_scale" if scaled else f"each at {rate}"))
    notes = []
    if cap is not None:
        n_out = sum(r.value > cap for r in complete)  # type: ignore[operator]
        notes.append(f"▲ on the top edge: {n_out} trial(s) with {word} above {cap:.3g}, off the scale")
    if n_div:
        notes.append(f"{n_div} diverged trial(s) not shown")
    if notes:
        title += "\n" + "; ".join(notes)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_importance(table: pd.DataFrame, word: str = "error") -> Figure | None:
    """Horizontal bars per stage and basis: main effects, then pairwise interactions, std as error bars.

    A stage that searched one parameter (stage lr: lr explains everything, 1.0) is left out; None
    when no stage is left. A stage analysed both on its complete trials and at an epoch (its pruned
    trials included) gets a panel for each, titled with the basis and its number of trials.
    """
    table = table.copy()
    table["param_b"] = table["param_b"].fillna("").astype(str)
    table["std"] = pd.to_numeric(table.get("std", 0.0), errors="coerce").fillna(0.0)
    if "basis" not in table:
        table["basis"] = "complete"
    table = table[table.groupby("stage")["param"].transform("nunique") > 1]
    if table.empty:
        return None
    stages = [s for s in STAGES if s in set(table["stage"])] + sorted(set(table["stage"]) - set(STAGES))
    panels = [(s, b) for s in stages for b in dict.fromkeys(table.loc[table["stage"] == s, "basis"])]
    evaluators = list(dict.fromkeys(table["evaluator"]))
    groups = {key: rows for key, rows in table.groupby(["stage", "basis"], sort=False)}
    heights = [max(2, groups[key][["param", "param_b"]].drop_duplicates().shape[0]) for key in panels]
    fig = new_figure(figsize=(8.5, 1.8 + 0.42 * sum(heights)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    colors = matplotlib.colormaps["tab10"]
    for ax, key in zip(axes[:, 0], panels):
        rows = groups[key]
        keys = list(dict.fromkeys(zip(rows["param"], rows["param_b"])))
        # Main effects first, largest on top; interactions below them.
        mean = rows.groupby(["param", "param_b"])["importance"].mean()
        keys.sort(key=lambda k: (k[1] != "", -mean.get(k, 0.0)))
        bar_h = 0.8 / max(1, len(evaluators))
        for j, evaluator in enumerate(evaluators):
            sub = rows[rows["evaluator"] == evaluator].set_index(["param", "param_b"])
            ys, xs, errs, hatches = [], [], [], []
            for i, k in enumerate(keys):
                if k in sub.index:
                    row = sub.loc[k]
                    row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                    ys.append(i + (j - (len(evaluators) - 1) / 2) * bar_h)
                    xs.append(float(row["importance"]))
                    errs.append(float(row["std"]))
                    hatches.append("//" if k[1] else "")
            bars = ax.barh(ys, xs, height=bar_h, xerr=errs, color=colors(j), alpha=0.85, capsize=3,
                           label=EVALUATOR_LABELS.get(evaluator, evaluator), error_kw={"lw": 1})
            for bar, hatch in zip(bars, hatches):
                bar.set_hatch(hatch)
        ax.set_yticks(range(len(keys)), [f"{a} × {b}" if b else a for a, b in keys])
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title(_panel_title(*key, rows), fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    axes[-1][0].set_xlabel("importance (whiskers: ± one standard deviation)\nhatched: the interaction of two "
                           "parameters, beyond their separate effects", fontsize=9)
    fig.suptitle(f"Which hyperparameters matter: how much of the final {word}'s variation each explains",
                 fontsize=11)
    return fig


def _panel_title(stage: str, basis: str, rows: pd.DataFrame) -> str:
    """``stage shape (12 complete trials)``, ``stage shape at epoch 3 (16 trials)``, or ``stage shape``."""
    counted = "trials" in rows and not rows["trials"].isna().all()
    head, _, where = basis.partition(", where ")
    n = f"{int(rows['trials'].iloc[0])} " if counted else ""
    where = f" where {where}" if where else ""
    if head == "complete":
        return f"stage {stage} ({n}complete trials{where})" if counted or where else f"stage {stage}"
    return f"stage {stage} at {head}" + (f" ({n}trials{where})" if counted or where else "")
