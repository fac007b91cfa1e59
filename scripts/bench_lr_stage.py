"""LR-stage throughput: trials trained together as one batched model versus one at a time.

Same trials on both sides (the same learning rates, seed and data order), measured side by side in
one run, in alternating rounds so that a busy machine slows both alike. Two figures:

1. training only: ``tuner.training.train.train_epochs`` per trial versus batches of ``--batch``
   trials, by tuner's hand-written stacked copies (``tuner.training.batched.train_batched``, MLP and
   LSTM) and by the ``torch.func`` copies of any network (``tuner.training.functional``);
2. the whole LR stage through the runner, with its SQLite storage (asking, per-epoch reports, user
   attributes, telling): ``stages.lr.batched = false`` versus ``true``, random sampler so both draw
   the same rates; for the MLP also with the ``torch.func`` copies in place of the hand-written ones.

``--family cnn`` measures a user's own model given as ``module:function``, two 1-D CNNs of
``scripts/bench_models.py`` that only the ``torch.func`` copies can batch, SGD with momentum 0.9,
batch 64: ``cnn1d_strided``, the network of the torch.func measurement in ``../shared/REFERENCES.md``
(Conv1d 1->16 kernel 5 stride 2, Conv1d 16->16 kernel 3 stride 2, a linear read-out) on digits read
as one channel over 64 steps, 20 epochs (``scripts/bench_cnn_strided.toml``); and ``cnn1d``, two
convolutions of 16 channels at full length (kernel 5, no stride) on the adding problem over 40 steps,
15 epochs (``scripts/bench_cnn.toml``), over three times the arithmetic per copy and step.

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
      python scripts/bench_lr_stage.py --family cnn --batch 16 32     # a user's CNN as module:function
"""

from __future__ import annotations

import argparse
import contextlib
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
from tuner.inputs.usercode import resolve_code
from tuner.storage import open_storage
from tuner.study.runner import run_stage
from tuner.study.stages import TrialPlan, lr_stage
from tuner.training import trainers
from tuner.training.batched import supports, train_batched
from tuner.training.functional_plans import batch_plans, built_copy
from tuner.training.train import resolve_device, train_epochs

HERE = Path(__file__).resolve().parent
STUDIES = HERE.parent / "studies"
FAMILY_SPECS = {"mlp": ("quickstart",), "lstm": ("digits_lstm", "adding_lstm"), "cnn": ("bench_cnn_strided", "bench_cnn")}
SPEC_FILES = {name: HERE / f"{name}.toml" for name in ("bench_cnn", "bench_cnn_strided")}  # beside its model, scripts/bench_models.py


def _alone_round(spec: StudySpec, data: object, rates: list[float]) -> float:
    """Seconds to train ``rates`` one at a time."""
    stage, family = lr_stage(spec), resolve_code(spec).family
    started = time.perf_counter()
    for lr in rates:
        plan = stage.plan({"lr": lr})
        model = built_copy(family, data, plan)  # type: ignore[arg-type]
        for _ in train_epochs(model, data, plan.train):
            pass
    return time.perf_counter() - started


def _batched_round(spec: StudySpec, data: object, rates: list[float], batch: int, path: str) -> float:
    """Seconds to train ``rates`` as batches of ``batch``; ``path``: "hand" (stacked MLP/LSTM) or "func" (torch.func)."""
    stage, family = lr_stage(spec), resolve_code(spec).family
    plans = [stage.plan({"lr": lr}) for lr in rates]
    started = time.perf_counter()
    for first in range(0, len(plans), batch):
        group: list[TrialPlan] = plans[first:first + batch]
        if path == "hand":
            for _ in train_batched(spec.model.family, data, group, [True] * len(group)):
                pass
            continue
        parts, reason = batch_plans(family, data, group, timed=False)  # type: ignore[arg-type]
        if reason is not None or parts[0].trainer is None:
            raise SystemExit(f"{spec.name}: the torch.func copies fell back: {reason}")
        for _ in parts[0].trainer.epochs():
            pass
    return time.perf_counter() - started


@contextlib.contextmanager
def _torch_func_only() -> object:
    """make_trainer with the torch.func copies in place of the hand-written ones."""
    hand_written = trainers.hand_written_applies
    trainers.hand_written_applies = lambda code, plans: False  # type: ignore[assignment]
    try:
        yield
    finally:
        trainers.hand_written_applies = hand_written  # type: ignore[assignment]


