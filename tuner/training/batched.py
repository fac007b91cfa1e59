"""K copies of a model trained together as one batched model: the LR stage's trials at once.

One small MLP or LSTM leaves a CPU or GPU idle: each step is a few tiny matrix products and a lot
of Python. Stacking K copies (weights of shape ``(K, fan_in, fan_out)``, one batched matrix product
per layer, or per layer and step for the LSTM) does K trials' work for a fraction of the price of
K. Each family that can be batched has a stacked form, a :class:`Stacked` (tuner's ``mlp`` and
``lstm``, found by their factory: :func:`supports`). Each copy keeps its own learning rate,
schedule, momentum and weight decay, and is updated with exactly the rule of ``torch.optim.SGD``
(or ``torch.optim.Adam``), so that with the same seed and data order a copy's curve matches the
same trial trained alone by :func:`tuner.training.train.train_epochs` to float tolerance. (Except where
training itself is chaotic: an LSTM at rates near the edge of stability turns the last bit's
difference into a different curve within a few epochs, batched or not, as torch's own two LSTM
kernels, oneDNN's and its native one, part from each other there.)

Copies never mix: every copy's loss depends only on its own weights, so a copy whose weights blow
up to NaN cannot disturb the others; and copies that stopped (diverged, pruned, done) are dropped
from the stacked tensors, so they cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tuner.inputs.data import Dataset
from tuner.inputs.models import Family
from tuner.training.functional_state import adam_update, sgd_update
from tuner.training.stacked import Stacked, StackedLSTM, StackedMLP, stacked_class
from tuner.training.train import (
    EVAL_CHUNK,
    EpochResult,
    TrainConfig,
    TrialPlan,
    divergence_threshold,
    epoch_order,
    has_diverged,
    lr_at,
    order_generator,
    seeded_model,
    start_rows,
)

BATCHED_OPTIMIZERS = ("sgd", "adam")


def supports(family: Family, optimizer: str) -> bool:
    """Whether trials of this model family and optimizer can be trained as one batched model."""
    return stacked_class(family) is not None and optimizer in BATCHED_OPTIMIZERS


# On a CPU, stacked LSTMs wider than this train slower than one at a time (bench_lr_stage.py --family
# lstm, one batch of 16: 2.0x the trials/s at width 32, 1.1x at 64, 0.71x at 128): the per-step
# matrix products are then big enough for nn.LSTM's fused kernel to win over the Python loop.
BATCHED_LSTM_MAX_WIDTH = 32


def worth_batching(family: Family, optimizer: str, width: int) -> bool:
    """Whether the LR stage's trials of this small network train faster batched than one at a time."""
    if not supports(family, optimizer):
        return False
    return stacked_class(family) is not StackedLSTM or width <= BATCHED_LSTM_MAX_WIDTH


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, target, reduction="none")`` for logits ``(rows, classes)`` and class indices.

    Written as logsumexp minus the target's logit: the same values to float rounding, and on a CPU
    about 3x faster than torch's log_softmax for few classes and many rows (K copies' batches at
    once: 0.16 ms against 0.50 ms forward and backward for 2048 rows of 10 classes, torch 2.13).
    Other shapes and probability targets go to ``F.cross_entropy`` itself.
    """
    if logits.dim() != 2 or target.dim() != 1 or target.is_floating_point():
        return F.cross_entropy(logits, target, reduction="none")
    return logits.logsumexp(-1) - logits.gather(1, target.unsqueeze(1)).squeeze(1)


def _per_copy_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Mean loss of each copy over the batch, as nn.CrossEntropyLoss / nn.MSELoss compute it alone."""
    if task == "classification":
        k, batch, classes = out.shape
        target = y.expand(k, batch) if y.dim() == 1 else y
        return cross_entropy_rows(out.reshape(k * batch, classes), target.reshape(-1)).view(k, batch).mean(1)
    target = y.expand(out.shape[0], -1) if y.dim() == 1 else y
    return ((out.squeeze(-1) - target) ** 2).mean(1)


