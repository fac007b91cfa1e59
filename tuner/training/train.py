"""The training loop, free of Optuna: optimizer, schedule, mini-batches, validation, divergence guard.

:func:`train_epochs` is a generator that yields one :class:`EpochResult` per epoch, so the caller
(an Optuna objective, a test, a notebook) decides what to do between epochs (report, prune, stop)
without callbacks that change the loop's control flow from afar.

The rules every trainer follows (the single one here, the batched one in :mod:`tuner.training.batched`,
the range test in :mod:`tuner.training.lr_find`) are written once, here: the data order of a seed
(:func:`epoch_order`), the rate of an epoch (:func:`lr_at`), and the divergence test
(:func:`divergence_threshold` of :func:`untrained_train_loss`, :func:`has_diverged`). A trainer is
anything with the :class:`EpochTrainer` shape: ``epochs()`` yields, per epoch, one result per trial
(None once a trial stopped), and ``stop(i)`` ends trial ``i`` before the next epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from tuner.errors import DeviceError, SpecError, TunerInputError  # noqa: F401 -- DeviceError: importable from here as before
from tuner.inputs.data import Dataset, StreamedData, data_device, sample_shape
from tuner.inputs.models import Family, build_model
from tuner.inputs.params import accepted_arguments
from tuner.training.schedules import lr_factor

EVAL_CHUNK = 8192  # validation rows per forward pass, to bound memory on big CSV files


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the model and the data."""

    lr: float
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    decay: float = 1.0
    step_every: int | None = None
    divergence_factor: float = 10.0
    seed: int = 0  # model initialisation and data order
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # the user's; else cross-entropy / MSE
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None  # the user's val_error; lower is better


@dataclass(frozen=True)
class TrialPlan:
    """The model shape and training settings one trial trains with."""

    width: int
    depth: int
    train: TrainConfig
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the trial's sampled params: a user's loop gets them
    # The user's declared parameters ([stages.shape.params]) this trial trains with: the built-in
    # families take dropout, the user's factory, loop, loss and metric the names they declare.
    declared: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # epochs done, from 1
    lr: float  # the rate this epoch trained at
    train_loss: float
    val_loss: float
    val_error: float  # 1 - accuracy, or RMSE in the target's units
    diverged: bool


class EpochTrainer(Protocol):
    """Trains one or more trials epoch by epoch; see the module docstring."""

    def epochs(self) -> Iterator[list[EpochResult | None]]: ...

    def stop(self, index: int) -> None: ...


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0) under the config's schedule."""
    return config.lr * lr_factor(config.schedule, epoch, config.epochs, config.decay, config.step_every)


def epoch_order(rng: torch.Generator, n: int, device: torch.device) -> torch.Tensor:
    """The order of the training rows for the next epoch; ``rng`` is seeded by the trial's seed."""
    return torch.randperm(n, generator=rng).to(device)


def order_generator(seed: int) -> torch.Generator:
    """The CPU generator whose successive :func:`epoch_order` calls give a seed's data order."""
    return torch.Generator().manual_seed(seed)


def divergence_threshold(config: TrainConfig, start_loss: float) -> float:
    """A training loss above this ends the trial as diverged: a multiple of the untrained training loss.

    ``start_loss``: the untrained model's loss on the training part (:func:`untrained_train_loss`),
    like the epochs' training losses it is compared with.
    """
    return config.divergence_factor * max(start_loss, 1e-8)


def has_diverged(train_loss: float, val_loss: float, threshold: float) -> bool:
    """NaN or inf anywhere, or a training loss blown past ``threshold``."""
    return not (math.isfinite(train_loss) and math.isfinite(val_loss)) or train_loss > threshold


def start_rows(n_rows: int) -> torch.Tensor:
    """The rows of a training part of ``n_rows`` the untrained loss is measured on: all, or EVAL_CHUNK evenly spread.

    Evenly spread rather than drawn, so that no random generator moves (a trial's draws stay those of
    its seed), and a part sorted by target is still covered end to end; one chunk bounds the cost.
    """
    if n_rows <= EVAL_CHUNK:
        return torch.arange(n_rows)
    return torch.arange(EVAL_CHUNK) * n_rows // EVAL_CHUNK


@torch.no_grad()
def untrained_train_loss(model: nn.Module, data: Dataset | StreamedData, config: TrainConfig) -> float:
    """The loss of ``model`` (untrained) on the training part's :func:`start_rows`: the divergence bar's base.

    The training part, not the validation part: the bar is compared with training losses, and a tiny
    validation part the untrained model happens to fit well set it near 0, calling sound trials diverged.
    """
    model.eval()
    criterion = loss_function(data.task, config.loss)
    device = data_device(data)
    if isinstance(data, StreamedData):
        rows = start_rows(len(data.train_set)).tolist()
        # A generator of its own: a DataLoader without one draws its seed from torch's global one.
        loader = DataLoader(Subset(data.train_set, rows), batch_size=EVAL_CHUNK, num_workers=data.workers,
                            generator=torch.Generator())
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = ((x.to(device), y.to(device)) for x, y in loader)
    else:
        rows = start_rows(len(data.x_train)).to(data.x_train.device)
        batches = iter([(data.x_train[rows], data.y_train[rows])])
    loss_sum = torch.zeros((), device=device)
    n = 0
    for x, y in batches:
        loss_sum += criterion(task_outputs(model(x), data.task), y) * len(x)
        n += len(x)
    return (loss_sum / max(n, 1)).item()


