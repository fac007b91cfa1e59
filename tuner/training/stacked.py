"""The stacked forms of tuner's own families: K copies of one ``mlp`` or ``lstm`` as one model.

A :class:`Stacked` keeps K copies' weights in one flat tensor ``(K, n_params)`` and runs the
forward pass of all copies at once (one batched matrix product per layer, or per layer and step
for the LSTM, whose backward pass through time is written by hand in :class:`_LSTMLayer`).
:func:`stacked_class` finds a family's stacked form by its factory, not its name.
:mod:`tuner.training.batched` trains them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tuner.inputs import models
from tuner.inputs.models import Family


def stacked_class(family: Family) -> type[Stacked] | None:
    """The stacked form of the family's models, or None if it has none."""
    # By the factory and how it reads the data, not the name: a user may register another model
    # under "mlp" or "lstm", or tuner's factory under another name.
    found = (models.factory_of(family), models.input_kind(family))
    return next((stacked for factory, kind, stacked in STACKED_FAMILIES if found == (factory, kind)), None)


class Stacked:
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
    def from_modules(cls, copies: Sequence[nn.Module]) -> Stacked:
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

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``x``: (K, batch, *input) from :meth:`inputs` -> (K, batch, outputs); ``weights``: each tensor
        of the copies as :meth:`views` cuts them (default: the views of :attr:`flat`)."""
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


class StackedMLP(Stacked):
    """Copies of :func:`tuner.inputs.models.mlp`: one ``torch.baddbmm`` per layer."""

    @staticmethod
    def tensors(model: nn.Module) -> list[torch.Tensor]:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        # Stored as (fan_in, fan_out) and (1, fan_out): x @ W + b, the layout baddbmm wants.
        return [t for m in linears for t in (m.weight.detach().t(), m.bias.detach().view(1, -1))]

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)  # the factory's model flattens each sample (nn.Flatten)

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        weights = self.views(self.flat) if weights is None else weights
        h = x
        n_layers = len(weights) // 2
        for layer in range(n_layers):
            h = torch.baddbmm(weights[2 * layer + 1], h, weights[2 * layer])
            if layer < n_layers - 1:
                h = h.relu_()  # in place: baddbmm's backward needs its inputs, not its output
        return h


class StackedLSTM(Stacked):
    """Copies of :class:`tuner.inputs.models.LSTMRegressor`: nn.LSTM's equations on (K, 4 * width, batch) gates.

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

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        weights = self.views(self.flat) if weights is None else weights
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
STACKED_FAMILIES: tuple[tuple[object, str, type[Stacked]], ...] = (
    (models.mlp, "flat", StackedMLP),
    (models.LSTMRegressor, "sequence", StackedLSTM),
)
