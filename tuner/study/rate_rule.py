"""The rate rule: which learning rate a noisy sweep points at, read from its whole "U".

Pure numerics (numpy only, no Optuna, no torch): the points of stage ``lr`` go in as the rate
and the final value of each trial, diverged trials as the U's right wall, the rule works in log10
of the rate, and one
:class:`RateChoice` comes out. The best single trial is a poor estimate of where to train: one
lucky seed sets it (issue 21). Instead (REFERENCES.md, "a robust hand-off"):

1. fit value against log10(lr) with LOWESS (Cleveland 1979): local linear fits with tricube
   weights over a span of at least :data:`MIN_SPAN_POINTS` points and :data:`MIN_SPAN_DECADES`,
   then :data:`ROBUSTNESS_PASSES` bisquare passes that shrink the weight of points far below the
   curve of the others (a lucky spike). Two changes to Cleveland's passes, both measured on the
   sweeps of tests/test_handoff.py: a point is judged by the fit of the *other* points (a lone lucky
   trial among few neighbours otherwise vouches for itself and its neighbours lose their weight),
   and only points *below* that fit lose weight (one above can only push the choice away from it;
   rejecting those also stripped a steep wall of its points); and a local fit never leaves the
   range of the values it fits (a tight cluster's slope must not dive into a gap);
2. evaluate the fit on a fine grid inside the sampled range only;
3. pick the grid rate whose *worst* fitted value within ±:data:`WINDOW_DECADES` is lowest, among
   windows holding at least :data:`MIN_WINDOW_POINTS` observed trials (a broad basin beats a
   narrow dip: Bogunovic et al. 2018);
4. the basin: the rates around it whose fitted value is within one noise unit of the best fitted
   value (the one-standard-error rule). Noise: for an error rate p on n validation rows the
   binomial sqrt(p(1-p)/n); otherwise 1.4826 x the MAD of the fit's residuals.

With ``within_noise`` (rule ``"basin"``, ``stages.lr.handoff = "basin"``), step 3 picks only among
the grid rates whose own fitted value is within one noise unit of the best fitted value: the
broadest window *of the basin*. Without it (rule ``"robust"``, contract 3-5) the broadest window
may lie anywhere on the U: on a sweep whose best rates sit next to the divergence cliff (the
adding problem, whose networks learn faster the higher the rate until they diverge) the cliff
spoils every window near the minimum, and a flat shoulder far above it wins: issue 21's
``adding_long`` seed 1 handed on 0.019 (smoothed 0.19) where the smoothed minimum lay at 0.09
(0.11), 4.4 noise units lower, and stage ``shape``'s ``lr_scale`` range never reached the rates
that had trained best.

With ``backed`` too (rule ``"backed"``, the default since contract 8), two changes to the curve
the basin is read from. A point below the others' curve keeps its weight where a neighbour backs it
(another trial within :data:`WINDOW_DECADES`, also below that curve, whose value lies closer to its
own than half its distance to the curve): luck strikes one trial, not two neighbours alike, and at
the bottom of a sharp U the local linear fit of the others lies above both (the bundled
``digits_optimizers`` study's SGD sweep lost its two best trials, 0.031 at 0.0375 and 0.033 at
0.058, and handed on 0.0056). And no rate's smoothed value lies below every trial near it (those
within :data:`WINDOW_DECADES`): a local fit that keeps such points
may otherwise run on past them into a gap, a dip no trial shows (in a gap, the floor is the straight line
between the two trials that bound it). On 1000 simulated sweeps (``scripts/rate_rule_sim.py``, seed 7)
the two together cut the mean regret of the rate handed on (its true error above the curve's floor)
from 0.082 to 0.069 against ``"basin"``; with lucky trials in the sweeps, from 0.106 to 0.104.

With one trial, its rate is handed on exactly; with fewer than :data:`MIN_POINTS` points (or
:data:`MIN_COMPLETE` that did not diverge) the best trial's, and the choice says so.

Example:
    >>> import numpy as np
    >>> x = np.linspace(-4, 0, 41)
    >>> choice = choose_rate(10 ** x, (x + 2) ** 2 / 4, [False] * 41)
    >>> round(float(np.log10(choice.rate)), 1), choice.rule
    (-2.0, 'robust')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MIN_COMPLETE", "MIN_POINTS", "RULES", "SMOOTHED_RULES", "RateChoice", "binomial_noise", "choose_rate", "lowess", "rows_behind",
]

MIN_SPAN_POINTS = 5  # the fewest points each local fit spans
MIN_SPAN_DECADES = 0.5  # ... and the narrowest window it spans, in decades of lr
SPAN_FRACTION = 1 / 4  # the share of all points each local fit spans, when more than MIN_SPAN_POINTS
ROBUSTNESS_PASSES = 2
WINDOW_DECADES = 0.25  # a candidate rate is judged by its worst fitted value within this of it
MIN_WINDOW_POINTS = 3  # ... and only where that window holds this many observed trials
MIN_POINTS = 5  # fewer points than this (diverged ones included) and the best trial is handed on
MIN_COMPLETE = 3  # ... as with fewer trials than this that did not diverge
GRID_POINTS = 201  # the fine grid the fit is evaluated on
STORED_CURVE_POINTS = 41  # the grid points kept with the choice (every 5th)
N_CANDIDATES = 3  # the leading rates kept with the choice, each at least 2 windows from the others
MAD_TO_SD = 1.4826  # MAD x this estimates the standard deviation of normal noise
MAX_ROWS = 2500  # rows_behind looks no further: beyond, float32 rounding hides k/n

# The rules a choice may be made by, and what each means in words.
# In words that hold for a score too (direction "maximize", whose values the rule reads turned): "best", not "lowest".
RULES = {
    "basin": "of the rates whose smoothed value is within one noise unit of the best, the one whose worst smoothed "
             "value within ±0.25 decade is best",
    "backed": "of the rates whose smoothed value is within one noise unit of the best, the one whose worst smoothed "
              "value within ±0.25 decade is best, on a curve where a trial a neighbour backs keeps its weight and no "
              "rate looks better than the trials near it",
    "robust": "the rate whose worst smoothed value within ±0.25 decade is best",
    "fitted minimum": "the best point of the smoothed curve",
    "best trial": "the rate of the best trial",
    "only trial": "the rate of the stage's only trial",
}

SMOOTHED_RULES = ("backed", "basin", "robust", "fitted minimum")  # the rules read from the smoothed curve (it has a basin)


@dataclass(frozen=True)
class RateChoice:
    """The rate handed on, and how it was chosen.

    ``curve``: (log10 lr, smoothed value) on a coarse grid, empty when no curve was fitted;
    ``candidates``: (lr, worst smoothed value within the window) of the leading rates, best first.
    ``basin``: the rates (low, high) around ``rate`` within one ``noise`` of the best smoothed value.
    """

    rate: float
    rule: str  # a key of RULES
    basin: tuple[float, float]
    noise: float | None
    noise_basis: str  # how the noise was measured, in words ("" when not measured)
    curve: tuple[tuple[float, float], ...] = ()
    candidates: tuple[tuple[float, float], ...] = ()
    why: str = ""  # why a fallback rule was used ("" for "robust")
    n_points: int = 0  # points the rule saw, diverged ones included
    backed: bool = False  # the curve read as rule "backed" reads it (also where it fell back to "fitted minimum")

    def as_record(self) -> dict[str, object]:
        """A small JSON-serialisable record of the choice, to store on the stage study."""
        return {
            "rule": self.rule,
            "lr": self.rate,
            "basin": [self.basin[0], self.basin[1]],
            "noise": self.noise,
            "noise_basis": self.noise_basis,
            "curve": [[round(x, 4), _sig(y)] for x, y in self.curve],
            "candidates": [[_sig(lr), _sig(worst)] for lr, worst in self.candidates],
            "why": self.why,
            "n_points": self.n_points,
            **({"backed": True} if self.backed else {}),  # absent in records stored before rule "backed"
        }


def _sig(value: float) -> float:
    return float(f"{value:.5g}")


def lowess(x: ArrayLike, y: ArrayLike, at: ArrayLike, *, fixed: ArrayLike | None = None,
           passes: int = ROBUSTNESS_PASSES, backed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """LOWESS of ``y`` on ``x``, evaluated at ``at`` and at ``x``: (fit at ``at``, fit at ``x``).

    Local linear fits with tricube weights, each spanning the nearest ``max(5, n/4)`` points and
    at least half a decade; then ``passes`` bisquare robustness passes (Cleveland 1979) on each
    point's residual from the fit of the others, down-weighting only points below it; points
    flagged in ``fixed`` (the divergence wall: not noise) keep their full weight. With ``backed``
    (rule ``"backed"``), so do points a neighbour backs (:func:`_backed`), and the fit at ``at`` never
    lies below every point near it (:func:`_floor`).

    Example:
        >>> fit, _ = lowess([0, 1, 2, 3, 4, 5], [0, 1, 2, -30, 4, 5], [3.0])  # one lucky point
        >>> abs(float(fit[0]) - 3) < 1
        True
    """
    x, y, at = (np.asarray(v, dtype=float) for v in (x, y, at))
    keep = np.zeros(len(x), dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    robustness = np.ones(len(x))
    for i in range(passes + 1):
        fitted_x = _local_fit(x, y, x, robustness)
        if i == passes:
            break
        # Each point judged by the fit of the others: a lone point (a lucky trial among few
        # neighbours) must not vouch for itself, or it keeps its weight and its neighbours lose theirs.
        residuals = y - _left_out_fit(x, y, robustness)
        scale = 6.0 * float(np.median(np.abs(residuals[~keep]))) if (~keep).any() else 0.0
        if scale <= 1e-12 * max(1.0, float(np.max(np.abs(y)))):
            break  # the fit goes through the points: nothing to down-weight
        robustness = np.clip(1.0 - (residuals / scale) ** 2, 0.0, None) ** 2
        # Only a point below the others' curve is suspect: luck that pulls the rate to itself. One
        # above it (a seed that trained badly, or a steep wall fitted too smoothly) can only push
        # the choice away from it, to rates other trials back.
        robustness[keep | (residuals > 0) | (_backed(x, y, residuals, keep) if backed else False)] = 1.0
    fit = _local_fit(x, y, at, robustness)
    return (_floor(x[~keep], y[~keep], at, fit) if backed and (~keep).any() else fit), fitted_x


def _backed(x: np.ndarray, y: np.ndarray, residuals: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Points below the others' curve that a neighbour backs: another trial within ``WINDOW_DECADES`` of it, also
    below that curve, whose value lies closer to its own than half its distance to the curve."""
    below = (residuals < 0) & ~fixed
    backed = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(below):
        near = below & (np.abs(x - x[i]) <= WINDOW_DECADES + 1e-9)
        near[i] = False
        backed[i] = bool((np.abs(y[near] - y[i]) < -residuals[i] / 2).any())
    return backed


