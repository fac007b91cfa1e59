"""A user's own model for scripts/bench_lr_stage.py --family cnn, named in bench_cnn.toml as "bench_models:cnn1d"."""

from __future__ import annotations

import torch
from torch import nn


class Conv1dNet(nn.Module):
    """Two 1-D convolutions over a sequence's steps (its features as channels), averaged over time, one output."""

    def __init__(self, n_features: int, n_outputs: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = n_features
        for _ in range(depth):
            layers += [nn.Conv1d(channels, width, 5, padding=2), nn.ReLU()]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(channels, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, steps, features)
        return self.out(self.convs(x.transpose(1, 2)).mean(dim=2))


def cnn1d(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    _, features = input_shape  # (steps, features)
    return Conv1dNet(features, n_outputs, width, depth)
