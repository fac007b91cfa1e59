"""Run a batch of asked trials: plans -> epochs -> report and prune -> records -> tell.

Whatever trains them (one model alone, K copies stacked into one batched model, or a user's own
loop), trials meet Optuna here and only here, through :class:`TrialBatch`: each epoch's result of
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

from tuner.errors import raise_if_stop_requested
from tuner.storage import Heartbeat, trial_id, write_trial_records
from tuner.study import results
from tuner.study.stages import Stage
from tuner.training.train import EpochResult, EpochTrainer, TrainConfig, TrialPlan

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

    def begin(self, untrained: Sequence[EpochResult]) -> None:
        """Take each trial's untrained (epoch-0) result; stored at once where a pruner may read it."""
        for (_, trial), progress, result in zip(self.asked, self.progress, untrained):
            progress.untrained = _finite_or_none(result.val_error if self.objective == "val_error" else result.val_loss)
            if self.live_reports and progress.untrained is not None:
                trial.set_user_attr(results.UNTRAINED_VALUE_ATTR, progress.untrained)

    def report(self, index: int, epoch: int, value: float) -> bool:
        """Report the objective of an epoch to Optuna (now, or with the trial's records); False: prune."""
        progress = self.progress[index]
        if not self.live_reports:
            progress.reports[epoch] = value
            return True
        trial = self.asked[index][1]
        trial.report(value, epoch)
        if trial.should_prune():
            progress.pruned = True
        return progress.active

    def flush_if_due(self) -> None:
        """Store reports held back for longer than REPORT_FLUSH_S (only without a pruner)."""
        if self.live_reports or time.perf_counter() - self._flushed <= REPORT_FLUSH_S:
            return
        pending = [(self.ids[i], {}, p.reports) for i, p in enumerate(self.progress) if p.reports]
        if pending:
            write_trial_records(self.study, pending)
        for progress in self.progress:
            progress.reports = {}
        self._flushed = time.perf_counter()

    def finish(self, n_params: Sequence[int], extra_attrs: dict[str, object]) -> list[FrozenTrial]:
        """Store every trial's records in one commit, then tell Optuna each outcome."""
        batched = len(self.asked) > 1
        write_trial_records(self.study, [(self.ids[i], {
            results.LEARNING_CURVE_ATTR: p.curve,
            results.TRAIN_LOSS_CURVE_ATTR: p.train_curve,
            results.TRAIN_SECONDS_ATTR: round(p.seconds, 4),
            results.TIME_MEASURE_ATTR: "batch_share" if batched else "alone",
            results.DIVERGED_ATTR: p.diverged,
            results.N_PARAMS_ATTR: n_params[i],
            results.EPOCHS_DONE_ATTR: len(p.curve),
            results.BATCHED_WITH_ATTR: len(self.asked),
            **({results.UNTRAINED_VALUE_ATTR: p.untrained} if p.untrained is not None else {}),
            **extra_attrs,
        }, p.reports) for i, p in enumerate(self.progress)])
        told = []
        for (study, trial), p in zip(self.asked, self.progress):
            if not p.active or not p.curve or p.curve[-1] is None:
                told.append(study.tell(trial, state=TrialState.PRUNED))
            else:
                told.append(study.tell(trial, p.curve[-1]))
        return told

    def fail(self, error: BaseException) -> list[FrozenTrial]:
        """Tell Optuna every trial of the batch failed with ``error`` (kept as user attributes)."""
        failed = []
        for study, trial in self.asked:
            trial.set_user_attr(results.ERROR_ATTR, f"{type(error).__name__}: {error}")
            trial.set_user_attr(results.TRACEBACK_ATTR, traceback.format_exc(limit=8))
            failed.append(study.tell(trial, state=TrialState.FAIL))
        return failed


def run_trials(
    batch: TrialBatch,
    plans: Sequence[TrialPlan],
    make_trainer: Callable[[Sequence[TrialPlan]], EpochTrainer],
    n_params: Callable[[TrialPlan], int],
    extra_attrs: dict[str, object],
    device: torch.device,
) -> list[FrozenTrial]:
    """Train ``plans`` (one per asked trial of ``batch``) with the trainer ``make_trainer`` builds.

    A trial that raises fails the whole batch (its trials are told FAIL with the error) and
    returns; Ctrl-C and other BaseExceptions go up to the runner, which fails the trials itself.
    """
    started = time.perf_counter()
    try:
        with Heartbeat(batch.study, batch.ids):
            trainer = make_trainer(plans)
            setup = time.perf_counter() - started
            for p in batch.progress:
                p.seconds += setup / len(plans)
            epoch_started = time.perf_counter()
            for epoch_results in trainer.epochs():
                # Each trial that trained in this epoch pays its share of the epoch's time.
                trained = [i for i, result in enumerate(epoch_results) if result is not None]
                spent = time.perf_counter() - epoch_started
                for i in trained:
                    batch.progress[i].seconds += spent / len(trained)
                if not any(p.curve for p in batch.progress):  # the first epoch: the trainer has its untrained values
                    batch.begin(getattr(trainer, "untrained", ()))
                for i in trained:
                    if batch.progress[i].active and not batch.record(i, epoch_results[i]):  # type: ignore[arg-type]
                        trainer.stop(i)
                raise_if_stop_requested()  # a Ctrl-C whose first raise was swallowed
                if not any(p.active for p in batch.progress):
                    break
                batch.flush_if_due()
                epoch_started = time.perf_counter()
        counts = [n_params(plan) for plan in plans]
    except Exception as error:  # noqa: BLE001 -- one bad trial must not end the study (Ctrl-C: see the runner)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return batch.fail(error)
    return batch.finish(counts, extra_attrs)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class StopTrial(Exception):
    """Raised by ``report`` inside a user's loop to end the trial (pruned or diverged); tuner catches it."""


