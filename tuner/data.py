"""Data sets: scikit-learn's bundled tables, generated sequence tasks, and a user's CSV file.

Every data set is split once, from the seed, into a training and a validation part; features (and
regression targets) are standardised with statistics of the training part only, so nothing about
the validation part leaks into training. Tensors are handed over already on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from tuner.spec import DataSpec, SpecError

# Integer targets with at most this many distinct values are taken as class labels.
MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True)
class Dataset:
    """A split, standardised data set ready for training.

    Sequence tasks have inputs of shape (samples, steps, features); tables (samples, features).
    Classification targets are class indices; regression targets are standardised floats, and
    ``target_scale`` turns an error on them back into the target's own units.
    """

    name: str
    task: str  # "classification" or "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_outputs: int
    target_scale: float = 1.0

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def is_sequence(self) -> bool:
        return self.x_train.dim() == 3

    def to(self, device: torch.device | str) -> Dataset:
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, self.task, move(self.x_train), move(self.y_train), move(self.x_val),
                       move(self.y_val), self.n_outputs, self.target_scale)


def load_dataset(spec: DataSpec, seed: int, source: str = "") -> Dataset:
    """Load, split and standardise the data set a spec names (on the CPU)."""
    if spec.name == "csv":
        x, y, task = _read_csv(spec, source)
    elif spec.name == "adding":
        x, y, task = _adding_problem(spec.samples, spec.sequence_length, seed)
    else:
        loader = {
            "digits": sk_datasets.load_digits,
            "digits_rows": sk_datasets.load_digits,
            "wine": sk_datasets.load_wine,
            "breast_cancer": sk_datasets.load_breast_cancer,
            "diabetes": sk_datasets.load_diabetes,
        }[spec.name]
        x, y = loader(return_X_y=True)
        task = task_of(spec)
        if spec.name == "digits_rows":
            x = x.reshape(-1, 8, 8)  # each image read row by row: 8 steps of 8 pixels
    if spec.max_rows is not None and len(x) > spec.max_rows:
        keep = np.random.default_rng(seed).choice(len(x), spec.max_rows, replace=False)
        x, y = x[keep], y[keep]
    return _split(spec.name, np.asarray(x, dtype=np.float64), y, task, spec.validation_fraction, seed)


def task_of(spec: DataSpec, source: str = "") -> str:
    """"classification" or "regression": what the data set of ``spec`` asks for (a CSV with task "auto" is read)."""
    if spec.name == "csv":
        return spec.task if spec.task != "auto" else _read_csv(spec, source)[2]
    return "regression" if spec.name in ("diabetes", "adding") else "classification"


def _split(name: str, x: np.ndarray, y: np.ndarray, task: str, validation_fraction: float, seed: int) -> Dataset:
    stratify = y if task == "classification" and _can_stratify(y, validation_fraction) else None
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, random_state=seed, stratify=stratify
    )
    axes = tuple(range(x.ndim - 1))  # per feature, over samples (and steps)
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
                       as_float(x_val[keep]), torch.as_tensor(y_val_codes[keep], dtype=torch.long), len(classes))
    y_mean, y_std = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    standardise = lambda a: as_float((np.asarray(a, dtype=np.float64) - y_mean) / y_std)  # noqa: E731
    return Dataset(name, task, as_float(x_train), standardise(y_train), as_float(x_val), standardise(y_val), 1, y_std)


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


def _read_csv(spec: DataSpec, source: str) -> tuple[np.ndarray, np.ndarray, str]:
    path = Path(spec.path or "")
    if not path.is_absolute() and source:
        beside_spec = Path(source).parent / path
        path = beside_spec if beside_spec.exists() or not path.exists() else path
    if not path.is_file():
        raise SpecError(source, "data.path", spec.path, "no such file; give the path of a CSV file (relative paths are read beside the spec)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise SpecError(source, "data.path", spec.path, "the CSV file is empty; it needs a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SpecError(source, "data.path", spec.path, f"cannot be read as CSV ({error})") from None
    if frame.empty:
        raise SpecError(source, "data.path", spec.path, "the CSV file holds no data rows")
    if spec.target not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:12]))
        raise SpecError(source, "data.target", spec.target, f"no such column in {path.name}; its columns are: {columns}")
    target = frame[spec.target]
    features = frame.drop(columns=[spec.target])
    if features.shape[1] == 0:
        raise SpecError(source, "data.path", spec.path, "the CSV file has no feature columns beside the target")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise SpecError(source, "data.path", spec.path, f"feature column '{non_numeric[0]}' is not numeric; encode it as numbers or drop it")
    missing = features.columns[features.isna().any()].tolist()
    if missing:
        row = int(features[missing[0]].isna().to_numpy().argmax()) + 2  # +1 header, +1 one-based
        raise SpecError(source, "data.path", spec.path, f"feature column '{missing[0]}' has a missing value (line {row}); fill or drop such rows")
    if target.isna().any():
        row = int(target.isna().to_numpy().argmax()) + 2
        raise SpecError(source, "data.target", spec.target, f"the target has a missing value (line {row}); fill or drop such rows")
    task = spec.task if spec.task != "auto" else _infer_task(target)
    if task == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise SpecError(source, "data.target", spec.target, 'is not numeric, so it cannot be a regression target; set task = "classification"')
    y = target.to_numpy() if task == "regression" else target.astype(str).to_numpy()
    return features.to_numpy(dtype=np.float64), y, task


def _infer_task(target: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.to_numpy(dtype=np.float64)
    if np.all(values == np.round(values)) and len(np.unique(values)) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"
