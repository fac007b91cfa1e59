"""The one entry to the data a spec names: :func:`load_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner.inputs.data import Dataset, StreamedData, load_bundled_or_csv
from tuner.inputs.spec import DataSpec
from tuner.inputs.user_data import load_user_data


def load_dataset(spec: DataSpec, seed: int, source: str = "", loader: Callable[..., Any] | None = None) -> Dataset | StreamedData:
    """Load, split and standardise the data set a spec names (on the CPU).

    A user's loader (``data.loader = "module:function"``) from :mod:`tuner.inputs.user_data`;
    a bundled data set, the adding problem or a CSV file from :mod:`tuner.inputs.data`.
    ``loader``: the user's loader as resolved (:class:`tuner.inputs.usercode.UserCode`), if at hand.
    """
    if spec.name == "python":
        return load_user_data(spec, seed, source, loader)
    return load_bundled_or_csv(spec, seed, source)
