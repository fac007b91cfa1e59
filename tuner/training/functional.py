"""K copies of any ``nn.Module`` trained as one through ``torch.func``: stage lr's trials of a user's model at once.

The hand-written stacked MLP and LSTM (:mod:`tuner.training.batched`) serve tuner's own families;
this serves every other network that runs under ``torch.func.vmap``: a user's model given as
``module:function``, the ``cnn`` family, a user's loss and metric. The K copies' parameters lie in
one flat tensor (block by block, each block ``(K, *shape)``), their buffers (BatchNorm's running
statistics) stacked per copy; each step is one vmapped ``functional_call`` over the copies, on a
shared mini-batch when they share a seed, the copies' losses summed and one backward pass (what
``vmap(grad_and_value(loss))`` computes, for less overhead per step), and one optimizer update on the flat tensor in which each
copy has its own rate, momentum and weight decay, written out as ``torch.optim``'s SGD, Adam,
RMSprop and Adagrad compute it (:class:`FunctionalOptimizer`). Dropout draws a different mask per
copy (``randomness="different"``), so a copy with dropout is a sound trial but not the same draws
as the trial trained alone; without randomness a copy's curve is its curve alone, to float tolerance.

Copies are grouped only when they are the same network (:func:`network_key`): ``functional_call``
shares the module's Python attributes (a dropout probability, an activation slope) across copies, so
copies built from other factory arguments, or whose modules differ in anything but the values of
their parameters and buffers, would be computed wrongly; they train apart. What cannot run batched
(recurrent modules of ``torch.nn``, ``.item()`` or data-dependent control flow in ``forward``, a loss
vmap cannot run, vmap's slow per-sample fallback, outputs that differ from one copy's alone, or a
first step slower than one copy's) is found once, by :func:`batch_plans`, and trains one trial at a
time with one line saying why: never a wrong result instead of a fallback.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from tuner.inputs.data import Dataset
from tuner.inputs.models import Family
from tuner.training.batched import cross_entropy_rows
from tuner.training.train import (
    EVAL_CHUNK,
    EpochResult,
    TrainConfig,
    TrialPlan,
    divergence_threshold,
    epoch_order,
    has_diverged,
    loss_function,
    lr_at,
    make_optimizer,
    order_generator,
    score_outputs,
    seeded_model,
    start_rows,
    task_outputs,
)

FUNCTIONAL_OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
# torch.optim's defaults, which train.make_optimizer leaves as they are.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8
ADAGRAD_EPS = 1e-10
SLOW_FALLBACK_WARNING = "There is a performance drop"  # what vmap warns when it loops over the copies instead


class _Layout:
    """Where each parameter of K copies lies in one flat tensor: block by block, a block ``(K, *shape)`` contiguous."""

    def __init__(self, names: Sequence[str], shapes: Sequence[torch.Size], k: int) -> None:
        self.names, self.shapes, self.k = list(names), list(shapes), k
        self.sizes = [math.prod(shape) for shape in shapes]

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter of the copies, ``(K, *shape)``, as a view of ``flat``."""
        views, start = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            views[name] = flat[start:start + self.k * size].view(self.k, *shape)
            start += self.k * size
        return views

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def spread(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """One value per copy, spread over every element of that copy in the flat layout."""
        column = torch.tensor(list(values), dtype=like.dtype, device=like.device)
        return torch.cat([column.repeat_interleave(size) for size in self.sizes])

    def select(self, flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The flat tensor of the copies ``rows`` only (the layout of ``len(rows)`` copies)."""
        return self.flatten({name: view.index_select(0, rows) for name, view in self.views(flat).items()})


class FunctionalOptimizer:
    """SGD (momentum, weight decay), Adam, RMSprop or Adagrad on K copies' flat parameters, each copy its own settings.

    The update rules are ``torch.optim``'s with the settings :func:`tuner.training.train.make_optimizer`
    gives them (SGD: dampening 0, no Nesterov; Adam: no AMSGrad; RMSprop: alpha 0.99, no momentum, not
    centred; Adagrad: no rate decay, accumulator from 0), L2 weight decay added to the gradient.

    Example:
        >>> opt = FunctionalOptimizer("adam", layout, flat, [TrainConfig(lr=1e-3), TrainConfig(lr=3e-3)])  # doctest: +SKIP
        >>> opt.step(flat, grad)  # doctest: +SKIP
    """

    def __init__(self, name: str, layout: _Layout, flat: torch.Tensor, configs: Sequence[TrainConfig]) -> None:
        if name not in FUNCTIONAL_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; one of {', '.join(FUNCTIONAL_OPTIMIZERS)}")
        self.name, self.layout = name, layout
        self.lr = layout.spread([c.lr for c in configs], flat)
        self.momentum = layout.spread([c.momentum for c in configs], flat) if name == "sgd" else None
        decays = [c.weight_decay for c in configs]
        self.weight_decay = layout.spread(decays, flat) if any(decays) else None
        self.state = [torch.zeros_like(flat) for _ in range(2 if name == "adam" else 1)]
        self.steps = 0

    def set_lr(self, rates: Sequence[float]) -> None:
        self.lr = self.layout.spread(rates, self.lr)

    def keep(self, rows: torch.Tensor, layout: _Layout) -> None:
        """Keep the copies ``rows`` only; ``layout``: theirs."""
        select = self.layout.select
        self.lr = select(self.lr, rows)
        self.momentum = select(self.momentum, rows) if self.momentum is not None else None
        self.weight_decay = select(self.weight_decay, rows) if self.weight_decay is not None else None
        self.state = [select(t, rows) for t in self.state]
        self.layout = layout

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        """One update of ``flat`` (in place) from the copies' gradient ``grad`` (same layout)."""
        if self.weight_decay is not None:
            grad = grad + self.weight_decay * flat
        self.steps += 1
        if self.name == "sgd":
            # buf = momentum * buf + grad (the first step's zeros make buf = grad, as torch does); p -= lr * buf
            (buf,) = self.state
            buf.mul_(self.momentum).add_(grad)
            flat.sub_(self.lr * buf)
        elif self.name == "adam":
            beta1, beta2 = ADAM_BETAS
            exp_avg, exp_avg_sq = self.state
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1**self.steps)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.steps)).add_(ADAM_EPS)
            flat.sub_(step_size * exp_avg / denom)
        elif self.name == "rmsprop":
            (square_avg,) = self.state
            square_avg.mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - RMSPROP_ALPHA)
            flat.sub_(self.lr * grad / square_avg.sqrt().add_(RMSPROP_EPS))
        else:  # adagrad
            (state_sum,) = self.state
            state_sum.addcmul_(grad, grad, value=1)
            flat.sub_(self.lr * grad / state_sum.sqrt().add_(ADAGRAD_EPS))