@torch.no_grad()
def _evaluate(net: Stacked, data: Dataset, part: str = "val", chunk_of: int | None = None) -> tuple[list[float], list[float]]:
    """Each copy's validation loss and error, as :func:`tuner.training.train.evaluate` computes them.

    ``part = "start"``: on the training rows :func:`tuner.training.train.untrained_train_loss` reads instead.
    ``chunk_of``: cut the rows into the chunks of that many copies (default: ``net``'s), so that a few
    copies measured for many add their rows up in the same order.
    """
    k = net.flat.shape[0]
    if part == "start":
        rows = start_rows(len(data.x_train)).to(data.x_train.device)
        x_part, y_part = data.x_train[rows], data.y_train[rows]
    else:
        x_part, y_part = data.x_val, data.y_val
    n = len(x_part)
    x_val = net.inputs(x_part)
    chunk = max(1, EVAL_CHUNK // (chunk_of or k))  # bound memory: K copies of the activations per chunk
    loss_sum = torch.zeros(k, device=x_val.device)
    error_sum = torch.zeros(k, device=x_val.device)
    for start in range(0, n, chunk):
        x, y = x_val[start:start + chunk], y_part[start:start + chunk]
        out = net.forward(x.expand(k, *x.shape))
        loss_sum += _per_copy_loss(out, y, data.task) * len(x)
        if data.task == "classification":
            error_sum += (out.argmax(dim=-1) != y).sum(1)
        else:
            error_sum += ((out.squeeze(-1) - y) ** 2).sum(1)
    losses = (loss_sum / n).tolist()
    errors = (error_sum / n).tolist()
    if data.task == "regression":
        errors = [math.sqrt(e) * data.target_scale if math.isfinite(e) else e for e in errors]
    return losses, errors


class _Optimizer:
    """SGD (momentum, weight decay) or Adam on the flat weights, each copy with its own settings.

    The update rules are torch.optim.SGD's (dampening 0, no Nesterov) and torch.optim.Adam's
    (L2 weight decay added to the gradient, no AMSGrad), written out on tensors of shape (K, P).
    """

    def __init__(self, name: str, flat: torch.Tensor, configs: Sequence[TrainConfig]) -> None:
        column = lambda values: torch.tensor(values, dtype=flat.dtype, device=flat.device).unsqueeze(1)  # noqa: E731
        self.name = name
        self.momentum = column([c.momentum for c in configs])
        self.weight_decay = column([c.weight_decay for c in configs])
        self.uses_decay = any(c.weight_decay != 0 for c in configs)
        self.lr = column([c.lr for c in configs])
        self.state = [torch.zeros_like(flat)] if name == "sgd" else [torch.zeros_like(flat), torch.zeros_like(flat)]
        self.steps = 0

    def set_lr(self, rates: Sequence[float]) -> None:
        self.lr = torch.tensor(rates, dtype=self.lr.dtype, device=self.lr.device).unsqueeze(1)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the state of copies that stopped."""
        self.momentum, self.weight_decay, self.lr = (t.index_select(0, rows) for t in (self.momentum, self.weight_decay, self.lr))
        self.state = [t.index_select(0, rows) for t in self.state]

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        if self.uses_decay:
            grad = grad + self.weight_decay * flat
        if self.name == "sgd":
            sgd_update(flat, grad, self.state[0], self.lr, self.momentum)
            return
        self.steps += 1
        adam_update(flat, grad, self.state[0], self.state[1], self.lr, self.steps)


def train_batched(family: str, data: Dataset, plans: Sequence[TrialPlan], active: list[bool]) -> Iterator[list[EpochResult | None]]:
    """Train the plans' models together; per epoch, yield each one's result (None once it stopped).

    The same as :class:`BatchedTrainer`, with stops said through ``active``: the caller sets an
    entry to False to stop that copy before the next epoch (e.g. pruned).

    Example:
        >>> for results in train_batched("mlp", data, plans, active=[True] * len(plans)):  # doctest: +SKIP
        ...     print([r.val_error if r else None for r in results])
    """
    trainer = BatchedTrainer(family, data, plans)
    for results in trainer.epochs(lambda i: not active[i]):
        yield results


class BatchedTrainer:
    """The plans' models trained together, as an :class:`tuner.training.train.EpochTrainer`.

    Each copy starts as ``seeded_model(family, data, width, depth, seed)`` and sees its seed's data
    order, so its curve matches :func:`tuner.training.train.train_epochs` on the same plan. A copy stops
    after the epoch it diverged in, after its own number of epochs, or once :meth:`stop` was
    called for it; stopped copies are dropped from the batch.

    Args:
        family: the model family; must be batchable (see :func:`supports`).
        data: the data set, on the device to train on.
        plans: the trials; all of one width, depth, batch size and optimizer.
    """

    def __init__(self, family: str, data: Dataset, plans: Sequence[TrialPlan]) -> None:
        if plans:
            first = plans[0]
            if not supports(family, first.train.optimizer):
                raise ValueError(f"cannot batch model family {family!r} with optimizer {first.train.optimizer!r}")
            for plan in plans:
                same = (plan.width, plan.depth, plan.train.batch_size, plan.train.optimizer)
                if same != (first.width, first.depth, first.train.batch_size, first.train.optimizer):
                    raise ValueError("batched trials must share width, depth, batch size and optimizer")
        self.family = family
        self._stacked = stacked_class(family) or StackedMLP  # (no plans: never used)
        self.data = data
        self.plans = list(plans)
        self._stopped: set[int] = set()
        # Per epoch, how many copies trained in it: a copy's share of an epoch's time is 1 / that.
        # Each plan's untrained validation values, as an epoch-0 result (training loss NaN), once epochs() starts.
        self.untrained: list[EpochResult] = []

    def stop(self, index: int) -> None:
        self._stopped.add(index)

    def epochs(self, stopped: Callable[[int], bool] | None = None) -> Iterator[list[EpochResult | None]]:
        """Per epoch, each plan's result (None once it stopped); ``stopped(i)``: an extra stop test."""
        is_stopped = (lambda i: i in self._stopped or stopped(i)) if stopped else (lambda i: i in self._stopped)
        plans, data = self.plans, self.data
        if not plans:
            return
        configs = [plan.train for plan in plans]
        first = plans[0]
        initial: dict[int, nn.Module] = {}  # copies of one seed start from the same weights: build once
        for config in configs:
            if config.seed not in initial:
                initial[config.seed] = seeded_model(self.family, data, first.width, first.depth, config.seed)
        net = self._stacked.from_modules([initial[c.seed] for c in configs])
        optimizer = _Optimizer(first.train.optimizer, net.flat, configs)

        n = len(data.x_train)
        device = data.x_train.device
        x_train = net.inputs(data.x_train)
        batch_size = first.train.batch_size
        seeds = sorted({c.seed for c in configs})
        order_rngs = {seed: order_generator(seed) for seed in seeds}

        # Copies of one seed start equal: their untrained values are measured on one copy per seed
        # (in the chunks of all K, so that each sum is the one K copies would give) and shared.
        untrained = self._stacked.from_modules(list(initial.values()))
        row_of = {seed: row for row, seed in enumerate(initial)}
        start_losses, _ = _evaluate(untrained, data, "start", len(configs))  # the untrained training loss, as train_epochs
        val_losses, val_errors = _evaluate(untrained, data, chunk_of=len(configs))
        self.untrained = [EpochResult(0, lr_at(c, 0), math.nan, val_losses[row_of[c.seed]], val_errors[row_of[c.seed]],
                                      diverged=False) for c in configs]
        blow_up = [divergence_threshold(c, start_losses[row_of[c.seed]]) for c in configs]
        running = list(range(len(plans)))  # plan index of each row of the stacked tensors
        for epoch in range(max(c.epochs for c in configs)):
            keep = [row for row, i in enumerate(running) if not is_stopped(i) and epoch < configs[i].epochs]
            if len(keep) < len(running):
                running = self._keep(net, optimizer, running, keep, device)
            if not running:
                return
            k = len(running)
            rates = [lr_at(configs[i], epoch) for i in running]
            optimizer.set_lr(rates)
            # Every seed draws its order each epoch, as it would alone, whether or not its copies still run.
            orders = {seed: epoch_order(rng, n, device) for seed, rng in order_rngs.items()}
            row_seeds = [configs[i].seed for i in running]
            shared = len(set(row_seeds)) == 1
            order = orders[row_seeds[0]] if shared else torch.stack([orders[s] for s in row_seeds])
            loss_sum = torch.zeros(k, device=device)
            grad = torch.empty_like(net.flat)  # the copies' gradient, step after step: a fresh one per step refaults its pages
            # Each tensor its own leaf: the gradient of views of one flat leaf would be a zero-filled
            # (K, n_params) tensor per view, summed; one cat of the tensors' gradients costs a fraction.
            # Views of the flat weights, which the optimizer updates in place: made once an epoch.
            blocks = [view.detach().requires_grad_(True) for view in net.views(net.flat)]
            if shared:  # the epoch's rows in their order, gathered once: each step takes a slice
                x_epoch, y_epoch = x_train[order], data.y_train[order]
            for start in range(0, n, batch_size):
                if shared:
                    x, y = x_epoch[start:start + batch_size], y_epoch[start:start + batch_size]
                    x = x.expand(k, *x.shape)
                else:
                    batch = order[:, start:start + batch_size]
                    x, y = x_train[batch], data.y_train[batch]
                losses = _per_copy_loss(net.forward(x, blocks), y, data.task)
                # Copies are independent, so the gradient of the sum is each copy's own gradient.
                grads = torch.autograd.grad(losses.sum(), blocks)
                optimizer.step(net.flat, torch.cat([g.reshape(k, -1) for g in grads], dim=1, out=grad))
                loss_sum += losses.detach() * x.shape[1]  # the batch's rows
            train_losses = (loss_sum / n).tolist()  # one device sync per epoch, not per batch
            val_losses, val_errors = _evaluate(net, data)
            results: list[EpochResult | None] = [None] * len(plans)
            diverged = []
            for row, i in enumerate(running):
                train_loss, val_loss = train_losses[row], val_losses[row]
                results[i] = EpochResult(epoch + 1, rates[row], train_loss, val_loss, val_errors[row],
                                         has_diverged(train_loss, val_loss, blow_up[i]))
                if results[i].diverged:
                    diverged.append(i)
            if diverged:
                # Stop after the epoch it diverged in, as train_epochs does, whatever the caller does.
                self._stopped.update(diverged)
                keep = [row for row, i in enumerate(running) if i not in diverged]
                running = self._keep(net, optimizer, running, keep, device)
            yield results

    @staticmethod
    def _keep(net: Stacked, optimizer: _Optimizer, running: list[int], keep: list[int], device: torch.device) -> list[int]:
        """Drop the rows not in ``keep`` from the weights and the optimizer state."""
        rows = torch.tensor(keep, dtype=torch.long, device=device)
        net.flat = net.flat.index_select(0, rows)
        optimizer.keep(rows)
        return [running[row] for row in keep]
