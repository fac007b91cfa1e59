"""A storage URL as the user meets it: files that are not tuner's are left alone, read-only files can
be read, passwords never show, a relative path stays where it was, and every trial names its owner
from the moment it exists (issue 14, items 7, 8, 9, 12 and 13; issue 16's per-engine SQLite settings)."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import (
    DEFAULT_STORAGE,
    FastSQLiteStorage,
    StorageError,
    check_user_info,
    fail_orphaned_trials,
    mask_user_info,
    open_existing_storage,
    open_storage,
    redact,
    resolve_url,
    trial_id,
    worker_attrs,
    write_trial_records,
)

from _tiny_study import audited_study

TINY = """
name = "tiny"
[data]
name = "wine"
[train]
epochs = 1
[stages.lr]
trials = 2
[stages.shape]
trials = 1
"""


def _tuner(*args: str, cwd: Path | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tuner.cli ARGS`` as a user runs it (PYTHONPATH and the rest inherited)."""
    command = [*(prefix or []), sys.executable, "-m", "tuner.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _one_error_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _fingerprint(path: Path) -> tuple[str, int, list[str]]:
    """The file's content, its modification time, and the files beside it (-wal, -shm, journals)."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in path.parent.iterdir()))


@pytest.fixture
def study_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A copy (in WAL mode, as tuner leaves its files, no -wal or -shm beside it) of a finished tiny study."""
    url, _ = audited_study(tmp_path_factory.getbasetemp())
    folder = tmp_path / "runs"
    folder.mkdir()
    copy = folder / "study.db"
    source, target = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    check = sqlite3.connect(copy)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()
    assert sorted(p.name for p in folder.iterdir()) == ["study.db"]
    return copy


# ---- item 7: a SQLite file of another program is refused, and left as it was ---------------------


def _invoices(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        connection.execute("INSERT INTO invoices (customer, total) VALUES ('ACME', 12.5)")
    connection.close()


def _foreign_studies(path: Path) -> None:
    with sqlite3.connect(path) as connection:  # a table name Optuna also uses, with other columns
        connection.execute("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT, year INTEGER)")
        connection.execute("INSERT INTO studies (title, year) VALUES ('On growth', 2019)")
    connection.close()


def _text(path: Path) -> None:
    path.write_text("name,total\nACME,12.5\n")


@pytest.mark.parametrize("make, words", [
    (_invoices, "tables that Optuna did not make (invoices)"),
    (_foreign_studies, "tables that Optuna did not make (studies)"),
    (_text, "it is not a SQLite database"),
])
def test_a_sqlite_file_of_another_program_is_refused_with_exit_2_and_left_as_it_was(tmp_path: Path, make, words: str) -> None:
    (tmp_path / "books").mkdir()
    database = tmp_path / "books" / "books.db"
    make(database)
    before = _fingerprint(database)
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    line = _one_error_line(_tuner("study", str(spec), "--storage", f"sqlite:///{database}", "--device", "cpu"))
    assert words in line and str(database) in line
    assert _fingerprint(database) == before
    # A reading command refuses it too, with the same reason.
    exported = CliRunner().invoke(app, ["export", "tiny", "--storage", f"sqlite:///{database}", "--out", str(tmp_path / "out")])
    assert exported.exit_code == 2 and words in exported.stderr, exported.output
    assert _fingerprint(database) == before


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_new_an_empty_and_an_optuna_file_are_all_used(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    no_tables = tmp_path / "no-tables.db"
    sqlite3.connect(no_tables).execute("PRAGMA user_version = 7").connection.close()
    assert no_tables.stat().st_size > 0
    stock = tmp_path / "stock.db"
    optuna.create_study(study_name="made-by-optuna", storage=f"sqlite:///{stock}")
    with sqlite3.connect(stock) as connection:  # a table of the user's own beside Optuna's: still Optuna's file
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()
    for path in (tmp_path / "new.db", empty, no_tables, stock):
        storage = open_storage(f"sqlite:///{path}")
        optuna.create_study(study_name="mine", storage=storage).tell(optuna.load_study(study_name="mine", storage=storage).ask(), 1.0)
        assert optuna.load_study(study_name="mine", storage=f"sqlite:///{path}").trials[0].value == 1.0


def test_a_file_whose_optuna_tables_another_worker_is_creating_now_is_not_called_foreign(tmp_path: Path) -> None:
    path = tmp_path / "half.db"
    with sqlite3.connect(path) as connection:  # Optuna's first tables, before its version table exists
        connection.execute("CREATE TABLE studies (study_id INTEGER NOT NULL, study_name VARCHAR(512) NOT NULL, "
                           "PRIMARY KEY (study_id), UNIQUE (study_name))")
    connection.close()
    optuna.create_study(study_name="mine", storage=open_storage(f"sqlite:///{path}"))
    assert optuna.get_all_study_names(f"sqlite:///{path}") == ["mine"]


# ---- item 8: reading commands open SQLite read-only ----------------------------------------------


def _read_only_prefix(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` really cannot be written (root ignores permissions)."""
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return []
    # Root writes through any permission: run the command where the folder is a read-only mount.
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(folder)]


def test_reading_commands_read_a_study_in_a_read_only_folder(study_copy: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{study_copy}"
    before = _fingerprint(study_copy)
    prefix = _read_only_prefix(study_copy.parent)
    try:
        proof = subprocess.run([*prefix, "sh", "-c", f"touch {shlex.quote(str(study_copy.parent / 'x'))}"],
                               capture_output=True, text=True)
        assert proof.returncode != 0, "the folder must really be read-only for this test"
        out = tmp_path / "out"
        exported = _tuner("export", "audited", "--storage", url, "--out", str(out), prefix=prefix)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert (out / "trials.csv").read_text().count("\n") == 4 + 2 + 12 + 1
        ranked = _tuner("importance", "audited", "--storage", url, "--out", str(out), prefix=prefix)
        assert ranked.returncode == 0, ranked.stdout + ranked.stderr
        reported = _tuner("report", "audited", "--storage", url, "--out", str(out / "report"), prefix=prefix)
        assert reported.returncode == 0, reported.stdout + reported.stderr
        assert (out / "report" / "index.html").is_file()
        dashboard = subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(f"""
            import json, wsgiref.util
            from tuner.report.dashboard import make_dashboard_server
            server = make_dashboard_server({url!r}, port=0)
            environ = {{"PATH_INFO": "/api/studies", "HTTP_HOST": f"127.0.0.1:{{server.server_port}}"}}
            wsgiref.util.setup_testing_defaults(environ)
            body = b"".join(server.get_app()(environ, lambda status, headers, exc_info=None: None))
            print(sorted(s["study_name"] for s in json.loads(body)["study_summaries"]))
        """)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert dashboard.returncode == 0, dashboard.stderr
        assert dashboard.stdout.strip() == "['audited/audit', 'audited/lr', 'audited/shape']"
    finally:
        study_copy.parent.chmod(0o755)
        study_copy.chmod(0o644)
    assert _fingerprint(study_copy) == before


def test_reading_a_writable_file_changes_nothing_in_it(study_copy: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{study_copy}"
    before = _fingerprint(study_copy)
    time.sleep(0.01)  # a write now would show in the modification time
    for command in ("export", "importance", "report"):
        done = _tuner(command, "audited", "--storage", url, "--out", str(tmp_path / command))
        assert done.returncode == 0, done.stdout + done.stderr
        assert _fingerprint(study_copy) == before  # no -wal or -shm left behind either
    storage = open_existing_storage(url)
    assert len(optuna.load_study(study_name="audited/audit", storage=storage).trials) == 12
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:  # through SQLAlchemy
        storage.set_study_user_attr(storage.get_study_id_from_name("audited/lr"), "note", "read-only means it")
    assert "readonly" in str(refused.value.__cause__)
    a_trial = optuna.load_study(study_name="audited/audit", storage=storage).trials[0]
    with pytest.raises(optuna.exceptions.StorageInternalError, match="readonly"):  # through the fast path
        storage.set_trial_system_attr(trial_id(a_trial), "note", 1)
    assert hashlib.sha256(study_copy.read_bytes()).hexdigest() == before[0]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_read_only_reader_follows_a_running_study_read_after_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    writer = optuna.create_study(study_name="live", storage=open_storage(url))
    writer.tell(writer.ask(), 1.0)
    running = writer.ask()  # a trial still running: each later read asks for it again, by id
    reader = optuna.load_study(study_name="live", storage=open_existing_storage(url))  # as a report opens it
    seen = []
    for value in (2.0, 3.0, 4.0):
        writer.tell(writer.ask(), value)
        seen.append([t.state.name for t in reader.trials])  # Optuna's cache reads only what is new
    writer.tell(running, 0.5)
    seen.append([t.state.name for t in reader.trials])
    assert seen == [["COMPLETE", "RUNNING", "COMPLETE"], ["COMPLETE", "RUNNING", "COMPLETE", "COMPLETE"],
                    ["COMPLETE", "RUNNING", "COMPLETE", "COMPLETE", "COMPLETE"], ["COMPLETE"] * 5]
    assert reader.best_trial.number == 1


def test_the_dashboard_may_edit_a_writable_file_unless_read_only(study_copy: Path) -> None:
    url = f"sqlite:///{study_copy}"
    editable = open_existing_storage(url, writable=True)  # what `tuner dashboard` opens without --read-only
    editable.set_study_user_attr(editable.get_study_id_from_name("audited/lr"), "note", "edited in the dashboard")
    assert optuna.load_study(study_name="audited/lr", storage=url).user_attrs["note"] == "edited in the dashboard"
    with pytest.raises(StorageError, match="does not exist"):
        open_existing_storage(f"sqlite:///{study_copy.parent / 'missing.db'}", writable=True)
    assert not (study_copy.parent / "missing.db").exists()


# ---- item 9: no password in anything printed -----------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:hunter2@db.example.org:5432/tuner", "postgresql://user:***@db.example.org:5432/tuner"),
    ("postgresql://user@db/tuner?password=hunter2", "postgresql://user@db/tuner?password=***"),
    ("postgresql://user@db/tuner?sslmode=require&password=hunter2&application_name=x",
     "postgresql://user@db/tuner?sslmode=require&password=***&application_name=x"),
    ("postgresql://user@db/tuner?PASSWORD=hunter2", "postgresql://user@db/tuner?PASSWORD=***"),
    ("postgresql://user@db/tuner?sslpassword=hunter2", "postgresql://user@db/tuner?sslpassword=***"),
    ("mysql+pymysql://user@db/tuner?passwd=hunter2", "mysql+pymysql://user@db/tuner?passwd=***"),
    ("postgresql://user:hun@ter2@db/tuner", "postgresql://user:***@db/tuner"),
    ("postgresql://user:h@nt@r2@db:5432/tuner?sslmode=require", "postgresql://user:***@db:5432/tuner?sslmode=require"),
    ("postgresql://user:hunt/er:2@db/tuner", "postgresql://user:***@db/tuner"),
    ("postgresql://user:hun?ter2@db/tuner", "postgresql://user:***@db/tuner"),
    ("postgresql://user:hun%40ter2@db/tuner", "postgresql://user:***@db/tuner"),
    ("postgresql://:hunter2@db/tuner", "postgresql://:***@db/tuner"),
    ("postgresql+psycopg://user:hunter2@/tuner?host=/run/postgresql", "postgresql+psycopg://user:***@/tuner?host=/run/postgresql"),
    ("storage 'postgresql://u:hunter2@db/t': cannot open it (password=hunter2 host=db)",
     "storage 'postgresql://u:***@db/t': cannot open it (password=*** host=db)"),
    ("host=db user=u password='hunter 2' dbname=t", "host=db user=u password=*** dbname=t"),
])
def test_every_form_of_password_is_hidden(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "hunter" not in redact(url) and "ter2" not in redact(url) and "nt@r2" not in redact(url)


@pytest.mark.parametrize("url", [
    "sqlite:///tuner.db", "sqlite:////srv/runs/a@b.db", "postgresql://user@db/tuner", "journal:///srv/runs/tuner.log",
    "postgresql://db:5432/tuner?application_name=me@laptop", "sqlite:///:memory:",
])
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert redact(url) == url


@pytest.mark.parametrize("url, words", [
    ("postgresql://tuner@127.0.0.1:9/tuner?password=hunter2", "cannot open it"),
    ("postgresql://tuner:hunter2@127.0.0.1:9/tuner", "cannot open it"),
    ("postgresql://tuner:hun@ter2@127.0.0.1:9/tuner", "write it as %40"),
])
def test_a_password_in_the_url_is_not_printed_when_the_storage_cannot_be_opened(url: str, words: str, tmp_path: Path) -> None:
    line = _one_error_line(_tuner("export", "x", "--storage", url, "--out", str(tmp_path)))
    assert words in line and "***" in line
    assert "hunter" not in line and "ter2" not in line


LEAKY = "postgresql://tuner:Pa@LEAKEDPART/rest@127.0.0.1:9/tunerdb"  # the driver would take LEAKEDPART for the host


@pytest.mark.parametrize("url", [LEAKY, "postgresql://tuner:a@b@127.0.0.1:9/t", "mysql+pymysql://u:x@LEAKEDPART/y@db/t",
                                 "postgresql://u:Se@LEAKEDPART/etyy?x@db/t"])
def test_a_url_with_two_at_signs_is_refused_before_anything_connects(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    attempts: list[object] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    monkeypatch.setattr(sqlalchemy, "create_engine", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(sqlalchemy.engine, "make_url", lambda *a, **k: attempts.append(a))
    with pytest.raises(StorageError, match=r"write it as %40") as refused:
        open_storage(url)
    assert attempts == []
    assert "LEAKEDPART" not in str(refused.value) and "Pa@" not in str(refused.value) and "etyy" not in str(refused.value)


def test_a_url_with_two_at_signs_shows_no_fragment_of_its_password_in_any_output(tmp_path: Path) -> None:
    spec = tmp_path.parent / f"{tmp_path.name}-tiny.toml"  # beside: nothing may be written into tmp_path
    spec.write_text(TINY)
    for command in (["export", "x", "--out", str(tmp_path)], ["best", "x", "--out", str(tmp_path / "b")],
                    ["report", "x", "--out", str(tmp_path / "r")], ["study", str(spec)]):
        done = _tuner(*command, "--storage", LEAKY)
        line = _one_error_line(done)
        assert "write it as %40" in line and "***" in line
        assert "LEAKEDPART" not in done.stdout + done.stderr and "rest@" not in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:////srv/runs/a@b.db", "postgresql://db:5432/tuner?application_name=me@laptop",
                                 "postgresql://user@db/tuner?application_name=me@laptop"])
def test_an_at_sign_outside_the_user_info_is_not_refused(url: str) -> None:
    check_user_info(url)  # raises nothing


def test_a_drivers_message_hides_every_piece_of_the_password() -> None:
    message = "could not translate host name \"LEAKEDPART\" to address; database \"rest@127.0.0.1:9/tunerdb\""
    shown = mask_user_info(message, "postgresql://tuner:Pa@LEAKEDPART/rest@127.0.0.1:9/tunerdb")
    assert "LEAKEDPART" not in shown and "rest" not in shown and "***" in shown
    assert mask_user_info("connection refused", "postgresql://tuner:hunter2@db/t") == "connection refused"
    assert mask_user_info("password for hunter2 failed", "postgresql://tuner:hunter2@db/t") == "password for *** failed"


# ---- item 12: a trial names its owner from the moment it exists ----------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_created_through_the_storage_has_its_owner_with_no_other_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'owned.db'}"
    study = optuna.create_study(study_name="owned", storage=open_storage(url))
    trial = study.ask()
    stored = optuna.load_study(study_name="owned", storage=optuna.storages.RDBStorage(url)).trials[0]
    assert stored.state == TrialState.RUNNING and stored.user_attrs == worker_attrs()
    # The runner's own write of the same owner later changes nothing.
    write_trial_records(study, [(trial_id(trial), {**worker_attrs(), "stage_setting": 1}, {})])
    stored = optuna.load_study(study_name="owned", storage=optuna.storages.RDBStorage(url)).trials[0]
    assert stored.user_attrs == {**worker_attrs(), "stage_setting": 1}


def test_a_process_killed_right_after_creating_a_trial_leaves_it_failed_at_once_on_restart(tmp_path: Path) -> None:
    database = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal, warnings, optuna
        from tuner.storage import open_storage
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name="k", storage=open_storage("sqlite:///{database}"))
        study.ask()
        os.kill(os.getpid(), signal.SIGKILL)  # before anything else is written
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert done.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="k", storage=open_storage(f"sqlite:///{database}"))
    assert study.trials[0].state == TrialState.RUNNING
    assert fail_orphaned_trials(study) == [0]  # at once, not after the heartbeats' grace period
    assert study.trials[0].state == TrialState.FAIL


# ---- item 13: trial creation waits out a long lock; a relative path stays put --------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_creating_a_trial_is_retried_while_another_process_holds_the_lock_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuner.storage._sqlite as fast_path

    database = tmp_path / "locked.db"
    open_storage(f"sqlite:///{database}")  # the schema
    storage = FastSQLiteStorage(f"sqlite:///{database}", busy_timeout_s=0.05)
    study = optuna.create_study(study_name="locked", storage=storage)
    locker = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock, until the first try has failed
    pauses: list[float] = []
    first_try_failed, released = threading.Event(), threading.Event()

    def release() -> None:
        first_try_failed.wait()
        locker.execute("COMMIT")
        released.set()

    def pause(seconds: float) -> None:  # the back-off between tries: the other writer lets go, no time passes
        pauses.append(seconds)
        first_try_failed.set()
        released.wait()

    monkeypatch.setattr(fast_path.time, "sleep", pause)
    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        trial = study.ask()
    finally:
        first_try_failed.set()  # let the releaser end even if the ask never retried
        releaser.join()
    assert len(pauses) == 1 and 0 <= pauses[0] <= 2.0  # one failed try, then Optuna's back-off, then success
    study.tell(trial, 1.0)
    trials = optuna.load_study(study_name="locked", storage=f"sqlite:///{database}").trials
    assert [(t.number, t.value) for t in trials] == [(0, 1.0)]  # the failed try left no row behind


def test_creating_a_trial_gives_up_after_five_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.storage._sqlite as fast_path

    database = tmp_path / "stuck.db"
    storage = FastSQLiteStorage(f"sqlite:///{database}", busy_timeout_s=0.01)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "stuck")
    pauses: list[float] = []
    monkeypatch.setattr(fast_path.time, "sleep", pauses.append)
    locker = sqlite3.connect(database, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(optuna.exceptions.StorageInternalError, match="locked"):
            storage.create_new_trial(study_id)
    finally:
        locker.execute("ROLLBACK")
    assert len(pauses) == 4 and all(0 <= p <= 2.0 for p in pauses)  # five tries, Optuna's back-off between


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_relative_sqlite_path_is_resolved_once_when_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    monkeypatch.chdir(first)
    study = optuna.create_study(study_name="here", storage=open_storage("sqlite:///runs.db"))
    monkeypatch.chdir(later)
    # A new thread opens its own connection: it must go to the file opened above.
    worker = threading.Thread(target=lambda: study.tell(study.ask(), 2.0))
    worker.start()
    worker.join()
    assert list(later.iterdir()) == []
    assert optuna.load_study(study_name="here", storage=f"sqlite:///{first / 'runs.db'}").trials[0].value == 2.0


def test_resolve_url_makes_a_relative_sqlite_path_absolute_and_leaves_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'tuner.db'}" == resolve_url(DEFAULT_STORAGE)
    assert resolve_url("sqlite:///runs/a.db", relative_to="/srv/specs") == "sqlite:////srv/specs/runs/a.db"
    assert resolve_url("sqlite:///../a.db?timeout=5", relative_to="/srv/specs") == "sqlite:////srv/a.db?timeout=5"
    for unchanged in ("sqlite:////srv/a.db", "sqlite:///:memory:", "sqlite://", "postgresql://u@db/t",
                      "journal:///srv/a.log", "sqlite:///file:a.db?mode=ro&uri=true"):
        assert resolve_url(unchanged, relative_to="/elsewhere") == unchanged


# ---- issue 16: tuner's SQLite settings stay on tuner's connections -------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_tuner_tunes_its_own_sqlite_connections_and_no_one_elses(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'tuner.db'}")
    with storage.engine.connect() as connection:
        settings = [connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("journal_mode", "synchronous", "busy_timeout")]
    assert settings == ["wal", 1, 120_000]  # 1: NORMAL
    optuna.create_study(study_name="tuned", storage=storage).ask()  # the fast path's own connection
    assert sqlite3.connect(tmp_path / "tuner.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    theirs = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'theirs.db'}")
    with theirs.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sqlite3.connect(tmp_path / "theirs.db").execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_storage_error_names_the_url_as_given(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"storage 'sqlite:///nowhere/a\.db': the file '.*/nowhere/a\.db' does not exist"):
        open_existing_storage("sqlite:///nowhere/a.db")
