"""Staged tuning against joint TPE (alone and with Optuna's HyperbandPruner), random search, a grid and Prodigy, at equal compute.

For each task and seed, ``tuner``'s staged study runs first (``tuner.run_study`` on a spec dict, a
temporary SQLite file): its compute, summed over its trials as epochs done x parameter count (the
user attributes ``epochs_done`` and ``n_params``, batched LR trials counted one by one like any
other), is the budget every other method then gets for that seed:

- ``tpe``: one Optuna TPE study over ``lr``, ``width``, ``depth``, ``schedule`` and ``decay`` at
  once, Optuna's default TPE (``TPESampler(seed=seed)``), in memory;
- ``random``: the same joint space by random search (what Greff et al. did);
- ``grid``: the textbook grid: ``lr`` on the decades of the LR range x three widths (the width
  range's ends and its geometric middle) at the smallest depth, constant rate; once the grid is
  done and budget is left, the same box again on a grid twice as fine in log(lr) (new points
  only), and so on;
- ``prodigy``: no tuning at all: one run of the learning-rate-free Prodigy optimizer
  (``prodigyopt``; lr = 1 and cosine annealing, as its authors advise; the spec's weight decay) at
  the spec's default shape; ``prodigy_staged_shape``: the same at the shape the staged study
  found best. One run each, far below the budget: their rows say what skipping the LR search
  altogether would give. Needs ``pip install -e ".[bench]"``.

Every method trains through the same code (``Stage.plan``, ``seeded_model``, ``train_epochs``), so
trials of equal settings train identically; the seed fixes the data split, the initial weights
and the data order for all methods alike, and seeds each sampler. A method asks for trials while
its compute is below the budget; its result is the best validation error of the trials that
finished within the budget (a trial that diverged counts its compute and has no error).

Per task it writes, under ``--out``: ``curves.csv`` (one row per trial: compute, cumulative
compute and wall seconds, value, best so far), ``<task>.png`` (best so far against cumulative
compute as a fraction of the budget, median over seeds with the min-max band; whole budget on a
log scale, and its last three quarters), and ``summary.csv`` / ``summary.md``: the
median and min-max over seeds of the best error, the median wall seconds, and the compute each
method needed to reach joint TPE's final error as a ratio to what TPE needed (median over seeds;
``inf`` where a method did not reach it within the budget; "reached" counts the seeds where it did).

Tasks: every study of ``studies/`` by default; besides them, three tasks the project generates
(issue 21; specs and loaders in ``scripts/bench_tasks.py``, run only when named with ``--tasks``):
``seq_slow`` (an LSTM with Adam at chance for its first epochs), ``reg_table`` (an MLP with SGD on a
regression table), ``adding_long`` (the adding problem at 50 steps). For every task it also writes
``stages.csv`` / ``stages.md``: per seed, the staged study's stage ``lr`` best against stage
``shape``'s own best (trials enqueued from stage ``lr`` left out), "shape no worse than lr in k of
N seeds", and the staged compute in param-epochs.

Run:  pip install -e ".[bench]"                     # prodigyopt, for the prodigy baseline
      python scripts/bench_search.py                 # every task of studies/, 5 seeds
      python scripts/bench_search.py --quick         # every task and method, under 5 minutes on 2 cores
      python scripts/bench_search.py --tasks wine adding --seeds 7
      python scripts/bench_search.py --tasks seq_slow reg_table adding_long --methods staged tpe tpe_hyperband \
          --out docs/bench_search_issue21/baseline     # issue 21's tasks, staged against TPE only
      python scripts/bench_search.py --from-csv runs/bench_search/curves.csv --out /tmp/again   # re-plot only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import csv
import dataclasses
import datetime
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bench_tasks  # scripts/: the generated tasks (run as a script, its folder is on sys.path)
import numpy as np
import optuna
import tomllib
import torch
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState
from torch import nn

import tuner
from tuner.inputs.data import Dataset
from tuner.inputs.load import load_dataset
from tuner.inputs.spec import StudySpec
from tuner.study.stages import Stage, base_config, make_pruner, shape_space
from tuner.training.train import parameter_count, seeded_model, train_epochs

STUDIES = Path(__file__).resolve().parent.parent / "studies"
TASKS = {  # task -> (study file or "generated", what it is)
    "digits": ("quickstart.toml", "MLP, classification"),
    "wine": ("wine.toml", "MLP, classification"),
    "breast_cancer": ("breast_cancer.toml", "MLP, classification"),
    "diabetes": ("diabetes.toml", "MLP, regression"),
    "digits_rows": ("digits_lstm.toml", "LSTM, sequence classification"),
    "adding": ("adding_lstm.toml", "LSTM, sequence regression"),
    "digits_cnn": ("digits_cnn.toml", "CNN, image classification"),
    # issue 21: tasks the project generates, specs and loaders in scripts/bench_tasks.py
    **{task: ("generated", about) for task, (_, _, about) in bench_tasks.TASKS.items()},
}
DEFAULT_TASKS = tuple(task for task, (file, _) in TASKS.items() if file != "generated")  # every study of studies/
METHODS = ("staged", "tpe", "tpe_hyperband", "random", "grid", "prodigy", "prodigy_staged_shape")
# --quick: smaller budgets and fewer epochs, the same for every method; the full run keeps the studies' own.
QUICK = {
    "digits": {"lr": 12, "shape": 6, "epochs": 6},
    "wine": {"lr": 12, "shape": 6, "epochs": 10},
    "breast_cancer": {"lr": 12, "shape": 6, "epochs": 8},
    "diabetes": {"lr": 12, "shape": 6, "epochs": 8},
    "digits_rows": {"lr": 6, "shape": 4, "epochs": 3},
    "adding": {"lr": 6, "shape": 4, "epochs": 3},
    "digits_cnn": {"lr": 6, "shape": 4, "epochs": 3},
    "seq_slow": {"lr": 6, "shape": 4, "epochs": 8},  # past the epochs at chance, or nothing learns
    "reg_table": {"lr": 12, "shape": 6, "epochs": 8},
    "adding_long": {"lr": 6, "shape": 4, "epochs": 3},
}
QUICK_SEEDS = 3
GRID_WIDTHS = 3  # the width range's ends and its geometric middle


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial of one method, in the order the method ran it."""

    value: float | None  # validation objective at the last epoch; None if it diverged
    n_params: int
    epochs: int
    seconds: float  # wall seconds since the method started, at the end of this trial

    @property
    def compute(self) -> int:
        return self.n_params * self.epochs


