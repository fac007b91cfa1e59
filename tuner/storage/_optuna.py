"""Every use of Optuna's private API in tuner, as small named functions.

Optuna has no public way to get a trial's storage id, a study's storage, the trials a sampler read
last, the heartbeat-stale trials, to write many rows in one transaction, or to stop its gRPC proxy. Tuner needs each of
them; here, and nowhere else (``tests/test_layout.py`` fails if another module of ``tuner`` touches a
private Optuna name), each gets a name that says what it gives. When Optuna changes one, this is
the file to fix; ``tests/test_sqlite_storage.py`` pins what these functions return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions, pruners
from optuna._warnings import optuna_warn
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study._tell import _check_values_are_feasible
from optuna.trial import FrozenTrial, TrialState

Record = tuple[int, Mapping[str, Any], Mapping[int, float]]  # trial id, user attrs, step -> value
ROWS_PER_STATEMENT = 500  # well under SQLite's limit on bound variables per statement


# ---- studies and trials ------------------------------------------------------------------------


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (not its number, which counts within the study)."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage the study reads and writes through (Optuna's cache around an ``RDBStorage``)."""
    return study._storage


def backend_of(storage: BaseStorage) -> BaseStorage:
    """The storage under Optuna's trial cache, if ``storage`` is that cache; else ``storage``."""
    return getattr(storage, "_backend", storage)


