"""The study file (TOML): its fields, their defaults, and validation at the edge.

A spec is read and checked once, here; everything after trusts it. Every error names the file,
the field, the bad value and the fix, so a typo costs the user seconds, not a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from tuner.errors import MISSING as _MISSING
from tuner.errors import SpecError
from tuner.inputs.families import model_families
from tuner.inputs.params import DeclaredParam, parse_params

DATASETS = ("digits", "wine", "breast_cancer", "diabetes", "digits_rows", "digits_images", "adding", "csv", "python")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine")
DEFAULT_SCHEDULES = ("constant", "step", "exponential", "inverse_time")
OBJECTIVES = ("val_error", "val_loss")
TASKS = ("auto", "classification", "regression")
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
LR_RANGES = ("fixed", "auto")
HANDOFFS = ("robust", "best")
LR_SCALE_AUTO = "auto"  # stages.shape.lr_scale: resolved from the optimizer and the shapes (tuner.study.lr_scale)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds lie in [0, 2**32 - 1]
MIN_SEQUENCE_LENGTH = 2  # the adding problem marks two distinct steps
MIN_SPLIT_ROWS = 2  # each of the training and validation parts needs at least this many rows




@dataclass(frozen=True)
class DataSpec:
    """Which data to train on and how to split it."""

    name: str = "digits"
    path: str | None = None  # for name = "csv"
    target: str | None = None  # for name = "csv": the column to predict
    task: str = "auto"  # for name = "csv": classification, regression, or auto (inferred)
    validation_fraction: float = 0.2
    max_rows: int | None = None  # subsample big CSV files for cheap tuning
    sequence_length: int = 20  # for name = "adding"
    samples: int = 2000  # for name = "adding"
    loader: str | None = None  # for name = "python": "module:function" returning the data (README)
    workers: int = 0  # DataLoader worker processes, for data handed over as torch Datasets
    # Held out first, from the seed, and never seen by any stage: only `tuner best` scores on it.
    test_fraction: float = 0.0
    # A CSV's feature columns of one value only are dropped (with a warning): they cannot inform the
    # model. Studies stored before this existed resume with false, as they were made.
    drop_constant_columns: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """The model family and the small network the LR stage calibrates on."""

    family: str = "mlp"
    width: int = 16
    depth: int = 1


@dataclass(frozen=True)
class TrainSpec:
    """How each trial trains: optimizer, batch, epochs, objective, divergence guard."""

    optimizer: str = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 20
    objective: str = "val_error"
    # "maximize": the objective is a score (your own metric or loop: accuracy, F1); tuner's own objectives are
    # errors and losses, minimized.
    direction: str = "minimize"
    # A training loss above this multiple of the untrained model's training loss ends the trial as diverged.
    divergence_factor: float = 10.0
    loop: str | None = None  # "module:function": your own training loop (README: "Your own model")
    loss: str | None = None  # "module:function": loss(outputs, targets) -> scalar tensor
    metric: str | None = None  # "module:function": metric(outputs, targets) -> float, lower is better (or see direction)


@dataclass(frozen=True)
class LRStageSpec:
    """Stage 1: the learning rate, log-uniform, on the small network with a constant rate."""

    trials: int = 30
    lr_min: float = 1e-6
    lr_max: float = 1.0
    epochs: int | None = None  # defaults to train.epochs
    sampler: str = "tpe"
    pruner: str = "none"
    # "auto": an LR range test narrows the search to its suggested range within [lr_min, lr_max].
    lr_range: str = "fixed"
    batched: bool = True  # train trials together as one batched model where the family allows
    batch_trials: int = 16  # trials per batch
    # The rate handed on to stage shape: "robust" reads it from the smoothed U of all the stage's
    # trials (the broadest low basin, tuner.study.rate_rule); "best" takes the best trial's rate.
    # Studies stored before it existed resume with "best", as they were made.
    handoff: str = "robust"


@dataclass(frozen=True)
class ShapeStageSpec:
    """Stage 2: width, depth, schedule and decay, with the LR fixed at stage 1's best."""

    trials: int = 30
    width: tuple[int, int] = (8, 256)
    depth: tuple[int, int] = (1, 3)
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    decay: tuple[float, float] = (1e-3, 1.0)  # final LR / initial LR over the run
    step_every: int | None = None  # epochs between drops of the step schedule; default epochs // 4
    epochs: int | None = None
    sampler: str = "tpe"
    # Optuna's HyperbandPruner, epochs as the resource: shapes that trail at a rung stop early, so
    # the stage reaches the same error for about a third of the compute (BENCHMARKS.md).
    pruner: str = "hyperband"
    # A multiplier on the calibrated rate, searched log-uniformly with the shape: the best rate moves
    # with the shape, by how much depends on the optimizer (docs/lr_shift.csv). "auto": a range
    # from the optimizer and the shapes searched (tuner.study.lr_scale), resolved once at the
    # hand-off and stored; [min, max] around 1 as written; [1, 1] keeps the rate as it is.
    lr_scale: tuple[float, float] | str = "auto"
    # The epoch from which the pruner may stop a trial. "auto": read once from stage lr's curves (no
    # earlier than learning had clearly begun there, and only where the ranking already holds), and
    # no decision while every value at a rung sits within noise of its untrained one.
    first_rung: int | str = "auto"
    # The user's own hyperparameters, searched with the shape; stage lr trains at their defaults
    # (tuner.inputs.params). Stored as a table name -> {low, high, log, int, choices, default}.
    params: tuple[DeclaredParam, ...] = ()


