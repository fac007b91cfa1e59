"""Write many trials' user attributes and intermediate values in one storage transaction.

Optuna's public API commits once per ``set_user_attr`` and once per ``report``: a trial of the
LR stage (20 epochs, a dozen attributes) costs about 35 commits, more than its training when 16
trials train together in a few milliseconds each. For an ``RDBStorage`` (SQLite, PostgreSQL,
MySQL) this writes a whole batch in one transaction of a few statements, into Optuna's own tables
with Optuna's own encodings and checks (a trial must still be running); any other storage gets the
public calls, one by one. Optuna's private storage pieces are used here and nowhere else.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.storages import RDBStorage

from tuner._sqlite import FastSQLiteStorage

Record = tuple[int, Mapping[str, Any], Mapping[int, float]]  # trial id, user attrs, step -> value
ROWS_PER_STATEMENT = 500  # well under SQLite's limit on bound variables per statement


def write_trial_records(study: optuna.Study, records: Sequence[Record]) -> None:
    """Store ``(trial_id, user_attrs, intermediate_values)`` of running trials, in one commit if possible.

    The result is what ``trial.set_user_attr(key, value)`` for each attribute and
    ``trial.report(value, step)`` for each step would leave, without a commit for each.

    Example:
        >>> write_trial_records(study, [(trial._trial_id, {"device": "cpu"}, {1: 0.5, 2: 0.4})])  # doctest: +SKIP
    """
    storage = study._storage  # noqa: SLF001 -- no public bulk write
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if isinstance(backend, FastSQLiteStorage):  # a SQLite file: plain sqlite3, no SQLAlchemy
        backend.write_trial_records(records)
        return
    if isinstance(backend, RDBStorage):
        _write_rdb(backend, records)
        return
    for trial_id, attrs, values in records:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial_id, step, float(value))


def _write_rdb(backend: RDBStorage, records: Sequence[Record]) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

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
                backend._set_trial_attr_without_commit(  # noqa: SLF001
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
                stored_value, value_type = values_model.intermediate_value_to_stored_repr(float(value))
                row = stored.get((trial_id, step))
                if row is None:
                    session.add(values_model(trial_id=trial_id, step=step, intermediate_value=stored_value,
                                             intermediate_value_type=value_type))
                else:
                    row.intermediate_value, row.intermediate_value_type = stored_value, value_type


def _bulk_upsert(dialect: str) -> Any:
    """A function (model, rows) -> one INSERT ... ON CONFLICT UPDATE statement, where the database has one."""
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 24, 0):
            return None
        if dialect == "sqlite":
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
