"""Riding out a short storage outage: a database restart, a failover, a proxy redeployed, a network blip.

A worker's trials take minutes to train and seconds to store. A database that restarts while they
train (``pg_ctl restart``, a managed server's maintenance, an idle-session timeout) leaves the
worker's pooled connections dead; the engine checks each one before use (``pool_pre_ping``, set by
:func:`tuner.storage.open_storage`) and opens a new one, which covers a server that is back by the
time it is needed. One that is still down, or a proxy being replaced, is waited for here, for up
to :data:`OUTAGE_WAIT_S` (``TUNER_STORAGE_OUTAGE_WAIT`` seconds), with one warning line, before the
trials' stores give up: trained trials are worth a wait, and a failed store loses them.

Example:
    >>> ride_out_outage(lambda: 42)
    42
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy

from tuner.errors import StorageWarning
from tuner.storage._grpc import proxy_failure, proxy_went_away
from tuner.storage._url import redact
from tuner.storage.liveness import _seconds_from_env

OUTAGE_WAIT_S = 60  # how long a store waits for the storage to answer again before it fails
OUTAGE_WAIT_ENV = "TUNER_STORAGE_OUTAGE_WAIT"
_FIRST_DELAY_S = 0.5
_MOST_DELAY_S = 5.0

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
        if isinstance(seen, sqlalchemy.exc.OperationalError) or (
                isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated):
            reason = str(seen.orig if seen.orig is not None else seen).strip().splitlines()
            return f"the database did not answer ({redact(reason[0]) if reason else type(seen).__name__})"
        if proxy_went_away(seen):
            return proxy_failure(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def outage_wait_s() -> int:
    """Seconds a store waits for a storage that stopped answering: ``TUNER_STORAGE_OUTAGE_WAIT``, else 60."""
    return _seconds_from_env(OUTAGE_WAIT_ENV, OUTAGE_WAIT_S)


def ride_out_outage(store: Callable[[], T], *, wait_s: float | None = None, what: str = "storing trials") -> T:
    """``store()``, called again while the storage is unreachable, for up to ``wait_s`` seconds
    (default: :func:`outage_wait_s`).

    ``store`` must be safe to call again after a failed call (each attempt a transaction that
    rolled back, or writes that repeat the same values). An error that is not a lost connection,
    or one that outlasts the wait, is raised as it came. A Ctrl-C between attempts stops the wait.
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
            if reason is None or time.monotonic() + delay > deadline:
                raise
            if not warned:
                warnings.warn(f"{reason}, while {what}; waiting up to {wait_s:.0f} s for it to answer again",
                              StorageWarning, stacklevel=2)
                warned = True
            time.sleep(delay)
            delay = min(2 * delay, _MOST_DELAY_S)
