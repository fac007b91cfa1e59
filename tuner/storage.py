"""Storage URLs to Optuna storages, tuned so that many processes can share one study.

- SQLite (the default, ``sqlite:///tuner.db``): WAL journal so readers never block the writer,
  ``synchronous=NORMAL`` (a finished trial survives a killed process; only a power cut can lose
  the last commits), and a long busy timeout so concurrent writers wait instead of failing with
  "database is locked".
- Any other SQLAlchemy URL (PostgreSQL, MySQL) goes to Optuna's ``RDBStorage``.
- ``journal:///path/to/file``: Optuna's journal file storage, for clusters without a database.

Trials of a process that died are found two ways: heartbeats (a trial whose heartbeat is older
than the grace period, from any machine), and at once on the same machine by the owner's process
id and start time, which are recorded on every trial.

The environment can change, for every worker alike:
- ``TUNER_HEARTBEAT_INTERVAL`` / ``TUNER_HEARTBEAT_GRACE``: seconds between heartbeats (10) and of
  silence after which a trial counts as dead (60);
- ``TUNER_STORAGE_PASSWORD``: the database password, put into a URL that has none (PostgreSQL's
  driver also reads ``PGPASSWORD`` itself), so that it never has to be on a command line;
- ``TUNER_HOST``: the host name recorded on trials (default: the machine's); containers that share
  a host name but not process ids must each have their own.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sqlite3
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tuner._sqlite import open_rdb_storage

DEFAULT_STORAGE = "sqlite:///tuner.db"
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60  # several missed beats: a busy machine must not have its live trials failed
SQLITE_BUSY_TIMEOUT_S = 120
SCHEMA_ATTEMPTS = 6  # workers opening a brand-new database at once race to create its tables
HEARTBEAT_INTERVAL_ENV = "TUNER_HEARTBEAT_INTERVAL"
GRACE_PERIOD_ENV = "TUNER_HEARTBEAT_GRACE"
PASSWORD_ENV = "TUNER_STORAGE_PASSWORD"
HOST_ENV = "TUNER_HOST"
FIRST_BEAT_DELAY_S = 1.0  # shorter than any grace period (those are longer than the interval, >= 1 s)
BEAT_ATTR = "tuner:beat"  # trial system attribute: a beat counter, for storages without Optuna's heartbeats

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


def heartbeat_settings() -> tuple[int, int]:
    """Seconds between heartbeats, and of silence before a trial counts as dead (defaults or environment)."""
    interval = _seconds_from_env(HEARTBEAT_INTERVAL_ENV, HEARTBEAT_INTERVAL_S)
    grace = _seconds_from_env(GRACE_PERIOD_ENV, GRACE_PERIOD_S)
    if grace <= interval:
        raise StorageError(
            f"{GRACE_PERIOD_ENV}={grace} must be longer than {HEARTBEAT_INTERVAL_ENV}={interval} "
            f"(a few beats), or live trials are failed as dead; e.g. {GRACE_PERIOD_ENV}={max(3 * interval, 2)}"
        )
    return interval, grace


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise StorageError(f"environment variable {name}={text!r}: must be a whole number of seconds >= 1 (default {default})")
    return int(text)


def with_password(url: str, password_file: str | Path | None = None) -> str:
    """``url`` with the password from ``password_file`` (else ``$TUNER_STORAGE_PASSWORD``) put in.

    A URL that has a password keeps it. Keep the result out of logs: print ``redact(url)``.

    Example:
        >>> with_password("postgresql://tuner@db/tuner", "/run/secrets/db")  # doctest: +SKIP
    """
    if password_file is not None:
        path = Path(password_file)
        try:
            password = path.read_text().rstrip("\r\n")  # a file usually ends with a newline; the password does not
        except OSError as error:
            raise StorageError(f"storage password file {str(path)!r}: cannot read it ({error.strerror}); give a readable file") from None
        if not password:
            raise StorageError(f"storage password file {str(path)!r}: it is empty; write the password into it")
    else:
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            return url
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        if password_file is None:
            return url  # not a database URL (journal://...); open_storage says what is wrong, if anything
        raise StorageError(f"storage {redact(url)!r}: a password file was given, but this storage takes no password") from None
    if parsed.get_backend_name() == "sqlite":
        if password_file is None:
            return url
        raise StorageError(f"storage {redact(url)!r}: a password file was given, but SQLite takes no password")
    if parsed.password is not None:
        if password_file is None:
            return url
        raise StorageError(f"storage {redact(url)!r}: the URL has a password and a password file was given; give it once, in the file")
    return parsed.set(password=password).render_as_string(hide_password=False)


def open_existing_storage(url: str | None = None) -> BaseStorage:
    """Open a storage to read a study from: a SQLite file that does not exist is an error, not a new file."""
    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise StorageError(
                f"storage {url!r}: the file {str(path)!r} does not exist; run `tuner study SPEC --storage {url}` "
                f"first, or pass the --storage the study was run with"
            )
    return open_storage(url)


def open_storage(url: str | None = None) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``; ``None`` means ``sqlite:///tuner.db``.

    Example:
        >>> storage = open_storage("sqlite:///:memory:")
    """
    url = with_password(url or DEFAULT_STORAGE)
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
            f"postgresql://user@host/db, mysql+pymysql://user@host/db or journal:///path/file.log"
        ) from None
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database, url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    interval, grace = heartbeat_settings()
    try:
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" upstream; we rely on them knowingly
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    # SQLite files get the per-trial calls in plain sqlite3 (see tuner/_sqlite.py).
                    return open_rdb_storage(url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as error:
                # Workers opening a brand-new database at once race to create its tables and types
                # ("duplicate key ... pg_type_typname_nsp_index"; SQLite: "table studies already
                # exists"); the loser's transaction rolls back and on the next try it finds the
                # winner's tables.
                lost_race = not isinstance(error, sqlalchemy.exc.OperationalError) or "already exists" in str(error)
                if attempt == SCHEMA_ATTEMPTS or not lost_race:
                    raise
                time.sleep(random.uniform(0.1, 0.5) * attempt)
        raise AssertionError("unreachable")
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
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"storage {url!r}: {str(folder)!r} is a file, not a folder; choose a path in a folder")
    if not folder.is_dir():
        raise StorageError(f"storage {url!r}: folder {str(folder)!r} does not exist; create it or choose another path")
    if path.is_dir():
        raise StorageError(f"storage {url!r}: {str(path)!r} is a folder; name a file in it, e.g. sqlite:///{path / 'tuner.db'}")
    if not _can_write(path, folder):
        raise StorageError(f"storage {url!r}: {str(path)!r} is not writable; choose a path you can write to")


