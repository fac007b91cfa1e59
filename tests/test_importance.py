"""Importance analyses as CSV, and the audit of the low-interaction assumption, as a user meets them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from typer.testing import CliRunner

import tuner
from tuner.analysis.importance import (
    AUDIT_MAX_INTERACTION_RATIO,
    COLUMNS,
    MIN_COMPLETE_TRIALS,
    UnknownStudyError,
    audit_verdict,
    headline_rows,
    importance_table,
    write_importance,
)
from tuner.analysis.calibrated import as_calibrated
from tuner.cli import app
from tuner.report.runs import StageRuns, run_of
from tuner.report.words import audit_diagnosis

from _tiny_study import AUDITED_SPEC, audited_study

AUDIT_PARAMS = {"lr", "width", "depth", "schedule", "decay", "one_minus_momentum"}


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuner.StudyResult]:
    return audited_study(tmp_path_factory.getbasetemp())


def _synthetic_study(storage: optuna.storages.BaseStorage, name: str, objective, n: int = 80, seed: int = 0) -> None:
    """A study ``name/audit`` of random trials scored by ``objective(params)``, no training needed."""
    space = {
        "lr": FloatDistribution(1e-5, 1.0, log=True),
        "width": IntDistribution(4, 256, log=True),
        "schedule": CategoricalDistribution(["constant", "step"]),
        "fixed": FloatDistribution(0.5, 0.5),  # never varies: must not be analysed
    }
    study = optuna.create_study(study_name=f"{name}/audit", storage=storage)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        params = {
            "lr": float(10 ** rng.uniform(-5, 0)),
            "width": int(round(2 ** rng.uniform(2, 8))),
            "schedule": str(rng.choice(["constant", "step"])),
            "fixed": 0.5,
        }
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=objective(params)))


def test_importance_csv_has_a_row_per_parameter_and_per_pair(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    path, _, skipped = write_importance("audited", out=tmp_path, storage=storage)
    table = pd.read_csv(path, keep_default_na=False)
    assert list(table.columns) == COLUMNS

    # decay is set only where the schedule decays: the rows of all trials leave it out, and it is
    # analysed on the trials that have it (or skipped, with the reason, when they are too few).
    everywhere = AUDIT_PARAMS - {"decay"}
    audit = table[(table.stage == "audit") & (table.basis == "complete")]
    fanova = audit[audit.evaluator == "fanova"]
    main = fanova[fanova.param_b == ""]
    assert set(main.param) == everywhere and len(main) == len(everywhere)
    pairs = {frozenset((a, b)) for a, b in fanova[fanova.param_b != ""][["param", "param_b"]].itertuples(index=False)}
    assert pairs == {frozenset(p) for p in itertools.combinations(everywhere, 2)}
    assert len(fanova) == len(everywhere) + len(pairs)

    ped = audit[audit.evaluator == "ped_anova"]
    assert set(ped.param) == everywhere and (ped.param_b == "").all()  # PED-ANOVA: main effects only
    with_decay = table[(table.stage == "audit") & (table.basis == "complete, where decay is set")]
    said = [reason for stage, reason in skipped if stage == "audit"]
    assert ("decay" in set(with_decay.param)) != bool(said)  # analysed on its own trials, or said why not
    assert all(reason.startswith("complete, where decay is set: decay is set in ") for reason in said)


def test_shares_are_fractions_that_sum_to_at_most_one_per_stage(audited: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = audited
    table, _ = importance_table("audited", storage)
    assert table.importance.between(0, 1).all() and (table["std"] >= 0).all()
    for (stage, evaluator), rows in table.groupby(["stage", "evaluator"]):
        assert rows.importance.sum() <= 1 + 1e-9, (stage, evaluator)
    ped = table[table.evaluator == "ped_anova"]
    assert ped.importance.sum() == pytest.approx(1.0)  # normalised over the stage's parameters
    assert (ped["std"] > 0).any()  # the bootstrap spread is real, not a placeholder


def test_stages_with_too_few_trials_are_skipped_and_say_why(audited: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = audited
    table, skipped = importance_table("audited", storage)
    assert set(table.stage) == {"audit"}
    reasons = dict(skipped)
    assert set(reasons) - {"audit"} == {"lr", "shape"}  # the audit's: decay on its own trials (see above)
    assert f"at least {MIN_COMPLETE_TRIALS}" in reasons["lr"] and reasons["shape"].startswith("2 complete")


def test_log_scaled_lr_dominates_and_a_constant_parameter_is_left_out() -> None:
    storage = optuna.storages.InMemoryStorage()
    # Error falls with log10(lr) and nothing else matters: lr must take nearly all the variance.
    _synthetic_study(storage, "syn", lambda p: 0.1 * np.log10(p["lr"]) ** 2)
    table, skipped = importance_table("syn", storage)
    assert skipped == []
    fanova = table[(table.evaluator == "fanova") & (table.param_b == "")].set_index("param")
    assert set(fanova.index) == {"lr", "width", "schedule"}  # "fixed" never varied
    assert fanova.loc["lr", "importance"] > 0.9
    assert fanova.loc["width", "importance"] < 0.05


def test_unknown_study_lists_the_names_that_exist(audited: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = audited
    with pytest.raises(UnknownStudyError, match="studies there: audited"):
        importance_table("nope", storage)


def test_audit_verdict_is_stored_on_the_audit_study(audited: tuple[str, tuner.StudyResult]) -> None:
    storage, result = audited
    verdict = result.audit
    assert verdict is not None and verdict.n_trials >= MIN_COMPLETE_TRIALS
    attrs = optuna.load_study(study_name="audited/audit", storage=storage).user_attrs
    assert attrs["low_interaction_held"] is verdict.held and isinstance(verdict.held, bool)
    assert attrs["lr_main_effect"] == pytest.approx(verdict.lr_main_effect)
    assert 0 <= attrs["lr_largest_interaction"] <= 1
    assert attrs["lr_largest_interaction_with"] in AUDIT_PARAMS - {"lr"}
    assert attrs["interaction_max_ratio"] == AUDIT_MAX_INTERACTION_RATIO
    assert attrs["verdict"] == verdict.message
    assert verdict.held == (verdict.largest_interaction <= AUDIT_MAX_INTERACTION_RATIO * verdict.lr_main_effect)


def test_the_verdict_judged_again_from_a_url_replaces_a_stored_one_that_differs(audited: tuple[str, tuner.StudyResult]) -> None:
    # As a verdict stored before the audit read lr in the rule's coordinates: tuner.audit_verdict(name, url)
    # judges again and stores the new one (the URL is opened for writing, not read-only).
    storage, result = audited
    optuna.load_study(study_name="audited/audit", storage=storage).set_user_attr("verdict", "a verdict of before")
    verdict = audit_verdict("audited", storage)
    assert isinstance(storage, str) and verdict.message == result.audit.message
    assert optuna.load_study(study_name="audited/audit", storage=storage).user_attrs["verdict"] == verdict.message


def test_verdict_fails_and_advises_joint_tuning_when_lr_interacts() -> None:
    storage = optuna.storages.InMemoryStorage()
    def tangled(p: dict) -> float:
        lr = (np.log10(p["lr"]) + 2.5) / 2.5  # both on [-1, 1] over their log ranges
        width = (np.log2(p["width"]) - 5) / 3
        # Analytically: lr's main effect has variance 1/3, the lr x width interaction 4/9 (ratio 4/3).
        return lr + 2 * lr * width

    _synthetic_study(storage, "tangled", tangled, n=150)
    verdict = audit_verdict("tangled", storage)
    assert verdict.held is False and verdict.largest_interaction_with == "width"
    assert "did NOT hold" in verdict.message and "jointly" in verdict.message
    stored = optuna.load_study(study_name="tangled/audit", storage=storage).user_attrs
    assert stored["low_interaction_held"] is False


def test_with_stage_shapes_rule_the_verdict_reads_lr_as_moved_back_to_the_small_network() -> None:
    # Adam's best rate falls as 1/width: in raw rates lr interacts with width, but the rule stage shape
    # carries the rate by (stored on <name>/shape) accounts for exactly that, so staging is sound.
    def one_over_width(p: dict) -> float:
        calibrated = np.log10(p["lr"] * p["width"] / 16)  # the rate moved back to the small network (width 16)
        return (calibrated + 2.5) ** 2 + 0.1 * np.log2(p["width"])

    rule = {"rule": "rate x (width / 16)^a x (depth / 1)^b", "width": 16, "depth": 1, "exponents": {"adam": [-1.0, -0.5]}}
    verdicts = {}
    for name, stored in (("raw", None), ("ruled", rule), ("unmoved", {**rule, "exponents": {"sgd": [0.0, 0.0]}})):
        storage = optuna.storages.InMemoryStorage()
        _synthetic_study(storage, name, one_over_width, n=150)
        shape = optuna.create_study(study_name=f"{name}/shape", storage=storage)
        if stored is not None:
            shape.set_user_attr("lr_transfer", stored)
        verdicts[name] = audit_verdict(name, storage)
        assert optuna.load_study(study_name=f"{name}/audit", storage=storage).user_attrs["verdict_lr_basis"] == verdicts[name].lr_basis
    raw, ruled, unmoved = verdicts["raw"], verdicts["ruled"], verdicts["unmoved"]
    assert raw.held is False and raw.largest_interaction_with == "width" and raw.lr_basis == ""
    assert ruled.held is True and ruled.largest_interaction < raw.largest_interaction / 4
    assert ruled.lr_basis == ("as stage lr calibrates it: each trial's lr divided by its shape's move under stage shape's rule "
                              "(adam: x (width / 16)^-1 x (depth / 1)^-0.5)")
    assert "lr read as stage lr calibrates it: each trial's lr divided by its shape's move" in ruled.message
    assert unmoved.lr_basis == "" and unmoved.held is False  # a rule that moves nothing: lr read as trained


def test_the_reports_audit_diagnosis_says_when_the_verdict_read_lr_as_calibrated() -> None:
    storage = optuna.storages.InMemoryStorage()
    _synthetic_study(storage, "said", lambda p: float(np.log10(p["lr"]) ** 2), n=12)
    study = optuna.load_study(study_name="said/audit", storage=storage)
    stage = StageRuns("audit", study, study.trials, [run_of(t) for t in study.trials])
    study.set_user_attr("verdict", "audit (said/audit): the low-interaction assumption held.")
    assert not any("read lr as each trial trained at" in s for s in audit_diagnosis(stage, "val_error"))  # no basis stored
    study.set_user_attr("verdict_lr_basis", "as stage lr calibrates it: each trial's lr divided by ...")
    assert len(audit_diagnosis(stage, "val_error")) == 2  # fANOVA did not run (no lr_main_effect): no shares
    study.set_user_attr("low_interaction_held", True)
    study.set_user_attr("lr_main_effect", 0.8)
    said = audit_diagnosis(stage, "val_error")
    assert said[1] == "audit (said/audit): the low-interaction assumption held."
    assert "differ from the audit's importances in this report, which read lr as each trial trained at" in said[2]


def test_the_audits_rates_move_back_by_each_trials_optimizer_width_and_depth() -> None:
    rule = {"width": 16, "depth": 1, "exponents": {"adam": [-1.0, -0.5], "sgd": [0.0, 0.0]}}
    space = {"lr": FloatDistribution(1e-5, 1.0, log=True), "width": IntDistribution(4, 256, log=True),
             "depth": IntDistribution(1, 4), "optimizer": CategoricalDistribution(["adam", "sgd"])}
    trials = [optuna.trial.create_trial(params=params, distributions=space, value=0.5) for params in (
        {"lr": 0.01, "width": 64, "depth": 4, "optimizer": "adam"},  # moved by 4^-1 x 4^-0.5 = 1/8
        {"lr": 0.01, "width": 64, "depth": 4, "optimizer": "sgd"},  # not moved
        {"lr": 0.01, "width": 16, "depth": 1, "optimizer": "adam"},  # the small network: not moved
    )]
    moved, basis = as_calibrated(trials, rule)
    assert [t.params["lr"] for t in moved] == pytest.approx([0.08, 0.01, 0.01])
    assert [t.params["width"] for t in moved] == [64, 64, 16] and [t.value for t in moved] == [0.5] * 3
    assert basis.startswith("as stage lr calibrates it") and "sgd" not in basis  # the rule that moves: adam's
    assert (moved[0].distributions["lr"].low, moved[0].distributions["lr"].high) == pytest.approx((0.01, 0.08))
    # A trial of an optimizer the rule does not name: every lr read as trained, and the verdict says why.
    rmsprop = optuna.trial.create_trial(params={**trials[0].params, "optimizer": "rmsprop"},
                                        distributions={**space, "optimizer": CategoricalDistribution(["adam", "sgd", "rmsprop"])},
                                        value=0.5)
    kept, why = as_calibrated([*trials, rmsprop], rule)
    assert [t.params["lr"] for t in kept] == [0.01] * 4 and why.startswith("as trained") and "rmsprop" in why
    assert as_calibrated(trials, None) == (trials, "")


def test_verdict_says_it_cannot_judge_with_too_few_trials() -> None:
    storage = optuna.storages.InMemoryStorage()
    _synthetic_study(storage, "short", lambda p: np.log10(p["lr"]), n=MIN_COMPLETE_TRIALS - 1)
    verdict = audit_verdict("short", storage)
    assert verdict.held is None and "at least" in verdict.message


def test_cli_importance_writes_the_csv_and_reports_skipped_stages(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    result = CliRunner().invoke(app, ["importance", "audited", "--storage", storage, "--out", str(tmp_path / "imp")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imp" / "importance.csv").exists()
    assert "skipped stage lr" in result.output and "skipped stage shape" in result.output
    written = pd.read_csv(tmp_path / "imp" / "importance.csv")
    shown = headline_rows(written.fillna({"param_b": ""}))
    assert len(shown) < len(written)  # the audit has more pairs than the table shows
    assert f"{len(shown)} of {len(written)} rows shown" in " ".join(result.output.split())


def test_write_importance_takes_out_and_storage_by_keyword_and_the_old_order_with_a_warning(
    audited: tuple[str, tuner.StudyResult], tmp_path: Path
) -> None:
    storage, _ = audited
    path, table, _ = write_importance("audited", out=tmp_path / "new", storage=storage)
    with pytest.warns(DeprecationWarning, match="pass out=, storage= by keyword"):
        old_path, old_table, _ = write_importance("audited", tmp_path / "old", storage)
    with pytest.warns(DeprecationWarning, match=r"out= \(not out_dir=\)"):
        renamed, _, _ = write_importance("audited", out_dir=tmp_path / "renamed", storage=storage)
    assert old_path == tmp_path / "old" / "importance.csv" and renamed.parent == tmp_path / "renamed"
    pd.testing.assert_frame_equal(old_table, table)
    with pytest.raises(TypeError):
        write_importance("audited", tmp_path, storage, "one too many")


def test_cli_importance_of_an_unknown_study_exits_2_and_writes_nothing(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    result = CliRunner().invoke(app, ["importance", "nope", "--storage", storage, "--out", str(tmp_path / "imp")])
    assert result.exit_code == 2
    assert "study 'nope': not found" in result.output and "audited" in result.output
    assert not (tmp_path / "imp").exists()

    missing = tmp_path / "missing.db"
    result = CliRunner().invoke(app, ["importance", "audited", "--storage", f"sqlite:///{missing}"])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not missing.exists()  # looking must not create an empty database


def test_cli_study_prints_the_audit_verdict(audited: tuple[str, tuner.StudyResult], tmp_path: Path) -> None:
    storage, _ = audited
    spec = tmp_path / "audited.toml"
    spec.write_text(
        'name = "audited"\nseed = 0\n[data]\nname = "wine"\n[model]\nwidth = 8\ndepth = 1\n'
        "[train]\nepochs = 2\nbatch_size = 32\n"
        "[stages.lr]\ntrials = 4\nlr_min = 1e-3\nlr_max = 0.3\n"
        "[stages.shape]\ntrials = 2\nwidth = [4, 16]\ndepth = [1, 2]\n"
        "[stages.audit]\ntrials = 12\n"
    )
    assert tuner.load_spec(spec).settings() == tuner.spec_from_dict(AUDITED_SPEC).settings()  # the same study
    # The study is finished, so this resumes with nothing to run and only reports.
    result = CliRunner().invoke(app, ["study", str(spec), "--storage", storage, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "low-interaction assumption" in result.output


def test_a_parameter_set_only_where_it_acts_is_analysed_on_those_trials_and_said() -> None:
    # decay acts only for the schedules that decay; 'constant' trials do not have it (issue 25 item 3).
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="cond/shape", storage=storage)
    rng = np.random.default_rng(0)
    for _ in range(60):
        schedule = str(rng.choice(["constant", "step", "exponential"]))
        params = {"width": int(round(2 ** rng.uniform(2, 8))), "schedule": schedule}
        space = {"width": IntDistribution(4, 256, log=True),
                 "schedule": CategoricalDistribution(["constant", "step", "exponential"])}
        if schedule != "constant":
            params["decay"] = float(10 ** rng.uniform(-3, 0))
            space["decay"] = FloatDistribution(1e-3, 1.0, log=True)
        value = 0.5 + (0.3 * np.log10(params["decay"]) ** 2 / 9 if "decay" in params else 0.1) + 0.01 * rng.normal()
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    table, skipped = importance_table("cond", storage)
    assert skipped == []
    everywhere = table[(table.basis == "complete") & (table.param_b == "")]
    assert set(everywhere.param) == {"width", "schedule"}  # decay is not in every trial: left out here...
    where = table[table.basis == "complete, where decay is set"]
    n_decay = sum("decay" in t.params for t in study.trials)
    assert set(where[where.param_b == ""].param) == {"width", "schedule", "decay"} and (where.trials == n_decay).all()
    main = where[(where.evaluator == "fanova") & (where.param_b == "")].set_index("param")
    assert main.loc["decay", "importance"] > 0.8  # ...and found to matter on the trials that have it
    from tuner.analysis.importance import basis_notes
    assert any(f"where decay is set: {n_decay} trials" in line and "acts only in some trials" in line
               for line in basis_notes(table))


def test_ped_anova_reads_the_highest_scores_as_the_best_of_a_study_that_maximizes() -> None:
    # A score is high where a > 0.85 and low where b < 0.15: what reaches the top is a, not b.
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="scored/shape", storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    space = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    for _ in range(200):
        a, b = float(rng.uniform()), float(rng.uniform())
        value = 0.5 + 0.4 * (a > 0.85) - 0.4 * (b < 0.15) + 0.01 * rng.normal()
        study.add_trial(optuna.trial.create_trial(params={"a": a, "b": b}, distributions=space, value=value))
    table, _ = importance_table("scored", storage)
    ped = table[table.evaluator == "ped_anova"].set_index("param")["importance"]
    assert ped["a"] > 0.8 > ped["b"]


def test_the_audit_verdict_says_which_parameters_it_could_not_judge(audited: tuple[str, tuner.StudyResult]) -> None:
    storage, _ = audited
    verdict = audit_verdict("audited", storage)
    trials = optuna.load_study(study_name="audited/audit", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    without = sum("decay" not in t.params for t in complete)
    assert without > 0  # 'constant' trials have no decay (stages.shape.conditional): the case to say
    assert f"decay is set in {len(complete) - without} of {len(complete)} trials" in verdict.message
    assert verdict.message.endswith(".") and "Not judged: decay and its interaction with lr" in verdict.message


def test_the_python_analysis_prints_none_of_optunas_lines_and_leaves_its_verbosity(
    audited: tuple[str, tuner.StudyResult]
) -> None:
    # A new user's tuner.write_importance printed 63 lines of "A new study created in memory" (Optuna at INFO,
    # its default): the studies the analysis makes for its own sums are not theirs.
    import logging

    storage, _ = audited
    said: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.addHandler(listener)
    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        optuna_logger.info("the listener hears Optuna at INFO")
        table, _ = tuner.importance_table("audited", storage)
        assert len(table) and said == ["the listener hears Optuna at INFO"], said[:3]
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the user's own setting, as it was
    finally:
        optuna_logger.removeHandler(listener)
        optuna.logging.set_verbosity(was)


def test_the_verdict_is_too_close_to_call_where_the_trees_spread_covers_the_threshold() -> None:
    from tuner.analysis.importance import judge

    # lr explains 80% (threshold 20%): an interaction of 5% held, 40% did not, whatever the small spreads.
    assert judge(0.8, 0.02, 0.05, 0.02) is True
    assert judge(0.8, 0.02, 0.40, 0.02) is False
    # 18% against 20%: held on the point values, but the spread of the difference (0.25 x 8%, 5%) is larger.
    assert judge(0.8, 0.08, 0.18, 0.05) is None
    assert judge(0.8, 0.08, 0.25, 0.05) is None
    # The spread is of the difference: sqrt((0.25 x 0.08)^2 + 0.01^2) = 2.2% < the 3% margin.
    assert judge(0.8, 0.08, 0.17, 0.01) is True


def test_a_verdict_too_close_to_call_keeps_its_numbers_and_says_what_decides() -> None:
    storage = optuna.storages.InMemoryStorage()
    rng = np.random.default_rng(0)

    def noisy(p: dict) -> float:  # lr's effect and an lr x width interaction, in noise, over 12 trials
        lr = (np.log10(p["lr"]) + 2.5) / 2.5
        width = (np.log2(p["width"]) - 5) / 3
        return float(lr + lr * width + rng.normal(0, 0.3))

    _synthetic_study(storage, "close", noisy, n=12)
    verdict = audit_verdict("close", storage)
    stored = optuna.load_study(study_name="close/audit", storage=storage).user_attrs
    assert verdict.lr_main_effect is not None and verdict.largest_interaction is not None
    assert verdict.held is None and stored["low_interaction_held"] is None
    assert "could not judge the low-interaction assumption: too close to call: lr's largest interaction (with width)" in verdict.message
    assert "give the audit more trials (stages.audit.trials)" in verdict.message
    assert stored["lr_main_effect"] == verdict.lr_main_effect  # the shares are stored as they are


def test_with_no_lr_pair_left_to_judge_the_assumption_holds_whatever_lr_s_spread() -> None:
    # lr and a listed optimizer only: lr x optimizer is what calibrating a rate per optimizer serves, so no pair is
    # left; a noisy lr effect (the optimizer explains nearly all: lr's spread over the trees is larger than its own
    # share) must not make that "too close to call".
    storage = optuna.storages.InMemoryStorage()
    space = {"lr": FloatDistribution(1e-5, 1.0, log=True), "optimizer": CategoricalDistribution(["adam", "sgd"])}
    study = optuna.create_study(study_name="paired/audit", storage=storage)
    rng = np.random.default_rng(0)
    for _ in range(12):
        params = {"lr": float(10 ** rng.uniform(-5, 0)), "optimizer": str(rng.choice(["adam", "sgd"]))}
        value = (0.3 if params["optimizer"] == "adam" else 0.7) + rng.normal(0, 0.02)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=float(value)))
    verdict = audit_verdict("paired", storage)
    assert verdict.held is True and verdict.largest_interaction_with is None
    assert "too close" not in verdict.message and "(with None)" not in verdict.message


def test_an_audit_with_too_few_complete_trials_says_diverged_ones_do_not_count_and_what_to_raise(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'few.db'}"
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
             "width": optuna.distributions.IntDistribution(4, 64, log=True)}
    study = optuna.create_study(study_name="few/audit", storage=storage)
    for lr, width in ((0.01, 8), (0.02, 16), (0.05, 32)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr, "width": width}, distributions=space, value=lr))
    verdict = audit_verdict("few", storage)
    assert verdict.held is None
    assert verdict.message.endswith("3 complete trials; at least 10 are needed (diverged and pruned ones do not count: "
                                    "raise stages.audit.trials)")
