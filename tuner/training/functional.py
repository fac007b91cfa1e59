"""K copies of any ``nn.Module`` trained as one through ``torch.func``: stage lr's trials of a user's model at once.

The hand-written stacked MLP and LSTM (:mod:`tuner.training.batched`) serve tuner's own families;
this serves every other network that runs under ``torch.func.vmap``: a user's model given as
``module:function``, the ``cnn`` family, a user's loss and metric. The K copies' parameters lie in
one flat tensor (block by block, each block ``(K, *shape)``), their buffers (BatchNorm's running
statistics) stacked per copy; each step is one vmapped ``functional_call`` over the copies, on a
shared mini-batch when they share a seed, the copies' losses summed and one backward pass (what
``vmap(grad_and_value(loss))`` computes, for less overhead per step), and one optimizer update on the flat tensor in which each
copy has its own rate, momentum and weight decay, written out as ``torch.optim``'s SGD, Adam,
RMSprop and Adagrad compute it (:mod:`tuner.training.functional_state`). Dropout draws a different mask per
copy (``randomness="different"``), so a copy with dropout is a sound trial but not the same draws
as the trial trained alone; without randomness a copy's curve is its curve alone, to float tolerance.

Copies are grouped only when they are the same network (:mod:`tuner.training.functional_plans`): ``functional_call``
shares the module's Python attributes (a dropout probability, an activation slope) across copies, so
copies built from other factory arguments, or whose modules differ in anything but the values of
their parameters and buffers, would be computed wrongly; they train apart. What cannot run batched
(recurrent modules of ``torch.nn``, ``.item()`` or data-dependent control flow in ``forward``, a loss
vmap cannot run, vmap's slow per-sample fallback, outputs that differ from one copy's alone, or a
first step slower than one copy's) is found once, by :meth:`FuncBatchedTrainer.probe`, and trains one trial at a
time with one line saying why: never a wrong result instead of a fallback.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from tuner.errors import error_line
from tuner.inputs.data import Dataset
from tuner.training.batched import cross_entropy_rows
from tuner.training.functional_state import FlatLayout, FunctionalOptimizer
from tuner.training.train import (
    EVAL_CHUNK,
    EpochResult,
    TrialPlan,
    divergence_threshold,
    epoch_order,
    has_diverged,
    loss_function,
    lr_at,
    make_optimizer,
    order_generator,
    score_outputs,
    start_rows,
    task_outputs,
)

SLOW_FALLBACK_WARNING = "There is a performance drop"  # what vmap warns when it loops over the copies instead


class FuncBatchedTrainer:
    """K copies of one network trained together through ``torch.func``, as an :class:`~tuner.training.train.EpochTrainer`.

    Each copy starts from its plan's model (``models``: as :func:`~tuner.training.functional_plans.built_copy` builds them) and sees
    its seed's data order, so that without dropout its curve matches
    :func:`tuner.training.train.train_epochs` on the same plan. A copy stops after the epoch it
    diverged in, after its own number of epochs, or once :meth:`stop` was called for it; stopped
    copies are dropped from the stacked tensors, and their last parameters and buffers kept (:meth:`state`).

    Args:
        data: the data set in memory, on the device to train on.
        plans: the trials, all of one :func:`~tuner.training.functional_plans.network_key`.
        models: their models, built and materialised.
    """

    def __init__(self, data: Dataset, plans: Sequence[TrialPlan], models: Sequence[nn.Module]) -> None:
        self.data, self.plans = data, list(plans)
        self.configs = [plan.train for plan in plans]
        self.base = models[0]  # the module functional_call runs: its Python attributes, the copies' tensors
        named = [dict(model.named_parameters()) for model in models]
        self.names = list(named[0])
        self.layout = FlatLayout(self.names, [named[0][n].shape for n in self.names], len(models))
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
                  shared: bool, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The copies' gradient in the flat layout (into ``out``, if given), and each copy's loss, on one mini-batch.

        One vmapped forward pass, the copies' losses summed, one backward pass: copies never mix, so the
        gradient of the sum is each copy's own gradient (the same as ``vmap(grad_and_value(loss))``, for a
        fraction of its overhead per step). ``buffers`` (BatchNorm's statistics) are updated in place.
        """
        # Each block its own leaf: the gradient of views of one leaf would be zero-filled and copied in, block by block.
        blocks = {name: view.detach().requires_grad_(True) for name, view in self.layout.views(flat).items()}
        outputs = task_outputs(self._forward(shared)(blocks, buffers, x), self.data.task)
        losses = self._copy_losses(outputs, y, per_copy=not shared)
        grads = torch.autograd.grad(losses.sum(), list(blocks.values()), allow_unused=True, materialize_grads=True)
        return torch.cat([grad.reshape(-1) for grad in grads], out=out), losses.detach()

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
                return f"the model or its loss does not run under torch.func.vmap ({error_line(error, limit=160)}): trials train one at a time"
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
        layout = FlatLayout(self.layout.names, self.layout.shapes, len(keep))
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
            grad_buffer = torch.empty_like(self.flat)  # step after step: a fresh one per step refaults its pages
            for start in range(0, n, batch_size):
                batch = order[..., start:start + batch_size]
                x, y = data.x_train[batch], data.y_train[batch]
                grad, losses = self._gradient(self.flat, self.buffers, x, y, shared, out=grad_buffer)
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
