"""Run a batch of asked trials: trainer -> epochs -> report and prune -> records -> tell.

Whatever trains them (one model alone, K copies stacked into one batched model, or a user's own
loop: :mod:`tuner.training.trainers`), trials meet Optuna here and only here, in
:func:`run_trials`, through :class:`TrialBatch`: each epoch's result of
each trial goes through :meth:`TrialBatch.record`, which keeps the learning curve, ends a trial
that diverged, reports to the pruner and says whether the trial goes on; at the end
:meth:`TrialBatch.finish` stores every trial's records in one commit and tells Optuna the outcome.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import interrupts_deferred, raise_if_stop_requested
from tuner.storage import Heartbeat, count_trials, fail_trial, tell_trials, trial_id, write_trial_records
from tuner.storage.outages import connection_lost, ride_out_outage
from tuner.study import results
from tuner.study.stages import Stage
from tuner.study.stored import FALLBACK_ATTR, POSITION_ATTR, TRAINED_TOGETHER_ATTR
from tuner.training.train import EpochResult
from tuner.training.trainers import Trainer

REPORT_FLUSH_S = 10.0  # without a pruner, a trial's per-epoch reports are stored at most this often

Asked = tuple[optuna.Study, optuna.Trial]


@dataclass
class _Progress:
    """One trial's records so far."""

    curve: list[float | None] = field(default_factory=list)  # the objective per epoch
    train_curve: list[float | None] = field(default_factory=list)
    reports: dict[int, float] = field(default_factory=dict)  # not yet stored
    seconds: float = 0.0  # its share of the training time
    diverged: bool = False
    pruned: bool = False
    untrained: float | None = None  # the objective before any step (None: a user's loop has no epoch 0)

    @property
    def active(self) -> bool:
        return not (self.diverged or self.pruned)


