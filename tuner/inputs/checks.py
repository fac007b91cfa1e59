"""The checks a spec passes at load: every field in range, named in one line when it is not.

:func:`validate` runs in :func:`tuner.inputs.spec.spec_from_dict` (every spec, from a file or a
dict); :func:`check_direction` once the callables given in Python have joined the spec.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from tuner.errors import MISSING as _MISSING
from tuner.errors import SpecError
from tuner.inputs.choices import values_of
from tuner.inputs.families import model_families
from tuner.inputs.names import (
    DATASETS,
    HANDOFFS,
    LR_RANGES,
    LR_SCALE_AUTO,
    LR_TRANSFERS,
    MAX_SEED,
    MIN_SEQUENCE_LENGTH,
    MIN_SPLIT_ROWS,
    OBJECTIVES,
    OPTIMIZERS,
    PRUNERS,
    RUNG_RULES,
    SAMPLERS,
    SCHEDULES,
    TASKS,
    study_name_problem,
)

if TYPE_CHECKING:
    from tuner.inputs.spec import StudySpec

__all__ = ["check_direction", "validate"]


def check_direction(spec: StudySpec) -> None:
    """Refuse ``train.direction = "maximize"`` without a metric or loop of the user's own to compute the score.

    Checked once the callables given in Python have joined the spec (``run_study(metric=...)``).
    """
    train = spec.train
    if train.direction != "maximize" or train.loop:
        return
    if not train.metric:
        raise SpecError(spec.source, "train.direction", train.direction,
                        f"tuner's own objective ({train.objective}) is an error or a loss, always minimized; \"maximize\" "
                        "is for a score your own metric or loop computes: set train.metric = \"module:function\" "
                        "(e.g. accuracy), or leave direction out")
    if train.objective != "val_error":  # a metric replaces val_error only: val_loss stays the loss
        raise SpecError(spec.source, "train.direction", train.direction,
                        f"with objective = {train.objective!r} the value is the validation loss, always minimized (your "
                        "metric replaces val_error only); set objective = \"val_error\" to maximize your metric, or leave "
                        "direction out")


def _choice(source: str, path: str, value: str, allowed: tuple[str, ...], also: str = "") -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(source, path, value, f"unknown name; {hint}choose one of: {', '.join(allowed)}{also}")


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
        if first_rung not in RUNG_RULES:
            raise SpecError(source, path, first_rung, 'must be "learned" (read from stage lr\'s curves), "auto" (the '
                            'same, ranking every trial, as contract 3-5 did) or an epoch, e.g. 3')
    elif first_rung < 1:
        raise SpecError(source, path, first_rung, 'must be an epoch >= 1, e.g. 3, or "learned"')
    elif first_rung > epochs and pruner in ("hyperband", "successive_halving"):
        raise SpecError(source, path, first_rung, f'must not exceed the stage\'s epochs ({epochs}); e.g. '
                        f'{max(1, epochs // 4)}, "learned", or pruner = "none"')


def validate(spec: StudySpec, source: str) -> None:
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
        module, dot, function = model.family.rpartition(".")
        if dot and module and function.isidentifier() and model.family not in model_families():  # "mymodels.make_mlp"
            raise SpecError(source, "model.family", model.family,
                            f'your own factory is written "module:function", with a colon: "{module}:{function}"')
        _choice(source, "model.family", model.family, model_families(),
                ', or your own factory as "module:function" (e.g. "mynet:make_model")')
    _positive(source, "model.width", model.width)
    if model.depth < 1:
        raise SpecError(source, "model.depth", model.depth, "must be at least 1")
    for optimizer in values_of(spec, "optimizer"):
        _choice(source, "train.optimizer", optimizer, OPTIMIZERS)
    _choice(source, "train.objective", train.objective, OBJECTIVES)
    _choice(source, "train.direction", train.direction, ("minimize", "maximize"))
    if not 0 <= train.momentum < 1:
        raise SpecError(source, "train.momentum", train.momentum, "must lie in [0, 1), e.g. 0.9")
    if train.weight_decay < 0:
        raise SpecError(source, "train.weight_decay", train.weight_decay, "must be >= 0")
    for batch_size in values_of(spec, "batch_size"):
        _positive(source, "train.batch_size", batch_size)
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
    for field, bounds in (("width", shape.width), ("depth", shape.depth)):
        if min(bounds) < 1:  # searched on a log scale, but the reason to give is the count's
            raise SpecError(source, f"stages.shape.{field}", list(bounds), f"a network's {field} is at least 1; e.g. [1, {max(2, max(bounds))}]")
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
            close = difflib.get_close_matches(shape.lr_scale.lower(), [LR_SCALE_AUTO], n=1, cutoff=0.5)
            raise SpecError(source, "stages.shape.lr_scale", shape.lr_scale,
                            (f"did you mean \"{LR_SCALE_AUTO}\"? " if close else "") + scale_fix)
    else:
        _range(source, "stages.shape.lr_scale", shape.lr_scale, log=True)
        if not shape.lr_scale[0] <= 1 <= shape.lr_scale[1]:
            raise SpecError(source, "stages.shape.lr_scale", list(shape.lr_scale), scale_fix)
    _choice(source, "stages.shape.lr_transfer", shape.lr_transfer, LR_TRANSFERS)
    _first_rung(source, shape.first_rung, shape.epochs or train.epochs, shape.pruner)

    audit = stages.audit
    if audit.trials < 0:
        raise SpecError(source, "stages.audit.trials", audit.trials, "must be >= 0 (0 turns the audit stage off)")
    _positive(source, "stages.audit.epochs", audit.epochs)
    low, high = audit.momentum
    if not (0 <= low <= high < 1):
        raise SpecError(source, "stages.audit.momentum", list(audit.momentum), "must be [min, max] within [0, 1), e.g. [0.0, 0.99]")
