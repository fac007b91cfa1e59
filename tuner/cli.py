"""The ``tuner`` command: parse, call the library, print. Errors become one line and an exit code.

Exit codes: 0 done; 1 the study could not go on; 2 bad input (nothing written); 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM, how Slurm, Kubernetes and systemd stop a job).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tuner.errors import quiet_optuna
from tuner.exits import (
    BAD_INPUT,
    INTERRUPTED,
    TERMINATED,
    PlainErrorsGroup,
    analysis_errors,
    errors_as_exit_codes,
    escaped_stop_code,
    fail,
    forget_caught_interrupt,
    ignore_late_stops,
    new_console,
    parse_duration,
    real_process,
    say,
    sigterm_as_interrupt,
    signal_point,
    stopped,
    unexpected_errors,
)

# The library (torch, optuna, scikit-learn) is imported inside the commands, not here, so that
# `tuner --help` answers at once.

app = typer.Typer(
    cls=PlainErrorsGroup,
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
                 help="Optuna storage URL, e.g. sqlite:///tuner.db, postgresql://user@host/db, journal:///path/file.log or grpc://host:port (a storage proxy); "
                 "keep passwords off the command line (TUNER_STORAGE_PASSWORD, PGPASSWORD or --storage-password-file) "
                 "\\[default: the spec's storage, else sqlite:///tuner.db]"),
]
# The same for the commands that read a study by name (no spec to take a storage from).
NamedStorageOption = Annotated[str | None, typer.Option(
    "--storage", "-s", envvar="TUNER_STORAGE", help=StorageOption.__metadata__[0].help.replace("the spec's storage, else ", ""))]

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


@app.command()
def study(
    spec: Annotated[Path, typer.Argument(help="The study file (TOML), e.g. studies/quickstart.toml")],
    storage: StorageOption = None,
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    name: Annotated[str | None, typer.Option(help="Run under this study name instead of the spec's (a fresh study)")] = None,
    storage_password_file: PasswordFileOption = None,
    threads: Annotated[int | None, typer.Option(help="torch threads of this process on the CPU (small models train fastest on one; run more workers to use more cores)",
                                                show_default="$TUNER_THREADS, else 1")] = None,
    timeout: Annotated[str | None, typer.Option(
        help="A wall-clock limit, e.g. 2h, 90m, 1h30m or 45s: after it no new trial starts, the trials in progress "
             "finish and are stored, and running the same command again resumes", show_default="none")] = None,
) -> None:
    """Run a staged study (lr, then shape, then the optional audit), or resume it where it stopped."""
    from tuner.errors import Terminated
    from tuner.inputs.spec import load_spec, study_name_problem
    from tuner.storage import DEFAULT_STORAGE, with_password
    from tuner.study.finished import finished_result
    from tuner.study.progress import ConsoleReporter, summary_table

    quiet_optuna()
    # Off a terminal (a log file, CI) rich would assume 80 columns and fold the summary table.
    console = new_console(width=None if sys.stdout.isatty() else 120)
    reporter = ConsoleReporter(console)
    resume, password_note = _resume_command(spec, storage, name, storage_password_file)
    signal_point("study-start")  # (a test hook: a signal before the study catches its own)
    try:
        with unexpected_errors(), errors_as_exit_codes(), sigterm_as_interrupt():
            limit = parse_duration(timeout, "--timeout") if timeout is not None else None
            loaded = load_spec(spec)
            if name is not None:
                problem = study_name_problem(name)
                if problem:
                    fail(f"--name {name!r}: {problem}", BAD_INPUT)
                loaded = dataclasses.replace(loaded, name=name)
            _refuse_in_memory(storage, loaded.storage, loaded.source)
            signal_point("spec-loaded")  # (a test hook: a stop before any trial started)
            if storage_password_file is not None:
                storage = with_password(storage or loaded.storage or DEFAULT_STORAGE, storage_password_file)
            try:
                result = finished_result(loaded, storage, reporter=reporter, device=device, threads=threads)
                if result is None:  # something to run: only now torch, the data and the user's code
                    from tuner.study.runner import run_study

                    result = run_study(loaded, storage=storage, device=device, reporter=reporter, threads=threads,
                                       timeout=limit)
            finally:
                reporter.close()
    except KeyboardInterrupt as stop:
        what, code = ("terminated (SIGTERM)", TERMINATED) if isinstance(stop, Terminated) else ("interrupted", INTERRUPTED)
        if not reporter.started:  # loading the spec, torch, the data or the user's code: no trial ran
            stopped(f"error: {what} before any trial started: run the same command again")
            raise typer.Exit(code) from None
        stopped(f"{what}: the trials in progress are marked failed (a batch: all of its trials; where the storage does "
                f"not answer, the next run does it), finished trials are kept; "
                f"resume with: {shlex.join(resume)}{password_note}")
        raise typer.Exit(code) from None
    ignore_late_stops()  # the study is finished and stored: what is left is to say so
    train = loaded.train
    own_metric = train.metric and train.objective == "val_error"  # a metric replaces val_error only
    objective = "value (your loop's)" if train.loop else "value (your metric's)" if own_metric else train.objective
    console.print(summary_table(result, objective + (", highest" if train.direction == "maximize" else "")))
    if result.timed_out is not None:
        done = sum(s.n_complete + s.n_pruned for s in result.stages.values())
        say(f"stopped at the time limit (--timeout {timeout}) once the trials in progress had finished; "
            f"{done} finished trials are stored; resume with: {shlex.join(resume)}{password_note}")
        signal_point("after-summary")
        return
    if result.worse_than_lr:
        say(result.worse_than_lr)
    if result.audit is not None:
        say(result.audit.message)
    signal_point("after-summary")


def _resume_command(spec: Path, storage: str | None, name: str | None, password_file: Path | None) -> tuple[list[str], str]:
    """The command that resumes this study, one that works as printed: no password in it, nor a ``***``
    in its place; when the URL had a password, a note says to give it through the environment instead."""
    from tuner.storage import PASSWORD_NOTE, without_password

    command = ["tuner", "study", str(spec)]
    note = ""
    if storage:
        bare, had_password = without_password(storage)
        command += ["--storage", bare]
        if had_password and password_file is None:
            note = PASSWORD_NOTE
    if password_file is not None:
        command += ["--storage-password-file", str(password_file)]
    if name:
        command += ["--name", name]
    return command, note


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
        fail(f"{where}storage {url!r}: an in-memory database is lost when the command ends, and the study's "
              f"results with it; give a file, e.g. sqlite:///tuner.db", BAD_INPUT)


OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the CSV file(s) into (created if missing)")]
NameArgument = Annotated[str, typer.Argument(help="The study's name (its stages are the Optuna studies NAME/lr, NAME/shape, NAME/audit)")]


@app.command()
def importance(
    name: NameArgument, storage: NamedStorageOption = None, out: OutOption = Path("."), storage_password_file: PasswordFileOption = None
) -> None:
    """Write importance.csv: fANOVA (main effects and pairwise interactions) and PED-ANOVA per stage,
    from its complete trials and, where trials were pruned, from the deepest epoch enough trials reached."""
    from rich.table import Table

    from tuner.analysis.importance import basis_notes, headline_rows, write_importance

    quiet_optuna()
    with analysis_errors():
        path, table, skipped = write_importance(name, out=out, storage=_storage_url(storage, storage_password_file))
    console = new_console()
    shown = Table(title=f"importance of {name} (share; fanova: of the variance)")
    for column in ("stage", "basis", "evaluator", "param", "param_b", "importance", "std"):
        shown.add_column(column, justify="right" if column in ("importance", "std") else "left")
    # The main effects and the largest interactions of each stage: the whole table is in the CSV.
    headline = headline_rows(table)
    for row in headline.itertuples():
        shown.add_row(row.stage, row.basis, row.evaluator, row.param, row.param_b, f"{row.importance:.3f}", f"{row.std:.3f}")
    # The trial counts go below the table rather than in a column of their own: it stays 80 characters wide.
    counts = table.drop_duplicates(["stage", "basis"])
    caption = ["trials analysed: " + ", ".join(f"{r.stage} ({r.basis}) {r.trials}" for r in counts.itertuples())]
    if len(headline) < len(table):
        caption.append(f"{len(headline)} of {len(table)} rows shown: main effects and the largest interactions "
                       f"of each stage; all {len(table)} are in {path}")
    shown.caption = "\n".join(caption)
    if len(table):
        console.print(shown)
    for note in basis_notes(table):
        say(note)
    for stage, reason in skipped:
        say(f"skipped stage {stage}: {reason}")
    say(f"wrote {path} ({len(table)} rows)")


@app.command()
def export(
    name: NameArgument, storage: NamedStorageOption = None, out: OutOption = Path("."), storage_password_file: PasswordFileOption = None
) -> None:
    """Write trials.csv (one row per trial, every stage) and curves.csv (stage, trial, epoch, value)."""
    from tuner.analysis.export import write_export

    quiet_optuna()
    with analysis_errors():
        trials_path, curves_path = write_export(name, out=out, storage=_storage_url(storage, storage_password_file))
    say(f"wrote {trials_path} and {curves_path}")


@app.command()
def report(
    name: NameArgument,
    storage: NamedStorageOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for index.html and the figures",
                                             show_default="NAME-report")] = None,
    storage_password_file: PasswordFileOption = None,
) -> None:
    """Write PNG figures, Optuna's interactive figures and an index.html that explains the study."""
    from tuner.report import write_report

    quiet_optuna()
    with analysis_errors():
        written = write_report(name, storage=_storage_url(storage, storage_password_file), out=out)
    for key, why in written.missing.items():
        say(f"not drawn: {key}: {why}")
    say(f"wrote {len(written.figures)} figures and {written.index}")


