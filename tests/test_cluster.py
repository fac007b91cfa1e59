"""Many workers on one study: PostgreSQL (a real server), the journal file, passwords kept secret.

The PostgreSQL tests start their own server (tests/pg.py); without PostgreSQL installed they skip
and say so, and with ``CI`` set they fail instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import Heartbeat, fail_orphaned_trials, open_storage, redact, with_password

from pg import PostgresServer, postgres_server, wait_until  # noqa: F401 -- postgres_server is a fixture

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKERS = 4
README = Path(__file__).resolve().parents[1] / "README.md"

# Small on purpose, but each trial lasts long enough (a few tenths of a second) to be killed in.
CLUSTER_SPEC = """
name = "cluster"
seed = 0

[data]
name = "digits"

[model]
width = 16
depth = 1

[train]
epochs = 8
batch_size = 32

[stages.lr]
trials = 8
lr_min = 1e-3
lr_max = 0.5
batch_trials = 2

[stages.shape]
trials = 6
width = [8, 32]
depth = [1, 2]
"""
LR_BUDGET, SHAPE_BUDGET = 8, 6


def _worker_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TUNER_", "PG"))}
    env.update(
        OMP_NUM_THREADS="1",  # four workers on a small machine: one thread each
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        TUNER_HEARTBEAT_INTERVAL="1",  # a killed worker's trial is failed after 5 s, not 60
        TUNER_HEARTBEAT_GRACE="5",
    )
    env.update(extra)
    return env


def _stage(storage: optuna.storages.BaseStorage, stage: str) -> optuna.Study:
    return optuna.load_study(study_name=f"cluster/{stage}", storage=storage)


def _assert_budgets_and_single_hand_off(storage: optuna.storages.BaseStorage, workers: int) -> None:
    lr_study, shape_study = _stage(storage, "lr"), _stage(storage, "shape")
    for study, budget in ((lr_study, LR_BUDGET), (shape_study, SHAPE_BUDGET)):
        trials = study.get_trials()
        finished = [t for t in trials if t.state in FINISHED]
        assert budget <= len(finished) <= budget + workers - 1, (study.study_name, len(finished))
        assert not [t for t in trials if t.state == TrialState.RUNNING], "a trial was left RUNNING"
        assert len({t._trial_id for t in finished}) == len(finished)  # noqa: SLF001
    complete_lr = lr_study.get_trials(states=(TrialState.COMPLETE,))
    best = min(complete_lr, key=lambda t: t.value)  # over every finished lr trial, whoever ran it
    handed_on = lr_study.user_attrs["best_lr"]
    assert lr_study.user_attrs["best_trial"] == best.number
    assert lr_study.user_attrs["handoff"]["n_points"] == len(lr_study.get_trials(states=FINISHED))  # every trial
    assert shape_study.user_attrs["lr"] == handed_on
    assert {t.user_attrs["lr"] for t in shape_study.get_trials()} == {handed_on}  # one hand-off


def _everything_stored(url: str) -> str:
    """Every row of every table of a database, as text: wherever a leaked password would be."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    metadata = sqlalchemy.MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        rows = [repr(row) for table in metadata.sorted_tables for row in connection.execute(table.select())]
    engine.dispose()
    assert any("learning_curve" in row for row in rows)  # it did read the trials
    return "\n".join(rows)


# ---- passwords ---------------------------------------------------------------------------------


def test_a_password_is_shown_as_stars_and_can_come_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert redact("postgresql://user:hunter2@db.example.org:5432/tuner") == "postgresql://user:***@db.example.org:5432/tuner"

    secret = tmp_path / "db-password"
    secret.write_text("p@ss/word:1\n")  # characters that must be escaped in a URL; the newline is not part of it
    url = with_password("postgresql://user@db/tuner", secret)
    assert optuna_url_password(url) == "p@ss/word:1"
    assert redact(url) == "postgresql://user:***@db/tuner"

    monkeypatch.setenv("TUNER_STORAGE_PASSWORD", "from-env")
    assert optuna_url_password(with_password("postgresql://user@db/tuner")) == "from-env"
    assert with_password("postgresql://user:own@db/tuner") == "postgresql://user:own@db/tuner"  # the URL's own wins
    assert with_password("sqlite:///x.db") == "sqlite:///x.db"
    assert with_password("journal:///tmp/x.log") == "journal:///tmp/x.log"


def optuna_url_password(url: str) -> str | None:
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).password


