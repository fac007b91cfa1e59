"""A user's CSV file as a data set: its path, its columns read and checked, and the task inferred from its target."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuner.errors import DataWarning
from tuner.inputs.spec import DataSpec, SpecError

# Integer targets with at most this many distinct values are taken as class labels.
MAX_INFERRED_CLASSES = 20


def csv_path(spec: DataSpec, source: str) -> Path:
    """The CSV file a spec names: a relative path is read beside the spec (else from the working folder)."""
    path = Path(spec.path or "")
    if not path.is_absolute() and source:
        beside_spec = Path(source).parent / path
        path = beside_spec if beside_spec.exists() or not path.exists() else path
    return path


def read_csv(spec: DataSpec, source: str) -> tuple[np.ndarray, np.ndarray, str, list[str], dict[str, Any]]:
    """Features, target, task, the feature columns' names and the class labels by their text of the spec's CSV file,
    refused where unusable."""
    path = csv_path(spec, source)
    if not path.is_file():
        raise SpecError(source, "data.path", spec.path, "no such file; give the path of a CSV file (relative paths are read beside the spec)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise SpecError(source, "data.path", spec.path, "the CSV file is empty; it needs a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())  # pandas' messages run over several lines
        raise SpecError(source, "data.path", spec.path, f"cannot be read as CSV ({reason})") from None
    except OSError as error:
        raise SpecError(source, "data.path", spec.path, f"cannot read it ({error.strerror or error}); check its permissions") from None
    if frame.empty:
        raise SpecError(source, "data.path", spec.path, "the CSV file holds no data rows")
    if spec.target not in frame.columns:
        raise SpecError(source, "data.target", spec.target, f"no such column in {path.name}; {_column_hint(spec.target, frame.columns)}")
    target = frame[spec.target]
    features = frame.drop(columns=[spec.target])
    if features.shape[1] == 0:
        raise SpecError(source, "data.path", spec.path, "the CSV file has no feature columns beside the target")
    _warn_of_a_saved_index(features, spec, source)
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
    values = features.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise SpecError(source, "data.path", spec.path, f"non-finite values in column '{features.columns[column]}' "
                        f"({values[row, column]} on line {row + 2}); replace them with numbers or drop such rows")
    stray = _stray_text(target)
    task = spec.task if spec.task != "auto" else _infer_task(target)
    if task == "regression" and not pd.api.types.is_numeric_dtype(target):
        if stray:
            raise SpecError(source, "data.target", spec.target, f"{stray}; a regression target must be numbers: fix or drop those rows")
        raise SpecError(source, "data.target", spec.target, 'is not numeric, so it cannot be a regression target; set task = "classification"')
    if stray and spec.task == "auto":  # warned, not refused: a study stored with it must still resume
        where = f"{source}: " if source else ""
        warnings.warn(f"{where}field 'data.target' = {spec.target!r}: {stray}; read as text, each of its {target.nunique()} "
                      f"values is a class: fix or drop those rows, or set task = \"classification\" if they are classes",
                      DataWarning, stacklevel=3)
    if pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target):
        numbers = target.to_numpy(dtype=np.float64)
        if not np.isfinite(numbers).all():
            row = int((~np.isfinite(numbers)).argmax()) + 2
            raise SpecError(source, "data.target", spec.target, f"non-finite values in the target (line {row}); replace them or drop such rows")
        if task == "classification" and not np.all(numbers == np.round(numbers)):
            example = numbers[numbers != np.round(numbers)][0]
            raise SpecError(source, "data.task", spec.task, f"the target '{spec.target}' holds fractional numbers (e.g. {example:g}), "
                            f'not class labels; set task = "regression", or encode the classes as whole numbers or text')
    y = target.to_numpy() if task == "regression" else target.astype(str).to_numpy()
    # Classes are encoded by their text (the order of the class indices of every stored trial); a
    # numeric or boolean column's labels are told back as its own values, not as that text.
    labels = {str(text): value for text, value in zip(y.tolist(), target.tolist())} \
        if task == "classification" and pd.api.types.is_numeric_dtype(target) else {}
    return values, y, task, [str(c) for c in features.columns], labels


def _column_hint(name: str, columns: Any, shown: int = 12) -> str:
    """"did you mean ...?" (by spelling, case aside) and the file's columns, the last ones too where many."""
    names = [str(c) for c in columns]
    lower = {n.lower(): n for n in names}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)]
    listed = names if len(names) <= shown else [*names[:shown - 2], f"... ({len(names) - shown + 1} more)", names[-1]]
    return (f"did you mean '{close[0]}'? " if close else "") + f"its {len(names)} columns are: {', '.join(listed)}"


def _stray_text(target: pd.Series) -> str | None:
    """Where a target of numbers holds a few cells of text ("unknown"): numbers that would be read as a regression
    target on their own (fractions, or more distinct values than classes are inferred from); None elsewhere."""
    if pd.api.types.is_numeric_dtype(target):
        return None
    numbers = pd.to_numeric(target, errors="coerce")
    text = numbers.isna().to_numpy()
    if text.all() or _infer_task(numbers[~text]) != "regression":  # labels: text, or a few whole numbers among them
        return None
    row = int(text.argmax())
    return f"holds numbers but for {int(text.sum())} of {len(target)} cells ({str(target.iloc[row])!r} on line {row + 2})"


def _warn_of_a_saved_index(features: pd.DataFrame, spec: DataSpec, source: str) -> None:
    """A column without a header whose values count the rows (0, 1, 2, ...) is a row index that pandas'
    ``to_csv()`` saved: as a feature it tells the model where a row stood in the file. Warned, not refused:
    a study stored with it must still resume."""
    for column in features.columns:
        values = features[column]
        if str(column).startswith("Unnamed: ") and pd.api.types.is_integer_dtype(values) and len(values) > 1 \
                and (values.to_numpy() == np.arange(values.iloc[0], values.iloc[0] + len(values))).all():
            where = f"{source}: " if source else ""
            warnings.warn(f"{where}field 'data.path' = {spec.path!r}: column {column!r} has no header and counts the rows "
                          f"({values.iloc[0]}, {values.iloc[1]}, ...): a saved row index, used as a feature; drop it, "
                          f"or save the file without it (pandas: to_csv(index=False))", DataWarning, stacklevel=3)


def _infer_task(target: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.to_numpy(dtype=np.float64)
    if np.all(values == np.round(values)) and len(np.unique(values)) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"
