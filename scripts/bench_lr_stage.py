"""LR-stage throughput: trials trained together as one batched model versus one at a time.

Same trials on both sides (the same learning rates, seed and data order), measured side by side in
one run, in alternating rounds so that a busy machine slows both alike. Two figures:

1. training only: ``tuner.training.train.train_epochs`` per trial versus ``tuner.training.batched.train_batched`` on
   batches of ``--batch`` trials;
2. the whole LR stage through the runner, with its SQLite storage (asking, per-epoch reports, user
   attributes, telling): ``stages.lr.batched = false`` versus ``true``, random sampler so both draw
   the same rates.

``--family mlp`` (default) measures the quickstart's network (digits, 64 -> 16 -> 10, SGD with
momentum 0.9, batch 64, 20 epochs); ``--family lstm`` the LR stages of ``studies/digits_lstm.toml``
(digits read row by row, LSTM of 16 units, SGD, 15 epochs) and ``studies/adding_lstm.toml`` (the
adding problem, 20 steps, LSTM of 16 units, Adam, 15 epochs). Each task's rates are drawn
log-uniformly from its own LR range, so that the largest diverge and stop early as they would in
the study. Several batch sizes (``--batch 8 16 32``) are measured against the same one-at-a-time
runs and printed side by side, with the load average before and after.

Run:  python scripts/bench_lr_stage.py                               # ~1 min on a quiet machine
      python scripts/bench_lr_stage.py --quick                       # 16 trials, one round
      python scripts/bench_lr_stage.py --family lstm --batch 8 16 32  # ~8 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from tuner.inputs.load import load_dataset
from tuner.inputs.spec import StudySpec, load_spec
from tuner.storage import open_storage
from tuner.study.runner import run_stage
from tuner.study.stages import TrialPlan, lr_stage
from tuner.training.batched import supports, train_batched
from tuner.training.train import resolve_device, seeded_model, train_epochs

STUDIES = Path(__file__).resolve().parent.parent / "studies"
FAMILY_SPECS = {"mlp": ("quickstart",), "lstm": ("digits_lstm", "adding_lstm")}


def _alone_round(spec: StudySpec, data: object, rates: list[float]) -> float:
    """Seconds to train ``rates`` one at a time."""
    stage = lr_stage(spec)
    started = time.perf_counter()
    for lr in rates:
        plan = stage.plan({"lr": lr})
        model = seeded_model(spec.model.family, data, plan.width, plan.depth, plan.train.seed)
        for _ in train_epochs(model, data, plan.train):
            pass
    return time.perf_counter() - started


def _batched_round(spec: StudySpec, data: object, rates: list[float], batch: int) -> float:
    """Seconds to train ``rates`` as batches of ``batch``."""
    stage = lr_stage(spec)
    plans = [stage.plan({"lr": lr}) for lr in rates]
    started = time.perf_counter()
    for first in range(0, len(plans), batch):
        group: list[TrialPlan] = plans[first:first + batch]
        for _ in train_batched(spec.model.family, data, group, [True] * len(group)):
            pass
    return time.perf_counter() - started


def _stage_round(spec: StudySpec, data: object, device: torch.device, folder: Path, tag: str,
                 batch: int | None) -> tuple[float, list[float]]:
    """Seconds for the whole LR stage through the runner on a fresh SQLite file (``batch`` None: one at
    a time); its rates."""
    lr = dataclasses.replace(spec.stages.lr, batched=batch is not None, batch_trials=batch or 1)
    run_spec = spec.with_changes(name=f"bench-{tag}", stages=dataclasses.replace(spec.stages, lr=lr))
    url = f"sqlite:///{folder / f'{tag}.db'}"
    storage = open_storage(url)
    started = time.perf_counter()
    run_stage(run_spec, "lr", storage=storage, data=data, device=device)  # one stage alone, without shape
    seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=f"{run_spec.name}/lr", storage=storage).trials
    return seconds, [t.params["lr"] for t in trials]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def bench_spec(name: str, args: argparse.Namespace, n_trials: int, rounds: int, device: torch.device) -> None:
    spec = load_spec(STUDIES / f"{name}.toml")
    lr = dataclasses.replace(spec.stages.lr, trials=n_trials, sampler="random")
    spec = spec.with_changes(stages=dataclasses.replace(spec.stages, lr=lr))
    if not supports(spec.model.family, spec.train.optimizer):
        raise SystemExit(f"{name}: model family {spec.model.family!r} with {spec.train.optimizer!r} cannot be batched")
    data = load_dataset(spec.data, spec.seed, spec.source).to(device)
    # The task's own search range, log-uniform: small rates crawl, the largest diverge and stop early.
    rates = [float(r) for r in 10 ** np.random.default_rng(spec.seed).uniform(np.log10(lr.lr_min), np.log10(lr.lr_max), n_trials)]
    batches: list[int] = args.batch
    print(f"\n{name} LR stage: {n_trials} trials, {spec.model.family} width {spec.model.width} depth {spec.model.depth}, "
          f"{spec.train.optimizer}, batch size {spec.train.batch_size}, {lr.epochs or spec.train.epochs} epochs; "
          f"batches of {', '.join(map(str, batches))} trials; device {device}, torch threads {torch.get_num_threads()}, "
          f"{rounds} round(s); load average {_load()}")

    _alone_round(spec, data, rates[:2])  # warm-up: first calls pay one-time costs
    _batched_round(spec, data, rates[:2], 2)
    train_alone: list[float] = []
    train_batched_s: dict[int, list[float]] = {b: [] for b in batches}
    stage_alone: list[float] = []
    stage_batched: dict[int, list[float]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            train_alone.append(_alone_round(spec, data, rates))
            for b in batches:
                train_batched_s[b].append(_batched_round(spec, data, rates, b))
            seconds_alone, rates_alone = _stage_round(spec, data, device, Path(folder), f"alone{r}", None)
            stage_alone.append(seconds_alone)
            for b in batches:
                seconds, rates_batched = _stage_round(spec, data, device, Path(folder), f"batched{b}-{r}", b)
                assert rates_alone == rates_batched, "both sides must run the same trials"
                stage_batched[b].append(seconds)
            together = ", ".join(f"{b}: {train_batched_s[b][-1]:.2f} s" for b in batches)
            staged = ", ".join(f"{b}: {stage_batched[b][-1]:.2f} s" for b in batches)
            print(f"round {r + 1}: training alone {train_alone[-1]:.2f} s, batched {together}; "
                  f"stage with SQLite alone {seconds_alone:.2f} s, batched {staged}; load average {_load()}")

    def line(label: str, alone: list[float], together: dict[int, list[float]]) -> None:
        a = statistics.median(alone)
        cells = [f"{n_trials / a:6.1f} trials/s"]
        for b in batches:
            t = statistics.median(together[b])
            cells.append(f"{n_trials / t:6.1f} trials/s ({a / t:4.1f}x)")
        print(f"{label:<26} " + " | ".join(cells))

    print(f"{'median of rounds':<26} {'one at a time':<15} | " + " | ".join(f"{f'batched {b}':<23}" for b in batches))
    line("training only:", train_alone, train_batched_s)
    line("LR stage (runner+SQLite):", stage_alone, stage_batched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILY_SPECS), default="mlp",
                        help="mlp: the quickstart's LR stage; lstm: digits_lstm's and adding_lstm's [default mlp]")
    parser.add_argument("--quick", action="store_true", help="fewer trials and rounds")
    parser.add_argument("--trials", type=int, help="trials per side and round [default 32, quick 16]")
    parser.add_argument("--batch", type=int, nargs="+", default=[16],
                        help="trials per batch (stages.lr.batch_trials); several: each against the same one-at-a-time runs")
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
    for name in FAMILY_SPECS[args.family]:
        bench_spec(name, args, n_trials, rounds, device)


if __name__ == "__main__":
    main()
