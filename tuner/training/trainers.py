"""What trains a trial: one small interface, and the one function that picks the trainer.

Every trial, in every stage and in ``tuner best``, is trained by a :class:`Trainer` that
:func:`make_trainer` chooses from the plans and the user's code:

- :class:`EpochsTrainer` around tuner's own loop: one trial alone
  (:class:`~tuner.training.train.SingleTrainer`) or several as one batched model
  (:class:`~tuner.training.batched.BatchedTrainer`);
- :class:`LoopTrainer`: the user's own training loop (``[train] loop``), one trial at a time.

A trainer's :meth:`Trainer.run` calls ``on_epoch(results)`` after each epoch with one
:class:`~tuner.training.train.EpochResult` per trial (None for a trial that did not train in it);
``on_epoch`` returns the trials that must stop (pruned, diverged), and the trainer stops them
before the next epoch; ``untrained`` holds each trial's epoch-0 result once the first epoch ran. ``fallback`` says why trials that could have been batched train alone (None:
nothing to say). Extra keyword arguments for the model factory and the loop travel in the plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from tuner.errors import raise_if_stop_requested
from tuner.inputs.data import Dataset, StreamedData
from tuner.inputs.params import OPTIMIZER_NAMES, accepted_arguments
from tuner.inputs.usercode import UserCode
from tuner.training.train import (
    EpochResult,
    EpochTrainer,
    SingleTrainer,
    TrainConfig,
    TrialPlan,
    lr_at,
    make_optimizer,
    model_loss,
    parameter_count,
    seeded_model,
    training_loader,
    with_declared,
)

OnEpoch = Callable[[list[EpochResult | None]], Collection[int]]  # one epoch's results -> the trials to stop


class Trainer(Protocol):
    """Trains the plans it was made for; see the module docstring."""

    fallback: str | None
    trained_together: list[int]  # per trial, how many copies trained as one with it (1: alone), the K of its group

    @property
    def untrained(self) -> Sequence[EpochResult | None]:
        """Each trial's epoch-0 result (its model before any step), once its first epoch has run; empty or None if unknown."""
        ...

    def run(self, on_epoch: OnEpoch) -> None: ...

    def n_params(self) -> list[int]: ...


LOOP_FALLBACK = "a user's training loop ([train] loop) trains one trial at a time"
STREAMED_FALLBACK = "data read batch by batch (streamed) trains one trial at a time"


def make_trainer(plans: Sequence[TrialPlan], data: Dataset | StreamedData, code: UserCode,
                 device: torch.device) -> Trainer:
    """The trainer of ``plans``: the user's loop, K copies batched, or tuner's loop for one trial.

    How many plans come together was decided when they were asked (the stage's ``batch_trials``);
    here how they train: tuner's hand-written stacked MLP or LSTM where it applies
    (:func:`hand_written_applies`), else K copies of any network through ``torch.func``
    (:func:`tuner.training.functional.batch_plans`), else one at a time, with the reason in
    :attr:`Trainer.fallback`.
    """
    plans = [with_code(plan, code) for plan in plans]
    if len(plans) == 1:
        return _alone(plans[0], data, code, device)
    if code.loop is not None:
        return PartsTrainer([([i], lambda plan=plan: _alone(plan, data, code, device)) for i, plan in enumerate(plans)],
                            LOOP_FALLBACK)
    if isinstance(data, StreamedData):
        return PartsTrainer([([i], lambda plan=plan: _alone(plan, data, code, device)) for i, plan in enumerate(plans)],
                            STREAMED_FALLBACK)
    if hand_written_applies(code, plans):
        from tuner.training.batched import BatchedTrainer

        first = plans[0]  # the copies share one shape (hand_written_applies): one count for all
        return EpochsTrainer(BatchedTrainer(code.family, data, plans),  # type: ignore[arg-type]
                             lambda: [parameter_count(code.family, data, first.width, first.depth)] * len(plans), k=len(plans))
    from tuner.training.functional_plans import batch_plans

    parts, reason = batch_plans(code.family, data, plans)
    if len(parts) == 1 and parts[0].trainer is not None:
        batched = parts[0].trainer
        return EpochsTrainer(batched, lambda: [sum(batched.layout.sizes)] * len(plans), k=len(plans))  # type: ignore[arg-type]

    def part_trainer(part: Any) -> Callable[[], Trainer]:
        if part.trainer is None:
            return lambda: _alone(plans[part.indices[0]], data, code, device)
        batched = part.trainer
        return lambda: EpochsTrainer(batched, lambda: [sum(batched.layout.sizes)] * len(part.indices),
                                     k=len(part.indices))
    return PartsTrainer([(part.indices, part_trainer(part)) for part in parts], reason)


