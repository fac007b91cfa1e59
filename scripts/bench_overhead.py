"""The framework's own cost per trial: wall time minus time in training, tuner on SQLite vs plain Optuna in memory.

Both sides run the same trials' kind: the quickstart's LR stage (digits, MLP 64 -> 16 -> 10, SGD
with momentum 0.9, batch 64, 20 epochs, TPE over ``lr`` with the settings tuner writes out), one
trial at a time. Training time is measured the same way on both sides, around model construction
and each epoch of ``tuner.training.train.train_epochs``; everything else a trial costs is overhead:
sampling, storage writes and reads, heartbeats, bookkeeping.

- ``tuner (SQLite)``: ``tuner``'s stage runner on a fresh SQLite file opened by
  ``tuner.open_storage`` (WAL, heartbeats, every trial's learning curve and attributes stored);
- ``optuna (memory)``: a plain ``optuna.create_study()`` in memory, an objective that reports each
  epoch and asks ``should_prune()`` (what a user would write);
- for reference: ``optuna (SQLite)``, the same plain objective on a stock ``sqlite:///`` URL;
  ``tuner (SQLite, stock)``, tuner's runner on Optuna's own ``RDBStorage`` (WAL and heartbeats as
  ``open_storage`` sets them, without the plain-sqlite3 path of ``tuner/storage/_sqlite.py``); and
  ``tuner (memory)``, the stage runner on Optuna's in-memory storage.

The sides alternate round by round, so that a busy machine slows all alike; the figures are
medians over rounds. The ratio printed last is tuner (SQLite) / optuna (memory): the goal is <= 2.

Run:  python scripts/bench_overhead.py            # 3-8 min on 2 cores, as busy as they are
      python scripts/bench_overhead.py --quick    # 1-3 min
      python scripts/bench_overhead.py --profile  # where tuner's time per trial goes, step by step
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch

from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import StudySpec, load_spec
from tuner.storage import open_storage
from tuner.study.results import EPOCHS_DONE_ATTR, TRAIN_SECONDS_ATTR, stage_study_name
from tuner.study.runner import run_stage
from tuner.study.stages import TrialPlan, lr_stage, tpe_settings
from tuner.training.train import EpochResult, seeded_model, train_epochs

SPEC = Path(__file__).resolve().parent.parent / "studies" / "quickstart.toml"


class _Clock:
    """Seconds spent in training (model construction and epochs), summed over trials."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.epochs = 0

    def timed(self, epochs: Iterator[Any]) -> Iterator[Any]:
        while True:
            started = time.perf_counter()
            try:
                item = next(epochs)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            self.epochs += 1
            yield item


def _train(spec: StudySpec, data: Dataset, plan: TrialPlan) -> Iterator[EpochResult]:
    model = seeded_model(spec.model.family, data, plan.width, plan.depth, plan.train.seed)
    yield from train_epochs(model, data, plan.train)


def run_tuner(spec: StudySpec, data: Dataset, storage: optuna.storages.BaseStorage) -> tuple[float, _Clock]:
    """Wall seconds of the LR stage through tuner's runner, and its training clock.

    The clock is what each trial stored: ``train_seconds`` (model construction and epochs, timed
    by the trial path itself) and ``epochs_done``.
    """
    started = time.perf_counter()
    run_stage(spec, "lr", storage=storage, data=data, device=torch.device("cpu"))
    wall = time.perf_counter() - started
    clock = _Clock()
    study = optuna.load_study(study_name=stage_study_name(spec.name, "lr"), storage=storage)
    for trial in study.get_trials(deepcopy=False):
        clock.seconds += trial.user_attrs.get(TRAIN_SECONDS_ATTR, 0.0)
        clock.epochs += trial.user_attrs.get(EPOCHS_DONE_ATTR, 0)
    return wall, clock


def run_optuna(spec: StudySpec, data: Dataset, storage: str | None) -> tuple[float, _Clock]:
    """Wall seconds of the same trials as a plain Optuna study, and its training clock."""
    clock = _Clock()
    stage = lr_stage(spec)
    low, high = spec.stages.lr.lr_min, spec.stages.lr.lr_max

    def objective(trial: optuna.Trial) -> float:
        plan = stage.plan({"lr": trial.suggest_float("lr", low, high, log=True)})
        value = float("nan")
        for result in clock.timed(_train(spec, data, plan)):
            value = result.val_error
            if result.diverged:
                raise optuna.TrialPruned()
            trial.report(value, result.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    sampler = optuna.samplers.TPESampler(seed=spec.seed, **tpe_settings(stage.budget))
    started = time.perf_counter()
    study = optuna.create_study(storage=storage, sampler=sampler, study_name=spec.name)
    study.optimize(objective, n_trials=stage.budget)
    return time.perf_counter() - started, clock


def _stock_rdb(url: str) -> optuna.storages.RDBStorage:
    """Optuna's own RDBStorage, set up as ``open_storage`` sets up a SQLite file, minus the fast path."""
    from tuner.storage import heartbeat_settings, sqlite_engine_kwargs  # WAL, synchronous=NORMAL, busy timeout

    interval, grace = heartbeat_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=sqlite_engine_kwargs(url),
                                          heartbeat_interval=interval, grace_period=grace)


