"""The folder ``tuner best`` writes, the one writer of it and the one reader.

Three files, and a copy of the study's own modules (``best.toml`` imports them from beside
itself), each written to a hidden temporary file beside it, flushed to disk and moved into place
with ``os.replace`` (atomic on POSIX and Windows): ``model.pt``, the modules, ``best.toml``, then
``metrics.json`` last. ``metrics.json`` carries the manifest: the run's id and the sha256 of every
other file, and ``model.pt`` carries the same run id. A run stopped at any point (SIGKILL
included) leaves each file whole, the old one or the new one, and a folder whose manifest does not
match its files: :func:`check_folder` names it as partial or mixed in one line, and
:func:`load_model` refuses it rather than load a model its metrics do not describe. The folder is
never swapped as a whole, since ``--out`` may be any folder, ``.`` included.

``model.pt`` is a plain dict (loadable with ``torch.load(..., weights_only=True)``): the weights
and what rebuilds the model and preprocesses raw inputs (see :data:`MODEL_KEYS`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import uuid
from importlib import metadata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuner.inputs.data import Dataset, StreamedData, sample_shape, standardise_inputs
from tuner.inputs.models import ModelFamily, build_model
from tuner.inputs.spec import StudySpec
from tuner.inputs.usercode import is_reference, load_callable, spec_folder
from tuner.training.train import EVAL_CHUNK

SPEC_FILE = "best.toml"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
FILES = (MODEL_FILE, SPEC_FILE, METRICS_FILE)  # the order they are written in: the manifest last
MANIFEST = "manifest"  # the key of metrics.json that holds the run id and the other files' sha256
MODEL_FORMAT = 1  # raised when the keys of model.pt change meaning
# A model built with declared parameters (e.g. dropout layers) only loads where they are known:
# its format is 2, which a tuner from before declared parameters refuses in one line.
MODEL_FORMAT_DECLARED = 2
READ_FORMATS = (MODEL_FORMAT, MODEL_FORMAT_DECLARED)
MODEL_KEYS = (
    "format", "tuner_version", "family", "width", "depth", "input_shape", "n_outputs", "task",
    "state_dict", "x_mean", "x_std", "classes", "target_mean", "target_std", "code_folder", "run_id", "dropped_columns",
    "params", "feature_names",
)
# Test hook: `tuner best` kills itself with SIGKILL when it reaches this point of the write
# ("model.pt.tmp": the temporary file written, not yet moved; "model.pt": moved into place; ...),
# so that a test can stop it at a point of its choosing without racing a timer.
KILL_AT_ENV = "TUNER_TEST_KILL_AT"


class FolderError(ValueError):
    """A folder of ``tuner best`` that is partial or mixed (a write that was stopped): bad input.

    ``problem`` names the folder and what is wrong with it; the message adds the fix.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}; run `tuner best` again to write it anew")