THREADS_ENV = "TUNER_THREADS"


def pick_threads(threads: int | None, device: torch.device) -> int | None:
    """torch's intra-op threads for a study on ``device``: ``threads``, else $TUNER_THREADS, else 1 on the CPU.

    One per process by default: tuner's trials are small models, whose matrix products are too
    small to share among threads; a second thread only adds hand-offs, and on a machine busy with
    other work (or other workers) its spinning costs several times the training itself
    (scripts/bench_threads.py). Run more workers to use more cores. None: leave torch's setting
    (on a GPU, threads do not train).
    """
    if threads is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if text:
            if not text.isdigit() or int(text) < 1:
                raise TunerInputError(f"environment variable {THREADS_ENV}={text!r}: must be a whole number >= 1, e.g. 1")
            threads = int(text)
    if threads is not None and threads < 1:
        raise TunerInputError(f"threads = {threads}: must be at least 1")
    if threads is None:
        return 1 if device.type == "cpu" else None
    return threads


def use_threads(threads: int | None, device: torch.device) -> int | None:
    """Set torch's intra-op threads as :func:`pick_threads` says; the number set (None: left as it was)."""
    chosen = pick_threads(threads, device)
    if chosen is not None:
        torch.set_num_threads(chosen)
    return chosen


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is a GPU, else the CPU; ``cpu`` and ``cuda`` as named."""
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch; use --device auto or cpu")
    return torch.device(device)


def seeded_model(family: Family, data: Dataset | StreamedData, width: int, depth: int, seed: int,
                 declared: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a model whose initial weights depend only on ``seed`` (common random numbers).

    ``declared``: the trial's declared parameters (:attr:`TrialPlan.declared`) for the factory.
    """
    torch.manual_seed(seed)
    model = build_model(family, sample_shape(data), data.n_outputs, width, depth, declared)
    return model.to(data_device(data))


def parameter_count(family: Family, data: Dataset | StreamedData, width: int, depth: int,
                    declared: Mapping[str, Any] | None = None) -> int:
    """Trainable parameters of a model of this shape (for counting compute: epochs x parameters)."""
    with torch.device("meta"):  # counted, not allocated
        model = build_model(family, sample_shape(data), data.n_outputs, width, depth, declared)
    return sum(p.numel() for p in model.parameters())


def make_optimizer(name: str, params: object, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def with_declared(function: Callable[..., Any] | None, declared: Mapping[str, Any]) -> Any:
    """The user's ``function`` (a loss or metric) called with the declared parameters its signature declares."""
    given = accepted_arguments(function, declared) if function is not None else {}
    return functools.partial(function, **given) if given else function


def loss_function(task: str, custom: Callable[..., torch.Tensor] | None = None) -> Callable[..., torch.Tensor]:
    """The training loss: the user's ``custom`` one, else cross-entropy or mean squared error."""
    if custom is not None:
        return custom
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def model_loss(task: str, custom: Callable[..., torch.Tensor] | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(model(x), y)`` as tuner's own loop computes it (a regression model's (batch, 1) outputs squeezed)."""
    criterion = loss_function(task, custom)
    return lambda outputs, targets: criterion(task_outputs(outputs, task), targets)


def task_outputs(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """A model's outputs as the loss wants them: logits for classification, one value per row else."""
    return outputs if task == "classification" else outputs.squeeze(-1)


def _val_batches(data: Dataset | StreamedData, part: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, StreamedData):
        device = data_device(data)
        for x, y in data.loader(part, EVAL_CHUNK):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    x_all, y_all = (data.x_val, data.y_val) if part == "val" else (data.x_test, data.y_test)
    for start in range(0, len(x_all), EVAL_CHUNK):
        yield x_all[start:start + EVAL_CHUNK], y_all[start:start + EVAL_CHUNK]


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | StreamedData, config: TrainConfig | None = None,
             part: str = "val") -> tuple[float, float]:
    """Validation loss and error (1 - accuracy, RMSE in the target's units, or the user's metric).

    ``config`` brings the user's ``loss`` and ``metric``, if any; ``part``: ``val`` or ``test``.
    A user's metric sees all of the part's outputs and targets at once (for regression, both in
    the target's own units).
    """
    model.eval()
    return score_outputs(((task_outputs(model(x), data.task), y) for x, y in _val_batches(data, part)), data, config)


