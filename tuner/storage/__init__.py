"""Storage URLs to Optuna storages, tuned so that many processes can share one study.

- SQLite (the default, ``sqlite:///tuner.db``, a relative path taken from the working directory
  once, when opened): WAL journal so readers never block the writer, ``synchronous=NORMAL`` (a
  finished trial survives a killed process; only a power cut can lose the last commits), and a
  long busy timeout so concurrent writers wait instead of failing with "database is locked".
  Those settings go on the connections tuner opens, not on other SQLAlchemy engines of the process.
  A non-empty file that Optuna did not make is refused, never changed. Reading commands open the
  file read-only (:func:`open_existing_storage`), so a read-only file or folder can be read.
- Any other SQLAlchemy URL (PostgreSQL, MySQL) goes to Optuna's ``RDBStorage``.
- ``journal:///path/to/file``: Optuna's journal file storage, for clusters without a database.
- ``grpc://host:port``: Optuna's gRPC storage proxy (``tuner storage-proxy``) in front of a
  database, for many workers; grpcio is the optional extra ``tuner[grpc]`` (see ``_grpc.py``).

Which process owns a trial and how dead ones are failed: :mod:`tuner.storage.liveness`. The only
module of tuner that uses Optuna's private API: ``tuner/storage/_optuna.py``. SQLite: connection
settings and file checks in ``_sqlite_files.py``, the fast per-trial path in ``_sqlite.py`` (its
rows in ``_sqlite_rows.py``). One transaction for a batch's records in ``_bulk.py``, the few
counts a claim needs in ``_claims.py``; URLs and passwords in ``_url.py``.

The environment can change, for every worker alike:
- ``TUNER_STORAGE_PASSWORD``: the database password, put into a URL that has none (PostgreSQL's
  driver also reads ``PGPASSWORD`` itself), so that it never has to be on a command line;
- ``TUNER_HEARTBEAT_INTERVAL``, ``TUNER_HEARTBEAT_GRACE``, ``TUNER_HOST``: see :mod:`tuner.storage.liveness`;
- ``TUNER_STORAGE_OUTAGE_WAIT``: how long trained trials wait for a storage that stopped answering
  (a database restart, a proxy redeployed) before they fail; see :mod:`tuner.storage.outages`.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from tuner.storage import _grpc
from tuner.storage._bulk import tell_trials, write_study_attrs, write_trial_records
from tuner.storage._claims import count_trials, skip_empty_queue
from tuner.storage._grpc import ProxyServer, is_proxy_url, open_proxy, proxy_failure, start_proxy
from tuner.storage._optuna import cached_trials, trial_id
from tuner.storage._sqlite import FastSQLiteStorage, open_sqlite_storage
from tuner.storage._sqlite_files import BUSY_TIMEOUT_S, can_write, foreign_content, sqlite_engine_kwargs
from tuner.storage._url import (
    DEFAULT_STORAGE,
    PASSWORD_ENV,
    PASSWORD_NOTE,
    StorageError,
    check_sqlite_query,
    check_user_info,
    mask_user_info,
    redact,
    resolve_url,
    with_password,
    without_password,
)
from tuner.storage.liveness import (
    BEAT_ATTR,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    Heartbeat,
    fail_orphaned_trials,
    fail_trial,
    heartbeat_settings,
    worker_attrs,
    worker_id,
)
from tuner.storage.outages import DatabaseOutages, outage_wait_s, ride_out_outage

SQLITE_BUSY_TIMEOUT_S = BUSY_TIMEOUT_S
SCHEMA_ATTEMPTS = 6  # workers opening a brand-new database at once race to create its tables
CONNECT_TIMEOUT_S = 10  # PostgreSQL: seconds to connect, unless the URL sets its driver's own (?connect_timeout=)

__all__ = [
    "BEAT_ATTR",
    "DEFAULT_STORAGE",
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "PASSWORD_ENV",
    "PASSWORD_NOTE",
    "SQLITE_BUSY_TIMEOUT_S",
    "FastSQLiteStorage",
    "Heartbeat",
    "ProxyServer",
    "StorageError",
    "cached_trials",
    "check_user_info",
    "count_trials",
    "engine_kwargs",
    "fail_orphaned_trials",
    "fail_trial",
    "heartbeat_settings",
    "is_proxy_url",
    "mask_user_info",
    "open_existing_storage",
    "open_storage",
    "proxy_failure",
    "redact",
    "resolve_url",
    "ride_out_outage",
    "without_password",
    "serve_storage",
    "skip_empty_queue",
    "sqlite_engine_kwargs",
    "start_proxy",
    "tell_trials",
    "trial_id",
    "with_password",
    "worker_attrs",
    "worker_id",
    "write_study_attrs",
    "write_trial_records",
]


def open_storage(url: str | None = None, *, mark_owners: bool = True) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``; ``None`` means ``sqlite:///tuner.db``.

    A relative SQLite path is taken from the working directory now (see :func:`resolve_url`).
    Every trial created through a SQLite storage carries its owner (:func:`worker_attrs`) from
    the moment it exists, unless not ``mark_owners`` (a proxy serving workers owns none of their trials).

    Example:
        >>> storage = open_storage("sqlite:///:memory:")

    Raises:
        StorageError: a URL that cannot be opened, or a SQLite file that another program made.
    """
    return _open(url, must_exist=False, read_only=False, mark_owners=mark_owners)