def hand_written_applies(code: UserCode, plans: Sequence[TrialPlan]) -> bool:
    """Whether tuner's hand-written stacked copies (:mod:`tuner.training.batched`) train these plans.

    Its MLP and LSTM (LSTM up to :data:`~tuner.training.batched.BATCHED_LSTM_MAX_WIDTH` units) with SGD or
    Adam, tuner's own loss and metric, no dropout nor other declared parameter, one shape and batch size.
    """
    from tuner.training.batched import worth_batching

    first = plans[0]
    same = {(p.width, p.depth, p.train.batch_size, p.train.optimizer) for p in plans}
    plain = all(name in OPTIMIZER_NAMES or (name == "dropout" and not value)
                for p in plans for name, value in p.declared.items())
    return (code.loss is None and code.metric is None and plain and len(same) == 1
            and worth_batching(code.family, first.train.optimizer, first.width))  # type: ignore[arg-type]


def _alone(plan: TrialPlan, data: Dataset | StreamedData, code: UserCode, device: torch.device) -> Trainer:
    """One trial trained alone: by the user's loop, else tuner's."""
    model = seeded_model(code.family, data, plan.width, plan.depth, plan.train.seed, plan.declared)
    if code.loop is not None:
        return LoopTrainer(code.loop, model, data, plan.train, device, plan.params, plan.declared)
    return EpochsTrainer(SingleTrainer(model, data, plan.train),  # type: ignore[arg-type]
                         lambda: [sum(p.numel() for p in model.parameters())], model=model)


def with_code(plan: TrialPlan, code: UserCode) -> TrialPlan:
    """``plan`` training with the user's own loss and metric, where the spec names them (with the declared
    parameters each declares)."""
    if code.loss is None and code.metric is None:
        return plan
    loss, metric = (with_declared(function, plan.declared) for function in (code.loss, code.metric))
    return dataclasses.replace(plan, train=dataclasses.replace(plan.train, loss=loss, metric=metric))


class EpochsTrainer:
    """Tuner's own loop (one trial, or K batched), as a :class:`Trainer`."""

    def __init__(self, epochs: EpochTrainer, n_params: Callable[[], list[int]], model: nn.Module | None = None,
                 k: int = 1) -> None:
        self._epochs = epochs
        self._n_params = n_params
        self.model = model  # the one trial's model (None when batched)
        self.fallback: str | None = None
        self.trained_together = [k] * k  # each trial's K: the copies it trained with, itself included

    def run(self, on_epoch: OnEpoch) -> None:
        stopped: set[int] = set()
        for results in self._epochs.epochs():
            for index in on_epoch(results):
                self._epochs.stop(index)
                stopped.add(index)
            if len(stopped) == len(results):
                return

    def n_params(self) -> list[int]:
        return self._n_params()

    @property
    def untrained(self) -> Sequence[EpochResult]:
        return self._epochs.untrained  # type: ignore[attr-defined, no-any-return]


class PartsTrainer:
    """Trials trained part after part: each part (one trial, or K copies of one network) by its own trainer.

    The trainers are built when their part's turn comes (so only one part's models are held at a time);
    ``on_epoch`` sees every trial, None for those of other parts. ``fallback``: why these trials, asked
    together, did not all train as one.
    """

    def __init__(self, parts: Sequence[tuple[list[int], Callable[[], Trainer]]], fallback: str | None) -> None:
        self.parts = list(parts)
        self.fallback = fallback
        self.n_trials = sum(len(indices) for indices, _ in self.parts)
        self.trained_together = [1] * self.n_trials
        for indices, _ in self.parts:
            for i in indices:
                self.trained_together[i] = len(indices)
        self._untrained: list[EpochResult | None] = [None] * self.n_trials
        self._counts: list[int] = [0] * self.n_trials

    @property
    def untrained(self) -> Sequence[EpochResult | None]:
        return self._untrained

    def run(self, on_epoch: OnEpoch) -> None:
        for indices, build in self.parts:
            trainer = build()

            def part_epoch(results: list[EpochResult | None], indices: list[int] = indices, trainer: Trainer = trainer) -> list[int]:
                if not any(self._untrained[i] for i in indices):
                    for i, result in zip(indices, trainer.untrained):
                        self._untrained[i] = result
                everyone: list[EpochResult | None] = [None] * self.n_trials
                for i, result in zip(indices, results):
                    everyone[i] = result
                stop = set(on_epoch(everyone))
                return [row for row, i in enumerate(indices) if i in stop]

            trainer.run(part_epoch)
            for i, count in zip(indices, trainer.n_params()):
                self._counts[i] = count

    def n_params(self) -> list[int]:
        return self._counts


