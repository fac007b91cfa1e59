"""Claiming trials asks the storage small questions: the answers are those Optuna's own reads gave.

An ask skips reading the stage's trials for enqueued ones while none waits, yet still pops one that
does; the count of claimed trials behind the surplus check is the one the trials themselves give;
on every kind of storage.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from pg import PostgresServer, postgres_server  # noqa: F401 -- postgres_server is a fixture

import tuner
from tuner.inputs.load import load_dataset
from tuner.storage import (
    FastSQLiteStorage,
    count_trials,
    open_storage,
    skip_empty_queue,
    tell_trials,
)
from tuner.study.runner import run_stage

SPACE = {"lr": FloatDistribution(1e-5, 1.0, log=True)}
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _storage(kind: str, folder: Path) -> optuna.storages.BaseStorage:
    if kind == "journal":
        return open_storage(f"journal:///{folder / 'claims.log'}")
    if kind == "stock sqlite":  # an RDBStorage that is not tuner's fast path (a database in memory)
        return open_storage("sqlite:///:memory:")
    return open_storage(f"sqlite:///{folder / 'claims.db'}")


@pytest.mark.parametrize("kind", ["fast sqlite", "stock sqlite", "journal"])
def test_asks_pop_enqueued_trials_and_the_claimed_counts_match_the_trials(tmp_path: Path, kind: str) -> None:
    storage = _storage(kind, tmp_path)
    assert isinstance(storage, FastSQLiteStorage) == (kind == "fast sqlite")
    _queue_and_counts_story(storage)


def test_on_postgresql_the_claims_queries_and_a_batch_tell_give_what_optuna_gives(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("claims")
    storage = open_storage(postgres_server.url("claims", with_password=True))
    _queue_and_counts_story(storage)
    one_by_one, at_once = _told_story(storage, None, "one"), _told_story(storage, tell_trials, "all")
    _assert_told_alike(one_by_one, at_once)


def _queue_and_counts_story(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(study_name="claims", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    skip_empty_queue(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
        done, pruned, failed = (study.ask(fixed_distributions=SPACE) for _ in range(3))
        study.tell(done, 0.5)
        study.tell(pruned, state=TrialState.PRUNED)
        study.tell(failed, state=TrialState.FAIL)
        study.enqueue_trial({"lr": 0.0123})
        popped = study.ask(fixed_distributions=SPACE)  # the enqueued trial, not a new one
        fresh = study.ask(fixed_distributions=SPACE)
    assert popped.params == {"lr": 0.0123} and popped.number == 3
    assert fresh.number == 4 and fresh.params["lr"] != 0.0123
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.RUNNING, TrialState.RUNNING]
    for number in range(6):
        expected = (sum(t.state in CLAIMED for t in trials), sum(t.state in CLAIMED and t.number < number for t in trials))
        assert count_trials(study, CLAIMED, number) == expected
    assert count_trials(study, (TrialState.WAITING,), 5) == (0, 0)


def test_an_ask_with_an_empty_queue_reads_no_trials_of_the_stage(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'reads.db'}")
    study = optuna.create_study(study_name="reads", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    skip_empty_queue(study)
    reads = []
    read_trials = storage.read_trials
    storage.read_trials = lambda *args: reads.append(args) or read_trials(*args)  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            study.ask(fixed_distributions=SPACE)
    assert reads == []  # a random sampler reads nothing, and neither does the empty queue now
    study.enqueue_trial({"lr": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert study.ask(fixed_distributions=SPACE).params == {"lr": 0.5}
    assert reads  # the queue held a trial: Optuna's own read popped it


def test_a_trial_enqueued_on_a_stage_is_trained_as_one_of_its_budget(tmp_path: Path) -> None:
    spec = tuner.spec_from_dict({
        "name": "queued", "seed": 0, "data": {"name": "wine"}, "model": {"width": 8, "depth": 1},
        "train": {"epochs": 2, "batch_size": 32},
        "stages": {"lr": {"trials": 4, "lr_min": 1e-3, "lr_max": 0.3, "sampler": "random", "batch_trials": 4}},
    })
    storage = open_storage(f"sqlite:///{tmp_path / 'queued.db'}")
    data = load_dataset(spec.data, spec.seed, spec.source)
    run_stage(spec, "lr", storage=storage, data=data, device=torch.device("cpu"))
    study = optuna.load_study(study_name="queued/lr", storage=storage)
    study.enqueue_trial({"lr": 0.0421})  # e.g. by hand, for a rate one wants tried
    raised = spec.with_changes(stages=dataclasses.replace(spec.stages, lr=dataclasses.replace(spec.stages.lr, trials=5)))
    run_stage(raised, "lr", storage=storage, data=data, device=torch.device("cpu"))
    trials = optuna.load_study(study_name="queued/lr", storage=storage).get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[4].params == {"lr": 0.0421} and "learning_curve" in trials[4].user_attrs


def _told_story(storage: optuna.storages.BaseStorage, tell: object, name: str = "told") -> list[optuna.trial.FrozenTrial]:
    """Five trials told at the end of a batch: complete, pruned with reports (the last NaN, or inf), none."""
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trials = [study.ask(fixed_distributions=SPACE) for _ in range(5)]
    for trial, reports in zip(trials, ([0.5, 0.25], [0.5, 0.4], [0.3, float("nan")], [float("inf")], [])):
        for step, value in enumerate(reports, start=1):
            trial.report(value, step)
    outcomes = [(trials[0], 0.25), (trials[1], None), (trials[2], None), (trials[3], None), (trials[4], None)]
    if tell is None:  # Optuna's own, one by one
        return [study.tell(t, state=TrialState.PRUNED) if v is None else study.tell(t, v) for t, v in outcomes]
    return tell(study, outcomes)  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["fast sqlite", "stock sqlite", "journal"])
def test_telling_a_batch_at_once_stores_and_returns_what_telling_each_would(tmp_path: Path, kind: str) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "all").mkdir()
    one_by_one = _told_story(_storage(kind, tmp_path / "one"), None)
    at_once = _told_story(_storage(kind, tmp_path / "all"), tell_trials)
    _assert_told_alike(one_by_one, at_once)


def _assert_told_alike(one_by_one: list[optuna.trial.FrozenTrial], at_once: list[optuna.trial.FrozenTrial]) -> None:
    assert [t.state for t in at_once] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 4
    assert [t.values for t in at_once] == [[0.25], [0.4], None, [float("inf")], None]  # a pruned trial: its last report
    for a, b in zip(one_by_one, at_once):
        assert (a.number, a.state, a.values, a.params, a.intermediate_values.keys(), a.user_attrs) == (
            b.number, b.state, b.values, b.params, b.intermediate_values.keys(), b.user_attrs)
        assert b.datetime_complete is not None


@pytest.mark.parametrize("kind", ["fast sqlite", "stock sqlite"])
def test_a_trial_finished_by_another_worker_stops_the_batch_tell_after_the_ones_before_it(tmp_path: Path, kind: str) -> None:
    storage = _storage(kind, tmp_path)
    study = optuna.create_study(study_name="raced", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, failed, last = (study.ask(fixed_distributions=SPACE) for _ in range(3))
    storage.set_trial_state_values(failed._trial_id, TrialState.FAIL)  # noqa: SLF001 -- e.g. found orphaned
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
        tell_trials(study, [(first, 0.5), (failed, 0.25), (last, 0.125)])
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]


def test_trials_claimed_before_the_storage_fails_mid_claim_are_abandoned_not_left_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study import runner

    spec = tuner.spec_from_dict({
        "name": "midclaim", "seed": 0, "data": {"name": "wine"}, "model": {"width": 8, "depth": 1},
        "train": {"epochs": 2, "batch_size": 32},
        "stages": {"lr": {"trials": 4, "lr_min": 1e-3, "lr_max": 0.3, "sampler": "random", "batch_trials": 4}},
    })
    storage = open_storage(f"sqlite:///{tmp_path / 'midclaim.db'}")
    counts = runner.count_trials
    calls = []

    def failing_on_the_third(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:  # two trials claimed, the third created: then the storage goes away
            raise optuna.exceptions.StorageInternalError("the database went away")
        return counts(*args, **kwargs)

    monkeypatch.setattr(runner, "count_trials", failing_on_the_third)
    data = load_dataset(spec.data, spec.seed, spec.source)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        run_stage(spec, "lr", storage=storage, data=data, device=torch.device("cpu"))
    trials = optuna.load_study(study_name="midclaim/lr", storage=storage).get_trials()
    assert len(trials) == 3  # every trial created, none left RUNNING for the other workers to wait on
    assert all(t.state == TrialState.FAIL for t in trials)


RACE = {"name": "race", "seed": 0, "data": {"name": "wine"}, "model": {"width": 8, "depth": 1},
        "train": {"epochs": 1, "batch_size": 32},
        "stages": {"lr": {"trials": 6, "lr_min": 1e-3, "lr_max": 0.3, "sampler": "random", "batch_trials": 3}}}


def _positions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(trial number, position its sampler was seeded from), for every trial asked from now on."""
    from tuner.study.search import PlacedSampler

    seen: list[tuple[int, int]] = []
    before = PlacedSampler.before_trial

    def recording(self: PlacedSampler, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        before(self, study, trial)
        seen.append((trial.number, self.position))

    monkeypatch.setattr(PlacedSampler, "before_trial", recording)
    return seen


def test_one_worker_asks_its_batches_at_the_positions_it_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The k-th trial of a batch at the trials held before it plus k, as sampler_for promises (a resumed stage
    # asks what an uninterrupted one would); a trial stopped by its worker gives its place up.
    from tuner.study.stages import lr_stage, sampler_for

    from tuner.study import runner

    spec = tuner.spec_from_dict(RACE)
    storage = open_storage(f"sqlite:///{tmp_path / 'one.db'}")
    ask = runner._StageRunner._ask

    def after_a_stopped_trial(self: runner._StageRunner, study: optuna.Study, stage: object) -> object:
        if not study.trials:  # a worker's trial, stopped before this one asks: failed without a traceback
            study.tell(ask(self, study, stage)[1], state=TrialState.FAIL)
        return ask(self, study, stage)

    monkeypatch.setattr(runner._StageRunner, "_ask", after_a_stopped_trial)
    seen = _positions(monkeypatch)
    run_stage(spec, "lr", storage=storage, data=load_dataset(spec.data, spec.seed, spec.source), device=torch.device("cpu"))
    assert seen == [(0, 0), *((n, n - 1) for n in range(1, 7))]  # the stopped trial 0 gave its place up to trial 1
    trials = {t.number: t for t in optuna.load_study(study_name="race/lr", storage=storage).get_trials()}
    stage = lr_stage(spec)
    for number, position in seen[1:]:  # what a sampler seeded at that position draws
        sampler = sampler_for(stage, spec.seed, position)[0]
        drawn = sampler.sample_independent(None, trials[number], "lr", stage.space["lr"])
        assert trials[number].params["lr"] == pytest.approx(drawn)


def test_workers_asking_at_the_same_moment_draw_different_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new user's two workers on one SQLite file trained 8 of 20 rates twice: both counted the stage at once and
    # seeded their samplers from the same count. Here another worker's asks interleave with this one's, and one
    # of its trials is stopped (gives its place up) in between.
    from tuner.study import runner

    spec = tuner.spec_from_dict(RACE)
    storage = open_storage(f"sqlite:///{tmp_path / 'race.db'}")
    ask, theirs = runner._StageRunner._ask, []

    def interleaved(self: runner._StageRunner, study: optuna.Study, stage: object) -> object:
        if len(theirs) < 3:  # the other worker asks just before each of our asks, and trains its trial
            _, trial = ask(self, study, stage)
            theirs.append(trial.params["lr"])
            study.tell(trial, 0.5)
        return ask(self, study, stage)

    monkeypatch.setattr(runner._StageRunner, "_ask", interleaved)
    seen = _positions(monkeypatch)
    run_stage(spec, "lr", storage=storage, data=load_dataset(spec.data, spec.seed, spec.source), device=torch.device("cpu"))
    trials = optuna.load_study(study_name="race/lr", storage=storage).get_trials()
    ours = [t.params["lr"] for t in trials if t.value != 0.5]
    assert len(theirs) == len(ours) == 3 and len(trials) == 6  # the budget: theirs and ours
    assert len(set(theirs) | set(ours)) == 6  # each trained trial its own draw
    assert sorted(position for _, position in seen) == list(range(6))


def test_a_trial_that_gives_its_place_up_after_later_ones_were_asked_leaves_it_to_the_next_not_to_a_trained_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new user killed one of three workers mid-trial and ran it again: its trial was failed (place given up)
    # after another worker had asked the next one, and the rerun's trial drew what that one trained.
    from tuner.study import runner

    spec = tuner.spec_from_dict({**RACE, "stages": {"lr": {**RACE["stages"]["lr"], "batch_trials": 1, "trials": 4}}})
    storage = open_storage(f"sqlite:///{tmp_path / 'rejoin.db'}")
    ask, dead, other = runner._StageRunner._ask, [], []

    def after_a_kill(self: runner._StageRunner, study: optuna.Study, stage: object) -> object:
        if not dead:
            dead.append(ask(self, study, stage)[1])  # the killed worker's trial, left running
            other.append(ask(self, study, stage)[1])  # another worker's, asked meanwhile, trained
            study.tell(other[0], 0.5)
            study.tell(dead[0], state=TrialState.FAIL)  # found dead: failed without a traceback, its place given up
        return ask(self, study, stage)

    monkeypatch.setattr(runner._StageRunner, "_ask", after_a_kill)
    seen = _positions(monkeypatch)
    run_stage(spec, "lr", storage=storage, data=load_dataset(spec.data, spec.seed, spec.source), device=torch.device("cpu"))
    trials = optuna.load_study(study_name="race/lr", storage=storage).get_trials()
    assert [position for _, position in seen] == [0, 1, 0, 2, 3]  # the rerun's first trial takes the dead one's place
    assert [t.user_attrs.get("ask_position") for t in trials] == [0, 1, 0, 2, 3]
    trained = [t.params["lr"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(trained) == 4 and len(set(trained)) == 4  # no configuration trained twice
    assert trials[2].params["lr"] == dead[0].params["lr"]  # it draws what the dead one drew
