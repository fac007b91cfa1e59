"""The fast SQLite path stores exactly what Optuna's own RDBStorage stores, and reads it back alike."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import FastSQLiteStorage, open_storage

SPACE = {
    "lr": FloatDistribution(1e-5, 1.0, log=True),
    "width": IntDistribution(4, 64, log=True),
    "schedule": CategoricalDistribution(["constant", "step"]),
}


def _a_study_story(storage: optuna.storages.BaseStorage) -> list[FrozenTrial]:
    """Trials of every kind a tuner study leaves: complete, pruned with curves, failed, odd values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
        study = optuna.create_study(study_name="story", storage=storage,
                                    sampler=optuna.samplers.RandomSampler(seed=3))
        for number in range(6):
            trial = study.ask(fixed_distributions=SPACE)
            trial.set_user_attr("worker", "host:1")
            trial.set_user_attr("learning_curve", [0.5, None, 0.25])
            trial.storage.set_trial_system_attr(trial._trial_id, "tuner:beat", number)  # noqa: SLF001
            for step, value in enumerate([0.9, float("nan"), float("inf"), 0.4][: number + 1]):
                trial.report(value, step)
            trial.report(0.3, 0)  # a step reported again: Optuna ignores it
            if number == 1:
                study.tell(trial, state=TrialState.PRUNED)
            elif number == 2:
                study.tell(trial, state=TrialState.FAIL)
            elif number == 3:
                study.tell(trial, float("inf"))
            elif number == 4:
                continue  # left running
            else:
                study.tell(trial, 0.125 * number)
        study.enqueue_trial({"lr": 0.01, "width": 8, "schedule": "step"})
        study.tell(study.ask(fixed_distributions=SPACE), 0.5)
    return study.get_trials()


def _same(a: FrozenTrial, b: FrozenTrial) -> None:
    assert (a.number, a.state, a.params, a.distributions, a.user_attrs, a.system_attrs) == (
        b.number, b.state, b.params, b.distributions, b.user_attrs, b.system_attrs)
    assert a.values == b.values or (a.values is not None and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.values, b.values)))
    assert a.intermediate_values.keys() == b.intermediate_values.keys()
    for step, value in a.intermediate_values.items():
        other = b.intermediate_values[step]
        assert value == other or (math.isnan(value) and math.isnan(other))
    assert (a.datetime_start is None) == (b.datetime_start is None)
    assert (a.datetime_complete is None) == (b.datetime_complete is None)


def test_the_tuner_opens_a_sqlite_file_with_the_fast_path_and_memory_without(tmp_path: Path) -> None:
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'a.db'}"), FastSQLiteStorage)
    in_memory = open_storage("sqlite:///:memory:")
    assert isinstance(in_memory, optuna.storages.RDBStorage) and not isinstance(in_memory, FastSQLiteStorage)


def test_fast_and_stock_storages_leave_the_same_trials_and_read_each_other(tmp_path: Path) -> None:
    stock_url, fast_url = f"sqlite:///{tmp_path / 'stock.db'}", f"sqlite:///{tmp_path / 'fast.db'}"
    stock = _a_study_story(optuna.storages.RDBStorage(stock_url))
    fast = _a_study_story(FastSQLiteStorage(fast_url))  # open_storage's would add each trial's owner
    assert [t.state for t in fast] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                      TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE, TrialState.COMPLETE]
    assert fast[6].params == {"lr": 0.01, "width": 8, "schedule": "step"}  # the enqueued trial, Optuna's own path
    assert fast[3].value == math.inf and fast[5].intermediate_values[0] == 0.9  # Optuna keeps a step's first report
    for a, b in zip(stock, fast):
        _same(a, b)
    # Stock Optuna reads what the fast path wrote, and the fast path reads what stock Optuna wrote.
    for written, url in ((fast, fast_url), (stock, stock_url)):
        for reader in (optuna.storages.RDBStorage(url), open_storage(url)):
            read = optuna.load_study(study_name="story", storage=reader).get_trials()
            for a, b in zip(written, read):
                _same(a, b)
                assert a.datetime_start == b.datetime_start and a.datetime_complete == b.datetime_complete


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # plain ask/tell on a heartbeat storage
def test_a_finished_trial_cannot_be_changed_and_an_unknown_one_is_a_key_error(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, "late", 1)  # noqa: SLF001
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    with pytest.raises(KeyError):
        storage.get_trial(10_000)


