"""K copies of a model trained together as one batched model: the LR stage's trials at once.

One small MLP or LSTM leaves a CPU or GPU idle: each step is a few tiny matrix products and a lot
of Python. Stacking K copies (weights of shape ``(K, fan_in, fan_out)``, one batched matrix product
per layer, or per layer and step for the LSTM) does K trials' work for a fraction of the price of
K. Each family that can be batched has a stacked form, a :class:`_Stacked` (tuner's ``mlp`` and
``lstm``, found by their factory: :func:`supports`). Each copy keeps its own learning rate,
schedule, momentum and weight decay, and is updated with exactly the rule of ``torch.optim.SGD``
(or ``torch.optim.Adam``), so that with the same seed and data order a copy's curve matches the
same trial trained alone by :func:`tuner.train.train_epochs` to float tolerance. (Except where
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

from tuner import models
from tuner.data import Dataset
from tuner.train import (
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
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which train.make_optimizer uses
ADAM_EPS = 1e-8


def supports(family: str, optimizer: str) -> bool:
    """Whether trials of this model family and optimizer can be trained as one batched model."""
    return _stacked_class(family) is not None and optimizer in BATCHED_OPTIMIZERS


# On a CPU, stacked LSTMs wider than this train slower than one at a time (bench_lr_stage.py --family
# lstm, one batch of 16: 2.0x the trials/s at width 32, 1.1x at 64, 0.71x at 128): the per-step
# matrix products are then big enough for nn.LSTM's fused kernel to win over the Python loop.
BATCHED_LSTM_MAX_WIDTH = 32


def worth_batching(family: str, optimizer: str, width: int) -> bool:
    """Whether the LR stage's trials of this small network train faster batched than one at a time."""
    if not supports(family, optimizer):
        return False
    return _stacked_class(family) is not _StackedLSTM or width <= BATCHED_LSTM_MAX_WIDTH


def _stacked_class(family: str) -> type[_Stacked] | None:
    """The stacked form of the family's models, or None if it has none."""
    # By the factory and how it reads the data, not the name: a user may register another model
    # under "mlp" or "lstm", or tuner's factory under another name.
    found = (models.factory_of(family), models.input_kind(family))
    return next((stacked for factory, kind, stacked in _STACKED_FAMILIES if found == (factory, kind)), None)


