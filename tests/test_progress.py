"""Progress while a study runs: a bar on a terminal, plain log lines in CI or a file, both with times."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

import tuner
from tuner.study.progress import ConsoleReporter
from tuner.study.runner import StageSummary
from tuner.study.stages import lr_stage

SPEC = tuner.spec_from_dict({"name": "watched", "stages": {"lr": {"trials": 3}}})
LR = {"lr": FloatDistribution(1e-6, 1.0, log=True)}


def _run_stage(console: Console) -> None:
    """What the runner tells a reporter during a 3-trial lr stage: one good, one diverged, one better."""
    stage = lr_stage(SPEC)
    reporter = ConsoleReporter(console)
    reporter.stage_started(stage, 0)
    good = create_trial(params={"lr": 0.01}, distributions=LR, value=0.2)
    diverged = create_trial(params={"lr": 0.9}, distributions=LR, state=TrialState.PRUNED,
                            user_attrs={"diverged": True})
    better = create_trial(params={"lr": 0.05}, distributions=LR, value=0.1)
    reporter.trial_finished(stage, good, 1, 0.2)
    reporter.trial_finished(stage, diverged, 2, 0.2)
    reporter.trial_finished(stage, better, 3, 0.1)
    reporter.stage_finished(StageSummary("lr", "watched/lr", 3, 2, 1, 1, 0, 0.1, {"lr": 0.05}, 1.0, 0.5))
    reporter.close()


def test_off_a_terminal_each_trial_is_one_line_with_budget_best_and_times() -> None:
    out = io.StringIO()
    _run_stage(Console(file=out, force_terminal=False, width=200))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("stage lr: 0/3 trials done")
    resumed = io.StringIO()  # a stage that an earlier run left with trials done says it resumes (a new user's try)
    ConsoleReporter(Console(file=resumed, force_terminal=False, width=200)).stage_started(lr_stage(SPEC), 1)
    assert resumed.getvalue().startswith("stage lr: resuming, 1/3 trials done")
    on_terminal = io.StringIO()  # and on the bar a person at a terminal sees
    bar = ConsoleReporter(Console(file=on_terminal, force_terminal=True, width=160))
    bar.stage_started(lr_stage(SPEC), 1)
    bar.close()
    assert "lr (resuming)" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", on_terminal.getvalue())
    trial_lines = [line for line in lines if line.lstrip().startswith("[lr ")]
    assert len(trial_lines) == 3
    time_part = r"; \d+s elapsed, ~(\d+s|\d+m\d\ds|\?) left$"
    assert re.search(r"\[lr 1/3\] trial -?\d+ \(lr=0\.01\): value 0\.2; best 0\.2" + time_part, trial_lines[0])
    assert re.search(r"\[lr 2/3\] .*: diverged; best 0\.2" + time_part, trial_lines[1])
    assert trial_lines[2].endswith("~0s left")  # the budget is done: nothing left to estimate
    assert "\x1b[" not in out.getvalue()  # no escape codes in a log file


def test_on_a_terminal_the_bar_shows_trials_of_budget_best_and_times() -> None:
    out = io.StringIO()
    _run_stage(Console(file=out, force_terminal=True, width=160))
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # what a person sees, minus colours
    assert "3/3" in screen and "best 0.1" in screen
    assert re.search(r"\d+:\d\d:\d\d", screen)  # elapsed
    assert "left" in screen
    assert "stage lr done: 2 complete, 1 pruned (1 diverged)" in screen


def test_each_line_prints_the_best_the_runner_passes_it_stored_trials_included() -> None:
    # The runner passes each trial the best of the stage up to it: a batch's later trials not yet, the
    # trials stored before a resume (here 0.15) already. A line never shows a best worse than its own trial.
    stage = lr_stage(SPEC)
    out = io.StringIO()
    reporter = ConsoleReporter(Console(file=out, force_terminal=False, width=200))
    reporter.stage_started(stage, 2)  # resumed: two trials stored, the best of them 0.15
    batch = [create_trial(params={"lr": lr}, distributions=LR, value=value)
             for lr, value in [(0.01, 0.3), (0.02, 0.2), (0.05, 0.1)]]
    for n, (trial, passed) in enumerate(zip(batch, [0.15, 0.15, 0.1]), start=3):
        reporter.trial_finished(stage, trial, n, passed)
    reporter.trial_finished(stage, create_trial(params={"lr": 0.9}, distributions=LR, value=0.4), 6, 0.1)
    reporter.trial_finished(stage, create_trial(params={"lr": 0.3}, distributions=LR, value=0.05), 7, None)  # none passed
    reporter.close()
    bests = re.findall(r"; best ([\d.]+);", out.getvalue())
    assert bests == ["0.15", "0.15", "0.1", "0.1", "0.05"]


def test_a_resumed_stage_prints_the_stored_best_from_its_first_new_trial(tmp_path) -> None:
    seen: list[tuple[float | None, float | None]] = []

    class Seen(tuner.Reporter):
        def trial_finished(self, stage, trial, n_finished, best_value) -> None:  # type: ignore[no-untyped-def]
            if stage.kind == "shape":
                seen.append((trial.value, best_value))

    shape = {"trials": 4, "sampler": "random", "pruner": "none", "width": [4, 16], "depth": [1, 1], "schedules": ["constant"]}
    spec = {"name": "resumed", "data": {"name": "wine"}, "model": {"width": 8}, "train": {"epochs": 2, "batch_size": 32},
            "stages": {"lr": {"trials": 3}, "shape": shape}}
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    tuner.run_study(spec, storage=storage, device="cpu", reporter=Seen(), progress=False)
    stored = [value for value, _ in seen if value is not None]
    assert len(seen) == 4 and stored
    seen.clear()
    tuner.run_study({**spec, "stages": {**spec["stages"], "shape": {**shape, "trials": 6}}},
                    storage=storage, device="cpu", reporter=Seen(), progress=False)
    assert len(seen) == 2 and seen[0][1] is not None
    assert seen[0][1] <= min(stored)  # the first new line's best counts the four stored trials


def test_the_summary_says_the_rate_handed_on_and_when_shape_ended_worse_than_lr() -> None:
    from tuner.study.progress import summary_table
    from tuner.study.runner import StudyResult

    def summary(stage: str, value: float, params: dict, trial: int) -> StageSummary:
        return StageSummary(stage, f"s/{stage}", 4, 4, 0, 0, 0, value, params, 1.0, 1.0, best_trial=trial)

    result = StudyResult("s", "sqlite:///s.db", 0.0432, {
        "lr": summary("lr", 0.27, {"lr": 0.065, "width": 16}, 3),
        "shape": summary("shape", 0.79, {"lr": 0.03, "width": 64, "lr_scale": 0.7}, 5),
    })
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(result, "val_error"))
    assert "lr=0.065 (handed on: 0.0432)" in console.file.getvalue()  # type: ignore[attr-defined]
    assert result.best_stage == "lr" and result.best_value == 0.27
    assert result.worse_than_lr is not None and "0.79 against 0.27" in result.worse_than_lr and "trial 3" in result.worse_than_lr
    # The command it names reads the study where it is: a storage other than the default is said.
    assert "`tuner best s --storage sqlite:///s.db` trains it" in result.worse_than_lr
    default = StudyResult("s", "sqlite:///tuner.db", 0.0432, result.stages)
    assert default.worse_than_lr is not None and "`tuner best s` trains it" in default.worse_than_lr
    # As printed, a command that runs: no "***" for a password (said through the environment), quoted for the shell.
    postgres = StudyResult("s", "postgresql://tuner:***@db/tuner?sslmode=require&application_name=x", 0.0432, result.stages)
    said = postgres.worse_than_lr or ""
    assert "`tuner best s --storage 'postgresql://tuner@db/tuner?application_name=x&sslmode=require'` trains it" in said
    assert "***" not in said and "TUNER_STORAGE_PASSWORD" in said
    spaced = StudyResult("s", "sqlite:////tmp/my dir/s.db", 0.0432, result.stages)
    assert "--storage 'sqlite:////tmp/my dir/s.db'`" in (spaced.worse_than_lr or "")
    batched = dataclasses.replace(result.stages["lr"], trained_together=8)  # 4 trials here; a stage of 40 in batches of 8 alike
    caption = summary_table(StudyResult("s", "sqlite:///s.db", 0.0432, {"lr": batched}), "val_error").caption
    assert caption == "stage lr: trials trained together as batched models (its last batch: 8 as one)"
    result.stages["shape"] = summary("shape", 0.2, {"lr": 0.03, "width": 64}, 5)
    assert result.best_stage == "shape" and result.worse_than_lr is None


def test_trials_a_worker_stopped_are_counted_apart_from_trials_that_raised() -> None:
    """Ctrl-C, SIGTERM or a dead worker fails its trials (asked again), which the summary must not call failures."""
    import optuna

    from tuner.study.progress import summary_table
    from tuner.study.results import StudyResult, stage_summary

    study = optuna.create_study(study_name="s/lr")
    stored = [
        ({"error": "RuntimeError: CUDA out of memory", "traceback": "Traceback ..."}, "raised"),
        ({"error": "interrupted (Ctrl-C)"}, "stopped"),
        ({"error": "its process died (found by pid on this host)"}, "stopped"),
        ({"error": "surplus: other workers had claimed the budget first; not trained", "surplus": True}, "surplus"),
        ({}, "no finite value"),  # Optuna fails a trial told a non-finite value: a failure, not a stop
    ]
    for attrs, _ in stored:
        study.add_trial(create_trial(params={"lr": 0.01}, distributions=LR, state=TrialState.FAIL, user_attrs=attrs))
    study.add_trial(create_trial(params={"lr": 0.01}, distributions=LR, value=0.3))
    summary = stage_summary(study, "lr", 4)
    assert (summary.n_complete, summary.n_failed, summary.n_stopped) == (1, 2, 2)

    out = io.StringIO()
    reporter = ConsoleReporter(Console(file=out, width=200))
    reporter.stage_finished(summary)
    reporter.close()
    assert "1 complete, 0 pruned (0 diverged), 2 failed, 2 stopped by their worker (not failures; others take their places); best 0.3" in out.getvalue()
    caption = summary_table(StudyResult("s", "sqlite:///s.db", 0.01, {"lr": summary}), "val_error").caption
    assert caption is not None and "stage lr: 2 trials stopped by their worker" in caption


def test_a_stage_the_result_lacks_is_a_key_error_naming_the_stages_it_has() -> None:
    from tuner.study.results import StudyResult

    def summary(stage: str) -> StageSummary:
        return StageSummary(stage, f"s/{stage}", 4, 4, 0, 0, 0, 0.1, {"lr": 0.01}, 1.0, 1.0)

    result = StudyResult("s", "sqlite:///s.db", 0.01, {"lr[optimizer=adam]": summary("lr[optimizer=adam]"),
                                                        "lr[optimizer=sgd]": summary("lr[optimizer=sgd]"),
                                                        "shape": summary("shape")})
    assert result.stages["shape"].stage == "shape" and "lr" not in result.stages and result.stages.get("lr") is None
    with pytest.raises(KeyError, match=r"no stage 'lr' in this result; its stages: lr\[optimizer=adam\], "
                                       r"lr\[optimizer=sgd\], shape; stage lr ran once per variant"):
        result.stages["lr"]
    with pytest.raises(KeyError, match=r"no stage 'audit' in this result; its stages: lr\[optimizer=adam\]"):
        result.stages["audit"]


def test_the_report_counts_stopped_and_surplus_trials_apart_from_failed_ones() -> None:
    import optuna

    from tuner.report.html import _state_counts
    from tuner.report.runs import StageRuns

    study = optuna.create_study(study_name="s/lr")
    for attrs in ({"error": "ValueError: bad", "traceback": "Traceback ..."}, {"error": "terminated (SIGTERM)"},
                  {"error": "surplus: other workers had claimed the budget first; not trained", "surplus": True}):
        study.add_trial(create_trial(params={"lr": 0.01}, distributions=LR, state=TrialState.FAIL, user_attrs=attrs))
    study.add_trial(create_trial(params={"lr": 0.01}, distributions=LR, value=0.3))
    counts = _state_counts(StageRuns("lr", study, study.get_trials(), []))
    assert counts == ("1 complete, 0 pruned, 1 failed, 1 stopped by their worker (not failures; others take their places), "
                      "1 surplus (asked as others filled the budget; not trained)")


def test_the_summary_shows_the_audits_sampled_momentum_as_the_momentum_it_trained_with() -> None:
    from tuner.study.progress import summary_table
    from tuner.study.results import StudyResult

    audit = StageSummary("audit", "s/audit", 4, 4, 0, 0, 0, 0.1, {"lr": 0.01, "one_minus_momentum": 0.0312, "width": 64}, 1.0, 1.0)
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(StudyResult("s", "sqlite:///s.db", 0.01, {"audit": audit}), "val_error"))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "lr=0.01, momentum=0.969, width=64" in shown and "one_minus_momentum" not in shown


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_batch_counts_on_from_the_trials_other_workers_finished_while_it_trained(tmp_path, kind: str) -> None:
    # A new user's three workers printed [lr k/N] as their own count within a batch (1..8 each) and
    # [shape k/N] stage-wide: the count a batch starts from is now read when it is told.
    import optuna

    from tuner.storage import open_storage
    from tuner.study.trials import finished_before

    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}") if kind == "sqlite" else optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s/lr", storage=storage)
    ours = [study.ask() for _ in range(3)]  # this worker's batch, asked first
    for value in (0.3, 0.2):  # another worker's two trials, finished while ours trained
        study.tell(study.ask(), value)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    told = [study.tell(trial, 0.1) for trial in ours[:2]] + [study.tell(ours[2], state=TrialState.PRUNED)]
    assert finished_before(study, told) == 2


def test_each_line_shows_the_parameters_in_the_order_the_stages_first_line_did() -> None:
    # Through the gRPC proxy a trial's parameters came back in an order that varied from line to line.
    from optuna.distributions import IntDistribution

    stage = lr_stage(SPEC)
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    reporter = ConsoleReporter(console)
    reporter.stage_started(stage, 0)
    spaces = {"width": IntDistribution(8, 64), "depth": IntDistribution(1, 3), "lr_scale": FloatDistribution(0.3, 3)}
    for n, order in enumerate([("width", "depth", "lr_scale"), ("lr_scale", "width", "depth"), ("depth", "lr_scale", "width")]):
        values = {"width": 16 + n, "depth": 2, "lr_scale": 1.5}
        trial = create_trial(params={k: values[k] for k in order}, distributions={k: spaces[k] for k in order}, value=0.2)
        reporter.trial_finished(stage, trial, n + 1, 0.2)
    lines = console.file.getvalue().splitlines()[1:]  # type: ignore[attr-defined]
    assert [re.search(r"\((.*)\)", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        f"width={16 + n}, depth=2, lr_scale=1.5" for n in range(3)]
