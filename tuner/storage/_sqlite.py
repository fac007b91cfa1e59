"""Optuna's RDBStorage on a SQLite file, with the calls every trial makes done in plain ``sqlite3``.

Optuna's ``RDBStorage`` goes through SQLAlchemy's ORM for every call. On SQLite one trial's ask,
records and tell cost some fifty statements of about a millisecond of Python each, while SQLite
itself needs a few hundredths of a millisecond a statement: the framework, not the database, made
a small trial's bookkeeping cost several times what it costs in memory.

:class:`FastSQLiteStorage` is an ``RDBStorage`` (schema and migrations, studies, heartbeats and every
call not named here are Optuna's own) whose per-trial calls — create a trial, set a parameter, a
user or system attribute, an intermediate value, the state and values; read trials — and a study's
user attributes run as plain SQL on the same tables with the same encodings (enum names, naive UTC
datetimes, Optuna's value types), so stock Optuna and optuna-dashboard read and write the same file. Every write commits
before it returns, as Optuna's do: a finished trial survives a killed process. Writes take
SQLite's write lock first (``BEGIN IMMEDIATE``), so trial numbers stay unique across processes.

It is used only for a file whose schema is the one written for (``SCHEMA_VERSIONS``); anything else
gets the stock ``RDBStorage`` (see :func:`open_sqlite_storage`). Both connect through
``_sqlite_files.connect``, the one place tuner's SQLite settings (WAL, ``synchronous``, busy timeout,
read-only) are written. The rows' encodings, and trials read back whole: ``_sqlite_rows.py``.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import _optuna
from tuner.storage._sqlite_files import BUSY_TIMEOUT_S, connect, sqlite_engine_kwargs
from tuner.storage._sqlite_rows import (
    local_time,
    read_trial_rows,
    stored_now,
    upsert_attr,
    upsert_intermediate_value,
)

SCHEMA_VERSIONS = ("v3.2.0.a",)  # Optuna's RDB schema versions whose tables this module writes
CREATE_ATTEMPTS = 5  # as Optuna's RDBStorage: a lock held longer than the busy timeout is tried again


class FastSQLiteStorage(_optuna.RDBStorageWithTrialHooks):
    """An ``RDBStorage`` on a SQLite file whose per-trial calls skip SQLAlchemy.

    Args:
        url: ``sqlite:///path``; a relative path is made absolute here, once.
        read_only: open the file read-only: nothing is written, not even the schema.
        new_trial_user_attrs: called for the user attributes that every new trial gets in the
            transaction that creates it (tuner: its owner, so that a process killed right after
            creating a trial leaves no trial without one).

    Example:
        >>> storage = FastSQLiteStorage("sqlite:///tuner.db")  # doctest: +SKIP
        >>> study = optuna.create_study(storage=storage)  # doctest: +SKIP
    """

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, skip_compatibility_check: bool = False,
                 *, busy_timeout_s: float = BUSY_TIMEOUT_S, read_only: bool = False,
                 new_trial_user_attrs: Callable[[], Mapping[str, Any]] | None = None, **kwargs: Any) -> None:
        database = sqlalchemy.engine.make_url(url).database or ""
        self._path = os.path.abspath(database)  # once: a later chdir must not move the file
        self._busy_timeout_s = busy_timeout_s
        self._read_only = read_only
        self._new_trial_user_attrs = new_trial_user_attrs
        self._local = threading.local()
        if engine_kwargs is None:
            engine_kwargs = sqlite_engine_kwargs(url, read_only=read_only, timeout=busy_timeout_s)
        if read_only:
            kwargs["skip_table_creation"] = True
        super().__init__(url, engine_kwargs, skip_compatibility_check, **kwargs)

    @staticmethod
    def applies_to(storage: RDBStorage) -> bool:
        """Whether ``storage`` is a SQLite file with a schema this module knows."""
        url = storage.engine.url
        return (
            storage.engine.name == "sqlite"
            and bool(url.database)
            and url.database != ":memory:"
            and not url.query
            and storage.get_current_version() in SCHEMA_VERSIONS
        )

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_local", None)  # connections belong to the process and thread that opened them
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    # ---- connections and transactions ----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: SQLite connections must not cross a fork)."""
        owner, connection = getattr(self._local, "connection", (None, None))
        if connection is None or owner != os.getpid():
            # Autocommit mode: transactions are begun and committed explicitly below.
            connection = connect(self._path, read_only=self._read_only, timeout=self._busy_timeout_s, isolation_level=None)
            self._local.connection = (os.getpid(), connection)
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start; committed on success."""
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise optuna.exceptions.StorageInternalError(f"SQLite: {error}") from error
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):  # as Optuna turns SQLAlchemy's errors into its own
                raise optuna.exceptions.StorageInternalError(f"SQLite: {error}") from error
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: its statements see one snapshot of the file."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    @staticmethod
    def _existing_study(connection: sqlite3.Connection, study_id: int) -> None:
        if connection.execute("SELECT 1 FROM studies WHERE study_id = ?", (study_id,)).fetchone() is None:
            raise KeyError(f"No study with study_id {study_id} exists.")

    def _updatable_trial(self, connection: sqlite3.Connection, trial_id: int) -> tuple[TrialState, int]:
        row = connection.execute("SELECT state, study_id FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        state = TrialState[row[0]]
        if state.is_finished():
            number = connection.execute("SELECT number FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()[0]
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{number} has already finished and can not be updated."
            )
        return state, row[1]

    # ---- writes --------------------------------------------------------------------------------

    def create_trial_row(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        if template_trial is not None:  # enqueued or added trials: rare, Optuna's own path
            return super().create_trial_row(study_id, template_trial)
        user_attrs = dict(self._new_trial_user_attrs()) if self._new_trial_user_attrs is not None else {}
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                return self._insert_trial(study_id, user_attrs)
            except optuna.exceptions.StorageInternalError:
                # As RDBStorage: the write lock was held past the busy timeout; wait and try again.
                if attempt == CREATE_ATTEMPTS:
                    raise
                time.sleep(random.random() * 2.0)
        raise AssertionError("unreachable")

    def _insert_trial(self, study_id: int, user_attrs: Mapping[str, Any]) -> FrozenTrial:
        started = stored_now()
        with self._write() as connection:
            self._existing_study(connection, study_id)
            # Under the write lock, the trials already there are exactly those numbered below this one.
            number = connection.execute("SELECT count(*) FROM trials WHERE study_id = ?", (study_id,)).fetchone()[0]
            cursor = connection.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) VALUES (?, ?, ?, ?, NULL)",
                (number, study_id, TrialState.RUNNING.name, started),
            )
            trial_id = int(cursor.lastrowid)
            for key, value in user_attrs.items():
                upsert_attr(connection, "trial_user_attributes", trial_id, key, value)
        return FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, values=None, datetime_start=local_time(started),
            datetime_complete=None, params={}, distributions={}, user_attrs=dict(user_attrs), system_attrs={},
            intermediate_values={}, trial_id=trial_id,
        )

    def set_checked_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                                distribution: distributions.BaseDistribution,
                                previous_distribution: distributions.BaseDistribution | None) -> None:
        with self._write() as connection:
            _, study_id = self._updatable_trial(connection, trial_id)
            if previous_distribution is None:
                previous = connection.execute(
                    "SELECT p.distribution_json FROM trial_params p JOIN trials t ON p.trial_id = t.trial_id "
                    "WHERE t.study_id = ? AND p.param_name = ? LIMIT 1",
                    (study_id, param_name),
                ).fetchone()
                if previous is not None:
                    previous_distribution = distributions.json_to_distribution(previous[0])
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution, distribution)
            # Optuna ignores a second value for the same parameter of a trial (a unique key): so do we.
            connection.execute(
                "INSERT OR IGNORE INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?, ?, ?, ?)",
                (trial_id, param_name, float(param_value_internal), distributions.distribution_to_json(distribution)),
            )

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        self.set_checked_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with self._write() as connection:
            return self._set_state_values(connection, trial_id, state, values)

    def set_trials_state_values(self, told: Sequence[tuple[int, TrialState, Sequence[float] | None]]) -> None:
        """``set_trial_state_values`` for each trial in turn, all in one commit.

        As the calls one by one would: a trial that has already finished raises, and the trials
        before it stay told.
        """
        refused: optuna.exceptions.UpdateFinishedTrialError | None = None
        with self._write() as connection:
            for trial_id, state, values in told:
                try:
                    self._set_state_values(connection, trial_id, state, values)
                except optuna.exceptions.UpdateFinishedTrialError as error:  # nothing of it was written
                    refused = error
                    break
        if refused is not None:
            raise refused

    def _set_state_values(self, connection: sqlite3.Connection, trial_id: int, state: TrialState,
                          values: Sequence[float] | None) -> bool:
        current, _ = self._updatable_trial(connection, trial_id)
        for objective, value in enumerate(values or ()):
            stored, kind = _optuna.stored_value(float(value))
            connection.execute(
                "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value, value_type = excluded.value_type",
                (trial_id, objective, stored, kind),
            )
        if state == TrialState.RUNNING and current != TrialState.WAITING:
            return False  # as Optuna: the values stay, the state does not change
        now = stored_now()
        connection.execute(
            "UPDATE trials SET state = ?, "
            "datetime_start = CASE WHEN ? THEN ? ELSE datetime_start END, "
            "datetime_complete = CASE WHEN ? THEN ? ELSE datetime_complete END WHERE trial_id = ?",
            (state.name, state == TrialState.RUNNING, now, state.is_finished(), now, trial_id),
        )
        return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._write() as connection:
            self._updatable_trial(connection, trial_id)
            upsert_intermediate_value(connection, trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.write_trial_records([(trial_id, {key: value}, {})])

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._write() as connection:
            self._updatable_trial(connection, trial_id)
            upsert_attr(connection, "trial_system_attributes", trial_id, key, value)

    def write_trial_records(self, records: Sequence[tuple[int, Mapping[str, Any], Mapping[int, float]]]) -> None:
        """``(trial_id, user_attrs, intermediate_values)`` of running trials, all in one commit."""
        with self._write() as connection:
            for trial_id, user_attrs, intermediate_values in records:
                self._updatable_trial(connection, trial_id)
                for key, value in user_attrs.items():
                    upsert_attr(connection, "trial_user_attributes", trial_id, key, value)
                for step, value in intermediate_values.items():
                    upsert_intermediate_value(connection, trial_id, step, float(value))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.set_study_user_attrs(study_id, {key: value})

    def set_study_user_attrs(self, study_id: int, attrs: Mapping[str, Any]) -> None:
        """Several user attributes of a study, in one commit.

        As Optuna's (its ORM compares before it writes), an attribute stored with the same value is
        not written again, and nothing is when none changed: a read-only file takes what it holds.
        """
        texts = {key: json.dumps(value) for key, value in attrs.items()}
        stored = dict(self._study_attr_rows(study_id))
        changed = [(key, text) for key, text in texts.items() if stored.get(key) != text]
        if not changed:
            return
        with self._write() as connection:
            self._existing_study(connection, study_id)
            for key, text in changed:
                connection.execute(
                    "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?, ?, ?) "
                    "ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
                    (study_id, key, text),
                )

    # ---- reads ---------------------------------------------------------------------------------

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return {key: json.loads(text) for key, text in self._study_attr_rows(study_id)}

    def _study_attr_rows(self, study_id: int) -> list[tuple[str, str]]:
        """A study's user attributes as stored: (key, JSON text), in the order Optuna's own query gives them
        (the same statement, so the same plan)."""
        with self._read() as connection:
            self._existing_study(connection, study_id)
            return connection.execute("SELECT key, value_json FROM study_user_attributes WHERE study_id = ?",
                                      (study_id,)).fetchall()

    def has_waiting_trials(self, study_id: int) -> bool:
        """Whether the study holds a WAITING (enqueued) trial: one indexed lookup, no trial read."""
        with self._read() as connection:
            return connection.execute("SELECT 1 FROM trials WHERE study_id = ? AND state = ? LIMIT 1",
                                      (study_id, TrialState.WAITING.name)).fetchone() is not None

    def count_trials(self, study_id: int, states: Sequence[TrialState], below_number: int) -> tuple[int, int]:
        """How many of the study's trials are in ``states``: in all, and numbered below ``below_number``."""
        names = [state.name for state in states]
        with self._read() as connection:
            total, below = connection.execute(
                f"SELECT count(*), coalesce(sum(number < ?), 0) FROM trials WHERE study_id = ? "
                f"AND state IN ({', '.join('?' * len(names))})", (below_number, study_id, *names),
            ).fetchone()
        return int(total), int(below)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._read() as connection:
            trials = read_trial_rows(connection, "t.trial_id = ?", (trial_id,))
        if not trials:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trials[0]

    def read_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        included = sorted(t for t in included_trial_ids if t <= trial_id_greater_than)
        where, args = "t.study_id = ?", [study_id]
        if states is not None:
            names = [state.name for state in TrialState if state in states]
            where += f" AND t.state IN ({', '.join('?' * len(names))})" if names else " AND 0"
            args += names
        if trial_id_greater_than > -1:
            if included:
                # One JSON array, not a parameter per id (SQLite caps a statement's parameters), and
                # no temporary table either: a read-only connection may not create one.
                where += " AND (t.trial_id > ? OR t.trial_id IN (SELECT value FROM json_each(?)))"
                args += [trial_id_greater_than, json.dumps(included)]
            else:
                where += " AND t.trial_id > ?"
                args.append(trial_id_greater_than)
        with self._read() as connection:
            self._existing_study(connection, study_id)
            return read_trial_rows(connection, where, tuple(args))


def open_sqlite_storage(url: str, *, read_only: bool = False,
                        new_trial_user_attrs: Callable[[], Mapping[str, Any]] | None = None, **kwargs: Any) -> RDBStorage:
    """An ``RDBStorage`` on the SQLite ``url`` with tuner's settings: a :class:`FastSQLiteStorage` where that applies.

    ``kwargs`` go to ``RDBStorage`` (heartbeats). ``read_only``: nothing is written to the file.
    """
    parsed = sqlalchemy.engine.make_url(url)
    if read_only:
        kwargs["skip_table_creation"] = True
    if parsed.database not in (None, "", ":memory:") and not parsed.query:
        storage = FastSQLiteStorage(url, read_only=read_only, new_trial_user_attrs=new_trial_user_attrs, **kwargs)
        if FastSQLiteStorage.applies_to(storage):
            return storage
        storage.engine.dispose()
    return RDBStorage(url, sqlite_engine_kwargs(url, read_only=read_only), **kwargs)
