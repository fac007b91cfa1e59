"""The winner out: train a study's best configuration again, save it, and load it to predict.

- :mod:`tuner.best.refit`: :func:`write_best` trains the best trial's configuration again;
- :mod:`tuner.best.folder`: the folder it writes (``best.toml``, ``model.pt``, ``metrics.json``
  with a manifest), written atomically file by file, and :func:`load_model`, which checks it.

May import: ``tuner.inputs``, ``tuner.training`` and ``tuner.study``; nothing imports it but the CLI
and ``tuner``.
"""

from __future__ import annotations

from tuner.best.folder import (
    FILES,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_FORMAT,
    MODEL_KEYS,
    SPEC_FILE,
    FolderError,
    TrainedModel,
    check_folder,
    load_model,
)
from tuner.best.refit import REFITS, BestError, BestResult, best_spec_text, write_best

__all__ = [
    "FILES", "METRICS_FILE", "MODEL_FILE", "MODEL_FORMAT", "MODEL_KEYS", "REFITS", "SPEC_FILE", "BestError",
    "BestResult", "FolderError", "TrainedModel", "best_spec_text", "check_folder", "load_model", "write_best",
]
