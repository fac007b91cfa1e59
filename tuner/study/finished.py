"""A finished study read back from its storage instead of run: the resume that has nothing to train.

Running a study's command again once every stage has its budget of finished trials trains nothing,
but the runner's way there (import torch, load the data, build and check the model, then open the
storage) took about 4 s for the quickstart, 1.4 s of it torch's import. So the storage is read
first: when every stage the spec runs has its budget of finished trials, none running, and its
records of the hand-off stored, and the spec's settings and the identity of the user's code (read
from its files, not run) are those the stages were made with (:func:`check_stored_settings`), the
study's result is built from the storage alone. Otherwise :func:`finished_result` returns None and
the runner runs as before, with every check it makes: this is a shortcut, never another answer.
No torch and no scikit-learn here.

Not taken: a study with an audit stage (its verdict is judged again, with scikit-learn's forests),
and one whose stored code identity differs from what its files say now (the runner, which imports
the code, decides whether it changed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from tuner.errors import StudyMismatchError
from tuner.inputs.choices import variants
from tuner.inputs.families import ModelFamily
from tuner.inputs.names import RUNG_RULES
from tuner.inputs.spec import LR_SCALE_AUTO, StudySpec
from tuner.inputs.usercode import UserCode
from tuner.storage import StorageError, is_proxy_url, open_existing_storage, redact
from tuner.study import results
from tuner.study.stage_studies import check_stored_settings, storage_error_of, storage_of_study, with_stored_defaults
from tuner.study.stages import fixed_settings
from tuner.study.stored import FIRST_RUNG_ATTR, LR_SCALE_RANGE_ATTR, stage_kind, stage_study_name

if TYPE_CHECKING:
    from tuner.study.progress import Reporter

DEVICES = ("auto", "cpu", "cuda")  # what --device takes (tuner.training.train.resolve_device)
THREADS_ENV = "TUNER_THREADS"  # as tuner.training.train.THREADS_ENV, which comes with torch


def finished_result(spec: StudySpec, storage: str | None = None, *, reporter: Reporter | None = None,
                    given: Mapping[str, Callable[..., Any] | None] | None = None, device: str = "auto",
                    threads: int | None = None) -> results.StudyResult | None:
    """The study's result as stored, if there is nothing left to run and nothing changed; else None.

    ``spec`` names the given callables already (:func:`tuner.inputs.usercode.with_callables`);
    ``given``: those callables by field (``model``, ``loader``, ...), whose identity is read from
    them; the spec's other ``module:function`` names are found without being imported. ``device``
    and ``threads``: the runner's own; where it would refuse them, None (it says why).

    Example:
        >>> result = finished_result(load_spec("studies/quickstart.toml"))  # doctest: +SKIP
        >>> result is None or result.best_lr > 0  # doctest: +SKIP
        True
    """
    if spec.stages.audit.trials > 0 or not _plain_inputs(device, threads):
        return None
    try:
        url = storage_of_study(spec, storage)
        opened = open_existing_storage(url)  # read-only: a storage that does not exist stays so
    except StorageError as error:
        if is_proxy_url(storage or spec.storage or ""):  # no proxy answered within its wait: the runner would
            raise storage_error_of(spec, storage, error) from None  # only wait again (94 s in all, saying 30)
        return None  # the runner opens it and says what is wrong, or creates it
    existing = set(optuna.get_all_study_names(opened))
    every = variants(spec)
    names = {stage: stage_study_name(spec.name, stage) for stage in (*(v.label for v in every), "shape")}
    ours = {name for name in existing if name.startswith(f"{spec.name}/")}
    if ours != set(names.values()):
        return None  # a stage missing, or one this shortcut does not read (the audit, another layout): the runner's
    studies = {stage: optuna.load_study(study_name=name, storage=opened) for stage, name in names.items()}
    if not _nothing_to_run(with_stored_defaults(spec, opened), studies):
        return None
    notes: list[str] = []
    try:
        spec = check_stored_settings(spec, opened, notes.append, _given_code(spec, given or {}))
    except StudyMismatchError:
        return None  # the runner, which imports the user's code, says what changed (or finds that nothing did)
    say = reporter.message if reporter is not None else (lambda text: None)
    for note in notes:
        say(note)
    shape = studies["shape"].user_attrs
    best_lr = float(shape[results.LR_ATTR])
    summaries = {stage: results.stage_summary(study, stage, _budget(spec, stage),
                                              fixed_settings(spec, stage_kind(stage), best_lr))
                 for stage, study in studies.items()}
    rates = results.handed_rates(shape) if len(every) > 1 else {}
    done = ", ".join(f"stage {s.stage} {s.n_complete + s.n_pruned}/{s.budget}" for s in summaries.values())
    say(f"study '{spec.name}' is finished ({done} trials): nothing to run; its results as stored")
    return results.StudyResult(spec.name, redact(url), best_lr, summaries, None, rates=rates)


def _plain_inputs(device: str, threads: int | None) -> bool:
    """Whether the runner would take ``device`` and ``threads`` (else it runs, to refuse them in its words)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    env_ok = not text or (text.isdigit() and int(text) >= 1)
    return device in DEVICES and (threads is None or threads >= 1) and env_ok


def _budget(spec: StudySpec, stage: str) -> int:
    return int(getattr(spec.stages, stage_kind(stage)).trials)


def _nothing_to_run(spec: StudySpec, studies: dict[str, optuna.Study]) -> bool:
    """Every stage at its budget with none running, and every record the runner would write on resume written."""
    for stage, study in studies.items():
        attrs = study.user_attrs
        if attrs.get(results.BUDGET_ATTR) != _budget(spec, stage) or results.TASK_ATTR not in attrs:
            return False
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.RUNNING for t in trials):
            return False
        if sum(t.state in results.FINISHED for t in trials) < _budget(spec, stage):
            return False
    shape_spec, shape = spec.stages.shape, studies["shape"].user_attrs
    if results.LR_ATTR not in shape or (len(studies) > 2 and results.RATES_ATTR not in shape):
        return False
    if shape_spec.lr_scale == LR_SCALE_AUTO and LR_SCALE_RANGE_ATTR not in shape:
        return False
    return not (shape_spec.first_rung in RUNG_RULES and shape_spec.pruner != "none" and FIRST_RUNG_ATTR not in shape)


def _given_code(spec: StudySpec, given: Mapping[str, Callable[..., Any] | None]) -> UserCode:
    """The callables handed over from Python, as :func:`tuner.inputs.usercode.resolve_code` would hold them,
    without importing what the spec names (its identity is read from the module's file)."""
    present = {name: function for name, function in given.items() if function is not None}
    model = present.pop("model", None)
    family: str | ModelFamily = ModelFamily(spec.model.family, model) if model is not None else spec.model.family
    return UserCode(family=family, **present)
