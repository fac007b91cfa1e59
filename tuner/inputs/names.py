"""The names a study spec may use and the limits its fields are checked against, in one place.

:mod:`tuner.inputs.spec` (the spec's fields) and :mod:`tuner.inputs.checks` (their checks) both read them.
"""

from __future__ import annotations

DATASETS = ("digits", "wine", "breast_cancer", "diabetes", "digits_rows", "digits_images", "adding", "csv", "python")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine")
DEFAULT_SCHEDULES = ("constant", "step", "exponential", "inverse_time")
OBJECTIVES = ("val_error", "val_loss")
TASKS = ("auto", "classification", "regression")
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
LR_RANGES = ("fixed", "auto")
HANDOFFS = ("backed", "basin", "robust", "best")
# stages.shape.first_rung read from stage lr's curves: "learned" ranks the trials that learned, "auto" (contract 3-5) all of them
RUNG_RULES = ("learned", "auto")
LR_TRANSFERS = ("rule", "none")  # stages.shape.lr_transfer: the rate moved to each shape by the optimizer's rule, or not
LR_SCALE_AUTO = "auto"  # stages.shape.lr_scale: resolved from the optimizer and the shapes (tuner.study.lr_scale)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds lie in [0, 2**32 - 1]
MIN_SEQUENCE_LENGTH = 2  # the adding problem marks two distinct steps
MIN_SPLIT_ROWS = 2  # each of the training and validation parts needs at least this many rows


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study (its stages are the Optuna studies ``name/lr`` ...), or None."""
    if not name.strip() or "/" in name or any(not char.isprintable() for char in name):
        return "must be non-empty and must not contain '/', NUL, line breaks or other control characters"
    return None
