"""Which process owns a trial, and failing the trials of processes that died.

Trials of a process that died are found two ways: heartbeats (a trial whose heartbeat is older
than the grace period, from any machine), and at once on the same machine by the owner's process
id and start time, which are recorded on every trial (by the storage, in the transaction that
creates the trial: see :func:`worker_attrs`).

Heartbeats are Optuna's where the storage keeps them (a database opened directly) and, on every
storage, tuner's beat counter (a trial system attribute, :data:`BEAT_ATTR`), which each beat
raises: it is all a storage without Optuna's heartbeats has (the journal file, and a database
through the gRPC proxy, which carries attributes but not Optuna's heartbeats). Workers of one
study may mix direct and proxied connections: each sees the others' counters.

The environment can change, for every worker alike:
- ``TUNER_HEARTBEAT_INTERVAL`` / ``TUNER_HEARTBEAT_GRACE``: seconds between heartbeats (10) and of
  silence after which a trial counts as dead (60);
- ``TUNER_HOST``: the host name recorded on trials (default: the machine's); containers that share
  a host name but not process ids must each have their own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import optuna
from optuna.trial import TrialState

from tuner.storage import _optuna
from tuner.storage._url import StorageError

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 60  # several missed beats: a busy machine must not have its live trials failed
HEARTBEAT_INTERVAL_ENV = "TUNER_HEARTBEAT_INTERVAL"
GRACE_PERIOD_ENV = "TUNER_HEARTBEAT_GRACE"
HOST_ENV = "TUNER_HOST"
FIRST_BEAT_DELAY_S = 1.0  # shorter than any grace period (those are longer than the interval, >= 1 s)
BEAT_ATTR = "tuner:beat"  # trial system attribute: a beat counter, for storages without Optuna's heartbeats

_log = logging.getLogger(__name__)


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
        # Its process is gone with the trial still running: killed, or it lost the storage and could not say so.
        reason = "its process ended without storing an outcome: it died or lost the storage (found by pid on this host)"
        if fail_trial(study, _optuna.trial_id(trial), reason):
            failed.append(trial.number)
    return failed


def worker_attrs() -> dict[str, str | None]:
    """The user attributes that name this process as a trial's owner: ``worker``, ``worker_started``."""
    pid = os.getpid()
    if pid not in _started:  # read once per process (twice a trial otherwise: at its creation and its claim)
        _started[pid] = _process_start(pid)
    return {"worker": worker_id(), "worker_started": _started[pid]}


_started: dict[int, str | None] = {}  # this process's start, by pid (a forked child has its own)


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
    storage = _optuna.storage_of(study)
    if not _optuna.heartbeat_enabled(storage):
        return []
    # Optuna's fail_stale_trials() would do this, but leave no reason on the trial.
    grace = getattr(storage, "grace_period", None) or heartbeat_settings()[1]
    failed = []
    for trial_id in _optuna.stale_trial_ids(storage, _optuna.study_id(study)):
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
    storage = _optuna.storage_of(study)
    optuna_beats = _optuna.heartbeat_enabled(storage)
    grace = heartbeat_settings()[1]
    now = time.monotonic()
    me = worker_id()
    per_storage = _silence.setdefault(_optuna.backend_of(storage), {})  # under Optuna's cache, if any
    seen = per_storage.get(_optuna.study_id(study), {})
    watched: dict[int, tuple[object, float]] = {}
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(BEAT_ATTR)
        # A counter stuck at 1 may be a worker that beats through Optuna's heartbeats only (before
        # the counter was raised on every storage): Optuna's heartbeats judge it. One past 1 is
        # raised by its worker on every beat, through a proxy too, so its silence can be timed.
        if trial.user_attrs.get("worker") == me or (optuna_beats and beat == 1):
            continue  # our own, or judged by Optuna's heartbeats
        trial_id = _optuna.trial_id(trial)
        last = seen.get(trial_id)
        if last is None or last[0] != beat:
            watched[trial_id] = (beat, now)
        elif now - last[1] > grace:
            if fail_trial(study, trial_id, f"no heartbeat for over {grace} s: its worker died"):
                failed.append(trial.number)
        else:
            watched[trial_id] = last
    per_storage[_optuna.study_id(study)] = watched
    return failed


def fail_trial(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial failed, with ``reason`` as its user attribute ``error``; False if it had finished."""
    storage = _optuna.storage_of(study)  # Optuna exposes no public way to fail another's trial
    try:
        storage.set_trial_user_attr(trial_id, "error", reason)
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except RuntimeError:  # another worker failed it first, or it just finished
        return False


class Heartbeat:
    """Record heartbeats for some trials from a background thread while they run."""

    def __init__(self, study: optuna.Study, trial_ids: Iterable[int]) -> None:
        self._storage = _optuna.storage_of(study)
        self._trial_ids = list(trial_ids)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="tuner-heartbeat")
        self._thread.start()
        return self

    def _beat(self) -> None:
        # Optuna's heartbeats where the storage has them (a database opened directly), and on
        # every storage the beat counter: the only heartbeat a journal file or a proxied database
        # has, and what proxied workers see of a direct one's trials (one commit per interval).
        optuna_beats = _optuna.heartbeat_enabled(self._storage)
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
                    self._storage.set_trial_system_attr(trial_id, BEAT_ATTR, count)
                except Exception as error:  # a missed beat must never kill a live trial
                    _log.debug("heartbeat for trial %s missed: %s", trial_id, error)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
