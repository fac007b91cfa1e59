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