def _can_write(path: Path, folder: Path) -> bool:
    """Try it rather than ask ``os.access``: root passes every permission check, not a read-only disk."""
    try:
        if path.exists():
            with path.open("r+b"):
                pass
        # SQLite also writes its -wal and -shm files beside the database.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _open_journal(url: str) -> JournalStorage:
    path = Path(url.removeprefix("journal://"))
    if not str(path) or not path.parent.is_dir():
        raise StorageError(f"storage {url!r}: write journal:///absolute/path/file.log in an existing folder")
    heartbeat_settings()  # checked here: the journal's heartbeats are ours (see Heartbeat)
    return JournalStorage(JournalFileBackend(str(path)))


def worker_id() -> str:
    """This process, as ``host:pid``, recorded on each trial it runs."""
    return f"{_host()}:{os.getpid()}"


def _host() -> str:
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


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

    On this host a dead owner is seen at once from its pid and start time (a pid that the system
    gave to a new process does not keep a dead one's trial alive); on other hosts, once its
    heartbeat is older than the grace period.
    """
    failed = _stale_by_heartbeat(study) + _stale_by_silence(study)
    host = _host()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get("worker", ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit():
            continue
        if _owner_is_alive(int(pid), trial.user_attrs.get("worker_started")):
            continue
        if fail_trial(study, trial._trial_id, "its process died (found by pid on restart)"):  # noqa: SLF001
            failed.append(trial.number)
    return failed


def worker_attrs() -> dict[str, str | None]:
    """The user attributes that name this process as a trial's owner: ``worker``, ``worker_started``."""
    return {"worker": worker_id(), "worker_started": _process_start(os.getpid())}


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``boot id:clock ticks since boot`` (Linux); None elsewhere.

    A pid alone does not name a process: after a kill -9 the system may give it to a new one (even
    to the very process that resumes the study). The start time tells them apart.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return f"{boot}:{fields[19]}"  # field 22 of proc(5), counted after the name's two fields


def _owner_is_alive(pid: int, started: object) -> bool:
    if pid != os.getpid() and not _process_is_alive(pid):
        return False
    if not isinstance(started, str):
        return True  # no start time recorded: trust the pid (another platform, or an older tuner)
    now = _process_start(pid)
    return now is None or now == started  # a live pid that started at another time is someone else


def _stale_by_heartbeat(study: optuna.Study) -> list[int]:
    storage = study._storage  # noqa: SLF001
    if not optuna.storages._heartbeat.is_heartbeat_enabled(storage):  # noqa: SLF001
        return []
    # Optuna's fail_stale_trials() would do this, but leave no reason on the trial.
    grace = getattr(storage, "grace_period", None) or heartbeat_settings()[1]
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):  # noqa: SLF001
        if fail_trial(study, trial_id, f"no heartbeat for over {grace} s: its worker died or lost the storage"):
            failed.append(storage.get_trial_number_from_id(trial_id))
    return failed


