"""Stage 'shape' prunes only once learning has begun: its first rung read from stage lr's curves, and no
decision at a rung where every value still sits within noise of its untrained one (issue 21, item 3)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

import tuner
from tuner.errors import SpecError
from tuner.inputs.spec import spec_from_dict
from tuner.study import pruning
from tuner.study.pruning import FirstRung, UntilLearningPruner, first_rung, noise_unit, spearman
from tuner.study.stage_studies import with_stage_value, with_stored_defaults
from tuner.study.stages import make_pruner, sampler_for, shape_stage


CHANCE = 0.9  # a 10-class task's untrained validation error
ROWS = 500  # validation rows: one binomial noise unit at chance is sqrt(0.09 / 500) = 0.013


def _at_chance(rng: np.random.Generator) -> float:
    return CHANCE + rng.normal(0.0, math.sqrt(CHANCE * (1 - CHANCE) / ROWS))


def _plateau_curves(plateau: int, n_trials: int = 12, epochs: int = 20, seed: int = 0) -> list[list[float]]:
    """Every trial at chance for ``plateau`` epochs, then falling, the faster ones to lower values."""
    rng = np.random.default_rng(seed)
    curves = []
    for i in range(n_trials):
        speed = 0.01 + 0.004 * i
        curves.append([_at_chance(rng) if epoch <= plateau else CHANCE - speed * (epoch - plateau) + rng.normal(0, 0.002)
                       for epoch in range(1, epochs + 1)])
    return curves


# ---- the first rung, on plain lists ---------------------------------------------------------------

def test_curves_at_chance_for_five_epochs_get_a_first_rung_after_the_plateau() -> None:
    curves = _plateau_curves(plateau=5)
    rung = first_rung(curves, [CHANCE] * len(curves), error_rows=ROWS, max_epochs=20)
    assert rung.epoch is not None and rung.epoch > 5, rung
    assert "left their untrained value by epoch" in rung.reason and "Spearman" in rung.reason
    assert rung.noise == pytest.approx(math.sqrt(CHANCE * (1 - CHANCE) / ROWS))
    # Hyperband's rungs from there on lie past the plateau too: the epoch-1 rung is gone.
    assert first_rung(_plateau_curves(plateau=8), [CHANCE] * 12, error_rows=ROWS).epoch > 8


def test_curves_that_learn_at_once_get_an_early_first_rung() -> None:
    curves = [[CHANCE - 0.4 - 0.02 * i - 0.01 * epoch * (1 + i / 10) for epoch in range(1, 21)] for i in range(12)]
    rung = first_rung(curves, [CHANCE] * 12, error_rows=ROWS, max_epochs=20)
    assert rung.epoch is not None and rung.epoch <= 2, rung


def test_an_early_ranking_that_the_last_epoch_reverses_moves_the_rung_later_or_off() -> None:
    # The trials that end best start slowest: at early epochs the ranking is the reverse of the final one.
    def curve(i: int) -> list[float]:
        final, tau = 0.1 + 0.03 * i, 8.0 - 0.7 * i
        return [CHANCE - (CHANCE - final) * (1 - math.exp(-epoch / tau)) for epoch in range(1, 21)]

    crossing = first_rung([curve(i) for i in range(10)], [CHANCE] * 10, error_rows=ROWS, max_epochs=20)
    at_once = first_rung([[CHANCE - 0.4 - 0.02 * i] * 20 for i in range(10)], [CHANCE] * 10, error_rows=ROWS)
    assert crossing.epoch is None or crossing.epoch > 2 * (at_once.epoch or 0), (crossing, at_once)

    # Rankings that never settle until the last epoch: no rung, and the reason says so.
    rng = np.random.default_rng(1)
    shuffled = [[CHANCE - 0.5 + rng.uniform(-0.2, 0.2) for _ in range(20)] for _ in range(10)]
    settled = first_rung(shuffled, [CHANCE] * 10, error_rows=ROWS, max_epochs=20)
    assert settled.epoch is None and "Spearman" in settled.reason


def test_no_rung_without_enough_trials_without_learning_or_below_the_stages_epochs() -> None:
    few = first_rung(_plateau_curves(5)[:4], [CHANCE] * 4, error_rows=ROWS)
    assert few.epoch is None and "only 4 complete" in few.reason
    rng = np.random.default_rng(2)
    flat = [[_at_chance(rng) for _ in range(20)] for _ in range(10)]
    nothing = first_rung(flat, [CHANCE] * 10, error_rows=ROWS)
    assert nothing.epoch is None and "nothing to rank by" in nothing.reason
    late = first_rung(_plateau_curves(plateau=5), [CHANCE] * 12, error_rows=ROWS, max_epochs=6)
    assert late.epoch is None and "not below stage shape's 6 epochs" in late.reason
    # Curves cut short (diverged or pruned in stage lr) and unknown untrained values are handled.
    cut = [*_plateau_curves(5), [CHANCE, None, None]]
    assert first_rung(cut, [CHANCE] * 12 + [None], error_rows=ROWS).epoch == first_rung(
        _plateau_curves(5), [CHANCE] * 12, error_rows=ROWS).epoch
    stand_in = first_rung(_plateau_curves(5), [None] * 12, error_rows=ROWS)
    assert stand_in.epoch is not None and "first epoch stands in" in stand_in.reason


def test_the_noise_unit_is_binomial_for_an_error_rate_and_robust_otherwise() -> None:
    assert noise_unit([], 0.9, 400) == pytest.approx(0.015)
    rng = np.random.default_rng(3)
    # A loss falling steadily with noise of sd 0.01: the trend is left out, the noise measured.
    curves = [[2.0 - 0.05 * epoch + rng.normal(0, 0.01) for epoch in range(30)] for _ in range(10)]
    assert noise_unit(curves, 2.0, None) == pytest.approx(0.01, rel=0.3)


def test_spearman_ranks_with_ties_and_is_zero_for_a_constant() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # scipy.stats.spearmanr
    assert spearman([0.9, 0.9, 0.9], [1, 2, 3]) == 0.0


# ---- the pruner: no decision while nothing has learned --------------------------------------------

def _trial_at(study: optuna.Study, untrained: float | None, values: dict[int, float]) -> bool:
    """A trial that reports ``values`` (step -> value); whether the pruner stops it at its last step."""
    trial = study.ask()
    if untrained is not None:
        trial.set_user_attr("untrained_value", untrained)
    for step, value in values.items():
        trial.report(value, step)
    stop = trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED if stop else optuna.trial.TrialState.COMPLETE,
               values=None if stop else list(values.values())[-1])
    return stop


def _halving() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3, min_early_stopping_rate=0)


def test_the_pruner_makes_no_decision_while_every_value_sits_within_noise_of_its_untrained_value() -> None:
    noise = 0.01
    bare = optuna.create_study(pruner=_halving())
    guarded = optuna.create_study(pruner=UntilLearningPruner(_halving(), first_rung=2, noise=noise))
    for study in (bare, guarded):
        assert not _trial_at(study, CHANCE, {1: 0.9, 2: 0.895})
    assert _trial_at(bare, CHANCE, {1: 0.9, 2: 0.905})  # Optuna alone ranks noise at chance
    assert not _trial_at(guarded, CHANCE, {1: 0.9, 2: 0.905})  # guarded: nothing learned, no decision
    # Once a trial has left its untrained value at that rung, the rung decides as Optuna's pruner does.
    assert not _trial_at(guarded, CHANCE, {1: 0.8, 2: 0.6})
    assert _trial_at(guarded, CHANCE, {1: 0.9, 2: 0.9})


def test_the_pruner_acts_only_from_its_first_rung_and_skips_trials_without_an_untrained_value() -> None:
    guarded = optuna.create_study(pruner=UntilLearningPruner(_halving(), first_rung=2, noise=0.01))
    assert not _trial_at(guarded, CHANCE, {1: 0.3})
    assert not _trial_at(guarded, CHANCE, {1: 0.9})  # step 1: before the first rung, whatever the others did
    # A trial of unknown start is left out of the test; with none known, Optuna's pruner decides alone.
    unknown = optuna.create_study(pruner=UntilLearningPruner(_halving(), first_rung=2, noise=0.01))
    assert not _trial_at(unknown, None, {2: 0.895})
    assert _trial_at(unknown, None, {2: 0.905})


def test_make_pruner_wraps_only_where_the_rung_was_read_from_stage_lr() -> None:
    plain = make_pruner("hyperband", 20)
    assert isinstance(plain, optuna.pruners.HyperbandPruner)  # legacy first_rung = 1: Optuna's own, as stored
    wrapped = make_pruner("hyperband", 20, first_rung=6, untrained_noise=0.01)
    assert isinstance(wrapped, UntilLearningPruner) and isinstance(wrapped.inner, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("hyperband", 20, first_rung=None), optuna.pruners.NopPruner)


# ---- the spec, and a study end to end --------------------------------------------------------------

SPEC: dict[str, Any] = {
    "name": "rung",
    "data": {"name": "wine"},
    "model": {"width": 8, "depth": 1},
    "train": {"epochs": 6, "batch_size": 32},
    "stages": {"lr": {"trials": 8, "lr_min": 1e-3, "lr_max": 0.5}, "shape": {"trials": 3, "width": [4, 16], "depth": [1, 2]}},
}


@pytest.mark.parametrize(("value", "says"), [(0, ">= 1"), ("soon", '"learned"'), (1.5, "whole number"), (7, "must not exceed the stage's epochs (6)")])
def test_first_rung_is_an_epoch_or_auto(value: Any, says: str) -> None:
    table = {**SPEC, "stages": {**SPEC["stages"], "shape": {**SPEC["stages"]["shape"], "first_rung": value}}}
    with pytest.raises(SpecError, match="stages.shape.first_rung") as error:
        spec_from_dict(table)
    assert says in str(error.value) and "\n" not in str(error.value)
    assert spec_from_dict(SPEC).stages.shape.first_rung == "learned"


class _Notes(tuner.Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_study_stores_untrained_values_and_its_first_rung_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = f"sqlite:///{tmp_path / 'rung.db'}"
    notes = _Notes()
    tuner.run_study(spec_from_dict(SPEC), storage=storage, device="cpu", reporter=notes)
    lr = optuna.load_study(study_name="rung/lr", storage=storage)
    shape = optuna.load_study(study_name="rung/shape", storage=storage)
    for trial in (*lr.trials, *shape.trials):  # batched (stage lr) and alone (stage shape)
        untrained = trial.user_attrs["untrained_value"]
        assert 0 <= untrained <= 1 and untrained >= min(trial.user_attrs["learning_curve"]) - 0.5
    assert len({t.user_attrs["untrained_value"] for t in lr.trials}) == 1  # one seed, one untrained network
    stored = shape.user_attrs["first_rung"]
    assert set(stored) == {"epoch", "reason", "noise"} and stored["reason"]
    rung = FirstRung.from_record(stored)
    assert rung.sentence() in notes.lines
    search = shape.user_attrs["search"]["pruner"]
    assert search["first_rung"] == "learned" and search["prunes_from"] == rung.epoch
    if rung.epoch is not None:
        assert search["min_resource"] == rung.epoch and search["untrained_noise"] == pytest.approx(rung.noise)

    from tuner.report.runs import load_stages
    from tuner.report.words import shape_diagnosis

    said = " ".join(shape_diagnosis(load_stages("rung", storage)["shape"], None, "val_error"))
    assert (f"acted from epoch {rung.epoch}" if rung.epoch else "pruned no trial") in said and rung.reason in said

    # Resumed (one shape trial more): the stored rung is read back, not chosen again.
    def not_again(*args: Any, **kwargs: Any) -> FirstRung:
        raise AssertionError("the first rung was chosen a second time")

    monkeypatch.setattr(pruning, "first_rung", not_again)
    again = _Notes()
    tuner.run_study(with_stage_value(spec_from_dict(SPEC), "shape", "trials", 4), storage=storage, device="cpu", reporter=again)
    shape = optuna.load_study(study_name="rung/shape", storage=storage)
    assert len(shape.trials) == 4 and shape.user_attrs["first_rung"] == stored
    assert rung.sentence() in again.lines
    stage = shape_stage(spec_from_dict(SPEC), 0.01, rung)
    assert stage.first_rung == rung.epoch and isinstance(sampler_for(stage, 0, 0)[1],
                                                         UntilLearningPruner if rung.epoch else optuna.pruners.NopPruner)


def test_a_users_own_loop_has_no_epoch_0_and_stores_no_untrained_value(tmp_path: Path) -> None:
    def loop(model: Any, report: Any, epochs: int) -> None:
        for epoch in range(1, epochs + 1):
            report(epoch, 1.0 / epoch)

    table = {**SPEC, "train": {"epochs": 3}, "stages": {"lr": {"trials": 2}, "shape": {"trials": 1, "width": [4, 8]}}}
    storage = f"sqlite:///{tmp_path / 'loop.db'}"
    notes = _Notes()
    tuner.run_study(spec_from_dict(table), storage=storage, device="cpu", loop=loop, reporter=notes)
    for stage in ("lr", "shape"):
        trials = optuna.load_study(study_name=f"rung/{stage}", storage=storage).trials
        assert trials and all("untrained_value" not in t.user_attrs for t in trials)
    assert any(line.startswith("stage 'shape' does not prune: only 2 complete") for line in notes.lines)


def test_a_study_stored_before_first_rung_existed_resumes_pruning_from_epoch_1(tmp_path: Path) -> None:
    # As the release before stored it (contract version 2): Hyperband from epoch 1, first_rung unknown.
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = with_stage_value(spec_from_dict(SPEC), "shape", "first_rung", 1)
    tuner.run_study(old, storage=storage, device="cpu")
    for stage in ("lr", "shape"):
        optuna.load_study(study_name=f"rung/{stage}", storage=storage).set_user_attr("contract_version", 2)
    shape = optuna.load_study(study_name="rung/shape", storage=storage)
    assert "first_rung" not in shape.user_attrs["settings"]["stages"]["shape"]  # as an earlier version stored it

    today = with_stage_value(spec_from_dict(SPEC), "shape", "trials", 4)
    resumed = with_stored_defaults(today, tuner.open_storage(storage))
    assert resumed.stages.shape.first_rung == 1
    notes = _Notes()
    tuner.run_study(today, storage=storage, device="cpu", reporter=notes)
    assert any("stages.shape.first_rung" in line for line in notes.lines)
    assert not any(line.startswith("stage 'shape' prunes") or "does not prune" in line for line in notes.lines)
    shape = optuna.load_study(study_name="rung/shape", storage=storage)
    assert len(shape.trials) == 4 and "first_rung" not in shape.user_attrs
    pruner = sampler_for(shape_stage(resumed, 0.01), 0, 0)[1]
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)  # Optuna's own, from epoch 1, as it was made
    assert shape.user_attrs["search"]["pruner"]["min_resource"] == 1


def test_a_stage_lr_too_short_for_the_margin_gets_no_rung_and_says_why() -> None:
    curves = _plateau_curves(plateau=4, epochs=6)  # learning begins at epoch 5: x1.5 is past epoch 6
    rung = first_rung(curves, [CHANCE] * len(curves), error_rows=ROWS, max_epochs=20)
    assert rung.epoch is None
    assert "past stage lr's last epoch (6)" in rung.reason and "Spearman" not in rung.reason


def _plateau_sweep() -> tuple[list[list[float]], list[float]]:
    """Stage lr's curves of an adding-problem-like sweep: 8 rates that never leave the untrained error
    (0.4) and 6 that drop at epoch 4, ranked backwards until epoch 10 and as at the end from epoch 11."""
    never = [[0.4] * 15 for _ in range(8)]
    learned = [[0.4] * 3 + [0.2 + 0.02 * (5 - i)] * 7 + [0.05 + 0.02 * i] * 5 for i in range(6)]
    curves = never + learned
    return curves, [0.4] * len(curves)


def test_the_first_rung_waits_until_the_trials_that_learned_rank_as_at_the_end() -> None:
    curves, untrained = _plateau_sweep()
    # Every trial: the 8 that never learned rank last at every epoch and carry Spearman past 0.7 at epoch 6
    # (x1.5 the epoch learning began), though the 6 that learned rank backwards there.
    everyone = first_rung(curves, untrained, error_rows=500, learned_only=False)
    assert everyone.epoch == 6
    learned = first_rung(curves, untrained, error_rows=500)
    assert learned.epoch == 11 and "6 trials that learned" in learned.reason
    assert spearman([c[5] for c in curves[8:]], [c[-1] for c in curves[8:]]) == pytest.approx(-1.0)


def test_too_few_trials_that_learned_prune_nothing_and_say_so() -> None:
    curves, untrained = _plateau_sweep()
    rung = first_rung(curves[:8] + curves[8:12], untrained[:12], error_rows=500)
    assert rung.epoch is None and "only 4 of stage lr's 12 complete trials left their untrained value" in rung.reason


def test_a_study_stored_with_first_rung_auto_resumes_ranking_every_trial(tmp_path: Path) -> None:
    # Contract 3-5 made first_rung = "auto" the default; version 6 "learned". A v5 shape stage keeps "auto".
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'v5.db'}")
    spec = spec_from_dict(SPEC)
    for stage in ("lr", "shape"):
        study = optuna.create_study(study_name=f"rung/{stage}", storage=storage)
        study.set_user_attr("contract_version", 5)
        study.set_user_attr("settings", {"stages": {stage: {"first_rung": "auto", "handoff": "robust"}}})
    resumed = with_stored_defaults(spec, storage)
    assert resumed.stages.shape.first_rung == "auto" and resumed.stages.lr.handoff == "robust"
    assert spec.stages.shape.first_rung == "learned" and spec.stages.lr.handoff == "backed"