def network_key(model: nn.Module, plan: TrialPlan) -> str:
    """What must be equal for two copies to be trained as one network; copies of equal keys batch.

    The factory's arguments (width, depth and the declared parameters), the batch size and
    optimizer, and each module's type, Python attributes, and its parameters' and buffers' names,
    shapes and dtypes. A tensor held as a plain attribute (not a parameter or buffer) is shared by
    ``functional_call`` as it is, so its value is part of the key.
    """
    parts = [f"width={plan.width}", f"depth={plan.depth}", f"batch={plan.train.batch_size}",
             f"optimizer={plan.train.optimizer}", f"declared={sorted(plan.declared.items())!r}"]
    for name, module in model.named_modules():
        attributes = []
        for attribute, value in sorted(vars(module).items()):
            if attribute.startswith("_") and attribute not in ("_forward_hooks", "_forward_pre_hooks"):
                continue
            if isinstance(value, torch.Tensor):
                data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                value = f"{value.dtype}{tuple(value.shape)}:{hashlib.sha256(data).hexdigest()}"
            elif attribute in ("_forward_hooks", "_forward_pre_hooks"):
                value = len(value)
            attributes.append(f"{attribute}={value!r}")
        parts.append(f"{name}:{type(module).__qualname__}({', '.join(attributes)})")
    for kind, tensors in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        parts.extend(f"{kind} {name} {tuple(t.shape)} {t.dtype}" for name, t in tensors)
    return "\n".join(parts)