def model_record(model: nn.Module, spec: StudySpec, data: Dataset | StreamedData, width: int, depth: int,
                 declared: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.pt: only tensors and plain types, so that ``torch.load(weights_only=True)`` reads it."""
    as_tensor = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    folder = spec_folder(spec.source) if is_reference(spec.model.family) else None
    return {
        "format": MODEL_FORMAT_DECLARED if declared else MODEL_FORMAT,
        "tuner_version": _tuner_version(),
        "family": spec.model.family,
        "width": width,
        "depth": depth,
        "input_shape": list(sample_shape(data)),
        "n_outputs": data.n_outputs,
        "task": data.task,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "x_mean": as_tensor(data.x_mean),  # None: streamed data, used as the user's Dataset gives it
        "x_std": as_tensor(data.x_std),
        "classes": list(data.classes) if data.classes is not None else None,
        "target_mean": data.target_mean,
        "target_std": data.target_scale,
        "code_folder": None if folder is None else str(folder),  # where a "module:function" family is imported from
        "run_id": None,  # set by write_folder: the run of `tuner best` that wrote it
        # Where, in a raw row, the columns are that the model does not read (a CSV's constant ones).
        "dropped_columns": list(getattr(data, "dropped_columns", ())),
        # The declared parameters it was trained with: the factory rebuilds it with them (dropout's layers).
        "params": dict(declared or {}),
        # A CSV's feature columns by name, in the file's order: predict lines up a data frame by them.
        "feature_names": list(getattr(data, "feature_names", ())),
    }


def _tuner_version() -> str:
    try:
        return metadata.version("tuner")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_folder(folder: Path, spec_text: str, record: dict[str, Any], metrics: dict[str, Any],
                 code_files: Mapping[str, bytes] | None = None) -> tuple[Path, Path, Path]:
    """Write ``best.toml``, ``model.pt`` and ``metrics.json`` (with the manifest) into ``folder``.

    ``code_files``: the study's own modules (path in the folder -> content), written between
    ``model.pt`` and ``best.toml`` the same way and named in the manifest, so that ``best.toml``
    imports them from beside itself, and a folder with a stale or missing one is named as mixed
    or partial. Returns the paths (spec, model, metrics). Temporary files an earlier, killed write
    left behind are removed first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    code_files = dict(code_files or {})
    for name in (*FILES, *code_files):
        for stale in (folder / name).parent.glob(f".{Path(name).name}.*.tmp"):
            stale.unlink(missing_ok=True)
    run_id = uuid.uuid4().hex
    buffer = io.BytesIO()
    torch.save({**record, "run_id": run_id}, buffer)
    contents = {MODEL_FILE: buffer.getvalue(), **code_files, SPEC_FILE: spec_text.encode("utf-8")}
    for name, content in contents.items():
        _replace(folder / name, content)
    manifest = {"run_id": run_id, "files": {name: _sha256(content) for name, content in contents.items()}}
    _replace(folder / METRICS_FILE, (json.dumps({**metrics, MANIFEST: manifest}, indent=2) + "\n").encode("utf-8"))
    _sync_folder(folder)
    return folder / SPEC_FILE, folder / MODEL_FILE, folder / METRICS_FILE


def _replace(path: Path, content: bytes) -> None:
    """Put ``content`` at ``path`` whole or not at all: a temporary file beside it, flushed, then moved."""
    path.parent.mkdir(parents=True, exist_ok=True)  # a module of a package: its folder
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        _kill_point(f"{path.name}.tmp")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # an interrupted write (Ctrl-C, an error) leaves nothing behind
    _kill_point(path.name)


def _sync_folder(folder: Path) -> None:
    """Make the renames durable too (a power cut right after must not bring the old names back)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows opens no folder; its rename is durable on its own
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _kill_point(point: str) -> None:
    if os.environ.get(KILL_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def check_folder(folder: str | Path, model_content: bytes | None = None) -> None:
    """Raise :class:`FolderError` (one line) when ``folder`` is not the whole output of one ``tuner best``.

    Partial: a file the manifest names is missing, or ``metrics.json`` (the manifest, written
    last) is missing beside a model that a manifest should describe. Mixed: a file is not the one
    the manifest names (another run's, or changed). A folder written before manifests existed has
    neither manifest nor run id, and passes. ``model_content``: ``model.pt`` as the caller read it,
    checked instead of the file, so that what is checked is what is loaded.
    """
    folder = Path(folder)
    model_path = folder / MODEL_FILE

    def content(name: str) -> bytes | None:
        if name == MODEL_FILE and model_content is not None:
            return model_content
        path = folder / name
        return path.read_bytes() if path.is_file() else None

    def run_id() -> str | None:
        model = content(MODEL_FILE)
        return None if model is None else _read_record(model, model_path).get("run_id")

    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        if run_id() is not None:
            raise FolderError(f"{str(folder)!r}: partial output of `tuner best` (no {METRICS_FILE}: it was stopped "
                              f"while writing)")
        return
    try:
        metrics = json.loads(metrics_path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise FolderError(f"{str(folder)!r}: {METRICS_FILE} is not readable JSON (changed by hand?)") from None
    manifest = metrics.get(MANIFEST) if isinstance(metrics, dict) else None
    if manifest is None:  # written before manifests: its model must be of that time too
        if run_id() is not None:
            raise FolderError(f"{str(folder)!r}: mixed output of `tuner best` ({MODEL_FILE} is from another run than "
                              f"{METRICS_FILE})")
        return
    for name, digest in manifest.get("files", {}).items():
        found = content(name)
        if found is None:
            raise FolderError(f"{str(folder)!r}: partial output of `tuner best` ({name} is missing)")
        if _sha256(found) != digest:
            raise FolderError(f"{str(folder)!r}: mixed output of `tuner best` ({name} is not the file "
                              f"{METRICS_FILE} describes: another run's, or changed)")


def _read_record(content: bytes, path: Path) -> dict[str, Any]:
    """``model.pt``'s record from its bytes (``path``: to name it); a file torch cannot read is named in one line."""
    try:
        record = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception:  # torch says "PytorchStreamReader failed reading zip archive" and the like
        raise FolderError(f"{str(path)!r}: cannot be read as a model file (cut short, or not written by `tuner best`)") from None
    if not isinstance(record, dict) or record.get("format") not in READ_FORMATS:
        raise FolderError(f"{str(path)!r}: not a model written by this version of `tuner best`")
    return record


class TrainedModel:
    """A model written by ``tuner best``, with the preprocessing it was trained with.

    Attributes:
        model: the ``nn.Module`` (in evaluation mode, on the CPU).
        task: ``classification`` or ``regression``.
        classes: the original class labels, in the order of the model's outputs (None: regression).
        input_shape: one raw sample's shape, e.g. ``(1, 8, 8)`` or ``(13,)``.
        record: everything read from ``model.pt``.
    """

    def __init__(self, record: dict[str, Any], beside: Path | None = None, model: Callable[..., nn.Module] | None = None) -> None:
        self.record = record
        self.task: str = record["task"]
        self.input_shape = tuple(record["input_shape"])
        self.classes = record["classes"]
        family = record["family"]
        if model is not None and not is_reference(family):
            raise ValueError(f"load_model(..., model=...): this model's family is {family!r}, not a factory of your own "
                             f"(\"module:function\"); load it without model=")
        if is_reference(family) and model is not None:  # the factory given (one a script's __main__ defined)
            family = ModelFamily(family, model)
        elif is_reference(family):  # the user's own factory: its copy beside model.pt, else the study's folder
            top = family.partition(":")[0].split(".")[0]
            copied = beside is not None and ((beside / f"{top}.py").is_file() or (beside / top / "__init__.py").is_file())
            folder = str(beside) if copied else record.get("code_folder")
            factory = load_callable(family, "model.family", str(Path(folder) / "spec.toml") if folder else "")
            family = ModelFamily(family, factory)  # resolved once, here: nothing registered globally
        self.model = build_model(family, self.input_shape, record["n_outputs"], record["width"], record["depth"],
                                 record.get("params"))  # absent from model.pt files written before
        self.model.load_state_dict(record["state_dict"])
        self.model.eval()
        self._mean = None if record["x_mean"] is None else record["x_mean"].numpy()
        self._std = None if record["x_std"] is None else record["x_std"].numpy()

    @torch.no_grad()
    def predict(self, raw_inputs: Any) -> np.ndarray:
        """Class labels (as in the data) or values (in the target's units) for raw, unstandardised inputs.

        ``raw_inputs``: a numpy array or tensor of samples shaped like the data's samples (e.g.
        ``(n, 1, 8, 8)``), or flat rows ``(n, features)`` (e.g. scikit-learn's ``(n, 64)`` digits; a
        CSV's rows with or without the constant columns training dropped); one sample alone gives an
        array of one. A pandas data frame given to a model trained on a CSV file is read by column name:
        in any order, with the target or other columns beside them, with or without the constant columns,
        refused where a feature column is missing; a frame whose columns name none of them, by position.
        """
        raw = raw_inputs.detach().cpu().numpy() if isinstance(raw_inputs, torch.Tensor) else self._by_name(raw_inputs)
        raw = self._batch(self._without_dropped_columns(raw.astype(np.float64)))
        x = torch.as_tensor(raw, dtype=torch.float32) if self._mean is None else standardise_inputs(raw, self._mean, self._std)
        device = next(self.model.parameters()).device
        outputs = torch.cat([self.model(x[i:i + EVAL_CHUNK].to(device)).cpu() for i in range(0, len(x), EVAL_CHUNK)]) \
            if len(x) else torch.zeros((0, self.record["n_outputs"]))
        if self.task == "classification":
            indices = outputs.argmax(dim=-1).numpy()
            return indices if self.classes is None else np.asarray(self.classes)[indices]  # None: a Dataset's own indices
        return outputs.squeeze(-1).double().numpy() * self.record["target_std"] + self.record["target_mean"]

    def _by_name(self, raw_inputs: Any) -> np.ndarray:
        """A data frame's columns in the order the model was trained on, by name (a CSV's; its target and other
        columns left out, the constant columns training dropped optional); a frame that names none of them (e.g.
        numbered columns), and any other input, by position as it is."""
        names = self.record.get("feature_names") or []  # absent from model.pt files written before; empty: not a CSV
        columns = getattr(raw_inputs, "columns", None)
        if not names or columns is None:
            return np.asarray(raw_inputs)
        given = {str(c): c for c in columns}
        if not given.keys() & set(names):
            return np.asarray(raw_inputs)
        dropped = set(self.record.get("dropped_columns") or [])
        missing = [n for i, n in enumerate(names) if n not in given and i not in dropped]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"predict: the data frame has no column {shown}; the model reads the {len(names) - len(dropped)} "
                             f"feature columns it was trained on, by name (others, such as the target, are left out)")
        kept = [given[n] for i, n in enumerate(names) if i not in dropped]
        return np.asarray(raw_inputs[kept])  # as wide as the model's inputs: _without_dropped_columns leaves it so

    def _without_dropped_columns(self, raw: np.ndarray) -> np.ndarray:
        """Raw rows as wide as the CSV's features without the columns training left out (constant ones)."""
        dropped = self.record.get("dropped_columns") or []  # absent from model.pt files written before
        if dropped and len(self.input_shape) == 1 and raw.ndim in (1, 2) and raw.shape[-1] == self.input_shape[0] + len(dropped):
            return np.delete(raw, dropped, axis=-1)
        return raw

    def _batch(self, raw: np.ndarray) -> np.ndarray:
        size = math.prod(self.input_shape)
        if raw.shape == self.input_shape:
            return raw[np.newaxis]
        if raw.shape[1:] == self.input_shape:
            return raw
        if raw.ndim == 2 and raw.shape[1] == size:
            return raw.reshape(-1, *self.input_shape)
        raise ValueError(f"predict: inputs of shape {raw.shape}; expected (n, {', '.join(map(str, self.input_shape))})"
                         + (f" or flat rows (n, {size})" if len(self.input_shape) > 1 else ""))


def load_model(folder: str | Path, model: Callable[..., nn.Module] | None = None) -> TrainedModel:
    """Load the model ``tuner best`` wrote into ``folder`` (or the path of its ``model.pt``).

    The folder is checked first (:func:`check_folder`): a partial or mixed one is refused with a
    :class:`FolderError` that names it, never loaded. ``model``: the factory of a study's own
    ``model.family``, where it cannot be imported by its name (one a script or notebook defined,
    ``"__main__:make_net"``); by default the name is imported, from the copy beside ``model.pt`` first.

    Example:
        >>> model = tuner.load_model("quickstart-best")  # doctest: +SKIP
        >>> model.predict(sklearn.datasets.load_digits().data[:5])  # doctest: +SKIP
        array([0, 1, 2, 3, 4])
    """
    path = Path(folder)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no such file; give the folder `tuner best` wrote (it holds {MODEL_FILE})")
    content = path.read_bytes()  # read once: what is checked is what is loaded
    if path.name == MODEL_FILE:
        check_folder(path.parent, content)
    return TrainedModel(_read_record(content, path), path.parent, model)

