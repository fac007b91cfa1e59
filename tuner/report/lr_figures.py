"""The lr stage's figures: the "U" of error against rate, what a rate costs, and the learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import Formatter, MaxNLocator

from tuner.report.figures import CHOSEN_COLOR, DIVERGED_COLOR, new_figure, plain_log_y, use_log_y
from tuner.report.runs import (
    Run, TrialCosts, as_errors, axis_label, epochs_to_target, error_target, final_label, objective_word, trial_costs, untrained_errors,
)
from tuner.report.words import divergence_onset
from tuner.study.rate_rule import SMOOTHED_RULES


def _lr_axis(ax: Axes) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.grid(True, which="major", alpha=0.3)


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


def _mark_chosen(ax: Axes, chosen_lr: float | None) -> None:
    if chosen_lr is not None:
        ax.axvline(chosen_lr, color=CHOSEN_COLOR, ls="--", lw=1.5, label=f"chosen lr = {chosen_lr:.3g}")


def _mark_divergence(ax: Axes, onset: float | None, lr_max: float) -> None:
    if onset is not None:
        ax.axvspan(onset, lr_max * 1.5, color=DIVERGED_COLOR, alpha=0.08, lw=0,
                   label=f"runs diverge from lr ≈ {onset:.2g}")


def plot_lr_sensitivity(runs: Sequence[Run], chosen_lr: float | None, objective: str,
                        handoff: dict[str, Any] | None = None, maximize: bool = False) -> Figure | None:
    """Final error against learning rate: the "U". Diverged runs sit in a band of their own on top.

    ``handoff``: the record the hand-off stored (user attribute ``handoff`` of ``<name>/lr``): its
    smoothed curve and basin are drawn when the rate was read from the curve.
    """
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
    if handoff and handoff.get("curve") and handoff.get("rule") in SMOOTHED_RULES:
        curve = handoff["curve"]
        ax.plot([10 ** x for x, _ in curve], [v for _, v in curve], color=CHOSEN_COLOR, lw=1.2, alpha=0.7,
                zorder=2, label="smoothed (LOWESS; diverged as the wall)")
        low, high = handoff["basin"]
        ax.axvspan(low, high, color=CHOSEN_COLOR, alpha=0.10, lw=0, label=f"basin {low:.2g} to {high:.2g} (within noise)")
    if use_log_y(y):
        plain_log_y(ax)
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
    onset = divergence_onset(lrs, as_errors([r.curve for r in runs], maximize), [r.diverged for r in runs],
                             untrained_errors(runs, maximize))
    _mark_divergence(ax, onset, max(lrs))
    if chosen_lr is not None:
        _mark_chosen(ax, chosen_lr)
        best = min(complete, key=lambda r: abs(math.log(r.params["lr"] / chosen_lr)))
        ax.scatter([best.params["lr"]], [best.value], marker="*", s=220, color=CHOSEN_COLOR,
                   edgecolor="black", zorder=5)
        # Towards the inside of the plot: above a low error, below a high score (above it ran into the title).
        # The star is the trial nearest the rate handed on; where that rate lies between trials, the note says whose value it is.
        whose = "" if abs(math.log10(best.params["lr"] / chosen_lr)) < 0.01 else f"nearest trial, lr {best.params['lr']:.3g}: "
        ax.annotate(f"chosen: lr {chosen_lr:.3g}\n{whose}{objective.split(' (')[0]} {best.value:.3g}", xy=(best.params["lr"], best.value),
                    xytext=(-14, -34 if maximize else 34), textcoords="offset points", ha="right",
                    va="top" if maximize else "baseline", fontsize=9, color="#1a6b1a",
                    arrowprops={"arrowstyle": "-", "color": "#1a6b1a", "lw": 0.8})
    _lr_axis(ax)
    ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
    ax.set_ylabel(axis_label(final_label(objective) + ("" if maximize else "\n(lower is better)")))
    ax.set_title(f"Learning-rate sensitivity (stage lr): {objective_word(objective, maximize)} after the last epoch, by rate\n"
                 "too small crawls (left), too large oscillates or diverges (right)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return fig


def plot_lr_cost(runs: Sequence[Run], chosen_lr: float | None, objective: str, maximize: bool = False) -> Figure | None:
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

    target = None if maximize else error_target(runs)  # a target error to get below: none for a score
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
        word = objective_word(objective, maximize)
        why = "a score has no target here" if maximize else \
            f"no target: no rate ended below the {word}\nof the smallest rate after one epoch"
        ax_e.text(0.5, 0.5, why, transform=ax_e.transAxes, ha="center", va="center", fontsize=9)
        ax_e.set_title(f"Epochs to reach a target {word}", fontsize=10)
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


def _top_for_healthy(ax: Axes, healthy: list[float]) -> float | None:
    """A y limit a little above the runs that did not diverge, when the axis reaches far above them."""
    if not healthy:
        return None
    high, low = max(healthy), min(healthy)
    log = ax.get_yscale() == "log"
    top = high * (high / low) ** 0.08 * 1.2 if log and low > 0 else high + 0.08 * (high - low)
    return top if ax.get_ylim()[1] > (top * 3 if log else top + 0.5 * (high - low)) else None


def _bottom_for_healthy(ax: Axes, healthy: list[float]) -> float:
    high, low = max(healthy), min(healthy)
    return low / (high / low) ** 0.08 / 1.2 if ax.get_yscale() == "log" and low > 0 else low - 0.08 * (high - low)


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
        if attr == "train_curve" or use_log_y([v for r in runs for v in getattr(r, attr)]):
            plain_log_y(ax)
        healthy = [v for r in runs if not r.diverged for v in getattr(r, attr) if math.isfinite(v)]
        top = _top_for_healthy(ax, healthy)
        if top is not None:  # a blown-up run would squash every other curve against the floor
            ax.set_ylim(_bottom_for_healthy(ax, healthy), top)
            for marker in ax.collections:  # its cross on the top edge, not off the plot
                marker.set_offsets([(x, min(y, top)) for x, y in marker.get_offsets()])
                marker.set_clip_on(False)
            ax.text(0.99, 0.98, "diverged runs leave the top", transform=ax.transAxes, ha="right", va="top",
                    fontsize=8, color=DIVERGED_COLOR)
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
