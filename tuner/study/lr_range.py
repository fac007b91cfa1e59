"""``lr_range = "auto"``: the learning-rate range test run once per study, kept on ``<name>/lr``.

The test itself is :func:`tuner.training.lr_find.lr_find`; here it becomes stage ``lr``'s bounds,
stored on the study so that a resumed or shared stage reads them rather than testing again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna

from tuner.inputs.data import Dataset
from tuner.inputs.spec import StudySpec
from tuner.inputs.usercode import UserCode
from tuner.study.stored import LR_FIND_ATTR, stage_study_name
from tuner.training.lr_find import END_LR, START_LR, LRFindResult, lr_find, search_bounds


def _as_record(result: LRFindResult, bounds: tuple[float, float]) -> dict[str, Any]:
    finite_or_none = lambda values: [v if math.isfinite(v) else None for v in values]  # noqa: E731 -- JSON has no NaN
    return {
        "lrs": result.lrs,
        "losses": finite_or_none(result.losses),
        "suggestion": asdict(result.suggestion) if result.suggestion else None,
        "problem": result.problem,
        "bounds": list(bounds),
    }


def auto_lr_range(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage | optuna.Study,
    data: Dataset,
    message: Callable[[str], None] = lambda text: None,
    code: UserCode | None = None,
) -> tuple[float, float] | None:
    """The LR stage's bounds for ``lr_range = "auto"``: the range test's suggestion within [lr_min, lr_max].

    The test runs once per study; its record (rates, losses, suggestion, bounds) is stored as user
    attribute ``lr_find`` of the ``<name>/lr`` study, and a resume reads the bounds from there.
    ``storage``: the storage, or the ``<name>/lr`` study itself. Returns None for ``lr_range =
    "fixed"``. If the curve supports no suggestion, the stage searches all of [lr_min, lr_max] and
    says so.
    """
    lr = spec.stages.lr
    if lr.lr_range != "auto":
        return None
    if isinstance(storage, optuna.Study):
        study = storage  # the runner's <name>/lr, already opened with its settings
    else:
        study = optuna.create_study(study_name=stage_study_name(spec.name, "lr"), storage=storage, direction=spec.train.direction,
                                    load_if_exists=True)
    stage = study.study_name.rpartition("/")[2]  # lr, or a variant's: lr[optimizer=adam]
    stored = study.user_attrs.get(LR_FIND_ATTR)
    if stored is not None:
        return float(stored["bounds"][0]), float(stored["bounds"][1])
    # The ramp covers at least the allowed range, so that the test sees where the loss blows up.
    result = lr_find(spec, start_lr=min(START_LR, lr.lr_min), end_lr=max(END_LR, lr.lr_max), data=data, code=code)
    bounds = search_bounds(result.suggestion, lr.lr_min, lr.lr_max) if result.suggestion else None
    if bounds is None:
        why = result.problem or f"its range {result.suggestion.search_min:.3g} – {result.suggestion.search_max:.3g} lies outside"  # type: ignore[union-attr]
        message(f"LR range test: no usable suggestion ({why}); stage '{stage}' searches all of {lr.lr_min:.3g} – {lr.lr_max:.3g}")
        bounds = (lr.lr_min, lr.lr_max)
    else:
        message(f"LR range test: suggested {result.suggestion.lr:.3g}; stage '{stage}' searches {bounds[0]:.3g} – {bounds[1]:.3g}")  # type: ignore[union-attr]
    study.set_user_attr(LR_FIND_ATTR, _as_record(result, bounds))
    return bounds
