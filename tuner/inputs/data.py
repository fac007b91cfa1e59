"""Data sets: scikit-learn's bundled tables, generated sequence tasks, and a user's CSV file.

Every data set is split once, from the seed, into a training and a validation part (and, with
``test_fraction`` > 0, a test part taken out first, which no stage sees); features (and regression
targets) are standardised with statistics of the training part only, so nothing about the validation
or test part leaks into training. Tensors are handed over already on the device.

Images (samples, channels, height, width) are standardised per channel, over samples and pixels, not
per pixel: a convolution applies the same filter everywhere, so a pixel value must mean the same at
every position; and per pixel, a border pixel that is almost always blank would have a tiny standard
deviation and turn its rare ink into huge inputs.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

from tuner.errors import DataWarning  # defined with the error types (the CLI catches it without torch); importable from here as before
from tuner.inputs.csv_file import read_csv
from tuner.inputs.spec import MIN_SPLIT_ROWS, DataSpec, SpecError

@dataclass(frozen=True)
class Dataset:
    """A split, standardised data set ready for training.

    Sequence tasks have inputs of shape (samples, steps, features); tables (samples, features).
    Classification targets are class indices; regression targets are standardised floats, and
    ``target_scale`` turns an error on them back into the target's own units.

    What preprocesses raw inputs the same way (see :func:`standardise_inputs`): ``x_mean`` and
    ``x_std`` (float64, shaped to broadcast over a batch of raw samples), ``classes`` (the original
    labels, in the order of the class indices) and ``target_mean`` (with ``target_scale``, the
    target's standard deviation). ``x_test``/``y_test``: the test part, None without one.
    """

    name: str
    task: str  # "classification" or "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_outputs: int
    target_scale: float = 1.0
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    classes: tuple[str | int | float, ...] | None = None
    target_mean: float = 0.0
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    dropped_columns: tuple[int, ...] = ()
    # A CSV's feature columns by name, in the file's order (before constant ones were dropped): what
    # lines up a data frame given to predict. Empty for other data.
    feature_names: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def is_sequence(self) -> bool:
        return self.x_train.dim() == 3

    def to(self, device: torch.device | str) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(self, **{f: move(getattr(self, f)) for f in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True)
class StreamedData:
    """Data handed over as ``torch.utils.data.Dataset`` objects, read batch by batch through a ``DataLoader``.

    For data that does not fit in memory: nothing is standardised (the user's Dataset prepares its
    samples), and trials train one at a time. Each item of a part is a pair ``(input, target)``.
    """

    name: str
    task: str
    train_set: Any
    val_set: Any
    n_outputs: int
    input_shape: tuple[int, ...]
    test_set: Any = None
    workers: int = 0
    device: str = "cpu"  # where batches are moved
    target_scale: float = 1.0
    classes: tuple[str | int | float, ...] | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    target_mean: float = 0.0

    def to(self, device: torch.device | str) -> StreamedData:
        return dataclasses.replace(self, device=str(device))

    def loader(self, part: str, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
        """A DataLoader over ``part`` (train, val, test); shuffled from ``generator`` when given."""
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[part]
        return DataLoader(dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                          num_workers=self.workers, pin_memory=self.device.startswith("cuda"))


def sample_shape(data: Dataset | StreamedData) -> tuple[int, ...]:
    """One sample's input shape (no batch axis)."""
    if isinstance(data, StreamedData):
        return data.input_shape
    return tuple(int(n) for n in data.x_train.shape[1:])


def data_device(data: Dataset | StreamedData) -> torch.device:
    """Where the data's batches are: the device to build models on."""
    return torch.device(data.device) if isinstance(data, StreamedData) else data.x_train.device


def standardise_inputs(raw: np.ndarray, x_mean: np.ndarray, x_std: np.ndarray) -> torch.Tensor:
    """Raw samples (a batch, shaped like the data's samples) as the model saw them in training."""
    return torch.as_tensor((np.asarray(raw, dtype=np.float64) - x_mean) / x_std, dtype=torch.float32)


def load_bundled_or_csv(spec: DataSpec, seed: int, source: str = "") -> Dataset:
    """Load, split and standardise a bundled data set, the adding problem or a CSV file (on the CPU).

    :func:`tuner.inputs.load.load_dataset` is the entry for every kind of data, a user's loader too.
    """
    dropped: tuple[int, ...] = ()
    columns: list[str] = []
    labels: dict[str, Any] = {}
    if spec.name == "csv":
        x, y, task, columns, labels = read_csv(spec, source)
        x, dropped = _informative_columns(spec, x, y, task, columns, source)
    elif spec.name == "adding":
        x, y, task = _adding_problem(spec.samples, spec.sequence_length, seed)
    else:
        loader = {
            "digits": sk_datasets.load_digits,
            "digits_rows": sk_datasets.load_digits,
            "digits_images": sk_datasets.load_digits,
            "wine": sk_datasets.load_wine,
            "breast_cancer": sk_datasets.load_breast_cancer,
            "diabetes": sk_datasets.load_diabetes,
        }[spec.name]
        x, y = loader(return_X_y=True)
        task = task_of(spec)
        if spec.name == "digits_rows":
            x = x.reshape(-1, 8, 8)  # each image read row by row: 8 steps of 8 pixels
        if spec.name == "digits_images":
            x = x.reshape(-1, 1, 8, 8)  # (channels, height, width), for convolutions
    if spec.max_rows is not None and len(x) > spec.max_rows:
        keep = np.random.default_rng(seed).choice(len(x), spec.max_rows, replace=False)
        x, y = x[keep], y[keep]
    x = np.asarray(x, dtype=np.float64)
    test = None
    if spec.test_fraction > 0:
        x, x_test, y, y_test = _holdout(x, y, task, spec.test_fraction, seed)
        test = (x_test, y_test)
    _check_split_sizes(spec, len(x), source)
    dataset = dataclasses.replace(_split(spec.name, x, y, task, spec.validation_fraction, seed), dropped_columns=dropped,
                                  feature_names=tuple(columns))
    _check_classes(spec, dataset, y, source)
    dataset = dataset if test is None else with_test(dataset, *test)
    if labels and dataset.classes is not None:  # encoded by their text, as ever; told as the CSV's own values
        dataset = dataclasses.replace(dataset, classes=tuple(labels[c] for c in dataset.classes))
    return dataset


def _holdout(x: np.ndarray, y: np.ndarray, task: str, fraction: float, seed: int) -> list[np.ndarray]:
    """(x_rest, x_held, y_rest, y_held): ``fraction`` of the rows, from the seed, stratified for classes."""
    stratify = y if task == "classification" and _can_stratify(y, fraction) else None
    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)


