"""Held-out tasks, checked on and never tuned against: does a change to the staged search help beyond the tasks it was made on?

``freq_lstm``: 4 classes, the frequency (0.10-0.22 cycles a step) of a sine of 30 steps with a random
phase under noise (sd 0.9); the built-in lstm, width 16, Adam, 12 epochs; stage lr 16 trials
(1e-4..1), stage shape 12 trials, widths 8-64, depth 1-2.
``stripes_cnn``: 4 classes, the orientation of a faint stripe pattern (amplitude 0.45, randomly
shifted) in 10x10 noise (sd 1); the built-in cnn, width 4, depth 2, Adam, 10 epochs; stage lr 16
trials, stage shape 12 trials, widths 4-32, depth 1-2.
1200 / 400 / 400 rows (train / validation / test), every other key default.
``diabetes_adam`` and ``cancer_adam``: the bundled diabetes and breast cancer tables as their
studies/ files have them but with Adam (the files use SGD), 20 + 16 trials, depth 1-3.
Keep them out of any benchmark a change is tuned on (scripts/bench_search.py), or they stop being
held out.

Run:  python scripts/heldout_tasks.py freq_lstm runs/heldout.db 0 1 2 3 4
      python scripts/heldout_tasks.py freq_lstm runs/heldout_b.db 0 1 2 --shape lr_transfer='"none"'
      (per seed: stage lr's best, stage shape's own best, its complete / pruned trials, the study's
      best and its compute; --shape / --lr set a field of that stage, as in bench_search.py)
"""
from __future__ import annotations

import numpy as np

ROWS = {"train": 1200, "val": 400, "test": 400}


def freq_seq(seed: int) -> dict:
    """4 classes: the frequency of a noisy sine of 30 steps with a random phase; x (rows, 30, 1)."""
    rng = np.random.default_rng(5000 + seed)
    freqs = np.array([0.10, 0.14, 0.18, 0.22])
    t = np.arange(30)
    parts: dict = {"task": "classification"}
    for part, rows in ROWS.items():
        y = rng.integers(0, 4, rows)
        phase = rng.uniform(0, 2 * np.pi, rows)
        x = np.sin(2 * np.pi * freqs[y, None] * t[None] + phase[:, None]) + 0.9 * rng.standard_normal((rows, 30))
        parts[part] = (x[:, :, None].astype(np.float32), y)
    return parts


def stripes(seed: int) -> dict:
    """4 classes: the orientation of a faint stripe pattern in 10x10 noise; x (rows, 1, 10, 10)."""
    rng = np.random.default_rng(7000 + seed)
    i, j = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    patterns = np.stack([np.cos(np.pi * i / 2), np.cos(np.pi * j / 2), np.cos(np.pi * (i + j) / 2.5),
                         np.cos(np.pi * (i - j) / 2.5)])
    parts: dict = {"task": "classification"}
    for part, rows in ROWS.items():
        y = rng.integers(0, 4, rows)
        shift = rng.integers(0, 4, rows)
        x = np.stack([np.roll(patterns[c], s, axis=0) for c, s in zip(y, shift)]) * 0.45 + rng.standard_normal((rows, 10, 10))
        parts[part] = (x[:, None].astype(np.float32), y)
    return parts


TASKS = {
    "freq_lstm": {"data": {"name": "python", "loader": "heldout_tasks:freq_seq"},
                  "model": {"family": "lstm", "width": 16, "depth": 1},
                  "train": {"optimizer": "adam", "batch_size": 64, "epochs": 12},
                  "stages": {"lr": {"trials": 16, "lr_min": 1e-4, "lr_max": 1.0},
                             "shape": {"trials": 12, "width": [8, 64], "depth": [1, 2]}}},
    "stripes_cnn": {"data": {"name": "python", "loader": "heldout_tasks:stripes"},
                    "model": {"family": "cnn", "width": 4, "depth": 2},
                    "train": {"optimizer": "adam", "batch_size": 64, "epochs": 10},
                    "stages": {"lr": {"trials": 16, "lr_min": 1e-4, "lr_max": 1.0},
                               "shape": {"trials": 12, "width": [4, 32], "depth": [1, 2]}}},
    # scikit-learn's bundled tables with Adam (their studies/ files use SGD), 20 + 16 trials
    "diabetes_adam": {"data": {"name": "diabetes"}, "model": {"width": 16, "depth": 1},
                      "train": {"optimizer": "adam", "batch_size": 32, "epochs": 40},
                      "stages": {"lr": {"trials": 20, "lr_min": 1e-5, "lr_max": 1.0},
                                 "shape": {"trials": 16, "width": [4, 128], "depth": [1, 3]}}},
    "cancer_adam": {"data": {"name": "breast_cancer"}, "model": {"width": 8, "depth": 1},
                    "train": {"optimizer": "adam", "batch_size": 32, "epochs": 25, "objective": "val_loss"},
                    "stages": {"lr": {"trials": 20}, "shape": {"trials": 16, "width": [4, 128], "depth": [1, 3]}}},
}


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    import optuna
    import torch

    import tuner

    parser = argparse.ArgumentParser(description="Held-out tasks: stage lr's best against stage shape's own best, per seed.")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("db", help="SQLite file for the studies (one study per seed, named TASK-SEED)")
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--shape", action="append", default=[], metavar="FIELD=JSON",
                        help="set a field of [stages.shape], e.g. --shape lr_transfer='\"none\"' (repeatable)")
    parser.add_argument("--lr", action="append", default=[], metavar="FIELD=JSON", help="the same for [stages.lr]")
    args = parser.parse_args()
    overrides = {stage: {field: json.loads(value) for field, _, value in (item.partition("=") for item in given)}
                 for stage, given in (("shape", args.shape), ("lr", args.lr))}
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{args.db}"
    task = args.task
    for seed in args.seeds:
        stages = {stage: {**fields, **overrides.get(stage, {})} for stage, fields in TASKS[task]["stages"].items()}
        spec = tuner.spec_from_dict({**TASKS[task], "stages": stages, "name": f"{task}-{seed}", "seed": seed},
                                    source=str(Path(__file__).resolve().parent / "heldout.toml"))
        tuner.run_study(spec, storage=url, device="cpu", progress=False)
        lr, shape = (optuna.load_study(study_name=f"{task}-{seed}/{stage}", storage=url) for stage in ("lr", "shape"))
        done = [t.value for t in shape.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in shape.trials)
        spent = sum(t.user_attrs.get("n_params", 0) * t.user_attrs.get("epochs_done", 0)
                    for study in (lr, shape) for t in study.trials)
        print(f"{task} seed {seed}: stage lr best {lr.best_value:.4f}, stage shape's own best {min(done):.4f} "
              f"({len(done)} complete / {pruned} pruned), no worse: {min(done) <= lr.best_value}, "
              f"study's best {min(lr.best_value, min(done)):.4f}, compute {spent:,} param-epochs", flush=True)


if __name__ == "__main__":
    main()
