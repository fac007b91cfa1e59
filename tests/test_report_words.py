"""The diagnosis in words (tuner.report.words) on synthetic learning curves."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.report.words import EXPLODE_RISE, classify_curve, curve_stats, describe_lr_sweep, divergence_onset

EPOCHS = 20
T = np.arange(EPOCHS, dtype=float)


def decay(rate: float = 0.15, floor: float = 0.1) -> list[float]:
    return (floor + (1.0 - floor) * np.exp(-rate * T)).tolist()


def flat(seed: int = 0, noise: float = 0.003) -> list[float]:
    rng = np.random.default_rng(seed)
    return (1.0 - 0.001 * T + noise * rng.standard_normal(EPOCHS)).tolist()


def zigzag(amp: float = 0.15) -> list[float]:
    return (np.asarray(decay()) + amp * (-1.0) ** T).tolist()


def test_smooth_decay_is_decaying() -> None:
    assert classify_curve(decay()) == "decaying"
    s = curve_stats(decay())
    assert s.rel_improvement > 0.8 and s.flip_fraction == 0.0
    assert s.oscillation_score == pytest.approx(1.0)


def test_flat_noisy_curve_is_plateau() -> None:
    for seed in range(5):
        assert classify_curve(flat(seed)) == "plateau"


def test_zigzag_around_decay_is_oscillating() -> None:
    assert classify_curve(zigzag()) == "oscillating"
    # the same trend with small ripples is still a decay
    assert classify_curve(zigzag(amp=0.01)) == "decaying"


@pytest.mark.parametrize(
    "curve",
    [
        (1.3 ** T).tolist(),  # geometric rise
        decay()[:8] + [math.nan],  # ends in NaN (stopped early)
        decay()[:5] + [math.inf],
        decay()[:10] + [0.6, 0.9, 1.2],  # rebounds far above its minimum
    ],
)
def test_exploding(curve: list[float]) -> None:
    assert classify_curve(curve) == "exploding"


def test_exploding_stats() -> None:
    s = curve_stats(decay()[:8] + [math.nan, 3.0])
    assert not s.finite and s.n_finite == 8 and s.n_epochs == 10
    assert curve_stats((1.3 ** T).tolist()).blowup_ratio >= EXPLODE_RISE


def test_empty_and_single_point() -> None:
    # documented: no evidence of learning -> plateau; a lone non-finite value explodes
    assert classify_curve([]) == "plateau"
    assert classify_curve([0.7]) == "plateau"
    assert classify_curve([math.nan]) == "exploding"
    assert curve_stats([]).n_epochs == 0


def sweep() -> tuple[list[float], list[list[float]]]:
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5, 1.0]
    curves: list[list[float]] = []
    for lr in lrs:
        if lr >= 0.3:
            curves.append((1.4 ** T).tolist())
        elif lr < 1e-3:
            curves.append(flat())
        else:
            curves.append(decay(rate=0.05 + lr))
    curves[3] = decay()[:6] + [math.nan]  # lr 3e-3: one noisy explosion
    return lrs, curves


def test_divergence_onset_ignores_single_noisy_run() -> None:
    lrs, curves = sweep()
    onset = divergence_onset(lrs, curves)
    assert onset == pytest.approx(0.3)
    # a noisy explosion right below the boundary (0.1, with 0.2 healthy) is a tie: still 0.3
    curves[3], curves[6] = decay(), (1.4 ** T).tolist()
    assert divergence_onset(lrs, curves) == pytest.approx(0.3)


def test_divergence_onset_flags_and_none() -> None:
    lrs, curves = sweep()
    healthy = [decay() for _ in lrs]
    assert divergence_onset(lrs, healthy) is None
    flags = [lr >= 0.01 for lr in lrs]
    onset = divergence_onset(lrs, healthy, diverged=flags)
    assert onset == pytest.approx(min(lr for lr in lrs if lr >= 0.01))
    # a single exploding run among healthy ones is noise, not an onset
    lone = [i == 4 for i in range(len(lrs))]
    assert divergence_onset(lrs, [flat()] + healthy[1:], diverged=lone) is None


def test_a_run_at_zero_error_after_one_epoch_that_misses_one_row_later_has_not_exploded() -> None:
    # A new user's wine study: a validation error of 0 at epoch 1, then one row of 36 missed. Read against its first
    # epoch alone (0) the rise was "a blow-up"; against its untrained error (0.6) it is one row.
    curve = [0.0, 0.028, 0.028, 0.028, 0.028]
    assert classify_curve(curve) == "exploding"  # no untrained value known (a study stored before it): as before
    assert classify_curve(curve, untrained=0.6) == "decaying"
    assert curve_stats(curve, untrained=0.6).rel_improvement == pytest.approx((0.6 - 0.028) / 0.6)
    lrs = [0.001, 0.01, 0.03, 0.07]
    curves = [[0.6, 0.5, 0.4, 0.3, 0.2], [0.3, 0.1, 0.05, 0.03, 0.03], [0.05, 0.0, 0.0, 0.0, 0.0], curve]
    assert divergence_onset(lrs, curves) == pytest.approx(0.07)
    assert divergence_onset(lrs, curves, untrained=[0.6] * 4) is None
    assert "No run diverged" in " ".join(describe_lr_sweep(lrs, curves, 0.03, [False] * 4, [0.6] * 4))
    # A real blow-up still is one, its untrained value known: 0.6 -> 0.1 -> 0.9.
    assert classify_curve([0.3, 0.1, 0.5, 0.9, 0.9], untrained=0.6) == "exploding"


def test_describe_lr_sweep() -> None:
    lrs, curves = sweep()
    chosen = lrs[5]  # 3e-2, a decaying run
    lines = describe_lr_sweep(lrs, curves, chosen)
    text = " ".join(lines)
    assert f"{chosen:.1e}" in lines[0] and "decays steadily" in lines[0]
    pct = round(100 * curve_stats(curves[5]).rel_improvement)
    assert f"\u2212{pct}% over {EPOCHS} epochs" in lines[0]
    onset = divergence_onset(lrs, curves)
    assert f"from {onset:.1e} upward diverge" in text
    assert f"up to {lrs[1]:.1e} barely learn in {EPOCHS} epochs (plateau)" in text
    curves[7] = flat()  # a plateau above healthy runs is not part of the low-LR group
    assert f"up to {lrs[1]:.1e} barely" in " ".join(describe_lr_sweep(lrs, curves, chosen))


def test_describe_nearest_trial_and_exploding_choice() -> None:
    lrs, curves = sweep()
    lines = describe_lr_sweep(lrs, curves, chosen_lr=0.9)
    assert "explodes" in lines[0] and f"(nearest trial: {lrs[-1]:.1e})" in lines[0]
    assert any("diverging range" in line for line in lines)


def test_a_shape_stage_worse_than_its_first_stage_is_explained_and_points_to_stage_lrs_winner() -> None:
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from tuner.report.runs import Run, StageRuns
    from tuner.report.words import shape_diagnosis

    params = {"lr": 0.01, "width": 64, "depth": 1, "schedule": "constant", "decay": 1.0}
    stage = StageRuns("shape", SimpleNamespace(user_attrs={}), [],  # type: ignore[arg-type]
                      [Run(0, TrialState.COMPLETE, params, 0.79, [0.9, 0.85, 0.79], [], 1.0, False)])
    worse = " ".join(shape_diagnosis(stage, 0.27, "val_error"))
    assert "higher than the best small network of stage lr (0.27)" in worse
    assert "stage lr's small network: `tuner best` trains it" in worse and "--stage shape" in worse
    better = " ".join(shape_diagnosis(stage, 0.95, "val_error"))
    assert "lower than the best small network" in better and "tuner best" not in better


def test_the_shape_words_count_pruned_trials_and_keep_a_schedule_whose_trials_were_all_pruned() -> None:
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from tuner.report.runs import Run, StageRuns
    from tuner.report.words import shape_diagnosis

    def run(number: int, schedule: str, value: float | None) -> Run:
        params = {"lr": 0.01, "width": 64, "depth": 1, "schedule": schedule, "decay": 0.5}
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        return Run(number, state, params, value, [0.9, 0.5], [], 1.0, False, trained_lr=0.01)

    stage = StageRuns("shape", SimpleNamespace(user_attrs={}), [],  # type: ignore[arg-type]
                      [run(0, "constant", 0.3), run(1, "exponential", 0.2), run(2, "step", None), run(3, "constant", None)])
    words = " ".join(shape_diagnosis(stage, None, "val_error"))
    assert "Best of 2 complete shapes (2 more were pruned)" in words
    assert "trained at lr 0.01;" in words  # no lr_scale searched: the calibrated rate itself
    assert "Best per schedule: exponential 0.2, constant 0.3, step none complete (only pruned trials)." in words


def test_the_best_shapes_curve_is_read_against_its_untrained_value() -> None:
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from tuner.report.runs import Run, StageRuns
    from tuner.report.words import shape_diagnosis

    params = {"lr": 0.01, "width": 64, "depth": 1, "schedule": "constant", "decay": 1.0}
    curve = [0.0, 0.028, 0.028, 0.028]  # perfect after one epoch, then one validation row of 36 missed

    def words(untrained: float | None) -> str:
        run = Run(0, TrialState.COMPLETE, params, 0.028, curve, [], 1.0, False, untrained=untrained)
        return " ".join(shape_diagnosis(StageRuns("shape", SimpleNamespace(user_attrs={}), [], [run]),  # type: ignore[arg-type]
                                        None, "val_error"))

    assert "blows up" in words(None)  # stored before the untrained value was: read as ever
    assert "blows up" not in words(0.6) and "decays steadily" in words(0.6)


def test_a_maximized_score_of_ones_own_loop_that_dips_a_little_has_not_diverged() -> None:
    # A new user's loop reported accuracy (no epoch 0): the two largest rates ended at 0.967 and 0.956 after a
    # best of 1.0, and the report said "Runs with learning rates from 7.2e-01 upward diverge": read from their
    # first epoch, a gap to the best score of 0.022 that grew to 0.044 had "exploded".
    from optuna.trial import TrialState

    from tuner.report.runs import Run, as_errors, untrained_errors

    curves = {2.5e-5: [0.60, 0.62, 0.63, 0.63, 0.64, 0.64], 1e-3: [0.90, 0.93, 0.95, 0.96, 0.96, 0.97],
              3e-2: [0.95, 0.97, 0.98, 0.98, 0.99, 0.99], 0.72: [0.978, 0.956, 1.0, 0.934, 0.978, 0.956],
              0.82: [0.967, 0.989, 0.945, 0.978, 0.934, 0.967]}
    runs = [Run(i, TrialState.COMPLETE, {"lr": lr}, c[-1], c, [], 1.0, False) for i, (lr, c) in enumerate(curves.items())]
    gaps, starts = as_errors([r.curve for r in runs], True), untrained_errors(runs, True)
    assert starts == [pytest.approx(0.4)] * len(runs)  # the largest gap the runs show (1.0 - 0.60) stands in
    assert divergence_onset(list(curves), gaps, [False] * len(runs), starts) is None
    # A score that collapses still reads as diverged, from the same stand-in.
    collapsed = [*runs[:4], Run(4, TrialState.COMPLETE, {"lr": 0.82}, 0.1, [0.97, 0.6, 0.3, 0.1, 0.1, 0.1], [], 1.0, False)]
    assert divergence_onset(list(curves), as_errors([r.curve for r in collapsed], True), [False] * 5,
                            untrained_errors(collapsed, True)) == 0.82


def test_a_verdict_that_could_not_judge_ends_its_sentence_before_what_it_did_not_judge() -> None:
    from tuner.analysis.importance import AuditVerdict

    verdict = AuditVerdict("s/audit", None, 7, None, None, None, reason="7 complete trials; at least 10 are needed",
                           not_judged="decay and its interaction with lr")
    assert verdict.message.endswith("at least 10 are needed. Not judged: decay and its interaction with lr.")


def test_the_shape_words_say_equal_and_show_the_momentum_it_trained_with() -> None:
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from tuner.report.runs import Run, StageRuns
    from tuner.report.words import shape_diagnosis

    params = {"lr": 0.01, "width": 64, "depth": 1, "schedule": "constant", "decay": 1.0, "one_minus_momentum": 0.86}
    stage = StageRuns("shape", SimpleNamespace(user_attrs={}), [],  # type: ignore[arg-type]
                      [Run(0, TrialState.COMPLETE, params, 0.27, [0.9, 0.5, 0.27], [], 1.0, False)])
    words = " ".join(shape_diagnosis(stage, 0.27, "val_error"))
    assert "That equals the best small network of stage lr (0.27)." in words and "0% higher" not in words
    assert "momentum 0.14" in words and "one_minus_momentum" not in words  # as the summary shows it
    slightly = " ".join(shape_diagnosis(stage, 0.2699, "val_error"))  # worse by 0.04%: said, and why stage lr wins
    assert "That is 0.037% higher than the best small network" in slightly and "`tuner best` trains it" in slightly


def test_a_curve_that_gave_part_of_its_gain_back_is_not_called_steady() -> None:
    from tuner.report.words import decay_words

    # A new user's regression trial: its best epoch was the second, the later ones rose again.
    uneven = curve_stats([11.76, 8.81, 9.17, 9.40, 9.42, 8.87], untrained=14.97)
    assert classify_curve([11.76, 8.81, 9.17, 9.40, 9.42, 8.87], untrained=14.97) == "decaying"
    assert uneven.best_epoch == 2 and uneven.rebound == pytest.approx((9.42 - 8.81) / (14.97 - 8.81))
    assert decay_words(uneven) == "decays, not steadily: one epoch gave 10% of the gain back; its best was epoch 2 of 6"
    # A rise before the best epoch is one too (its best came last here).
    late = curve_stats([10.0, 5.0, 7.0, 4.0])
    assert late.best_epoch == 4 and decay_words(late) == "decays, not steadily: one epoch gave 33% of the gain back; its best was epoch 4 of 4"
    assert decay_words(uneven, rises=True).startswith("rises, not steadily")
    # Noise of a row or two near the end of a curve that learned is still steady.
    noisy = curve_stats([0.3, 0.25, 0.27, 0.24, 0.26], untrained=0.9)
    assert noisy.rebound < 0.05 and decay_words(noisy) == "decays steadily"
    assert curve_stats([0.6, 0.5, 0.4]).rebound == 0.0
