"""The staged study: run each stage to its budget, hand the best learning rate on, resume anything.

Every stage is one Optuna study in one storage. A stage owes ``budget`` finished trials (complete
or pruned); whoever runs it, one process or many, asks for trials until that many are finished or
in flight, then waits for the ones in flight, so the hand-off to the next stage sees all of them
and happens once. Nothing lives outside the storage, so running the same command again resumes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.importance import audit_verdict
from tuner.errors import (
    StudyMismatchError,
    Terminated,
    TunerError,
    TunerInputError,
    interrupts_deferred,
    quiet_optuna,
    raise_if_stop_requested,
)
from tuner.inputs.checks import check_direction
from tuner.inputs.choices import Variant, listed, variants
from tuner.inputs.data import Dataset, DataWarning, StreamedData
from tuner.inputs.load import load_dataset
from tuner.inputs.names import RUNG_RULES
from tuner.inputs.spec import StudySpec, study_name_problem
from tuner.inputs.code_checks import check_code, check_params
from tuner.inputs.usercode import UserCode, resolve_code, spec_with_callables, with_callables
from tuner.storage import (
    StorageError,
    count_trials,
    fail_orphaned_trials,
    fail_trial,
    open_storage,
    redact,
    ride_out_outage,
    skip_empty_queue,
    trial_id,
    worker_attrs,
    write_study_attrs,
    write_trial_records,
)
from tuner.study import results
from tuner.study.finished import finished_result
from tuner.study.handoff import hand_off_lr, hand_off_rates
from tuner.study.progress import ProgressBar, Reporter
from tuner.study.pruning import error_rate_rows, shape_first_rung
from tuner.study.results import FINISHED, SURPLUS_ATTR, StageSummary, StudyResult
from tuner.study.stage_studies import (
    check_stored_settings,
    open_stage_study,
    storage_error_of,
    storage_of_study,
)
from tuner.study.stages import (
    STAGE_NAMES,
    Stage,
    ask_conditional,
    audit_stage,
    describe_search,
    lr_stage,
    settle_lr_scale,
    shape_stage,
    stored_moves,
)
from tuner.study.search import PlacedSampler, pruner_for
from tuner.study.together import settled_ask_batch
from tuner.study.trials import Asked, TrialBatch, abandon, best_value, finished_before, place_of, run_trials
from tuner.training.train import pick_threads, resolve_device, use_threads
from tuner.training.trainers import make_trainer

POLL_INTERVAL_S = 1.0  # how often a worker with nothing to do looks at the stage again
MAX_CONSECUTIVE_FAILURES = 5  # a trial that raises every time is a bug, not bad luck: stop
ORPHAN_CHECK_S = 10.0  # while trials keep finishing, look for dead workers' trials at most this often

__all__ = [
    "Reporter", "StageSummary", "StudyMismatchError", "StudyResult", "Terminated", "TunerError", "TunerInputError",
    "check_stored_settings", "hand_off_lr", "open_stage_study", "pick_threads", "run_stage", "run_study", "with_callables",
]


def run_study(
    spec: StudySpec | Mapping[str, Any] | str | Path,
    *,
    storage: str | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
    progress: bool = True,
    model: Callable[..., Any] | None = None,
    loader: Callable[..., Any] | None = None,
    loop: Callable[..., Any] | None = None,
    loss: Callable[..., Any] | None = None,
    metric: Callable[..., Any] | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    name: str | None = None,
) -> StudyResult:
    """Run (or resume) a staged study: ``lr``, then ``shape``, then the optional ``audit``.

    Example:
        >>> result = tuner.run_study("studies/quickstart.toml", storage="sqlite:///tuner.db")  # doctest: +SKIP
        >>> result.best_lr  # doctest: +SKIP
        0.0412

    Args:
        spec: a :class:`StudySpec`, the path of a TOML study file, or a dict as the TOML would parse
            (with ``loader=`` it needs no ``[data]``, with ``model=`` no ``[model] family``).
        storage: an Optuna storage URL; default: the spec's ``storage``, else ``sqlite:///tuner.db``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        reporter: receives progress; see :class:`Reporter`. Given, it replaces the progress bar.
        progress: without ``reporter``, a bar per stage (tqdm's: a widget in a notebook, text in a
            terminal) and the study's messages; False: silent.
        model, loader, loop, loss, metric: your own code as callables, instead of naming it
            ``"module:function"`` in the spec (``model.family``, ``data.loader``, ``train.loop``,
            ``train.loss``, ``train.metric``); same contracts (README: "Your own model").
        threads: torch's intra-op threads on the CPU; default ``$TUNER_THREADS``, else 1 (see
            :func:`pick_threads`).
        timeout: a wall-clock limit in seconds: once it has passed, no new trial starts; the trials
            in progress finish and are stored, and the result has ``timed_out`` set (the last stage
            unfinished). Running the study again resumes it, as after any stop.
        name: the study's name instead of the spec's (``tuner study --name``): one spec, several studies.
    """
    given = {"model": model, "loader": loader, "loop": loop, "loss": loss, "metric": metric}
    spec = spec_with_callables(spec, **given)  # a StudySpec, a study file or a dict, naming the callables
    if name is not None:
        if problem := study_name_problem(name):
            raise ValueError(f"name={name!r}: {problem}")
        spec = spec.with_changes(name=name)
    check_direction(spec)  # "maximize" needs a score of the user's own: refused before anything is written
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    deadline = time.monotonic() + timeout if timeout is not None else None
    reporter = reporter or (ProgressBar() if progress else Reporter())
    quiet_optuna()
    # Nothing left to run: the result is read from the storage, before torch, the data or the user's code.
    done = finished_result(spec, storage, reporter=reporter, given=given, device=device, threads=threads)
    if done is not None:
        return done
    # Everything that can be wrong with the input is checked before the storage is touched.
    torch_device = resolve_device(device)
    use_threads(threads, torch_device)
    code = resolve_code(spec, given)  # the user's own code, imported once, here, and handed down
    check_params(spec, code)  # a declared parameter nothing takes: refused before any data is loaded
    with warnings.catch_warnings(record=True) as said:  # told below, once the stored settings are known
        warnings.simplefilter("always", DataWarning)
        data = load_dataset(spec.data, spec.seed, spec.source, code.loader).to(torch_device)
    check_code(spec, data, code, torch_device)  # the model, the loss, one step, the memory: before the storage
    storage_url = storage_of_study(spec, storage)
    try:
        optuna_storage = open_storage(storage_url)
    except StorageError as error:
        raise storage_error_of(spec, storage, error) from None
    stored_spec = check_stored_settings(spec, optuna_storage, reporter.message, code)  # with changed defaults put back
    if stored_spec.data != spec.data:  # a data default put back: the data as the stored study was made with
        data = load_dataset(stored_spec.data, spec.seed, spec.source, code.loader).to(torch_device)
        check_code(stored_spec, data, code, torch_device)
    else:
        for warning in said:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    spec = stored_spec

    summaries: dict[str, StageSummary] = {}
    best_lr: float | None = None
    common = {"storage": optuna_storage, "data": data, "device": torch_device, "reporter": reporter, "code": code,
              "deadline": deadline}
    rates: dict[str, float] = {}
    try:
        every = variants(spec)  # one stage lr per combination of listed choices (one, "lr", when none is listed)
        if len(every) > 1:
            reporter.message(f"stage 'lr' calibrates a rate for each of {len(every)} choices "
                             f"({'; '.join(v.words() for v in every)}): {len(every)} x {spec.stages.lr.trials} = "
                             f"{len(every) * spec.stages.lr.trials} trials")
        _run_variants(every, optuna_storage, common, summaries)
        handed = hand_off_rates(spec, optuna_storage, reporter, code)
        best_lr, rates = handed.rate, (handed.labels if len(every) > 1 else {})
        summaries["shape"] = run_stage(spec, "shape", best_lr=best_lr, rates=handed.rates, **common)  # type: ignore[arg-type]
        if spec.stages.audit.trials > 0:
            summaries["audit"] = run_stage(spec, "audit", **common)  # type: ignore[arg-type]
    except TimeLimitReached as reached:  # no new trial after the limit; what finished is stored
        done = reached.summary
        summaries[done.stage] = done
        close = getattr(reporter, "close", None)  # a progress bar ends here, not at a stage's end
        if callable(close):
            close()
        reporter.message(f"stage '{done.stage}' stopped at the time limit ({timeout:g} s) once its trials in progress "
                         f"had finished: {done.n_complete + done.n_pruned} of {done.budget} finished; run the study "
                         f"again to resume it")
        return StudyResult(spec.name, redact(storage_url), best_lr, summaries, None, timed_out=timeout, rates=rates)
    # The audit's point: did lr interact little with the rest here? Judged and stored on <name>/audit.
    verdict = audit_verdict(spec.name, optuna_storage) if "audit" in summaries else None
    return StudyResult(spec.name, redact(storage_url), best_lr, summaries, verdict, rates=rates)


def _run_variants(every: list[Variant], storage: optuna.storages.BaseStorage, common: dict[str, Any],
                  summaries: dict[str, StageSummary]) -> None:
    """Each variant's stage lr, run to its budget, its summary put in ``summaries`` as it ends (a time
    limit reached in a later variant keeps the earlier ones'); in the spec's order once all have.

    A worker starts each time on the variant with the most budget no worker has claimed (the first
    on a tie): workers that share a study spread over the variants, rather than all waiting on the
    first one's last trials while the next has trials to train.
    """
    left = list(every)
    while left:
        variant = max(left, key=lambda v: _unclaimed(v, storage))
        left.remove(variant)
        summaries[variant.label] = run_stage(variant.spec, "lr", variant=variant, **common)
    for variant in every:  # the spec's order, whatever order they ran in
        summaries[variant.label] = summaries.pop(variant.label)


def _unclaimed(variant: Variant, storage: optuna.storages.BaseStorage) -> int:
    """How many trials of a variant's stage lr budget no worker has finished or holds."""
    name = results.stage_study_name(variant.spec.name, variant.label)
    if name not in optuna.get_all_study_names(storage):
        return variant.spec.stages.lr.trials
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return variant.spec.stages.lr.trials - sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)


