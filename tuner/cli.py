"""The ``tuner`` command: parse, call the library, print. Errors become one line and an exit code.

Exit codes: 0 done; 1 the study could not go on; 2 bad input (nothing written); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import optuna
import typer
from rich.console import Console

from tuner.runner import StudyMismatchError, TunerError
from tuner.spec import SpecError
from tuner.storage import StorageError, redact
from tuner.train import DeviceError

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
    typer.Option("--storage", "-s", help="Optuna storage URL, e.g. sqlite:///tuner.db or postgresql://user@host/db "
                 "[default: the spec's storage, else sqlite:///tuner.db]"),
]

@app.callback()
def _group() -> None:
    """Keep ``tuner`` a group of subcommands even while it has only one."""


BAD_INPUT = 2
INTERRUPTED = 130


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", highlight=False, markup=False)
    raise typer.Exit(code)


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    try:
        yield
    except (SpecError, StorageError, StudyMismatchError, DeviceError) as error:
        _fail(str(error), BAD_INPUT)
    except TunerError as error:
        _fail(str(error), 1)


@app.command()
def study(
    spec: Annotated[Path, typer.Argument(help="The study file (TOML), e.g. studies/quickstart.toml")],
    storage: StorageOption = None,
    device: Annotated[str, typer.Option(help="Where to train: auto (CUDA when available), cpu or cuda")] = "auto",
    name: Annotated[str | None, typer.Option(help="Run under this study name instead of the spec's (a fresh study)")] = None,
) -> None:
    """Run a staged study (lr, then shape, then the optional audit), or resume it where it stopped."""
    from tuner.progress import ConsoleReporter, summary_table
    from tuner.runner import run_study
    from tuner.spec import load_spec

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device!r}: choose auto, cpu or cuda", BAD_INPUT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress says what matters
    console = Console(soft_wrap=True)
    reporter = ConsoleReporter(console)
    with _errors_as_exit_codes():
        loaded = load_spec(spec)
        if name is not None:
            if not name.strip() or "/" in name:
                _fail(f"--name {name!r}: must be non-empty and must not contain '/'", BAD_INPUT)
            loaded = dataclasses.replace(loaded, name=name)
        try:
            result = run_study(loaded, storage=storage, device=device, reporter=reporter)
        except KeyboardInterrupt:
            reporter.close()
            Console(stderr=True).print(
                f"interrupted: the running trial is marked failed; finished trials are kept. "
                f"Resume with: tuner study {spec}" + (f" --storage '{redact(storage)}'" if storage else ""),
                highlight=False, markup=False,
            )
            raise typer.Exit(INTERRUPTED) from None
        finally:
            reporter.close()
    console.print(summary_table(result, loaded.train.objective))


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
