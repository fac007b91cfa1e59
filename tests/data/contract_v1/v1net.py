"""The model factory of the contract_v1 study: its identity (module and function, by content) is stored with it."""

from torch import nn


def make(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = 1
    for size in input_shape:
        features *= size
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, n_outputs))