def not_vmappable(model: nn.Module) -> str | None:
    """Why ``model`` is known not to run under vmap before trying (None: not known)."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            return (f"its nn.{type(module).__name__} does not run under torch.func.vmap (pytorch/pytorch#105982): "
                    f"trials train one at a time")
    return None


def _not_stackable(model: nn.Module) -> str | None:
    """Why one flat tensor cannot hold the copies' parameters (None: it can)."""
    dtypes = {parameter.dtype for parameter in model.parameters()}
    if not dtypes:
        return "the model has no parameters to train: trials train one at a time"
    if len(dtypes) > 1:
        return f"the model's parameters are of {len(dtypes)} dtypes ({', '.join(sorted(map(str, dtypes)))}): trials train one at a time"
    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    if frozen:  # torch.optim leaves them be; the flat copies would train them
        return f"the model has frozen parameters ({', '.join(frozen[:3])}): trials train one at a time"
    return None


def materialised(model: nn.Module, data: Dataset) -> nn.Module:
    """``model`` with its lazy modules' parameters made, by one forward pass on two rows (as its first evaluation would)."""
    if any(isinstance(module, nn.modules.lazy.LazyModuleMixin) for module in model.modules()):
        was_training = model.training
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(data.x_train[:2])
        model.train(was_training)
    return model


def built_copy(family: Family, data: Dataset, plan: TrialPlan) -> nn.Module:
    """The trial's model as the one-at-a-time path builds it (same seed, lazy parameters made)."""
    return materialised(seeded_model(family, data, plan.width, plan.depth, plan.train.seed, plan.declared), data)


@dataclass
class Part:
    """Plans that train together (``trainer``) or one alone (``trainer`` None)."""

    indices: list[int]
    trainer: FuncBatchedTrainer | None = None


TIMED_PROBE = True  # whether a batched step slower than K steps of one copy alone makes copies train alone


def batch_plans(family: Family, data: Dataset, plans: Sequence[TrialPlan],
                timed: bool | None = None) -> tuple[list[Part], str | None]:
    """The plans in parts that train as K copies, or alone; and, when some that could batch train alone, why (one line).

    Copies of one :func:`network_key` form one part; each part of two or more is probed once
    (:meth:`FuncBatchedTrainer.probe`) and trains alone, plan by plan, if the probe finds a reason.
    ``timed``: whether a batched step slower than K steps of one copy is a reason (default :data:`TIMED_PROBE`;
    False where numbers, not speed, matter, as in tests: the timing of a busy machine is not repeatable).
    """
    timed = TIMED_PROBE if timed is None else timed
    optimizer = plans[0].train.optimizer
    if optimizer not in FUNCTIONAL_OPTIMIZERS:
        return [Part([i]) for i in range(len(plans))], f"optimizer {optimizer!r} has no batched form: trials train one at a time"
    models = [built_copy(family, data, plan) for plan in plans]
    reason = not_vmappable(models[0]) or _not_stackable(models[0])
    if reason:
        return [Part([i]) for i in range(len(plans))], reason
    groups: dict[str, list[int]] = {}
    for i, (model, plan) in enumerate(zip(models, plans)):
        groups.setdefault(network_key(model, plan), []).append(i)
    parts, reasons = [], []
    if len(groups) > 1:
        reasons.append(f"the {len(plans)} trials are {len(groups)} different networks (other factory arguments or "
                       f"modules): each trains apart")
    for indices in groups.values():
        if len(indices) == 1:
            parts.append(Part(indices))
            continue
        trainer = FuncBatchedTrainer(data, [plans[i] for i in indices], [models[i] for i in indices])
        why = trainer.probe(timed)
        if why is None:
            parts.append(Part(indices, trainer))
        else:
            reasons.append(why)
            parts.extend(Part([i]) for i in indices)
    return parts, "; ".join(dict.fromkeys(reasons)) or None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


