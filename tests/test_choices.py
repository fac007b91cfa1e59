"""A list of optimizers or batch sizes: a rate calibrated for each, and stage shape choosing among them (issue 25, item 2)."""

from __future__ import annotations

import csv
import math
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest

import tuner
from tuner.errors import SpecError, StudyMismatchError
from tuner.inputs.choices import is_lr_label, lr_label, variants
from tuner.inputs.spec import load_spec, spec_from_dict
from tuner.study.lr_scale import transfer_move
from tuner.study.results import CHOICE_ATTR, RATES_ATTR, load_stage_studies
from tuner.study.stage_studies import with_stage_value, with_value
from tuner.study.stages import sampler_for, shape_stage
from tuner.study.stored import split_stage_study_name

REPO = Path(__file__).resolve().parents[1]
OPTIMIZERS_STUDY = REPO / "studies" / "digits_optimizers.toml"


def _spec(**train: Any) -> tuner.StudySpec:
    return spec_from_dict({"name": "c", "data": {"name": "wine"}, "train": train})


# --- the spec -----------------------------------------------------------------------------------------------

def test_a_list_is_a_choice_and_a_list_of_one_is_that_value() -> None:
    assert _spec(optimizer=["adam", "sgd"]).train.optimizer == ("adam", "sgd")
    assert _spec(batch_size=[32, 128]).train.batch_size == (32, 128)
    single = _spec(optimizer=["adam"])
    assert single.train.optimizer == "adam"
    # A list of one is the study it always was: one stage lr, the same stored settings as the plain value.
    assert [v.label for v in variants(single)] == ["lr"]
    assert single.settings() == _spec(optimizer="adam").settings()