def with_test(data: Dataset, x_test: np.ndarray, y_test: np.ndarray) -> Dataset:
    """``data`` with its test part, standardised with the training part's statistics."""
    x = standardise_inputs(x_test, data.x_mean, data.x_std)
    if data.task == "classification":
        lookup = {c: i for i, c in enumerate(data.classes)}
        codes = np.array([lookup.get(c, -1) for c in np.asarray(y_test).tolist()])
        keep = codes >= 0  # as for validation: a class never seen in training cannot be scored
        return dataclasses.replace(data, x_test=x[keep], y_test=torch.as_tensor(codes[keep], dtype=torch.long))
    y = torch.as_tensor((np.asarray(y_test, dtype=np.float64) - data.target_mean) / data.target_scale, dtype=torch.float32)
    return dataclasses.replace(data, x_test=x, y_test=y)


def _rows_field(spec: DataSpec, n_rows: int) -> tuple[str, object]:
    """The field that decided how many rows there are, to name in a message."""
    if spec.max_rows is not None and n_rows == spec.max_rows:
        return "data.max_rows", spec.max_rows
    if spec.name == "adding":
        return "data.samples", spec.samples
    if spec.name == "csv":
        return "data.path", spec.path
    return "data.validation_fraction", spec.validation_fraction


def _check_split_sizes(spec: DataSpec, n_rows: int, source: str) -> None:
    """Refuse a split that leaves either part with fewer than MIN_SPLIT_ROWS rows (sklearn rounds the validation part up)."""
    fraction = spec.validation_fraction
    n_val = math.ceil(n_rows * fraction)
    n_train = n_rows - n_val
    if n_train >= MIN_SPLIT_ROWS and n_val >= MIN_SPLIT_ROWS:
        return
    parts = f"{n_train} training and {n_val} validation rows"
    field, value = _rows_field(spec, n_rows)
    if field == "data.validation_fraction" or not 0.05 <= fraction <= 0.5:
        if n_rows >= 2 * MIN_SPLIT_ROWS:
            low, high = MIN_SPLIT_ROWS / n_rows, (n_rows - MIN_SPLIT_ROWS) / n_rows
            raise SpecError(source, "data.validation_fraction", fraction,
                            f"leaves {parts} of {n_rows}; each part needs at least {MIN_SPLIT_ROWS}: "
                            f"choose a fraction from {low:.3g} to {high:.3g}, e.g. 0.2")
    needed = next(n for n in range(2 * MIN_SPLIT_ROWS, 10**9)
                  if math.ceil(n * fraction) >= MIN_SPLIT_ROWS and n - math.ceil(n * fraction) >= MIN_SPLIT_ROWS)
    raise SpecError(source, field, value,
                    f"too few rows for a split: {n_rows} rows at validation_fraction {fraction:g} leave {parts}, and each "
                    f"part needs at least {MIN_SPLIT_ROWS}; give at least {needed} rows")