def _floor(x: np.ndarray, y: np.ndarray, at: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``fit`` raised, where it dips below them, to what the points near each rate show: the lowest of those
    within ``WINDOW_DECADES``; where none lies that near (a gap over twice as wide), the straight line between
    the two points that bound it (beyond the last point on one side, that point's value). A good trial a decade away must not pull
    the curve down in a gap that no trial sampled."""
    out = fit.copy()
    xs, first = np.unique(x, return_inverse=True)  # a rate tried twice counts at its best value
    ys = np.full(len(xs), np.inf)
    np.minimum.at(ys, first, y)
    for j, a in enumerate(at):
        near = np.abs(xs - a) <= WINDOW_DECADES + 1e-9
        if near.any():
            shown = float(ys[near].min())
        else:
            right = int(np.searchsorted(xs, a))
            if right == 0 or right == len(xs):
                shown = float(ys[min(right, len(xs) - 1)])
            else:
                share = (a - xs[right - 1]) / (xs[right] - xs[right - 1])
                shown = float(ys[right - 1] + share * (ys[right] - ys[right - 1]))
        out[j] = max(out[j], shown)
    return out


def _left_out_fit(x: np.ndarray, y: np.ndarray, robustness: np.ndarray) -> np.ndarray:
    """The fit at each point from all the other points."""
    others = ~np.eye(len(x), dtype=bool)
    return np.array([_local_fit(x[o], y[o], x[i:i + 1], robustness[o])[0] for i, o in enumerate(others)])


def _local_fit(x: np.ndarray, y: np.ndarray, at: np.ndarray, robustness: np.ndarray) -> np.ndarray:
    n = len(x)
    k = min(n, max(MIN_SPAN_POINTS, math.ceil(SPAN_FRACTION * n)))
    out = np.empty(len(at))
    for j, x0 in enumerate(at):
        distance = np.abs(x - x0)
        # The window reaches just past its k-th nearest point, so that all k weigh in.
        reach = max(float(np.partition(distance, k - 1)[k - 1]) * 1.000001, MIN_SPAN_DECADES / 2)
        w = np.clip(1.0 - (distance / reach) ** 3, 0.0, None) ** 3 * robustness
        total = w.sum()
        if total <= 0:  # every near point robustly rejected: the plain tricube fit
            w = np.clip(1.0 - (distance / reach) ** 3, 0.0, None) ** 3
            total = w.sum()
        mean_x, mean_y = (w @ x) / total, (w @ y) / total
        spread = w @ (x - mean_x) ** 2
        slope = (w @ ((x - mean_x) * (y - mean_y))) / spread if spread > 1e-12 * total else 0.0
        # Never beyond the values it fits: a tight cluster's slope must not dive into a gap.
        near = y[w > 0] if (w > 0).any() else y
        out[j] = min(max(mean_y + slope * (x0 - mean_x), near.min()), near.max())
    return out


def binomial_noise(error: float, rows: int) -> float:
    """The standard error of an error rate ``error`` measured on ``rows`` rows: sqrt(p(1-p)/n)."""
    p = min(max(error, 0.5 / rows), 1.0 - 0.5 / rows)  # an error of 0 is still measured on n rows
    return math.sqrt(p * (1.0 - p) / rows)


def rows_behind(error_rates: ArrayLike, max_rows: int = MAX_ROWS, min_distinct: int = 4) -> int | None:
    """The number of rows n that every error rate was measured on (each is k/n), else None.

    An error rate of a classifier is wrong rows / rows. Read from the values themselves, so that
    a study stored before any count was kept still gets its binomial noise: the smallest n for
    which every value is a whole number of rows, once ``min_distinct`` distinct values agree on it.

    Example:
        >>> rows_behind([3 / 36, 5 / 36, 11 / 36, 0.5, 1 / 36])
        36
    """
    values = np.unique(np.asarray(error_rates, dtype=float))
    values = values[np.isfinite(values)]
    if len(values) < min_distinct or values.min() < 0 or values.max() > 1:
        return None
    values = values[np.linspace(0, len(values) - 1, min(len(values), 200)).round().astype(int)]  # enough to agree on n
    n = np.arange(1, max_rows + 1, dtype=float)[:, None]
    counts = values[None, :] * n
    # Errors are float32 sums divided by n: a whole count is off by at most a few float32 ulps.
    whole = np.abs(counts - np.round(counts)) <= 1e-6 * np.maximum(counts, 1.0) + 1e-9
    fits = np.flatnonzero(whole.all(axis=1))
    return int(fits[0]) + 1 if len(fits) else None


def choose_rate(lrs: ArrayLike, values: ArrayLike, diverged: ArrayLike, *, wall: float | None = None,
                error_rows: int | None = None, within_noise: bool = False, backed: bool = False) -> RateChoice:
    """The rate to hand on from a sweep's points, and how it was chosen (see the module's docstring).

    Args:
        lrs: each finished trial's rate (> 0); the rule reads them as log10(lr).
        values: each trial's final value (lower is better); ignored (may be NaN) where diverged.
        diverged: which trials diverged: they stand at ``wall``, the U's right wall.
        wall: the value a diverged trial counts as (the untrained value); default: the worst value.
        error_rows: the validation rows behind an error rate (binomial noise); None: the MAD.
        within_noise: choose only among rates whose smoothed value is within one noise unit of the
            smoothed minimum (rule "basin"); False: anywhere on the U (rule "robust").
        backed: with ``within_noise``, read the curve as rule "backed" does (see the module's docstring).

    Raises:
        ValueError: no trial that did not diverge.
    """
    rates = np.asarray(lrs, dtype=float)
    if not (np.isfinite(rates) & (rates > 0)).all():
        raise ValueError("choose_rate needs learning rates > 0")
    x = np.log10(rates)
    walls = np.asarray(diverged, dtype=bool)
    y = np.asarray(values, dtype=float).copy()
    usable = ~walls & np.isfinite(y)
    if not usable.any():
        raise ValueError("choose_rate needs at least one trial that did not diverge")
    keep = usable | walls
    rates, x, y, walls = rates[keep], x[keep], y[keep], walls[keep]
    y[walls] = float(np.max(y[~walls])) if wall is None else wall
    n_points, n_complete = len(x), int((~walls).sum())
    best = int(np.argmin(np.where(walls, np.inf, y)))
    if n_points == 1 or n_complete == 1:
        rule = "only trial" if n_points == 1 else "best trial"
        why = "" if n_points == 1 else f"only one of {n_points} trials did not diverge"
        return _at_trial(rates[best], rule, why, n_points)
    if n_points < MIN_POINTS or n_complete < MIN_COMPLETE:
        return _at_trial(rates[best], "best trial", f"{n_points} trials ({n_complete} that did not diverge) are too few "
                         f"for a smoothed curve: it needs {MIN_POINTS} ({MIN_COMPLETE})", n_points)

    grid = np.linspace(x.min(), x.max(), GRID_POINTS)
    backed = backed and within_noise
    fit, fitted_x = lowess(x, y, grid, fixed=walls, backed=backed)
    step = grid[1] - grid[0] if len(grid) > 1 else 1.0
    half = round(WINDOW_DECADES / step) if step > 0 else 0
    worst = np.array([fit[max(0, i - half): i + half + 1].max() for i in range(len(grid))])
    in_window = np.array([int((np.abs(x - g) <= WINDOW_DECADES + 1e-9).sum()) for g in grid])
    # A broad basin needs evidence on both sides: the window lies inside the sampled range.
    inside = (grid - WINDOW_DECADES >= x.min() - 1e-9) & (grid + WINDOW_DECADES <= x.max() + 1e-9)
    eligible = (in_window >= MIN_WINDOW_POINTS) & inside
    noise, basis = _noise(fit, y[~walls] - fitted_x[~walls], error_rows)
    if within_noise:
        eligible &= fit <= float(fit.min()) + noise
    if eligible.any():
        rule, why = ("backed" if backed else "basin" if within_noise else "robust"), ""
        score = np.where(eligible, worst, np.inf)
    else:
        rule = "fitted minimum"
        why = (f"the trials span less than {2 * WINDOW_DECADES} decade" if not inside.any() else
               f"no ±{WINDOW_DECADES} decade window holds {MIN_WINDOW_POINTS} of the {n_points} trials")
        score = fit
    chosen = int(np.lexsort((fit, score))[0])  # the lowest score; of equals, the lowest fitted value
    if backed:  # the floor makes flat runs of exact equals: the middle of the run, not its low end
        chosen = _middle_of_run(chosen, score, fit)
    threshold = max(float(fit.min()) + noise, float(fit[chosen]))
    low = high = chosen
    while low > 0 and fit[low - 1] <= threshold:
        low -= 1
    while high < len(grid) - 1 and fit[high + 1] <= threshold:
        high += 1
    every = max(1, (GRID_POINTS - 1) // (STORED_CURVE_POINTS - 1))
    return RateChoice(
        rate=float(10 ** grid[chosen]),
        rule=rule,
        basin=(float(10 ** grid[low]), float(10 ** grid[high])),
        noise=noise,
        noise_basis=basis,
        curve=tuple((float(grid[i]), float(fit[i])) for i in range(0, len(grid), every)),
        candidates=_candidates(grid, score, worst, half),
        why=why,
        n_points=n_points,
        backed=backed,
    )


def _middle_of_run(first: int, score: np.ndarray, fit: np.ndarray) -> int:
    """The middle of the run of grid points around ``first`` whose score and fitted value equal its own."""
    low = high = first
    while low > 0 and score[low - 1] == score[first] and fit[low - 1] == fit[first]:
        low -= 1
    while high < len(score) - 1 and score[high + 1] == score[first] and fit[high + 1] == fit[first]:
        high += 1
    return (low + high) // 2


def _at_trial(lr: float, rule: str, why: str, n_points: int) -> RateChoice:
    rate = float(lr)  # exactly the trial's rate, not 10 ** log10 of it
    return RateChoice(rate, rule, (rate, rate), None, "", why=why, n_points=n_points)


def _noise(fit: np.ndarray, residuals: np.ndarray, error_rows: int | None) -> tuple[float, str]:
    if error_rows:
        return binomial_noise(float(fit.min()), error_rows), f"binomial, {error_rows} validation rows"
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    return MAD_TO_SD * mad, "1.4826 x MAD of the residuals"


def _candidates(grid: np.ndarray, score: np.ndarray, worst: np.ndarray, half: int) -> tuple[tuple[float, float], ...]:
    """The leading rates by score, each at least two windows from those before it."""
    taken: list[int] = []
    for i in np.argsort(score, kind="stable"):
        if not np.isfinite(score[i]) or len(taken) == N_CANDIDATES:
            break
        if all(abs(int(i) - j) > 2 * half for j in taken):
            taken.append(int(i))
    return tuple((float(10 ** grid[i]), float(worst[i])) for i in taken)

