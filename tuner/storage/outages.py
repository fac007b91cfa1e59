"""Riding out a short storage outage: a database restart, a failover, a proxy redeployed, a network blip.

A worker's trials take minutes to train and seconds to store. A database that restarts while they
train (``pg_ctl restart``, a managed server's maintenance, an idle-session timeout) leaves the
worker's pooled connections dead; the engine checks each one before use (``pool_pre_ping``, set by
:func:`tuner.storage.open_storage`) and opens a new one, which covers a server that is back by the
time it is needed. One that is still down, or a proxy being replaced, is waited for here, for up
to :data:`OUTAGE_WAIT_S` (``TUNER_STORAGE_OUTAGE_WAIT`` seconds), with one warning line, before the
trials' stores give up: trained trials are worth a wait, and a failed store loses them.

Only a lost or refused connection is waited for. An error that waiting would not mend (a wrong
password, a database that does not exist, a full disk, a SQLite file's own errors) is raised at once.
An outage longer than the heartbeat grace period looks, to the other workers, like a dead worker:
they fail its trials once the storage is back, as they would a killed worker's.

Example:
    >>> ride_out_outage(lambda: 42)
    42
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy

from tuner.errors import StorageWarning, raise_if_stop_requested
from tuner.storage._grpc import BEHIND_PROXY, proxy_failure, proxy_went_away
from tuner.storage._url import redact
from tuner.storage.liveness import _seconds_from_env

OUTAGE_WAIT_S = 60  # how long a store waits for the storage to answer again before it fails
OUTAGE_WAIT_ENV = "TUNER_STORAGE_OUTAGE_WAIT"
_FIRST_DELAY_S = 0.5
_MOST_DELAY_S = 5.0

# SQLSTATEs (PostgreSQL; MySQL's are alike) that pass: class 08 (connection exception), the server
# shutting down or starting up (57P01-57P03), a serialization failure or deadlock (40001, 40P01: the
# transaction rolled back, and may be tried again), too many connections (53300: others will close).
_PASSING_STATES = ("57P01", "57P02", "57P03", "40001", "40P01", "53300")
# Without a SQLSTATE (an error while connecting), the driver's words decide; the permanent ones first.
_PERMANENT_WORDS = ("authentication", "password", "does not exist", "permission denied", "pg_hba.conf", "access denied",
                    "unknown database")
_PASSING_WORDS = ("connection refused", "could not connect", "can't connect", "connection failed", "server closed the "
                  "connection", "terminating connection", "lost connection", "gone away", "connection reset", "timeout",
                  "timed out", "no route to host", "network is unreachable", "starting up", "shutting down",
                  "connection is closed", "connection already closed", "broken pipe", "in recovery mode",
                  "not yet accepting connections", "too many clients", "too many connections", "name resolution",
                  "could not translate host name", "ssl syscall error", "eof detected")
# MySQL's drivers give a number instead: too many connections, lock wait timeout, deadlock, can't connect, gone away.
_PASSING_MYSQL_CODES = (1040, 1205, 1213, 2002, 2003, 2006, 2013)

# How a lost database connection is named: the proxy's interceptor finds its own by these words, and names it anew.
DATABASE = "the database"

T = TypeVar("T")


def connection_lost(error: BaseException) -> str | None:
    """Why the storage did not answer, when ``error`` (or what caused it) is a lost or refused
    connection; None for any other error, which waiting would not mend.

    Optuna wraps a failed commit as ``StorageInternalError("... invalid data in the commit ...")``;
    the cause it keeps says what really happened.

    Example:
        >>> connection_lost(ValueError("bad value")) is None
        True
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and _passes(seen):
            reason = str(seen.orig if seen.orig is not None else seen).strip().splitlines()
            return f"{DATABASE} did not answer ({redact(reason[0]) if reason else type(seen).__name__})"
        if proxy_went_away(seen):
            return proxy_failure(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _passes(error: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether a database error is one that waiting mends: a lost or refused connection, not a refusal."""
    if error.connection_invalidated:  # SQLAlchemy saw the connection die under it
        return True
    driver = error.orig
    if driver is None or type(driver).__module__.startswith("sqlite3"):  # a SQLite file has no server to wait for
        return False
    state = getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)  # psycopg 3, psycopg2
    if state:
        return str(state).startswith("08") or str(state) in _PASSING_STATES
    code = driver.args[0] if driver.args and isinstance(driver.args[0], int) else None  # pymysql, mysqlclient
    if code is not None:
        return code in _PASSING_MYSQL_CODES
    words = str(driver).lower()
    return not any(word in words for word in _PERMANENT_WORDS) and any(word in words for word in _PASSING_WORDS)


def outage_wait_s() -> int:
    """Seconds a store waits for a storage that stopped answering: ``TUNER_STORAGE_OUTAGE_WAIT``, else 60."""
    return _seconds_from_env(OUTAGE_WAIT_ENV, OUTAGE_WAIT_S)


def ride_out_outage(store: Callable[[], T], *, wait_s: float | None = None, what: str = "storing trials") -> T:
    """``store()``, called again while the storage is unreachable, for up to ``wait_s`` seconds
    (default: :func:`outage_wait_s`), the last call at the limit.

    ``store`` must be safe to call again after a failed call (each attempt a transaction that
    rolled back, or writes that repeat the same values). An error that is not a lost connection,
    or one that outlasts the wait, is raised as it came. A Ctrl-C or SIGTERM stops the wait.
    """
    wait_s = outage_wait_s() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    delay = _FIRST_DELAY_S
    warned = False
    while True:
        try:
            return store()
        except Exception as error:  # noqa: BLE001 (sorted below: only a lost connection is waited for)
            reason = connection_lost(error)
            left = deadline - time.monotonic()
            if reason is None or left <= 0:
                raise
        if not warned:  # outside the except: under -W error the warning, not a retry, is what raises
            warnings.warn(f"{reason}, while {what}; waiting up to {wait_s:.0f} s for it to answer again",
                          StorageWarning, stacklevel=2)
            warned = True
        raise_if_stop_requested()
        time.sleep(min(delay, left))
        delay = min(2 * delay, _MOST_DELAY_S)


class DatabaseOutages:
    """A gRPC server interceptor for the storage proxy: a call that failed because the database behind it
    did not answer ends UNAVAILABLE, naming that, so that workers wait for it as for a proxy redeployed.

    Optuna's servicer lets such an error through as UNKNOWN ("Exception calling application: ...
    invalid data in the commit"), which no worker could tell from a refusal.
    """

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        import grpc

        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def behaviour(request: Any, context: Any) -> Any:
            try:
                return inner(request, context)
            except Exception as error:  # noqa: BLE001 (sorted below: only a lost connection is named)
                reason = connection_lost(error)
                if reason is None or not reason.startswith(DATABASE):
                    raise
            context.abort(grpc.StatusCode.UNAVAILABLE, reason.replace(DATABASE, BEHIND_PROXY, 1))

        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

