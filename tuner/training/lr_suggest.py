"""Learning-rate suggestions from an LR range test (Smith 2015; fastai's ``lr_find``).

Pure numerics over the arrays an exponential LR ramp records: ``lrs`` (increasing) and the
per-step training ``losses``. No training code lives here.

* :func:`smooth` -- fastai's bias-corrected exponential moving average.
* :func:`stop_index` -- where the ramp should stop (the smoothed loss diverged).
* :func:`suggest` -- several classic rules computed on a robustly smoothed curve, the band where
  they agree, one learning rate and a range for a later LR sweep.
* :func:`smoothed_curve` -- that smoothed curve, one value per step: what ``lr_find.csv`` and
  ``lr_find.png`` show, so that the minimum drawn is the one the ``minimum`` rule reads.

Each single rule has a known failure mode (early spikes, minibatch noise, NaN losses once the ramp
diverges, slopes taken per *index* instead of per decade of LR). :func:`suggest` guards against all
of them; see its docstring for the exact pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["MIN_POINTS", "Suggestion", "smooth", "smoothed_curve", "stop_index", "suggest"]

#: Fewest usable (finite) points :func:`suggest` needs to say anything.
MIN_POINTS = 5
FEW_POINTS = 20  # fewer usable points than this, and a failed reading may be the ramp's noise
#: The valley is a run where the slope is at least this fraction of the steepest slope.
VALLEY_SLOPE_FRACTION = 0.05
#: Position of the valley suggestion along its run, in log10(lr).
VALLEY_POSITION = 2.0 / 3.0


def smooth(losses: ArrayLike, beta: float = 0.98) -> np.ndarray:
    """Exponential moving average with bias correction, as fastai's ``Recorder`` smooths losses.

    ``avg_k = beta * avg_{k-1} + (1 - beta) * loss_k`` and the output is ``avg_k / (1 - beta**k)``,
    so the first values are not dragged towards zero.

    Non-finite losses (NaN, +-inf) are *skipped*: they do not enter the average, do not count in the
    bias correction, and their output is NaN ("no measurement here"); the finite values after them
    are smoothed as if the bad step had not happened. Skipping is the pure, order-preserving choice;
    deciding that a NaN means divergence is a policy left to :func:`stop_index` (which does so).
    """
    y = np.asarray(losses, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"losses must be 1-D, got shape {y.shape}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    return _ema(y, np.full(y.shape, beta))


def _ema(y: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """Bias-corrected EMA with a per-step decay (``decay[i]`` weighs the average before point i).

    The bias correction divides by the accumulated weight, which is ``1 - beta**k`` for a constant
    decay, exactly as in fastai. Non-finite values are skipped (NaN out, no update).
    """
    out = np.full(y.shape, np.nan)
    avg = norm = 0.0
    for i, (v, d) in enumerate(zip(y, decay)):
        if np.isfinite(v):
            avg = d * avg + (1.0 - d) * v
            norm = d * norm + (1.0 - d)
            out[i] = avg / norm
    return out


def stop_index(smoothed: ArrayLike, factor: float = 4.0) -> int | None:
    """Index of the first point where the ramp has diverged, or None if it never does.

    A point has diverged when its smoothed loss exceeds ``factor`` times the running minimum of the
    smoothed loss so far (fastai's ``stop_div`` rule), or when it is non-finite: a NaN/inf loss
    during training means the weights are gone, so it ends the useful curve. (``smooth`` turns a
    non-finite loss into NaN, so ``stop_index(smooth(losses))`` stops there too.) The ramp should
    stop at the returned index; points from it on are not useful. Assumes positive losses.
    """
    s = np.asarray(smoothed, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"smoothed must be 1-D, got shape {s.shape}")
    if not factor > 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    bad = ~np.isfinite(s)
    running_min = np.minimum.accumulate(np.where(bad, np.inf, s))
    with np.errstate(invalid="ignore"):
        hit = bad | (s > factor * running_min)
    idx = np.flatnonzero(hit)
    return int(idx[0]) if idx.size else None


@dataclass(frozen=True)
class Suggestion:
    """Result of :func:`suggest`. All values are learning rates (positive, finite floats).

    ``steep``, ``valley``, ``minimum`` are the individual rules; ``low``/``high`` the band they
    span; ``lr`` the single suggestion; ``[search_min, search_max]`` a range for a later LR sweep.
    """

    steep: float
    valley: float
    minimum: float
    lr: float
    low: float
    high: float
    search_min: float
    search_max: float

    @property
    def rules(self) -> dict[str, float]:
        """The individual rule values by name."""
        return {"steep": self.steep, "valley": self.valley, "minimum": self.minimum}


def _running_median(y: np.ndarray, half: int) -> np.ndarray:
    """Median over a centred window of ``2 * half + 1`` points (shrinking at the edges)."""
    padded = np.pad(y, half, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.nanmedian(windows, axis=1)


def _read_curve(lrs: ArrayLike, losses: ArrayLike, beta: float | None, factor: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps 1-4 of :func:`suggest`: ``(log10(lr), smoothed loss)`` over the points the rules read, and the smallest LR tested."""
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lr.ndim != 1 or lr.shape != loss.shape:
        raise ValueError(f"lrs and losses must be 1-D, equal length; got {lr.shape}, {loss.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lr) & (lr > 0) & np.isfinite(loss)
    n_ok = int(ok.sum())
    if n_ok < MIN_POINTS:
        raise ValueError(
            f"LR range test has {n_ok} usable (finite) points out of {lr.size}; "
            f"need at least {MIN_POINTS} to suggest a learning rate"
        )
    lr, inverse = np.unique(lr[ok], return_inverse=True)
    y = np.bincount(inverse, weights=loss[ok]) / np.bincount(inverse)
    n = lr.size
    if n < MIN_POINTS:
        raise ValueError(f"LR range test has only {n} distinct learning rates; need {MIN_POINTS}")
    if beta is None:
        beta = float(np.clip(1.0 - 10.0 / n, 0.5, 0.99))
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")

    y = _running_median(y, 3 if n >= 75 else 2 if n >= 50 else 1)
    start, skip_end = n // 10, min(5, n // 10)  # nothing is skipped for n < 10: short curves
    x = np.log10(lr)
    dx = np.diff(x)
    decay = np.concatenate(([beta], beta ** (dx / np.median(dx))))  # per step, scaled by spacing
    stop = stop_index(_ema(y[start:], decay[start:]), factor)
    end = n if stop is None else start + stop
    end = max(end - skip_end, min(end, start + MIN_POINTS))
    if end - start < MIN_POINTS:
        raise ValueError(
            f"loss diverges after only {end - start} usable points; start the ramp at a lower LR"
        )
    x, y, decay = x[start:end], y[start:end], decay[start:end]
    s = _ema(_ema(y, decay)[::-1], np.concatenate(([beta], decay[:0:-1])))[::-1]
    return x, s, float(lr[0])


def smoothed_curve(lrs: ArrayLike, losses: ArrayLike, *, beta: float | None = None, factor: float = 4.0) -> np.ndarray:
    """The smoothed loss :func:`suggest`'s rules read, one value per step of ``lrs``: NaN where they read
    none (the warm-up, past the cut, a non-finite loss).

    The curve to show beside the suggestion: its minimum is at 10 x ``minimum``, its steepest descent
    at ``steep``. Raises ValueError where :func:`suggest` does for too few points.

    Example:
        >>> curve = smoothed_curve(lrs, losses)  # doctest: +SKIP
        >>> lrs[np.nanargmin(curve)] == 10 * suggest(lrs, losses).minimum  # doctest: +SKIP
        True
    """
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    x, s, _ = _read_curve(lr, loss, beta, factor)
    read = dict(zip(x.tolist(), s.tolist()))
    out = np.full(lr.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, (rate, value) in enumerate(zip(lr, loss)):
            if np.isfinite(value) and np.isfinite(rate) and rate > 0:
                out[i] = read.get(float(np.log10(rate)), np.nan)
    return out


def suggest(
    lrs: ArrayLike, losses: ArrayLike, *, beta: float | None = None, factor: float = 4.0
) -> Suggestion:
    """Suggest learning rates from an LR range test.

    Pipeline (``n`` = number of usable points):

    1. Points with a non-finite loss, or a non-finite / non-positive LR, are ignored; the rest are
       sorted by LR (losses at a repeated LR are averaged). Fewer than ``MIN_POINTS`` -> ValueError.
    2. A running median (7 points for n >= 75, 5 for n >= 50, else 3) removes isolated spikes
       (one bad batch) before any averaging can smear them into a fake descent.
    3. Like fastai, the first ``n // 10`` points are dropped (warm-up; spikes there are dropped
       outright; none for n < 10), the curve is cut at :func:`stop_index` (factor ``factor``) of its
       forward-smoothed loss, and up to ``min(5, n // 10)`` points before the cut are dropped, fewer
       if that would leave less than ``MIN_POINTS`` (then too few -> ValueError).
    4. The rules use a *zero-phase* smoothing: :func:`smooth`'s EMA forwards, then backwards.
       fastai's forward-only average lags by tens of points, shifting every rule towards larger
       LRs (by about a decade for the minimum on a 100-step ramp); the backward pass cancels that.
       ``beta=None`` uses ``1 - 10 / n`` clipped to [0.5, 0.99] (0.9 for a 100-step ramp), so the
       smoothing spans the same fraction of the LR range whatever the number of steps. ``beta`` is
       the decay per *median* step in log10(lr); a step ``r`` times as wide decays by ``beta**r``,
       so unequally spaced LRs are smoothed over the same width in decades, not in points.

    Rules, on the smoothed loss ``s`` as a function of ``x = log10(lr)``:

    * ``steep``: LR where ``np.gradient(s, x)`` is most negative -- the slope per decade of LR,
      using the real (possibly unequal) spacing, not the slope per index.
    * ``valley`` (fastai's valley rule): the longest stretch, measured in decades, of consecutive
      points descending at least ``VALLEY_SLOPE_FRACTION`` (5%) as steeply as ``steep``'s slope (a
      relative floor so plateaus and smoothing leakage do not count as descent); the LR 2/3 of the
      way through it in log10(lr).
    * ``minimum``: LR at the minimum of ``s``, divided by 10.

    Agreement: ``low``/``high`` are the min/max of the three rules. ``lr`` is their *median*: each
    rule fails in its own way (steep on a kink, valley on an odd run, minimum/10 on a broad
    minimum), and the median ignores whichever single rule is off, where a geometric mean would be
    dragged by it. The sweep range is ``search_min = low / 3`` and
    ``search_max = min(3 * high, lr at the minimum)`` -- never beyond the LR where the loss stopped
    improving -- with ``search_min`` raised to the smallest tested LR if needed.

    Raises ValueError when there are too few usable points, when the loss diverges almost at once,
    or when it never decreases (start the ramp at a lower LR).
    """
    x, s, smallest_lr = _read_curve(lrs, losses, beta, factor)
    slope = np.gradient(s, x)
    i_steep = int(np.argmin(slope))
    few = f", or run more steps (lr-find --steps: only {len(x)} usable points)" if len(x) < FEW_POINTS else ""
    if not slope[i_steep] < 0:
        raise ValueError(f"loss never decreases over the tested range; start the ramp at a lower LR{few}")
    descending = np.concatenate(([0], slope < VALLEY_SLOPE_FRACTION * slope[i_steep], [0]))
    edges = np.diff(descending.astype(int))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    k = int(np.argmax(x[run_ends] - x[run_starts]))
    a, b = x[run_starts[k]], x[run_ends[k]]
    i_min = int(np.argmin(s))

    steep = float(10.0 ** x[i_steep])
    valley = float(10.0 ** (a + VALLEY_POSITION * (b - a)))
    lr_at_min = float(10.0 ** x[i_min])
    minimum = lr_at_min / 10.0
    rules = [steep, valley, minimum]
    low, high = min(rules), max(rules)
    # low <= minimum = lr_at_min / 10 and high >= steep >= lr[0], so
    # lr[0] <= search_min <= search_max <= lr_at_min <= lr[-1]: inside the tested range.
    search_max = min(3.0 * high, lr_at_min)
    search_min = max(low / 3.0, smallest_lr)
    if not search_min <= float(np.median(rules)) <= search_max:
        # The smoothed loss is lowest before its steepest descent: the rules cannot agree on a reading.
        # Seen where a short descent just before the blow-up is blended into it by the smoothing, which spans a
        # fixed share of the ramp: a narrower ramp around the descent reads it, more steps on the same one do not.
        raise ValueError(f"the range test cannot be read: its smoothed loss is lowest at lr {lr_at_min:.3g}, before its "
                         f"steepest descent at {steep:.3g}, so the rules disagree by {math.log10(high / low):.1f} decades; "
                         f"narrow the ramp around where the loss falls (lr-find's --start-lr and --end-lr; in a study, "
                         f"stages.lr.lr_min and lr_max)")
    return Suggestion(
        steep=steep,
        valley=valley,
        minimum=minimum,
        lr=float(np.median(rules)),
        low=low,
        high=high,
        search_min=search_min,
        search_max=search_max,
    )