def score_outputs(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], data: Dataset | StreamedData,
                  config: TrainConfig | None = None) -> tuple[float, float]:
    """Loss and error of one model from its outputs (as the loss wants them) and targets, chunk by chunk.

    What :func:`evaluate` computes; the batched copies of :mod:`tuner.training.functional` score each
    copy's outputs here too, so that a copy's values are its values alone.
    """
    criterion = loss_function(data.task, config.loss if config else None)
    metric = config.metric if config else None
    device = data_device(data)
    loss_sum = torch.zeros((), device=device)
    error_sum = torch.zeros((), device=device)
    n = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for out, y in chunks:
        loss_sum += criterion(out, y) * len(y)
        n += len(y)
        if metric is not None:
            kept.append((out, y))
        elif data.task == "classification":
            error_sum += (out.argmax(dim=-1) != y).sum()
        else:
            error_sum += ((out - y) ** 2).sum()
    loss = (loss_sum / max(n, 1)).item()
    if metric is not None:
        outputs, targets = torch.cat([o for o, _ in kept]), torch.cat([t for _, t in kept])
        if data.task == "regression":
            outputs, targets = (t * data.target_scale + data.target_mean for t in (outputs, targets))
        return loss, float(metric(outputs, targets))
    if data.task == "classification":
        return loss, (error_sum / max(n, 1)).item()
    return loss, math.sqrt((error_sum / max(n, 1)).item()) * data.target_scale


def train_batches(data: Dataset | StreamedData, config: TrainConfig, order_rng: torch.Generator,
                   loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's mini-batches, in the seed's order."""
    if isinstance(data, StreamedData):
        device = data_device(data)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    order = epoch_order(order_rng, len(data.x_train), data.x_train.device)
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        yield data.x_train[batch], data.y_train[batch]


def training_loader(data: Dataset | StreamedData, config: TrainConfig) -> Any:
    """For streamed data, the training DataLoader (shuffled from the trial's seed); None in memory."""
    if isinstance(data, StreamedData):
        return data.loader("train", config.batch_size, generator=order_generator(config.seed))
    return None


def train_epochs(model: nn.Module, data: Dataset, config: TrainConfig,
                 optimizer: torch.optim.Optimizer | None = None) -> Iterator[EpochResult]:
    """Train ``model`` on ``data``; yield the result of each epoch; stop after one that diverged.

    ``optimizer``: one already built on ``model``'s parameters (e.g. a learning-rate-free one to
    compare with); else ``config.optimizer``'s. Either way each epoch sets its groups' ``lr`` to
    :func:`lr_at` of the config.

    Example:
        >>> for result in train_epochs(model, data, TrainConfig(lr=0.05, epochs=10)):  # doctest: +SKIP
        ...     print(result.epoch, result.val_error)
    """
    criterion = loss_function(data.task, config.loss)
    if optimizer is None:
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum, config.weight_decay)
    order_rng = order_generator(config.seed)
    loader = training_loader(data, config)
    device = data_device(data)
    blow_up = divergence_threshold(config, untrained_train_loss(model, data, config))
    for epoch in range(config.epochs):
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = torch.zeros((), device=device)
        n = 0
        for x, y in train_batches(data, config, order_rng, loader):
            loss = criterion(task_outputs(model(x), data.task), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(x)
            n += len(x)
        train_loss = (loss_sum / max(n, 1)).item()  # one device sync per epoch, not per batch
        val_loss, val_error = evaluate(model, data, config)
        diverged = has_diverged(train_loss, val_loss, blow_up)
        yield EpochResult(epoch + 1, lr, train_loss, val_loss, val_error, diverged)
        if diverged:
            return


class SingleTrainer:
    """One trial trained alone, as an :class:`EpochTrainer`.

    ``untrained``: the untrained model's validation values, as an epoch-0 result (training loss
    NaN), filled when :meth:`epochs` starts.
    """

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig) -> None:
        self._epochs = train_epochs(model, data, config)
        self._stopped = False
        self._start = (model, data, config)
        self.untrained: list[EpochResult] = []

    def epochs(self) -> Iterator[list[EpochResult | None]]:
        model, data, config = self._start
        try:
            with torch.random.fork_rng(devices=[]):  # a streamed part's DataLoader draws its seed: leave the trial's draws be
                val_loss, val_error = evaluate(model, data, config)
            self.untrained = [EpochResult(0, lr_at(config, 0), math.nan, val_loss, val_error, diverged=False)]
        except Exception:  # noqa: BLE001 -- a user's metric may not take an untrained model's outputs: then it is unknown
            self.untrained = []
        for result in self._epochs:
            yield [result]
            if self._stopped or result.diverged:
                return

    def stop(self, index: int) -> None:
        if index != 0:
            raise IndexError(f"a single trainer has one trial; got index {index}")
        self._stopped = True
