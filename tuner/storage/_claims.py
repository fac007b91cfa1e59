"""What claiming trials asks the storage, each answered by one small query where the storage allows.

A worker claims K trials one ask at a time. Through Optuna's public API each ask reads every
unfinished trial of the stage twice, with all it holds: once for enqueued trials, once to count
the trials claimed before it. With K trials in flight that is 2K reads of up to K trials each,
while the answers needed are a yes or no and two counts. On an ``RDBStorage`` (SQLite, PostgreSQL,
MySQL) they come from one indexed query each; any other storage (a journal file, the gRPC proxy,
memory) keeps Optuna's reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.storage import _optuna
from tuner.storage._sqlite import FastSQLiteStorage


def skip_empty_queue(study: optuna.Study) -> None:
    """Make ``study.ask`` read the study's trials for enqueued ones only when one is waiting.

    Enqueued trials are still popped first, by Optuna's own code, as before.

    Example:
        >>> skip_empty_queue(study); trial = study.ask()  # doctest: +SKIP
    """
    backend, study_id = _optuna.backend_of(_optuna.storage_of(study)), _optuna.study_id(study)
    if isinstance(backend, FastSQLiteStorage):
        _optuna.look_in_queue_only_when(study, lambda: backend.has_waiting_trials(study_id))
    elif isinstance(backend, RDBStorage):
        _optuna.look_in_queue_only_when(study, lambda: _optuna.rdb_has_waiting_trials(backend, study_id))


def count_trials(study: optuna.Study, states: Sequence[TrialState], below_number: int) -> tuple[int, int]:
    """How many trials of the study are in ``states``: in all, and numbered below ``below_number``.

    Read now from the storage where it has a query for it; elsewhere from the trials the study last
    read (at its last ask, after the newest trial was created).

    Example:
        >>> total, below = count_trials(study, (TrialState.RUNNING,), trial.number)  # doctest: +SKIP
    """
    backend, study_id = _optuna.backend_of(_optuna.storage_of(study)), _optuna.study_id(study)
    if isinstance(backend, FastSQLiteStorage):
        return backend.count_trials(study_id, states, below_number)
    if isinstance(backend, RDBStorage):
        return _optuna.rdb_count_trials(backend, study_id, states, below_number)
    trials = _optuna.cached_trials(study, tuple(states))
    return len(trials), sum(t.number < below_number for t in trials)
