"""A SQLite file as tuner opens it: the connection settings, read-only opening, whose file it is.

:func:`connect` is the one place tuner's SQLite settings are written; every connection tuner opens,
SQLAlchemy's and the fast path's (``_sqlite.py``), comes from it.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import urllib.parse
from contextlib import closing
from typing import Any

import sqlalchemy

from tuner.storage import _optuna

BUSY_TIMEOUT_S = 120.0  # concurrent writers wait this long for the write lock instead of failing
# WAL: readers never block the writer. synchronous=NORMAL: a commit survives a killed process
# (only a power cut can lose the last ones), at half the cost of FULL.
WRITER_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def connect(database: str, *, read_only: bool = False, timeout: float = BUSY_TIMEOUT_S, uri: bool = False,
            **driver_kwargs: Any) -> sqlite3.Connection:
    """A ``sqlite3`` connection to ``database`` with tuner's settings: the one place they are written.

    Every connection tuner opens goes through here: SQLAlchemy's (as the ``creator`` of the engine
    tuner makes, see :func:`sqlite_engine_kwargs`; no other engine of the process is touched) and the
    fast path's own. A ``read_only`` connection refuses every statement that writes (``query_only``)
    and sets nothing; a file that cannot be written is opened read-only (``mode=ro``), and a WAL file
    in a folder that cannot be written ``immutable``, since nobody can write it. A writable file is
    opened as usual, so that SQLite removes its -wal and -shm files when the last reader closes.
    """
    uri = uri and database.startswith("file:")  # SQLite opens any other name as a plain path, with uri=true or not
    if not read_only or (not uri and can_write(database)):
        connection = sqlite3.connect(database, timeout=timeout, uri=uri, **driver_kwargs)
        for pragma in ("PRAGMA query_only=ON",) if read_only else WRITER_PRAGMAS:
            connection.execute(pragma)
        return connection
    if uri:
        target = f"{database}{'&' if '?' in database else '?'}mode=ro"
    else:
        target = f"file:{urllib.parse.quote(os.path.abspath(database))}?mode=ro"
    connection = sqlite3.connect(target, timeout=timeout, uri=True, **driver_kwargs)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as error:
        connection.close()
        if "unable to open" not in str(error):
            raise
        # A WAL file without its -shm, in a folder we cannot write: SQLite cannot share the WAL
        # index, and no one can write the file either (a writer needs the -wal beside it).
        connection = sqlite3.connect(f"{target}&immutable=1", timeout=timeout, uri=True, **driver_kwargs)
    connection.execute("PRAGMA query_only=ON")
    return connection


def can_write(database: str) -> bool:
    """Whether the SQLite file (if it exists) and its folder (for the -wal and -shm files) can be written.

    The file is asked of ``access(2)``, never opened: closing any descriptor of a file drops every POSIX
    lock the process holds on it, SQLite's included (sqlite.org/howtocorrupt.html, 2.2), and a worker
    whose connections had lost their lock let another process take the file as its own and delete
    the WAL under them (two workers on one file, one killed, a reader: "database disk image is
    malformed"). ``access`` answers for root too, and refuses a read-only mount (EROFS). The folder
    is tried with a file of its own: no lock of SQLite's is on that.
    """
    path = os.path.abspath(database)
    effective = os.access in os.supports_effective_ids  # as open() would: the effective user, not the real one
    if os.path.exists(path) and not os.access(path, os.W_OK, effective_ids=effective):
        return False
    try:
        with tempfile.TemporaryFile(dir=os.path.dirname(path)):
            pass
    except OSError:
        return False
    return True


def sqlite_engine_kwargs(url: str, *, read_only: bool = False, timeout: float = BUSY_TIMEOUT_S) -> dict[str, Any]:
    """``create_engine`` arguments whose connections come from :func:`connect` (SQLite URLs only).

    The connection arguments are SQLAlchemy's own for the URL (its query string, a relative path
    made absolute), so only the settings are tuner's.
    """
    parsed = sqlalchemy.engine.make_url(url)
    args, params = parsed.get_dialect()().create_connect_args(parsed)
    params.setdefault("timeout", timeout)
    return {"creator": functools.partial(connect, *args, read_only=read_only, **params)}


def foreign_content(path: str) -> str | None:
    """Why the SQLite file at ``path`` is not Optuna's to write to; None if it is new, empty or Optuna's.

    A file whose tables are all Optuna's (with Optuna's columns) is accepted even without the
    version table: another worker may be creating the schema at this very moment.
    """
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    try:
        with closing(connect(path, read_only=True, timeout=BUSY_TIMEOUT_S)) as connection:
            names = [row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            tables = {name: {row[1] for row in connection.execute("SELECT * FROM pragma_table_info(?)", (name,))}
                      for name in names}
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            return "it is not a SQLite database"
        return f"cannot read it ({error})"
    if not tables:
        return None
    if {"schema_version", "library_version"} <= tables.get("version_info", set()):
        return None  # Optuna's schema, of this or another version (Optuna checks which)
    optuna_tables = _optuna.schema_tables()
    foreign = sorted(name for name, columns in tables.items() if not columns <= optuna_tables.get(name, set()))
    if not foreign:
        return None
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    return f"it holds tables that Optuna did not make ({shown})"
