"""Stop a study any way you like, run the same command again: it carries on where it stopped.

Real ``tuner study`` processes are killed with SIGKILL, interrupted with SIGINT (Ctrl-C) and run two
at a time on one SQLite file; a trial that raises is failed with its reason and replaced.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from torch import nn

import tuner
from tuner.inputs import models
from tuner.inputs.families import unregister_model
from tuner.storage import fail_orphaned_trials, worker_attrs

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# Each trial trains long enough (some tenths of a second) to be caught in the middle.
SLOW_SPEC = """
name = "{name}"
seed = 0

[data]
name = "wine"

[model]
width = 16

[train]
epochs = 40
batch_size = 8

[stages.lr]
trials = {lr_trials}
lr_min = 1e-3
lr_max = 0.1
batch_trials = 2

[stages.shape]
trials = {shape_trials}
width = [8, 16]
depth = [1, 2]
"""


def _spec(tmp_path: Path, name: str, lr_trials: int, shape_trials: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SLOW_SPEC.format(name=name, lr_trials=lr_trials, shape_trials=shape_trials))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    # One thread per worker on a small machine; and a grace period no test waits out, so that a
    # dead worker's trial can only be failed here by its pid.
    env.update(OMP_NUM_THREADS="1", TUNER_HEARTBEAT_INTERVAL="10", TUNER_HEARTBEAT_GRACE="3600")
    env.update(extra)
    return env


def _tuner_study(spec: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", url, "--device", "cpu", *extra]


def _start(spec: Path, url: str) -> subprocess.Popen[str]:
    # SIGINT back to its default, whatever the shell running the tests did with it, so that Python
    # turns it into KeyboardInterrupt as it does in a terminal.
    return subprocess.Popen(
        _tuner_study(spec, url), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _trials(url: str, name: str) -> dict[str, list[FrozenTrial]]:
    names = set(optuna.get_all_study_names(url))
    return {
        stage: optuna.load_study(study_name=f"{name}/{stage}", storage=url).get_trials()
        for stage in ("lr", "shape") if f"{name}/{stage}" in names
    }


def _freeze_mid_trial(worker: subprocess.Popen[str], url: str, name: str,
                      ready: Callable[[dict[str, list[FrozenTrial]]], bool]) -> dict[str, list[FrozenTrial]]:
    """Stop ``worker`` (SIGSTOP) at a moment when ``ready`` holds for its trials; return them."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()
        try:
            if ready(_trials(url, name)):
                worker.send_signal(signal.SIGSTOP)
                trials = _trials(url, name)  # it may have moved on between the look and the stop
                if ready(trials):
                    return trials
                worker.send_signal(signal.SIGCONT)
        except optuna.exceptions.StorageInternalError:
            pass  # the worker is creating the database right now
        time.sleep(0.05)
    worker.kill()
    raise AssertionError(f"never caught mid-trial: {worker.communicate()}")


def _claimed_running(trials: dict[str, list[FrozenTrial]]) -> list[FrozenTrial]:
    return [t for ts in trials.values() for t in ts if t.state == TrialState.RUNNING and "worker" in t.user_attrs]


def _finished(trials: dict[str, list[FrozenTrial]]) -> dict[tuple[str, int], tuple]:
    return {(stage, t.number): (t.state, t.params, t.values, t.user_attrs)
            for stage, ts in trials.items() for t in ts if t.state in FINISHED}


def _assert_each_stage_has_exactly_its_budget(trials: dict[str, list[FrozenTrial]], budgets: dict[str, int]) -> None:
    for stage, budget in budgets.items():
        assert sum(t.state in FINISHED for t in trials[stage]) == budget, stage
        assert not [t for t in trials[stage] if t.state == TrialState.RUNNING], f"{stage}: a trial was left RUNNING"


