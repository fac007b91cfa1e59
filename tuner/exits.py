"""How a ``tuner`` command ends: one plain line and an exit code, whatever went wrong.

Exit codes: 0 done; 1 the study could not go on; 2 bad input (nothing written); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM, how Slurm, Kubernetes and systemd stop a job). Signals become
exceptions here (:func:`sigterm_as_interrupt`), and errors become lines (:func:`fail`). The
library (torch, optuna, scikit-learn) is imported inside the functions, so that ``tuner --help``
answers at once.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

BAD_INPUT = 2
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


def say(text: str, *, err: bool = False) -> None:
    """Print a message as it is: no rich markup or emoji codes to eat ``[x]`` or ``:x:`` in names and paths."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def new_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console for tables and progress bars, which takes text literally, as :func:`say` does."""
    return Console(stderr=stderr, soft_wrap=True, width=width, markup=False, emoji=False, highlight=False)


class PlainErrorsGroup(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one plain line ``error: ...``, exit 2,
    instead of click's usage block or rich's box; a Ctrl-C or SIGTERM that lands where no command
    catches it as one line and exit 130 or 143; and a finished command is not spoiled by a late one."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def,override]
        return _untyped_flags(super().get_params(ctx))

    def get_command(self, ctx, name):  # type: ignore[no-untyped-def,override]
        command = super().get_command(ctx, name)
        if command is not None:
            _untyped_flags(command.get_params(ctx))
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[no-untyped-def,override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        global _stop_told, _stop_seen
        _stop_told, _stop_seen = False, None
        if _from_command_line:
            stops_as_exceptions()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as error:  # click's exceptions, as typer ships them
            if type(error).__name__ == "NoArgsIsHelpError":
                error.show()  # plain `tuner`: the help, as before
            else:
                context = getattr(error, "ctx", None)
                hint = f" (see: {context.command_path} --help)" if context is not None else ""
                say(one_line(f"error: {error.format_message()}{hint}"), err=True)
            code = getattr(error, "exit_code", 1)
        except typer.Abort:
            say("error: aborted", err=True)
            code = 1
        except KeyboardInterrupt as stop:  # landed outside click's handling, e.g. after a command told its own
            code = stop_code(_stop_seen or type(stop))
        else:
            if code == INTERRUPTED and _stop_seen is not None:  # typer turns every KeyboardInterrupt into exit 130
                code = stop_code(_stop_seen)
        ignore_late_stops()
        forget_caught_interrupt()
        sys.exit(code if isinstance(code, int) else 0)


def _untyped_flags(params: list[Any]) -> list[Any]:
    """``params`` with no type shown beside a flag (``--help``, ``--read-only``): Typer's help writes
    ``<bool>`` there, as if the flag took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


_stop_told = False  # set by stopped(): a command said how it stopped; a later stop adds no line
_stop_seen: type[KeyboardInterrupt] | None = None  # the stop stops_as_exceptions's handlers raised, if any


def stopped(line: str) -> None:
    """Say how a command was stopped (Ctrl-C, SIGTERM), once: a stop landing after this says nothing more."""
    global _stop_told
    say(line, err=True)
    _stop_told = True


def stop_code(stop: type[KeyboardInterrupt]) -> int:
    """The exit code of a command that ``stop`` ended, said in one line unless the command said it."""
    from tuner.errors import Terminated

    terminated = issubclass(stop, Terminated)
    if not _stop_told:
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        say(f"error: {what}; finished work is kept: run the same command again", err=True)
    return TERMINATED if terminated else INTERRUPTED


def escaped_stop_code(stop: KeyboardInterrupt) -> int:
    """The exit code of a stop that escaped every command's handling: as the first stop seen asked (a SIGTERM
    stays 143 though a Ctrl-C came after it)."""
    return stop_code(_stop_seen or type(stop))


def stops_as_exceptions() -> None:
    """From the start of a real process: SIGTERM raises :class:`tuner.errors.Terminated` as Ctrl-C raises
    ``KeyboardInterrupt`` (instead of ending the process with no word, status -15), and a stop that
    lands inside a weakref callback or ``__del__`` is not printed as "Exception ignored in ...": the
    runner keeps it as a request and raises it at its next check (:func:`tuner.errors.request_stop`).
    Only in a real process (:func:`real_process`): a Python caller's handlers are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    from tuner.errors import Terminated, request_stop, stop_requested

    def stop(kind: type[KeyboardInterrupt]) -> Any:
        def handler(_signum: int, _frame: object) -> None:
            global _stop_seen
            _stop_seen = kind
            request_stop(kind)  # kept, and raised
        handler.tuner_stop = True  # type: ignore[attr-defined] -- sigterm_as_interrupt may take over from it
        return handler

    # Only where nothing chose otherwise: a worker started by a script with Ctrl-C ignored (`cmd &`)
    # keeps ignoring it.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop(Terminated))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, stop(KeyboardInterrupt))
    shown = sys.unraisablehook
    if getattr(shown, "tuner_stop", False):
        return

    def quiet_stops(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and stop_requested()):
            shown(unraisable)

    quiet_stops.tuner_stop = True  # type: ignore[attr-defined]
    sys.unraisablehook = quiet_stops


# Test hook: the process sends itself a signal at a named point ("study-start:TERM",
# "after-summary:INT"), so that a test stops it exactly there without racing a timer.
SIGNAL_AT_ENV = "TUNER_TEST_SIGNAL_AT"


def signal_point(point: str) -> None:
    wanted, _, name = os.environ.get(SIGNAL_AT_ENV, "").partition(":")
    if wanted == point:
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


_from_command_line = False  # set by real_process(): the console script or python -m tuner.cli, not app() from Python


def real_process() -> None:
    """Say that ``tuner`` runs as its own process (the console script, ``python -m tuner.cli``): only
    then does it take over signal handlers (:func:`stops_as_exceptions`, :func:`ignore_late_stops`)."""
    global _from_command_line
    _from_command_line = True


def ignore_late_stops() -> None:
    """Once the work is done, a Ctrl-C or SIGTERM (e.g. while the summary prints, or torch's atexit
    hooks run at shutdown) has nothing left to stop: ignore it, instead of a traceback from the
    interpreter's exit or a process killed by the signal (-2, -15) with no word. Only in a real
    process: a test runner keeps its Ctrl-C."""
    if _from_command_line and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def parse_duration(text: str, option: str) -> float:
    """Seconds in a duration such as ``2h``, ``90m``, ``1h30m``, ``45s`` or ``600`` (seconds); a bad one exits 2 in one line."""
    plain = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", text)  # a bare number: seconds
    # Otherwise every number has its unit: "1h30" is refused, not read as 1 h 30 s.
    found = plain or re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text.lower())
    if found is None or not any(found.groups()):
        fail(f"{option} {text!r}: not a duration; write e.g. 2h, 90m, 1h30m, 45s (or a number of seconds)", BAD_INPUT)
    hours, minutes, seconds = (0.0, 0.0, float(plain.group(1))) if plain else (
        float(g) if g else 0.0 for g in found.groups())  # type: ignore[union-attr]
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        fail(f"{option} {text!r}: the limit must be longer than 0, e.g. 2h", BAD_INPUT)
    return total


