"""Storage URLs to Optuna storages, tuned so that many processes can share one study.

- SQLite (the default, ``sqlite:///tuner.db``): WAL journal so readers never block the writer,
  ``synchronous=NORMAL`` (a finished trial survives a killed process; only a power cut can lose
  the last commits), and a long busy timeout so concurrent writers wait instead of failing with
  "database is locked".
- Any other SQLAlchemy URL (PostgreSQL, MySQL) goes to Optuna's ``RDBStorage``.
- ``journal:///path/to/file``: Optuna's journal file storage, for clusters without a database.

Trials of a process that died are found two ways: Optuna's heartbeats (a trial whose heartbeat is
older than the grace period, from any machine), and at once on the same machine by the owner's
process id, which is recorded on every trial.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

DEFAULT_STORAGE = "sqlite:///tuner.db"
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60  # several missed beats: a busy machine must not have its live trials failed
SQLITE_BUSY_TIMEOUT_S = 120

_log = logging.getLogger(__name__)


class StorageError(ValueError):
    """A storage URL that cannot be opened; the message says why and what to do."""


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _tune_sqlite(dbapi_connection: object, _record: object) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print, log or store."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        return url.split("@")[-1] if "@" in url else url
    return parsed.render_as_string(hide_password=True)


def open_storage(url: str | None = None) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``; ``None`` means ``sqlite:///tuner.db``.

    Example:
        >>> storage = open_storage("sqlite:///:memory:")
    """
    url = url or DEFAULT_STORAGE
    if url.startswith("journal://"):
        return _open_journal(url)
    if "://" not in url:
        raise StorageError(f"storage {url!r}: not a URL; write e.g. sqlite:///tuner.db, postgresql://user@host/db or journal:///path/file.log")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage {redact(url)!r}: malformed URL; write e.g. sqlite:///tuner.db or postgresql://user@host/db") from None
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database, url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" upstream; we rely on them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
            )
    except ImportError as error:
        raise StorageError(f"storage {redact(url)!r}: its database driver is not installed ({error})") from None
    except Exception as error:  # connection refused, bad credentials, unknown dialect...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StorageError(f"storage {redact(url)!r}: cannot open it ({redact(reason)})") from None


def _check_sqlite_path(database: str | None, url: str) -> None:
    if not database or database == ":memory:":
        return
    path = Path(database)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StorageError(f"storage {url!r}: folder {str(folder)!r} does not exist; create it or choose another path")
    if path.exists() and not os.access(path, os.W_OK) or not os.access(folder, os.W_OK):
        raise StorageError(f"storage {url!r}: {str(path)!r} is not writable; choose a path you can write to")


def _open_journal(url: str) -> JournalStorage:
    path = Path(url.removeprefix("journal://"))
    if not str(path) or not path.parent.is_dir():
        raise StorageError(f"storage {url!r}: write journal:///absolute/path/file.log in an existing folder")
    return JournalStorage(JournalFileBackend(str(path)))


def worker_id() -> str:
    """This process, as ``host:pid``, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark failed the RUNNING trials whose process is gone; return their numbers.

    On this host a dead owner is seen at once from its pid; on other hosts, once its heartbeat is
    older than the grace period.
    """
    failed = [t.number for t in _stale_by_heartbeat(study)]
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get("worker", ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or int(pid) == os.getpid() or _process_is_alive(int(pid)):
            continue
        if _fail(study, trial._trial_id, "its process died (found by pid on restart)"):  # noqa: SLF001
            failed.append(trial.number)
    return failed


def _stale_by_heartbeat(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    optuna.storages.fail_stale_trials(study)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running]


def _fail(study: optuna.Study, trial_id: int, reason: str) -> bool:
    storage = study._storage  # noqa: SLF001 -- Optuna exposes no public way to fail another's trial
    try:
        storage.set_trial_user_attr(trial_id, "error", reason)
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except RuntimeError:  # another worker failed it first, or it just finished
        return False


class Heartbeat:
    """Record heartbeats for some trials from a background thread while they run."""

    def __init__(self, study: optuna.Study, trial_ids: Iterable[int]) -> None:
        self._storage = study._storage  # noqa: SLF001
        self._trial_ids = list(trial_ids)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if isinstance(self._storage, optuna.storages._heartbeat.BaseHeartbeat) and (  # noqa: SLF001
            self._storage.get_heartbeat_interval() is not None
        ):
            self._thread = threading.Thread(target=self._beat, daemon=True, name="tuner-heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while True:
            for trial_id in self._trial_ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as error:  # a missed beat must never kill a live trial
                    _log.debug("heartbeat for trial %s missed: %s", trial_id, error)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