@pytest.mark.parametrize(("train", "field", "words"), [
    ({"optimizer": []}, "train.optimizer", "list at least one value"),
    ({"optimizer": ["adam", "adam"]}, "train.optimizer", "lists a value twice"),
    ({"optimizer": ["adam", "adamm"]}, "train.optimizer", "did you mean 'adam'"),
    ({"batch_size": [64, 0]}, "train.batch_size", "must be greater than 0"),
    ({"batch_size": [64, 1.5]}, "train.batch_size", "whole number"),
])
def test_a_bad_list_is_refused_naming_the_field(train: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as raised:
        _spec(**train)
    assert field in str(raised.value) and words in str(raised.value)


@pytest.mark.parametrize("name", ["optimizer", "batch_size"])
def test_a_declared_optimizer_or_batch_size_is_refused_pointing_to_the_list_in_train(name: str) -> None:
    # Declared, it would train shape trials at a batch size (or optimizer) no rate was calibrated for.
    with pytest.raises(SpecError, match=rf"'{name}' is searched by listing its values in \[train\]"):
        spec_from_dict({"name": "c", "stages": {"shape": {"params": {name: {"choices": [8, 512], "default": 8}}}}})


def test_each_combination_of_the_listed_values_is_a_variant_with_its_own_stage_lr() -> None:
    spec = _spec(optimizer=["adam", "sgd"], batch_size=[32, 128])
    found = variants(spec)
    assert [v.label for v in found] == ["lr[optimizer=adam,batch_size=32]", "lr[optimizer=adam,batch_size=128]",
                                        "lr[optimizer=sgd,batch_size=32]", "lr[optimizer=sgd,batch_size=128]"]
    assert [(v.spec.train.optimizer, v.spec.train.batch_size) for v in found] == \
        [("adam", 32), ("adam", 128), ("sgd", 32), ("sgd", 128)]
    assert [v.index for v in found] == [0, 1, 2, 3]
    assert all(is_lr_label(v.label) for v in found) and not is_lr_label("shape")
    assert split_stage_study_name("c/lr[optimizer=adam]") == ("c", "lr[optimizer=adam]")
    assert lr_label({}) == "lr"


def test_the_variants_stages_lr_draw_with_seeds_of_their_own() -> None:
    from tuner.study.stages import lr_stage

    spec = _spec(optimizer=["adam", "sgd"])
    draws = []
    for variant in variants(spec):
        stage = lr_stage(variant.spec, label=variant.label, variant_index=variant.index)
        draws.append(sampler_for(stage, spec.seed, 0)[0]._rng.rng.random())  # type: ignore[attr-defined]
    assert draws[0] != draws[1]


def test_a_shape_trial_trains_with_its_own_choice_at_its_own_rate() -> None:
    spec = _spec(optimizer=["adam", "sgd"], batch_size=[32, 128])
    rates = ((("optimizer", "adam"), ("batch_size", 32)), 0.001), ((("optimizer", "sgd"), ("batch_size", 128)), 0.1)
    stage = shape_stage(spec, 0.001, lr_scale=(0.5, 2.0), rates=rates)
    assert {"optimizer", "batch_size"} <= set(stage.space)
    assert stage.conditions.get("one_minus_momentum") is None  # no momentum searched in stage shape by default
    params = {"optimizer": "sgd", "batch_size": 128, "width": 8, "depth": 1, "schedule": "constant", "lr_scale": 2.0}
    plan = stage.plan(params)
    assert (plan.train.optimizer, plan.train.batch_size) == ("sgd", 128)
    # sgd's 0.1 (SGD's rule does not move it to width 8 of the small network's 16) times its lr_scale
    assert plan.train.lr == pytest.approx(0.1 * 2.0)
    assert stage.fixed_for(params)["lr"] == 0.1
    adam = stage.plan({**params, "optimizer": "adam", "batch_size": 32, "width": 32})
    assert adam.train.lr == pytest.approx(0.001 * (16 / 32) ** 0.5 * 2.0)  # adam's own rate, by adam's rule (1 / sqrt(width))


def test_a_trial_of_a_choice_without_a_calibrated_rate_is_refused_not_given_another_rate() -> None:
    spec = _spec(optimizer=["adam", "sgd"])
    stage = shape_stage(spec, 0.001, lr_scale=(1.0, 1.0), rates=(((("optimizer", "adam"),), 0.001),))
    with pytest.raises(ValueError, match="no calibrated rate"):
        stage.plan({"optimizer": "sgd", "width": 8, "depth": 1, "schedule": "constant"})


def test_run_stage_of_a_listed_spec_without_its_variant_or_rates_is_refused() -> None:
    from tuner.study.runner import run_stage

    spec = _spec(optimizer=["adam", "sgd"])
    for stage, needs in (("lr", "variant="), ("shape", "rates=")):
        with pytest.raises(ValueError, match=rf"train.optimizer lists several values: .*{needs}"):
            run_stage(spec, stage, storage=None, data=None, device=None, best_lr=0.01)  # type: ignore[arg-type]


def test_a_worker_starts_on_the_variant_with_the_most_budget_nobody_claimed(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study import runner

    spec = with_stage_value(_spec(optimizer=["adam", "sgd"]), "lr", "trials", 3)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'w.db'}")
    claimed = optuna.create_study(study_name="c/lr[optimizer=adam]", storage=storage)
    for _ in range(3):
        claimed.ask()  # another worker holds adam's whole budget, RUNNING
    order: list[str] = []
    monkeypatch.setattr(runner, "run_stage", lambda spec, stage, *, variant, **_: order.append(variant.label) or variant.label)
    summaries: dict[str, Any] = {}
    runner._run_variants(variants(spec), storage, {}, summaries)
    assert order == ["lr[optimizer=sgd]", "lr[optimizer=adam]"]  # sgd first: nothing to wait for there
    assert list(summaries) == ["lr[optimizer=adam]", "lr[optimizer=sgd]"]  # reported in the spec's order


def test_momentum_is_searched_only_where_sgd_is_chosen() -> None:
    spec = spec_from_dict({"name": "c", "data": {"name": "wine"}, "train": {"optimizer": ["adam", "sgd"]},
                           "stages": {"shape": {"params": {"momentum": {"low": 0.5, "high": 0.99, "default": 0.9}}},
                                      "audit": {"trials": 4}}})
    assert shape_stage(spec, 0.01).conditions["momentum"] == ("optimizer", ("sgd",))
    from tuner.study.stages import audit_stage

    assert audit_stage(spec).conditions["momentum"] == ("optimizer", ("sgd",))


def test_a_declared_momentum_with_no_sgd_listed_is_refused() -> None:
    from tuner.inputs.code_checks import check_params
    from tuner.inputs.usercode import resolve_code

    spec = spec_from_dict({"name": "c", "data": {"name": "wine"}, "train": {"optimizer": ["adam", "rmsprop"]},
                           "stages": {"shape": {"params": {"momentum": {"low": 0.5, "high": 0.99, "default": 0.9}}}}})
    with pytest.raises(SpecError, match=r"momentum acts with train.optimizer = \"sgd\" only \(here \['adam', 'rmsprop'\]\)"):
        check_params(spec, resolve_code(spec))


# --- the bundled study, end to end ------------------------------------------------------------------------------

def _small() -> tuner.StudySpec:
    """studies/digits_optimizers.toml on small budgets."""
    spec = with_value(load_spec(OPTIMIZERS_STUDY), "train", "epochs", 2)
    for stage, key, value in (("lr", "trials", 4), ("shape", "trials", 8), ("shape", "pruner", "none"),
                              ("shape", "width", (8, 24))):
        spec = with_stage_value(spec, stage, key, value)
    return spec


@pytest.fixture(scope="module")
def optimizers_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuner.StudyResult]:
    storage = f"sqlite:///{tmp_path_factory.mktemp('choices') / 'choices.db'}"
    return storage, tuner.run_study(_small(), storage=storage, device="cpu", progress=False)