class StopTrial(Exception):
    """Raised by ``report`` inside a user's loop to end the trial (pruned or diverged); tuner catches it."""


LOOP_ARGUMENTS = ("model", "train", "val", "optimizer", "epochs", "lr_at", "device", "report", "loss", "seed", "params")


class LoopTrainer:
    """One trial trained by the user's own loop (``[train] loop``; README: "Your own model").

    The loop is called with the keyword arguments it declares among :data:`LOOP_ARGUMENTS` (all of
    them if it takes ``**kwargs``): the model, DataLoaders over the training and validation parts,
    the optimizer tuner built at the trial's learning rate, the number of epochs, ``lr_at(epoch)``,
    the device, ``report(epoch, value)``, the loss, the seed and the trial's params. After each
    epoch it calls ``report(epoch, value)`` with the objective (lower is better, epochs from 1):
    tuner records it, ends the trial if the value is not finite or the pruner says so (``report``
    raises :class:`StopTrial`; let it through), and sets the optimizer to the schedule's rate for
    the next epoch. The loop may return the final objective instead of, or besides, reporting it.
    """

    fallback: str | None = None
    untrained: Sequence[EpochResult] = ()  # a user's loop has no epoch 0
    trained_together: ClassVar[list[int]] = [1]  # one trial, alone

    def __init__(self, loop: Callable[..., object], model: nn.Module, data: Dataset | StreamedData,
                 config: TrainConfig, device: torch.device, params: dict[str, object] | None = None,
                 declared: dict[str, object] | None = None) -> None:
        self.loop, self.model, self.data, self.config, self.device = loop, model, data, config, device
        self.params = dict(params or {})
        self.declared = dict(declared or {})  # the declared parameters: each one the loop declares is passed
        self.values: list[float] = []  # the objective of each epoch it reported (or returned)

    def n_params(self) -> list[int]:
        return [sum(p.numel() for p in self.model.parameters())]

    def run(self, on_epoch: OnEpoch) -> None:
        reported: list[int] = []
        stopped = False

        def record(epoch: int, value: float, train_loss: float) -> None:
            nonlocal stopped
            if reported and epoch <= reported[-1]:
                raise ValueError(f"report(epoch={epoch}, ...) after epoch {reported[-1]}: report each epoch once, counting from 1")
            reported.append(epoch)
            self.values.append(value)
            result = EpochResult(epoch, lr_at(self.config, epoch - 1), train_loss, value, value, diverged=not math.isfinite(value))
            raise_if_stop_requested()
            if on_epoch([result]) or result.diverged:
                stopped = True
                raise StopTrial(f"stopped at epoch {epoch}: {'diverged' if result.diverged else 'pruned'}")

        try:
            returned = call_user_loop(self.loop, self.model, self.data, self.config, self.device, record, self.params,
                                      self.declared)
        except StopTrial:
            return
        if returned is not None and not stopped:
            value = float(returned)  # type: ignore[arg-type]
            if not self.values or self.values[-1] != value:
                try:
                    record((reported[-1] if reported else 0) + 1, value, math.nan)
                except StopTrial:
                    return
        if not self.values:
            raise ValueError("the loop neither called report(epoch, value) nor returned a value; do one of them")


def call_user_loop(
    loop: Callable[..., object],
    model: nn.Module,
    data: object,
    config: TrainConfig,
    device: torch.device,
    on_report: Callable[[int, float, float], None],
    params: dict[str, object],
    declared: dict[str, object] | None = None,
) -> object:
    """Call the user's loop with the keyword arguments it declares (see :class:`LoopTrainer`); its return value.

    The optimizer is built here at the schedule's first rate. The loop's ``report(epoch, value)``
    calls ``on_report(epoch, value, train_loss)``, which may raise :class:`StopTrial`, then sets the
    optimizer to the schedule's rate for the next epoch.
    """
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
        **(declared or {}),  # names tuner's own arguments already use are refused when the spec is read
    }
    return loop(**accepted_arguments(loop, given))
