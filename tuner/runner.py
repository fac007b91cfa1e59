"""The staged study: run each stage to its budget, hand the best learning rate on, resume anything.

Every stage is one Optuna study in one storage. A stage owes ``budget`` finished trials (complete
or pruned); whoever runs it, one process or many, asks for trials until that many are finished or
in flight, then waits for the ones in flight, so the hand-off to the next stage sees all of them
and happens once. Nothing lives outside the storage, so running the same command again resumes.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner._records import write_trial_records
from tuner.data import Dataset, load_dataset
from tuner.importance import AuditVerdict, audit_verdict
from tuner.models import check_model_fits
from tuner.spec import StudySpec, load_spec, settings_hash
from tuner.stages import (
    STAGE_NAMES,
    Stage,
    TrialPlan,
    audit_stage,
    describe_search,
    lr_stage,
    make_pruner,
    make_sampler,
    shape_stage,
    stage_settings,
)
from tuner.storage import (
    DEFAULT_STORAGE,
    Heartbeat,
    StorageError,
    fail_orphaned_trials,
    fail_trial,
    open_storage,
    redact,
    worker_attrs,
)
from tuner.train import EpochResult, parameter_count, resolve_device, seeded_model, train_epochs

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_INTERVAL_S = 1.0  # how often a worker with nothing to do looks at the stage again
MAX_CONSECUTIVE_FAILURES = 5  # a trial that raises every time is a bug, not bad luck: stop
REPORT_FLUSH_S = 10.0  # without a pruner, a trial's per-epoch reports are stored at most this often
ORPHAN_CHECK_S = 10.0  # while trials keep finishing, look for dead workers' trials at most this often
SURPLUS_ATTR = "surplus"  # on a trial failed untrained because other workers had filled the budget


class TunerError(RuntimeError):
    """A study that cannot go on; the message says why and what to do."""


class StudyMismatchError(TunerError):
    """The stored study was made from different search settings than the spec has now."""


@dataclass(frozen=True)
class StageSummary:
    stage: str
    study_name: str
    budget: int
    n_complete: int
    n_pruned: int
    n_diverged: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    wall_seconds: float  # first trial start to last trial end, across resumed runs
    train_seconds: float  # summed training time of the stage's trials


@dataclass(frozen=True)
class StudyResult:
    name: str
    storage: str  # redacted: safe to print
    best_lr: float | None
    stages: dict[str, StageSummary] = field(default_factory=dict)
    audit: AuditVerdict | None = None  # set when the study has an audit stage

    @property
    def best_value(self) -> float | None:
        values = [s.best_value for s in self.stages.values() if s.stage != "audit" and s.best_value is not None]
        return values[-1] if values else None


class Reporter:
    """Hooks through which a study tells its progress; the default says nothing."""

    def stage_started(self, stage: Stage, n_finished: int) -> None: ...

    def trial_finished(self, stage: Stage, trial: FrozenTrial, n_finished: int, best_value: float | None) -> None: ...

    def waiting(self, stage: Stage, n_running: int) -> None: ...

    def stage_finished(self, summary: StageSummary) -> None: ...

    def message(self, text: str) -> None: ...


def run_study(
    spec: StudySpec | str | Path,
    *,
    storage: str | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> StudyResult:
    """Run (or resume) a staged study: ``lr``, then ``shape``, then the optional ``audit``.

    Example:
        >>> result = tuner.run_study("studies/quickstart.toml", storage="sqlite:///tuner.db")  # doctest: +SKIP
        >>> result.best_lr  # doctest: +SKIP
        0.0412

    Args:
        spec: a :class:`StudySpec` or the path of a TOML study file.
        storage: an Optuna storage URL; default: the spec's ``storage``, else ``sqlite:///tuner.db``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        reporter: receives progress; see :class:`Reporter`.
    """
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    reporter = reporter or Reporter()
    # Everything that can be wrong with the input is checked before the storage is touched.
    torch_device = resolve_device(device)
    data = load_dataset(spec.data, spec.seed, spec.source).to(torch_device)
    check_model_fits(spec, data, torch_device)  # before the storage: nothing written for a model that cannot train
    storage_url = storage or spec.storage
    try:
        optuna_storage = open_storage(storage_url)
    except StorageError as error:
        if storage or not spec.storage:
            raise
        raise StorageError(f"{spec.source or spec.name}: field 'storage': {error}") from None
    check_stored_settings(spec, optuna_storage)

    runner = _StageRunner(spec, optuna_storage, data, torch_device, reporter)
    summaries: dict[str, StageSummary] = {}
    from tuner.lr_find import auto_lr_range

    # lr_range = "auto": the range test runs once (kept on <name>/lr, reused on resume) and sets the bounds.
    lr_range = auto_lr_range(spec, optuna_storage, data, reporter.message)
    lr_summary = runner.run(lr_stage(spec, lr_range=lr_range))
    summaries["lr"] = lr_summary
    best_lr = runner.hand_off_lr()
    summaries["shape"] = runner.run(shape_stage(spec, best_lr))
    if spec.stages.audit.trials > 0:
        summaries["audit"] = runner.run(audit_stage(spec))
    # The audit's point: did lr interact little with the rest here? Judged and stored on <name>/audit.
    verdict = audit_verdict(spec.name, optuna_storage) if "audit" in summaries else None
    return StudyResult(spec.name, redact(storage_url or DEFAULT_STORAGE), best_lr, summaries, verdict)


def check_stored_settings(spec: StudySpec, storage: optuna.storages.BaseStorage) -> None:
    """Refuse a spec whose search settings differ from those its stored stages were made with."""
    existing = set(optuna.get_all_study_names(storage))
    for stage in ("lr", "shape", "audit"):
        name = f"{spec.name}/{stage}"
        if name not in existing:
            continue
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get("settings")
        wanted = _normalise(stage_settings(spec, stage))
        if stored is not None and _normalise(stored) != wanted:
            changes = "; ".join(_differences(stored, wanted)) or "settings differ"
            raise StudyMismatchError(
                f"study '{name}' was made with other search settings ({changes}). Its trials would be "
                f"mixed with different ones: give the study a new name (name = \"...\" in the spec, or "
                f"--name NEW), or put the old settings back to resume it."
            )


def _normalise(settings: Any) -> Any:
    return json.loads(json.dumps(settings, sort_keys=True))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def stage_summary(study: optuna.Study, stage: Stage) -> StageSummary:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    starts = [t.datetime_start for t in finished if t.datetime_start]
    ends = [t.datetime_complete for t in finished if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    best_params = {**stage.fixed, **best.params} if best else {}
    return StageSummary(
        stage=stage.name,
        study_name=study.study_name,
        budget=stage.budget,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_diverged=sum(bool(t.user_attrs.get("diverged")) for t in finished),
        n_failed=sum(t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS_ATTR) for t in trials),
        best_value=best.value if best else None,
        best_params=best_params,
        wall_seconds=wall,
        train_seconds=sum(float(t.user_attrs.get("train_seconds", 0.0)) for t in finished),
    )


class _StageRunner:
    def __init__(self, spec: StudySpec, storage: optuna.storages.BaseStorage, data: Dataset,
                 device: torch.device, reporter: Reporter) -> None:
        self.spec = spec
        self.storage = storage
        self.data = data
        self.device = device
        self.reporter = reporter

    def open(self, stage: Stage) -> optuna.Study:
        study = optuna.create_study(
            study_name=stage.study_name(self.spec.name), storage=self.storage, direction="minimize", load_if_exists=True
        )
        if "settings" not in study.user_attrs:
            settings = stage_settings(self.spec, stage.name)
            study.set_user_attr("settings", settings)
            study.set_user_attr("settings_hash", settings_hash(settings))
            study.set_user_attr("search", describe_search(stage))
            study.set_user_attr("objective", self.spec.train.objective)
        return study

    def run(self, stage: Stage) -> StageSummary:
        study = self.open(stage)
        if study.user_attrs.get("budget") != stage.budget:
            study.set_user_attr("budget", stage.budget)
        consecutive_failures = 0
        announced = False
        orphans_checked = -math.inf
        while True:
            # Dead workers' trials matter once they hold up the stage (when we wait): look for them
            # then, and every ORPHAN_CHECK_S, not before every trial (it reads the stage's trials anew).
            if time.monotonic() - orphans_checked >= ORPHAN_CHECK_S:
                fail_orphaned_trials(study)
                orphans_checked = time.monotonic()
            trials = study.get_trials(deepcopy=False)
            n_finished = sum(t.state in FINISHED for t in trials)
            n_running = sum(t.state == TrialState.RUNNING for t in trials)
            if not announced:
                self.reporter.stage_started(stage, n_finished)
                announced = True
            if n_finished >= stage.budget and n_running == 0:
                break
            if n_finished + n_running >= stage.budget:
                # Others are finishing the budget: wait for them so that the hand-off sees every trial.
                self.reporter.waiting(stage, n_running)
                time.sleep(POLL_INTERVAL_S)
                orphans_checked = -math.inf
                continue
            n_ask = min(stage.budget - n_finished - n_running, stage.batch_trials)
            asked: list[tuple[optuna.Study, optuna.Trial]] = []
            try:
                with _interrupts_deferred():  # a trial asked for is always claimed, never left ownerless
                    asked = self._claim(study, stage, len(trials), n_ask)
                told = self._run_trials(stage, asked) if asked else []
            except BaseException as error:
                # Ctrl-C, or the storage gone: our trials must not stay RUNNING, or every worker
                # would wait for them. (A kill -9 cannot get here; the next run fails its trial.)
                reason = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"the worker stopped: {type(error).__name__}: {error}"
                with _interrupts_deferred():
                    _abandon(asked, reason)
                raise
            best = _best_value([*trials, *told])  # from the trials at hand: no query per trial
            for frozen in told:
                if frozen.state == TrialState.FAIL:
                    consecutive_failures += 1
                else:
                    consecutive_failures = 0
                    n_finished += 1
                self.reporter.trial_finished(stage, frozen, n_finished, best)
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise TunerError(
                    f"stage '{stage.name}': {consecutive_failures} trials in a row failed; the last one with: "
                    f"{frozen.user_attrs.get('error', '?')}"
                )
        summary = stage_summary(study, stage)
        self.reporter.stage_finished(summary)
        return summary

    def _ask(self, study: optuna.Study, stage: Stage, position: int) -> tuple[optuna.Study, optuna.Trial]:
        stage_index = STAGE_NAMES.index(stage.name)
        seed = (self.spec.seed * 1_000_003 + stage_index * 10_007 + position) % 2**32
        # The stage's own Study with a fresh sampler, not a new Study: a new one would start an
        # empty cache and read every trial of the stage from the storage again, for each trial.
        asking = study
        asking.sampler = make_sampler(stage.sampler, seed, stage.budget, stage.batch_trials)
        asking.pruner = make_pruner(stage.pruner, stage.epochs)
        with warnings.catch_warnings():
            # Optuna warns that heartbeats go with optimize(); ours are kept by Heartbeat below.
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = asking.ask(fixed_distributions=stage.space)
        # First thing, in one commit: the owner (lets a restart find the trial if we die) and the
        # stage's fixed settings (e.g. the calibrated lr on every shape trial).
        write_trial_records(asking, [(trial._trial_id, {**worker_attrs(), **stage.fixed}, {})])  # noqa: SLF001
        return asking, trial

    def _claim(self, study: optuna.Study, stage: Stage, position: int, n_ask: int) -> list[tuple[optuna.Study, optuna.Trial]]:
        """Ask for up to ``n_ask`` trials, one at a time, keeping only those within the stage's budget.

        Workers that count at the same moment all see room for one more trial. Trial numbers say
        who asked first: a trial with ``budget`` claimed trials below it is surplus and is failed
        at once, untrained, so that the stage ends with exactly its budget however many workers share it.
        """
        claimed: list[tuple[optuna.Study, optuna.Trial]] = []
        while len(claimed) < n_ask:
            # A fresh sampler per trial, seeded by the trial's position: reproducible for one process.
            asking, trial = self._ask(study, stage, position + len(claimed))
            # The stage's trials as the sampler read them right after this trial was created (Optuna
            # keeps that read until the next ask): every trial numbered below ours is in it.
            others = study._get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING), use_cache=True)  # noqa: SLF001
            if sum(t.number < trial.number for t in others) >= stage.budget:
                trial.set_user_attr(SURPLUS_ATTR, True)
                fail_trial(asking, trial._trial_id, "surplus: other workers had claimed the budget first; not trained")  # noqa: SLF001
                break
            claimed.append((asking, trial))
            if len(others) >= stage.budget:
                break
        return claimed

    def _epochs(self, plans: list[TrialPlan], active: list[bool]) -> Iterator[list[EpochResult | None]]:
        """Per epoch, each trial's result (None once it stopped); one trial alone or a batch together."""
        if len(plans) == 1:
            plan = plans[0]
            model = seeded_model(self.spec.model.family, self.data, plan.width, plan.depth, plan.train.seed)
            yield from ([result] for result in train_epochs(model, self.data, plan.train))
            return
        from tuner.batched import train_batched

        yield from train_batched(self.spec.model.family, self.data, plans, active)

    def _run_trials(self, stage: Stage, asked: list[tuple[optuna.Study, optuna.Trial]]) -> list[FrozenTrial]:
        """Train the asked trials (together when there are several), tell each its own outcome."""
        objective = self.spec.train.objective
        curves: list[list[float | None]] = [[] for _ in asked]
        train_curves: list[list[float | None]] = [[] for _ in asked]
        diverged = [False] * len(asked)
        pruned = [False] * len(asked)
        active = [True] * len(asked)
        started = time.perf_counter()
        trial_ids = [trial._trial_id for _, trial in asked]  # noqa: SLF001 -- Optuna has no public trial id
        # Without a pruner, per-epoch reports are stored at the trial's end with its other records
        # (and every REPORT_FLUSH_S on a slow trial, for dashboards): nothing else reads them, and a
        # commit per epoch costs more than a small trial's training.
        live_reports = stage.pruner != "none"
        reports: list[dict[int, float]] = [{} for _ in asked]
        flushed = time.perf_counter()
        try:
            plans = [stage.plan(self.spec, trial.params) for _, trial in asked]
            with Heartbeat(asked[0][0], trial_ids):
                for results in self._epochs(plans, active):
                    for i, result in enumerate(results):
                        if result is None or not active[i]:
                            continue
                        value = result.val_error if objective == "val_error" else result.val_loss
                        curves[i].append(_finite_or_none(value))
                        train_curves[i].append(_finite_or_none(result.train_loss))
                        trial = asked[i][1]
                        if result.diverged:
                            diverged[i], active[i] = True, False
                            continue
                        if not live_reports:
                            reports[i][result.epoch] = value
                            continue
                        trial.report(value, result.epoch)
                        if trial.should_prune():
                            pruned[i], active[i] = True, False
                    if not any(active):
                        break
                    if not live_reports and time.perf_counter() - flushed > REPORT_FLUSH_S:
                        write_trial_records(asked[0][0], [(trial_ids[i], {}, reports[i]) for i in range(len(asked)) if reports[i]])
                        reports, flushed = [{} for _ in asked], time.perf_counter()
            n_params = [parameter_count(self.spec.model.family, self.data, p.width, p.depth) for p in plans]
        except Exception as error:  # noqa: BLE001 -- one bad trial must not end the study (Ctrl-C: see run)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            failed = []
            for study, trial in asked:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}")
                trial.set_user_attr("traceback", traceback.format_exc(limit=8))
                failed.append(study.tell(trial, state=TrialState.FAIL))
            return failed
        seconds = (time.perf_counter() - started) / len(asked)  # a batch's time, shared evenly
        write_trial_records(asked[0][0], [(trial_ids[i], {
            "learning_curve": curves[i],
            "train_loss_curve": train_curves[i],
            "train_seconds": round(seconds, 4),
            "device": str(self.device),
            "diverged": diverged[i],
            "n_params": n_params[i],
            "epochs_done": len(curves[i]),
            "batched_with": len(asked),
        }, reports[i]) for i in range(len(asked))])
        told = []
        for i, (study, trial) in enumerate(asked):
            if diverged[i] or pruned[i] or not curves[i] or curves[i][-1] is None:
                told.append(study.tell(trial, state=TrialState.PRUNED))
            else:
                told.append(study.tell(trial, curves[i][-1]))
        return told

    def hand_off_lr(self) -> float:
        """The calibrated learning rate, chosen once and stored on both stage studies."""
        lr_study = optuna.load_study(study_name=f"{self.spec.name}/lr", storage=self.storage)
        shape_name = f"{self.spec.name}/shape"
        if shape_name in optuna.get_all_study_names(self.storage):
            stored = optuna.load_study(study_name=shape_name, storage=self.storage).user_attrs.get("lr")
            if stored is not None:
                return float(stored)
        complete = lr_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            n = len(lr_study.get_trials(deepcopy=False, states=FINISHED))
            raise TunerError(
                f"stage 'lr': none of its {n} trials completed (all diverged or were pruned); lower "
                f"stages.lr.lr_max or check the data, then run again under a new name"
            )
        best = min(complete, key=lambda t: t.value)
        best_lr = float(best.params["lr"])
        lr_study.set_user_attr("best_lr", best_lr)
        lr_study.set_user_attr("best_trial", best.number)
        shape = self.open(shape_stage(self.spec, best_lr))
        shape.set_user_attr("lr", best_lr)
        self.reporter.message(f"stage 'lr' calibrated the learning rate: {best_lr:.3g} (trial {best.number})")
        return best_lr


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done, then raise it (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _abandon(asked: Sequence[tuple[optuna.Study, optuna.Trial]], reason: str) -> None:
    """Fail those of our trials that are still RUNNING, with ``reason`` as their ``error``."""
    for study, trial in asked:
        try:
            fail_trial(study, trial._trial_id, reason)  # noqa: SLF001 -- a no-op for a trial already told
        except Exception:  # noqa: BLE001 -- the storage may be what failed; the next run cleans up
            pass


def _best_value(trials: Sequence[FrozenTrial]) -> float | None:
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(values) if values else None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
