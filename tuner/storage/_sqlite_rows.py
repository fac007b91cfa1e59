"""Rows of Optuna's trial tables on SQLite, as tuner's fast path writes and reads them.

Optuna's own encodings (enum names, naive UTC datetimes, JSON attributes, its value types), so that
stock Optuna and optuna-dashboard read what :class:`tuner.storage._sqlite.FastSQLiteStorage` writes,
and it reads theirs: the upserts of one attribute or intermediate value, and whole trials read back
as ``FrozenTrial`` in a few statements.
"""

from __future__ import annotations

import copy
import datetime
import json
import sqlite3
from typing import Any

from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import _optuna

_UTC = datetime.timezone.utc


def stored_now() -> str:
    """Now, as SQLAlchemy stores Optuna's datetimes on SQLite: naive UTC, microseconds."""
    return datetime.datetime.now(_UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def local_time(stored: str | None) -> datetime.datetime | None:
    """A stored naive-UTC datetime as the naive local time Optuna's RDBStorage hands out."""
    if stored is None:
        return None
    return datetime.datetime.fromisoformat(stored).replace(tzinfo=_UTC).astimezone().replace(tzinfo=None)


def upsert_intermediate_value(connection: sqlite3.Connection, trial_id: int, step: int, value: float) -> None:
    stored, kind = _optuna.stored_intermediate_value(float(value))
    connection.execute(
        "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (trial_id, step) DO UPDATE SET "
        "intermediate_value = excluded.intermediate_value, intermediate_value_type = excluded.intermediate_value_type",
        (trial_id, step, stored, kind),
    )


def upsert_attr(connection: sqlite3.Connection, table: str, trial_id: int, key: str, value: Any) -> None:
    connection.execute(
        f"INSERT INTO {table} (trial_id, key, value_json) VALUES (?, ?, ?) "
        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
        (trial_id, key, json.dumps(value)),
    )


_distributions: dict[str, distributions.BaseDistribution] = {}  # JSON -> distribution: a study has few


def _distribution(text: str) -> distributions.BaseDistribution:
    """A new distribution object for ``text``, parsed once per process."""
    found = _distributions.get(text)
    if found is None:
        found = _distributions[text] = distributions.json_to_distribution(text)
    # A copy: Optuna's distributions can be changed, and one a caller changes must not change later reads.
    return copy.copy(found)


def read_trial_rows(connection: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[FrozenTrial]:
    """The trials matching ``where`` (on ``trials t``), with everything they hold, by trial id."""
    rows = connection.execute(
        f"SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete FROM trials t "
        f"WHERE {where} ORDER BY t.trial_id", args,
    ).fetchall()
    if not rows:
        return []
    fields: dict[int, dict[str, Any]] = {
        row[0]: {"values": {}, "params": {}, "distributions": {}, "user_attrs": {}, "system_attrs": {},
                 "intermediate_values": {}}
        for row in rows
    }

    def related(query: str) -> list[tuple[Any, ...]]:
        return connection.execute(query.format(match=f"SELECT t.trial_id FROM trials t WHERE {where}"), args).fetchall()

    for trial_id, objective, value, kind in related(
        "SELECT trial_id, objective, value, value_type FROM trial_values WHERE trial_id IN ({match})"
    ):
        fields[trial_id]["values"][objective] = _optuna.value_from_stored(value, kind)
    for trial_id, name, value, text in related(
        "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
        "WHERE trial_id IN ({match}) ORDER BY param_id"
    ):
        distribution = _distribution(text)
        fields[trial_id]["params"][name] = distribution.to_external_repr(value)
        fields[trial_id]["distributions"][name] = distribution
    for table, slot in (("trial_user_attributes", "user_attrs"), ("trial_system_attributes", "system_attrs")):
        for trial_id, key, text in related(
            f"SELECT trial_id, key, value_json FROM {table} WHERE trial_id IN ({{match}}) ORDER BY {table[:-1]}_id"
        ):
            fields[trial_id][slot][key] = json.loads(text)
    for trial_id, step, value, kind in related(
        "SELECT trial_id, step, intermediate_value, intermediate_value_type FROM trial_intermediate_values "
        "WHERE trial_id IN ({match}) ORDER BY trial_intermediate_value_id"
    ):
        fields[trial_id]["intermediate_values"][step] = _optuna.intermediate_value_from_stored(value, kind)

    trials = []
    for trial_id, number, state, started, completed in rows:
        held = fields[trial_id]
        values = [held["values"][k] for k in sorted(held["values"])] if held["values"] else None
        trials.append(FrozenTrial(
            number=number, state=TrialState[state], value=None, values=values,
            datetime_start=local_time(started), datetime_complete=local_time(completed),
            params=held["params"], distributions=held["distributions"], user_attrs=held["user_attrs"],
            system_attrs=held["system_attrs"], intermediate_values=held["intermediate_values"], trial_id=trial_id,
        ))
    return trials