def _check_classes(spec: DataSpec, dataset: Dataset, y: np.ndarray, source: str) -> None:
    """A classifier needs two classes to learn from and validation rows of classes it has seen."""
    if dataset.task != "classification":
        return
    target_field, target_value = ("data.target", spec.target) if spec.name == "csv" else ("data.name", spec.name)
    classes = np.unique(np.asarray(y).astype(str))
    if len(classes) < 2:
        raise SpecError(source, target_field, target_value,
                        f"the target has one class only ({str(classes[0])!r}); a classifier needs at least two: "
                        f"check the column, or choose another target")
    if dataset.n_outputs < 2:
        field, value = _rows_field(spec, len(y))
        raise SpecError(source, field, value, f"the training part holds one class only of {len(classes)}; "
                        f"give more rows, or a smaller data.validation_fraction")
    if len(dataset.y_val) < MIN_SPLIT_ROWS:
        field, value = _rows_field(spec, len(y))
        raise SpecError(source, field, value, f"the validation part holds {len(dataset.y_val)} rows of classes seen in "
                        f"training (a class seen only in validation cannot be scored); give more rows per class")


def _informative_columns(spec: DataSpec, x: np.ndarray, y: np.ndarray, task: str, columns: list[str],
                         source: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """A CSV's features without its constant columns, and where those were; refuse what cannot be standardised.

    Refused: a value whose square, summed over the rows, overflows (standardising it gave inputs of
    0 and a warning from numpy), in a feature or a regression target, and a regression target of
    one value. A constant feature column is dropped with a :class:`DataWarning`: it cannot inform
    the model; every feature column constant is refused (both only with ``drop_constant_columns``). One row says nothing about constancy: the
    split's size check names that problem.
    """
    limit = math.sqrt(np.finfo(np.float64).max / (4 * max(len(x), 1)))  # deviations up to 2x, summed over the rows
    too_large = np.abs(x) > limit
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise SpecError(source, "data.path", spec.path, f"column '{columns[column]}' holds {x[row, column]:g} on line {row + 2}: "
                        f"too large to standardise (its square overflows); rescale the column (e.g. to other units) or drop such rows")
    if task == "regression":
        target = np.asarray(y, dtype=np.float64)
        if (np.abs(target) > limit).any():
            row = int((np.abs(target) > limit).argmax())
            raise SpecError(source, "data.target", spec.target, f"the target holds {target[row]:g} on line {row + 2}: too large "
                            f"to standardise (its square overflows); rescale the target (e.g. to other units) or drop such rows")
        if len(target) > 1 and np.all(target == target[0]):
            raise SpecError(source, "data.target", spec.target, f"the target holds one value only ({target[0]:g}): there is "
                            f"nothing to learn; check the column, or choose another target")
    if len(x) < 2 or not spec.drop_constant_columns:  # false: a study stored before columns were dropped
        return x, ()
    constant = tuple(int(i) for i in np.flatnonzero(np.all(x == x[0], axis=0)))
    if len(constant) == x.shape[1]:
        raise SpecError(source, "data.path", spec.path, f"every feature column holds one value only ({', '.join(columns)}): "
                        f"there is nothing to learn from; check the file")
    if constant:
        names = ", ".join(f"'{columns[i]}'" for i in constant)
        what = f"feature columns {names} hold" if len(constant) > 1 else f"feature column {names} holds"
        where = f"{source}: " if source else ""
        warnings.warn(f"{where}field 'data.path' = {spec.path!r}: {what} one value only: dropped, since a constant input "
                      f"cannot inform the model", DataWarning, stacklevel=3)
    return np.delete(x, constant, axis=1), constant


def task_of(spec: DataSpec, source: str = "") -> str:
    """"classification" or "regression": what the data set of ``spec`` asks for (a CSV with task "auto" is read)."""
    if spec.name == "csv":
        return spec.task if spec.task != "auto" else read_csv(spec, source)[2]
    return "regression" if spec.name in ("diabetes", "adding") else "classification"


def _split(name: str, x: np.ndarray, y: np.ndarray, task: str, validation_fraction: float, seed: int) -> Dataset:
    stratify = y if task == "classification" and _can_stratify(y, validation_fraction) else None
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, random_state=seed, stratify=stratify
    )
    return prepare(name, task, x_train, y_train, x_val, y_val)