@dataclass(frozen=True)
class AuditStageSpec:
    """Optional check: LR, shape, schedule and momentum sampled jointly at random (Greff et al.)."""

    trials: int = 0
    momentum: tuple[float, float] = (0.0, 0.99)  # 1 - momentum is sampled log-uniformly
    epochs: int | None = None


@dataclass(frozen=True)
class StagesSpec:
    lr: LRStageSpec = field(default_factory=LRStageSpec)
    shape: ShapeStageSpec = field(default_factory=ShapeStageSpec)
    audit: AuditStageSpec = field(default_factory=AuditStageSpec)


@dataclass(frozen=True)
class StudySpec:
    """A whole staged study, as read from a TOML file."""

    name: str
    seed: int = 0
    storage: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    stages: StagesSpec = field(default_factory=StagesSpec)
    source: str = field(default="", compare=False)  # the file it came from, for messages

    def settings(self) -> dict[str, Any]:
        """Everything that decides what a trial computes (not the name, storage or budgets)."""
        full = dataclasses.asdict(self)
        for key in ("name", "storage", "source"):
            full.pop(key)
        full["stages"]["shape"]["params"] = {p.name: p.as_table() for p in self.stages.shape.params}
        return full

    def with_changes(self, **changes: Any) -> StudySpec:
        return dataclasses.replace(self, **changes)


