"""The ``tuner`` command: parse, call the library, print. Errors become one line and an exit code.

Exit codes: 0 done; 1 the study could not go on; 2 bad input (nothing written); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM, how Slurm, Kubernetes and systemd stop a job).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

# The library (torch, optuna, scikit-learn) is imported inside the commands, not here, so that
# `tuner --help` answers at once.

BAD_INPUT = 2
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


def _say(text: str, *, err: bool = False) -> None:
    """Print a message as it is: no rich markup or emoji codes to eat ``[x]`` or ``:x:`` in names and paths."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console for tables and progress bars, which takes text literally, as :func:`_say` does."""
    return Console(stderr=stderr, soft_wrap=True, width=width, markup=False, emoji=False, highlight=False)


class _PlainErrorsGroup(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one plain line ``error: ...``, exit 2,
    instead of click's usage block or rich's box; and a finished command is not spoiled by a late Ctrl-C."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[no-untyped-def,override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        global _from_command_line
        _from_command_line = args is None
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as error:  # click's exceptions, as typer ships them
            if type(error).__name__ == "NoArgsIsHelpError":
                error.show()  # plain `tuner`: the help, as before
            else:
                context = getattr(error, "ctx", None)
                hint = f" (see: {context.command_path} --help)" if context is not None else ""
                _say(_one_line(f"error: {error.format_message()}{hint}"), err=True)
            code = getattr(error, "exit_code", 1)
        except typer.Abort:
            _say("error: aborted", err=True)
            code = 1
        _ignore_late_ctrl_c()
        sys.exit(code if isinstance(code, int) else 0)


_from_command_line = False  # set by _PlainErrorsGroup.main: a real process, not a test's CliRunner


def _ignore_late_ctrl_c() -> None:
    """Once the work is done, a Ctrl-C (e.g. while the summary prints, or torch's atexit hooks run at
    shutdown) has nothing left to stop: ignore it, instead of a traceback from the interpreter's exit
    or a process killed by SIGINT (-2). Only in a real process: a test runner keeps its Ctrl-C."""
    if _from_command_line and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


app = typer.Typer(
    cls=_PlainErrorsGroup,
    help="Staged hyperparameter tuning for PyTorch: calibrate the learning rate on a small network, then "
    "tune size and decay schedule at that rate. Trials live in SQLite (default tuner.db) or any Optuna storage; "
    "run the same command again to resume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StorageOption = Annotated[
    str | None,
    typer.Option("--storage", "-s", envvar="TUNER_STORAGE",
                 help="Optuna storage URL, e.g. sqlite:///tuner.db, postgresql://user@host/db or journal:///path/file.log; "
                 "keep passwords off the command line (TUNER_STORAGE_PASSWORD, PGPASSWORD or --storage-password-file) "
                 "[default: the spec's storage, else sqlite:///tuner.db]"),
]

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tuner {version('tuner')}")
        raise typer.Exit()


@app.callback()
def _group(
    version: Annotated[bool, typer.Option("--version", help="Print tuner's version and exit", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Keep ``tuner`` a group of subcommands even while it has only one."""


PasswordFileOption = Annotated[
    Path | None,
    typer.Option("--storage-password-file", help="Read the storage's password from this file (e.g. a mounted secret)"),
]


def _storage_url(storage: str | None, password_file: Path | None) -> str:
    """The storage to read (default sqlite:///tuner.db), its password put in from the file or environment."""
    from tuner.storage import resolve_url, with_password

    return with_password(resolve_url(storage), password_file)


def _fail(message: str, code: int) -> NoReturn:
    _say(_one_line(f"error: {message}"), err=True)
    raise typer.Exit(code)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own output says what matters
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    from tuner.runner import StudyMismatchError, TunerError, TunerInputError
    from tuner.spec import SpecError
    from tuner.storage import StorageError
    from tuner.train import DeviceError

    try:
        with _data_warnings_as_lines():
            yield
    except (SpecError, StorageError, StudyMismatchError, DeviceError, TunerInputError) as error:
        _fail(str(error), BAD_INPUT)
    except TunerError as error:
        _fail(str(error), 1)


@contextmanager
def _data_warnings_as_lines() -> Iterator[None]:
    """Within the block, what tuner changed in the data (a :class:`tuner.data.DataWarning`) is one line ``warning: ...`` on stderr.

    Python's own format is two lines naming tuner's source file, which says nothing to the user.
    """
    from tuner.data import DataWarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        if issubclass(category, DataWarning):
            _say(_one_line(f"warning: {message}"), err=True)
        else:
            shown_before(message, category, filename, lineno, file, line)  # type: ignore[arg-type]

    with warnings.catch_warnings():  # puts showwarning and the filters back afterwards
        shown_before = warnings.showwarning
        warnings.simplefilter("always", DataWarning)  # every study told, not only a process's first
        warnings.showwarning = show
        yield


@contextmanager
def _unexpected_errors() -> Iterator[None]:
    """The storage failing under us, or a bug: one line and exit 1 (TUNER_DEBUG=1 shows the traceback)."""
    import optuna
    import sqlalchemy

    from tuner.storage import redact

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise  # an exit already decided, e.g. by _errors_as_exit_codes
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
        if os.environ.get("TUNER_DEBUG"):
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        _fail(f"the storage failed ({redact(reason)}); finished trials are kept: run the same command again to resume", 1)
    except Exception as error:  # noqa: BLE001
        if os.environ.get("TUNER_DEBUG"):
            raise
        reason = str(error).splitlines()[0] if str(error) else ""
        _fail(f"unexpected {type(error).__name__}: {reason} (a bug in tuner? TUNER_DEBUG=1 shows the traceback); "
              f"finished trials are kept: run the same command again to resume", 1)


@app.command()
def study(
    spec: Annotated[Path, typer.Argument(help="The study file (TOML), e.g. studies/quickstart.toml")],
    storage: StorageOption = None,
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    name: Annotated[str | None, typer.Option(help="Run under this study name instead of the spec's (a fresh study)")] = None,
    storage_password_file: PasswordFileOption = None,
    threads: Annotated[int | None, typer.Option(help="torch threads of this process on the CPU (small models train fastest on one; run more workers to use more cores)",
                                                show_default="$TUNER_THREADS, else 1")] = None,
) -> None:
    """Run a staged study (lr, then shape, then the optional audit), or resume it where it stopped."""
    from tuner.progress import ConsoleReporter, summary_table
    from tuner.runner import Terminated, run_study
    from tuner.spec import load_spec, study_name_problem
    from tuner.storage import DEFAULT_STORAGE, with_password

    _quiet_optuna()
    # Off a terminal (a log file, CI) rich would assume 80 columns and fold the summary table.
    console = _console(width=None if sys.stdout.isatty() else 120)
    reporter = ConsoleReporter(console)
    resume, password_note = _resume_command(spec, storage, name, storage_password_file)
    try:
        with _unexpected_errors(), _errors_as_exit_codes(), _sigterm_as_interrupt():
            loaded = load_spec(spec)
            if name is not None:
                problem = study_name_problem(name)
                if problem:
                    _fail(f"--name {name!r}: {problem}", BAD_INPUT)
                loaded = dataclasses.replace(loaded, name=name)
            _refuse_in_memory(storage, loaded.storage, loaded.source)
            if storage_password_file is not None:
                storage = with_password(storage or loaded.storage or DEFAULT_STORAGE, storage_password_file)
            try:
                result = run_study(loaded, storage=storage, device=device, reporter=reporter, threads=threads)
            finally:
                reporter.close()
    except KeyboardInterrupt as stop:
        what, code = ("terminated (SIGTERM)", TERMINATED) if isinstance(stop, Terminated) else ("interrupted", INTERRUPTED)
        _say(f"{what}: the trial in progress is marked failed, finished trials are kept; "
             f"resume with: {shlex.join(resume)}{password_note}", err=True)
        raise typer.Exit(code) from None
    _ignore_late_ctrl_c()  # the study is finished and stored: what is left is to say so
    console.print(summary_table(result, "value (your loop's)" if loaded.train.loop else loaded.train.objective))
    if result.audit is not None:
        _say(result.audit.message)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (Slurm, Kubernetes, systemd stopping a job) raises :class:`Terminated`,
    and Ctrl-C ``KeyboardInterrupt``; both are also kept as a request the runner raises at its next
    check, in case the first raise landed where Python swallows exceptions (a weakref callback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from tuner.errors import clear_stop_request, request_stop
    from tuner.runner import Terminated

    def terminate(_signum: int, _frame: object) -> None:
        request_stop(Terminated)

    def interrupt(_signum: int, _frame: object) -> None:
        request_stop(KeyboardInterrupt)  # as Python's own handler, but kept until the runner sees it

    previous = signal.signal(signal.SIGTERM, terminate)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        clear_stop_request()


def _resume_command(spec: Path, storage: str | None, name: str | None, password_file: Path | None) -> tuple[list[str], str]:
    """The command that resumes this study, one that works as printed: no password in it, nor a ``***``
    in its place; when the URL had a password, a note says to give it through the environment instead."""
    command = ["tuner", "study", str(spec)]
    note = ""
    if storage:
        bare, had_password = _without_password(storage)
        command += ["--storage", bare]
        if had_password and password_file is None:
            note = " (with the storage's password set through TUNER_STORAGE_PASSWORD or PGPASSWORD)"
    if password_file is not None:
        command += ["--storage-password-file", str(password_file)]
    if name:
        command += ["--name", name]
    return command, note


def _without_password(url: str) -> tuple[str, bool]:
    """``url`` with any password (``user:pw@``, or ``?password=``) taken out, and whether it had one."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 -- not a database URL (journal:///...): nothing to take out
        return url, False
    in_query = [key for key in parsed.query if key.lower() == "password"]
    if parsed.password is None and not in_query:
        return url, False
    # URL.set() skips None, so the password goes through namedtuple's _replace.
    bare = parsed.difference_update_query(in_query)._replace(password=None)
    return bare.render_as_string(hide_password=False), True


def _refuse_in_memory(storage: str | None, spec_storage: str | None, source: str) -> None:
    """An in-memory database ends with the process, and a study's results with it: refuse it for `tuner study`."""
    import sqlalchemy

    url = storage or spec_storage
    if not url:
        return
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 -- not a database URL; opening it says what is wrong
        return
    in_memory = parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    )
    if in_memory:
        where = f"{source}: field 'storage': " if not storage and source else ""
        _fail(f"{where}storage {url!r}: an in-memory database is lost when the command ends, and the study's "
              f"results with it; give a file, e.g. sqlite:///tuner.db", BAD_INPUT)


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the CSV file(s) into (created if missing)")]
NameArgument = Annotated[str, typer.Argument(help="The study's name (its stages are the Optuna studies NAME/lr, NAME/shape, NAME/audit)")]


@contextmanager
def _analysis_errors() -> Iterator[None]:
    from tuner.results import UnknownStudyError

    with _errors_as_exit_codes():
        try:
            yield
        except UnknownStudyError as error:
            _fail(str(error), BAD_INPUT)
        except OSError as error:  # e.g. --out names a file, or a folder we may not write to
            _fail(f"--out: cannot write there ({error.strerror or error}): choose a writable folder", BAD_INPUT)


@app.command()
def importance(
    name: NameArgument, storage: StorageOption = None, out: OutOption = Path("."), storage_password_file: PasswordFileOption = None
) -> None:
    """Write importance.csv: fANOVA (main effects and pairwise interactions) and PED-ANOVA per stage."""
    from rich.table import Table

    from tuner.importance import headline_rows, write_importance

    _quiet_optuna()
    with _analysis_errors():
        path, table, skipped = write_importance(name, out=out, storage=_storage_url(storage, storage_password_file))
    console = _console()
    shown = Table(title=f"importance of {name} (share; fanova: of the variance)")
    for column in ("stage", "evaluator", "param", "param_b", "importance", "std"):
        shown.add_column(column, justify="right" if column in ("importance", "std") else "left")
    # The main effects and the largest interactions of each stage: the whole table is in the CSV.
    headline = headline_rows(table)
    for row in headline.itertuples():
        shown.add_row(row.stage, row.evaluator, row.param, row.param_b, f"{row.importance:.3f}", f"{row.std:.3f}")
    if len(headline) < len(table):
        shown.caption = (f"{len(headline)} of {len(table)} rows shown: main effects and the largest interactions "
                         f"of each stage; all {len(table)} are in {path}")
    if len(table):
        console.print(shown)
    for stage, reason in skipped:
        _say(f"skipped stage {stage}: {reason}")
    _say(f"wrote {path} ({len(table)} rows)")


@app.command()
def export(
    name: NameArgument, storage: StorageOption = None, out: OutOption = Path("."), storage_password_file: PasswordFileOption = None
) -> None:
    """Write trials.csv (one row per trial, every stage) and curves.csv (stage, trial, epoch, value)."""
    from tuner.export import write_export

    _quiet_optuna()
    with _analysis_errors():
        trials_path, curves_path = write_export(name, out=out, storage=_storage_url(storage, storage_password_file))
    _say(f"wrote {trials_path} and {curves_path}")


@app.command()
def report(
    name: NameArgument,
    storage: StorageOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for index.html and the figures",
                                             show_default="NAME-report")] = None,
    storage_password_file: PasswordFileOption = None,
) -> None:
    """Write PNG figures, Optuna's interactive figures and an index.html that explains the study."""
    from tuner.report import write_report

    _quiet_optuna()
    with _analysis_errors():
        written = write_report(name, storage=_storage_url(storage, storage_password_file), out=out)
    for key, why in written.missing.items():
        _say(f"not drawn: {key}: {why}")
    _say(f"wrote {len(written.figures)} figures and {written.index}")


@app.command()
def dashboard(
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 to serve on", min=1, max=65535)] = 8080,
    storage_password_file: PasswordFileOption = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every change (deleting studies, editing trials, notes)")] = False,
) -> None:
    """Serve optuna-dashboard for the storage on 127.0.0.1, to browse every stage live (Ctrl-C stops it).

    Only pages of the dashboard itself, at http://127.0.0.1:PORT or http://localhost:PORT, may change the
    storage; any other site's page is refused (403)."""
    from tuner.dashboard import DashboardError, serve_dashboard
    from tuner.storage import redact

    with _errors_as_exit_codes():
        url = _storage_url(storage, storage_password_file)
        try:
            serve_dashboard(url, port, read_only=read_only, on_ready=lambda address: _say(
                f"optuna-dashboard for {redact(url)} at {address}{' (read-only)' if read_only else ''} (Ctrl-C stops it)"))
        except DashboardError as error:
            _fail(str(error), 1)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


@app.command("lr-find")
def lr_find_command(
    spec: Annotated[Path, typer.Argument(help="The study file (TOML): its small network, data, optimizer and batch size")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for lr_find.csv and lr_find.png (created if missing)")] = Path("."),
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    steps: Annotated[int, typer.Option(help="Mini-batch steps of the full ramp (it stops early once the loss blows up)", min=5)] = 100,
    start_lr: Annotated[float, typer.Option("--start-lr", help="First learning rate of the exponential ramp")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", help="Last learning rate of the exponential ramp")] = 10.0,
) -> None:
    """LR range test: one short run with the rate rising exponentially; prints the suggested rate and search range."""
    from tuner.lr_find import LRFindInputError, lr_find, search_bounds, write_lr_find
    from tuner.spec import load_spec

    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r}: is a file; give a folder", BAD_INPUT)
    with _errors_as_exit_codes():
        try:
            loaded = load_spec(spec)
            result = lr_find(loaded, start_lr=start_lr, end_lr=end_lr, steps=steps, device=device)
        except LRFindInputError as error:
            _fail(str(error), BAD_INPUT)
        try:
            csv_path, png_path = write_lr_find(result, out, title=f"LR range test: {loaded.name}")
        except OSError as error:
            _fail(f"--out {str(out)!r}: cannot write there ({error.strerror or error}); choose a writable folder", BAD_INPUT)
    say = _say
    say(f"LR range test on '{loaded.name}': {len(result.lrs)} steps, lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}")
    if loaded.train.loop:
        say(f"note: the range test trains with tuner's own loop, not train.loop ({loaded.train.loop})")
    say(f"wrote {csv_path} and {png_path}")
    suggestion = result.suggestion
    if suggestion is None:
        _fail(f"no suggestion from this curve: {result.problem}", 1)
    say(f"suggested learning rate: {suggestion.lr:.3g}")
    for name, value in suggestion.rules.items():
        say(f"  {name:<8} {value:.3g}" + ("   (lr at the loss minimum / 10)" if name == "minimum" else ""))
    say(f"rules agree on: {suggestion.low:.3g} to {suggestion.high:.3g}")
    say(f"suggested search range: {suggestion.search_min:.3g} to {suggestion.search_max:.3g}")
    lr = loaded.stages.lr
    bounds = search_bounds(suggestion, lr.lr_min, lr.lr_max)
    within = f"{bounds[0]:.3g} to {bounds[1]:.3g}" if bounds else f"none of it: all of {lr.lr_min:.3g} to {lr.lr_max:.3g}"
    say(f'with lr_range = "auto", stage \'lr\' would search (within lr_min/lr_max): {within}')


@app.command()
def best(
    name: NameArgument,
    storage: StorageOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for best.toml, model.pt and metrics.json [default: NAME-best]")] = None,
    refit: Annotated[str, typer.Option(help="train: the trials' training rows (the validation score reproduces the stored one); "
                                           "train+val: training and validation rows (validation is then no fair score)")] = "train",
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    storage_password_file: PasswordFileOption = None,
) -> None:
    """Train the best configuration of the study's last stage again (same seed); write best.toml, model.pt, metrics.json."""
    from tuner.best import BestError, write_best

    folder = out if out is not None else Path(f"{name}-best")
    _quiet_optuna()
    with _unexpected_errors(), _analysis_errors():
        try:
            result = write_best(name, _storage_url(storage, storage_password_file), folder, refit=refit, device=device)
        except BestError as error:
            _fail(str(error), BAD_INPUT)
    metrics = result.metrics
    say = _say
    if result.replaced:
        say(f"note: {result.replaced}; wrote it anew")
    say(f"trained trial {metrics['trial']} of {name}/{metrics['stage']} again (refit {refit}): "
        f"validation error {metrics['validation']['error']:.4g}, loss {metrics['validation']['loss']:.4g}"
        + (f" (stored {metrics['objective']}: {metrics['stored_value']:.4g})" if refit == "train" else " (not a fair score: trained on it)"))
    if metrics["test"] is not None:
        say(f"test ({metrics['test']['rows']} rows never seen by a stage): error {metrics['test']['error']:.4g}, loss {metrics['test']['loss']:.4g}")
    say(f"wrote {result.spec_path}, {result.model_path} and {result.metrics_path}")


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