# storage -> study id -> trial id -> (beat seen, since when). By storage too: two databases open in
# one process have studies and trials with the same ids.
_silence: weakref.WeakKeyDictionary[object, dict[int, dict[int, tuple[object, float]]]] = weakref.WeakKeyDictionary()


def _stale_by_silence(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose beat counter this process has seen unchanged for the grace period.

    This covers what Optuna's heartbeats cannot: storages without them (the journal file), and
    trials whose worker died after asking for them but before their first beat. Only this process's
    clock is used, so clocks that differ between machines do not matter.
    """
    storage = study._storage  # noqa: SLF001
    optuna_beats = optuna.storages._heartbeat.is_heartbeat_enabled(storage)  # noqa: SLF001
    grace = heartbeat_settings()[1]
    now = time.monotonic()
    me = worker_id()
    per_storage = _silence.setdefault(getattr(storage, "_backend", storage), {})  # under Optuna's cache, if any
    seen = per_storage.get(study._study_id, {})  # noqa: SLF001
    watched: dict[int, tuple[object, float]] = {}
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(BEAT_ATTR)
        if trial.user_attrs.get("worker") == me or (optuna_beats and beat is not None):
            continue  # our own, or judged by Optuna's heartbeats
        trial_id = trial._trial_id  # noqa: SLF001
        last = seen.get(trial_id)
        if last is None or last[0] != beat:
            watched[trial_id] = (beat, now)
        elif now - last[1] > grace:
            if fail_trial(study, trial_id, f"no heartbeat for over {grace} s: its worker died"):
                failed.append(trial.number)
        else:
            watched[trial_id] = last
    per_storage[study._study_id] = watched  # noqa: SLF001
    return failed


def fail_trial(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial failed, with ``reason`` as its user attribute ``error``; False if it had finished."""
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
        self._thread = threading.Thread(target=self._beat, daemon=True, name="tuner-heartbeat")
        self._thread.start()
        return self

    def _beat(self) -> None:
        # Optuna's heartbeats where the storage has them (databases); there, one beat counter marks
        # the trial as beating. Elsewhere (the journal file) the counter itself is the heartbeat.
        optuna_beats = optuna.storages._heartbeat.is_heartbeat_enabled(self._storage)  # noqa: SLF001
        interval = self._storage.get_heartbeat_interval() if optuna_beats else heartbeat_settings()[0]
        # A trial done within the first second needs no beat (two commits fewer per short trial);
        # until its first beat, other workers time its silence against the grace period.
        if self._stop.wait(min(FIRST_BEAT_DELAY_S, interval)):
            return
        count = 0
        while True:
            count += 1
            for trial_id in self._trial_ids:
                try:
                    if optuna_beats:
                        self._storage.record_heartbeat(trial_id)
                    if count == 1 or not optuna_beats:
                        self._storage.set_trial_system_attr(trial_id, BEAT_ATTR, count)
                except Exception as error:  # a missed beat must never kill a live trial
                    _log.debug("heartbeat for trial %s missed: %s", trial_id, error)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