@app.command()
def dashboard(
    storage: NamedStorageOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 to serve on", min=1, max=65535)] = 8080,
    storage_password_file: PasswordFileOption = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every change (deleting studies, editing trials, notes)")] = False,
) -> None:
    """Serve optuna-dashboard for the storage on 127.0.0.1, to browse every stage live (Ctrl-C stops it).

    Only pages of the dashboard itself, at http://127.0.0.1:PORT or http://localhost:PORT, may change the
    storage; any other site's page is refused (403)."""
    from tuner.report.dashboard import DashboardError, serve_dashboard
    from tuner.storage import redact

    with errors_as_exit_codes():
        url = _storage_url(storage, storage_password_file)
        try:
            serve_dashboard(url, port, read_only=read_only, on_ready=lambda address: say(
                f"optuna-dashboard for {redact(url)} at {address}{' (read-only)' if read_only else ''} (Ctrl-C stops it)"))
        except DashboardError as error:  # a port taken, a package missing: the user's to fix, as for storage-proxy
            fail(str(error), BAD_INPUT)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


@app.command("storage-proxy")
def storage_proxy(
    storage: NamedStorageOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for every "
                                           "interface (workers on other machines)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed)", min=0, max=65535)] = 13000,
    storage_password_file: PasswordFileOption = None,
) -> None:
    r"""Serve the storage to many workers through Optuna's gRPC proxy: run workers with --storage grpc://HOST:PORT.

    One proxy holds the database's connections, so hundreds of workers do not each open their own.
    Ctrl-C or SIGTERM stops it (calls in flight finish first). Needs grpcio: pip install 'tuner\[grpc]'."""
    import socket

    from tuner.storage import redact, serve_storage

    quiet_optuna()
    with errors_as_exit_codes():
        given = storage is not None or storage_password_file is not None
        proxy, shown = serve_storage(_storage_url(storage, storage_password_file) if given else None, host, port)
    reach = socket.gethostname() if host in ("0.0.0.0", "::", "") else proxy.address.rpartition(":")[0]
    say(f"storage proxy for {redact(shown)} listening on {proxy.address}; workers: --storage grpc://{reach}:{proxy.port} "
        f"(Ctrl-C or SIGTERM stops it)")
    try:
        while True:
            time.sleep(3600)  # the server answers from its own threads; a signal ends the sleep
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Terminated (see tuner.exits)
        from tuner.errors import Terminated

        ignore_late_stops()
        proxy.stop()
        say(f"storage proxy stopped ({'SIGTERM' if isinstance(stop, Terminated) else 'Ctrl-C'})")


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
    from tuner.inputs.spec import load_spec
    from tuner.training.lr_find import LRFindInputError, lr_find, search_bounds, write_lr_find

    if out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r}: is a file; give a folder", BAD_INPUT)
    with errors_as_exit_codes():
        try:
            loaded = load_spec(spec)
            result = lr_find(loaded, start_lr=start_lr, end_lr=end_lr, steps=steps, device=device)
        except LRFindInputError as error:
            fail(str(error), BAD_INPUT)
        try:
            csv_path, png_path = write_lr_find(result, out, title=f"LR range test: {loaded.name}")
        except OSError as error:
            fail(f"--out {str(out)!r}: cannot write there ({error.strerror or error}); choose a writable folder", BAD_INPUT)
    say(f"LR range test on '{loaded.name}': {len(result.lrs)} steps, lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}")
    if loaded.train.loop:
        say(f"note: the range test trains with tuner's own loop, not train.loop ({loaded.train.loop})")
    from tuner.inputs.choices import first_choice, listed

    for field, values in listed(loaded).items():
        say(f"note: train.{field} lists {list(values)}: the range test used the first, "
            f"{getattr(first_choice(loaded).train, field)!r} (with lr_range = \"auto\", stage lr tests each)")
    say(f"wrote {csv_path} and {png_path}")
    suggestion = result.suggestion
    if suggestion is None:
        fail(f"no suggestion from this curve: {result.problem}", 1)
    say(f"suggested learning rate: {suggestion.lr:.3g}")
    for name, value in suggestion.rules.items():
        say(f"  {name:<8} {value:.3g}" + (f"   (the smoothed loss, as drawn, is lowest at lr {10 * value:.3g}; / 10)"
                                          if name == "minimum" else ""))
    say(f"rules agree on: {suggestion.low:.3g} to {suggestion.high:.3g}")
    say(f"suggested search range: {suggestion.search_min:.3g} to {suggestion.search_max:.3g}")
    lr = loaded.stages.lr
    bounds = search_bounds(suggestion, lr.lr_min, lr.lr_max)
    within = f"{bounds[0]:.3g} to {bounds[1]:.3g}" if bounds else f"none of it: all of {lr.lr_min:.3g} to {lr.lr_max:.3g}"
    say(f'with lr_range = "auto", stage \'lr\' would search (within lr_min/lr_max): {within}')


