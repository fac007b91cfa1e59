"""Data from a user's loader: ``[data] name = "python"``, ``loader = "module:function"``.

The loader is called as ``loader(seed=<the spec's seed>)`` and returns a dict (or a tuple
``(train, val, task)`` / ``(train, val, test, task)``)::

    {"train": TRAIN, "val": VAL, "test": TEST (optional), "task": "classification" | "regression",
     "n_classes": N (optional, for Datasets)}

where each part is either a pair ``(x, y)`` of arrays or tensors (numpy, torch, anything
``numpy.asarray`` takes), held in memory, standardised from the training part and encoded like
the bundled data (any labels for classification), or a ``torch.utils.data.Dataset`` whose items are
``(input, target)`` pairs, read through a ``DataLoader`` (``[data] workers``), for data that does not
fit in memory: used as it is (no standardisation), targets as class indices ``0..N-1`` for
classification (give ``n_classes`` to skip a pass over the training part to count them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from tuner.errors import a_type, error_line
from tuner.inputs.data import Dataset, StreamedData, prepare, with_test
from tuner.inputs.spec import MIN_SPLIT_ROWS, DataSpec, SpecError
from tuner.inputs.usercode import load_callable

TASKS = ("classification", "regression")
FIELD = "data.loader"


def load_user_data(spec: DataSpec, seed: int, source: str = "",
                   loader: Callable[..., Any] | None = None) -> Dataset | StreamedData:
    """Call the spec's loader and turn what it returns into tuner's data (see the module docstring).

    ``loader``: the loader as already resolved (:class:`tuner.inputs.usercode.UserCode`); else imported here.
    """
    reference = spec.loader or ""
    loader = loader or load_callable(reference, FIELD, source)
    fail = lambda fix: SpecError(source, FIELD, reference, fix)  # noqa: E731
    try:
        returned = loader(seed=seed)
    except Exception as error:  # noqa: BLE001 -- the user's code raised: say so, in one line
        raise fail(f"calling it as loader(seed={seed}) raised {error_line(error)}; fix the loader") from None
    parts = _parts(returned, fail)
    task = parts["task"]
    if task not in TASKS:
        raise fail(f"it returned task = {task!r}; return \"classification\" or \"regression\"")
    kinds = {name: _is_dataset(part) for name, part in parts.items() if name in ("train", "val", "test") and part is not None}
    if len(set(kinds.values())) > 1:
        raise fail("return every part the same way: all (x, y) pairs, or all torch Datasets")
    if kinds["train"]:
        return _streamed(spec, parts, fail)
    return _in_memory(parts, fail)


def _parts(returned: Any, fail: Any) -> dict[str, Any]:
    if isinstance(returned, Mapping):
        missing = [key for key in ("train", "val", "task") if key not in returned]
        if missing:
            raise fail(f"the dict it returned has no {', '.join(repr(k) for k in missing)}; return "
                       "{'train': (x, y), 'val': (x, y), 'task': 'classification'} (README: Your own model)")
        return {"train": returned["train"], "val": returned["val"], "test": returned.get("test"),
                "task": returned["task"], "n_classes": returned.get("n_classes")}
    if isinstance(returned, tuple) and len(returned) in (3, 4):
        train, val, *test, task = returned
        return {"train": train, "val": val, "test": test[0] if test else None, "task": task, "n_classes": None}
    raise fail(f"it returned {a_type(returned)}; return a dict {{'train': (x, y), 'val': (x, y), "
               "'task': 'classification' or 'regression'}, or a tuple (train, val, task)")


def _is_dataset(part: Any) -> bool:
    return isinstance(part, torch.utils.data.Dataset)


def _pair(part: Any, name: str, fail: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(part, (tuple, list)) or len(part) != 2:
        raise fail(f"its '{name}' part is {a_type(part)}; give a pair (x, y) of arrays, or a torch Dataset")
    x, y = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in part)
    if len(x) != len(y):
        raise fail(f"its '{name}' part has {len(x)} inputs but {len(y)} targets; give one target per input")
    if len(x) == 0:
        raise fail(f"its '{name}' part is empty; give it rows")
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(f"the inputs of its '{name}' part are not numbers; encode them as numbers") from None
    if not np.isfinite(x).all():
        raise fail(f"the inputs of its '{name}' part hold NaN or infinite values; fill or drop them")
    if np.issubdtype(y.dtype, np.number) and not np.isfinite(y.astype(np.float64)).all():
        raise fail(f"the targets of its '{name}' part hold NaN or infinite values; fill or drop them")
    return x, y.reshape(len(y), -1)[:, 0] if y.ndim > 1 and y.shape[1:] == (1,) else y


def _check_rows(part: Any, name: str, fail: Any) -> None:
    """As a CSV's split: training and validation parts of fewer rows make a verdict of noise (e.g. "diverged")."""
    if len(part) < MIN_SPLIT_ROWS:
        raise fail(f"its '{name}' part has {len(part)} row{'' if len(part) == 1 else 's'}; the train and val parts need "
                   f"at least {MIN_SPLIT_ROWS} each, as a CSV's split does: give it more rows")