def cached_trials(study: optuna.Study, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's trials in ``states`` as its cache holds them (as the sampler read them at the last ask), not copied."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def look_in_queue_only_when(study: optuna.Study, has_waiting: Callable[[], bool]) -> None:
    """Let ``study.ask`` look for an enqueued (WAITING) trial only when ``has_waiting()`` says there is one.

    Optuna's ask finds enqueued trials by reading every unfinished trial of the study anew, with all
    it holds (``_pop_waiting_trial_id``); while K trials are being claimed that is K reads of up to
    K running trials, for a queue that is nearly always empty. With a cheap ``has_waiting`` (one
    indexed lookup), the queue is popped by Optuna's own code when it holds something, and the
    read is skipped when it does not. Set on this study object only (again: replaced, not stacked).
    """
    pop = type(study)._pop_waiting_trial_id
    study._pop_waiting_trial_id = lambda: pop(study) if has_waiting() else None  # type: ignore[method-assign]


Told = tuple[int, TrialState, list[float] | None]  # trial id, state, values: what a tell stores


def tell_trials(study: optuna.Study, outcomes: Sequence[tuple[int, float | None]],
                store: Callable[[list[Told]], None]) -> list[FrozenTrial]:
    """Tell each trial (by id) its value, or PRUNED where the value is None, as ``study.tell`` would one by one.

    What is stored and what the sampler's ``after_trial`` sees are Optuna's (``_tell_with_warning``
    and its checks): a pruned trial's value is its last report; a trial no longer RUNNING raises
    ValueError, after the trials before it are told. But the trials are read in one read, not two
    per trial, and ``store`` gets every state at once, to write them in one transaction. Returns
    the told trials as stored, read back in one read.
    """
    if not outcomes:
        return []
    backend = backend_of(storage_of(study))
    ids = [trial_id for trial_id, _ in outcomes]

    def read() -> dict[int, FrozenTrial]:  # exactly these trials: ids above max(ids) or among ids
        return {t._trial_id: t for t in backend._get_trials(study._study_id, None, set(ids), max(ids))}

    study._thread_local.cached_all_trials = None  # as tell: the next ask reads the trials anew
    frozen = read()
    told: list[Told] = []
    try:
        for trial_id, value in outcomes:
            trial = frozen[trial_id]
            if trial.state != TrialState.RUNNING:
                raise ValueError(f"Cannot tell a {trial.state.name} trial.")
            if value is None:
                state, values = TrialState.PRUNED, None
                last = trial.intermediate_values[trial.last_step] if trial.last_step is not None else None
                if last is not None and _check_values_are_feasible(study, [last]) is None:
                    values = [float(last)]
            else:
                failure = _check_values_are_feasible(study, [value])
                state, values = (TrialState.COMPLETE, [float(value)]) if failure is None else (TrialState.FAIL, None)
                if failure is not None:
                    optuna_warn(failure)
            told.append((trial_id, state, values))
            study.sampler.after_trial(pruners._filter_study(study, trial), trial, state, values)
    finally:
        if told:
            store(told)
    stored = read()
    return [stored[trial_id] for trial_id, _ in outcomes]


# ---- heartbeats --------------------------------------------------------------------------------


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` keeps Optuna's heartbeats (an ``RDBStorage`` opened with an interval)."""
    return is_heartbeat_enabled(storage)


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """The RUNNING trials of the study whose last Optuna heartbeat is older than the grace period."""
    return storage._get_stale_trial_ids(study_id)


# ---- RDBStorage: the per-trial calls, under public names ---------------------------------------


class RDBStorageWithTrialHooks(RDBStorage):
    """An ``RDBStorage`` whose private per-trial methods call public-named hooks.

    Optuna's study calls ``_create_new_trial``, ``_set_trial_param`` and ``_get_trials`` (through its
    cache); a subclass overrides :meth:`create_trial_row`, :meth:`set_checked_trial_param` and
    :meth:`read_trials` instead, and calls them on ``super()`` for Optuna's own behaviour.
    """

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.create_trial_row(study_id, template_trial)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        self.set_checked_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        return self.read_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def create_trial_row(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        """Create a trial (from ``template_trial``'s fields, if given) and return it."""
        return super()._create_new_trial(study_id, template_trial)

    def set_checked_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                                distribution: distributions.BaseDistribution,
                                previous_distribution: distributions.BaseDistribution | None) -> None:
        """Set a parameter, checking its distribution against ``previous_distribution`` (None: the stored one)."""
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def read_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """The study's trials in ``states`` with an id above ``trial_id_greater_than`` or in ``included_trial_ids``."""
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)


# ---- RDB encodings of values -------------------------------------------------------------------


def stored_value(value: float) -> tuple[float | None, str]:
    """A trial value as Optuna's RDB schema stores it: (number or NULL, ``value_type`` name)."""
    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
    return stored, kind.name


def value_from_stored(stored: float | None, kind: str) -> float:
    return models.TrialValueModel.stored_repr_to_value(stored, models.TrialValueModel.TrialValueType[kind])


def stored_intermediate_value(value: float) -> tuple[float | None, str]:
    """An intermediate value as Optuna's RDB schema stores it: (number or NULL, ``intermediate_value_type`` name)."""
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return stored, kind.name


def intermediate_value_from_stored(stored: float | None, kind: str) -> float:
    model = models.TrialIntermediateValueModel
    return model.stored_repr_to_intermediate_value(stored, model.TrialIntermediateValueType[kind])


# ---- RDB bulk writes ---------------------------------------------------------------------------


def write_rdb_records(backend: RDBStorage, records: Sequence[Record]) -> None:
    """Store ``(trial_id, user_attrs, intermediate_values)`` of running trials in one transaction.

    Into Optuna's own tables, with Optuna's encodings and its check that each trial still runs.
    """
    trial_ids = [trial_id for trial_id, _, _ in records]
    with _create_scoped_session(backend.scoped_session) as session:
        found = {t.trial_id: t for t in session.query(models.TrialModel).filter(models.TrialModel.trial_id.in_(trial_ids))}
        for trial_id in trial_ids:
            if trial_id not in found:
                raise KeyError(f"no trial with id {trial_id}")
            backend.check_trial_is_updatable(trial_id, found[trial_id].state)

        attrs = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for trial_id, trial_attrs, _ in records
            for key, value in trial_attrs.items()
        ]
        upsert = _bulk_upsert(backend.engine.name)
        if upsert is not None:
            for first in range(0, len(attrs), ROWS_PER_STATEMENT):
                session.execute(upsert(models.TrialUserAttributeModel, attrs[first:first + ROWS_PER_STATEMENT]))
        else:  # a database without an upsert statement: Optuna's own path, row by row
            for row in attrs:
                backend._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, row["trial_id"], row["key"], json.loads(row["value_json"])
                )

        values_model = models.TrialIntermediateValueModel
        with_values = [trial_id for trial_id, _, values in records if values]
        stored = {
            (row.trial_id, row.step): row
            for row in session.query(values_model).filter(values_model.trial_id.in_(with_values))
        } if with_values else {}
        for trial_id, _, values in records:
            for step, value in values.items():
                stored_value_, value_type = values_model.intermediate_value_to_stored_repr(float(value))
                row = stored.get((trial_id, step))
                if row is None:
                    session.add(values_model(trial_id=trial_id, step=step, intermediate_value=stored_value_,
                                             intermediate_value_type=value_type))
                else:
                    row.intermediate_value, row.intermediate_value_type = stored_value_, value_type


def rdb_has_waiting_trials(backend: RDBStorage, study_id: int) -> bool:
    """Whether the study holds a WAITING (enqueued) trial: one query, no trial read."""
    model = models.TrialModel
    with _create_scoped_session(backend.scoped_session) as session:
        found = session.query(model.trial_id).filter(model.study_id == study_id, model.state == TrialState.WAITING).first()
    return found is not None


def rdb_count_trials(backend: RDBStorage, study_id: int, states: Sequence[TrialState], below_number: int) -> tuple[int, int]:
    """How many of the study's trials are in ``states``: in all, and numbered below ``below_number``; one query."""
    model = models.TrialModel
    below = sqlalchemy.func.sum(sqlalchemy.case((model.number < below_number, 1), else_=0))
    with _create_scoped_session(backend.scoped_session) as session:
        total, n_below = session.query(sqlalchemy.func.count(model.trial_id), below).filter(
            model.study_id == study_id, model.state.in_(list(states))).one()
    return int(total), int(n_below or 0)


def _bulk_upsert(dialect: str) -> Any:
    """A function (model, rows) -> one INSERT ... ON CONFLICT UPDATE statement, where the database has one."""
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            import sqlite3

            if sqlite3.sqlite_version_info < (3, 24, 0):
                return None
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert

        def upsert(model: Any, rows: list[dict[str, Any]]) -> Any:
            statement = insert(model).values(rows)
            return statement.on_conflict_do_update(
                index_elements=[model.trial_id, model.key], set_={"value_json": statement.excluded.value_json}
            )

        return upsert
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        def upsert_mysql(model: Any, rows: list[dict[str, Any]]) -> Any:
            statement = mysql_insert(model).values(rows)
            return statement.on_duplicate_key_update(value_json=statement.inserted.value_json)

        return upsert_mysql
    return None


# ---- the gRPC storage proxy -------------------------------------------------------------------


def grpc_proxy_server(storage: BaseStorage, address: str, threads: int, interceptors: Sequence[Any] = ()) -> tuple[Any, int]:
    """Optuna's gRPC storage proxy for ``storage``, bound to ``address`` but not started; and the port bound.

    What ``optuna.storages.run_grpc_proxy_server`` builds, without its endless wait: the caller
    gets the server, to stop it cleanly on Ctrl-C or SIGTERM, and the port (``address`` may ask for
    port 0, any free one), with gRPC's server ``interceptors``. Raises ``RuntimeError`` when the
    address cannot be bound.
    """
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    # Without so_reuseport=0, gRPC lets a second proxy bind the same port and share its calls.
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tuner-proxy"),
                         options=[("grpc.so_reuseport", 0)], interceptors=list(interceptors))
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    port = server.add_insecure_port(address)
    if not port:  # older grpcio answers 0 instead of raising
        raise RuntimeError(f"Failed to bind to address {address}")
    return server, port


# ---- the schema --------------------------------------------------------------------------------


def schema_tables() -> dict[str, set[str]]:
    """Optuna's RDB tables (this version's schema), each with its column names; plus Alembic's."""
    tables = {name: {column.name for column in table.columns} for name, table in models.BaseModel.metadata.tables.items()}
    tables.setdefault("alembic_version", {"version_num"})
    return tables