class FuncBatchedTrainer:
    """K copies of one network trained together through ``torch.func``, as an :class:`~tuner.training.train.EpochTrainer`.

    Each copy starts from its plan's model (``models``: as :func:`built_copy` builds them) and sees
    its seed's data order, so that without dropout its curve matches
    :func:`tuner.training.train.train_epochs` on the same plan. A copy stops after the epoch it
    diverged in, after its own number of epochs, or once :meth:`stop` was called for it; stopped
    copies are dropped from the stacked tensors, and their last parameters and buffers kept (:meth:`state`).

    Args:
        data: the data set in memory, on the device to train on.
        plans: the trials, all of one :func:`network_key`.
        models: their models, built and materialised.
    """

    def __init__(self, data: Dataset, plans: Sequence[TrialPlan], models: Sequence[nn.Module]) -> None:
        self.data, self.plans = data, list(plans)
        self.configs = [plan.train for plan in plans]
        self.base = models[0]  # the module functional_call runs: its Python attributes, the copies' tensors
        named = [dict(model.named_parameters()) for model in models]
        self.names = list(named[0])
        self.layout = _Layout(self.names, [named[0][n].shape for n in self.names], len(models))
        with torch.no_grad():
            self.flat = self.layout.flatten({n: torch.stack([p[n].detach() for p in named]) for n in self.names})
            self.buffers = {name: torch.stack([dict(m.named_buffers())[name].detach() for m in models]).clone()
                            for name, _ in models[0].named_buffers()}
        self.criterion = loss_function(data.task, self.configs[0].loss)  # one loss: the copies share declared params
        self.own_loss = self.configs[0].loss is None  # tuner's own: computed for all copies at once
        self._stopped: set[int] = set()
        self.running = list(range(len(self.plans)))  # plan index of each copy in the stacked tensors
        self.final: dict[int, dict[str, torch.Tensor]] = {}  # plan index -> its state when it stopped
        self.untrained: list[EpochResult] = []
        self._forwards: dict[bool, Callable[..., torch.Tensor]] = {}
        self._slots = _tensor_slots(self.base)

    # -- the functions vmap runs ------------------------------------------------------------

    def _forward(self, shared: bool) -> Callable[..., torch.Tensor]:
        """vmap(functional_call) over the copies: every copy's outputs; ``shared``: all copies see the same rows."""
        if shared not in self._forwards:
            call = self._call_with if self._slots is not None else \
                (lambda p, b, rows: functional_call(self.base, (p, b), (rows,)))
            self._forwards[shared] = vmap(call, in_dims=(0, 0, None if shared else 0), randomness="different")
        return self._forwards[shared]

    def _call_with(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """``functional_call(self.base, (params, buffers), (rows,))`` for a module without shared tensors: each
        tensor put in its module's slot and put back, without functional_call's checks on every step."""
        tensors = {**params, **buffers}
        slots = self._slots or []
        saved = [table[attribute] for table, attribute, _ in slots]
        try:
            for table, attribute, name in slots:
                table[attribute] = tensors[name]
            return self.base(rows)
        finally:
            for (table, attribute, _), tensor in zip(slots, saved):
                table[attribute] = tensor

    def _copy_losses(self, outputs: torch.Tensor, y: torch.Tensor, per_copy: bool = False) -> torch.Tensor:
        """Each copy's loss over its rows, ``(K,)``, from outputs ``(K, rows, ...)`` as the loss wants them.

        ``y``: the rows' targets, shared by the copies, or ``per_copy`` (``(K, rows, ...)``). Tuner's own
        cross-entropy and MSE as one call on all copies' rows (each copy's mean over its own rows); a
        user's loss under vmap, each copy's call as it would be alone.
        """
        if not self.own_loss:
            return vmap(self.criterion, in_dims=(0, 0 if per_copy else None), randomness="different")(outputs, y)
        k, rows = outputs.shape[:2]
        target = y if per_copy else y.expand(k, *y.shape)
        if self.data.task == "classification":
            each = cross_entropy_rows(outputs.reshape(k * rows, *outputs.shape[2:]), target.reshape(k * rows, *target.shape[2:]))
            return each.reshape(k, -1).mean(1)
        return ((outputs - target) ** 2).reshape(k, -1).mean(1)

    def _gradient(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The copies' gradient in the flat layout, and each copy's loss, on one mini-batch.

        One vmapped forward pass, the copies' losses summed, one backward pass: copies never mix, so the
        gradient of the sum is each copy's own gradient (the same as ``vmap(grad_and_value(loss))``, for a
        fraction of its overhead per step). ``buffers`` (BatchNorm's statistics) are updated in place.
        """
        # Each block its own leaf: the gradient of views of one leaf would be zero-filled and copied in, block by block.
        blocks = {name: view.detach().requires_grad_(True) for name, view in self.layout.views(flat).items()}
        outputs = task_outputs(self._forward(shared)(blocks, buffers, x), self.data.task)
        losses = self._copy_losses(outputs, y, per_copy=not shared)
        grads = torch.autograd.grad(losses.sum(), list(blocks.values()), allow_unused=True, materialize_grads=True)
        return torch.cat([grad.reshape(-1) for grad in grads]), losses.detach()

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every copy's outputs for rows ``x`` (eval mode, no gradient), ``(K, rows, ...)``, chunk by chunk."""
        self.base.eval()
        chunk = max(1, EVAL_CHUNK // self.layout.k)
        params = self.layout.views(self.flat)
        forward = self._forward(True)
        with torch.no_grad():
            return torch.cat([forward(params, self.buffers, x[start:start + chunk]) for start in range(0, len(x), chunk)], dim=1)

    # -- the probe ------------------------------------------------------------------------

    def probe(self, timed: bool = True) -> str | None:
        """Why these copies must train one at a time (None: they train batched), from one mini-batch.

        One batched step must run (the model and the loss under vmap), without vmap's slow
        per-sample fallback, give the outputs each copy gives alone, and cost no more than K steps of
        one copy alone; and one copy's step alone must give every parameter a gradient (torch.optim
        leaves one without be). Nothing of the copies' state changes, nor torch's random generator.
        """
        data, k = self.data, self.layout.k
        x, y = data.x_train[:self.configs[0].batch_size], data.y_train[:self.configs[0].batch_size]
        params = self.layout.views(self.flat)
        buffers = {name: t.clone() for name, t in self.buffers.items()}  # the probe's steps must not move running statistics
        with torch.random.fork_rng(devices=[]), contextlib.ExitStack() as stack:
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            self.base.train()
            alone = copy.deepcopy(self.base).train()  # one copy as the one-at-a-time path trains it: autograd on a module
            with torch.no_grad():
                for name, parameter in alone.named_parameters():
                    parameter.copy_(params[name][0])

            first = self.configs[0]
            alone_optimizer = make_optimizer(first.optimizer, alone.parameters(), first.lr, first.momentum, first.weight_decay)
            scratch = self.flat.clone()  # the batched steps' parameters: the copies' own stay as they are
            scratch_optimizer = FunctionalOptimizer(first.optimizer, self.layout, scratch, self.configs)

            def alone_step() -> None:  # a step of train_epochs: zero the gradients, forward, backward, torch.optim's step
                alone_optimizer.zero_grad(set_to_none=True)
                self.criterion(task_outputs(alone(x), data.task), y).backward()
                alone_optimizer.step()

            def batched_step() -> None:
                grad, _ = self._gradient(scratch, buffers, x, y, True)
                scratch_optimizer.step(scratch, grad)

            try:
                batched_step()  # first calls: what cannot run raises here; and one-time costs are paid before timing
                alone_step()
                batched_seconds, alone_seconds = _race(batched_step, alone_step, x.device)
            except Exception as error:  # noqa: BLE001 -- whatever vmap cannot run trains alone
                return f"the model or its loss does not run under torch.func.vmap ({_first_line(error)}): trials train one at a time"
            unused = [name for name, parameter in alone.named_parameters() if parameter.grad is None]
            if unused:  # torch.optim skips a parameter without a gradient (no decay, no momentum); the flat copies would not
                return f"the model's forward pass leaves parameters unused ({', '.join(unused[:3])}): trials train one at a time"
            if any(SLOW_FALLBACK_WARNING in str(w.message) for w in caught):
                return "torch.func.vmap runs the model copy by copy (its \"performance drop\" warning): trials train one at a time"
            outputs = self._outputs(x)
            for row in sorted({0, k - 1}):
                one = functional_call(self.base, ({n: v[row] for n, v in params.items()},
                                                  {n: t[row] for n, t in self.buffers.items()}), (x,))
                if not torch.allclose(outputs[row], one, rtol=1e-4, atol=1e-5, equal_nan=True):
                    return "under torch.func.vmap the model's outputs differ from one copy's alone: trials train one at a time"
        if timed and batched_seconds > k * alone_seconds:
            return (f"a batched step of {k} copies took {batched_seconds * 1e3:.1f} ms, more than {k} steps of one copy "
                    f"({k * alone_seconds * 1e3:.1f} ms): trials train one at a time")
        return None

    # -- training -------------------------------------------------------------------------

    def stop(self, index: int) -> None:
        self._stopped.add(index)

    def _scores(self, part: str = "val") -> tuple[list[float], list[float]]:
        """Each running copy's loss and error on ``part`` (``start``: the rows of the untrained training loss).

        As :func:`tuner.training.train.evaluate` computes them: all copies at once, or, with a user's
        metric, copy by copy outside vmap (:func:`~tuner.training.train.score_outputs`).
        """
        data = self.data
        if part == "start":
            rows = start_rows(len(data.x_train)).to(data.x_train.device)
            x_part, y_part = data.x_train[rows], data.y_train[rows]
        else:
            x_part, y_part = data.x_val, data.y_val
        outputs = task_outputs(self._outputs(x_part), data.task)
        n = max(len(y_part), 1)
        if part == "start":
            return (self._copy_losses(outputs, y_part) * len(y_part) / n).tolist(), [math.nan] * len(self.running)
        if any(self.configs[i].metric is not None for i in self.running):
            scored = [score_outputs(((outputs[row][s:s + EVAL_CHUNK], y_part[s:s + EVAL_CHUNK])
                                     for s in range(0, len(y_part), EVAL_CHUNK)), data, self.configs[i])
                      for row, i in enumerate(self.running)]
            return [loss for loss, _ in scored], [error for _, error in scored]
        loss_sum = torch.zeros(len(self.running), device=outputs.device)
        for start in range(0, len(y_part), EVAL_CHUNK):
            chunk = y_part[start:start + EVAL_CHUNK]
            loss_sum += self._copy_losses(outputs[:, start:start + EVAL_CHUNK], chunk) * len(chunk)
        if data.task == "classification":
            errors = ((outputs.argmax(dim=-1) != y_part).sum(1) / n).tolist()
        else:
            errors = [math.sqrt(e) * data.target_scale if math.isfinite(e) else e
                      for e in (((outputs - y_part) ** 2).sum(1) / n).tolist()]
        return (loss_sum / n).tolist(), errors

    def _keep(self, keep: list[int]) -> None:
        """Keep the running copies at rows ``keep``; the others' last parameters go to :attr:`final`."""
        for row, i in enumerate(self.running):
            if row not in keep:
                self.final[i] = {name: tensor.clone() for name, tensor in self._row_state(row).items()}
        rows = torch.tensor(keep, dtype=torch.long, device=self.flat.device)
        layout = _Layout(self.layout.names, self.layout.shapes, len(keep))
        self.flat = self.layout.select(self.flat, rows)
        self.buffers = {name: t.index_select(0, rows) for name, t in self.buffers.items()}
        self.optimizer.keep(rows, layout)
        self.layout = layout
        self.running = [self.running[row] for row in keep]

    def _row_state(self, row: int) -> dict[str, torch.Tensor]:
        return {**{name: view[row] for name, view in self.layout.views(self.flat).items()},
                **{name: tensor[row] for name, tensor in self.buffers.items()}}

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """Plan ``index``'s parameters and buffers (a state dict of its model) now, or when it stopped."""
        if index in self.final:
            return self.final[index]
        return self._row_state(self.running.index(index))

    def epochs(self) -> Iterator[list[EpochResult | None]]:
        """Per epoch, each plan's result (None once it stopped)."""
        configs, data = self.configs, self.data
        self.optimizer = FunctionalOptimizer(configs[0].optimizer, self.layout, self.flat, configs)
        n, device = len(data.x_train), data.x_train.device
        batch_size = configs[0].batch_size
        order_rngs = {seed: order_generator(seed) for seed in sorted({c.seed for c in configs})}
        start_losses, _ = self._scores("start")  # the untrained training loss, as train_epochs
        self.untrained = [EpochResult(0, lr_at(c, 0), math.nan, loss, error, diverged=False)
                          for c, loss, error in zip(configs, *self._scores())]
        blow_up = [divergence_threshold(c, loss) for c, loss in zip(configs, start_losses)]
        for epoch in range(max(c.epochs for c in configs)):
            keep = [row for row, i in enumerate(self.running) if i not in self._stopped and epoch < configs[i].epochs]
            if len(keep) < len(self.running):
                self._keep(keep)
            if not self.running:
                return
            rates = [lr_at(configs[i], epoch) for i in self.running]
            self.optimizer.set_lr(rates)
            # Every seed draws its order each epoch, as it would alone, whether or not its copies still run.
            orders = {seed: epoch_order(rng, n, device) for seed, rng in order_rngs.items()}
            row_seeds = [configs[i].seed for i in self.running]
            shared = len(set(row_seeds)) == 1
            order = orders[row_seeds[0]] if shared else torch.stack([orders[s] for s in row_seeds])
            self.base.train()
            loss_sum = torch.zeros(self.layout.k, device=device)
            for start in range(0, n, batch_size):
                batch = order[..., start:start + batch_size]
                x, y = data.x_train[batch], data.y_train[batch]
                grad, losses = self._gradient(self.flat, self.buffers, x, y, shared)
                self.optimizer.step(self.flat, grad)
                loss_sum += losses * batch.shape[-1]
            train_losses = (loss_sum / n).tolist()  # one device sync per epoch, not per batch
            val_losses, val_errors = self._scores()
            results: list[EpochResult | None] = [None] * len(self.plans)
            diverged = []
            for row, i in enumerate(self.running):
                train_loss, val_loss = train_losses[row], val_losses[row]
                results[i] = EpochResult(epoch + 1, rates[row], train_loss, val_loss, val_errors[row],
                                         has_diverged(train_loss, val_loss, blow_up[i]))
                if results[i].diverged:  # type: ignore[union-attr]
                    diverged.append(i)
            if diverged:
                # Stop after the epoch it diverged in, as train_epochs does, whatever the caller does.
                self._stopped.update(diverged)
                self._keep([row for row, i in enumerate(self.running) if i not in diverged])
            yield results
        self._keep([])  # every copy's last parameters in final


def _tensor_slots(model: nn.Module) -> list[tuple[dict[str, Any], str, str]] | None:
    """Where each parameter and buffer of ``model`` lives (its module's table, its name there, its full name);
    None when a tensor is shared by two names (tied weights), which only ``functional_call`` handles."""
    slots = []
    for kind, named in (("_parameters", model.named_parameters(remove_duplicate=False)),
                        ("_buffers", model.named_buffers(remove_duplicate=False))):
        seen: set[int] = set()
        for name, tensor in named:
            if id(tensor) in seen:
                return None
            seen.add(id(tensor))
            owner, _, attribute = name.rpartition(".")
            slots.append((getattr(model.get_submodule(owner), kind), attribute, name))
    return slots


def _race(first: Callable[[], object], second: Callable[[], object], device: torch.device | None = None,
          repeats: int = 3) -> tuple[float, float]:
    """The fastest of ``repeats`` timed calls of each, taken in turns.

    In turns, so that a machine busy with other work slows both alike; on a GPU each call is waited for.
    """
    wait = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for slot, work in enumerate((first, second)):
            wait()
            started = time.perf_counter()
            work()
            wait()
            best[slot] = min(best[slot], time.perf_counter() - started)
    return best[0], best[1]