def test_each_optimizer_gets_its_own_stage_lr_and_rate(optimizers_study: tuple[str, tuner.StudyResult]) -> None:
    storage, result = optimizers_study
    studies = load_stage_studies("digits_optimizers", storage)
    assert list(studies) == ["lr[optimizer=adam]", "lr[optimizer=sgd]", "shape"]
    for label, choice in (("lr[optimizer=adam]", {"optimizer": "adam"}), ("lr[optimizer=sgd]", {"optimizer": "sgd"})):
        study = studies[label]
        assert study.user_attrs[CHOICE_ATTR] == choice
        assert study.user_attrs["settings"]["train"]["optimizer"] == choice["optimizer"]
        assert len(study.trials) == 4  # the budget is per choice
        assert result.rates[label] == study.user_attrs["best_lr"]
    records = studies["shape"].user_attrs[RATES_ATTR]
    assert [(r["stage"], r["lr"]) for r in records] == [(label, result.rates[label]) for label in result.rates]
    lead = min(("lr[optimizer=adam]", "lr[optimizer=sgd]"), key=lambda s: result.stages[s].best_value)  # type: ignore[arg-type,return-value]
    assert result.best_lr == result.rates[lead] == studies["shape"].user_attrs["lr"]


def test_each_shape_trial_trains_at_its_optimizers_rate(optimizers_study: tuple[str, tuner.StudyResult]) -> None:
    storage, result = optimizers_study
    trials = load_stage_studies("digits_optimizers", storage)["shape"].trials
    assert {t.params["optimizer"] for t in trials} == {"adam", "sgd"}  # 8 trials: both drawn (seeded)
    for trial in trials:
        rate = result.rates[f"lr[optimizer={trial.params['optimizer']}]"]
        assert trial.user_attrs["lr"] == rate
        move = transfer_move(trial.params["optimizer"], trial.params["width"] / 16, trial.params["depth"] / 1, family="mlp")
        assert trial.user_attrs["lr_move"] == pytest.approx(move)  # each by its own optimizer's rule
        assert trial.user_attrs["trained_lr"] == pytest.approx(rate * move * trial.params["lr_scale"])
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")


def test_the_finished_study_resumes_with_nothing_to_run(optimizers_study: tuple[str, tuner.StudyResult]) -> None:
    storage, result = optimizers_study
    said: list[str] = []

    class Listen(tuner.Reporter):
        def message(self, text: str) -> None:
            said.append(text)

    again = tuner.run_study(_small(), storage=storage, device="cpu", reporter=Listen())
    assert any("nothing to run" in line for line in said), said
    assert again.rates == result.rates and again.best_value == result.best_value
    assert sum(len(s.trials) for s in load_stage_studies("digits_optimizers", storage).values()) == 16


