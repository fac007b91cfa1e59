"""The winner out: train a study's best configuration again, save it, and load it to predict.

:func:`write_best` reads the best complete trial of the study's last stage before the audit
(``shape``; ``lr`` while ``shape`` has none), rebuilds the spec from the settings stored on that
stage's study, trains the trial's configuration again with the same seed and writes three files:

- ``best.toml``: a spec whose ``shape`` stage trains exactly that configuration (one trial);
- ``model.pt``: a plain dict (loadable with ``torch.load(..., weights_only=True)``): the weights
  and what rebuilds the model and preprocesses raw inputs (see :data:`MODEL_KEYS`);
- ``metrics.json``: validation (and test, when the data has a test part) error and loss, the trial
  it came from and the value stored for it, which ``refit = "train"`` reproduces.

:func:`load_model` reads ``model.pt`` back as a :class:`TrainedModel` whose ``predict`` takes raw
inputs, standardises them as in training and returns the original class labels or target values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from tuner.data import Dataset, StreamedData, load_dataset, sample_shape, standardise_inputs
from tuner.results import load_stage_studies, trained_params
from tuner.models import build_model, register_model
from tuner.runner import TunerError
from tuner.results import SPEC_PATH_ATTR
from tuner.spec import StudySpec, spec_from_dict
from tuner.usercode import identity, install, is_reference, load_callable, spec_folder
from tuner.stages import Stage, lr_stage, shape_stage
from tuner.train import EVAL_CHUNK, evaluate, resolve_device, seeded_model, train_epochs, use_threads

SPEC_FILE = "best.toml"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
REFITS = ("train", "train+val")
MODEL_FORMAT = 1  # raised when the keys of model.pt change meaning
MODEL_KEYS = (
    "format", "tuner_version", "family", "width", "depth", "input_shape", "n_outputs", "task",
    "state_dict", "x_mean", "x_std", "classes", "target_mean", "target_std", "code_folder",
)


class BestError(ValueError):
    """A study whose winner cannot be trained again (no complete trial, a bad refit): bad input."""


@dataclass(frozen=True)
class BestResult:
    """What :func:`write_best` wrote, and the metrics it wrote into ``metrics.json``."""

    folder: Path
    spec_path: Path
    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any]


def write_best(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    out: str | Path | None = None,
    *,
    refit: str = "train",
    device: str = "auto",
) -> BestResult:
    """Train the best configuration of study ``name`` again (same seed) and write it into ``out``.

    Example:
        >>> result = tuner.write_best("quickstart", "sqlite:///tuner.db", "quickstart-best")  # doctest: +SKIP
        >>> result.metrics["validation"]["error"] == result.metrics["stored_value"]  # doctest: +SKIP
        True

    Args:
        name: the study's name (its stages are the Optuna studies ``<name>/<stage>``).
        storage: an Optuna storage URL (default ``sqlite:///tuner.db``) or storage object.
        out: the folder to write into (created if missing); default ``<name>-best``.
        refit: ``train``: the trial's own training part, so the validation score reproduces the
            stored one; ``train+val``: training and validation parts together (the validation score
            is then no fair estimate; the test part, if any, still is).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        tuner.importance.UnknownStudyError: no study of that name in the storage.
        BestError: no complete trial, an unknown ``refit``, or ``out`` is a file.
    """
    if refit not in REFITS:
        raise BestError(f"--refit {refit!r}: choose one of {', '.join(REFITS)}")
    resolve_device(device)  # an unknown name, or cuda without a GPU: before any work
    folder = Path(out if out is not None else f"{name}-best")
    if folder.exists() and not folder.is_dir():
        raise BestError(f"--out {str(folder)!r}: is a file; give a folder (created if missing)")
    spec, stage, trial = _best_trial(name, storage)
    install(spec)
    plan = stage.plan(trial.params)
    torch_device = resolve_device(device)
    use_threads(None, torch_device)  # $TUNER_THREADS, else one on the CPU, as tuner study
    data = load_dataset(spec.data, spec.seed, spec.source).to(torch_device)
    fit_data = data
    if refit == "train+val":
        if isinstance(data, StreamedData):
            fit_data = dataclasses.replace(data, train_set=torch.utils.data.ConcatDataset([data.train_set, data.val_set]))
        else:
            fit_data = dataclasses.replace(data, x_train=torch.cat([data.x_train, data.x_val]),
                                           y_train=torch.cat([data.y_train, data.y_val]))
    model = seeded_model(spec.model.family, fit_data, plan.width, plan.depth, plan.train.seed)
    loop_value = None
    if spec.train.loop:
        loop_value = _train_with_loop(spec, model, fit_data, plan, torch_device, trial)
        diverged = not math.isfinite(loop_value)
    else:
        last = None
        for last in train_epochs(model, fit_data, plan.train):
            pass
        diverged = last is None or last.diverged
    if diverged:
        raise TunerError(f"study {name!r}: trial {trial.number} of stage '{stage.name}' diverged when trained again "
                         f"(refit {refit}); try --refit train")
    val_loss, val_error = evaluate(model, data, plan.train)
    objective = spec.train.objective
    metrics: dict[str, Any] = {
        "study": name,
        "stage": stage.name,
        "trial": trial.number,
        "params": trained_params(trial.params, stage.fixed),
        "objective": objective,
        "stored_value": trial.value,
        "refit": refit,
        "seed": spec.seed,
        "epochs": plan.train.epochs,
        "task": data.task,
        "error_is": "1 - accuracy" if data.task == "classification" else "RMSE in the target's units",
        "train_rows": _rows(fit_data, "train"),
        "validation": {
            "error": val_error,
            "loss": val_loss,
            # A user's loop reports its own objective: the value its last report (or return) gave.
            "value": loop_value if loop_value is not None else val_error if objective == "val_error" else val_loss,
            "rows": _rows(data, "val"),
            "fair": refit == "train",
        },
        "test": None,
        "note": (
            "validation: the rows every trial was scored on; with refit train, 'value' reproduces 'stored_value'"
            if refit == "train" else
            "refit train+val: the model was trained on the validation rows too, so the validation numbers are "
            "no fair estimate of its error on new data (and need not reproduce 'stored_value'); the test part is"
        ),
    }
    if _rows(data, "test"):
        test_loss, test_error = evaluate(model, data, plan.train, part="test")
        metrics["test"] = {"error": test_error, "loss": test_loss, "rows": _rows(data, "test")}

    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / SPEC_FILE
    spec_path.write_text(best_spec_text(spec, name, stage, trial, plan_values=_plan_values(plan), refit=refit),
                         encoding="utf-8")
    model_path = folder / MODEL_FILE
    torch.save(_model_record(model, spec, data, plan.width, plan.depth), model_path)
    metrics_path = folder / METRICS_FILE
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return BestResult(folder, spec_path, model_path, metrics_path, metrics)


def _rows(data: Dataset | StreamedData, part: str) -> int:
    if isinstance(data, StreamedData):
        dataset = {"train": data.train_set, "val": data.val_set, "test": data.test_set}[part]
        return 0 if dataset is None else len(dataset)
    tensor = {"train": data.x_train, "val": data.x_val, "test": data.x_test}[part]
    return 0 if tensor is None else len(tensor)


def _train_with_loop(spec: StudySpec, model: nn.Module, data: Any, plan: Any, device: torch.device,
                     trial: FrozenTrial) -> float:
    """Train ``model`` with the spec's own loop, as its trial did; the objective it gave last (NaN: none, or diverged)."""
    from tuner.trials import StopTrial, call_user_loop

    loop = load_callable(spec.train.loop or "", "train.loop", spec.source)
    values: list[float] = []

    def record(epoch: int, value: float, train_loss: float) -> None:
        values.append(value)
        if not math.isfinite(value):
            raise StopTrial("diverged")

    try:
        returned = call_user_loop(loop, model, data, plan.train, device, record, dict(trial.params))
    except StopTrial:
        return math.nan
    if returned is not None:
        values.append(float(returned))  # type: ignore[arg-type]
    return values[-1] if values else math.nan


def _best_trial(name: str, storage: str | optuna.storages.BaseStorage | None) -> tuple[StudySpec, Stage, FrozenTrial]:
    """The spec (from the stored settings), the stage and the best complete trial to train again."""
    studies = load_stage_studies(name, storage)
    for stage_name in ("shape", "lr"):  # the last stage before the audit that has a complete trial
        study = studies.get(stage_name)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study else []
        complete = [t for t in complete if t.value is not None and math.isfinite(t.value)]
        if complete:
            break
    else:
        raise BestError(f"study {name!r}: no complete trial in stage 'lr' or 'shape' yet; run "
                        f"`tuner study` to the end (or until a trial completes), then again `tuner best`")
    best = min(complete, key=lambda t: (t.value, t.number))
    settings = study.user_attrs.get("settings")
    if settings is None:
        raise BestError(f"study {name!r}: stage '{stage_name}' has no stored settings; was it made by tuner?")
    stored = {key: value for key, value in _without_none(settings).items() if key != "identity"}
    spec_path = study.user_attrs.get(SPEC_PATH_ATTR, "")
    spec = spec_from_dict({**stored, "name": name}, source=spec_path)
    if "identity" in settings:
        install(spec)
        if identity(spec) != settings["identity"]:
            raise BestError(f"study {name!r}: its own code or data file changed since its trials ran (see "
                            f"`tuner study` on it); put them back to train its winner again")
    if stage_name == "shape":
        lr = best.user_attrs.get("lr", study.user_attrs.get("lr"))
        stage = shape_stage(spec, float(lr))
    else:
        stage = lr_stage(spec)
    return spec, stage, best


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    """Stored settings hold unset optional fields as None (JSON null); a spec leaves them out."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def _plan_values(plan: Any) -> dict[str, Any]:
    return {"lr": plan.train.lr, "width": plan.width, "depth": plan.depth, "schedule": plan.train.schedule,
            "decay": plan.train.decay, "epochs": plan.train.epochs}


def best_spec_text(spec: StudySpec, name: str, stage: Stage, trial: FrozenTrial, *, plan_values: dict[str, Any],
                   refit: str) -> str:
    """``best.toml``: the stored settings with every searched value pinned to the winner's."""
    table = spec.settings()
    table = {"name": f"{name}-best", **table}
    lr = plan_values["lr"]
    table["stages"]["lr"].update(trials=1, lr_min=lr, lr_max=math.nextafter(lr, math.inf), lr_range="fixed")
    table["stages"]["shape"].update(
        trials=1,
        width=[plan_values["width"]] * 2,
        depth=[plan_values["depth"]] * 2,
        schedules=[plan_values["schedule"]],
        decay=[plan_values["decay"]] * 2,
        epochs=plan_values["epochs"],
        lr_scale=[1.0, 1.0],  # the winner's rate already holds its scale
        pruner="none",  # one trial, trained to the end
    )
    table["stages"]["audit"]["trials"] = 0
    header = [
        f"# The best configuration of study '{name}': trial {trial.number} of stage '{stage.name}'"
        f" ({spec.train.objective} {trial.value:.6g}), written by `tuner best`.",
        "#",
        "#   tuner study best.toml      # trains it again as the one trial of stage 'shape'",
        "#",
        "# Every searched value is pinned: width, depth, schedule and decay to one value each, and the",
        "# learning rate to [lr, the next float above lr] (the spec format needs lr_min < lr_max), so stage",
        "# 'lr' hands on that rate and stage 'shape' trains exactly the winner, with the same seed and data.",
    ]
    if refit == "train+val":
        header.append("# (model.pt was refit on training + validation rows: a spec always holds validation out.)")
    text = "\n".join(header) + "\n\n" + _toml(table)
    spec_from_dict(tomllib.loads(text))  # what we write must read back as a valid spec
    return text


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """The spec's settings as TOML: scalars first, then each sub-table; None (a default) left out."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items()
             if value is not None and not isinstance(value, dict)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in table.items():
        if isinstance(value, dict):
            inner = _toml(value, f"{prefix}{key}.")
            if not any(not isinstance(v, dict) for v in value.values()):
                text += inner  # a table of tables only ([stages]): its sub-tables carry the headers
            else:
                text += f"\n[{prefix}{key}]\n{inner}"
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # a bug: specs hold only the types above


def _model_record(model: nn.Module, spec: StudySpec, data: Dataset | StreamedData, width: int, depth: int) -> dict[str, Any]:
    """model.pt: only tensors and plain types, so that ``torch.load(weights_only=True)`` reads it."""
    as_tensor = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    folder = spec_folder(spec.source) if is_reference(spec.model.family) else None
    return {
        "format": MODEL_FORMAT,
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
    }


def _tuner_version() -> str:
    try:
        return metadata.version("tuner")
    except metadata.PackageNotFoundError:
        return "unknown"


class TrainedModel:
    """A model written by ``tuner best``, with the preprocessing it was trained with.

    Attributes:
        model: the ``nn.Module`` (in evaluation mode, on the CPU).
        task: ``classification`` or ``regression``.
        classes: the original class labels, in the order of the model's outputs (None: regression).
        input_shape: one raw sample's shape, e.g. ``(1, 8, 8)`` or ``(13,)``.
        record: everything read from ``model.pt``.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.task: str = record["task"]
        self.input_shape = tuple(record["input_shape"])
        self.classes = record["classes"]
        family = record["family"]
        if is_reference(family):  # the user's own factory: from sys.path, else from the study's folder
            folder = record.get("code_folder")
            factory = load_callable(family, "model.family", str(Path(folder) / "spec.toml") if folder else "")
            register_model(family, factory, inputs="shape")
        self.model = build_model(record["family"], self.input_shape, record["n_outputs"], record["width"], record["depth"])
        self.model.load_state_dict(record["state_dict"])
        self.model.eval()
        self._mean = None if record["x_mean"] is None else record["x_mean"].numpy()
        self._std = None if record["x_std"] is None else record["x_std"].numpy()

    @torch.no_grad()
    def predict(self, raw_inputs: Any) -> np.ndarray:
        """Class labels (as in the data) or values (in the target's units) for raw, unstandardised inputs.

        ``raw_inputs``: a numpy array or tensor of samples shaped like the data's samples (e.g.
        ``(n, 1, 8, 8)``), or flat rows ``(n, features)`` (e.g. scikit-learn's ``(n, 64)`` digits);
        one sample alone gives an array of one.
        """
        raw = raw_inputs.detach().cpu().numpy() if isinstance(raw_inputs, torch.Tensor) else np.asarray(raw_inputs)
        raw = self._batch(raw.astype(np.float64))
        x = torch.as_tensor(raw, dtype=torch.float32) if self._mean is None else standardise_inputs(raw, self._mean, self._std)
        device = next(self.model.parameters()).device
        outputs = torch.cat([self.model(x[i:i + EVAL_CHUNK].to(device)).cpu() for i in range(0, len(x), EVAL_CHUNK)]) \
            if len(x) else torch.zeros((0, self.record["n_outputs"]))
        if self.task == "classification":
            indices = outputs.argmax(dim=-1).numpy()
            return indices if self.classes is None else np.asarray(self.classes)[indices]  # None: a Dataset's own indices
        return outputs.squeeze(-1).double().numpy() * self.record["target_std"] + self.record["target_mean"]

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


def load_model(folder: str | Path) -> TrainedModel:
    """Load the model ``tuner best`` wrote into ``folder`` (or the path of its ``model.pt``).

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
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ValueError(f"{str(path)!r}: not a model written by this version of `tuner best`")
    return TrainedModel(record)
