"""The hand-off: a calibrated rate that one lucky trial cannot set (issue 21), and studies stored before keep theirs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner.errors import SpecError
from tuner.inputs.spec import load_spec
from tuner.report.lr_figures import plot_lr_sensitivity
from tuner.report.runs import load_stages
from tuner.report.words import lr_diagnosis
from tuner.study.handoff import hand_off_lr
from tuner.study.rate_rule import RULES, binomial_noise, choose_rate, rows_behind
from tuner.study.stage_studies import check_stored_settings
from tuner.study.stored import CONTRACT_VERSION_ATTR, HANDOFF_ATTR

V1_SPEC = Path(__file__).resolve().parent / "data" / "contract_v1" / "contract_v1.toml"


def _sweep(rng: np.random.Generator, n: int, centre: float, low: float = -5.0, high: float = 0.0) -> np.ndarray:
    """log10 rates as TPE samples them: half spread over the range, half gathered near the best."""
    return np.concatenate([rng.uniform(low, high, n // 2), np.clip(rng.normal(centre, 0.6, n - n // 2), low, high)])


# --- the rule on synthetic sweeps --------------------------------------------------------------------------

# Each smoothed rule, as stages.lr.handoff asks for it: "robust" (contract 3-5), "basin" (6-7), "backed" (8 on).
RULE_ARGS = {"robust": {}, "basin": {"within_noise": True}, "backed": {"within_noise": True, "backed": True}}
EVERY_RULE = pytest.mark.parametrize("rule", list(RULE_ARGS))


@EVERY_RULE
def test_a_clean_u_hands_on_a_rate_within_a_quarter_decade_of_its_minimum(rule: str) -> None:
    x = np.linspace(-5, 0, 31)  # evenly spread, no noise
    choice = choose_rate(10 ** x, (x + 2.3) ** 2 / 4 + 0.1, [False] * len(x), **RULE_ARGS[rule])
    assert choice.rule == rule
    assert abs(math.log10(choice.rate) + 2.3) <= 0.25
    for seed in range(20):  # as a sampler spreads them, with noise
        rng = np.random.default_rng(seed)
        x = _sweep(rng, 30, -2.3)
        choice = choose_rate(10 ** x, (x + 2.3) ** 2 / 4 + 0.1 + rng.normal(0, 0.02, len(x)), [False] * len(x), **RULE_ARGS[rule])
        assert abs(math.log10(choice.rate) + 2.3) <= 0.25, seed
        low, high = choice.basin
        assert low <= choice.rate <= high


@EVERY_RULE
def test_an_asymmetric_basin_hands_on_a_rate_on_its_shallow_side(rule: str) -> None:
    # Shallow towards small rates, a steep rise towards large ones: a rate just below the minimum
    # is safe; one just above it is not. The rule leans to the shallow side, not past the minimum.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = _sweep(rng, 30, -1.7)
        y = np.where(x < -1.5, 0.2 + 0.05 * (-1.5 - x), 0.2 + 1.5 * (x + 1.5)) + rng.normal(0, 0.01, len(x))
        choice = choose_rate(10 ** x, y, [False] * len(x), **RULE_ARGS[rule])
        assert -2.3 <= math.log10(choice.rate) <= -1.5, seed
        true_value = 0.2 + 0.05 * (-1.5 - math.log10(choice.rate))
        assert true_value <= 0.2 + 0.05  # within the basin's depth of the true minimum


def _true_jagged(log_lr: np.ndarray | float) -> np.ndarray:
    """A broad floor of 0.3 from 10**-2.5 to 10**-1.5, rising to chance (0.9) on both sides."""
    away = np.abs(np.asarray(log_lr) + 2)
    return np.clip(0.3 + 0.25 * away ** 2 * (away > 0.5), 0, 0.9)


@EVERY_RULE
def test_a_jagged_u_with_one_lucky_spike_hands_on_the_broad_basin(rule: str) -> None:
    floors = []
    for n in (16, 24):
        for seed in range(20):
            rng = np.random.default_rng(seed)
            x = np.sort(_sweep(rng, n, -2.0, low=-4.0))
            y = _true_jagged(x) + rng.normal(0, 0.04, n)
            lucky = int(np.argmin(np.abs(x + 0.7)))
            y[lucky] = 0.1  # one trial far better than its neighbours (0.6 .. 0.9), close to the wall
            choice = choose_rate(10 ** x, y, x > -0.3, **RULE_ARGS[rule])
            assert abs(math.log10(choice.rate) - x[lucky]) > 0.25, (n, seed)  # not the lucky trial's rate
            assert not choice.basin[0] <= 10 ** x[lucky] <= choice.basin[1], (n, seed)
            floors.append(float(_true_jagged(math.log10(choice.rate))))
    # On the broad floor, or at its rim when the lucky trial's neighbours are too few to outvote it.
    assert max(floors) < 0.45 and np.mean(np.array(floors) <= 0.31) >= 0.9


def test_a_one_trial_stage_hands_on_exactly_that_trials_rate() -> None:
    choice = choose_rate([0.0123], [0.31], [False])
    assert choice.rate == 0.0123 and choice.rule == "only trial"
    assert choice.basin == (0.0123, 0.0123) and choice.curve == ()


def test_few_trials_hand_on_the_best_one_and_say_why() -> None:
    choice = choose_rate([1e-3, 1e-2, 1e-1, 0.5], [0.5, 0.2, 0.3, math.nan], [False, False, False, True])
    assert choice.rate == 1e-2 and choice.rule == "best trial"
    assert "too few" in choice.why
    only = choose_rate([1e-3, 0.3, 0.6], [0.4, math.nan, math.nan], [False, True, True])
    assert only.rate == 1e-3 and only.rule == "best trial" and "only one" in only.why
    with pytest.raises(ValueError, match="did not diverge"):
        choose_rate([0.3, 0.6], [math.nan, math.nan], [True, True])


def test_a_sparse_sweep_hands_on_the_minimum_of_its_smoothed_curve_and_says_why() -> None:
    x = np.arange(-5.0, 0.5, 1.0)  # a decade apart: no ±0.25-decade window holds 3 trials
    choice = choose_rate(10 ** x, (x + 2) ** 2 / 4 + 0.1, [False] * len(x))
    assert choice.rule == "fitted minimum" and "window" in choice.why
    assert abs(math.log10(choice.rate) + 2) <= 0.5
    narrow = np.linspace(-2.2, -1.9, 6)  # all within less than half a decade
    choice = choose_rate(10 ** narrow, (narrow + 2) ** 2, [False] * 6)
    assert choice.rule == "fitted minimum" and "less than 0.5 decade" in choice.why


def test_diverged_trials_stand_as_the_us_right_wall() -> None:
    # Falling all the way to where the rates diverge: without the wall the edge next to divergence
    # would look best; with the wall the rule keeps a safe distance from it.
    x = np.linspace(-4, -1, 19)
    y = 0.9 - 0.2 * (x + 4)  # 0.9 .. 0.3, still falling at 0.1
    walls = np.linspace(-0.9, 0, 6)
    lrs = np.concatenate([10 ** x, 10 ** walls])
    values = np.concatenate([y, np.full(len(walls), np.nan)])
    diverged = np.concatenate([np.zeros(len(x), bool), np.ones(len(walls), bool)])
    with_wall = choose_rate(lrs, values, diverged)
    without = choose_rate(10 ** x, y, [False] * len(x))
    assert math.log10(without.rate) >= -1.3  # at the edge: nothing says the ground ends there
    assert math.log10(with_wall.rate) < math.log10(without.rate)
    assert math.log10(with_wall.basin[1]) < -0.9  # the basin stops short of the diverged rates
    curve = dict(with_wall.curve)
    assert max(v for x0, v in curve.items() if x0 >= -0.5) == pytest.approx(0.9, abs=0.05)  # the worst value seen


def test_the_noise_is_binomial_for_an_error_rate_on_known_rows_else_the_residuals_mad() -> None:
    assert rows_behind([3 / 36, 5 / 36, 11 / 36, 0.5, 1 / 36, 7 / 36]) == 36
    assert rows_behind(np.float32([k / 360 for k in (7, 19, 40, 101, 3)]).tolist()) == 360
    assert rows_behind([0.31415, 0.2718, 0.577, 0.1414]) is None  # an RMSE, not wrong rows / rows
    x = np.linspace(-4, 0, 31)
    y = (x + 2) ** 2 / 8 + 0.1
    binomial = choose_rate(10 ** x, y, [False] * 31, error_rows=360)
    assert binomial.noise == pytest.approx(binomial_noise(min(v for _, v in binomial.curve), 360), rel=0.05)
    assert "360 validation rows" in binomial.noise_basis
    mad = choose_rate(10 ** x, y + np.random.default_rng(0).normal(0, 0.02, 31), [False] * 31)
    assert "MAD" in mad.noise_basis and 0.005 < mad.noise < 0.05


def test_the_record_is_small_json() -> None:
    x = np.linspace(-5, 0, 40)
    record = choose_rate(10 ** x, (x + 2) ** 2, [False] * 40).as_record()
    text = json.dumps(record)
    assert len(text) < 3000
    assert set(record) >= {"rule", "lr", "basin", "noise", "curve", "candidates"}
    assert record["rule"] in RULES and len(record["curve"]) <= 41 and 1 <= len(record["candidates"]) <= 3


def test_an_unknown_handoff_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"stages\.lr\.handoff.*robust, best"):
        tuner.spec_from_dict({"name": "x", "stages": {"lr": {"handoff": "lucky"}}})


# --- a study, end to end ---------------------------------------------------------------------------------

SWEEP_SPEC = {
    "name": "sweep",
    "seed": 0,
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 2, "batch_size": 32},
    "stages": {"lr": {"trials": 8, "lr_min": 1e-3, "lr_max": 1.0}, "shape": {"trials": 1, "width": [4, 8], "depth": [1, 1]}},
}


class _Said(tuner.Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_a_study_stores_how_its_rate_was_chosen_and_says_it(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    said = _Said()
    result = tuner.run_study(tuner.spec_from_dict(SWEEP_SPEC), storage=storage, device="cpu", reporter=said)
    lr = optuna.load_study(study_name="sweep/lr", storage=storage)
    shape = optuna.load_study(study_name="sweep/shape", storage=storage)
    attrs = lr.user_attrs
    record = attrs[HANDOFF_ATTR]
    complete = [t for t in lr.trials if t.state == TrialState.COMPLETE]
    assert attrs["best_trial"] == min(complete, key=lambda t: t.value).number  # still the best observed trial
    assert attrs["best_lr"] == record["lr"] == shape.user_attrs["lr"] == result.best_lr
    assert attrs["handoff_trials"] == 8 and record["n_points"] == 8
    assert record["rule"] in ("basin", "fitted minimum")  # 8 trials: the curve decides
    low, high = record["basin"]
    assert low <= result.best_lr <= high and 1e-3 <= low <= high <= 1.0
    assert len(json.dumps(record)) < 3000 and len(record["curve"]) <= 41
    assert all(t.user_attrs["lr"] == result.best_lr for t in shape.trials)
    message = next(m for m in said.messages if m.startswith("stage 'lr' calibrated the learning rate"))
    assert f"rule '{record['rule']}'" in message and f"basin {low:.3g} to {high:.3g}" in message
    # The report says the same, where it describes the rate handed on.
    stages = load_stages("sweep", storage)
    sentences = " ".join(lr_diagnosis(stages["lr"], result.best_lr, "validation error"))
    assert f"rule '{record['rule']}'" in sentences and f"spans {low:.2g} to {high:.2g}" in sentences
    fig = plot_lr_sensitivity(stages["lr"].runs, result.best_lr, "validation error", record)
    _, labels = fig.axes[0].get_legend_handles_labels()
    assert f"basin {low:.2g} to {high:.2g} (within noise)" in labels and any(label.startswith("smoothed") for label in labels)


def test_a_basin_that_reaches_the_top_of_the_searched_rates_is_said(tmp_path: Path) -> None:
    # A new user's lr_range = "auto" searched 0.0032 to 0.037 and handed on 0.0325, its basin up to the top:
    # better rates may lie above, and nothing said so. A sweep up to rates that diverge says nothing.
    said = _Said()
    low = {**SWEEP_SPEC, "name": "low", "stages": {**SWEEP_SPEC["stages"], "lr": {"trials": 8, "lr_min": 1e-5, "lr_max": 3e-4}}}
    tuner.run_study(tuner.spec_from_dict(low), storage=f"sqlite:///{tmp_path / 'low.db'}", device="cpu", reporter=said)
    assert ("stage 'lr': its basin reaches the top of the rates it searched (0.0003): the best rate may lie above it; "
            "to see, widen [stages.lr] lr_max and run under a new name (--name NEW)") in said.messages
    wide = _Said()
    walled = {**SWEEP_SPEC, "name": "walled", "stages": {**SWEEP_SPEC["stages"], "lr": {"trials": 8, "lr_min": 1e-3, "lr_max": 100.0}}}
    tuner.run_study(tuner.spec_from_dict(walled), storage=f"sqlite:///{tmp_path / 'wide.db'}", device="cpu", reporter=wide)
    assert any(t.user_attrs.get("diverged") for t in optuna.load_study(study_name="walled/lr", storage=f"sqlite:///{tmp_path / 'wide.db'}").trials)
    # One trial at a rate pinned as best.toml pins it: no basin, no range, nothing to say (review: said on every best.toml).
    pinned = {**SWEEP_SPEC, "name": "pinned", "stages": {**SWEEP_SPEC["stages"], "lr": {
        "trials": 1, "lr_min": 0.05, "lr_max": math.nextafter(0.05, 1.0)}}}
    tuner.run_study(tuner.spec_from_dict(pinned), storage=f"sqlite:///{tmp_path / 'pinned.db'}", device="cpu", reporter=wide)
    assert not [m for m in wide.messages if "basin reaches" in m]
    assert not [m for m in wide.messages if "basin reaches" in m]


def test_a_study_made_before_the_rule_hands_on_its_best_trial(tmp_path: Path) -> None:
    # Made under contract 2: stage lr done, no hand-off yet; this tuner's default is "robust".
    storage = f"sqlite:///{tmp_path / 'before.db'}"
    spec = tuner.spec_from_dict({**SWEEP_SPEC, "stages": {**SWEEP_SPEC["stages"], "lr": {
        **SWEEP_SPEC["stages"]["lr"], "handoff": "best"}}})  # as contract 2 made it: "best", not stored
    tuner.run_study(spec, storage=storage, device="cpu")
    optuna.delete_study(study_name="sweep/shape", storage=storage)
    lr = optuna.load_study(study_name="sweep/lr", storage=storage)
    lr.set_user_attr(CONTRACT_VERSION_ATTR, 2)
    assert "handoff" not in lr.user_attrs["settings"]["stages"]["lr"]

    notes: list[str] = []
    resumed = check_stored_settings(tuner.spec_from_dict(SWEEP_SPEC), optuna.storages.RDBStorage(storage), notes.append)
    assert resumed.stages.lr.handoff == "best"
    assert any("stages.lr.handoff" in note for note in notes)
    rate = hand_off_lr(resumed, optuna.storages.RDBStorage(storage))
    best = min((t for t in lr.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert rate == best.params["lr"]
    assert optuna.load_study(study_name="sweep/lr", storage=storage).user_attrs[HANDOFF_ATTR]["rule"] == "best trial"


def test_the_stored_v1_study_hands_on_as_it_was_made_with_best(tmp_path: Path) -> None:
    copy = tmp_path / "v1.db"
    shutil.copyfile(V1_SPEC.parent / "contract_v1.db", copy)
    storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
    stored_rate = optuna.load_study(study_name="contract1/shape", storage=storage).user_attrs["lr"]
    spec = check_stored_settings(load_spec(V1_SPEC), storage)
    assert spec.stages.lr.handoff == "best"
    assert hand_off_lr(spec, storage) == stored_rate  # handed on before: read back, never chosen anew
    # Its hand-off undone, it chooses again as it was made: the best trial's rate, the same one.
    optuna.delete_study(study_name="contract1/shape", storage=storage)
    assert hand_off_lr(spec, storage) == stored_rate
    lr = optuna.load_study(study_name="contract1/lr", storage=storage)
    assert lr.user_attrs[HANDOFF_ATTR]["why"] == 'stages.lr.handoff = "best"'


# Stage lr of issue 21's adding_long benchmark, seed 1 (LSTM, Adam, adding problem at 50 steps, 15 epochs):
# (lr, final validation RMSE); the rate 0.80 diverged. The two best rates sit next to the cliff (0.158: 0.339).
ADDING_SEED_1 = [
    (1.42e-05, 0.4015), (1.95e-05, 0.4011), (7.19e-05, 0.3976), (8.30e-05, 0.3970), (4.61e-04, 0.3908),
    (8.20e-04, 0.3873), (1.069e-03, 0.3797), (3.297e-03, 0.2614), (4.303e-03, 0.2055), (8.178e-03, 0.2523),
    (1.0991e-02, 0.2469), (1.3450e-02, 0.1044), (3.1266e-02, 0.1992), (4.7458e-02, 0.2608), (6.2039e-02, 0.1314),
    (0.13012, 0.0721), (0.13517, 0.0426), (0.15798, 0.3393), (0.44709, 0.4024),
]


def test_the_basin_rule_hands_on_a_rate_within_noise_of_the_smoothed_minimum_next_to_a_cliff() -> None:
    lrs = [lr for lr, _ in ADDING_SEED_1] + [0.802]
    values = [v for _, v in ADDING_SEED_1] + [math.nan]
    diverged = [False] * len(ADDING_SEED_1) + [True]
    anywhere = choose_rate(lrs, values, diverged, wall=0.4115)
    basin = choose_rate(lrs, values, diverged, wall=0.4115, within_noise=True)
    fitted = dict(anywhere.curve)

    def smoothed(rate: float) -> float:
        return fitted[min(fitted, key=lambda x: abs(x - math.log10(rate)))]

    lowest = min(fitted.values())
    # "robust" (contract 3-4): the flat shoulder 0.019, smoothed more than 3 noise units above the minimum.
    assert anywhere.rule == "robust" and 0.01 < anywhere.rate < 0.03
    assert smoothed(anywhere.rate) > lowest + 3 * anywhere.noise
    # "basin": a rate whose smoothed value is within one noise unit of the best, among the best trials' rates.
    assert basin.rule == "basin" and 0.05 < basin.rate < 0.14 and basin.noise == anywhere.noise
    assert smoothed(basin.rate) <= lowest + basin.noise + 1e-9
    assert basin.basin[0] <= basin.rate <= basin.basin[1] and basin.basin[0] < basin.basin[1]
    assert "within one noise unit of the best" in RULES["basin"]
    # The same words are said for a score (maximized, read turned): never "minimum" or "lowest".
    assert not any(word in said for said in RULES.values() for word in ("minimum", "lowest", "highest"))


def test_the_basin_rule_changes_nothing_where_the_broadest_window_already_lies_in_the_basin() -> None:
    x = np.linspace(-4, 0, 41)
    values = (x + 2) ** 2 / 4
    assert choose_rate(10 ** x, values, [False] * 41, within_noise=True).rate == choose_rate(10 ** x, values, [False] * 41).rate


# The bundled digits_optimizers study's SGD sweep (12 trials, 10 epochs, 360 validation rows; stored values):
# rate, final error, diverged. Its two best trials sit side by side below a divergence wall.
DIGITS_SGD = [(1.107e-05, 0.8889, False), (1.293e-05, 0.8889, False), (1.705e-05, 0.8889, False),
              (8.921e-05, 0.8556, False), (0.0001297, 0.8333, False), (0.0003519, 0.6889, False),
              (0.001369, 0.3528, False), (0.002447, 0.2139, False), (0.005614, 0.0806, False),
              (0.0375, 0.0306, False), (0.0578, 0.0333, False), (0.6723, math.nan, True)]


def test_the_backed_rule_keeps_two_neighbouring_best_trials_the_basin_rule_rejected() -> None:
    lrs, values, diverged = (list(column) for column in zip(*DIGITS_SGD))
    args = {"wall": 0.8972, "error_rows": 360}  # the untrained error stands as the wall
    basin = choose_rate(lrs, values, diverged, within_noise=True, **args)
    backed = choose_rate(lrs, values, diverged, within_noise=True, backed=True, **args)
    # Each of the two best was judged by the curve of the others, which the wall pulled up: both lost their
    # weight, and "basin" handed on 0.0056, where the error was 0.081, not 0.031.
    assert basin.rate < 0.006
    assert 0.0375 <= backed.rate <= 0.0578 and backed.basin[0] <= 0.0375 and backed.rule == "fitted minimum"
    # Fallen back to the curve's best point (no 0.25-decade window holds 3 trials), on the backed curve: the
    # record says which curve, where the rule's name cannot.
    assert backed.as_record()["backed"] is True and "backed" not in basin.as_record()
    from optuna.distributions import FloatDistribution

    from tuner.study.handoff import _in_words
    best = optuna.trial.create_trial(params={"lr": 0.0375}, distributions={"lr": FloatDistribution(1e-5, 1, log=True)},
                                     value=0.0306)
    assert "rule 'fitted minimum': the best point of the smoothed curve (on the curve of rule 'backed')" in _in_words(backed, best)
    assert "rule 'backed'" not in _in_words(basin, best)


def test_the_backed_curve_never_dips_below_the_trials_near_a_rate() -> None:
    # Three good trials side by side at the bottom of a sharp U, and a gap of 1.5 decades to their left: a
    # local fit that keeps all three runs on down into the gap, where no trial is (a sweep of a first version
    # of scripts/rate_rule_sim.py: handed on 10**-2.03 there, true error 0.44 against 0.012 at the minimum).
    x = np.array([-4.77, -4.73, -3.94, -3.73, -3.63, -3.04, -1.47, -1.44, -1.25, -1.18, -0.75, -0.45])
    y = np.array([0.919, 0.914, 0.906, 0.914, 0.906, 0.878, 0.042, 0.036, 0.017, 0.128, 0.850, math.nan])
    diverged = np.arange(len(x)) == len(x) - 1
    choice = choose_rate(10 ** x, y, diverged, error_rows=360, within_noise=True, backed=True)
    assert -1.5 <= math.log10(choice.rate) <= -1.2  # among the trials that learned, not in the gap
    learned, values = x[~diverged], y[~diverged]
    for at, fitted in choice.curve:
        near = values[np.abs(learned - at) <= 0.25]
        # What the trials show there: the best of those near it, or in a gap the line between the two that bound it.
        shown = near.min() if len(near) else float(np.interp(at, learned, values))
        assert fitted >= shown - 1e-9, (at, fitted, shown)


def test_in_a_gap_the_backed_curve_follows_the_line_between_the_trials_that_bound_it() -> None:
    # tests/data/contract_v7's sweep (SGD on digits, 12 trials): a decade between 0.0057 (0.081) and 0.072
    # (0.031). Floored at the better of the two bounding trials, the curve dipped to 0.031 in the middle of
    # that gap and handed on 0.0075, where no trial had trained; floored at the line between them, it does not.
    lrs = [1.127e-05, 2.407e-05, 7.968e-05, 0.0001288, 0.001216, 0.001513, 0.005547, 0.005675, 0.07188, 0.2329,
           0.2913, 0.6841]
    values = [0.8889, 0.8833, 0.8611, 0.8333, 0.4111, 0.3194, 0.0833, 0.0806, 0.0306, 0.0611, 0.0583, math.nan]
    diverged = [False] * 11 + [True]
    choice = choose_rate(lrs, values, diverged, wall=0.8972, error_rows=360, within_noise=True, backed=True)
    # Beside the best trial, not mid-gap: the floor is flat around it, and a flat run hands on its middle.
    assert abs(math.log10(choice.rate) - math.log10(0.07188)) <= 0.1
    x, y = np.log10(lrs[:11]), np.array(values[:11])
    middle = [(at, fitted) for at, fitted in choice.curve if -2.0 < at < -1.4]  # more than 0.25 decade from both
    assert middle and all(fitted >= float(np.interp(at, x, y)) - 1e-9 for at, fitted in middle)


def test_a_rate_tried_twice_counts_at_its_best_value_whatever_the_order_of_the_trials() -> None:
    rng = np.random.default_rng(4)
    x = np.round(_sweep(rng, 20, -2.0), 1)  # rates on a 0.1-decade grid: several tried twice
    assert len(np.unique(x)) < len(x)
    y = (x + 2.0) ** 2 / 4 + 0.1 + rng.normal(0, 0.02, len(x))
    order = rng.permutation(len(x))
    one = choose_rate(10 ** x, y, [False] * len(x), within_noise=True, backed=True)
    other = choose_rate(10 ** x[order], y[order], [False] * len(x), within_noise=True, backed=True)
    assert one.rate == other.rate and one.basin == other.basin
    assert np.allclose(np.array(one.curve), np.array(other.curve), rtol=1e-12)  # the sums' order aside
    # The floor itself, where duplicates bound a gap or end the range: their best value, in either order.
    from tuner.study.rate_rule import _floor
    at, zero = np.array([-6.0, -3.5]), np.zeros(2)
    for y_twice in ([0.5, 0.1, 0.3], [0.1, 0.5, 0.3]):
        floored = _floor(np.array([-4.0, -4.0, -2.0]), np.array(y_twice), at, zero)
        assert floored == pytest.approx([0.1, 0.15])  # beyond the end: 0.1; mid-gap: the line from 0.1 to 0.3