def test_a_bad_password_file_or_heartbeat_setting_is_one_line_and_exit_2(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty, secret = tmp_path / "empty", tmp_path / "secret"
    empty.write_text("\n")
    secret.write_text("hunter2")
    postgres = "postgresql://tuner@127.0.0.1:1/none"
    for storage, password_file, expected in (
        (postgres, tmp_path / "missing", "cannot read it"),
        (postgres, empty, "it is empty"),
        (f"sqlite:///{tmp_path / 'x.db'}", secret, "SQLite takes no password"),
        ("postgresql://tuner:own@127.0.0.1:1/none", secret, "give it once"),
    ):
        result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", storage, "--storage-password-file", str(password_file)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and expected in result.output, result.output
        assert "hunter2" not in result.output and "own@" not in result.output and len(result.output.splitlines()) == 1

    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("TUNER_HEARTBEAT_GRACE", "5")
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", "sqlite:///" + str(tmp_path / "y.db")])
    assert result.exit_code == 2
    assert "TUNER_HEARTBEAT_GRACE=5 must be longer than TUNER_HEARTBEAT_INTERVAL=10" in result.output
    assert not (tmp_path / "y.db").exists()  # nothing written


# ---- the journal file ---------------------------------------------------------------------------


def test_two_workers_share_a_journal_file(tmp_path: Path) -> None:
    spec = tmp_path / "cluster.toml"
    spec.write_text(CLUSTER_SPEC)
    storage_url = f"journal:///{tmp_path / 'cluster.log'}"
    command = [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", storage_url, "--device", "cpu"]
    workers = [subprocess.Popen(command, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    _assert_budgets_and_single_hand_off(open_storage(storage_url), workers=2)


def test_a_journal_trial_whose_worker_went_silent_is_failed_and_a_beating_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_HEARTBEAT_GRACE", "2")
    storage = open_storage(f"journal:///{tmp_path / 'beats.log'}")
    study = optuna.create_study(study_name="beats", storage=storage)
    dead, alive = study.ask(), study.ask()
    for trial in (dead, alive):  # as if on another machine: no process id to look at
        trial.set_user_attr("worker", "elsewhere:12345")
    with Heartbeat(study, [alive._trial_id]):  # noqa: SLF001
        assert fail_orphaned_trials(study) == []  # first sight: silence is only timed from now
        time.sleep(3.2)  # past the grace period, on this process's own clock
        assert fail_orphaned_trials(study) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {dead.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    assert "no heartbeat" in study.get_trials()[dead.number].user_attrs["error"]


# ---- PostgreSQL ---------------------------------------------------------------------------------


def test_a_wrong_password_is_one_line_without_the_password(postgres_server: PostgresServer, tiny_spec: Path) -> None:
    url = postgres_server.create_database("wrong_password")
    bad = url.replace(f"{postgres_server.user}@", f"{postgres_server.user}:not-{postgres_server.password}@")
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", bad, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: storage 'postgresql://tuner:***@127.0.0.1")
    assert "password authentication failed" in result.output
    assert postgres_server.password not in result.output and "Traceback" not in result.output


def test_password_from_a_file_reaches_the_server_and_never_its_outputs(
    postgres_server: PostgresServer, tiny_spec: Path, tmp_path: Path
) -> None:
    url = postgres_server.create_database("password_file")
    secret = tmp_path / "secret"
    secret.write_text(postgres_server.password + "\n")
    runner = CliRunner()
    studied = runner.invoke(app, ["study", str(tiny_spec), "--storage", url, "--storage-password-file", str(secret),
                                  "--device", "cpu"])
    assert studied.exit_code == 0, studied.output
    full_url = with_password(url, secret)
    assert redact(full_url) in studied.output  # the summary names the storage as postgresql://tuner:***@...
    exported = runner.invoke(app, ["export", "tiny", "--storage", full_url, "--out", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    written = "".join(path.read_text() for path in (tmp_path / "out").iterdir())
    assert "lr,0," in written  # the export has the trials...
    for text in (studied.output, exported.output, written, _everything_stored(full_url)):
        assert postgres_server.password not in text  # ...and nowhere the password
    # The reading commands take the password file too, so no command line ever holds it.
    from_file = runner.invoke(app, ["export", "tiny", "--storage", url, "--storage-password-file", str(secret),
                                    "--out", str(tmp_path / "from_file")])
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "from_file" / "trials.csv").read_text() == (tmp_path / "out" / "trials.csv").read_text()
    missing = runner.invoke(app, ["importance", "tiny", "--storage", url, "--storage-password-file",
                                  str(tmp_path / "absent"), "--out", str(tmp_path / "imp")])
    assert missing.exit_code == 2 and "cannot read it" in missing.output and not (tmp_path / "imp").exists()
    # The report's dashboard hint is a command that runs as shown: no password, and no *** in its place.
    reported = runner.invoke(app, ["report", "tiny", "--storage", full_url, "--out", str(tmp_path / "rep")])
    assert reported.exit_code == 0, reported.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"<code>tuner dashboard --storage {url}</code> (with the storage&#x27;s password set through" in page
    assert postgres_server.password not in page


def test_workers_opening_a_brand_new_database_at_once_all_succeed(postgres_server: PostgresServer) -> None:
    # Left to Optuna alone, five of six lose the race to create the tables ("duplicate key ... pg_type").
    url = postgres_server.url(postgres_server.create_database("schema_race").rsplit("/", 1)[1], with_password=True)
    start, errors = threading.Barrier(6), []

    def open_at_once() -> None:
        start.wait()
        try:
            open_storage(url)
        except Exception as error:  # noqa: BLE001 -- collected, then shown by the assert
            errors.append(repr(error))

    threads = [threading.Thread(target=open_at_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert optuna.get_all_study_names(open_storage(url)) == []  # one schema, ready to use


def _readme_shell_loop() -> str:
    section = README.read_text().split("## Running on a cluster", 1)[1]
    loops = re.findall(r"^for i in .*$", section, flags=re.MULTILINE)
    assert len(loops) == 1, "README's cluster section must hold one shell loop of workers"
    return loops[0]


def _victims_running_trials(storage: optuna.storages.BaseStorage) -> list[FrozenTrial]:
    found = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        found += [t for t in running if t.user_attrs.get("worker", "").startswith("elsewhere:")]
    return found


def _others_have_claimed(storage: optuna.storages.BaseStorage) -> bool:
    for name in optuna.get_all_study_names(storage):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        if any(not t.user_attrs.get("worker", "elsewhere:").startswith("elsewhere:") for t in trials):
            return True
    return False


def test_readme_loop_workers_finish_the_study_when_a_worker_on_another_machine_is_killed_mid_trial(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "my-study.toml").write_text(CLUSTER_SPEC)
    url = postgres_server.create_database("cluster")  # brand new: the workers race to create its tables
    secret = tmp_path / "secret"
    secret.write_text(postgres_server.password)
    # One worker says it runs on another machine, so no one can look up its process id: only its
    # heartbeats, once they stop, tell the others that it is gone. It reads the password from a file.
    victim = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "study", "my-study.toml", "--storage", url, "--storage-password-file", str(secret)],
        cwd=tmp_path, env=_worker_env(TUNER_HOST="elsewhere"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # The other three are started by the README's shell loop, word for word, with the README's
    # environment variables pointing at the test server. They start once the victim is frozen
    # mid-trial: started together, the three could take every trial before the victim's first claim.
    loop_env = _worker_env(N=str(WORKERS - 1), TUNER_STORAGE=url, PGPASSWORD=postgres_server.password)
    loop: subprocess.Popen[str] | None = None
    try:
        storage = open_storage(postgres_server.url("cluster", with_password=True))
        in_flight: list[FrozenTrial] = []
        for _ in range(20):  # catch the victim mid-trial: freeze it, make sure, then start the others
            assert wait_until(lambda: bool(_victims_running_trials(storage)), 120, 0.1), "the victim never ran a trial"
            victim.send_signal(signal.SIGSTOP)
            in_flight = _victims_running_trials(storage)
            if in_flight:
                break
            victim.send_signal(signal.SIGCONT)
        assert in_flight
        loop = subprocess.Popen(["bash", "-c", _readme_shell_loop()], cwd=tmp_path, env=loop_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The frozen victim is killed while the others work beside its silent trial.
        assert wait_until(lambda: _others_have_claimed(storage), 120, 0.1), "no loop worker ran a trial"
        finished_before = {
            (t.number, s): (t.state, t.value)
            for s in ("lr", "shape") if f"cluster/{s}" in optuna.get_all_study_names(storage)
            for t in _stage(storage, s).get_trials(states=FINISHED)
        }
        victim.kill()
        victim.wait(timeout=10)
        output = loop.communicate(timeout=180)[0]
    finally:
        for process in (victim, loop):
            if process is not None and process.poll() is None:
                process.kill()
    assert output.count("study cluster") == WORKERS - 1, output  # every loop worker ended with its summary
    assert "error:" not in output and "Traceback" not in output, output

    _assert_budgets_and_single_hand_off(storage, WORKERS)
    for trial in in_flight:
        after = storage.get_trial(trial._trial_id)  # noqa: SLF001
        assert after.state == TrialState.FAIL, after
        assert "found by pid" not in after.user_attrs.get("error", "")  # failed for its silence, not its pid
    for (number, stage), (state, value) in finished_before.items():
        kept = _stage(storage, stage).trials[number]
        assert (kept.state, kept.value) == (state, value)  # no finished trial lost or changed
    workers = {t.user_attrs["worker"] for s in ("lr", "shape") for t in _stage(storage, s).get_trials(states=FINISHED)}
    assert len(workers) >= 2  # the work was shared
    assert postgres_server.password not in output
    assert postgres_server.password not in _everything_stored(postgres_server.url("cluster", with_password=True))
