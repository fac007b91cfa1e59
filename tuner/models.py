"""Model families built from two numbers, ``width`` and ``depth``.

``mlp``: ``depth`` hidden layers of ``width`` units with ReLU. ``lstm``: ``depth`` stacked LSTM
layers of ``width`` hidden units, read out from the last step. Users add their own family from
Python with :func:`register_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from tuner.spec import SpecError

if TYPE_CHECKING:
    from tuner.data import Dataset
    from tuner.spec import StudySpec

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


BYTES_PER_PARAMETER = 4  # float32
# Weights, their gradients, and up to two optimizer buffers (Adam's moments): four copies.
TRAINING_COPIES = 4


class ModelTooLargeError(SpecError):
    """A model the study would build cannot fit in the device's memory; the message names the field."""


def planned_parameters(family: str, sample_shape: tuple[int, ...], n_outputs: int, width: int, depth: int) -> int | None:
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


def check_model_fits(spec: StudySpec, data: Dataset, device: torch.device | str) -> None:
    """Refuse a study whose largest model cannot train in the device's memory, before anything is written.

    The largest models are the LR stage's (``[model]``) and the shape stage's widest and deepest.
    Training one takes about ``BYTES_PER_PARAMETER * TRAINING_COPIES`` bytes per parameter.

    Example:
        >>> check_model_fits(spec, load_dataset(spec.data, spec.seed), "cpu")  # doctest: +SKIP

    Raises:
        ModelTooLargeError: naming the field, the parameter count and the memory.
    """
    available = memory_bytes(device)
    if available is None:
        return
    shape = spec.stages.shape
    candidates = [("model.width", spec.model.width, spec.model.width, spec.model.depth),
                  ("stages.shape.width", list(shape.width), shape.width[1], shape.depth[1])]
    sample_shape = tuple(data.x_train.shape[1:])
    for field_path, value, width, depth in candidates:
        n_params = planned_parameters(spec.model.family, sample_shape, data.n_outputs, width, depth)
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


register_model("mlp", mlp)
register_model("lstm", LSTMRegressor, sequence=True)