def forget_caught_interrupt() -> None:
    """Make sure a Ctrl-C that tuner caught and answered does not end the process by SIGINT after all.

    CPython keeps a flag, ``_Py_UnhandledKeyboardInterrupt``, set whenever a ``KeyboardInterrupt``
    leaves code run through ``PyRun_String``, which every ``exec()`` of a string goes through (namedtuple,
    dataclasses and SQLAlchemy build functions so, some on first use), and never cleared by catching it; under ``python -m`` (not the ``tuner`` script) the interpreter then
    ends by raising SIGINT on itself, whatever exit code the program chose: status -2 after tuner had
    marked the trial failed and printed how to resume (seen under load in ``tests/test_signals.py``).
    Running one empty statement through the same path clears the flag. Only in a real process."""
    if not _from_command_line:
        return
    import ctypes  # stdlib; PyRun_SimpleString is CPython's stable C API

    try:
        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except (AttributeError, OSError):  # not CPython: no such flag either
        pass


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(message: str, code: int) -> NoReturn:
    say(one_line(f"error: {message}"), err=True)
    raise typer.Exit(code)


@contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    from tuner.errors import DeviceError, SpecError, StudyMismatchError, TunerError, TunerInputError
    from tuner.storage import StorageError

    try:
        with warnings_as_lines():
            yield
    except (SpecError, StorageError, StudyMismatchError, DeviceError, TunerInputError) as error:
        fail(str(error), BAD_INPUT)
    except TunerError as error:
        fail(str(error), 1)


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, what tuner changed in the data (a :class:`tuner.inputs.data.DataWarning`), or a wait
    for a storage that stopped answering (:class:`tuner.errors.StorageWarning`), is one line ``warning: ...`` on stderr.

    Python's own format is two lines naming tuner's source file, which says nothing to the user.
    """
    from tuner.errors import DataWarning, StorageWarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        if issubclass(category, (DataWarning, StorageWarning)):
            say(one_line(f"warning: {message}"), err=True)
        else:
            shown_before(message, category, filename, lineno, file, line)  # type: ignore[arg-type]

    with warnings.catch_warnings():  # puts showwarning and the filters back afterwards
        shown_before = warnings.showwarning
        warnings.simplefilter("always", DataWarning)  # every study told, not only a process's first
        warnings.simplefilter("always", StorageWarning)  # every outage
        warnings.showwarning = show
        yield


@contextmanager
def unexpected_errors() -> Iterator[None]:
    """The storage (or its proxy) failing under us, or a bug: one line and exit 1 (TUNER_DEBUG=1 shows the traceback)."""
    import optuna
    import sqlalchemy

    from tuner.storage import proxy_failure, redact
    from tuner.storage.outages import connection_lost

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise  # an exit already decided, e.g. by errors_as_exit_codes
    except Exception as error:  # noqa: BLE001
        if os.environ.get("TUNER_DEBUG"):
            raise
        resume = "finished trials are kept: run the same command again to resume"
        first_line = str(error).splitlines()[0] if str(error) else ""
        lost = proxy_failure(error) or connection_lost(error)
        if lost is not None:
            fail(f"{lost}; finished trials are kept: once it answers again, run the same command to resume", 1)
        if isinstance(error, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
            fail(f"the storage failed ({redact(first_line or type(error).__name__)}); {resume}", 1)
        fail(f"unexpected {type(error).__name__}: {first_line} (a bug in tuner? TUNER_DEBUG=1 shows the traceback); "
             f"{resume}", 1)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (Slurm, Kubernetes, systemd stopping a job) raises :class:`Terminated`,
    and Ctrl-C ``KeyboardInterrupt``; both are also kept as a request the runner raises at its next
    check, in case the first raise landed where Python swallows exceptions (a weakref callback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from tuner.errors import Terminated, clear_stop_request, request_stop

    def terminate(_signum: int, _frame: object) -> None:
        request_stop(Terminated)

    def interrupt(_signum: int, _frame: object) -> None:
        request_stop(KeyboardInterrupt)  # as Python's own handler, but kept until the runner sees it

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    # Python's own handler or stops_as_exceptions': not an ignored Ctrl-C, nor a caller's own handler.
    takes_ctrl_c = previous_int is signal.default_int_handler or getattr(previous_int, "tuner_stop", False)
    if takes_ctrl_c:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if takes_ctrl_c:
            signal.signal(signal.SIGINT, previous_int)
        clear_stop_request()


@contextmanager
def analysis_errors() -> Iterator[None]:
    from tuner.study.results import NotMadeByTunerError, UnknownStudyError

    with errors_as_exit_codes():
        try:
            yield
        except (UnknownStudyError, NotMadeByTunerError) as error:
            fail(str(error), BAD_INPUT)
        except OSError as error:  # e.g. --out names a file, or a folder we may not write to
            fail(f"--out: cannot write there ({error.strerror or error}): choose a writable folder", BAD_INPUT)