LOOP_ARGUMENTS = ("model", "train", "val", "optimizer", "epochs", "lr_at", "device", "report", "loss", "seed", "params")


def run_user_loop(
    batch: TrialBatch,
    plan: TrialPlan,
    loop: Callable[..., object],
    model: torch.nn.Module,
    data: object,
    device: torch.device,
    n_params: int,
    extra_attrs: dict[str, object],
) -> list[FrozenTrial]:
    """Train one asked trial with the user's own loop (``[train] loop``; README: "Your own model").

    The loop is called with the keyword arguments it declares among :data:`LOOP_ARGUMENTS` (all of
    them if it takes ``**kwargs``): the model, DataLoaders over the training and validation parts,
    the optimizer tuner built at the trial's learning rate, the number of epochs, ``lr_at(epoch)``,
    the device, ``report(epoch, value)``, the loss, the seed and the trial's params. After each
    epoch it calls ``report(epoch, value)`` with the objective (lower is better, epochs from 1):
    tuner records it, ends the trial if the value is not finite or the pruner says so (``report``
    raises :class:`StopTrial`; let it through), and sets the optimizer to the schedule's rate for
    the next epoch. The loop may return the final objective instead of, or besides, reporting it.
    """
    from tuner.training.train import lr_at

    config = plan.train
    ((_, trial),) = batch.asked
    reported: list[int] = []

    def record(epoch: int, value: float, train_loss: float) -> None:
        if reported and epoch <= reported[-1]:
            raise ValueError(f"report(epoch={epoch}, ...) after epoch {reported[-1]}: report each epoch once, counting from 1")
        reported.append(epoch)
        result = EpochResult(epoch, lr_at(config, epoch - 1), train_loss, value, value, diverged=not math.isfinite(value))
        raise_if_stop_requested()
        if not batch.record(0, result):
            raise StopTrial(f"trial {trial.number} stopped at epoch {epoch}: {'diverged' if result.diverged else 'pruned'}")

    started = time.perf_counter()
    try:
        with Heartbeat(batch.study, batch.ids):
            try:
                returned = call_user_loop(loop, model, data, config, device, record, dict(trial.params))
            except StopTrial:
                returned = None
        if returned is not None and batch.progress[0].active:
            value = float(returned)  # type: ignore[arg-type]
            if not batch.progress[0].curve or batch.progress[0].curve[-1] != value:
                record((reported[-1] if reported else 0) + 1, value, math.nan)
        if not batch.progress[0].curve:
            raise ValueError("the loop neither called report(epoch, value) nor returned a value; do one of them")
    except StopTrial:
        pass
    except Exception as error:  # noqa: BLE001 -- the user's loop raised: this trial fails, the study goes on
        return batch.fail(error)
    batch.progress[0].seconds = time.perf_counter() - started
    return batch.finish([n_params], extra_attrs)


def call_user_loop(
    loop: Callable[..., object],
    model: torch.nn.Module,
    data: object,
    config: TrainConfig,
    device: torch.device,
    on_report: Callable[[int, float, float], None],
    params: dict[str, object],
) -> object:
    """Call the user's loop with the keyword arguments it declares (see :func:`run_user_loop`); its return value.

    The optimizer is built here at the schedule's first rate. The loop's ``report(epoch, value)``
    calls ``on_report(epoch, value, train_loss)``, which may raise :class:`StopTrial`, then sets the
    optimizer to the schedule's rate for the next epoch.
    """
    from tuner.inputs.data import StreamedData
    from tuner.training.train import lr_at, make_optimizer, model_loss, training_loader

    optimizer = make_optimizer(config.optimizer, model.parameters(), lr_at(config, 0), config.momentum, config.weight_decay)

    def report(epoch: int, value: float, train_loss: float = math.nan) -> None:
        on_report(int(epoch), float(value), float(train_loss))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, int(epoch))

    if isinstance(data, StreamedData):
        train_loader, val_loader = training_loader(data, config), data.loader("val", config.batch_size)
    else:
        tensors = torch.utils.data.TensorDataset
        generator = torch.Generator().manual_seed(config.seed)  # the trial's seed orders its data
        train_loader = torch.utils.data.DataLoader(tensors(data.x_train, data.y_train), batch_size=config.batch_size,  # type: ignore[attr-defined]
                                                   shuffle=True, generator=generator)
        val_loader = torch.utils.data.DataLoader(tensors(data.x_val, data.y_val), batch_size=config.batch_size)  # type: ignore[attr-defined]
    given = {
        "model": model, "train": train_loader, "val": val_loader, "optimizer": optimizer, "epochs": config.epochs,
        "lr_at": lambda epoch: lr_at(config, epoch), "device": device, "report": report,
        "loss": model_loss(data.task, config.loss), "seed": config.seed, "params": params,  # type: ignore[attr-defined]
    }
    return loop(**_accepted(loop, given))


def _accepted(function: Callable[..., object], given: dict[str, object]) -> dict[str, object]:
    """The entries of ``given`` that ``function`` declares (all of them if it takes ``**kwargs``)."""
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return given
    return {name: value for name, value in given.items() if name in parameters}
