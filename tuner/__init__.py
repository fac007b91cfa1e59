"""tuner: staged hyperparameter tuning for PyTorch models on Optuna.

Calibrate the learning rate first, on a small and cheap network; then tune the network's size and
the decay schedule at that rate; optionally audit the assumption that made this cheap.

Example:
    >>> import tuner
    >>> result = tuner.run_study("studies/quickstart.toml")  # doctest: +SKIP
    >>> result.best_lr  # doctest: +SKIP
"""

from tuner.models import register_model
from tuner.runner import Reporter, StageSummary, StudyMismatchError, StudyResult, TunerError, load_results, run_study
from tuner.spec import SpecError, StudySpec, load_spec, spec_from_dict
from tuner.storage import StorageError, open_storage

__all__ = [
    "Reporter",
    "SpecError",
    "StageSummary",
    "StorageError",
    "StudyMismatchError",
    "StudyResult",
    "StudySpec",
    "TunerError",
    "load_results",
    "load_spec",
    "open_storage",
    "register_model",
    "run_study",
    "spec_from_dict",
]