class TimeLimitReached(Exception):
    """``run_study(timeout=)``'s limit passed: the stage asks no new trial; ``summary`` is what it holds."""

    def __init__(self, summary: StageSummary) -> None:
        super().__init__(f"time limit reached in stage '{summary.stage}'")
        self.summary = summary


def run_stage(
    spec: StudySpec,
    stage: str,
    *,
    storage: optuna.storages.BaseStorage,
    data: Dataset,
    device: torch.device,
    reporter: Reporter | None = None,
    best_lr: float | None = None,
    code: UserCode | None = None,
    deadline: float | None = None,
    variant: Variant | None = None,
    rates: tuple[tuple[tuple[tuple[str, Any], ...], float], ...] = (),
) -> StageSummary:
    """Run (or resume) one stage of a study to its budget; ``best_lr`` is needed by ``shape``.

    ``code``: the spec's own code as resolved once by the caller (default: resolved here).
    ``variant``: stage lr of one combination of listed choices (``spec`` is then ``variant.spec``);
    ``rates``: stage shape's rate of each (:func:`tuner.study.handoff.hand_off_rates`).

    Example:
        >>> summary = run_stage(spec, "lr", storage=open_storage("sqlite:///t.db"), data=data, device=torch.device("cpu"))  # doctest: +SKIP
    """
    if listed(spec) and (stage == "lr" or (stage == "shape" and not rates)):
        # train.optimizer or batch_size listed: each variant's stage lr is its own study, and stage shape needs
        # every variant's rate; run_study does both (a variant's stage lr: run_stage(variant.spec, "lr", variant=...)).
        raise ValueError(f"train.{' and train.'.join(listed(spec))} lists several values: run stage {stage!r} "
                         f"through run_study, or pass {'variant=' if stage == 'lr' else 'rates='} "
                         f"(tuner.inputs.choices.variants, tuner.study.handoff.hand_off_rates)")
    runner = _StageRunner(spec, storage, data, device, reporter or Reporter(), code or resolve_code(spec), deadline)
    if stage == "lr":
        from tuner.study.lr_range import auto_lr_range

        # The study first, with its settings: the range test of lr_range = "auto" is kept on it.
        named = {"label": variant.label, "variant_index": variant.index} if variant is not None and variant.choice else {}
        study = runner.open(lr_stage(spec, **named))
        if variant is not None and variant.choice and results.CHOICE_ATTR not in study.user_attrs:
            study.set_user_attr(results.CHOICE_ATTR, variant.choice)
        # lr_range = "auto": the range test runs once (kept on <name>/lr, reused on resume) and sets the bounds.
        lr_range = auto_lr_range(spec, study, data, runner.reporter.message, runner.code)
        stage = lr_stage(spec, lr_range=lr_range, **named)
        # As it began; one at a time for data read batch by batch; why not batched, where the spec rules it out.
        stage = settled_ask_batch(spec, stage, study, streamed=isinstance(data, StreamedData))
        return runner.run(stage, study)  # opened above, its settings checked: not opened again
    if stage == "shape":
        if best_lr is None:
            raise ValueError("stage 'shape' trains at the calibrated rate: pass best_lr")
        rung, shape = None, spec.stages.shape
        lr_labels = [v.label for v in variants(spec)]
        unresolved = shape_stage(spec, best_lr)
        shape_study = runner.open(unresolved)  # opened (and its settings checked) once for both records below
        if shape.first_rung in RUNG_RULES and shape.pruner != "none":  # chosen once from stage lr, stored on <name>/shape
            rows = error_rate_rows(spec.train.objective, data.task, bool(spec.train.loop or spec.train.metric), data)
            rung = shape_first_rung(spec.name, storage, shape_study, rows, unresolved.epochs,
                                    lambda chosen: describe_search(shape_stage(spec, best_lr, chosen)), lr_labels,
                                    learned_only=shape.first_rung == "learned")
            runner.reporter.message(rung.sentence())
        # lr_scale = "auto": the range resolved at the hand-off, read back from <name>/shape.
        lr_scale = settle_lr_scale(spec, shape_study)
        return runner.run(shape_stage(spec, best_lr, rung, lr_scale=lr_scale, rates=rates, moves=stored_moves(shape_study)), shape_study)
    if stage == "audit":
        return runner.run(audit_stage(spec))
    raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGE_NAMES)}")


