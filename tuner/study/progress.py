"""Progress of a running study: the hooks a study reports through (:class:`Reporter`), a live bar per stage on a
terminal and plain log lines elsewhere (:class:`ConsoleReporter`).

No torch here: the CLI prints a finished study's summary without importing it.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuner.study.results import StageSummary, StudyResult, as_shown, loss_like
from tuner.study.stored import DIVERGED_ATTR, stage_kind

if TYPE_CHECKING:
    from tuner.study.stages import Stage


class Reporter:
    """Hooks through which a study tells its progress; the default says nothing."""

    def stage_started(self, stage: Stage, n_finished: int) -> None: ...

    def trial_finished(self, stage: Stage, trial: FrozenTrial, n_finished: int, best_value: float | None) -> None: ...

    def waiting(self, stage: Stage, n_running: int) -> None: ...

    def stage_finished(self, summary: StageSummary) -> None: ...

    def message(self, text: str) -> None: ...


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _StageClock:
    """Elapsed time of a stage in this run, and the time its remaining trials should take.

    The estimate uses only trials finished in this run (a resumed stage's old trials took their
    time in another run, maybe on another machine).
    """

    def __init__(self, budget: int, n_finished: int) -> None:
        self.budget = budget
        self.started = time.monotonic()
        self.n_at_start = n_finished

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self, n_finished: int) -> float | None:
        done_here = n_finished - self.n_at_start
        if n_finished >= self.budget:
            return 0.0
        if done_here <= 0:
            return None
        return self.elapsed() / done_here * (self.budget - n_finished)


class _BestShown:
    """The best value to print beside a trial: the best the runner passes, of every trial of the stage up to
    this one (the trials stored before a resume and other workers' included, a batch's later ones not yet),
    or, where none is passed, the best of the trials printed so far.

    (It once held back the runner's value until it changed, when the runner passed one best for a whole
    batch; the runner now passes each trial its own, and holding it back hid a resumed stage's stored best.)
    """

    def __init__(self, direction: str = "minimize") -> None:
        self.direction = direction  # "maximize": the highest is the best
        self.printed: float | None = None

    def after(self, trial: FrozenTrial, passed: float | None) -> float | None:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            self.printed = self._better(self.printed, trial.value)
        return self._better(self.printed, passed)

    def _better(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return b if a is None else a
        return min(a, b, key=lambda value: loss_like(value, self.direction))


class ConsoleReporter(Reporter):
    """Bars (trials done of budget, best so far, elapsed, remaining) or, off a terminal, a line a trial.

    ``console``: rich's console to print on (default: a new one on standard output), as the CLI does.
    """

    def __init__(self, console: Console | None = None) -> None:
        console = console if console is not None else Console()
        self.console = console
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._waiting_since: float | None = None
        self._clock: _StageClock | None = None
        self._best = _BestShown()
        self._order: list[str] = []  # the stage's parameters as its first line showed them (a proxy's order varies)
        self.started = False  # a stage began: from then on trials may be in progress

    def stage_started(self, stage: Stage, n_finished: int) -> None:
        self.started = True
        self._waiting_since = None
        self._clock = _StageClock(stage.budget, n_finished)
        self._best = _BestShown(stage.direction)
        self._order = []
        resumed = 0 < n_finished < stage.budget  # trials stored by an earlier run (or by other workers, under way)
        if not self.live:
            self.console.print(f"stage {stage.name}: {'resuming, ' if resumed else ''}{n_finished}/{stage.budget} trials "
                               f"done, {stage.epochs} epochs each", highlight=False, markup=False)
            return
        self._progress = Progress(
            TextColumn("[bold]{task.fields[stage]}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            # Our own estimate, not rich's: rich's speed window forgets trials slower than 30 s.
            TextColumn("~{task.fields[left]} left"),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "", total=stage.budget, completed=n_finished, stage=f"{stage.name} (resuming)" if resumed else stage.name,
            best="-", left="?"
        )

    def trial_finished(self, stage: Stage, trial: FrozenTrial, n_finished: int, best_value: float | None) -> None:
        left = _duration(self._clock.remaining(n_finished)) if self._clock else "?"
        best_value = self._best.after(trial, best_value)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=min(n_finished, stage.budget), best=_fmt(best_value), left=left
            )
            return
        if trial.state == TrialState.COMPLETE:
            outcome = f"value {trial.value:.4g}"
        elif trial.user_attrs.get(DIVERGED_ATTR):
            outcome = "diverged"
        elif trial.state == TrialState.PRUNED:
            outcome = "pruned"
        else:
            outcome = f"failed: {trial.user_attrs.get('error', '?')}"
        self._order += [name for name in trial.params if name not in self._order]
        shown = sorted(trial.params.items(), key=lambda item: self._order.index(item[0]))
        params = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in shown)
        elapsed = _duration(self._clock.elapsed()) if self._clock else "?"
        self.console.print(
            f"  [{stage.name} {n_finished}/{stage.budget}] trial {trial.number} ({params}): {outcome}; "
            f"best {_fmt(best_value)}; {elapsed} elapsed, ~{left} left",
            highlight=False,
            markup=False,  # "[lr 3/30]" is text here, not a rich style tag to swallow
        )

    def waiting(self, stage: Stage, n_running: int) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
            self.message(f"stage {stage.name}: budget reached; waiting for {n_running} trial(s) of other workers")

    def stage_finished(self, summary: StageSummary) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(_stage_done(summary), highlight=False)
        if summary.fallback:
            self.console.print(f"stage {summary.stage}: {summary.fallback}", highlight=False, markup=False)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            self.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _stage_done(summary: StageSummary) -> str:
    stopped = f", {summary.n_stopped} stopped by their worker (not failures; others take their places)" if summary.n_stopped else ""
    return (f"stage {summary.stage} done: {summary.n_complete} complete, {summary.n_pruned} pruned "
            f"({summary.n_diverged} diverged), {summary.n_failed} failed{stopped}; best {_fmt(summary.best_value)}")


class ProgressBar(Reporter):
    """A bar per stage (trials done of its budget, best so far) that a notebook shows as a widget and a
    terminal as text: tqdm's ``auto`` bar, as Optuna's ``show_progress_bar``; messages print above it.

    What :func:`tuner.run_study` reports through unless given another ``reporter`` (``progress=False``:
    nothing). ``file``: where a text bar and the messages go (default standard error, as tqdm's bar).
    """

    def __init__(self, file: Any = None) -> None:
        self.file = file
        self._bar: Any = None
        self._best = _BestShown()
        self._waiting = False

    def stage_started(self, stage: Stage, n_finished: int) -> None:
        from tqdm.auto import tqdm  # the notebook's widget where ipywidgets is installed, else text

        self.close()
        self._best, self._waiting = _BestShown(stage.direction), False
        self._bar = tqdm(total=stage.budget, initial=min(n_finished, stage.budget), desc=f"stage {stage.name}",
                         unit="trial", file=self.file, dynamic_ncols=True, leave=True)
        self._bar.set_postfix_str("best -", refresh=True)

    def trial_finished(self, stage: Stage, trial: FrozenTrial, n_finished: int, best_value: float | None) -> None:
        best = self._best.after(trial, best_value)
        if self._bar is not None:
            self._bar.n = min(n_finished, stage.budget)
            self._bar.set_postfix_str(f"best {_fmt(best)}", refresh=True)

    def waiting(self, stage: Stage, n_running: int) -> None:
        if not self._waiting:
            self._waiting = True
            self.message(f"stage {stage.name}: budget reached; waiting for {n_running} trial(s) of other workers")

    def stage_finished(self, summary: StageSummary) -> None:
        self.close()
        self.message(_stage_done(summary))

    def message(self, text: str) -> None:
        from tqdm.auto import tqdm

        # Above a running bar, not through it; beside it on standard error, so that a script's own output stays its own.
        tqdm.write(text, file=self.file if self.file is not None else sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _setting(name: str, value: object) -> str:
    """``name=value`` as the summary shows it (:func:`~tuner.study.results.as_shown`: momentum, not one minus it)."""
    name, value = as_shown(name, value)
    return f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"


def summary_table(result: StudyResult, objective: str) -> Table:
    """The end-of-study table: best setting and value per stage, trial counts, time taken."""
    table = Table(title=f"study {result.name}  ({result.storage})")
    table.add_column("stage", overflow="fold")  # lr[optimizer=adam,batch_size=32] whole, never cut
    table.add_column("best setting")
    table.add_column(f"best {objective}", justify="right")
    table.add_column("trials (ok/pruned/failed)", justify="right")
    table.add_column("time (first start to last end)", justify="right")  # across resumed runs: their pauses too
    for summary in result.stages.values():
        is_lr = stage_kind(summary.stage) == "lr"
        params = ", ".join(_setting(k, v) for k, v in summary.best_params.items() if not is_lr or k == "lr")
        # The robust hand-off reads the whole U, not one trial; with listed choices, each variant its own.
        handed = result.rates.get(summary.stage, result.best_lr) if is_lr else None
        if handed is not None and params != f"lr={handed:.3g}":
            params += f" (handed on: {handed:.3g})"
        table.add_row(
            summary.stage,
            params or "-",
            _fmt(summary.best_value),
            f"{summary.n_complete}/{summary.n_pruned}/{summary.n_failed}",
            f"{summary.wall_seconds:.1f}s",
        )
    # Why trials asked together trained one at a time, one line a stage; and K where they trained as one.
    notes = [f"stage {s.stage}: {s.fallback}" for s in result.stages.values() if s.fallback]
    notes += [f"stage {s.stage}: trials trained together as batched models (its last batch: {s.trained_together} as one)"
              for s in result.stages.values() if s.trained_together > 1 and not s.fallback]
    notes += [f"stage {s.stage}: {s.n_stopped} trial{'s' if s.n_stopped > 1 else ''} stopped by their worker "
              f"(Ctrl-C, SIGTERM, a worker that died or lost the storage): not counted as failed; other trials "
              f"take their places"
              for s in result.stages.values() if s.n_stopped]
    if notes:
        table.caption = "\n".join(notes)
    return table
