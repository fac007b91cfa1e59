"""The errors a study can end with, and what each means for the command line's exit code.

:class:`TunerError`: the study cannot go on (exit 1). :class:`StudyMismatchError` and
:class:`TunerInputError`: bad input, nothing written (exit 2). :class:`Terminated`: SIGTERM, raised
where Ctrl-C would be (exit 143).
"""

from __future__ import annotations


class TunerError(RuntimeError):
    """A study that cannot go on; the message says why and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be (the CLI's handler), so that a stopped job ends its trial as Ctrl-C does."""


class TunerInputError(ValueError):
    """An option or environment variable that cannot be used (bad input: exit code 2); the message says the fix."""


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


def clear_stop_request() -> None:
    _stop_requested.clear()