class _Stacked:
    """K models of one shape: their weights in one flat tensor ``(K, n_params)``, and their forward pass.

    One flat leaf tensor keeps the optimizer to a handful of whole-tensor operations per step and
    makes dropping stopped copies a single ``index_select``. A family's stacked form says which
    tensors of a model it keeps, in the layout its forward pass reads them (:meth:`tensors`), how the
    data's rows are shaped for it (:meth:`inputs`), and the forward pass of all copies at once.
    """

    def __init__(self, flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> None:
        self.flat = flat
        self.shapes = shapes  # of each tensor of one copy, in the order of the flat row

    @classmethod
    def from_modules(cls, copies: Sequence[nn.Module]) -> _Stacked:
        """The copies' weights (each a model built by the family's factory) stacked row by row."""
        rows = [torch.cat([t.reshape(-1) for t in cls.tensors(model)]) for model in copies]
        shapes = [tuple(t.shape) for t in cls.tensors(copies[0])]
        return cls(torch.stack(rows).contiguous(), shapes)

    @staticmethod
    def tensors(model: nn.Module) -> list[torch.Tensor]:
        """One model's weights, detached, each shaped as :meth:`forward` reads it."""
        raise NotImplementedError

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        """A part's inputs ``(rows, *sample)`` as the copies read them, one row each."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (K, batch, *input) from :meth:`inputs` -> (K, batch, outputs)."""
        raise NotImplementedError

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The flat weights cut into each tensor, shaped (K, *shape): views, so gradients reach ``flat``."""
        k = flat.shape[0]
        cut, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            cut.append(flat[:, offset:offset + size].view(k, *shape))
            offset += size
        return cut


class _StackedMLP(_Stacked):
    """Copies of :func:`tuner.models.mlp`: one ``torch.baddbmm`` per layer."""

    @staticmethod
    def tensors(model: nn.Module) -> list[torch.Tensor]:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        # Stored as (fan_in, fan_out) and (1, fan_out): x @ W + b, the layout baddbmm wants.
        return [t for m in linears for t in (m.weight.detach().t(), m.bias.detach().view(1, -1))]

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)  # the factory's model flattens each sample (nn.Flatten)

    def forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.views(self.flat if flat is None else flat)
        h = x
        n_layers = len(weights) // 2
        for layer in range(n_layers):
            h = torch.baddbmm(weights[2 * layer + 1], h, weights[2 * layer])
            if layer < n_layers - 1:
                h = torch.relu(h)
        return h


class _StackedLSTM(_Stacked):
    """Copies of :class:`tuner.models.LSTMRegressor`: nn.LSTM's equations on (K, 4 * width, batch) gates.

    Per layer, as torch computes an nn.LSTM layer: the input's part of the gates for every step in
    one product, then step by step ``gates = W_hh h + that part``; input, forget and output gates
    through a sigmoid, the cell gate through tanh; ``c = f * c + i * g``, ``h = o * tanh(c)``, from
    zero states (:class:`_LSTMLayer`). The head reads the last layer's last ``h``.

    Laid out for speed on small sizes: the states are kept transposed, (K, width, batch), and the
    weights in nn.LSTM's own layout ``W x``, so that each gate is one contiguous block per copy
    (elementwise operations run through it several times faster than through the interleaved
    columns of (K, batch, 4 * width)); the gate blocks are kept in the order i, f, o, g (nn.LSTM's
    rows, reordered), so that one sigmoid covers the three sigmoid gates; and both biases are two
    more columns of ``W_ih``, met by two rows of ones under the input, so that the input's product
    adds them (broadcasting a bias over this layout is slow on the CPU).
    """

    @staticmethod
    def tensors(model: nn.Module) -> list[torch.Tensor]:
        lstm, head = model.lstm, model.head
        kept = []
        for layer in range(lstm.num_layers):
            w_ih, w_hh, b_ih, b_hh = (_sigmoid_gates_first(getattr(lstm, f"{name}_l{layer}").detach())
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            kept += [torch.cat([w_ih, b_ih.view(-1, 1), b_hh.view(-1, 1)], dim=1), w_hh]  # (4 * width, fan_in + 2)
        # The head reads (K, batch, width) rows, as the MLP's layers do: x @ W + b.
        return kept + [head.weight.detach().t(), head.bias.detach().view(1, -1)]

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a table: one step of all features, as LSTMRegressor reads it
            x = x.unsqueeze(1)
        if x.dim() != 3:
            raise ValueError(f"model family 'lstm' reads samples of (steps, features); these have shape {tuple(x.shape[1:])}")
        return torch.cat([x, x.new_ones(*x.shape[:2], 2)], dim=2)  # the biases' two inputs of one

    def forward(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.views(self.flat if flat is None else flat)
        k, batch, steps, _ = x.shape
        n_layers = (len(weights) - 2) // 2
        # (K, features + 2, steps * batch): column ``step * batch + row``, each step's rows side by side.
        sequence = x.permute(0, 3, 2, 1).reshape(k, -1, steps * batch)
        for layer in range(n_layers):
            w_ih, w_hh = weights[2 * layer:2 * layer + 2]
            from_input = torch.bmm(w_ih, sequence).view(k, w_ih.shape[1], steps, batch)
            hs = _LSTMLayer.apply(from_input, w_hh)  # (K, width, steps, batch)
            if layer < n_layers - 1:
                ones = hs.new_ones(k, 2, steps, batch)
                sequence = torch.cat([hs, ones], dim=1).view(k, -1, steps * batch)
        w_head, b_head = weights[-2:]
        return torch.baddbmm(b_head, hs[:, :, -1].transpose(1, 2), w_head)


def _sigmoid_gates_first(t: torch.Tensor) -> torch.Tensor:
    """nn.LSTM's gate blocks (rows) i, f, g, o as i, f, o, g."""
    i, f, g, o = t.chunk(4, dim=0)
    return torch.cat([i, f, o, g], dim=0)


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer of K copies over every step, its backward through time written out.

    Autograd through the step loop records a dozen small operations a step and runs as many again
    backwards, each with its own bookkeeping; here the forward pass keeps what the backward pass
    needs, and the backward pass computes every step's gate gradients into one tensor, from which
    the recurrent weights' gradient is one product, not one per step.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, from_input: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        """``from_input``: (K, 4 * width, steps, batch), gates i, f, o, g; ``w_hh``: (K, 4 * width, width)."""
        k, four_width, steps, batch = from_input.shape
        width = four_width // 4
        h = c = from_input.new_zeros(k, width, batch)
        hs = from_input.new_empty(k, width, steps, batch)
        gates, cells, tanh_cells = [], [], []
        for step in range(steps):
            a = torch.baddbmm(from_input[:, :, step], w_hh, h)
            a[:, :3 * width].sigmoid_()
            a[:, 3 * width:].tanh_()
            i, f, o, g = a.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g)  # f * c + i * g
            tanh_c = c.tanh()
            h = torch.mul(o, tanh_c, out=hs[:, :, step])
            gates.append(a)
            cells.append(c)
            tanh_cells.append(tanh_c)
        ctx.save_for_backward(w_hh, hs)
        ctx.steps = gates, cells, tanh_cells
        return hs

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_hh, hs = ctx.saved_tensors
        gates, cells, tanh_cells = ctx.steps
        k, width, steps, batch = hs.shape
        grad_gates = hs.new_empty(k, 4 * width, steps, batch)  # of the gates before their sigmoid / tanh
        w_hh_t = w_hh.transpose(1, 2)
        sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
        tanh_backward = torch.ops.aten.tanh_backward.grad_input
        grad_h = grad_c = None
        for step in reversed(range(steps)):
            i, f, o, g = gates[step].chunk(4, dim=1)
            tanh_c = tanh_cells[step]
            grad_h = grad_hs[:, :, step] if grad_h is None else grad_h + grad_hs[:, :, step]
            d = grad_gates[:, :, step]
            d_i, d_f, d_o, d_g = d.chunk(4, dim=1)
            torch.mul(grad_h, tanh_c, out=d_o)
            through_h = grad_h * o
            tanh_backward(through_h, tanh_c, grad_input=through_h)
            grad_c = through_h if grad_c is None else grad_c.add_(through_h)
            torch.mul(grad_c, g, out=d_i)
            if step > 0:
                torch.mul(grad_c, cells[step - 1], out=d_f)
            else:
                d_f.zero_()  # the initial cell is zero
            sigmoid_backward(d[:, :3 * width], gates[step][:, :3 * width], grad_input=d[:, :3 * width])
            torch.mul(grad_c, i, out=d_g)
            tanh_backward(d_g, g, grad_input=d_g)
            if step > 0:
                grad_c = grad_c * f
                grad_h = torch.bmm(w_hh_t, d)
        # The initial state is zero: step 0 adds nothing to the recurrent weights' gradient.
        later = grad_gates[:, :, 1:].reshape(k, 4 * width, (steps - 1) * batch)
        earlier = hs[:, :, :-1].reshape(k, width, (steps - 1) * batch)
        grad_w_hh = torch.bmm(later, earlier.transpose(1, 2))
        return grad_gates, grad_w_hh