def test_rerun_after_kill_9_mid_trial_fails_the_orphan_and_keeps_every_finished_trial(tmp_path: Path) -> None:
    spec, url = _spec(tmp_path, "killed", lr_trials=4, shape_trials=2), f"sqlite:///{tmp_path / 'study.db'}"
    worker = _start(spec, url)
    before = _freeze_mid_trial(worker, url, "killed", lambda trials: bool(_claimed_running(trials) and _finished(trials)))
    worker.kill()  # SIGKILL: no handler runs, the trial stays RUNNING in the database
    worker.communicate(timeout=30)
    orphans = _claimed_running(before)
    assert orphans and all(t.state == TrialState.RUNNING for t in _claimed_running(_trials(url, "killed")))

    # The same command again. The grace period is an hour (see _env): only the pid can free the orphan.
    rerun = subprocess.run(_tuner_study(spec, url), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    after = _trials(url, "killed")
    _assert_each_stage_has_exactly_its_budget(after, {"lr": 4, "shape": 2})
    by_id = {t._trial_id: t for ts in after.values() for t in ts}  # noqa: SLF001
    for orphan in orphans:
        failed = by_id[orphan._trial_id]  # noqa: SLF001
        assert failed.state == TrialState.FAIL
        assert "its process ended without storing an outcome" in failed.user_attrs["error"]
    kept = _finished(after)
    for key, trial in _finished(before).items():
        assert kept[key] == trial  # state, params, values and every user attribute, as they were
    assert rerun.stderr == ""  # no warning, no log line from Optuna


def test_ctrl_c_fails_the_trial_in_progress_and_says_in_one_line_how_to_resume(tmp_path: Path) -> None:
    spec, url = _spec(tmp_path, "stopped", lr_trials=4, shape_trials=1), f"sqlite:///{tmp_path / 'study.db'}"
    worker = _start(spec, url)
    before = _freeze_mid_trial(worker, url, "stopped", lambda trials: bool(_claimed_running(trials)))
    worker.send_signal(signal.SIGINT)
    worker.send_signal(signal.SIGCONT)
    stdout, stderr = worker.communicate(timeout=120)

    assert worker.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted:"), stderr
    assert "marked failed" in lines[0]
    resume = lines[0].split("resume with: ")[1]
    assert shlex.split(resume) == ["tuner", "study", str(spec), "--storage", url]

    after = {t._trial_id: t for ts in _trials(url, "stopped").values() for t in ts}  # noqa: SLF001
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    for trial in _claimed_running(before):
        assert after[trial._trial_id].state == TrialState.FAIL  # noqa: SLF001
        assert after[trial._trial_id].user_attrs["error"] == "interrupted (Ctrl-C)"  # noqa: SLF001


def test_two_processes_on_one_sqlite_file_share_the_budget_and_hand_off_once(tmp_path: Path) -> None:
    spec, url = _spec(tmp_path, "shared", lr_trials=6, shape_trials=4), f"sqlite:///{tmp_path / 'study.db'}"
    spec.write_text(spec.read_text().replace("epochs = 40", "epochs = 15"))
    workers = [_start(spec, url) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stdout + stderr
        assert "database is locked" not in stdout + stderr
        assert "Traceback" not in stdout + stderr

    trials = _trials(url, "shared")
    _assert_each_stage_has_exactly_its_budget(trials, {"lr": 6, "shape": 4})  # not 12 and 8
    # Trials that lost the race for the budget's last slots are failed untrained and say so; no other fails.
    for trial in (t for ts in trials.values() for t in ts if t.state == TrialState.FAIL):
        assert trial.user_attrs.get("surplus") is True and "learning_curve" not in trial.user_attrs
    assert len({t.user_attrs["worker"] for ts in trials.values() for t in ts if t.state in FINISHED}) == 2

    lr_study = optuna.load_study(study_name="shared/lr", storage=url)
    shape_study = optuna.load_study(study_name="shared/shape", storage=url)
    best_lr = lr_study.user_attrs["best_lr"]
    assert lr_study.user_attrs["best_trial"] == lr_study.best_trial.number
    assert lr_study.user_attrs["handoff"]["n_points"] == 6  # chosen once, from every lr trial of both workers
    assert shape_study.user_attrs["lr"] == best_lr
    assert {t.user_attrs["lr"] for t in trials["shape"]} == {best_lr}  # every shape trial at the one rate


def test_ctrl_c_while_a_trial_is_being_claimed_leaves_no_trial_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.study.runner import _StageRunner

    ask = _StageRunner._ask

    def ask_then_ctrl_c(self: _StageRunner, *args: object) -> object:
        asked = ask(self, *args)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C just as the trial was made
        return asked

    monkeypatch.setattr(_StageRunner, "_ask", ask_then_ctrl_c)
    spec = tuner.spec_from_dict({"name": "claim", "data": {"name": "wine"}, "train": {"epochs": 1},
                                 "stages": {"lr": {"trials": 2}, "shape": {"trials": 1}}})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(KeyboardInterrupt):
        tuner.run_study(spec, storage=url, device="cpu")
    trials = optuna.load_study(study_name="claim/lr", storage=url).get_trials()
    assert trials and all(t.state == TrialState.FAIL and t.user_attrs["error"] == "interrupted (Ctrl-C)" for t in trials)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # we ask for trials by hand here
def test_a_live_process_that_reuses_a_dead_workers_pid_does_not_keep_its_trial_alive(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="pids", storage=tuner.open_storage(f"sqlite:///{tmp_path / 'p.db'}"))
    mine = study.ask()
    for key, value in worker_attrs().items():
        mine.set_user_attr(key, value)
    # A trial of a process that died; the system then gave its pid to this very process.
    dead = study.ask()
    dead.set_user_attr("worker", worker_attrs()["worker"])
    dead.set_user_attr("worker_started", "another-boot:12345")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = study.ask()  # a live worker on this machine, recorded as it really is
        alive.set_user_attr("worker", f"{worker_attrs()['worker'].rpartition(':')[0]}:{sleeper.pid}")
        alive.set_user_attr("worker_started", _start_time_of(sleeper.pid))
        assert fail_orphaned_trials(study) == [dead.number]
    finally:
        sleeper.kill()
        sleeper.wait()
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {mine.number: TrialState.RUNNING, dead.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    assert fail_orphaned_trials(study) == [alive.number]  # and once the sleeper is gone, its trial too


def _start_time_of(pid: int) -> str:
    from tuner.storage.liveness import _process_start

    started = _process_start(pid)
    assert started is not None
    return started


@pytest.fixture
def fragile_model() -> str:
    """A model family that runs out of memory (so it says) when asked for 12 units or more."""

    def build(n_in: int, n_out: int, width: int, depth: int) -> nn.Module:
        if width >= 12:
            raise RuntimeError(f"CUDA out of memory (simulated) at width {width}")
        return models.mlp(n_in, n_out, width, depth)

    tuner.register_model("fragile", build)
    yield "fragile"
    unregister_model("fragile")


def test_a_trial_that_raises_is_failed_with_its_reason_and_replaced(fragile_model: str, tmp_path: Path) -> None:
    spec = tuner.spec_from_dict({
        "name": "oom", "data": {"name": "wine"}, "model": {"family": fragile_model, "width": 4},
        "train": {"epochs": 2},
        "stages": {"lr": {"trials": 2, "lr_min": 1e-2, "lr_max": 1e-1}, "shape": {"trials": 4, "width": [4, 32], "sampler": "random"}},
    })
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = tuner.run_study(spec, storage=url, device="cpu")

    shape = optuna.load_study(study_name="oom/shape", storage=url).get_trials()
    failed = [t for t in shape if t.state == TrialState.FAIL]
    assert failed, "no trial drew a width of 12 or more: pick another seed"
    for trial in failed:
        assert trial.params["width"] >= 12
        assert trial.user_attrs["error"] == f"RuntimeError: CUDA out of memory (simulated) at width {trial.params['width']}"
    finished = [t for t in shape if t.state in FINISHED]
    assert len(finished) == 4 and all(t.params["width"] < 12 for t in finished)  # replaced, not counted
    assert result.stages["shape"].n_failed == len(failed)
    assert result.stages["shape"].n_complete + result.stages["shape"].n_pruned == 4


def test_a_stage_killed_mid_trial_and_resumed_asks_what_an_uninterrupted_one_asks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tuner.inputs.load import load_dataset
    from tuner.training import trainers
    from tuner.training.train import SingleTrainer

    spec = tuner.spec_from_dict({
        "name": "asks", "seed": 3, "data": {"name": "wine"}, "model": {"width": 8},
        "train": {"epochs": 3, "batch_size": 32},
        "stages": {"lr": {"trials": 7, "lr_min": 1e-3, "lr_max": 0.5, "batched": False}},
    })
    data = load_dataset(spec.data, spec.seed)
    device = torch.device("cpu")

    def complete_lrs(url: str) -> list[float]:
        trials = optuna.load_study(study_name="asks/lr", storage=url).trials
        return [t.params["lr"] for t in sorted(trials, key=lambda t: t.number) if t.state == TrialState.COMPLETE]

    through = f"sqlite:///{tmp_path / 'through.db'}"
    tuner.run_stage(spec, "lr", storage=tuner.open_storage(through), data=data, device=device)

    started = []

    class KilledOnTheFourth(SingleTrainer):
        def epochs(self):  # type: ignore[no-untyped-def]
            started.append(1)
            for epochs in super().epochs():
                if len(started) == 4:
                    raise KeyboardInterrupt  # in the middle of the fourth trial, as Ctrl-C would
                yield epochs

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    monkeypatch.setattr(trainers, "SingleTrainer", KilledOnTheFourth)  # what make_trainer builds for one trial
    with pytest.raises(KeyboardInterrupt):
        tuner.run_stage(spec, "lr", storage=tuner.open_storage(killed), data=data, device=device)
    monkeypatch.undo()
    states = [t.state for t in optuna.load_study(study_name="asks/lr", storage=killed).trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    tuner.run_stage(spec, "lr", storage=tuner.open_storage(killed), data=data, device=device)

    assert len(complete_lrs(killed)) == 7
    assert complete_lrs(killed) == pytest.approx(complete_lrs(through), rel=1e-12)
