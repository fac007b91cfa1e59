"""tuner: staged hyperparameter tuning for PyTorch models on Optuna.

Calibrate the learning rate first, on a small and cheap network; then tune the network's size and
the decay schedule at that rate; optionally audit the assumption that made this cheap. Every
command of the ``tuner`` CLI is one call here.

Example:
    >>> import tuner
    >>> result = tuner.run_study("studies/quickstart.toml")  # doctest: +SKIP
    >>> result.best_lr  # doctest: +SKIP
    >>> tuner.write_importance("quickstart", out="out")  # doctest: +SKIP
    >>> tuner.write_report("quickstart", out="quickstart-report")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it. Loaded on first use, so that importing tuner (and
# `tuner --help`) does not pay for torch, optuna and scikit-learn until they are needed.
_EXPORTS = {
    "run_study": "tuner.study.runner",
    "run_stage": "tuner.study.runner",
    "ConsoleReporter": "tuner.study.progress",
    "ProgressBar": "tuner.study.progress",
    "StopTrial": "tuner.training.trainers",
    "Reporter": "tuner.study.progress",
    "StageSummary": "tuner.study.results",
    "StudyResult": "tuner.study.results",
    "TunerError": "tuner.study.runner",
    "StudyMismatchError": "tuner.study.runner",
    "load_spec": "tuner.inputs.spec",
    "spec_from_dict": "tuner.inputs.spec",
    "StudySpec": "tuner.inputs.spec",
    "SpecError": "tuner.inputs.spec",
    "open_storage": "tuner.storage",
    "StorageError": "tuner.storage",
    "register_model": "tuner.inputs.families",
    "load_stage_studies": "tuner.study.results",
    "load_stage_trials": "tuner.study.results",
    "importance_table": "tuner.analysis.importance",
    "write_importance": "tuner.analysis.importance",
    "audit_verdict": "tuner.analysis.importance",
    "write_export": "tuner.analysis.export",
    "write_report": "tuner.report",
    "lr_find": "tuner.training.lr_find",
    "write_lr_find": "tuner.training.lr_find",
    "write_best": "tuner.best",
    "load_model": "tuner.best",
    "TrainedModel": "tuner.best",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names once each (a name already loaded is in globals() too), and the module's dunders;
    not this file's own imports (``importlib``, ``Any``, ``annotations``)."""
    return sorted({*_EXPORTS, *(name for name in globals() if name.startswith("__"))})
