"""The errors a study can end with, and what each means for the command line's exit code.

:class:`TunerError`: the study cannot go on (exit 1). :class:`StudyMismatchError` and
:class:`TunerInputError`: bad input, nothing written (exit 2). :class:`SpecError`: a study file
that cannot be used (exit 2). :class:`Terminated`: SIGTERM, raised
where Ctrl-C would be (exit 143).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MISSING: Any = object()  # SpecError's value when the field is missing altogether


class TunerError(RuntimeError):
    """A study that cannot go on; the message says why and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be (the CLI's handler), so that a stopped job ends its trial as Ctrl-C does."""


def error_line(error: BaseException, limit: int | None = None) -> str:
    """``TypeError: its first line``: what a user's code raised, in one line.

    ``limit``: cut the line where a sentence ends within that many characters (else at a word): torch's
    vmap errors run on into advice and an address that a cut in the middle leaves half-written.
    """
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    line = text[0]
    if limit is not None and len(line) > limit:
        cut = line[:limit]
        ends = [i for i in range(len(cut) - 1) if cut[i:i + 2] == ". " and not cut[:i].endswith(("e.g", "i.e", "etc"))]
        end = ends[-1] if ends else -1
        line = cut[:end + 1] if end >= limit // 4 else f"{cut[:cut.rfind(' ')]} ..."
    return f"{type(error).__name__}: {line}"


FILE_FIELD = "<file>"  # a SpecError's field_path when the study file itself is at fault (missing, unreadable, empty)


class SpecError(ValueError):
    """A study file that cannot be used; the message says where, what and how to fix it."""

    def __init__(self, source: str, field_path: str, value: Any, fix: str) -> None:
        self.source = source
        self.field_path = field_path
        self.value = value
        self.fix = fix
        where = f"{source}: " if source else ""
        # A study file is TOML: a boolean as it is written there (true), not as Python prints it (True).
        shown = "" if value is MISSING else f" = {str(value).lower() if isinstance(value, bool) else repr(value)}"
        if field_path == FILE_FIELD:  # the file itself, not a field in it: "x.toml: no such file; ..."
            super().__init__(f"{where or 'the spec: '}{fix}")
        else:
            super().__init__(f"{where}field '{field_path}'{shown}: {fix}")


class TunerInputError(ValueError):
    """An option or environment variable that cannot be used (bad input: exit code 2); the message says the fix."""


class DataWarning(UserWarning):
    """Data tuner changed in order to train on it (e.g. a CSV's constant columns dropped); the message says what."""


class StorageWarning(UserWarning):
    """The storage did not answer for a while and tuner waits for it (a database restart, a proxy redeployed)."""


class DeviceError(ValueError):
    """A device that cannot be used here (``--device``)."""


class StudyMismatchError(TunerError):
    """The stored study was made from different search settings than the spec has now, or by another tool."""


# A stop asked for by a signal, kept until a check raises it: an exception a signal handler raises
# can land inside a weakref callback or __del__, where Python prints and swallows it; the request
# stays, and the runner raises it at its next check (after each epoch and each batch of trials).
_stop_requested: list[type[KeyboardInterrupt]] = []


def request_stop(kind: type[KeyboardInterrupt] = KeyboardInterrupt) -> None:
    """Ask the running study to stop as Ctrl-C (``KeyboardInterrupt``) or SIGTERM (``Terminated``) would, and raise it."""
    if not _stop_requested:
        _stop_requested.append(kind)
    raise kind


def raise_if_stop_requested() -> None:
    """Raise the stop a signal asked for, if its first raise was swallowed."""
    if _stop_requested:
        raise _stop_requested[0]


def stop_requested() -> bool:
    """Whether a signal asked for a stop that no check has raised yet."""
    return bool(_stop_requested)


def clear_stop_request() -> None:
    _stop_requested.clear()


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (and a SIGTERM that has a Python handler) back until the block is done, then deliver it.

    Only in the main thread, and only for signals whose handler raises in Python (the default
    Ctrl-C handler, or one the CLI installed for SIGTERM): those could otherwise strike between a
    trial's creation and its owner record.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deferred = {sig: handler for sig in DEFERRED_SIGNALS if callable(handler := signal.getsignal(sig))}
    caught: list[int] = []
    for sig in deferred:
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in deferred.items():
            signal.signal(sig, handler)
        # Delivered even where the block raised: a caller that catches the error and goes on (a store
        # tried again while the storage is away) must not lose the stop.
        for sig in dict.fromkeys(caught):
            deferred[sig](sig, None)  # its own handler, now and here: KeyboardInterrupt, or the CLI's


def quiet_optuna() -> None:
    """Optuna's INFO line per trial drowns tuner's own progress; its warnings stay (one home for every command)."""
    import warnings

    import optuna  # here, not at the top: reading a spec or an error needs no Optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextmanager
def optuna_silenced() -> Iterator[None]:
    """Optuna's log off for a while, as it was afterwards: the in-memory studies an analysis makes for its own
    sums ("A new study created in memory") and a contour's note on a parameter searched at one value are not
    the user's business, and a library call must not change the user's own Optuna verbosity for good. (Not for
    threads: two overlapping calls could put the levels back in the wrong order.)"""
    import optuna

    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(was)


def a_type(value: object) -> str:
    """``value``'s type name with its article, as a sentence says it: "an int", "a str", "a NoneType"."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