def serve_storage(url: str | None, host: str = "127.0.0.1", port: int = _grpc.DEFAULT_PORT) -> tuple[ProxyServer, str]:
    """Open the database at ``url`` and serve it to ``grpc://`` workers on ``host:port``: the proxy, and the URL shown.

    The database must be one Optuna's proxy serves: not a proxy itself, nor a journal file. With no
    ``url``, ``./tuner.db`` is served if it exists; a new empty one is not made (a forgotten
    ``--storage`` would serve workers a database nobody else sees).

    Example:
        >>> proxy, shown = serve_storage("postgresql://tuner@db/tuner", "0.0.0.0", 13000)  # doctest: +SKIP
        >>> proxy.stop()  # doctest: +SKIP
    """
    shown = given = url or DEFAULT_STORAGE
    if is_proxy_url(given):
        raise StorageError(f"--storage {given!r}: that is a storage proxy's address; give the database it should serve, "
                           f"e.g. --storage postgresql://user@host/db")
    if given.startswith("journal://"):
        raise StorageError(f"--storage {given!r}: Optuna's storage proxy does not serve a journal file (optuna issue 6084); "
                           f"let the workers share the journal file itself, or give a database, e.g. postgresql://user@host/db")
    if url is None and not Path(sqlalchemy.engine.make_url(DEFAULT_STORAGE).database or "").exists():
        raise StorageError(f"no --storage given, and {DEFAULT_STORAGE} (the default) does not exist here: give the database "
                           f"to serve, e.g. --storage postgresql://user@host/db, or run the proxy where tuner.db is")
    _grpc.require_grpc("tuner storage-proxy")  # before the database is opened, or a SQLite file created
    storage = open_storage(given, mark_owners=False)
    # The database not answering behind the proxy ends a call UNAVAILABLE, which workers wait out.
    return start_proxy(storage, host, port, interceptors=[DatabaseOutages()]), redact(resolve_url(shown))


def open_existing_storage(url: str | None = None, *, writable: bool = False) -> BaseStorage:
    """Open a storage to read studies from: nothing in it is created, and unless ``writable``, changed.

    A SQLite file that does not exist is an error, not a new file. It is opened read-only, so a
    read-only file, or one in a read-only folder, can be read; with ``writable`` (the dashboard,
    whose user may edit trials) it is opened for writing where it can be written.

    Example:
        >>> storage = open_existing_storage("sqlite:///tuner.db")  # doctest: +SKIP
    """
    return _open(url, must_exist=True, read_only=not writable)


def _open(given: str | None, *, must_exist: bool, read_only: bool, mark_owners: bool = True) -> BaseStorage:
    shown = given or DEFAULT_STORAGE  # messages name the storage as the user wrote it
    outage_wait_s()  # checked here, not first read when the storage stops answering mid-study
    if is_proxy_url(shown):
        heartbeat_settings()  # checked here: through a proxy, the heartbeats are ours (see Heartbeat)
        return open_proxy(shown)
    check_user_info(shown)  # before anything parses or connects
    url = with_password(resolve_url(given))
    if url.startswith("journal://"):
        return _open_journal(url)
    if "://" not in url:
        raise StorageError(f"storage {url!r}: not a URL; write e.g. sqlite:///tuner.db, postgresql://user@host/db or journal:///path/file.log")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise StorageError(f"storage {redact(url)!r}: malformed URL; write e.g. sqlite:///tuner.db or postgresql://user@host/db") from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(
            f"storage {redact(url)!r}: unknown database kind {parsed.drivername!r}; write e.g. sqlite:///tuner.db, "
            f"postgresql://user@host/db, mysql+pymysql://user@host/db, journal:///path/file.log or grpc://host:port"
        ) from None
    if parsed.host and "@" in parsed.host:  # SQLAlchemy split the password at its first "@"
        raise StorageError(
            f"storage {redact(url)!r}: the password holds an '@': write it as %40, or give the password by "
            f"--storage-password-file or ${PASSWORD_ENV}"
        )
    interval, grace = heartbeat_settings()
    heartbeats = {"heartbeat_interval": interval, "grace_period": grace}
    if parsed.get_backend_name() == "sqlite":
        check_sqlite_query(url, shown)  # before the file is checked or opened: a key dropped unread is a typo
        database = parsed.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        if on_disk:
            _check_sqlite_file(Path(database), shown, must_exist)
            read_only = read_only or (must_exist and not can_write(database))  # still readable
        read_only = read_only and on_disk

        def opener() -> BaseStorage:
            # SQLite files get the per-trial calls in plain sqlite3 (see tuner/storage/_sqlite.py).
            marks = worker_attrs if mark_owners and not read_only else None
            return open_sqlite_storage(url, read_only=read_only, new_trial_user_attrs=marks, **heartbeats)
    else:
        # A restarted server (or an idle-session timeout) leaves every pooled connection dead: check each
        # before use, or the next commit fails ("invalid data in the commit") with the trials it stores.
        engine = engine_kwargs(parsed)

        def opener() -> BaseStorage:
            return RDBStorage(url, engine_kwargs=engine, **heartbeats)

    try:
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" upstream; we rely on them knowingly
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return opener()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as error:
                # Workers opening a brand-new database at once race to create its tables and types
                # ("duplicate key ... pg_type_typname_nsp_index"; SQLite: "table studies already
                # exists"); the loser's transaction rolls back and on the next try it finds the
                # winner's tables. SQLite may also answer "database is locked" to the loser while the
                # winner switches a brand-new file to WAL (seen once in 12 two-worker starts under load).
                lost_race = not isinstance(error, sqlalchemy.exc.OperationalError) or any(
                    words in str(error) for words in ("already exists", "database is locked"))
                if attempt == SCHEMA_ATTEMPTS or not lost_race:
                    raise
                time.sleep(random.uniform(0.1, 0.5) * attempt)
        raise AssertionError("unreachable")
    except ImportError as error:
        raise StorageError(f"storage {redact(url)!r}: its database driver is not installed ({error})") from None
    except Exception as error:  # connection refused, bad credentials, unknown dialect...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StorageError(f"storage {redact(url)!r}: cannot open it ({mask_user_info(reason, url)})") from None