def _stage_round(spec: StudySpec, data: object, device: torch.device, folder: Path, tag: str,
                 batch: int | None, func: bool = False) -> tuple[float, list[float], set[int]]:
    """Seconds for the whole LR stage through the runner on a fresh SQLite file (``batch`` None: one at
    a time; ``func``: by the torch.func copies even where the hand-written ones apply); its rates, and
    the Ks its trials trained with."""
    lr = dataclasses.replace(spec.stages.lr, batched=batch is not None, batch_trials=batch or 1)
    run_spec = spec.with_changes(name=f"bench-{tag}", stages=dataclasses.replace(spec.stages, lr=lr))
    url = f"sqlite:///{folder / f'{tag}.db'}"
    storage = open_storage(url)
    started = time.perf_counter()
    with _torch_func_only() if func else contextlib.nullcontext():
        run_stage(run_spec, "lr", storage=storage, data=data, device=device)  # one stage alone, without shape
    seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=f"{run_spec.name}/lr", storage=storage).trials
    return seconds, [t.params["lr"] for t in trials], {int(t.user_attrs.get("batched_with", 1)) for t in trials}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def bench_spec(name: str, args: argparse.Namespace, n_trials: int, rounds: int, device: torch.device) -> None:
    spec = load_spec(SPEC_FILES.get(name, STUDIES / f"{name}.toml"))
    lr = dataclasses.replace(spec.stages.lr, trials=n_trials, sampler="random")
    spec = spec.with_changes(stages=dataclasses.replace(spec.stages, lr=lr))
    hand = supports(spec.model.family, spec.train.optimizer)
    # The hand-written copies where they apply; the torch.func ones on every network (skip: --no-func).
    paths = (["hand"] if hand else []) + ([] if args.no_func and hand else ["func"])
    data = load_dataset(spec.data, spec.seed, spec.source).to(device)
    # The task's own search range, log-uniform: small rates crawl, the largest diverge and stop early.
    rates = [float(r) for r in 10 ** np.random.default_rng(spec.seed).uniform(np.log10(lr.lr_min), np.log10(lr.lr_max), n_trials)]
    batches: list[int] = args.batch
    print(f"\n{name} LR stage: {n_trials} trials, {spec.model.family} width {spec.model.width} depth {spec.model.depth}, "
          f"{spec.train.optimizer}, batch size {spec.train.batch_size}, {lr.epochs or spec.train.epochs} epochs; "
          f"batches of {', '.join(map(str, batches))} trials; device {device}, torch threads {torch.get_num_threads()}, "
          f"{rounds} round(s); load average {_load()}")

    _alone_round(spec, data, rates[:2])  # warm-up: first calls pay one-time costs
    for path in paths:
        _batched_round(spec, data, rates[:2], 2, path)
    train_alone: list[float] = []
    train_batched_s: dict[tuple[str, int], list[float]] = {(p, b): [] for p in paths for b in batches}
    stage_alone: list[float] = []
    stage_paths = ["default"] + (["func"] if hand and "func" in paths else [])
    stage_batched: dict[tuple[str, int], list[float]] = {(p, b): [] for p in stage_paths for b in batches}
    ks: dict[tuple[str, int], set[int]] = {key: set() for key in stage_batched}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            train_alone.append(_alone_round(spec, data, rates))
            for (path, b), times in train_batched_s.items():
                times.append(_batched_round(spec, data, rates, b, path))
            seconds_alone, rates_alone, _ = _stage_round(spec, data, device, Path(folder), f"alone{r}", None)
            stage_alone.append(seconds_alone)
            for key, times in stage_batched.items():
                path, b = key
                seconds, rates_batched, k = _stage_round(spec, data, device, Path(folder), f"{path}{b}-{r}", b, path == "func")
                assert rates_alone == rates_batched, "both sides must run the same trials"
                times.append(seconds)
                ks[key] |= k
            together = ", ".join(f"{p} {b}: {train_batched_s[p, b][-1]:.2f} s" for p, b in train_batched_s)
            staged = ", ".join(f"{p} {b}: {stage_batched[p, b][-1]:.2f} s" for p, b in stage_batched)
            print(f"round {r + 1}: training alone {train_alone[-1]:.2f} s, batched {together}; "
                  f"stage with SQLite alone {seconds_alone:.2f} s, batched {staged}; load average {_load()}")

    a = statistics.median(train_alone)
    print(f"median of {rounds} round(s), {n_trials} trials; one at a time: training {n_trials / a:.1f} trials/s, "
          f"LR stage (runner+SQLite) {n_trials / statistics.median(stage_alone):.1f} trials/s")
    labels = {"hand": "hand-written stacked", "func": "torch.func copies", "default": "as make_trainer picks"}
    for (path, b), seconds in train_batched_s.items():
        t = statistics.median(seconds)
        print(f"  training only, {labels[path]:<21} K={b:<3} {n_trials / t:7.1f} trials/s  {a / t:5.1f}x one at a time")
    if "hand" in paths and "func" in paths:
        for b in batches:
            hand_s, func_s = (statistics.median(train_batched_s[p, b]) for p in ("hand", "func"))
            print(f"  training only, torch.func / hand-written at K={b}: {hand_s / func_s:.2f}x")
    a = statistics.median(stage_alone)
    for (path, b), seconds in stage_batched.items():
        t = statistics.median(seconds)
        trained = ", ".join(map(str, sorted(ks[path, b])))
        print(f"  LR stage (runner+SQLite), {labels[path]:<21} K={b:<3} {n_trials / t:7.1f} trials/s  {a / t:5.1f}x one at a "
              f"time  (trials trained with K = {trained})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILY_SPECS), default="mlp",
                        help="mlp: the quickstart's LR stage; lstm: digits_lstm's and adding_lstm's; cnn: a user's 1-D CNN "
                             "given as module:function (scripts/bench_cnn.toml) [default mlp]")
    parser.add_argument("--no-func", action="store_true",
                        help="leave out the torch.func copies where the hand-written ones apply (the LSTM cannot run under vmap)")
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
    args.no_func = args.no_func or args.family == "lstm"  # nn.LSTM does not run under vmap: only the hand-written copies
    for name in FAMILY_SPECS[args.family]:
        bench_spec(name, args, n_trials, rounds, device)


if __name__ == "__main__":
    main()
