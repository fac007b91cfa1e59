"""A model factory of your own: tuner calls it with the sample shape, the outputs and the searched size."""

from torch import nn


def make_cnn(input_shape, n_outputs, width, depth):
    """``depth`` conv blocks of ``width``, ``2 * width``... channels on (channels, height, width) images."""
    channels, height, _ = input_shape
    layers = []
    for block in range(depth):
        out = width * 2**block
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
        if height >= 2:
            layers.append(nn.MaxPool2d(2))
            height //= 2
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_outputs))