def prepare(name: str, task: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> Dataset:
    """Standardise (and encode the classes of) a split, with statistics of the training part only."""
    x = x_train
    # Per feature, over samples (and steps); images per channel, over samples and pixels (see above).
    axes = (0, *range(2, x.ndim)) if x.ndim == 4 else tuple(range(x.ndim - 1))
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0  # constant features (e.g. blank digit pixels) stay at 0
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    as_float = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    if task == "classification":
        classes, y_train_codes = np.unique(y_train, return_inverse=True)
        lookup = {c: i for i, c in enumerate(classes.tolist())}
        y_val_codes = np.array([lookup.get(c, -1) for c in np.asarray(y_val).tolist()])
        keep = y_val_codes >= 0  # a class seen only in validation cannot be learned; drop it
        return Dataset(name, task, as_float(x_train), torch.as_tensor(y_train_codes, dtype=torch.long),
                       as_float(x_val[keep]), torch.as_tensor(y_val_codes[keep], dtype=torch.long), len(classes),
                       x_mean=mean, x_std=std, classes=tuple(classes.tolist()))
    y_mean, y_std = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    standardise = lambda a: as_float((np.asarray(a, dtype=np.float64) - y_mean) / y_std)  # noqa: E731
    return Dataset(name, task, as_float(x_train), standardise(y_train), as_float(x_val), standardise(y_val), 1, y_std,
                   x_mean=mean, x_std=std, target_mean=y_mean)


def _can_stratify(y: np.ndarray, validation_fraction: float) -> bool:
    _, counts = np.unique(y, return_counts=True)
    n_val = int(np.ceil(len(y) * validation_fraction))
    return counts.min() >= 2 and n_val >= len(counts) and len(y) - n_val >= len(counts)


def _adding_problem(samples: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Hochreiter & Schmidhuber's adding problem: sum the two values marked in a long sequence."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, size=(samples, steps))
    marks = np.zeros((samples, steps))
    for row in range(samples):
        first, second = rng.choice(steps, size=2, replace=False)
        marks[row, [first, second]] = 1.0
    x = np.stack([values, marks], axis=-1)
    y = (values * marks).sum(axis=1)
    return x, y, "regression"