def test_a_spec_without_the_list_is_refused_for_the_stored_study(optimizers_study: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = optimizers_study
    with pytest.raises(StudyMismatchError) as refused:
        tuner.run_study(with_value(_small(), "train", "optimizer", "sgd"), storage=storage, device="cpu", progress=False)
    assert "lr[optimizer=adam]" in str(refused.value) and "--name NEW" in str(refused.value)
    with pytest.raises(StudyMismatchError, match=r"stage 'lr\[optimizer=adam\]' .* stages.lr.trials back to 4"):
        tuner.run_study(with_stage_value(_small(), "lr", "trials", 6), storage=storage, device="cpu", progress=False)


def test_export_importance_and_report_cover_every_stage_lr(optimizers_study: tuple[str, tuner.StudyResult],
                                                            tmp_path: Path) -> None:
    storage, result = optimizers_study
    trials_path, _ = tuner.write_export("digits_optimizers", out=tmp_path, storage=storage)
    with trials_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["stage"] for row in rows} == {"lr[optimizer=adam]", "lr[optimizer=sgd]", "shape"}
    assert {(row["stage"], row["params_optimizer"]) for row in rows if row["stage"] != "shape"} == \
        {("lr[optimizer=adam]", "adam"), ("lr[optimizer=sgd]", "sgd")}  # each stage lr's rows say their optimizer
    for row in (r for r in rows if r["stage"] == "shape"):
        rate = result.rates[f"lr[optimizer={row['params_optimizer']}]"]
        moved = rate * float(row["user_attrs_lr_move"])  # the rate its optimizer's rule moved to its shape
        assert float(row["user_attrs_trained_lr"]) == pytest.approx(moved * float(row["params_lr_scale"]))
    report = tuner.write_report("digits_optimizers", storage=storage, out=tmp_path / "report")
    text = report.index.read_text(encoding="utf-8")
    for label, optimizer in (("lr-optimizer-adam", "adam"), ("lr-optimizer-sgd", "sgd")):
        assert (tmp_path / "report" / f"lr_sensitivity_{label}.png").is_file()
        assert f"calibrating the learning rate for optimizer {optimizer}" in text
    assert "optimizer <b>adam or sgd, a rate calibrated for each</b>" in text