def settings_hash(settings: Mapping[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Example:
        >>> spec = load_spec("studies/quickstart.toml")  # doctest: +SKIP
        >>> spec.stages.lr.trials  # doctest: +SKIP
        24
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpecError(source, "<file>", _MISSING, "no such file; check the path (ready specs are in studies/)")
    if path.is_dir():
        raise SpecError(source, "<file>", _MISSING, "is a directory; give the path of a .toml study file")
    if path.is_fifo() or path.is_socket():
        # Reading it would wait for a writer that may never come.
        raise SpecError(source, "<file>", _MISSING, "is a pipe or socket, not a file; give the path of a .toml study file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(source, "<file>", _MISSING, "is not UTF-8 text; save it as a UTF-8 TOML file") from None
    except OSError as error:
        raise SpecError(source, "<file>", _MISSING, f"cannot read it ({error.strerror or error}); check its permissions") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(source, "<file>", _MISSING, f"malformed TOML ({error}); fix the syntax") from None
    if not table:
        # An empty file (or /dev/null, or only comments) would silently run a full default study.
        raise SpecError(source, "<file>", _MISSING, 'the spec is empty; write at least [data] name = "digits", e.g. copy studies/quickstart.toml')
    if "name" not in table:
        table = {"name": path.stem, **table}
    return spec_from_dict(table, source=source)


def spec_from_dict(table: Mapping[str, Any], source: str = "") -> StudySpec:
    """Build and validate a spec from a plain dict (the parsed TOML), e.g. from Python code."""
    spec = _build(StudySpec, dict(table), "", source)
    spec = dataclasses.replace(spec, source=source)
    _validate(spec, source)
    return spec


def _build(cls: type, table: Any, prefix: str, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise SpecError(source, prefix.rstrip("."), table, "must be a table, e.g. [" + prefix.rstrip(".") + "]")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
            if key == "params" and cls is not ShapeStageSpec:
                hint = "declare your own parameters in [stages.shape.params]; their default is what stage lr trains with"
            elif cls is ShapeStageSpec:  # perhaps a parameter of the user's own, e.g. dropout = [0.2, 0.5]
                hint = (f"{hint + ' Or, ' if close else ''}to search a parameter of your own, declare it in "
                        f"[stages.shape.params], e.g. {key} = {{ low = 0.0, high = 0.5, default = 0.0 }}")
            raise SpecError(source, prefix + key, _MISSING, f"unknown key; {hint}")
    values = {}
    for name in known:
        if name in table:
            values[name] = _coerce(hints[name], table[name], prefix + name, source)
    if cls is StudySpec and "name" not in values:
        raise SpecError(source, "name", _MISSING, 'missing; add e.g. name = "my-study"')
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str, source: str) -> Any:
    if hint == tuple[DeclaredParam, ...]:
        return parse_params(value, path, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if inner == [int, str]:  # a number or a word, e.g. first_rung = 3 or "auto"
            if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                return value
            raise SpecError(source, path, value, 'must be a whole number or a word in quotes, e.g. 3 or "auto"')
        if str in inner:  # a range or a word, e.g. lr_scale = [0.5, 2.0] or "auto"
            if isinstance(value, str):
                return value
            if not isinstance(value, list):
                raise SpecError(source, path, value, 'must be "auto" or a list [min, max], e.g. [0.5, 2.0]')
            inner.remove(str)
        return _coerce(inner[0], value, path, source)
    if origin is tuple:
        if not isinstance(value, list):
            raise SpecError(source, path, value, f"must be a list, e.g. {_example(args)}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise SpecError(source, path, value, f"must hold {len(args)} values [min, max], e.g. {_example(args)}")
        item = args[0]
        return tuple(_coerce(item, v, path, source) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(source, path, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, path, value, "must be a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(source, path, value, "must be a number")
        if not math.isfinite(value):
            raise SpecError(source, path, value, "must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(source, path, value, 'must be a string in quotes, e.g. "value"')
        return value
    raise TypeError(f"unsupported spec field type {hint!r}")  # a bug in this module, not user input


def _example(args: tuple[Any, ...]) -> str:
    if args and args[0] is str:
        return '["constant", "step"]'
    if args and args[0] is int:
        return "[8, 256]"
    return "[1e-3, 1.0]"


def check_direction(spec: StudySpec) -> None:
    """Refuse ``train.direction = "maximize"`` without a metric or loop of the user's own to compute the score.

    Checked once the callables given in Python have joined the spec (``run_study(metric=...)``).
    """
    train = spec.train
    if train.direction == "maximize" and not (train.metric or train.loop):
        raise SpecError(spec.source, "train.direction", train.direction,
                        f"tuner's own objective ({train.objective}) is an error or a loss, always minimized; \"maximize\" "
                        "is for a score your own metric or loop computes: set train.metric = \"module:function\" "
                        "(e.g. accuracy), or leave direction out")


def _choice(source: str, path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(source, path, value, f"unknown name; {hint}choose one of: {', '.join(allowed)}")


def _positive(source: str, path: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise SpecError(source, path, value, "must be greater than 0")


def _range(source: str, path: str, bounds: tuple[float, float], log: bool) -> None:
    low, high = bounds
    if log and (low <= 0 or high <= 0):
        raise SpecError(source, path, list(bounds), "bounds of a log-scaled range must both be > 0")
    if low > high:
        raise SpecError(source, path, list(bounds), "min must not exceed max; write [min, max]")


def _first_rung(source: str, first_rung: int | str, epochs: int, pruner: str) -> None:
    path = "stages.shape.first_rung"
    if isinstance(first_rung, str):
        if first_rung != "auto":
            raise SpecError(source, path, first_rung, 'must be "auto" (read from stage lr\'s curves) or an epoch, e.g. 3')
    elif first_rung < 1:
        raise SpecError(source, path, first_rung, 'must be an epoch >= 1, e.g. 3, or "auto"')
    elif first_rung > epochs and pruner in ("hyperband", "successive_halving"):
        raise SpecError(source, path, first_rung, f'must not exceed the stage\'s epochs ({epochs}); e.g. '
                        f'{max(1, epochs // 4)}, "auto", or pruner = "none"')


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study (its stages are the Optuna studies ``name/lr`` ...), or None."""
    if not name.strip() or "/" in name or any(not char.isprintable() for char in name):
        return "must be non-empty and must not contain '/', NUL, line breaks or other control characters"
    return None


def _validate(spec: StudySpec, source: str) -> None:
    problem = study_name_problem(spec.name)
    if problem:
        raise SpecError(source, "name", spec.name, problem)
    if not 0 <= spec.seed <= MAX_SEED:
        raise SpecError(source, "seed", spec.seed, f"must be a whole number from 0 to {MAX_SEED} (numpy's seed range), e.g. 0")
    data, model, train, stages = spec.data, spec.model, spec.train, spec.stages
    _choice(source, "data.name", data.name, DATASETS)
    _choice(source, "data.task", data.task, TASKS)
    if data.name == "python" and not data.loader:
        raise SpecError(source, "data.loader", _MISSING, 'missing; with name = "python" give loader = "module:function"')
    if data.loader is not None and data.name != "python":
        raise SpecError(source, "data.loader", data.loader, 'is read only with name = "python"; set name = "python" or drop loader')
    if data.workers < 0:
        raise SpecError(source, "data.workers", data.workers, "must be >= 0 (0 loads batches in the training process)")
    for field_path, value in (("data.loader", data.loader), ("train.loop", train.loop), ("train.loss", train.loss),
                              ("train.metric", train.metric)):
        if value is not None and value.count(":") != 1:
            raise SpecError(source, field_path, value, 'write it as "module:function", e.g. "mycode:my_function"')
    if data.name == "csv":
        if not data.path:
            raise SpecError(source, "data.path", _MISSING, 'missing; with name = "csv" give path = "my.csv"')
        if not data.target:
            raise SpecError(source, "data.target", _MISSING, 'missing; name the column to predict, e.g. target = "label"')
    if not 0 < data.validation_fraction < 1:
        raise SpecError(source, "data.validation_fraction", data.validation_fraction, "must lie strictly between 0 and 1, e.g. 0.2")
    if not 0 <= data.test_fraction < 1:
        raise SpecError(source, "data.test_fraction", data.test_fraction, "must lie in [0, 1), e.g. 0.2 (0: no test part)")
    if data.max_rows is not None and data.max_rows < 2 * MIN_SPLIT_ROWS:
        raise SpecError(source, "data.max_rows", data.max_rows,
                        f"too few rows for a split: at least {2 * MIN_SPLIT_ROWS} ({MIN_SPLIT_ROWS} to train, {MIN_SPLIT_ROWS} to validate), e.g. 1000")
    if data.sequence_length < MIN_SEQUENCE_LENGTH:
        raise SpecError(source, "data.sequence_length", data.sequence_length,
                        f"must be at least {MIN_SEQUENCE_LENGTH}: the adding problem marks two different steps; e.g. 20")
    if data.samples < 2 * MIN_SPLIT_ROWS:
        raise SpecError(source, "data.samples", data.samples,
                        f"too few rows for a split: at least {2 * MIN_SPLIT_ROWS} ({MIN_SPLIT_ROWS} to train, {MIN_SPLIT_ROWS} to validate), e.g. 2000")
    if ":" not in model.family:  # "module:function" is imported and checked when the study runs
        _choice(source, "model.family", model.family, model_families())
    _positive(source, "model.width", model.width)
    if model.depth < 1:
        raise SpecError(source, "model.depth", model.depth, "must be at least 1")
    _choice(source, "train.optimizer", train.optimizer, OPTIMIZERS)
    _choice(source, "train.objective", train.objective, OBJECTIVES)
    _choice(source, "train.direction", train.direction, ("minimize", "maximize"))
    if not 0 <= train.momentum < 1:
        raise SpecError(source, "train.momentum", train.momentum, "must lie in [0, 1), e.g. 0.9")
    if train.weight_decay < 0:
        raise SpecError(source, "train.weight_decay", train.weight_decay, "must be >= 0")
    _positive(source, "train.batch_size", train.batch_size)
    _positive(source, "train.epochs", train.epochs)
    if train.divergence_factor <= 1:
        raise SpecError(source, "train.divergence_factor", train.divergence_factor, "must be > 1, e.g. 10")

    lr = stages.lr
    _positive(source, "stages.lr.trials", lr.trials)
    _positive(source, "stages.lr.epochs", lr.epochs)
    for bound in ("lr_min", "lr_max"):
        if getattr(lr, bound) <= 0:
            raise SpecError(source, f"stages.lr.{bound}", getattr(lr, bound), "learning rates must be > 0 (the search is log-scaled)")
    if lr.lr_min >= lr.lr_max:
        raise SpecError(source, "stages.lr.lr_min", lr.lr_min, f"must be below lr_max ({lr.lr_max}); e.g. lr_min = 1e-6, lr_max = 1.0")
    _choice(source, "stages.lr.sampler", lr.sampler, SAMPLERS)
    _choice(source, "stages.lr.pruner", lr.pruner, PRUNERS)
    _choice(source, "stages.lr.lr_range", lr.lr_range, LR_RANGES)
    _choice(source, "stages.lr.handoff", lr.handoff, HANDOFFS)
    if lr.batch_trials < 1:
        raise SpecError(source, "stages.lr.batch_trials", lr.batch_trials, "must be at least 1, e.g. 16 (1 trains one trial at a time)")

    shape = stages.shape
    _positive(source, "stages.shape.trials", shape.trials)
    _positive(source, "stages.shape.epochs", shape.epochs)
    _positive(source, "stages.shape.step_every", shape.step_every)
    _range(source, "stages.shape.width", shape.width, log=True)
    _range(source, "stages.shape.depth", shape.depth, log=True)
    _range(source, "stages.shape.decay", shape.decay, log=True)
    if shape.decay[1] > 1:
        raise SpecError(source, "stages.shape.decay", list(shape.decay), "is final LR / initial LR, so at most 1; e.g. [1e-3, 1.0]")
    if not shape.schedules:
        raise SpecError(source, "stages.shape.schedules", [], f"list at least one of: {', '.join(SCHEDULES)}")
    for name in shape.schedules:
        _choice(source, "stages.shape.schedules", name, SCHEDULES)
    _choice(source, "stages.shape.sampler", shape.sampler, SAMPLERS)
    _choice(source, "stages.shape.pruner", shape.pruner, PRUNERS)
    scale_fix = 'is a multiplier on the calibrated rate: "auto", or [min, max] around 1, e.g. [0.33, 3.0] ([1.0, 1.0] keeps the rate)'
    if isinstance(shape.lr_scale, str):
        if shape.lr_scale != LR_SCALE_AUTO:
            raise SpecError(source, "stages.shape.lr_scale", shape.lr_scale, scale_fix)
    else:
        _range(source, "stages.shape.lr_scale", shape.lr_scale, log=True)
        if not shape.lr_scale[0] <= 1 <= shape.lr_scale[1]:
            raise SpecError(source, "stages.shape.lr_scale", list(shape.lr_scale), scale_fix)
    _first_rung(source, shape.first_rung, shape.epochs or train.epochs, shape.pruner)

    audit = stages.audit
    if audit.trials < 0:
        raise SpecError(source, "stages.audit.trials", audit.trials, "must be >= 0 (0 turns the audit stage off)")
    _positive(source, "stages.audit.epochs", audit.epochs)
    low, high = audit.momentum
    if not (0 <= low <= high < 1):
        raise SpecError(source, "stages.audit.momentum", list(audit.momentum), "must be [min, max] within [0, 1), e.g. [0.0, 0.99]")
