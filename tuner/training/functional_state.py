"""K copies' parameters in one flat tensor, and the optimizers that update them copy by copy.

:class:`FlatLayout` says where each parameter of K stacked copies lies; :class:`FunctionalOptimizer`
is ``torch.optim``'s SGD, Adam, RMSprop or Adagrad written out on that flat tensor, each copy with
its own rate, momentum and weight decay. Used by :mod:`tuner.training.functional`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tuner.training.train import TrainConfig

FUNCTIONAL_OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
# torch.optim's defaults, which train.make_optimizer leaves as they are.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8
ADAGRAD_EPS = 1e-10


def sgd_update(flat: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor, momentum: torch.Tensor) -> None:
    """torch.optim.SGD's step (dampening 0, no Nesterov) on stacked copies, in place.

    buf = momentum * buf + grad (the first step's zeros make buf = grad, as torch does); p -= lr * buf.
    ``grad`` is overwritten (the product's memory).
    """
    buf.mul_(momentum).add_(grad)
    # lr * buf into grad's memory, which is not read again: a fresh tensor of the copies' size costs
    # more than the product itself on a CPU (the allocator returns and refaults its pages every step).
    flat.sub_(torch.mul(lr, buf, out=grad) if grad.shape == buf.shape else lr * buf)


def adam_update(flat: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                lr: torch.Tensor, steps: int) -> None:
    """torch.optim.Adam's step (no AMSGrad) on stacked copies, in place; ``steps`` counts this one."""
    beta1, beta2 = ADAM_BETAS
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**steps)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**steps)).add_(ADAM_EPS)
    flat.sub_(step_size * exp_avg / denom)


class FlatLayout:
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

    def __init__(self, name: str, layout: FlatLayout, flat: torch.Tensor, configs: Sequence[TrainConfig]) -> None:
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

    def keep(self, rows: torch.Tensor, layout: FlatLayout) -> None:
        """Keep the copies ``rows`` only; ``layout``: theirs."""
        select = self.layout.select
        self.lr = select(self.lr, rows)
        self.momentum = select(self.momentum, rows) if self.momentum is not None else None
        self.weight_decay = select(self.weight_decay, rows) if self.weight_decay is not None else None
        self.state = [select(t, rows) for t in self.state]
        self.layout = layout

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        """One update of ``flat`` (in place) from the copies' gradient ``grad`` (same layout; SGD overwrites it)."""
        if self.weight_decay is not None:
            grad = grad + self.weight_decay * flat
        self.steps += 1
        if self.name == "sgd":
            sgd_update(flat, grad, self.state[0], self.lr, self.momentum)  # type: ignore[arg-type]
        elif self.name == "adam":
            adam_update(flat, grad, self.state[0], self.state[1], self.lr, self.steps)
        elif self.name == "rmsprop":
            (square_avg,) = self.state
            square_avg.mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - RMSPROP_ALPHA)
            flat.sub_(self.lr * grad / square_avg.sqrt().add_(RMSPROP_EPS))
        else:  # adagrad
            (state_sum,) = self.state
            state_sum.addcmul_(grad, grad, value=1)
            flat.sub_(self.lr * grad / state_sum.sqrt().add_(ADAGRAD_EPS))