def test_tuner_best_trains_the_winner_with_its_optimizer_and_best_toml_reproduces_it(
        optimizers_study: tuple[str, tuner.StudyResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage, _ = optimizers_study
    best = tuner.write_best("digits_optimizers", storage, tmp_path / "best", stage="shape", device="cpu")
    assert best.metrics["validation"]["value"] == pytest.approx(best.metrics["stored_value"], abs=1e-6)
    written = tomllib.loads(best.spec_path.read_text())
    won = best.metrics["params"]
    assert written["train"]["optimizer"] == won["optimizer"]  # one value, the winner's: not the list
    assert ("momentum" in written["stages"]["shape"]["params"]) == (won["optimizer"] == "sgd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = tuner.run_study(best.spec_path, storage=f"sqlite:///{tmp_path / 'again.db'}", device="cpu", progress=False)
    assert again.stages["shape"].best_value == pytest.approx(best.metrics["stored_value"], abs=1e-6)


def test_best_stage_lr_is_the_best_of_the_optimizers_stages_lr(optimizers_study: tuple[str, tuner.StudyResult],
                                                               tmp_path: Path) -> None:
    storage, result = optimizers_study
    best = tuner.write_best("digits_optimizers", storage, tmp_path / "best", stage="lr", device="cpu")
    values = {s: result.stages[s].best_value for s in result.rates}
    assert best.metrics["stored_value"] == min(values.values())  # type: ignore[type-var]
    one = tuner.write_best("digits_optimizers", storage, tmp_path / "one", stage="lr[optimizer=sgd]", device="cpu")
    assert one.metrics["stage"] == "lr[optimizer=sgd]" and one.metrics["stored_value"] == values["lr[optimizer=sgd]"]
    # Written as a person might: the choice's value alone, spaces, capitals.
    short = tuner.write_best("digits_optimizers", storage, tmp_path / "short", stage="LR[ sgd ]", device="cpu")
    assert short.metrics["stage"] == "lr[optimizer=sgd]"
    # A stage asked for by name names best.toml's study too: the default's and this one's run side by side.
    won = best.metrics["stage"].replace("[", "-").replace("=", "-").rstrip("]")  # the stage lr that won: its name
    assert tomllib.loads(best.spec_path.read_text())["name"] == f"digits_optimizers-best-{won}"
    assert tomllib.loads(short.spec_path.read_text())["name"] == "digits_optimizers-best-lr-optimizer-sgd"
    with pytest.raises(Exception, match=r"choose one of lr, shape, audit, lr\[optimizer=adam\], lr\[optimizer=sgd\]"):
        tuner.write_best("digits_optimizers", storage, tmp_path / "no", stage="lr[optimizer=rmsprop]", device="cpu")
    with pytest.raises(Exception, match=r"'lr\[sgdd\]': did you mean 'lr\[optimizer=sgd\]'\?"):
        tuner.write_best("digits_optimizers", storage, tmp_path / "no", stage="lr[sgdd]", device="cpu")
    assert math.isfinite(best.metrics["validation"]["value"])


def test_the_stage_lr_studies_are_optuna_studies_a_user_can_load(optimizers_study: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = optimizers_study
    study = optuna.load_study(study_name="digits_optimizers/lr[optimizer=sgd]", storage=storage)
    assert study.best_trial.params.keys() == {"lr"}


def test_the_audits_verdict_leaves_lrs_interaction_with_a_listed_optimizer_out(tmp_path: Path) -> None:
    """A rate is calibrated per optimizer: lr x optimizer is what that serves, not a breach of the assumption."""
    spec = spec_from_dict({"name": "aud", "data": {"name": "wine"}, "model": {"width": 8},
                           "train": {"epochs": 2, "optimizer": ["adam", "sgd"]},
                           "stages": {"lr": {"trials": 3, "lr_min": 1e-3, "lr_max": 0.3},
                                      "shape": {"trials": 2, "width": [4, 16], "depth": [1, 2], "pruner": "none"},
                                      "audit": {"trials": 12}}})
    result = tuner.run_study(spec, storage=f"sqlite:///{tmp_path / 'aud.db'}", device="cpu", progress=False)
    verdict = result.audit
    assert verdict is not None and verdict.lr_main_effect is not None, verdict  # fANOVA judged it (or found it too close)
    assert verdict.largest_interaction_with not in ("optimizer",)
    assert "lr's interaction with optimizer (stage lr calibrates a rate for each optimizer)" in verdict.message


def test_a_variant_whose_stage_lr_completed_nothing_is_named_with_the_value_to_leave_out(tmp_path: Path) -> None:
    from tuner.study.handoff import hand_off_rates

    spec = with_stage_value(_spec(optimizer=["adam", "sgd"]), "lr", "trials", 1)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'f.db'}")
    for label in ("lr[optimizer=adam]", "lr[optimizer=sgd]"):
        study = optuna.create_study(study_name=f"c/{label}", storage=storage)
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
        study.tell(trial, 0.5 if "adam" in label else None, state=None if "adam" in label else optuna.trial.TrialState.PRUNED)
    with pytest.raises(tuner.TunerError, match=r"stage 'lr\[optimizer=sgd\]': none of its 1 trials completed .*"
                                               r"or leave 'sgd' out of train.optimizer"):
        hand_off_rates(spec, storage)
    assert "c/shape" not in optuna.get_all_study_names(storage)  # nothing handed on


def test_a_stage_asked_by_its_choices_in_any_order_or_in_part_is_found_or_said_to_be_ambiguous() -> None:
    from tuner.best.refit import BestError, _stage_named

    names = ["lr", "shape", "audit", "lr[optimizer=adam,batch_size=32]", "lr[optimizer=adam,batch_size=64]",
             "lr[optimizer=sgd,batch_size=32]"]
    assert _stage_named("lr[batch_size=32, optimizer=adam]", names) == "lr[optimizer=adam,batch_size=32]"
    assert _stage_named("lr[sgd]", names) == "lr[optimizer=sgd,batch_size=32]"  # one stage has it: that one
    assert _stage_named("lr[adam,64]", names) == "lr[optimizer=adam,batch_size=64]"
    with pytest.raises(BestError, match=r"'lr\[optimizer=adam\]' matches 2 stages \(lr\[optimizer=adam,batch_size=32\], "
                                        r"lr\[optimizer=adam,batch_size=64\]\); name one of them"):
        _stage_named("lr[optimizer=adam]", names)