def _check_shape(train_shape: tuple[int, ...], shape: tuple[int, ...], name: str, fail: Any) -> None:
    if shape != train_shape:
        raise fail(f"train inputs have shape {train_shape} per sample but {name} inputs {shape}; make them match")


def _in_memory(parts: dict[str, Any], fail: Any) -> Dataset:
    task = parts["task"]
    x_train, y_train = _pair(parts["train"], "train", fail)
    x_val, y_val = _pair(parts["val"], "val", fail)
    x_test, y_test = _pair(parts["test"], "test", fail) if parts["test"] is not None else (None, None)
    for name, x in (("val", x_val), ("test", x_test)):
        if x is not None:
            _check_shape(x_train.shape[1:], x.shape[1:], name, fail)
    _check_rows(x_train, "train", fail)
    _check_rows(x_val, "val", fail)
    if task == "classification":
        if len(np.unique(y_train)) < 2:
            raise fail("its train part has one class only; a classifier needs at least two")
        numeric = np.issubdtype(np.asarray(y_train).dtype, np.number)
        if numeric and not np.all(np.asarray(y_train, dtype=np.float64) == np.round(np.asarray(y_train, dtype=np.float64))):
            raise fail("it returned task = \"classification\" but fractional targets; return task = \"regression\", "
                       "or class labels")
    elif not np.issubdtype(np.asarray(y_train).dtype, np.number):
        raise fail("its targets are not numbers, so the task cannot be regression; return task = \"classification\"")
    data = prepare("python", task, x_train, y_train, x_val, y_val)
    if len(data.y_val) == 0:
        raise fail("no class of its 'val' part occurs in the 'train' part; validation needs known classes")
    if len(data.y_val) < MIN_SPLIT_ROWS:
        raise fail(f"its 'val' part holds {len(data.y_val)} row of classes seen in training (a class seen only in "
                   f"validation cannot be scored); give it at least {MIN_SPLIT_ROWS}")
    return data if x_test is None else with_test(data, x_test, y_test)


def _streamed(spec: DataSpec, parts: dict[str, Any], fail: Any) -> StreamedData:
    train, val, task = parts["train"], parts["val"], parts["task"]
    for name in ("train", "val"):
        if len(parts[name]) == 0:
            raise fail(f"its '{name}' Dataset is empty; give it samples")
        _check_rows(parts[name], name, fail)
    input_shape = _first_input_shape(train, "train", fail)
    # The test Dataset is not read here, not even its first sample: no stage may look at it (check_test_part).
    _check_shape(input_shape, _first_input_shape(val, "val", fail), "val", fail)
    n_outputs = 1
    if task == "classification":
        n_outputs = int(parts["n_classes"] or _count_classes(train, spec.workers))
        if n_outputs < 2:
            raise fail("its train Dataset has one class only; a classifier needs at least two")
    return StreamedData("python", task, train, val, n_outputs, input_shape, test_set=parts["test"], workers=spec.workers)


def check_test_part(spec: DataSpec, data: Dataset | StreamedData, source: str = "") -> None:
    """Refuse a loader's test Dataset whose samples are shaped otherwise than the training ones.

    For ``tuner best``, the one reader of the test part: the stages never read it, not even a sample.
    (A test part given as arrays is checked with the rest, by :func:`load_user_data`.)
    """
    if not isinstance(data, StreamedData) or data.test_set is None:
        return
    fail = lambda fix: SpecError(source, FIELD, spec.loader or "", fix)  # noqa: E731
    _check_shape(data.input_shape, _first_input_shape(data.test_set, "test", fail), "test", fail)


def _first_input_shape(dataset: Any, name: str, fail: Any) -> tuple[int, ...]:
    """The shape of the input of ``dataset[0]`` (a part's first sample stands for all of them)."""
    try:
        first_input, _ = dataset[0]
    except Exception as error:  # noqa: BLE001 -- the user's Dataset raised, or gave no pair
        raise fail(f"{name}[0] of its Dataset must be a pair (input, target); it gave {type(error).__name__}: {error}") from None
    return tuple(int(n) for n in torch.as_tensor(first_input).shape)


def _count_classes(dataset: Any, workers: int) -> int:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1024, num_workers=workers)
    return int(max(int(torch.as_tensor(y).max()) for _, y in loader)) + 1
