"""Model families built from two numbers, ``width`` and ``depth``.

``mlp``: ``depth`` hidden layers of ``width`` units with ReLU. ``lstm``: ``depth`` stacked LSTM
layers of ``width`` hidden units, read out from the last step. ``cnn``: ``depth`` blocks of a 3x3
convolution and ReLU on images (channels, height, width), ``width`` channels in the first block,
doubling per block, then a global average pool and a linear head. Users add their own family from
Python with :func:`register_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from tuner.errors import SpecError
from tuner.inputs.families import ModelFamily, model_families, register_model, registered_family  # noqa: F401 -- register_model re-exported

if TYPE_CHECKING:
    from tuner.inputs.data import Dataset
    from tuner.inputs.spec import StudySpec

ModelFactory = Callable[[int, int, int, int], nn.Module]  # (n_features, n_outputs, width, depth)
Family = str | ModelFamily  # a family's name (built-in or registered), or a user's resolved factory


def build_model(family: Family, sample_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> nn.Module:
    """Build a model of a registered family for samples of ``sample_shape`` (one sample, no batch)."""
    entry = _family(family)
    if entry is None:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(model_families()))}")
    factory, kind = entry
    if kind == "shape":
        return factory(input_shape=tuple(sample_shape), n_outputs=n_outputs, width=width, depth=depth)
    if kind == "sequence":
        return factory(sample_shape[-1], n_outputs, width, depth)
    n_inputs = 1
    for size in sample_shape:
        n_inputs *= size
    model = factory(n_inputs, n_outputs, width, depth)
    return nn.Sequential(nn.Flatten(), model) if len(sample_shape) > 1 else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


BYTES_PER_PARAMETER = 4  # float32
# Weights, their gradients, and up to two optimizer buffers (Adam's moments): four copies.
TRAINING_COPIES = 4


class ModelTooLargeError(SpecError):
    """A model the study would build cannot fit in the device's memory; the message names the field."""


def planned_parameters(family: Family, sample_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> int | None:
    """Parameters of a model, counted without allocating its weights (built on torch's "meta" device).

    None when the family cannot be built there (a user's factory that allocates by hand): then nothing is known.
    """
    try:
        with torch.device("meta"):
            return count_parameters(build_model(family, sample_shape, n_outputs, width, depth))
    except Exception:  # noqa: BLE001 -- a check that cannot run must not stop a study that might
        return None


def memory_bytes(device: torch.device | str) -> int | None:
    """The device's total memory in bytes (the GPU's for CUDA, physical RAM otherwise); None if unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def check_model_fits(spec: StudySpec, data: Dataset, device: torch.device | str, family: Family | None = None) -> None:
    """Refuse a study whose largest model cannot train in the device's memory, before anything is written.

    The largest models are the LR stage's (``[model]``) and the shape stage's widest and deepest.
    Training one takes about ``BYTES_PER_PARAMETER * TRAINING_COPIES`` bytes per parameter.

    Example:
        >>> check_model_fits(spec, load_dataset(spec.data, spec.seed), "cpu")  # doctest: +SKIP

    Raises:
        ModelTooLargeError: naming the field, the parameter count and the memory.

    ``family``: the family as resolved (:class:`tuner.inputs.usercode.UserCode`); default the spec's name.
    """
    available = memory_bytes(device)
    if available is None:
        return
    shape = spec.stages.shape
    candidates = [("model.width", spec.model.width, spec.model.width, spec.model.depth),
                  ("stages.shape.width", list(shape.width), shape.width[1], shape.depth[1])]
    from tuner.inputs.data import sample_shape as shape_of  # here: tuner.inputs.data imports torch and scikit-learn

    sample_shape = shape_of(data)
    for field_path, value, width, depth in candidates:
        n_params = planned_parameters(family or spec.model.family, sample_shape, data.n_outputs, width, depth)
        if n_params is not None and n_params * BYTES_PER_PARAMETER * TRAINING_COPIES > available:
            raise ModelTooLargeError(
                spec.source, field_path, value,
                f"a model of {n_params:,} parameters (width {width}, depth {depth}) cannot fit in {available:,} bytes "
                f"of memory ({torch.device(device).type}; training takes about {BYTES_PER_PARAMETER * TRAINING_COPIES} "
                f"bytes a parameter); choose a smaller width or depth",
            )


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


class ConvNet(nn.Module):
    """Blocks of conv3x3 (padding 1) + ReLU, channels doubling, 2x2 max-pool while the map is at
    least 2x2; then a global average pool and a linear head. No batch norm: nothing that behaves
    differently in training and evaluation, or depends on the batch."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"model family 'cnn' needs image samples (channels, height, width); these samples have shape "
                f"{tuple(input_shape)}: use image data (e.g. data.name = \"digits_images\") or another family"
            )
        channels, rows, cols = input_shape
        layers: list[nn.Module] = []
        for block in range(depth):
            out_channels = width * 2**block
            layers += [nn.Conv2d(channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            if rows >= 2 and cols >= 2:
                layers.append(nn.MaxPool2d(2))
                rows, cols = rows // 2, cols // 2
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


def cnn(input_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> ConvNet:
    return ConvNet(input_shape, n_outputs, width, depth)


_BUILT_IN: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (mlp, "flat"),
    "lstm": (LSTMRegressor, "sequence"),
    "cnn": (cnn, "shape"),
}


def _family(family: Family) -> tuple[Callable[..., nn.Module], str] | None:
    """(factory, input kind) of ``family``: one registered from Python first, else a built-in one."""
    return registered_family(family) or _BUILT_IN.get(family)


def factory_of(family: Family) -> ModelFactory | None:
    """The factory registered under ``family``, or None."""
    entry = _family(family)
    return entry[0] if entry else None


def input_kind(family: Family) -> str | None:
    """How the factory registered under ``family`` sees the data (see :func:`register_model`), or None."""
    entry = _family(family)
    return entry[1] if entry else None