def task_spec(task: str, seed: int, quick: bool, shape: dict[str, Any] | None = None,
              lr: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study file of ``task`` (or its generated spec) as a dict, with this seed (and the quick budgets);
    ``shape``, ``lr``: fields of ``[stages.shape]`` and ``[stages.lr]`` set on every task (``--shape``,
    ``--lr``), e.g. ``{"lr_transfer": "none"}``, ``{"handoff": "basin"}``."""
    if TASKS[task][0] == "generated":
        table = copy.deepcopy(bench_tasks.TASKS[task][0])
    else:
        table = tomllib.loads((STUDIES / TASKS[task][0]).read_text())
    table["name"] = f"bench-{task}-{seed}"
    table["seed"] = seed
    table.pop("storage", None)
    stages = table.setdefault("stages", {})
    stages.pop("audit", None)  # the staged study proper: lr, then shape
    stages.setdefault("lr", {}).update(lr or {})
    stages.setdefault("shape", {}).update(shape or {})
    if quick:
        settings = QUICK[task]
        table.setdefault("train", {})["epochs"] = settings["epochs"]
        stages.setdefault("lr", {})["trials"] = settings["lr"]
        stages.setdefault("shape", {})["trials"] = settings["shape"]
        for stage in ("lr", "shape"):
            stages[stage].pop("epochs", None)
    return table


def joint_space(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The staged study's parameters, all at once, over the same ranges."""
    lr = spec.stages.lr
    return {"lr": FloatDistribution(lr.lr_min, lr.lr_max, log=True), **shape_space(spec)}


def joint_stage(spec: StudySpec) -> Stage:
    """A stage over the joint space: its ``plan`` turns a point into the same training run as tuner's."""
    epochs = spec.stages.shape.epochs or spec.train.epochs
    return Stage(name="joint", budget=0, epochs=epochs, sampler="tpe", pruner="none",
                 space=joint_space(spec), fixed={}, base=base_config(spec, epochs),
                 width=spec.model.width, depth=spec.model.depth)


def train_point(spec: StudySpec, data: Dataset, stage: Stage, params: dict[str, Any],
                report: Callable[[float, int], object] | None = None,
                optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None) -> tuple[float | None, int, int]:
    """Train one point as tuner would; (final objective or None if it diverged, parameters, epochs done).

    ``report(value, epoch)`` after each epoch; if it returns True, training stops there (pruned):
    the value is the last epoch's and only the epochs trained count as compute. ``optimizer(model)``:
    the optimizer to train with instead of the spec's.
    """
    plan = stage.plan(params)
    model = seeded_model(spec.model.family, data, plan.width, plan.depth, plan.train.seed)
    value: float | None = None
    epochs = 0
    for result in train_epochs(model, data, plan.train, optimizer(model) if optimizer else None):
        epochs = result.epoch
        current = result.val_error if spec.train.objective == "val_error" else result.val_loss
        if result.diverged or not math.isfinite(current):
            value = None
            break
        value = current
        if report is not None and report(current, result.epoch) is True:
            break
    return value, parameter_count(spec.model.family, data, plan.width, plan.depth), epochs


@dataclasses.dataclass(frozen=True)
class StagedOutcome:
    """What the staged study's own stages ended with, for issue 21's reading: is stage shape no worse than stage lr?"""

    lr_best: float | None  # result.stages["lr"].best_value
    shape_best: float | None  # result.stages["shape"].best_value (a trial enqueued from stage lr included)
    shape_own_best: float | None  # stage shape's best over the trials it sampled itself (no enqueued trial)
    shape_complete: int
    shape_pruned: int
    best_lr: float | None  # the rate stage lr handed on
    best_stage: str | None  # the stage the study's best comes from
    compute: int  # param-epochs of both stages
    noise: float | None = None  # the noise unit stage lr's hand-off measured (binomial for an error rate)

    @property
    def shape_no_worse(self) -> bool | None:
        """Stage shape's own best <= stage lr's best (lower is better); None if either stage has no value."""
        if self.lr_best is None or self.shape_own_best is None:
            return None
        return self.shape_own_best <= self.lr_best

    @property
    def shape_within_noise(self) -> bool | None:
        """Stage shape's own best <= stage lr's best + one noise unit of the hand-off: a tie within noise counts.

        Read beside :attr:`shape_no_worse`, never instead of it: where every configuration reaches the task's
        floor, "no worse" compares the luckiest of 12 draws with the luckiest of 16-20.
        """
        if self.shape_no_worse is None or self.noise is None:
            return None
        return self.shape_own_best <= self.lr_best + self.noise  # type: ignore[operator]


def run_staged(table: dict[str, Any], folder: Path, loader: Callable[..., Any] | None = None
               ) -> tuple[list[TrialRecord], tuple[int, int], StagedOutcome]:
    """tuner's staged study on a fresh SQLite file: its trials in the order they finished, its best (width, depth), its stages."""
    spec = tuner.spec_from_dict(table)
    storage = f"sqlite:///{folder / (spec.name + '.db')}"
    started = datetime.datetime.now()
    result = tuner.run_study(spec, storage=storage, device="cpu", loader=loader, progress=False)
    records = []
    for stage in ("lr", "shape"):
        study = optuna.load_study(study_name=f"{spec.name}/{stage}", storage=storage)
        for trial in sorted(study.trials, key=lambda t: (t.datetime_complete or started, t.number)):
            if "n_params" not in trial.user_attrs:
                continue  # failed before training: no compute spent
            value = trial.value if trial.state == TrialState.COMPLETE else None
            end = (trial.datetime_complete - started).total_seconds() if trial.datetime_complete else 0.0
            records.append(TrialRecord(value, int(trial.user_attrs["n_params"]), int(trial.user_attrs["epochs_done"]), end))
    shape_study = optuna.load_study(study_name=f"{spec.name}/shape", storage=storage)
    complete = [t for t in shape_study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    # Optuna marks an enqueued trial with the system attribute "fixed_params": stage lr's winner, not shape's own find.
    own = [t.value for t in complete if "fixed_params" not in t.system_attrs]
    best = min(complete, key=lambda t: t.value).params if complete else {}
    lr, shape = result.stages.get("lr"), result.stages.get("shape")
    handoff = optuna.load_study(study_name=f"{spec.name}/lr", storage=storage).user_attrs.get("handoff") or {}
    outcome = StagedOutcome(
        lr_best=lr.best_value if lr else None, shape_best=shape.best_value if shape else None,
        shape_own_best=min(own) if own else None, shape_complete=shape.n_complete if shape else 0,
        shape_pruned=shape.n_pruned if shape else 0, best_lr=result.best_lr, best_stage=result.best_stage,
        compute=sum(r.compute for r in records), noise=handoff.get("noise"))
    return records, (int(best.get("width", spec.model.width)), int(best.get("depth", spec.model.depth))), outcome


def run_sampler(spec: StudySpec, data: Dataset, sampler: optuna.samplers.BaseSampler, budget: int,
                pruner: optuna.pruners.BasePruner | None = None) -> list[TrialRecord]:
    """Ask-and-tell over the joint space (in memory) until the budget is spent; with a pruner, epochs are its resource."""
    stage = joint_stage(spec)
    study = optuna.create_study(sampler=sampler, pruner=pruner, direction="minimize")
    records: list[TrialRecord] = []
    spent = 0
    started = time.perf_counter()
    while spent < budget:
        trial = study.ask(fixed_distributions=stage.space)
        pruned = []

        def report(value: float, epoch: int, trial: optuna.Trial = trial) -> bool:
            trial.report(value, epoch)
            if pruner is not None and trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        value, n_params, epochs = train_point(spec, data, stage, trial.params, report)
        if value is None or pruned:
            study.tell(trial, state=TrialState.PRUNED)  # as tuner tells a diverged (or pruned) trial
        else:
            study.tell(trial, value)
        # A pruned trial's value is of fewer epochs: not a final error, as tuner's pruned trials are not.
        records.append(TrialRecord(None if pruned else value, n_params, epochs, time.perf_counter() - started))
        spent += n_params * epochs
    return records


def grid_points(spec: StudySpec) -> Iterator[dict[str, Any]]:
    """LR decades x a few widths, then ever finer grids in log(lr) over the same box (new points only)."""
    lr, shape = spec.stages.lr, spec.stages.shape
    low, high = math.log10(lr.lr_min), math.log10(lr.lr_max)
    widths = sorted({round(w) for w in np.geomspace(shape.width[0], shape.width[1], GRID_WIDTHS)})
    seen: set[float] = set()
    step = 1.0
    while step > 1e-3:
        exponents = [e for e in np.arange(math.ceil(low / step) * step, high + 1e-9, step) if round(e, 6) not in seen]
        seen.update(round(e, 6) for e in exponents)
        for width in widths:  # the cheap sizes first, as one would by hand
            for exponent in exponents:
                yield {"lr": float(10**exponent), "width": width, "depth": shape.depth[0],
                       "schedule": "constant", "decay": 1.0}
        step /= 2


def run_grid(spec: StudySpec, data: Dataset, budget: int) -> list[TrialRecord]:
    stage = joint_stage(spec)
    records: list[TrialRecord] = []
    spent = 0
    started = time.perf_counter()
    for params in grid_points(spec):
        if spent >= budget:
            break
        value, n_params, epochs = train_point(spec, data, stage, params)
        records.append(TrialRecord(value, n_params, epochs, time.perf_counter() - started))
        spent += n_params * epochs
    return records


def prodigy_class() -> type[torch.optim.Optimizer]:
    """``prodigyopt.Prodigy``; exits with the install command if it is missing."""
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise SystemExit('the prodigy baseline needs prodigyopt: pip install -e ".[bench]"') from None
    return Prodigy


def run_prodigy(spec: StudySpec, data: Dataset, shape: tuple[int, int]) -> list[TrialRecord]:
    """One run of Prodigy at ``shape`` (width, depth): lr = 1 with cosine annealing, no tuning."""
    Prodigy = prodigy_class()
    stage = joint_stage(spec)
    started = time.perf_counter()
    params = {"lr": 1.0, "width": shape[0], "depth": shape[1], "schedule": "cosine", "decay": 0.0}
    value, n_params, epochs = train_point(
        spec, data, stage, params,
        optimizer=lambda model: Prodigy(model.parameters(), lr=1.0, weight_decay=spec.train.weight_decay))
    return [TrialRecord(value, n_params, epochs, time.perf_counter() - started)]


def best_so_far(records: list[TrialRecord]) -> list[tuple[int, float]]:
    """(cumulative compute, best value so far) after each trial; inf until a trial has a value."""
    points, spent, best = [], 0, math.inf
    for record in records:
        spent += record.compute
        if record.value is not None:
            best = min(best, record.value)
        points.append((spent, best))
    return points


def best_within(records: list[TrialRecord], budget: int) -> float:
    within = [best for spent, best in best_so_far(records) if spent <= budget]
    return within[-1] if within else math.inf


def compute_to_reach(records: list[TrialRecord], target: float, budget: int) -> float:
    """Cumulative compute at which the best so far first reached ``target`` (inf: not within the budget)."""
    for spent, best in best_so_far(records):
        if spent > budget:
            break
        if best <= target:
            return float(spent)
    return math.inf


def task_loader(task: str) -> Callable[..., Any] | None:
    """The generated task's data loader (tuner's user-loader contract); None for a study file's own data."""
    return bench_tasks.TASKS[task][1] if TASKS[task][0] == "generated" else None


def run_seed(task: str, seed: int, quick: bool, folder: Path, methods: tuple[str, ...] = METHODS,
             shape: dict[str, Any] | None = None, lr: dict[str, Any] | None = None,
             ) -> tuple[dict[str, list[TrialRecord]], StagedOutcome]:
    """Every method of ``methods`` on one seed (staged always: it sets the budget); their trials, and staged's stages."""
    table = task_spec(task, seed, quick, shape, lr)
    loader = task_loader(task)
    staged, best_shape, outcome = run_staged(table, folder, loader)
    budget = sum(r.compute for r in staged)
    spec = tuner.spec_from_dict(table)
    data = load_dataset(spec.data, spec.seed, spec.source, loader)
    others: dict[str, Callable[[], list[TrialRecord]]] = {
        "tpe": lambda: run_sampler(spec, data, optuna.samplers.TPESampler(seed=seed), budget),
        # Optuna's advice for TPE: HyperbandPruner, epochs as the resource (tuner's own settings for it).
        "tpe_hyperband": lambda: run_sampler(spec, data, optuna.samplers.TPESampler(seed=seed), budget,
                                             make_pruner("hyperband", spec.stages.shape.epochs or spec.train.epochs)),
        "random": lambda: run_sampler(spec, data, optuna.samplers.RandomSampler(seed=seed), budget),
        "grid": lambda: run_grid(spec, data, budget),
        "prodigy": lambda: run_prodigy(spec, data, (spec.model.width, spec.model.depth)),
        "prodigy_staged_shape": lambda: run_prodigy(spec, data, best_shape),
    }
    return {"staged": staged, **{m: others[m]() for m in methods if m != "staged"}}, outcome


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def methods_of(runs: dict[int, dict[str, list[TrialRecord]]]) -> list[str]:
    """The methods every seed of ``runs`` ran, in METHODS' order."""
    return [m for m in METHODS if all(methods.get(m) for methods in runs.values())]


def summarise(task: str, runs: dict[int, dict[str, list[TrialRecord]]]) -> list[dict[str, Any]]:
    """Per method: the best error at the budget (median, min, max over seeds), wall, compute ratio to TPE."""
    rows = []
    budgets = {seed: sum(r.compute for r in methods["staged"]) for seed, methods in runs.items()}
    # Without tpe (--methods) no method has a target: every ratio is nan.
    targets = {seed: best_within(methods.get("tpe", []), budgets[seed]) for seed, methods in runs.items()}
    tpe_needs = {seed: compute_to_reach(methods.get("tpe", []), targets[seed], budgets[seed]) or math.nan
                 for seed, methods in runs.items()}
    for method in methods_of(runs):
        bests = [best_within(runs[seed][method], budgets[seed]) for seed in runs]
        ratios = [compute_to_reach(runs[seed][method], targets[seed], budgets[seed]) / tpe_needs[seed] for seed in runs]
        walls = [runs[seed][method][-1].seconds for seed in runs]
        rows.append({
            "task": task,
            "method": method,
            "seeds": len(runs),
            "budget_param_epochs": int(statistics.median(budgets.values())),
            "trials_median": statistics.median(len(runs[seed][method]) for seed in runs),
            "best_median": statistics.median(bests),
            "best_at_quarter_budget": statistics.median(best_within(runs[seed][method], budgets[seed] // 4) for seed in runs),
            "best_at_half_budget": statistics.median(best_within(runs[seed][method], budgets[seed] // 2) for seed in runs),
            "best_min": min(bests),
            "best_max": max(bests),
            "wall_s_median": round(statistics.median(walls), 2),
            "compute_ratio_to_tpe": statistics.median(ratios),
            "compute_ratio_per_seed": " ".join("inf" if math.isinf(r) else f"{r:.2g}" for r in ratios),
            "reached_tpe_final": sum(not math.isinf(r) for r in ratios),
        })
    return rows


def write_curves(path: Path, task: str, runs: dict[int, dict[str, list[TrialRecord]]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(["task", "method", "seed", "trial", "n_params", "epochs", "compute",
                             "cum_compute", "cum_wall_s", "value", "best_so_far", "budget"])
        for seed, methods in runs.items():
            budget = sum(r.compute for r in methods["staged"])
            for method, records in methods.items():
                for i, (record, (spent, best)) in enumerate(zip(records, best_so_far(records))):
                    writer.writerow([task, method, seed, i, record.n_params, record.epochs, record.compute, spent,
                                     round(record.seconds, 3), "" if record.value is None else record.value,
                                     "" if math.isinf(best) else best, budget])


def plot_task(path: Path, task: str, runs: dict[int, dict[str, list[TrialRecord]]], objective: str) -> None:
    """Best so far against cumulative compute: the whole budget (log scale), and its last three quarters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Compute as a fraction of each seed's budget, so that every seed's curves end where its budget does.
    budgets = {seed: sum(r.compute for r in methods["staged"]) for seed, methods in runs.items()}
    smallest = min(r.compute / budgets[seed] for seed, methods in runs.items() for records in methods.values() for r in records)
    grids = (np.geomspace(smallest, 1.0, 300), np.linspace(0.25, 1.0, 300))
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5))
    zoom_low, zoom_high = math.inf, -math.inf
    for method in methods_of(runs):
        for panel, grid in zip(panels, grids):
            curves = []
            for seed, methods in runs.items():
                points = best_so_far(methods[method])
                spent = np.array([p[0] for p in points], dtype=float) / budgets[seed]
                best = np.array([p[1] for p in points])
                index = np.searchsorted(spent, grid, side="right") - 1  # best so far at each compute level
                curves.append(np.where(index >= 0, best[np.clip(index, 0, None)], np.inf))
            stacked = np.array(curves)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # inf before a method's first value
                median = np.median(stacked, axis=0)
            finite = np.isfinite(median)
            panel.plot(grid[finite], median[finite], label=method, color=f"C{METHODS.index(method)}",
                       linewidth=2.2 if method == "staged" else 1.4)
            low, high = stacked.min(axis=0), stacked.max(axis=0)
            band = np.isfinite(high)
            panel.fill_between(grid[band], low[band], high[band], color=f"C{METHODS.index(method)}", alpha=0.1)
            if panel is panels[1] and finite.any():
                zoom_low = min(zoom_low, float(low[np.isfinite(low)].min()))
                zoom_high = max(zoom_high, float(median[finite][0]))
    values = [r.value for methods in runs.values() for records in methods.values() for r in records if r.value is not None]
    if values:
        panels[0].set_ylim(min(values) - 0.05 * abs(min(values)), np.percentile(values, 75))
    if math.isfinite(zoom_low) and zoom_high > zoom_low:
        margin = 0.05 * (zoom_high - zoom_low)
        panels[1].set_ylim(zoom_low - margin, zoom_high + margin)
    panels[0].set_xscale("log")
    panels[0].set_title(f"{task}: median over {len(runs)} seeds, band min-max", fontsize=9)
    panels[1].set_title("the last three quarters of the budget", fontsize=9)
    for panel in panels:
        panel.set_xlabel("cumulative compute (epochs x parameters) / budget")
        panel.set_ylabel(f"best {objective} so far")
        panel.grid(True, which="both", alpha=0.3)
    panels[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summary_line(task: str, rows: list[dict[str, Any]]) -> str:
    by = {row["method"]: row for row in rows}
    methods = [m for m in METHODS if m in by]
    bests = " | ".join(f"{m} {_fmt(by[m]['best_median'])} [{_fmt(by[m]['best_min'])}-{_fmt(by[m]['best_max'])}]"
                       for m in methods)
    walls = " ".join(f"{m} {by[m]['wall_s_median']:.1f}" for m in methods)
    others = ", ".join(f"{m} {_fmt(by[m]['compute_ratio_to_tpe'])}x ({by[m]['reached_tpe_final']}/{by[m]['seeds']})"
                       for m in methods if m not in ("staged", "tpe"))
    staged = by["staged"]
    return (f"{task} ({TASKS[task][1]}, {staged['seeds']} seeds, budget {staged['budget_param_epochs']:.3g} param-epochs): "
            f"best median [min-max] {bests}; wall s {walls}; compute to reach TPE's final error vs TPE: {others}; "
            f"staged reached it in {staged['reached_tpe_final']}/{staged['seeds']}, ratio {_fmt(staged['compute_ratio_to_tpe'])}x")


def write_summary(out: Path, rows: list[dict[str, Any]]) -> None:
    with (out / "summary.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| task | method | trials (median) | best error at 1/4, 1/2 of the budget (medians) | best error at the "
             "budget: median [min-max] | wall s (median) | compute to reach TPE's final error / TPE's: median (per seed) | "
             "seeds that reached it |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['task']} | {row['method']} | {row['trials_median']:g} | "
                     f"{_fmt(row['best_at_quarter_budget'])}, {_fmt(row['best_at_half_budget'])} | {_fmt(row['best_median'])} "
                     f"[{_fmt(row['best_min'])}-{_fmt(row['best_max'])}] | {row['wall_s_median']:.1f} | "
                     f"{_fmt(row['compute_ratio_to_tpe'])} ({row['compute_ratio_per_seed']}) | "
                     f"{row['reached_tpe_final']}/{row['seeds']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


STAGE_COLUMNS = ("task", "seed", "lr_best", "shape_best", "shape_own_best", "shape_no_worse", "shape_complete",
                 "shape_pruned", "best_lr", "best_stage", "staged_param_epochs", "noise", "shape_within_noise")


def write_stages(out: Path, outcomes: dict[str, dict[int, StagedOutcome]]) -> None:
    """``stages.csv`` / ``stages.md``: per task and seed, stage shape's own best against stage lr's, and the staged compute.

    Issue 21's first criterion reads off the count: stage shape's own best (trials it sampled itself;
    a stage lr winner enqueued into it does not count) no worse than stage lr's in k of N seeds.
    """
    rows = []
    for task, seeds in outcomes.items():
        for seed, o in seeds.items():
            rows.append({"task": task, "seed": seed, "lr_best": o.lr_best, "shape_best": o.shape_best,
                         "shape_own_best": o.shape_own_best, "shape_no_worse": o.shape_no_worse,
                         "shape_complete": o.shape_complete, "shape_pruned": o.shape_pruned, "best_lr": o.best_lr,
                         "best_stage": o.best_stage, "staged_param_epochs": o.compute, "noise": o.noise,
                         "shape_within_noise": o.shape_within_noise})
    with (out / "stages.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(STAGE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    show = lambda v: "-" if v is None else _fmt(v)
    said = lambda v: "-" if v is None else "yes" if v else "no"
    lines = [("| task | seed | stage lr best | stage shape best | shape's own best | shape no worse than lr | "
              "within one noise unit (unit) | shape complete / pruned | rate handed on | study's best from | "
              "staged compute (param-epochs) |"),
             "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | ---: |"]
    for row in rows:
        lines.append(f"| {row['task']} | {row['seed']} | {show(row['lr_best'])} | {show(row['shape_best'])} | "
                     f"{show(row['shape_own_best'])} | {said(row['shape_no_worse'])} | "
                     f"{said(row['shape_within_noise'])} ({show(row['noise'])}) | "
                     f"{row['shape_complete']} / {row['shape_pruned']} | {show(row['best_lr'])} | {row['best_stage']} | "
                     f"{row['staged_param_epochs']:,} |")
    lines += ["", "| task | shape's own best no worse than stage lr's | ... or within one noise unit of it | "
                  "staged compute, median (min-max) param-epochs |",
              "| --- | --- | --- | --- |"]
    for task, seeds in outcomes.items():
        counted = [o.shape_no_worse for o in seeds.values()]
        tied = [o.shape_within_noise for o in seeds.values()]
        computes = [o.compute for o in seeds.values()]
        lines.append(f"| {task} | {sum(bool(c) for c in counted)} of {len(counted)} seeds | "
                     f"{sum(bool(c) for c in tied)} of {len(tied)} seeds | "
                     f"{statistics.median(computes):,.0f} ({min(computes):,}-{max(computes):,}) |")
    (out / "stages.md").write_text("\n".join(lines) + "\n")


def stages_line(task: str, seeds: dict[int, StagedOutcome]) -> str:
    counted = [o.shape_no_worse for o in seeds.values()]
    pairs = ", ".join(f"seed {seed}: shape {'-' if o.shape_own_best is None else _fmt(o.shape_own_best)} vs lr "
                      f"{'-' if o.lr_best is None else _fmt(o.lr_best)}" for seed, o in seeds.items())
    tied = sum(bool(o.shape_within_noise) for o in seeds.values())
    return (f"{task}: stage shape's own best no worse than stage lr's in {sum(bool(c) for c in counted)} of "
            f"{len(counted)} seeds, within one noise unit of it in {tied} ({pairs}); staged compute median {statistics.median(o.compute for o in seeds.values()):,.0f} param-epochs")


def load_curves(path: Path) -> dict[str, dict[int, dict[str, list[TrialRecord]]]]:
    """The runs of a ``curves.csv`` this script wrote: task -> seed -> method -> trials in order."""
    tasks: dict[str, dict[int, dict[str, list[TrialRecord]]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            methods = tasks.setdefault(row["task"], {}).setdefault(int(row["seed"]), {})
            value = float(row["value"]) if row["value"] else None
            methods.setdefault(row["method"], []).append(
                TrialRecord(value, int(row["n_params"]), int(row["epochs"]), float(row["cum_wall_s"])))
    return tasks


def report(out: Path, task: str, runs: dict[int, dict[str, list[TrialRecord]]], rows: list[dict[str, Any]],
           quick: bool) -> None:
    """Summary rows, PNG and summary files of one task; prints its line."""
    task_rows = summarise(task, runs)
    rows += task_rows
    objective = tuner.spec_from_dict(task_spec(task, 0, quick)).train.objective
    plot_task(out / f"{task}.png", task, runs, objective)
    write_summary(out, rows)
    print(summary_line(task, task_rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller budgets, {QUICK_SEEDS} seeds: under 5 minutes on 2 cores")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), help=f"default: {' '.join(DEFAULT_TASKS)}")
    parser.add_argument("--seeds", type=int, help=f"seeds 0..N-1 per task [default 5, quick {QUICK_SEEDS}]")
    parser.add_argument("--only-seeds", type=int, nargs="+", metavar="SEED",
                        help="run these seeds only (e.g. those a change touches; runs are deterministic given the seed)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_search"), help="folder for CSV, PNG, summary")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to run [default: all]; staged always runs (it sets the budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default 1: steadier timings]")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(task, seed) runs at once, in processes of their own [default 1: steadier wall seconds]")
    parser.add_argument("--from-csv", type=Path, help="no training: summaries and PNGs again from a curves.csv of a run")
    parser.add_argument("--shape", action="append", default=[], metavar="FIELD=JSON",
                        help='set a field of [stages.shape] on every task, e.g. --shape lr_transfer=\'"none"\' (repeatable)')
    parser.add_argument("--lr", action="append", default=[], metavar="FIELD=JSON",
                        help='set a field of [stages.lr] on every task, e.g. --lr handoff=\'"basin"\' (repeatable)')
    parser.add_argument("--keep", type=Path, help="keep the staged studies' SQLite files in this folder (default: a temporary one)")
    args = parser.parse_args()
    tasks = args.tasks or list(DEFAULT_TASKS)
    methods = tuple(m for m in METHODS if m in args.methods or m == "staged")
    n_seeds = args.seeds or (QUICK_SEEDS if args.quick else 5)
    seeds = list(args.only_seeds) if args.only_seeds else list(range(n_seeds))
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.from_csv:
        for task, runs in load_curves(args.from_csv).items():
            report(args.out, task, runs, rows, args.quick)
        return
    if any(m.startswith("prodigy") for m in methods):
        prodigy_class()  # before any training, not after the first seed's other methods
    (args.out / "curves.csv").unlink(missing_ok=True)
    print(f"optuna {optuna.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"seeds {' '.join(map(str, seeds))}, {'quick' if args.quick else 'full'} budgets, methods {' '.join(methods)}; "
          f"writing {args.out}/", flush=True)

    started = time.perf_counter()
    outcomes: dict[str, dict[int, StagedOutcome]] = {}
    shape, lr = ({field: json.loads(value) for field, _, value in (item.partition("=") for item in given)}
                 for given in (args.shape, args.lr))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory()) as folder, \
            concurrent.futures.ProcessPoolExecutor(
            args.jobs, initializer=torch.set_num_threads, initargs=(args.threads,)) as pool:
        # Every (task, seed) is a job of its own: its trials train alike in any process, only wall seconds differ.
        jobs = {(task, seed): pool.submit(run_seed, task, seed, args.quick, Path(folder), methods, shape, lr)
                for task in tasks for seed in seeds}
        for task in tasks:
            runs = {}
            for seed in seeds:
                runs[seed], outcomes.setdefault(task, {})[seed] = jobs[task, seed].result()
                print(f"  {task} seed {seed} done at {time.perf_counter() - started:.0f} s", flush=True)
            write_curves(args.out / "curves.csv", task, runs)
            write_stages(args.out, outcomes)
            report(args.out, task, runs, rows, args.quick)
            print(stages_line(task, outcomes[task]), flush=True)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
