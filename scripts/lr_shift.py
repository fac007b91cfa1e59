"""How far the best learning rate of the small network is from the best rate of bigger shapes.

The staged study calibrates the rate on the spec's small network and keeps it for every shape the
shape stage tries. That is only right if the best rate does not move with the shape (Greff et
al.'s finding for their LSTMs). This script measures it: for each shape, a sweep of the rate over
a log grid (quarter decades by default), every point trained to the end as tuner trains it (same
seed, data order, initial weights, constant rate), the validation objective averaged over seeds;
then per shape the best rate, its ratio to the small network's best rate, and what training at the
small network's rate costs there (its error minus the shape's best error).

How the best rate moves depends on the optimizer (muP: Adam's hidden-layer rate falls as 1/width,
SGD's stays): ``--optimizer`` trains the same task with each one named, on a grid of its own.

Run:  python scripts/lr_shift.py                        # digits and digits_rows, SGD, 3 seeds (~10 min on 2 cores)
      python scripts/lr_shift.py --tasks digits digits_rows digits_images --optimizer sgd adam \\
          --seeds 2 --step 0.5 --extremes --out runs/lr_shift   # the reduced run of docs/lr_shift.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

import tuner
from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.study.stages import TrialPlan, base_config
from tuner.training.batched import supports, train_batched
from tuner.training.train import seeded_model, train_epochs

STUDIES = Path(__file__).resolve().parent.parent / "studies"
# task -> (study file, shapes (width, depth) to sweep, optimizer -> lowest and highest log10(lr) of the grid)
TASKS = {
    "digits": ("quickstart.toml", [(8, 1), (32, 1), (64, 1), (128, 1), (64, 2), (128, 3)],
               {"sgd": (-3.0, 0.0), "adam": (-4.0, -0.5)}),
    "diabetes": ("diabetes.toml", [(8, 1), (32, 1), (64, 1), (128, 1), (64, 2), (128, 3)],
                 {"sgd": (-4.0, 0.0), "adam": (-4.5, -0.5)}),
    "digits_rows": ("digits_lstm.toml", [(8, 1), (32, 1), (64, 1), (64, 2)],
                    {"sgd": (-2.0, 1.0), "adam": (-4.0, -0.5)}),
    "adding": ("adding_lstm.toml", [(8, 1), (32, 1), (64, 1), (64, 2)], {"sgd": (-4.0, -1.0), "adam": (-4.5, -1.0)}),
    "digits_images": ("digits_cnn.toml", [(4, 2), (16, 2), (32, 2), (8, 3), (32, 3)],
                      {"sgd": (-3.0, 0.0), "adam": (-4.0, -0.5)}),
}


def sweep(spec: tuner.StudySpec, data: Dataset, width: int, depth: int, rates: list[float]) -> list[float]:
    """The final validation objective of each rate at this shape (inf where it diverged)."""
    config = base_config(spec, spec.train.epochs)
    plans = [TrialPlan(width, depth, dataclasses.replace(config, lr=lr)) for lr in rates]
    pick = (lambda r: r.val_error) if spec.train.objective == "val_error" else (lambda r: r.val_loss)
    finals = [math.inf] * len(rates)
    if supports(spec.model.family, spec.train.optimizer):
        for results in train_batched(spec.model.family, data, plans, [True] * len(plans)):
            for i, result in enumerate(results):
                if result is not None:
                    finals[i] = math.inf if result.diverged else pick(result)
        return finals
    for i, plan in enumerate(plans):
        model = seeded_model(spec.model.family, data, width, depth, spec.seed)
        for result in train_epochs(model, data, plan.train):
            finals[i] = math.inf if result.diverged else pick(result)
    return finals


def smoothed(curve: np.ndarray) -> np.ndarray:
    """The curve averaged with its grid neighbours (weights 1 2 1): one lucky grid point moves the best less."""
    padded = np.concatenate([curve[:1], curve, curve[-1:]])
    with np.errstate(invalid="ignore"):
        return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4


def extremes(small: tuple[int, int], shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The widest shape at the small net's depth and the deepest widest one: where the rate moves most."""
    widest = max((s for s in shapes if s[1] == small[1]), key=lambda s: s[0], default=None)
    deepest = max(shapes, key=lambda s: (s[1], s[0]))
    return [s for s in dict.fromkeys([widest, deepest]) if s is not None]


def measure(task: str, optimizer: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """The rows of one task trained with one optimizer."""
    file, shapes, grids = TASKS[task]
    base = tuner.load_spec(STUDIES / file)
    base = dataclasses.replace(base, train=dataclasses.replace(
        base.train, optimizer=optimizer, epochs=args.epochs or base.train.epochs))
    low, high = grids[optimizer]
    rates = [float(10**e) for e in np.arange(low, high + 1e-9, args.step)]
    small = (base.model.width, base.model.depth)
    shapes = extremes(small, shapes) if args.extremes else shapes
    started = time.perf_counter()
    seeds = [dataclasses.replace(base, seed=seed) for seed in range(args.seeds)]
    data = [load_dataset(spec.data, spec.seed, spec.source) for spec in seeds]  # once per seed, for every shape
    curves = {}
    for shape in [small, *shapes]:
        per_seed = [sweep(spec, part, *shape, rates) for spec, part in zip(seeds, data)]
        curves[shape] = np.mean(np.array(per_seed), axis=0)  # inf if any seed diverged there
    small_best = int(np.argmin(curves[small]))
    small_smooth = int(np.argmin(smoothed(curves[small])))
    print(f"{task} ({base.model.family}, {optimizer}, {args.seeds} seeds, {base.train.epochs} epochs, "
          f"{time.perf_counter() - started:.0f} s): small network {small} best lr {rates[small_best]:.3g}")
    rows = []
    for shape, curve in curves.items():
        best = int(np.argmin(curve))
        smooth = int(np.argmin(smoothed(curve)))
        row = {
            "task": task, "optimizer": optimizer, "width": shape[0], "depth": shape[1],
            "best_lr": rates[best], "lr_ratio_to_small": rates[best] / rates[small_best],
            "best_value": float(curve[best]), "value_at_small_lr": float(curve[small_best]),
            "loss_from_small_lr": float(curve[small_best] - curve[best]),
            "curve": " ".join(f"{v:.4g}" for v in curve),
            "smoothed_ratio_to_small": rates[smooth] / rates[small_smooth],
            "seeds": args.seeds, "epochs": base.train.epochs, "validation_rows": len(data[0].y_val),
            "lr_grid": " ".join(f"{r:.4g}" for r in rates),
        }
        rows.append(row)
        print(f"  {shape}: best lr {row['best_lr']:.3g} ({row['lr_ratio_to_small']:.3g}x the small net's), "
              f"value {row['best_value']:.4g}; at the small net's lr {row['value_at_small_lr']:.4g} "
              f"(+{row['loss_from_small_lr']:.3g}); smoothed ratio {row['smoothed_ratio_to_small']:.3g}", flush=True)
    print(f"  lr grid: {' '.join(f'{r:.3g}' for r in rates)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["digits", "digits_rows"])
    parser.add_argument("--optimizer", nargs="+", choices=["sgd", "adam"], default=["sgd"],
                        help="train each task with each optimizer named (its own rate grid: TASKS)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.25, help="grid step in decades of the rate")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the study file's train.epochs")
    parser.add_argument("--extremes", action="store_true",
                        help="only the widest and the deepest shape besides the small network")
    parser.add_argument("--out", type=Path, default=Path("runs/lr_shift"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for task in args.tasks for optimizer in args.optimizer for row in measure(task, optimizer, args)]
    with (args.out / "lr_shift.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