def engine_kwargs(parsed: sqlalchemy.engine.URL) -> dict[str, object]:
    """SQLAlchemy's engine settings for a database server (not SQLite): each pooled connection checked
    before use, and a PostgreSQL connect that gives up after :data:`CONNECT_TIMEOUT_S`.

    Example:
        >>> engine_kwargs(sqlalchemy.engine.make_url("postgresql://u@db/t"))
        {'pool_pre_ping': True, 'connect_args': {'connect_timeout': 10}}
    """
    engine: dict[str, object] = {"pool_pre_ping": True}
    # libpq waits for the system's TCP timeout (minutes) on a host that drops packets; an outage is waited
    # for by tuner.storage.outages, one bounded attempt at a time. Each driver names the timeout its way.
    names = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout", "psycopg2cffi": "connect_timeout", "pg8000": "timeout"}
    key = names.get(parsed.get_driver_name()) if parsed.get_backend_name() == "postgresql" else None
    if key is not None and key not in parsed.query:  # a URL's own ?connect_timeout= is the driver's to read
        engine["connect_args"] = {key: CONNECT_TIMEOUT_S}
    return engine


def _check_sqlite_file(path: Path, url: str, must_exist: bool) -> None:
    """Refuse a path tuner cannot use: nothing is created or changed before this passes."""
    if must_exist:
        if not path.is_file():
            raise StorageError(
                f"storage {url!r}: the file {str(path)!r} does not exist; run `tuner study SPEC --storage {url}` "
                f"first, or pass the --storage the study was run with"
            )
    else:
        _check_sqlite_path(path, url)
    reason = foreign_content(str(path))
    if reason is not None:
        raise StorageError(
            f"storage {url!r}: {str(path)!r} is not an Optuna database: {reason}; tuner leaves it as it is: "
            f"choose a new file or one made by tuner or Optuna"
        )


def _check_sqlite_path(path: Path, url: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"storage {url!r}: {str(folder)!r} is a file, not a folder; choose a path in a folder")
    if not folder.is_dir():
        raise StorageError(f"storage {url!r}: folder {str(folder)!r} does not exist; create it or choose another path")
    if path.is_dir():
        raise StorageError(f"storage {url!r}: {str(path)!r} is a folder; name a file in it, e.g. sqlite:///{path / 'tuner.db'}")
    if not can_write(str(path)):
        raise StorageError(f"storage {url!r}: {str(path)!r} is not writable; choose a path you can write to")


def _looks_like_a_journal(path: Path) -> bool:
    """An empty file, or one whose first line is a JSON journal record (``{"op_code": ...}``)."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(1 << 20)
    except OSError:
        return True  # let the journal backend say what is wrong with it
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _open_journal(url: str) -> JournalStorage:
    path = Path(url.removeprefix("journal://"))
    if not str(path) or not path.parent.is_dir():
        raise StorageError(f"storage {url!r}: write journal:///absolute/path/file.log in an existing folder")
    if path.is_dir():
        raise StorageError(f"storage {url!r}: {str(path)!r} is a folder; name a file in it, e.g. journal://{path / 'tuner.log'}")
    if path.is_file() and not _looks_like_a_journal(path):
        raise StorageError(f"storage {url!r}: {str(path)!r} is not an Optuna journal file (its first line is no "
                           f"journal record); choose a new file name, or the journal the study was run with")
    heartbeat_settings()  # checked here: the journal's heartbeats are ours (see Heartbeat)
    return JournalStorage(JournalFileBackend(str(path)))