# The families with a stacked form: their factory, how it is registered to read the data, the stacked form.
_STACKED_FAMILIES: tuple[tuple[object, str, type[_Stacked]], ...] = (
    (models.mlp, "flat", _StackedMLP),
    (models.LSTMRegressor, "sequence", _StackedLSTM),
)


def _per_copy_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Mean loss of each copy over the batch, as nn.CrossEntropyLoss / nn.MSELoss compute it alone."""
    if task == "classification":
        k, batch, classes = out.shape
        target = y.expand(k, batch) if y.dim() == 1 else y
        return F.cross_entropy(out.reshape(k * batch, classes), target.reshape(-1), reduction="none").view(k, batch).mean(1)
    target = y.expand(out.shape[0], -1) if y.dim() == 1 else y
    return ((out.squeeze(-1) - target) ** 2).mean(1)


@torch.no_grad()
def _evaluate(net: _Stacked, data: Dataset, part: str = "val") -> tuple[list[float], list[float]]:
    """Each copy's validation loss and error, as :func:`tuner.train.evaluate` computes them.

    ``part = "start"``: on the training rows :func:`tuner.train.untrained_train_loss` reads instead.
    """
    k = net.flat.shape[0]
    if part == "start":
        rows = start_rows(len(data.x_train)).to(data.x_train.device)
        x_part, y_part = data.x_train[rows], data.y_train[rows]
    else:
        x_part, y_part = data.x_val, data.y_val
    n = len(x_part)
    x_val = net.inputs(x_part)
    chunk = max(1, EVAL_CHUNK // k)  # bound memory: K copies of the activations per chunk
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
            # buf = momentum * buf + grad (the first step's zeros make buf = grad, as torch does); p -= lr * buf
            buf = self.state[0]
            buf.mul_(self.momentum).add_(grad)
            flat.sub_(self.lr * buf)
            return
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        exp_avg, exp_avg_sq = self.state
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.steps)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.steps)).add_(ADAM_EPS)
        flat.sub_(step_size * exp_avg / denom)


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
    """The plans' models trained together, as an :class:`tuner.train.EpochTrainer`.

    Each copy starts as ``seeded_model(family, data, width, depth, seed)`` and sees its seed's data
    order, so its curve matches :func:`tuner.train.train_epochs` on the same plan. A copy stops
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
        self._stacked = _stacked_class(family) or _StackedMLP  # (no plans: never used)
        self.data = data
        self.plans = list(plans)
        self._stopped: set[int] = set()
        # Per epoch, how many copies trained in it: a copy's share of an epoch's time is 1 / that.
        self.copies_per_epoch: list[int] = []

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

        start_losses, _ = _evaluate(net, data, "start")  # the untrained training loss, as train_epochs
        blow_up = [divergence_threshold(c, loss) for c, loss in zip(configs, start_losses)]
        running = list(range(len(plans)))  # plan index of each row of the stacked tensors
        for epoch in range(max(c.epochs for c in configs)):
            keep = [row for row, i in enumerate(running) if not is_stopped(i) and epoch < configs[i].epochs]
            if len(keep) < len(running):
                running = self._keep(net, optimizer, running, keep, device)
            if not running:
                return
            k = len(running)
            self.copies_per_epoch.append(k)
            rates = [lr_at(configs[i], epoch) for i in running]
            optimizer.set_lr(rates)
            # Every seed draws its order each epoch, as it would alone, whether or not its copies still run.
            orders = {seed: epoch_order(rng, n, device) for seed, rng in order_rngs.items()}
            row_seeds = [configs[i].seed for i in running]
            shared = len(set(row_seeds)) == 1
            order = orders[row_seeds[0]] if shared else torch.stack([orders[s] for s in row_seeds])
            flat = net.flat.requires_grad_(True)
            loss_sum = torch.zeros(k, device=device)
            for start in range(0, n, batch_size):
                if shared:
                    batch = order[start:start + batch_size]
                    x, y = x_train[batch], data.y_train[batch]
                    x = x.expand(k, *x.shape)
                else:
                    batch = order[:, start:start + batch_size]
                    x, y = x_train[batch], data.y_train[batch]
                losses = _per_copy_loss(net.forward(x, flat), y, data.task)
                # Copies are independent, so the gradient of the sum is each copy's own gradient.
                (grad,) = torch.autograd.grad(losses.sum(), flat)
                optimizer.step(flat, grad)
                loss_sum += losses.detach() * batch.shape[-1]
            net.flat = flat.detach()
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
    def _keep(net: _Stacked, optimizer: _Optimizer, running: list[int], keep: list[int], device: torch.device) -> list[int]:
        """Drop the rows not in ``keep`` from the weights and the optimizer state."""
        rows = torch.tensor(keep, dtype=torch.long, device=device)
        net.flat = net.flat.index_select(0, rows)
        optimizer.keep(rows)
        return [running[row] for row in keep]
