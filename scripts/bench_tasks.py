"""Generated tasks for ``scripts/bench_search.py`` (issue 21): data the project makes itself, no download.

Each task is a study spec as a dict (what a study file would hold) and, for data of its own, a
loader with tuner's user-loader contract (``load(seed) -> {"train": (x, y), "val": ..., "test": ...,
"task": ...}``, README "Your own model"), passed to ``tuner.run_study(spec, loader=...)`` and
``load_dataset(spec.data, seed, source, loader)``. They live here and not in ``studies/``: those
are the users' bundled studies, each with its stored settings hash under test.

- ``seq_slow``: 10-class sequence classification that an LSTM with Adam learns only after a few
  epochs at chance. The class is a noisy level written at the first 6 of 16 steps, then 10 steps of
  noise follow; the LSTM reads out its last step, so it must first learn to hold the level across the
  noise (its forget gates start near 0.5 a step: the signal fades as 0.5^steps), and until it does
  every network sits at chance (val error 0.90).
- ``reg_table``: a regression table (scikit-learn's Friedman #1 with noise) for an MLP with SGD.
- ``adding_long``: the bundled adding problem at 50 steps, LSTM, Adam.

Run ``python scripts/bench_tasks.py`` to print, for ``seq_slow``, the validation error per epoch of
the small LSTM at a few rates: the first epochs sit at chance, then some learn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# seq_slow, checked with `python scripts/bench_tasks.py` (seeds 0 and 1, lr 0.003 and 0.01): the small
# LSTM sits at chance (0.90, or 0.8 once it has the sign of the level) for its first 3-7 epochs, then
# learns to 0.4-0.5 by epoch 20. What sets the wait is the noise after the level: 6 steps of it and
# the LSTM learns at once; 10 steps, 3-7 epochs at chance. The rows are few for the time on 2 cores
# (3000 training rows, or 20 steps with 10 of level, waited as long but cost 2x and 1.25x a trial).
SEQ_CLASSES = 10
SEQ_STEPS = 16          # one value a step
SEQ_SIGNAL_STEPS = 6    # the class's level is written at steps 0..5, then 10 steps of noise only
SEQ_SIGNAL_NOISE = 0.5  # noise on the level (the levels are 1/3 apart): the best error is about 0.3
SEQ_DISTRACTOR = 1.0    # standard deviation of the noise after the level
SEQ_ROWS = {"train": 1500, "val": 500, "test": 500}

REG_ROWS = {"train": 2000, "val": 500, "test": 500}
REG_NOISE = 1.0  # Friedman #1's target has a standard deviation of about 5


def seq_slow(seed: int) -> dict[str, Any]:
    """10 classes: a level at the first steps of a sequence of noise; x (rows, steps, 1), y the class."""
    rng = np.random.default_rng(1000 + seed)
    levels = np.linspace(-1.5, 1.5, SEQ_CLASSES)
    parts: dict[str, Any] = {"task": "classification"}
    for part, rows in SEQ_ROWS.items():
        y = rng.integers(0, SEQ_CLASSES, rows)
        x = SEQ_DISTRACTOR * rng.standard_normal((rows, SEQ_STEPS))
        x[:, :SEQ_SIGNAL_STEPS] = levels[y, None] + SEQ_SIGNAL_NOISE * rng.standard_normal((rows, SEQ_SIGNAL_STEPS))
        parts[part] = (x[:, :, None].astype(np.float32), y)
    return parts


def reg_table(seed: int) -> dict[str, Any]:
    """Friedman #1 (10 features, 5 of them used) with Gaussian noise; the target standardised by tuner."""
    from sklearn.datasets import make_friedman1

    total = sum(REG_ROWS.values())
    x, y = make_friedman1(n_samples=total, n_features=10, noise=REG_NOISE, random_state=1000 + seed)
    parts: dict[str, Any] = {"task": "regression"}
    start = 0
    for part, rows in REG_ROWS.items():
        parts[part] = (x[start:start + rows], y[start:start + rows])
        start += rows
    return parts


# task -> (spec without name and seed, the loader or None for bundled data, what it is)
TASKS: dict[str, tuple[dict[str, Any], Callable[..., Any] | None, str]] = {
    "seq_slow": ({
        "data": {"name": "python", "loader": "bench_tasks:seq_slow"},
        "model": {"family": "lstm", "width": 16, "depth": 1},
        "train": {"optimizer": "adam", "batch_size": 64, "epochs": 20},
        "stages": {"lr": {"trials": 16, "lr_min": 1e-4, "lr_max": 1.0},
                   "shape": {"trials": 12, "width": [16, 128], "depth": [1, 2]}},
    }, seq_slow, "LSTM + Adam, sequence classification, slow start (generated)"),
    "reg_table": ({
        "data": {"name": "python", "loader": "bench_tasks:reg_table"},
        "model": {"family": "mlp", "width": 16, "depth": 1},
        "train": {"optimizer": "sgd"},
        "stages": {"lr": {"trials": 30}, "shape": {"trials": 30}},
    }, reg_table, "MLP + SGD, regression table (generated)"),
    "adding_long": ({
        "data": {"name": "adding", "samples": 1000, "sequence_length": 50},  # 2000 took 7 minutes a seed here
        "model": {"family": "lstm", "width": 16, "depth": 1},
        "train": {"optimizer": "adam", "batch_size": 64, "epochs": 15},
        "stages": {"lr": {"trials": 20, "lr_min": 1e-5, "lr_max": 1.0, "batch_trials": 8},
                   "shape": {"trials": 12, "width": [8, 64], "depth": [1, 2]}},
    }, None, "LSTM + Adam, adding problem at 50 steps"),
}


def main() -> None:
    """seq_slow's small LSTM at a few rates: validation error per epoch."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_search

    torch.set_num_threads(1)
    table = bench_search.task_spec("seq_slow", 0, quick=False)
    import tuner
    from tuner.inputs.load import load_dataset

    spec = tuner.spec_from_dict(table)
    data = load_dataset(spec.data, spec.seed, spec.source, seq_slow)
    stage = bench_search.joint_stage(spec)
    for lr in (0.003, 0.01, 0.03, 0.1):
        curve: list[float] = []
        bench_search.train_point(spec, data, stage, {"lr": lr, "width": 16, "depth": 1, "schedule": "constant",
                                                     "decay": 1.0}, lambda value, epoch, curve=curve: curve.append(value))
        print(f"lr {lr:g}: " + " ".join(f"{v:.2f}" for v in curve), flush=True)


if __name__ == "__main__":
    main()
