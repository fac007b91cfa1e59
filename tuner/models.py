"""Model families built from two numbers, ``width`` and ``depth``.

``mlp``: ``depth`` hidden layers of ``width`` units with ReLU. ``lstm``: ``depth`` stacked LSTM
layers of ``width`` hidden units, read out from the last step. Users add their own family from
Python with :func:`register_model`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFactory = Callable[[int, int, int, int], nn.Module]  # (n_features, n_outputs, width, depth)

_FAMILIES: dict[str, tuple[ModelFactory, bool]] = {}


def register_model(name: str, factory: ModelFactory, *, sequence: bool = False) -> None:
    """Make a model family available to specs as ``model.family = name``.

    A ``sequence`` family gets inputs (batch, steps, features) and ``n_features`` per step; any
    other family gets each sample flattened, and ``n_features`` is its total size.

    Example:
        >>> from torch import nn
        >>> register_model("linear", lambda n_in, n_out, width, depth: nn.Linear(n_in, n_out))
    """
    _FAMILIES[name] = (factory, sequence)


def model_families() -> tuple[str, ...]:
    """The names a spec may give as ``model.family``: the built-in ones and those registered."""
    return tuple(_FAMILIES)


def build_model(family: str, sample_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    """Build a model of a registered family for samples of ``sample_shape`` (one sample, no batch)."""
    try:
        factory, sequence = _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(_FAMILIES))}") from None
    if sequence:
        return factory(sample_shape[-1], n_outputs, width, depth)
    n_inputs = 1
    for size in sample_shape:
        n_inputs *= size
    model = factory(n_inputs, n_outputs, width, depth)
    return nn.Sequential(nn.Flatten(), model) if len(sample_shape) > 1 else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp(n_features: int, n_outputs: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = n_features
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_outputs))
    return nn.Sequential(*layers)


class LSTMRegressor(nn.Module):
    """Stacked LSTM over a sequence (batch, steps, features); a linear read-out of the last step."""

    def __init__(self, n_features: int, n_outputs: int, width: int, depth: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a table: one step of all features
            x = x.unsqueeze(1)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


register_model("mlp", mlp)
register_model("lstm", LSTMRegressor, sequence=True)


def factory_of(family: str) -> ModelFactory | None:
    """The factory registered under ``family``, or None."""
    registered = _FAMILIES.get(family)
    return registered[0] if registered else None
