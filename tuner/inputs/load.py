"""The one entry to the data a spec names: :func:`load_dataset`."""

from __future__ import annotations

from tuner.inputs.data import Dataset, StreamedData, load_bundled_or_csv
from tuner.inputs.spec import DataSpec
from tuner.inputs.user_data import load_user_data


def load_dataset(spec: DataSpec, seed: int, source: str = "") -> Dataset | StreamedData:
    """Load, split and standardise the data set a spec names (on the CPU).

    A user's loader (``data.loader = "module:function"``) from :mod:`tuner.inputs.user_data`;
    a bundled data set, the adding problem or a CSV file from :mod:`tuner.inputs.data`.
    """
    if spec.name == "python":
        return load_user_data(spec, seed, source)
    return load_bundled_or_csv(spec, seed, source)