def test_a_told_trial_survives_a_kill_9_right_after(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal, optuna
        from tuner.storage import open_storage
        study = optuna.create_study(study_name="k", storage=open_storage("sqlite:///{db}"))
        trial = study.ask()
        trial.set_user_attr("learning_curve", [0.5, 0.25])
        study.tell(trial, 0.25)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert done.returncode == -9
    trial = optuna.load_study(study_name="k", storage=f"sqlite:///{db}").get_trials()[0]
    assert (trial.state, trial.value, trial.user_attrs["learning_curve"]) == (TrialState.COMPLETE, 0.25, [0.5, 0.25])


def test_trial_numbers_stay_unique_when_processes_ask_at_once(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    optuna.create_study(study_name="race", storage=open_storage(f"sqlite:///{db}"))
    script = textwrap.dedent(f"""
        import optuna
        from tuner.storage import open_storage
        study = optuna.load_study(study_name="race", storage=open_storage("sqlite:///{db}"))
        for _ in range(25):
            study.tell(study.ask(), 1.0)
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(3)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0, 0]
    numbers = [t.number for t in optuna.load_study(study_name="race", storage=f"sqlite:///{db}").get_trials()]
    assert sorted(numbers) == list(range(75))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_private_optuna_pieces_tuner_relies_on_still_give_what_it_expects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.storage import _optuna

    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_HEARTBEAT_GRACE", "2")
    storage = open_storage(f"sqlite:///{tmp_path / 'pinned.db'}")
    study = optuna.create_study(study_name="pinned", storage=storage)
    finished, running = study.ask(), study.ask()
    study.tell(finished, 1.0)
    assert _optuna.backend_of(_optuna.storage_of(study)) is storage  # under Optuna's cache
    assert _optuna.study_id(study) == storage.get_study_id_from_name("pinned")
    ids = [_optuna.trial_id(trial) for trial in (finished, running)]
    assert ids == [storage.get_trial_id_from_study_id_trial_number(_optuna.study_id(study), n) for n in (0, 1)]
    assert [t.number for t in _optuna.cached_trials(study, (TrialState.COMPLETE,))] == [0]
    assert [t.number for t in _optuna.cached_trials(study)] == [0, 1]
    assert _optuna.heartbeat_enabled(storage) and not _optuna.heartbeat_enabled(optuna.storages.InMemoryStorage())
    storage.record_heartbeat(ids[1])
    assert _optuna.stale_trial_ids(storage, _optuna.study_id(study)) == []
    time.sleep(3.5)  # past the grace period (SQLite keeps heartbeats to the second)
    assert _optuna.stale_trial_ids(storage, _optuna.study_id(study)) == [ids[1]]
    assert _optuna.value_from_stored(*_optuna.stored_value(float("-inf"))) == float("-inf")
    assert math.isnan(_optuna.intermediate_value_from_stored(*_optuna.stored_intermediate_value(float("nan"))))
    assert {"studies", "trials", "version_info", "alembic_version"} <= set(_optuna.schema_tables())


@pytest.mark.parametrize("number", [np.float32, np.float64, np.int64], ids=lambda kind: kind.__name__)
def test_numpy_numbers_given_to_the_storage_are_stored_as_numbers_as_stock_optuna_stores_them(
    tmp_path: Path, number: type
) -> None:
    read: dict[str, tuple] = {}
    for kind, storage in (("stock", optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'stock.db'}")),
                          ("fast", FastSQLiteStorage(f"sqlite:///{tmp_path / 'fast.db'}"))):
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "numpy")
        worse, better = storage.create_new_trial(study_id), storage.create_new_trial(study_id)
        storage.set_trial_param(worse, "x", number(1), FloatDistribution(0.0, 2.0))
        storage.set_trial_intermediate_value(worse, 0, number(3))
        storage.set_trial_state_values(worse, TrialState.COMPLETE, [number(2)])
        storage.set_trial_state_values(better, TrialState.COMPLETE, [number(1)])
        trial = storage.get_trial(worse)
        read[kind] = (trial.params, trial.intermediate_values, trial.values, storage.get_best_trial(study_id).number)
    assert read["fast"] == read["stock"] == ({"x": 1.0}, {0: 3.0}, [2.0], 1)
    assert all(type(value) is float for value in (*read["fast"][0].values(), *read["fast"][1].values(), *read["fast"][2]))


def test_a_caller_changing_a_trials_distribution_changes_no_later_read(tmp_path: Path) -> None:
    storage = FastSQLiteStorage(f"sqlite:///{tmp_path / 'a.db'}")
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "shared")
    for _ in range(2):
        trial_id = storage.create_new_trial(study_id)
        storage.set_trial_param(trial_id, "lr", 0.5, FloatDistribution(1e-5, 1.0, log=True))
    first, second = storage.get_all_trials(study_id)
    first.distributions["lr"].low = 0.25  # a caller's own change to what it was handed
    assert second.distributions["lr"] == FloatDistribution(1e-5, 1.0, log=True)
    assert storage.get_trial(first._trial_id).distributions["lr"] == FloatDistribution(1e-5, 1.0, log=True)  # noqa: SLF001
    assert storage.get_all_trials(study_id)[0].distributions["lr"] == FloatDistribution(1e-5, 1.0, log=True)


def test_a_studys_user_attributes_written_at_once_read_alike_by_the_fast_path_and_stock_optuna(tmp_path: Path) -> None:
    from tuner.storage import write_study_attrs

    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    fast = open_storage(url)
    study = optuna.create_study(study_name="attrs", storage=fast)
    write_study_attrs(study, {"settings": {"lr": [1e-6, 1.0], "name": "é"}, "budget": 30, "none": None})
    study.set_user_attr("budget", 31)  # one attribute again: replaced, in its place
    stock = optuna.load_study(study_name="attrs", storage=optuna.storages.RDBStorage(url))
    expected = {"settings": {"lr": [1e-6, 1.0], "name": "é"}, "budget": 31, "none": None}
    assert study.user_attrs == stock.user_attrs == expected
    assert list(study.user_attrs) == list(stock.user_attrs)  # the same order
    stock.set_user_attr("task", "classification")
    assert study.user_attrs == {**expected, "task": "classification"}
    with pytest.raises(KeyError):
        fast.get_study_user_attrs(12345)
    # As Optuna's ORM: a value stored already is not written again, so a file opened read-only takes it.
    from tuner.storage import open_existing_storage

    read_only = optuna.load_study(study_name="attrs", storage=open_existing_storage(url))
    read_only.set_user_attr("budget", 31)
    with pytest.raises(optuna.exceptions.StorageInternalError, match="readonly"):
        read_only.set_user_attr("budget", 32)


# A process's SQLite locks: closing any descriptor of the database file drops every POSIX lock the process
# holds on it, SQLite's too; another process may then take the file as its own and delete the WAL under
# this one's connections (two workers, one killed, a reader: "database disk image is malformed").
_EXCLUSIVE_PROBE = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:  # what SQLite's last-connection check takes: a write lock over the SHARED byte range
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000000 + 2, 0)
        print("obtained")
    except OSError:
        print("refused")
""")


def _exclusive_lock_from_another_process(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", _EXCLUSIVE_PROBE, str(path)], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_checking_and_reading_a_sqlite_file_keep_the_locks_of_this_process_on_it(tmp_path: Path) -> None:
    from tuner.storage import open_existing_storage
    from tuner.storage._sqlite_files import can_write, connect, foreign_content

    path = tmp_path / "study.db"
    storage = open_storage(f"sqlite:///{path}")
    optuna.create_study(study_name="held", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    held = connect(str(path))  # a worker's connection, open for the whole run
    held.execute("SELECT count(*) FROM trials").fetchone()
    assert _exclusive_lock_from_another_process(path) == "refused"  # the worker's SHARED lock holds it off

    assert can_write(str(path))
    assert foreign_content(str(path)) is None
    connect(str(path), read_only=True).close()
    reader = open_existing_storage(f"sqlite:///{path}")  # what finished_result, the report and the verdict open
    assert optuna.get_all_study_names(storage=reader) == ["held"]
    again = open_storage(f"sqlite:///{path}")  # a worker starting on a file that exists: checked, then opened
    assert optuna.get_all_study_names(storage=again) == ["held"]
    assert _exclusive_lock_from_another_process(path) == "refused", "a check in this process dropped its lock"
    held.close()
