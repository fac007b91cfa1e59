"""The network and the score of Optuna's PyTorch example, written as tuner takes them.

``make_net`` is Optuna's ``define_model`` with the trial taken out: ``depth`` layers of ``width``
units (one width for all layers), ReLU and dropout after each, then the output layer. tuner calls it
with the shape it searches (width, depth) and the declared parameter ``dropout``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_net(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int, dropout: float = 0.2) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU(), nn.Dropout(dropout)]
        features = width
    layers.append(nn.Linear(features, n_outputs))
    return nn.Sequential(*layers)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of rows classified right: a score, so the spec says direction = "maximize"."""
    return float((outputs.argmax(dim=1) == targets).float().mean())