@app.command()
def best(
    name: NameArgument,
    storage: NamedStorageOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for best.toml, model.pt and metrics.json \\[default: NAME-best]")] = None,
    refit: Annotated[str, typer.Option(help="train: the trials' training rows (the validation score reproduces the stored one); "
                                           "train+val: training and validation rows (validation is then no fair score)")] = "train",
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    stage: Annotated[str | None, typer.Option(help="Train this stage's best trial (lr, shape or audit; with a list of "
                                                   "optimizers, lr is the best of their stages lr, or name one: 'lr\\[optimizer=adam]' or 'lr\\[adam]') "
                                                   "\\[default: the best of stages lr and shape: shape, unless lr's small network did better]")] = None,
    storage_password_file: PasswordFileOption = None,
) -> None:
    """Train the study's best configuration again (same seed); write best.toml, model.pt, metrics.json."""
    from tuner.best import BestError, write_best

    quiet_optuna()
    with unexpected_errors(), analysis_errors():
        try:
            result = write_best(name, _storage_url(storage, storage_password_file), out, refit=refit, device=device,
                                stage=stage)
        except BestError as error:
            fail(str(error), BAD_INPUT)
    metrics = result.metrics
    if result.replaced:
        say(f"note: {result.replaced}; wrote it anew")
    say(f"chose {metrics['chosen']}")
    own = str(metrics.get("error_is", "")).startswith("your metric")  # it replaced tuner's val_error
    what = "your metric" if own else "error"
    validation = metrics["validation"]
    if metrics.get("value_is") == "your loop's last report":  # the loop's reports were the values compared, not the metric
        scores = f"your loop's value {validation['value']:.4g}, {what} {validation['error']:.4g}"
        stored = "your loop's value"
    else:
        scores = f"{what} {validation['error']:.4g}"
        stored = "your metric" if own and metrics["objective"] == "val_error" else metrics["objective"]
    say(f"trained trial {metrics['trial']} of {name}/{metrics['stage']} again (refit {refit}): "
        f"validation {scores}, loss {validation['loss']:.4g}"
        + (f" (stored {stored}: {metrics['stored_value']:.4g})" if refit == "train" else " (not a fair score: trained on it)"))
    if result.redrawn:  # masks drawn again, or the stacked copies' rounding
        say(f"note: {result.redrawn}")
    if metrics["test"] is not None:
        say(f"test ({metrics['test']['rows']} rows never seen by a stage): {what} {metrics['test']['error']:.4g}, "
            f"loss {metrics['test']['loss']:.4g}")
    modules = f" (with your modules beside it: {', '.join(map(str, result.code_paths))})" if result.code_paths else ""
    say(f"wrote {result.spec_path}{modules}, {result.model_path} and {result.metrics_path}")


def main() -> None:  # pragma: no cover - the console script and `python -m tuner.cli` (tests run them as processes)
    real_process()
    try:
        app()
    except KeyboardInterrupt as stop:
        # A second stop landing after the command had told its own, before the late ones are ignored: exit as the
        # stop asks (130, 143) in at most one line, never killed by the signal (-2) with a traceback.
        ignore_late_stops()
        forget_caught_interrupt()
        sys.exit(escaped_stop_code(stop))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
