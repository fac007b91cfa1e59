"""Write many trials' user attributes and intermediate values in one storage transaction.

Optuna's public API commits once per ``set_user_attr`` and once per ``report``: a trial of the
LR stage (20 epochs, a dozen attributes) costs about 35 commits, more than its training when 16
trials train together in a few milliseconds each. For an ``RDBStorage`` (SQLite, PostgreSQL,
MySQL) this writes a whole batch in one transaction of a few statements, into Optuna's own tables
with Optuna's own encodings and checks (a trial must still be running); any other storage gets the
public calls, one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.storages import RDBStorage

from tuner.storage import _optuna
from tuner.storage._optuna import Record
from tuner.storage._sqlite import FastSQLiteStorage


def write_trial_records(study: optuna.Study, records: Sequence[Record]) -> None:
    """Store ``(trial_id, user_attrs, intermediate_values)`` of running trials, in one commit if possible.

    The result is what ``trial.set_user_attr(key, value)`` for each attribute and
    ``trial.report(value, step)`` for each step would leave, without a commit for each.

    Example:
        >>> write_trial_records(study, [(trial_id(trial), {"device": "cpu"}, {1: 0.5, 2: 0.4})])  # doctest: +SKIP
    """
    storage = _optuna.storage_of(study)  # no public bulk write
    backend = _optuna.backend_of(storage)
    if isinstance(backend, FastSQLiteStorage):  # a SQLite file: plain sqlite3, no SQLAlchemy
        backend.write_trial_records(records)
        return
    if isinstance(backend, RDBStorage):
        _optuna.write_rdb_records(backend, records)
        return
    for trial_id, attrs, values in records:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial_id, step, float(value))