class TrialBatch:
    """Asked trials of one stage, trained together: their records, reports, pruning and outcome.

    Args:
        stage: the stage the trials belong to (its pruner decides whether reports are stored live).
        asked: the trials, each with the study it was asked from.
        objective: ``val_error`` or ``val_loss``: which value of an epoch is the trial's objective.
    """

    def __init__(self, stage: Stage, asked: Sequence[Asked], objective: str) -> None:
        self.stage = stage
        self.asked = list(asked)
        self.objective = objective
        self.progress = [_Progress() for _ in self.asked]
        self.ids = [trial_id(trial) for _, trial in self.asked]
        # Without a pruner, per-epoch reports are stored at the trial's end with its other records
        # (and every REPORT_FLUSH_S on a slow trial, for dashboards): nothing else reads them, and a
        # commit per epoch costs more than a small trial's training.
        self.live_reports = stage.pruner != "none"
        self._flushed = time.perf_counter()

    @property
    def study(self) -> optuna.Study:
        return self.asked[0][0]

    def record(self, index: int, result: EpochResult) -> bool:
        """Take trial ``index``'s result of an epoch; False once the trial must stop (diverged, pruned)."""
        progress = self.progress[index]
        value = result.val_error if self.objective == "val_error" else result.val_loss
        progress.curve.append(_finite_or_none(value))
        progress.train_curve.append(_finite_or_none(result.train_loss))
        if result.diverged:
            progress.diverged = True
            return False
        return self.report(index, result.epoch, value)

    def begin(self, index: int, result: EpochResult) -> None:
        """Take trial ``index``'s untrained (epoch-0) result; stored at once where a pruner may read it."""
        progress, trial = self.progress[index], self.asked[index][1]
        progress.untrained = _finite_or_none(result.val_error if self.objective == "val_error" else result.val_loss)
        if self.live_reports and progress.untrained is not None:
            untrained = progress.untrained
            ride_out_outage(lambda: trial.set_user_attr(results.UNTRAINED_VALUE_ATTR, untrained), what="storing a trial")

    def report(self, index: int, epoch: int, value: float) -> bool:
        """Report the objective of an epoch to Optuna (now, or with the trial's records); False: prune."""
        progress = self.progress[index]
        if not self.live_reports:
            progress.reports[epoch] = value
            return True
        trial = self.asked[index][1]
        ride_out_outage(lambda: trial.report(value, epoch), what="reporting an epoch")
        if ride_out_outage(trial.should_prune, what="reporting an epoch"):
            progress.pruned = True
        return progress.active

    def flush_if_due(self) -> None:
        """Store reports held back for longer than REPORT_FLUSH_S (only without a pruner)."""
        if self.live_reports or time.perf_counter() - self._flushed <= REPORT_FLUSH_S:
            return
        pending = [(self.ids[i], {}, p.reports) for i, p in enumerate(self.progress) if p.reports]
        try:
            if pending:
                write_trial_records(self.study, pending)
        except Exception as error:
            if connection_lost(error) is None:
                raise
            self._flushed = time.perf_counter()  # kept for the next flush, or the trials' records at their end
            return
        for progress in self.progress:
            progress.reports = {}
        self._flushed = time.perf_counter()

    def finish(self, n_params: Sequence[int], extra_attrs: dict[str, object],
               trained_together: Sequence[int] | None = None) -> list[FrozenTrial]:
        """Store every trial's records in one commit, then tell Optuna each outcome.

        ``trained_together``: per trial, the copies it trained with as one model (its K; default: the
        whole batch), which may be fewer than were asked together.
        """
        together = list(trained_together or [len(self.asked)] * len(self.asked))
        records = [(self.ids[i], {
            results.LEARNING_CURVE_ATTR: p.curve,
            results.TRAIN_LOSS_CURVE_ATTR: p.train_curve,
            results.TRAIN_SECONDS_ATTR: round(p.seconds, 4),
            results.TIME_MEASURE_ATTR: "batch_share" if together[i] > 1 else "alone",
            results.DIVERGED_ATTR: p.diverged,
            results.N_PARAMS_ATTR: n_params[i],
            results.EPOCHS_DONE_ATTR: len(p.curve),
            results.BATCHED_WITH_ATTR: together[i],
            **({results.UNTRAINED_VALUE_ATTR: p.untrained} if p.untrained is not None else {}),
            **extra_attrs,
        }, p.reports) for i, p in enumerate(self.progress)]
        # Trained trials are worth a wait: a storage that stopped answering (a database restart) is
        # waited for, each attempt storing the same records again or telling the trials not yet told.
        ride_out_outage(lambda: self._store(records), what="storing trained trials")
        ride_out_outage(lambda: self._record_on_study(max(together), extra_attrs.get(FALLBACK_ATTR)),
                        what="storing trained trials")
        outcomes = [(trial, None if not p.active or not p.curve else p.curve[-1])
                    for (_, trial), p in zip(self.asked, self.progress)]
        return ride_out_outage(self._teller(outcomes), what="telling trained trials")

    def _store(self, records: list[tuple[int, dict[str, object], dict[int, float]]]) -> None:
        try:
            write_trial_records(self.study, records)
        except optuna.exceptions.UpdateFinishedTrialError:
            # An outage longer than the heartbeat grace period: other workers took us for dead and
            # failed some of these trials once the storage came back. The others are still ours.
            running = self._running()
            write_trial_records(self.study, [r for r, (_, t) in zip(records, self.asked) if t.number in running])

    def _running(self) -> set[int]:
        return {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}

    def _teller(self, outcomes: list[tuple[optuna.Trial, float | None]]) -> Callable[[], list[FrozenTrial]]:
        """Tell the trials their outcomes; called again after a lost connection, it tells only those still running.

        A trial's value is its last epoch's; PRUNED (None) if it stopped early or has no finite value.
        Told with Ctrl-C and SIGTERM held off: on SQLite the batch is one transaction, and a signal
        inside it would roll back every tell and leave trained trials to be abandoned as failed.
        """
        attempts = 0

        def tell() -> list[FrozenTrial]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                try:
                    with interrupts_deferred():
                        return tell_trials(self.study, outcomes)
                except ValueError:  # "Cannot tell a FAIL trial": others failed some (see _store); tell the rest
                    pass
            # An attempt before may have told some (on PostgreSQL each trial is its own commit).
            running = self._running()
            with interrupts_deferred():
                tell_trials(self.study, [(trial, value) for trial, value in outcomes if trial.number in running])
            stored = {t.number: t for t in self.study.get_trials(deepcopy=False)}
            return [stored[trial.number] for trial, _ in outcomes]

        return tell

    def _record_on_study(self, k: int, fallback: object) -> None:
        """Keep K (the most trials of this batch trained as one) and the fallback's reason on the stage study,
        where the summary reads them; written only when they change (absent: K = 1, nothing fell back)."""
        stored = self.study.user_attrs
        if k != stored.get(TRAINED_TOGETHER_ATTR, 1):
            self.study.set_user_attr(TRAINED_TOGETHER_ATTR, k)
        if fallback and fallback != stored.get(FALLBACK_ATTR):
            self.study.set_user_attr(FALLBACK_ATTR, fallback)

    def fail(self, error: BaseException) -> list[FrozenTrial]:
        """Tell Optuna every trial of the batch failed with ``error`` (kept as user attributes)."""
        failed = []
        # Optuna words a lost connection as "invalid data in the commit"; its cause says what happened.
        text = connection_lost(error) or f"{type(error).__name__}: {error}"
        for study, trial in self.asked:
            try:
                trial.set_user_attr(results.ERROR_ATTR, text)
                trial.set_user_attr(results.TRACEBACK_ATTR, traceback.format_exc(limit=8))
                failed.append(study.tell(trial, state=TrialState.FAIL))
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # another worker failed it already
                failed.append(next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
        return failed


def run_trials(
    batch: TrialBatch,
    build: Callable[[], Trainer],
    extra_attrs: dict[str, object],
    device: torch.device,
) -> list[FrozenTrial]:
    """Train the asked trials of ``batch`` with the trainer ``build`` makes; store and tell each outcome.

    The one trial path, for every stage and every trainer (:func:`tuner.training.trainers.make_trainer`):
    each epoch's results are recorded (learning curve, divergence), reported to the pruner and
    turned into stops; then every trial's records are stored and its state told. A trial that
    raises fails the whole batch (its trials are told FAIL with the error); Ctrl-C and other
    BaseExceptions go up to the runner, which fails the trials itself.
    """
    started = time.perf_counter()
    epoch_started = started
    trainer: Trainer

    def on_epoch(results: list[EpochResult | None]) -> list[int]:
        nonlocal epoch_started
        # Each trial that trained in this epoch pays its share of the epoch's time.
        trained = [i for i, result in enumerate(results) if result is not None]
        spent = time.perf_counter() - epoch_started
        for i in trained:
            batch.progress[i].seconds += spent / len(trained)
        untrained = trainer.untrained  # each trial's, known once its first epoch has run
        for i in trained:
            if not batch.progress[i].curve and i < len(untrained) and untrained[i] is not None:
                batch.begin(i, untrained[i])  # type: ignore[arg-type]
        stop = [i for i in trained if not batch.progress[i].active or not batch.record(i, results[i])]  # type: ignore[arg-type]
        raise_if_stop_requested()  # a Ctrl-C whose first raise was swallowed
        batch.flush_if_due()
        epoch_started = time.perf_counter()
        return stop

    try:
        with Heartbeat(batch.study, batch.ids):
            trainer = build()
            setup = time.perf_counter() - started
            for p in batch.progress:
                p.seconds += setup / len(batch.progress)
            epoch_started = time.perf_counter()
            trainer.run(on_epoch)
        counts = trainer.n_params()
    except Exception as error:  # noqa: BLE001 -- one bad trial must not end the study (Ctrl-C: see the runner)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return batch.fail(error)
    if trainer.fallback:
        extra_attrs = {**extra_attrs, FALLBACK_ATTR: trainer.fallback}
    with Heartbeat(batch.study, batch.ids):  # beating on while a storage that stopped answering is waited for
        return batch.finish(counts, extra_attrs, trainer.trained_together)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def abandon(asked: Sequence[Asked], reason: str) -> None:
    """Fail those of our trials that are still RUNNING, with ``reason`` as their ``error``."""
    for study, trial in asked:
        try:
            fail_trial(study, trial_id(trial), reason)  # a no-op for a trial already told
        except Exception:  # noqa: BLE001 -- the storage may be what failed; the next run cleans up
            pass


def holds_position(trial: FrozenTrial) -> bool:
    """Whether a trial keeps its place in the stage's sequence of asks (each place its own seed).

    A trial that failed without raising (its worker was stopped or died, or it was surplus) gives
    its place up: the trial asked in its place draws what it would have drawn, so a stage resumed
    after a kill asks what an uninterrupted one would have. A trial that raised keeps its place,
    so the next one draws anew rather than the same failing parameters.
    """
    return trial.state != TrialState.FAIL or results.TRACEBACK_ATTR in trial.user_attrs


def finished_before(study: optuna.Study, told: Sequence[FrozenTrial]) -> int:
    """How many trials of the stage had finished (complete or pruned) before the batch ``told``, counted now.

    The progress line's count is the stage's, whichever worker ran the trials; a batch that trained
    for minutes beside other workers would otherwise count on from where it started. Read now where
    the storage has a count for it (SQLite, PostgreSQL), else from the trials the study last read.

    Example:
        >>> n_finished = finished_before(study, told)  # doctest: +SKIP
    """
    try:
        n_now, _ = count_trials(study, results.FINISHED, 0)
    except Exception:  # noqa: BLE001 -- a count for the progress line only: never worth a failed worker
        return 0
    return n_now - sum(t.state in results.FINISHED for t in told)


def place_of(study: optuna.Study, number: int) -> int:
    """The place of trial ``number`` in its stage's sequence of asks, which seeds its sampler: the lowest place that no
    other trial holds (:func:`holds_position`), read from the storage once the trial is numbered.

    One worker asks at the places its own count would give, and a trial asked after a stopped one takes the stopped
    one's place (it draws what that one drew): the stage asks what an uninterrupted one would. Workers that ask
    at once get a place each, and a trial that gives its place up after later ones were asked leaves it to the
    next ask, not to a place another trial trains at (a worker killed beside others had two trials share one).
    """
    if count_trials(study, (TrialState.FAIL,), number)[1] == 0:  # one count: where none failed, places are numbers
        return number
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    given_up = 0
    taken = set()
    for trial in trials:
        if not holds_position(trial):
            given_up += 1
        elif trial.number != number:  # its stored place; before places were stored, what its number gave
            stored = trial.user_attrs.get(POSITION_ATTR)
            if stored is not None or trial.number < number:
                taken.add(int(stored) if stored is not None else trial.number - given_up)
    return next(place for place in range(len(trials) + 1) if place not in taken)


def best_value(trials: Sequence[FrozenTrial], direction: str) -> float | None:
    best = results.best_complete(trials, direction)
    return best.value if best is not None else None
