"""LR-stage throughput: trials trained together as one batched model versus one at a time.

Same trials on both sides (the same learning rates, seed and data order), measured side by side in
one run, in alternating rounds so that a busy machine slows both alike. Two figures:

1. training only: ``tuner.train.train_epochs`` per trial versus ``tuner.batched.train_batched`` on
   batches of ``--batch`` trials;
2. the whole LR stage through the runner, with its SQLite storage (asking, per-epoch reports, user
   attributes, telling): ``stages.lr.batched = false`` versus ``true``, random sampler so both draw
   the same rates.

The network is the quickstart's (digits, 64 -> 16 -> 10, SGD with momentum 0.9, batch 64, 20 epochs).

Run:  python scripts/bench_lr_stage.py            # ~5 min on 2 cores
      python scripts/bench_lr_stage.py --quick    # under 2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from tuner.batched import train_batched
from tuner.data import load_dataset
from tuner.runner import run_stage
from tuner.spec import StudySpec, load_spec
from tuner.stages import TrialPlan, lr_stage
from tuner.storage import open_storage
from tuner.train import resolve_device, seeded_model, train_epochs

SPEC = Path(__file__).resolve().parent.parent / "studies" / "quickstart.toml"


def _training_round(spec: StudySpec, data: object, rates: list[float], batch: int) -> tuple[float, float]:
    """Seconds to train ``rates`` one at a time, then as batches."""
    stage = lr_stage(spec)
    plans = [stage.plan({"lr": lr}) for lr in rates]
    started = time.perf_counter()
    for plan in plans:
        model = seeded_model(spec.model.family, data, plan.width, plan.depth, plan.train.seed)
        for _ in train_epochs(model, data, plan.train):
            pass
    alone = time.perf_counter() - started
    started = time.perf_counter()
    for first in range(0, len(plans), batch):
        group: list[TrialPlan] = plans[first:first + batch]
        for _ in train_batched(spec.model.family, data, group, [True] * len(group)):
            pass
    return alone, time.perf_counter() - started


def _stage_round(spec: StudySpec, data: object, device: torch.device, folder: Path, tag: str,
                 batched: bool) -> tuple[float, list[float]]:
    """Seconds for the whole LR stage through the runner on a fresh SQLite file; its rates."""
    lr = dataclasses.replace(spec.stages.lr, batched=batched)
    run_spec = spec.with_changes(name=f"bench-{tag}", stages=dataclasses.replace(spec.stages, lr=lr))
    url = f"sqlite:///{folder / f'{tag}.db'}"
    storage = open_storage(url)
    started = time.perf_counter()
    run_stage(run_spec, "lr", storage=storage, data=data, device=device)  # one stage alone, without shape
    seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=f"{run_spec.name}/lr", storage=storage).trials
    return seconds, [t.params["lr"] for t in trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and rounds: under 2 minutes")
    parser.add_argument("--trials", type=int, help="trials per side and round [default 32, quick 16]")
    parser.add_argument("--batch", type=int, default=16, help="trials per batch (stages.lr.batch_trials)")
    parser.add_argument("--rounds", type=int, help="alternating rounds [default 3, quick 1]")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads [default 1: a network this small gains nothing from more, and "
                             "on a busy machine their spinning slows both sides; 0: torch's own choice]")
    args = parser.parse_args()
    n_trials = args.trials or (16 if args.quick else 32)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    device = resolve_device(args.device)
    spec = load_spec(SPEC)
    lr = dataclasses.replace(spec.stages.lr, trials=n_trials, sampler="random", batch_trials=args.batch)
    spec = spec.with_changes(stages=dataclasses.replace(spec.stages, lr=lr))
    data = load_dataset(spec.data, spec.seed, spec.source).to(device)
    # The quickstart's search range, log-uniform: small rates crawl, the largest diverge and stop early.
    rates = [float(r) for r in 10 ** np.random.default_rng(spec.seed).uniform(np.log10(lr.lr_min), np.log10(lr.lr_max), n_trials)]
    print(f"quickstart LR stage: {n_trials} trials, batches of {args.batch}, {spec.train.epochs} epochs, "
          f"device {device}, torch threads {torch.get_num_threads()}, {rounds} round(s)")

    _training_round(spec, data, rates[:2], 2)  # warm-up: first calls pay one-time costs
    train_alone, train_batched_s = [], []
    stage_alone, stage_batched = [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            alone, together = _training_round(spec, data, rates, args.batch)
            train_alone.append(alone)
            train_batched_s.append(together)
            seconds_alone, rates_alone = _stage_round(spec, data, device, Path(folder), f"alone{r}", False)
            seconds_batched, rates_batched = _stage_round(spec, data, device, Path(folder), f"batched{r}", True)
            assert rates_alone == rates_batched, "both sides must run the same trials"
            stage_alone.append(seconds_alone)
            stage_batched.append(seconds_batched)
            print(f"round {r + 1}: training {alone:.2f} s vs {together:.2f} s; "
                  f"stage with SQLite {seconds_alone:.2f} s vs {seconds_batched:.2f} s")

    def line(label: str, alone: list[float], together: list[float]) -> None:
        a, b = statistics.median(alone), statistics.median(together)
        print(f"{label:<26} one at a time {n_trials / a:7.1f} trials/s | batched {n_trials / b:7.1f} trials/s "
              f"| ratio {a / b:5.1f}x")

    line("training only:", train_alone, train_batched_s)
    line("LR stage (runner+SQLite):", stage_alone, stage_batched)


if __name__ == "__main__":
    main()
