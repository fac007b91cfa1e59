"""Tests for tuner.training.lr_suggest: smoothing, stop rule and LR suggestions on synthetic ramps."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from tuner.training.lr_suggest import MIN_POINTS, Suggestion, smooth, smoothed_curve, stop_index, suggest

X = np.linspace(-7.0, 1.0, 100)  # log10(lr) of a 100-step exponential ramp
LRS = 10.0**X


def ideal_loss(x: np.ndarray) -> np.ndarray:
    """Flat at ~2.7, steep drop centred at lr=1e-3, gentle bowl with its minimum near 1e-1, then
    exploding. Raw steepest descent is at 10**-2.9, the raw minimum at 10**-1.1."""
    drop = 1.5 / (1.0 + np.exp(4.0 * (x + 3.0)))
    bowl = 0.12 * np.minimum((x + 1.0) ** 2, 4.0)
    return 0.7 + drop + bowl + 0.05 * np.exp(4.0 * (x + 0.5))


def assert_near(value: float, expected: float, factor: float) -> None:
    assert expected / factor <= value <= expected * factor, (value, expected, factor)


def fields(s: Suggestion) -> dict[str, float]:
    return dataclasses.asdict(s)


def check_invariants(s: Suggestion, lrs: np.ndarray) -> None:
    """What must hold for any suggestion: finite positive values, a consistent band, and a search
    range inside the tested range that never goes past the LR of the smoothed minimum."""
    values = np.array(list(fields(s).values()))
    assert np.isfinite(values).all() and (values > 0).all(), s
    assert s.low == min(s.rules.values()) and s.high == max(s.rules.values())
    assert s.low <= s.lr <= s.high and s.lr == sorted(s.rules.values())[1]
    lr_at_min = 10 * s.minimum
    assert np.nanmin(lrs) <= s.search_min <= s.search_max
    assert s.search_max <= min(lr_at_min, np.nanmax(lrs)) * (1 + 1e-12)


@functools.cache
def clean() -> Suggestion:
    return suggest(LRS, ideal_loss(X))


# --------------------------------------------------------------------------------------- smooth
def test_smooth_is_bias_corrected_ema() -> None:
    y = np.random.default_rng(0).uniform(1.0, 3.0, 50)
    avg, expected = 0.0, []
    for k, v in enumerate(y, start=1):
        avg = 0.9 * avg + 0.1 * v
        expected.append(avg / (1 - 0.9**k))
    np.testing.assert_allclose(smooth(y, beta=0.9), expected)
    # Bias correction: a constant curve stays constant from the first point (no drag to 0).
    np.testing.assert_allclose(smooth(np.full(20, 2.5)), 2.5)
    assert smooth(y)[0] == pytest.approx(y[0])


def test_smooth_skips_non_finite_values() -> None:
    out = smooth([1.0, 2.0, np.nan, 3.0, np.inf, 4.0, -np.inf], beta=0.7)
    assert np.isnan(out[[2, 4, 6]]).all()
    np.testing.assert_allclose(out[[0, 1, 3, 5]], smooth([1.0, 2.0, 3.0, 4.0], beta=0.7))


def test_smooth_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="beta"):
        smooth([1.0, 2.0], beta=1.0)
    with pytest.raises(ValueError, match="1-D"):
        smooth(np.ones((2, 2)))


# ----------------------------------------------------------------------------------- stop_index
def test_stop_index_at_factor_times_running_min() -> None:
    s = np.array([4.0, 3.0, 1.0, 2.0, 3.9, 4.1, 9.0])
    assert stop_index(s) == 5  # 4.1 > 4 * 1.0; 3.9 is not
    assert stop_index(s, factor=2.0) == 4
    assert stop_index(s[:5]) is None
    assert stop_index(np.linspace(5.0, 1.0, 10)) is None  # decreasing: never stops
    # The initial high values do not count: the running minimum is taken so far.
    assert stop_index([10.0, 1.0, 3.0]) is None


def test_stop_index_treats_non_finite_as_divergence() -> None:
    assert stop_index([3.0, 2.0, np.nan, 2.0]) == 2
    assert stop_index(smooth([3.0, 2.0, 2.0, np.inf, 2.0])) == 3
    with pytest.raises(ValueError, match="factor"):
        stop_index([1.0, 2.0], factor=1.0)


# -------------------------------------------------------------------------------------- suggest
def test_ideal_curve_suggestions_where_they_should_be() -> None:
    s = clean()
    check_invariants(s, LRS)
    assert_near(s.steep, 1e-3, 3)  # the steep drop is centred at 1e-3
    assert_near(s.minimum, 10**-1.1 / 10, 3)  # raw minimum at 10**-1.1
    # Valley: 2/3 of the way down the descent from its onset (~1e-4) to the minimum (~1e-1).
    assert_near(s.valley, 1e-2, 5)
    assert s.steep < s.valley < 10**-1.1
    assert s.low == min(s.rules.values()) and s.high == max(s.rules.values())
    assert s.lr == sorted(s.rules.values())[1]
    assert s.search_min <= s.low <= s.lr <= s.high <= s.search_max <= 10**-1.1 * 1.5
    assert LRS[0] <= s.search_min and s.search_max <= LRS[-1]


@pytest.mark.parametrize("seed", range(5))
def test_noisy_curve_still_sensible(seed: int) -> None:
    noisy = ideal_loss(X) + np.random.default_rng(seed).normal(0.0, 0.15, X.size)
    s = suggest(LRS, noisy)
    check_invariants(s, LRS)
    assert_near(s.steep, clean().steep, 10)
    assert_near(s.valley, clean().valley, 10)
    assert_near(s.minimum, clean().minimum, 10)
    assert_near(s.lr, clean().lr, 10)


def test_not_fooled_by_early_spikes() -> None:
    loss = ideal_loss(X)
    loss[1:4] = 25.0  # a burst of bad batches right at the start
    loss[15:17] = 20.0  # and a short spike after fastai's 10% warm-up
    # The construction has teeth: fastai's EMA + steepest slope on this curve picks the spike decay.
    naive = smooth(loss)[10:-5]
    assert X[10 + int(np.argmin(np.gradient(naive, X[10:-5])))] < -5
    s = suggest(LRS, loss)
    check_invariants(s, LRS)
    for name, value in s.rules.items():
        assert_near(value, clean().rules[name], 1.5)


def test_nan_and_inf_in_exploding_tail() -> None:
    loss = ideal_loss(X)
    loss[85] = np.inf
    loss[88] = -np.inf
    loss[90:] = np.nan
    loss[40] = np.nan  # and a stray NaN in the flat part
    s = suggest(LRS, loss)
    check_invariants(s, LRS)
    values = np.array(list(fields(s).values()))
    assert np.isfinite(values).all() and (values > 0).all()
    for name, value in s.rules.items():
        assert_near(value, clean().rules[name], 3)


def test_nan_tail_before_divergence_is_ignored() -> None:
    loss = ideal_loss(X)
    loss[70:] = np.nan  # the ramp died just after the minimum
    s = suggest(LRS, loss)
    check_invariants(s, LRS)
    assert_near(s.steep, clean().steep, 2)
    assert np.isfinite(list(fields(s).values())).all()


def test_unequal_spacing_uses_real_log_lr_slope() -> None:
    # Dense sampling across a steep drop (1.2 per decade, 0.024 per point) and sparse sampling
    # across a gentle one (0.33 per decade, but 0.17 per point): per decade the steep drop wins,
    # per index the gentle one does.
    x = np.concatenate([
        np.linspace(-7, -4, 15, endpoint=False),
        np.linspace(-4, -3, 50, endpoint=False),
        np.linspace(-3, 0, 6, endpoint=False),
        np.linspace(0, 1, 10),
    ])
    loss = np.select(
        [x < -4, x < -3, x < 0],
        [2.6, 2.6 - 1.2 * (x + 4), 1.4 - (x + 3) / 3],
        0.4 + 0.5 * x**2,
    )
    assert -3 <= x[int(np.argmin(np.gradient(loss)))] < 0  # index-based slope: gentle part
    s = suggest(10.0**x, loss)
    check_invariants(s, 10.0**x)
    assert 1e-4 <= s.steep <= 1e-3
    # Smoothing is spacing-aware too (decay per decade, not per point): the minimum (lr=1) is not
    # dragged by the sparse stretch, and the valley ends before it.
    assert_near(s.minimum, 0.1, 2)
    assert s.steep < s.valley < 0.3


def test_valley_does_not_depend_on_plateau_length() -> None:
    # The same curve sampled at the same density from 1e-9 or from 10**-5.5: the valley is a
    # property of the descent, so a longer flat start (where smoothing leaks a tiny slope) must
    # not drag it towards small LRs.
    valleys = []
    for start in (-9.0, -5.5):
        x = np.arange(start, 1.0 + 1e-9, 8 / 99)
        s = suggest(10.0**x, ideal_loss(x))
        check_invariants(s, 10.0**x)
        assert s.valley > 1.5 * s.steep
        valleys.append(s.valley)
    assert_near(valleys[0], valleys[1], 2.5)


def test_short_curve_keeps_enough_points() -> None:
    x = np.linspace(-7, 1, 12)
    s = suggest(10.0**x, ideal_loss(x))
    check_invariants(s, 10.0**x)
    assert_near(s.steep, 1e-3, 10)
    assert s.low <= s.lr <= s.high and s.lr == sorted(s.rules.values())[1]


def test_unsorted_input_is_sorted() -> None:
    order = np.random.default_rng(1).permutation(X.size)
    assert suggest(LRS[order], ideal_loss(X)[order]) == clean()


@pytest.mark.parametrize(
    "lrs, losses, match",
    [
        (LRS, np.full(X.size, np.nan), r"usable \(finite\) points"),
        (LRS[:MIN_POINTS - 1], ideal_loss(X)[:MIN_POINTS - 1], r"usable \(finite\) points"),
        (LRS, np.where(np.arange(X.size) % 25 == 0, 1.0, np.inf), r"usable \(finite\) points"),
        (LRS, np.linspace(1.0, 3.0, X.size), "never decreases"),
        (LRS, ideal_loss(X)[:50], "1-D"),
        (np.zeros(X.size), ideal_loss(X), r"usable \(finite\) points"),
    ],
)
def test_value_errors(lrs: np.ndarray, losses: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        suggest(lrs, losses)


def test_early_divergence_keeps_min_points() -> None:
    # Descends over the first 18 steps, then blows up: the stop rule fires 8 points after fastai's
    # 10% warm-up, and skipping 5 more at the end would leave too few, so fewer are skipped.
    loss = np.concatenate([np.linspace(3.0, 1.0, 18), np.full(X.size - 18, 1e3)])
    s = suggest(LRS, loss)
    check_invariants(s, LRS)
    assert LRS[10] <= s.steep <= LRS[10 + MIN_POINTS - 1]
    assert np.isfinite(list(fields(s).values())).all()


def test_immediate_divergence_raises() -> None:
    loss = np.exp(np.linspace(0.0, 12.0, X.size))  # diverges from the first step
    with pytest.raises(ValueError, match="diverges|never decreases"):
        suggest(LRS, loss)


@pytest.mark.parametrize("seed", range(3))
def test_the_smoothed_curve_shown_is_the_one_the_rules_read(seed: int) -> None:
    noisy = ideal_loss(X) + np.random.default_rng(seed).normal(0.0, 0.15, X.size)
    s = suggest(LRS, noisy)
    curve = smoothed_curve(LRS, noisy)
    assert curve.shape == LRS.shape
    assert LRS[int(np.nanargmin(curve))] == pytest.approx(10 * s.minimum)  # "lr at the minimum / 10", as drawn
    slope = np.gradient(curve[np.isfinite(curve)], X[np.isfinite(curve)])
    assert LRS[np.isfinite(curve)][int(np.argmin(slope))] == pytest.approx(s.steep)
    assert np.isnan(curve[: LRS.size // 10]).all()  # the warm-up the rules drop is not drawn as if read
    # fastai's forward average, which lr-find drew before, lags: its minimum lies elsewhere.
    assert LRS[int(np.nanargmin(smooth(noisy)))] > 2 * LRS[int(np.nanargmin(curve))]


def test_a_curve_lowest_before_its_steepest_descent_is_refused_not_read_into_a_range_that_misses_its_suggestion() -> None:
    # A new user's 12-step ramp suggested 0.0123 with a search range of 1e-07 to 5.34e-07: its smoothed loss was
    # lowest at its second point, and its descent further on never went below it.
    lrs = np.logspace(-7, 1, 30)
    losses = np.r_[[1.0] * 3, [0.9] * 4, [1.2] * 10, np.linspace(1.2, 0.95, 8), [0.95, 1.0, 3, 20, 80]]
    with pytest.raises(ValueError, match="cannot be read: its smoothed loss is lowest at lr .* before its steepest descent.*narrow the ramp"):
        suggest(lrs, losses)