def profile(spec: StudySpec, data: Dataset, folder: Path) -> None:
    """Where tuner's time per trial goes on SQLite: each step of the runner's loop, timed around."""
    import collections
    import functools

    import tuner.study.runner as runner

    seconds: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def timed(name: str, owner: Any, attribute: str) -> None:
        original = getattr(owner, attribute, None)
        if original is None:  # this version of tuner has no such step
            return

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - started
                calls[name] += 1

        setattr(owner, attribute, wrapper)

    for name, owner, attribute in [
        ("Study.ask (sample, create trial)", optuna.Study, "ask"),
        ("Study.tell", optuna.Study, "tell"),
        ("Study.get_trials", optuna.Study, "get_trials"),
        ("Trial.report", optuna.Trial, "report"),
        ("Trial.should_prune", optuna.Trial, "should_prune"),
        ("Trial.set_user_attr", optuna.Trial, "set_user_attr"),
        ("write_trial_records", runner, "write_trial_records"),
        ("fail_orphaned_trials", runner, "fail_orphaned_trials"),
        ("Heartbeat start", runner.Heartbeat, "__enter__"),
        ("Heartbeat stop", runner.Heartbeat, "__exit__"),
    ]:
        timed(name, owner, attribute)
    wall, clock = run_tuner(spec.with_changes(name="profile"), data, open_storage(f"sqlite:///{folder / 'profile.db'}"))
    n = spec.stages.lr.trials
    print(f"tuner (SQLite), {n} trials: overhead {(wall - clock.seconds) / n * 1000:.1f} ms per trial "
          f"(wall {wall:.1f} s, training {clock.seconds:.1f} s); the steps, per trial (nested ones overlap):")
    for name, total in seconds.most_common():
        print(f"  {name:<34} {total / n * 1000:7.2f} ms  {calls[name] / n:5.1f} calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and rounds: about a minute")
    parser.add_argument("--trials", type=int, help="trials per side and round [default 60, quick 30]")
    parser.add_argument("--rounds", type=int, help="alternating rounds [default 5, quick 2]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default 1: steadier timings]")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference sides")
    parser.add_argument("--profile", action="store_true", help="only tuner (SQLite), with the time of each step")
    args = parser.parse_args()
    n_trials = args.trials or (30 if args.quick else 60)
    rounds = args.rounds or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_spec(SPEC)
    # One trial at a time on both sides: plain Optuna has no batched trials.
    lr = dataclasses.replace(spec.stages.lr, trials=n_trials, batched=False)
    spec = spec.with_changes(stages=dataclasses.replace(spec.stages, lr=lr))
    data = load_dataset(spec.data, spec.seed, spec.source)
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            run_tuner(spec.with_changes(name="warm-up", stages=dataclasses.replace(
                spec.stages, lr=dataclasses.replace(lr, trials=3))), data, open_storage(f"sqlite:///{folder}/w.db"))
            profile(spec, data, Path(folder))
        return
    print(f"quickstart LR stage, {n_trials} trials per side, {rounds} round(s), torch threads {torch.get_num_threads()}, "
          f"optuna {optuna.__version__}, torch {torch.__version__}")
    run_optuna(spec.with_changes(stages=dataclasses.replace(spec.stages, lr=dataclasses.replace(lr, trials=3))),
               data, None)  # warm-up: first calls pay one-time costs (imports, torch kernels)

    sides: dict[str, Callable[[Path, int], tuple[float, _Clock]]] = {
        "tuner (SQLite)": lambda folder, r: run_tuner(
            spec.with_changes(name=f"t{r}"), data, open_storage(f"sqlite:///{folder / f'tuner{r}.db'}")),
        "optuna (memory)": lambda folder, r: run_optuna(spec.with_changes(name=f"o{r}"), data, None),
    }
    if not args.no_reference:
        sides["optuna (SQLite)"] = lambda folder, r: run_optuna(
            spec.with_changes(name=f"s{r}"), data, f"sqlite:///{folder / f'optuna{r}.db'}")
        sides["tuner (SQLite, stock)"] = lambda folder, r: run_tuner(
            spec.with_changes(name=f"k{r}"), data, _stock_rdb(f"sqlite:///{folder / f'stock{r}.db'}"))
        sides["tuner (memory)"] = lambda folder, r: run_tuner(
            spec.with_changes(name=f"m{r}"), data, optuna.storages.InMemoryStorage())
    overhead: dict[str, list[float]] = {name: [] for name in sides}
    epochs: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            shown = []
            for name, side in sides.items():
                wall, clock = side(Path(folder), r)
                overhead[name].append((wall - clock.seconds) / n_trials * 1000)
                epochs[name].append(clock.epochs / n_trials)
                shown.append(f"{name} {overhead[name][-1]:.1f} ms (wall {wall:.1f} s)")
            print(f"round {r + 1}: " + " | ".join(shown))

    print("overhead per trial (wall - training), median over rounds [min-max]; epochs reported per trial:")
    for name in sides:
        values = overhead[name]
        print(f"  {name:<21} {statistics.median(values):7.1f} ms  [{min(values):.1f}-{max(values):.1f}]  "
              f"{statistics.mean(epochs[name]):.1f} epochs")
    ratio = statistics.median(overhead["tuner (SQLite)"]) / statistics.median(overhead["optuna (memory)"])
    print(f"tuner (SQLite) / optuna (memory) overhead per trial: {ratio:.2f}x (goal: <= 2)")


if __name__ == "__main__":
    main()