def stage_summary(study: optuna.Study, stage: Stage) -> StageSummary:
    return results.stage_summary(study, stage.name, stage.budget, stage.fixed)


class _StageRunner:
    """Runs one stage to its budget: claims trials, trains them through :mod:`tuner.study.trials`, waits for others."""

    def __init__(self, spec: StudySpec, storage: optuna.storages.BaseStorage, data: Dataset,
                 device: torch.device, reporter: Reporter, code: UserCode, deadline: float | None = None) -> None:
        self.spec = spec
        self.deadline = deadline  # time.monotonic() after which no trial starts (run_study's timeout)
        self.code = code
        self.storage = storage
        self.data = data
        self.device = device
        self.reporter = reporter

    def open(self, stage: Stage) -> optuna.Study:
        return open_stage_study(self.spec, stage, self.storage, self.code)

    def run(self, stage: Stage, study: optuna.Study | None = None) -> StageSummary:
        study = self.open(stage) if study is None else study  # unless its caller opened it already
        skip_empty_queue(study)  # each ask reads the stage's trials for enqueued ones only when one waits
        stored, changed = study.user_attrs, {}
        if stored.get(results.BUDGET_ATTR) != stage.budget:
            changed[results.BUDGET_ATTR] = stage.budget
        if results.TASK_ATTR not in stored:  # the report's words and axes: no need to load the data again
            changed[results.TASK_ATTR] = self.data.task
        write_study_attrs(study, changed)  # in one commit
        consecutive_failures = 0
        announced = False
        orphans_checked = -math.inf
        while True:
            raise_if_stop_requested()
            # Dead workers' trials matter once they hold up the stage (when we wait): look for them
            # then, and every ORPHAN_CHECK_S, not before every trial (it reads the stage's trials anew).
            if time.monotonic() - orphans_checked >= ORPHAN_CHECK_S:  # (a storage that stopped answering: waited for)
                ride_out_outage(lambda: fail_orphaned_trials(study), what="reading the stage")
                orphans_checked = time.monotonic()
            trials = ride_out_outage(lambda: study.get_trials(deepcopy=False), what="reading the stage")
            n_finished = sum(t.state in FINISHED for t in trials)
            n_running = sum(t.state == TrialState.RUNNING for t in trials)
            if not announced:
                self.reporter.stage_started(stage, n_finished)
                if n_finished > stage.budget:
                    self.reporter.message(
                        f"stage '{stage.name}' has {n_finished} finished trials, more than its budget of "
                        f"{stage.budget}: nothing to run; all {n_finished} count in its results"
                    )
                announced = True
            if n_finished >= stage.budget and n_running == 0:
                break
            if self.deadline is not None and time.monotonic() >= self.deadline:
                # The time limit: ask nothing more (our trials have finished); other workers' go on.
                raise TimeLimitReached(stage_summary(study, stage))
            if n_finished + n_running >= stage.budget:
                # Others are finishing the budget: wait for them so that the hand-off sees every trial.
                self.reporter.waiting(stage, n_running)
                time.sleep(POLL_INTERVAL_S)
                orphans_checked = -math.inf
                continue
            n_ask = min(stage.budget - n_finished - n_running, stage.batch_trials)
            asked: list[Asked] = []
            try:
                with interrupts_deferred():  # a trial asked for is always claimed, never left ownerless
                    self._claim(study, stage, n_ask, asked)  # into ``asked``: abandoned below if it raises
                told = self._train(stage, asked) if asked else []
            except BaseException as error:
                # Ctrl-C, SIGTERM, or the storage gone: our trials must not stay RUNNING, or every
                # worker would wait for them. (A kill -9 cannot get here; the next run fails its trial.)
                reason = ("terminated (SIGTERM)" if isinstance(error, Terminated)
                          else "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt)
                          else f"the worker stopped: {type(error).__name__}: {error}")
                with interrupts_deferred():
                    abandon(asked, reason)
                raise
            if told:  # while these trained, other workers may have finished trials: counted now, stage-wide
                n_finished = max(n_finished, finished_before(study, told))
            for i, frozen in enumerate(told):
                # The best of the trials at hand up to this one (no query per trial): a batch told
                # at once never shows a best that no trial printed so far has reached.
                best = best_value([*trials, *told[:i + 1]], results.direction_of(study))
                if frozen.state == TrialState.FAIL:
                    consecutive_failures += 1
                else:
                    consecutive_failures = 0
                    n_finished += 1
                self.reporter.trial_finished(stage, frozen, n_finished, best)
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise TunerError(
                    f"stage '{stage.name}': {consecutive_failures} trials in a row failed; the last one with: "
                    f"{frozen.user_attrs.get(results.ERROR_ATTR, '?')}"
                )
        summary = stage_summary(study, stage)
        self.reporter.stage_finished(summary)
        return summary

    def _ask(self, study: optuna.Study, stage: Stage) -> Asked:
        # The stage's own Study with a fresh sampler, not a new Study: a new one would start an
        # empty cache and read every trial of the stage from the storage again, for each trial.
        # Seeded by the trial's position, read once the storage has numbered it: workers asking at once draw apart.
        study.pruner = pruner_for(stage)
        study.sampler = PlacedSampler(stage, self.spec.seed, lambda trial: place_of(study, trial.number))
        with warnings.catch_warnings():
            # Optuna warns that heartbeats go with optimize(); ours are kept by Heartbeat below.
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = study.ask(fixed_distributions=stage.space) if not stage.conditions else ask_conditional(study, stage)
        # First thing, in one commit: the owner (lets a restart find the trial if we die), the stage's fixed settings
        # (e.g. the calibrated lr on every shape trial), the rate it trains at (in stage shape lr x lr_move x lr_scale).
        trained_lr = stage.trained(trial.params).get("lr")
        moved = {results.LR_MOVE_ATTR: stage.move(trial.params)} if stage.transfer else {}
        records = {**worker_attrs(), **stage.fixed_for(trial.params), **moved, results.TRAINED_LR_ATTR: trained_lr}
        write_trial_records(study, [(trial_id(trial), {**records, results.POSITION_ATTR: study.sampler.position}, {})])
        return study, trial

    def _claim(self, study: optuna.Study, stage: Stage, n_ask: int, claimed: list[Asked]) -> list[Asked]:
        """Ask for up to ``n_ask`` trials into ``claimed``, one at a time, keeping only those within the stage's budget.

        Workers that count at the same moment all see room for one more trial. Trial numbers say who asked first:
        a trial with ``budget`` claimed trials below it is surplus and is failed at once, untrained, so that the stage
        ends with exactly its budget however many workers share it. A trial is in ``claimed`` from its creation on:
        if the storage fails later, the caller abandons it."""
        while len(claimed) < n_ask:
            # A fresh sampler per trial, seeded by the trial's position: reproducible for one process.
            asking, trial = self._ask(study, stage)
            claimed.append((asking, trial))
            # Counted after this trial was created: every trial numbered below ours is in the count.
            n_claimed, n_claimed_below = count_trials(study, (*FINISHED, TrialState.RUNNING), trial.number)
            if n_claimed_below >= stage.budget:
                trial.set_user_attr(SURPLUS_ATTR, True)
                fail_trial(asking, trial_id(trial), "surplus: other workers had claimed the budget first; not trained")
                claimed.pop()  # failed as surplus, not ours to train
                break
            if n_claimed >= stage.budget:
                break
        return claimed

    def _train(self, stage: Stage, asked: list[Asked]) -> list[FrozenTrial]:
        """Plan the asked trials, train them (together when there are several), tell each its own outcome."""
        batch = TrialBatch(stage, asked, self.spec.train.objective)
        try:
            plans = [stage.plan(trial.params) for _, trial in asked]
        except Exception as error:  # noqa: BLE001 -- e.g. a stored param of another type
            return batch.fail(error)
        attrs = {results.DEVICE_ATTR: str(self.device), results.THREADS_ATTR: torch.get_num_threads()}
        return run_trials(batch, lambda: make_trainer(plans, self.data, self.code, self.device), attrs, self.device)
