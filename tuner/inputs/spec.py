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
from tuner.inputs.checks import validate

# The names a spec may use and the limits it is checked against, importable from here as before.
from tuner.inputs.names import (  # noqa: F401
    DATASETS,
    DEFAULT_SCHEDULES,
    HANDOFFS,
    LR_RANGES,
    LR_SCALE_AUTO,
    MAX_SEED,
    MIN_SEQUENCE_LENGTH,
    MIN_SPLIT_ROWS,
    OBJECTIVES,
    OPTIMIZERS,
    PRUNERS,
    SAMPLERS,
    SCHEDULES,
    TASKS,
    study_name_problem,
)
from tuner.inputs.params import KNOWN, DeclaredParam, parse_params


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

    # A list of several (e.g. ["adam", "sgd"]) is a choice that changes what a rate means: stage lr
    # calibrates a rate for each, stage shape searches the choice (tuner.inputs.choices). So is batch_size.
    optimizer: str | tuple[str, ...] = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    batch_size: int | tuple[int, ...] = 64
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
    # The rate handed on to stage shape: "backed" reads it from the smoothed U of all the stage's
    # trials (the broadest window among the rates within noise of the smoothed minimum, on a curve
    # where a trial a neighbour backs keeps its weight and that never dips below the trials near a
    # rate: tuner.study.rate_rule); "basin" (contract 6-7) the same on the plain robust curve;
    # "robust" (contract 3-5) the broadest window anywhere, even where the smoothed value is far
    # above the minimum; "best" takes the best trial's rate. Studies stored before each resume with
    # the rule they were made with.
    handoff: str = "backed"


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
    # How the calibrated rate is carried to a shape of another width or depth before lr_scale multiplies
    # it. "rule": moved by the optimizer's rule (Adam and the other adaptive ones as 1/sqrt(width) and
    # 1/sqrt(depth); SGD not moved: tuner.study.lr_scale, docs/lr_shift.csv), so that lr_scale
    # searches a narrow range around each shape's own rate. "none" (contract 3-6, and best.toml): every
    # shape starts from the calibrated rate itself.
    lr_transfer: str = "rule"
    # The epoch from which the pruner may stop a trial. "learned": read once from stage lr's curves (no
    # earlier than learning had clearly begun there, and only where the ranking of the trials that
    # learned already holds), and no decision while every value at a rung sits within noise of its
    # untrained one. "auto" (contract 3-5): the same, ranking every trial, those that never learned too.
    first_rung: int | str = "learned"
    # Parameters only where they act: decay only for schedules that decay (not "constant"); TPE
    # models them in groups (multivariate, group=True). Studies stored before it resume with false:
    # every parameter in every trial, as they were made.
    conditional: bool = True
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
    validate(spec, source)
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
            homes = [home for home in _tables_with(key) if home != prefix.rstrip(".")]
            if key == "params" and cls is not ShapeStageSpec:
                hint = "declare your own parameters in [stages.shape.params]; their default is what stage lr trains with"
            elif key == "lr":
                hint = ("the rate is tuner's own: stage lr calibrates it between [stages.lr] lr_min and lr_max, and stage "
                        "shape scales it for each shape by [stages.shape] lr_scale")
            elif homes and not (cls is ShapeStageSpec and key in KNOWN):  # e.g. epochs in [model]; weight_decay is searched
                # as a declared parameter of stage shape (below), though [train] holds its one value
                where = [f"[{home}]" if home else "at the top of the file, before any [table]" for home in homes]
                hint = f"'{key}' belongs {'in ' if homes[0] else ''}{where[0]}" + (f" (or {', '.join(where[1:])})" if where[1:] else "")
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


def _tables_with(key: str, cls: type | None = None, prefix: str = "") -> list[str]:
    """The tables of a spec that hold ``key`` as a setting (not as a table of its own), e.g. ["train", "stages.lr"]."""
    cls = cls or StudySpec
    found = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            found += _tables_with(key, hint, f"{prefix}{name}.")
        elif name == key and name != "source":
            found.append(prefix.rstrip("."))
    return found


def _coerce(hint: Any, value: Any, path: str, source: str) -> Any:
    if hint == tuple[DeclaredParam, ...]:
        return parse_params(value, path, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        lists = [a for a in inner if typing.get_origin(a) is tuple and typing.get_args(a)[-1] is Ellipsis]
        if lists and len(inner) == 2:  # one value or a list to choose from, e.g. optimizer = ["adam", "sgd"]
            return _one_or_list(next(a for a in inner if a not in lists), value, path, source)
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
            raise SpecError(source, path, value, f"must be a list, e.g. {_example(args, path)}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise SpecError(source, path, value, f"must hold {len(args)} values [min, max], e.g. {_example(args, path)}")
        item = args[0]
        return tuple(_coerce(item, v, path, source) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(source, path, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, path, value, "must be a whole number" + _unquoted(value, int))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(source, path, value, "must be a number" + _unquoted(value, float))
        if not math.isfinite(value):
            raise SpecError(source, path, value, "must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(source, path, value, 'must be a string in quotes, e.g. "value"')
        return value
    raise TypeError(f"unsupported spec field type {hint!r}")  # a bug in this module, not user input


def _unquoted(value: Any, kind: type) -> str:
    """Where a number was written in quotes ("2"), how to write it: ", without quotes: 2"."""
    if isinstance(value, str):
        try:
            number = kind(value.strip())
        except ValueError:
            return ""
        if kind is float and not math.isfinite(number):
            return ""
        return f", without quotes: {value.strip()}"
    return ""


def _one_or_list(item: Any, value: Any, path: str, source: str) -> Any:
    """A value, or a list of distinct values to choose from (a list of one is that value)."""
    if not isinstance(value, list):
        return _coerce(item, value, path, source)
    example = '["adam", "sgd"]' if item is str else "[32, 128]"
    if not value:
        raise SpecError(source, path, value, f"list at least one value, e.g. {example}")
    values = tuple(_coerce(item, v, path, source) for v in value)
    if len(set(values)) < len(values):
        raise SpecError(source, path, value, f"lists a value twice; list each once, e.g. {example}")
    return values[0] if len(values) == 1 else values


# A float pair's example where the generic one would mislead (lr_scale multiplies the rate around 1).
FLOAT_PAIR_EXAMPLES = {"lr_scale": "[0.5, 2.0]", "momentum": "[0.0, 0.99]"}


def _example(args: tuple[Any, ...], path: str = "") -> str:
    if args and args[0] is str:
        return '["constant", "step"]'
    if args and args[0] is int:
        return "[8, 256]"
    return FLOAT_PAIR_EXAMPLES.get(path.rpartition(".")[2], "[1e-3, 1.0]")
