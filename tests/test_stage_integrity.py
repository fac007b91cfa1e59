"""A stage's trials all come from one spec: racing specs, foreign studies and changed budgets.

Two different specs under one name started at the same moment, a study of that name made by
another tool, and a raised learning-rate budget after the hand-off: each is refused with one line
and exit 2, and nothing of the refused run is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import tuner
from tuner.cli import app

SPEC = """
name = "race"
[data]
name = "wine"
[model]
width = 8
[train]
epochs = 2
batch_size = 32
momentum = {momentum}
[stages.lr]
trials = {lr_trials}
lr_min = 1e-3
lr_max = 0.3
[stages.shape]
trials = 2
width = [4, 8]
depth = [1, 1]
"""


def _write(folder: Path, name: str, momentum: float = 0.9, lr_trials: int = 3) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SPEC.format(momentum=momentum, lr_trials=lr_trials))
    return path


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNER_")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("attempt", range(3))
def test_two_different_specs_started_at_once_under_one_name_never_mix(tmp_path: Path, attempt: int) -> None:
    a, b = _write(tmp_path, "a", momentum=0.9), _write(tmp_path, "b", momentum=0.5)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    command = lambda spec: [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", url, "--device", "cpu"]  # noqa: E731
    workers = [subprocess.Popen(command(spec), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for spec in (a, b)]
    outcomes = [(worker.wait(timeout=300), worker.communicate()) for worker in workers]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, (_, err) in outcomes if code == 2)
    assert "other search settings" in refused and "momentum" in refused
    assert len(refused.strip().splitlines()) == 1
    winner = (a, b)[[code for code, _ in outcomes].index(0)]
    wanted = 0.9 if winner == a else 0.5
    for stage in ("lr", "shape"):
        study = optuna.load_study(study_name=f"race/{stage}", storage=url)
        assert study.user_attrs["settings"]["train"]["momentum"] == wanted
        # Every trial was run by the winner: one worker process.
        assert len({t.user_attrs["worker"] for t in study.trials}) == 1


def test_a_study_of_the_same_name_made_by_another_tool_is_refused_and_left_alone(tmp_path: Path) -> None:
    spec = _write(tmp_path, "good")
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    foreign = optuna.create_study(study_name="race/lr", storage=url, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)

    result = CliRunner().invoke(app, ["study", str(spec), "--storage", url, "--device", "cpu"])

    assert result.exit_code == 2, result.output
    assert "study 'race/lr' exists and was not made by tuner" in result.output
    assert len(result.output.strip().splitlines()) == 1
    after = optuna.load_study(study_name="race/lr", storage=url)
    assert after.user_attrs == {} and len(after.trials) == 3
    assert optuna.get_all_study_names(url) == ["race/lr"]


def test_raising_the_lr_budget_after_the_hand_off_is_refused_and_lowering_it_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    first = CliRunner().invoke(app, ["study", str(_write(tmp_path, "s", lr_trials=3)), "--storage", url, "--device", "cpu"])
    assert first.exit_code == 0, first.output
    n_lr = len(optuna.load_study(study_name="race/lr", storage=url).trials)

    raised = CliRunner().invoke(app, ["study", str(_write(tmp_path, "s", lr_trials=5)), "--storage", url, "--device", "cpu"])
    assert raised.exit_code == 2, raised.output
    assert "stages.lr.trials back to 3" in raised.output and "--name" in raised.output
    assert len(optuna.load_study(study_name="race/lr", storage=url).trials) == n_lr  # nothing ran

    messages: list[str] = []

    class Listener(tuner.Reporter):
        def message(self, text: str) -> None:
            messages.append(text)

    lowered = tuner.load_spec(_write(tmp_path, "s", lr_trials=2))
    result = tuner.run_study(lowered, storage=url, device="cpu", reporter=Listener())
    assert any("3 finished trials, more than its budget of 2" in m for m in messages), messages
    assert result.stages["lr"].n_complete + result.stages["lr"].n_pruned == 3


def test_a_worker_that_loses_the_race_to_create_a_stage_waits_for_the_winners_settings(tmp_path: Path) -> None:
    """The race made deterministic: the winner has created ``race/lr`` but not yet written its settings."""
    import threading

    from tuner.study.runner import StudyMismatchError, open_stage_study
    from tuner.study.stages import lr_stage

    url = f"sqlite:///{tmp_path / 'slow.db'}"
    storage = tuner.open_storage(url)
    winner, loser = tuner.load_spec(_write(tmp_path, "a", momentum=0.9)), tuner.load_spec(_write(tmp_path, "b", momentum=0.5))
    created = optuna.create_study(study_name="race/lr", storage=storage)  # the winner, between create and settings

    def winner_writes_its_settings_late() -> None:
        threading.Event().wait(0.5)
        from tuner.study.stages import stage_settings

        created.set_user_attr("settings", stage_settings(winner, "lr"))

    writer = threading.Thread(target=winner_writes_its_settings_late)
    writer.start()
    with pytest.raises(StudyMismatchError, match="momentum: 0.9 -> 0.5"):
        open_stage_study(loser, lr_stage(loser), storage)
    writer.join()
    assert optuna.load_study(study_name="race/lr", storage=url).user_attrs["settings"]["train"]["momentum"] == 0.9


def test_a_specs_relative_sqlite_storage_is_read_beside_the_spec_and_the_summary_names_the_file(tmp_path: Path) -> None:
    folder, elsewhere = tmp_path / "specs", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    spec = _write(folder, "beside")
    spec.write_text('storage = "sqlite:///beside.db"\n' + spec.read_text())
    command = [sys.executable, "-m", "tuner.cli", "study", str(spec), "--device", "cpu"]
    run = subprocess.run(command, cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (folder / "beside.db").is_file() and not (elsewhere / "beside.db").exists()
    assert f"sqlite:///{folder / 'beside.db'}" in run.stdout  # the summary says which file


def test_a_storage_file_an_earlier_version_put_in_the_working_folder_is_not_silently_left_behind(tmp_path: Path) -> None:
    folder, cwd = tmp_path / "specs", tmp_path / "cwd"
    folder.mkdir()
    cwd.mkdir()
    spec = _write(folder, "moved")
    spec.write_text('storage = "sqlite:///old.db"\n' + spec.read_text())
    optuna.create_study(study_name="race/lr", storage=f"sqlite:///{cwd / 'old.db'}")  # where tuner 0.1 put it
    before = (cwd / "old.db").read_bytes()
    run = subprocess.run([sys.executable, "-m", "tuner.cli", "study", str(spec), "--device", "cpu"], cwd=cwd,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "move that file beside the spec" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (folder / "old.db").exists() and (cwd / "old.db").read_bytes() == before


@pytest.mark.parametrize("what", ["folder", "text file"])
def test_a_journal_url_on_a_folder_or_a_foreign_file_is_one_line_and_changes_nothing(tmp_path: Path, what: str) -> None:
    target = tmp_path / "journal"
    if what == "folder":
        target.mkdir()
    else:
        target.write_text("hello, not a journal\n")
    before = None if what == "folder" else target.read_bytes()
    result = CliRunner().invoke(app, ["study", str(_write(tmp_path, "j")), "--storage", f"journal://{target}", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert ("is a folder" if what == "folder" else "is not an Optuna journal file") in result.output
    if before is not None:
        assert target.read_bytes() == before
    else:
        assert list(target.iterdir()) == []
