"""The ``tuner`` command: parse, call the library, print. Errors become one line and an exit code.

Exit codes: 0 done; 1 the study could not go on; 2 bad input (nothing written); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

# The library (torch, optuna, scikit-learn) is imported inside the commands, not here, so that
# `tuner --help` answers at once.

app = typer.Typer(
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
    from tuner.storage import DEFAULT_STORAGE, with_password

    return with_password(storage or DEFAULT_STORAGE, password_file)


BAD_INPUT = 2
INTERRUPTED = 130


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", highlight=False, markup=False)
    raise typer.Exit(code)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own output says what matters
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    from tuner.runner import StudyMismatchError, TunerError
    from tuner.spec import SpecError
    from tuner.storage import StorageError
    from tuner.train import DeviceError

    try:
        yield
    except (SpecError, StorageError, StudyMismatchError, DeviceError) as error:
        _fail(str(error), BAD_INPUT)
    except TunerError as error:
        _fail(str(error), 1)


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
) -> None:
    """Run a staged study (lr, then shape, then the optional audit), or resume it where it stopped."""
    from tuner.progress import ConsoleReporter, summary_table
    from tuner.runner import run_study
    from tuner.spec import load_spec
    from tuner.storage import DEFAULT_STORAGE, redact, with_password

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device!r}: choose auto, cpu or cuda", BAD_INPUT)
    _quiet_optuna()
    # Off a terminal (a log file, CI) rich would assume 80 columns and fold the summary table.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    reporter = ConsoleReporter(console)
    resume = ["tuner", "study", str(spec)] + (["--storage", redact(storage)] if storage else []) + (["--name", name] if name else [])
    try:
        with _unexpected_errors(), _errors_as_exit_codes():
            loaded = load_spec(spec)
            if name is not None:
                if not name.strip() or "/" in name:
                    _fail(f"--name {name!r}: must be non-empty and must not contain '/'", BAD_INPUT)
                loaded = dataclasses.replace(loaded, name=name)
            if storage_password_file is not None:
                storage = with_password(storage or loaded.storage or DEFAULT_STORAGE, storage_password_file)
            try:
                result = run_study(loaded, storage=storage, device=device, reporter=reporter)
            finally:
                reporter.close()
    except KeyboardInterrupt:
        Console(stderr=True, soft_wrap=True).print(
            f"interrupted: the trial in progress is marked failed, finished trials are kept; resume with: {shlex.join(resume)}",
            highlight=False, markup=False,
        )
        raise typer.Exit(INTERRUPTED) from None
    console.print(summary_table(result, loaded.train.objective))
    if result.audit is not None:
        console.print(result.audit.message, highlight=False, markup=False)


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the CSV file(s) into (created if missing)")]
NameArgument = Annotated[str, typer.Argument(help="The study's name (its stages are the Optuna studies NAME/lr, NAME/shape, NAME/audit)")]


@contextmanager
def _analysis_errors() -> Iterator[None]:
    from tuner.importance import UnknownStudyError

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
    console = Console(soft_wrap=True)
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
        console.print(f"skipped stage {stage}: {reason}", highlight=False, markup=False)
    console.print(f"wrote {path} ({len(table)} rows)", highlight=False, markup=False)


@app.command()
def export(
    name: NameArgument, storage: StorageOption = None, out: OutOption = Path("."), storage_password_file: PasswordFileOption = None
) -> None:
    """Write trials.csv (one row per trial, every stage) and curves.csv (stage, trial, epoch, value)."""
    from tuner.export import write_export

    _quiet_optuna()
    with _analysis_errors():
        trials_path, curves_path = write_export(name, out=out, storage=_storage_url(storage, storage_password_file))
    Console(soft_wrap=True).print(f"wrote {trials_path} and {curves_path}", highlight=False, markup=False)


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
    console = Console(soft_wrap=True)
    for key, why in written.missing.items():
        console.print(f"not drawn: {key}: {why}", highlight=False, markup=False)
    console.print(f"wrote {len(written.figures)} figures and {written.index}", highlight=False, markup=False)


@app.command()
def dashboard(
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 to serve on", min=1, max=65535)] = 8080,
    storage_password_file: PasswordFileOption = None,
) -> None:
    """Serve optuna-dashboard for the storage on 127.0.0.1, to browse every stage live (Ctrl-C stops it)."""
    from tuner.dashboard import DashboardError, serve_dashboard
    from tuner.storage import redact

    console = Console(soft_wrap=True)
    with _errors_as_exit_codes():
        url = _storage_url(storage, storage_password_file)
        try:
            serve_dashboard(url, port, on_ready=lambda address: console.print(
                f"optuna-dashboard for {redact(url)} at {address} (Ctrl-C stops it)", highlight=False, markup=False))
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
    from tuner.lr_find import lr_find, search_bounds, write_lr_find
    from tuner.spec import load_spec

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device!r}: choose auto, cpu or cuda", BAD_INPUT)
    if not 0 < start_lr < end_lr:
        _fail(f"--start-lr {start_lr:g} / --end-lr {end_lr:g}: need 0 < start-lr < end-lr, e.g. 1e-7 and 10", BAD_INPUT)
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r}: is a file; give a folder", BAD_INPUT)
    console = Console(soft_wrap=True)
    with _errors_as_exit_codes():
        loaded = load_spec(spec)
        result = lr_find(loaded, start_lr=start_lr, end_lr=end_lr, steps=steps, device=device)
        try:
            csv_path, png_path = write_lr_find(result, out, title=f"LR range test: {loaded.name}")
        except OSError as error:
            _fail(f"--out {str(out)!r}: cannot write there ({error.strerror or error}); choose a writable folder", BAD_INPUT)
    say = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    say(f"LR range test on '{loaded.name}': {len(result.lrs)} steps, lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}")
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


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
