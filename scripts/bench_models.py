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


class StridedConv1dNet(nn.Module):
    """A flat input read as one channel over time: Conv1d 1->w (kernel 5, stride 2), Conv1d w->w (kernel 3,
    stride 2), a linear read-out of every position: the 1-D CNN of the torch.func measurement in
    ../shared/REFERENCES.md (there 40 steps, 10 classes)."""

    def __init__(self, steps: int, n_outputs: int, width: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(1, width, 5, stride=2, padding=2), nn.ReLU(),
                                   nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU())
        length = (steps + 1) // 2
        self.out = nn.Linear(width * ((length + 1) // 2), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, steps)
        return self.out(self.convs(x.unsqueeze(1)).flatten(1))


def cnn1d_strided(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    (steps,) = input_shape  # a flat sample (digits: 64 pixels) read as one channel over 64 steps
    return StridedConv1dNet(steps, n_outputs, width)
