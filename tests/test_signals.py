"""How `tuner study` ends when it is told to stop: SIGTERM (Slurm, Kubernetes, systemd) as Ctrl-C,
a resume line that works as printed, and a Ctrl-C after the work is done that changes nothing.

Real processes, real signals: a handler that only works in-process would prove nothing.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from pg import PostgresServer, postgres_server  # noqa: F401 -- postgres_server is a fixture

# Trials of some tenths of a second, so that one is caught in the middle.
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
trials = 3
lr_min = 1e-3
lr_max = 0.1
batch_trials = 1
[stages.shape]
trials = 1
width = [8, 16]
depth = [1, 2]
pruner = "none"          # the tests count complete trials: none may be stopped by a pruner
"""

QUICK_SPEC = """
name = "{name}"
[data]
name = "wine"
[model]
width = 8
[train]
epochs = 2
batch_size = 32
[stages.lr]
trials = 2
[stages.shape]
trials = 1
width = [4, 8]
depth = [1, 1]
pruner = "none"
"""


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TUNER_", "PG"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TUNER_HEARTBEAT_GRACE="3600")
    env.update(extra)
    return env


def _start(tmp_path: Path, spec_text: str, name: str, url: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(spec_text.format(name=name))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", url, "--device", "cpu"],
        env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Signals back to their defaults, whatever the shell running the tests did with them.
        preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), signal.signal(signal.SIGTERM, signal.SIG_DFL)),
    )
    return worker, spec


def _trials(url: str, name: str) -> list[FrozenTrial]:
    names = set(optuna.get_all_study_names(url))
    return [t for stage in ("lr", "shape") if f"{name}/{stage}" in names
            for t in optuna.load_study(study_name=f"{name}/{stage}", storage=url).get_trials()]


def _stop_mid_trial(worker: subprocess.Popen[str], url: str, name: str, signum: int) -> list[FrozenTrial]:
    """Freeze ``worker`` (SIGSTOP) while a trial of its is claimed and RUNNING, send ``signum``, let it go on."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()
        try:
            running = [t for t in _trials(url, name) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            if running:
                worker.send_signal(signal.SIGSTOP)
                running = [t for t in _trials(url, name) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
                if running:
                    worker.send_signal(signum)
                    worker.send_signal(signal.SIGCONT)
                    return running
                worker.send_signal(signal.SIGCONT)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # The worker is creating the database right now: on PostgreSQL this reader's Optuna races it to
            # create the same tables ("duplicate key ... pg_type_typname_nsp_index"), as two workers would.
            pass
        time.sleep(0.05)
    worker.kill()
    raise AssertionError(f"never caught mid-trial: {worker.communicate()}")


@pytest.mark.parametrize("attempt", range(3))  # a race would show as a flaky test: try it more than once
def test_sigterm_fails_the_trial_in_progress_exits_143_and_says_how_to_resume(tmp_path: Path, attempt: int) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker, spec = _start(tmp_path, SLOW_SPEC, "stopped", url)
    caught = _stop_mid_trial(worker, url, "stopped", signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=120)

    assert worker.returncode == 143, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): the trials in progress are marked failed"), stderr
    assert shlex.split(lines[0].split("resume with: ")[1]) == ["tuner", "study", str(spec), "--storage", url]
    after = {t._trial_id: t for t in _trials(url, "stopped")}  # noqa: SLF001
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]  # no one waits out a grace period
    for trial in caught:
        assert after[trial._trial_id].state == TrialState.FAIL  # noqa: SLF001
        assert after[trial._trial_id].user_attrs["error"] == "terminated (SIGTERM)"  # noqa: SLF001


@pytest.mark.parametrize("moment", ["title", "last-line"])
def test_ctrl_c_once_the_summary_prints_changes_nothing(tmp_path: Path, moment: str) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker, _ = _start(tmp_path, QUICK_SPEC, "late", url)
    assert worker.stdout is not None
    seen = ""
    for line in worker.stdout:
        seen += line
        if (moment == "title" and line.startswith("study late ")) or (moment == "last-line" and line.startswith("└")):
            worker.send_signal(signal.SIGINT)
            break
    seen += worker.stdout.read()  # (communicate() would skip what the line reader has buffered)
    stderr = worker.stderr.read() if worker.stderr else ""
    worker.wait(timeout=120)
    assert worker.returncode == 0, seen + stderr  # not 130, nor -2 (killed by SIGINT during shutdown)
    assert stderr == ""  # no "KeyboardInterrupt" from torch's atexit hooks
    assert "└" in seen  # the whole summary
    assert all(t.state == TrialState.COMPLETE for t in _trials(url, "late"))


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_the_resume_line_works_as_printed_and_shows_no_password(
    tmp_path: Path, postgres_server: PostgresServer, form: str,  # noqa: F811 -- the fixture
) -> None:
    from pg import PASSWORD

    bare = postgres_server.create_database(f"resume_{form}")
    url = postgres_server.url(f"resume_{form}", with_password=True) if form == "userinfo" else f"{bare}?password={PASSWORD}"
    worker, spec = _start(tmp_path, SLOW_SPEC, "stopped", url)
    _stop_mid_trial(worker, url, "stopped", signal.SIGINT)
    stdout, stderr = worker.communicate(timeout=120)

    assert worker.returncode == 130, stdout + stderr
    line = stderr.strip()
    assert PASSWORD not in stdout + stderr and "***" not in line, line
    assert "TUNER_STORAGE_PASSWORD or PGPASSWORD" in line
    command = shlex.split(line.split("resume with: ")[1].split(" (with the storage's password")[0])
    assert command == ["tuner", "study", str(spec), "--storage", bare]
    # As printed, with the password where the line says to put it: it resumes and finishes.
    resumed = subprocess.run([sys.executable, "-m", "tuner.cli", *command[1:], "--device", "cpu"],
                             env=_env(TUNER_STORAGE_PASSWORD=PASSWORD), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sum(t.state == TrialState.COMPLETE for t in _trials(url, "stopped")) == 4


# ---- issue 24, item 7: no noise, and no silent death, on a stop where no command catches it -------


def test_sigterm_before_the_study_catches_its_own_is_one_line_exit_143_and_nothing_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker, _ = _start(tmp_path, QUICK_SPEC, "early", url, TUNER_TEST_SIGNAL_AT="study-start:TERM")
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 143, stdout + stderr  # not -15: killed with no word
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: terminated (SIGTERM)"), stderr
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize(("signum", "code", "what"), [("TERM", 143, "terminated (SIGTERM)"), ("INT", 130, "interrupted")])
def test_a_stop_while_loading_says_no_trial_started_and_names_no_trials_in_progress(tmp_path: Path, signum: str, code: int,
                                                                                     what: str) -> None:
    # Before the first stage (torch, the data and the user's code still loading): no trial ran, none can be marked failed.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker, _ = _start(tmp_path, QUICK_SPEC, "loading", url, TUNER_TEST_SIGNAL_AT=f"spec-loaded:{signum}")
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == code, stdout + stderr
    assert stderr.strip() == f"error: {what} before any trial started: run the same command again"
    assert "resume" not in stdout + stderr


@pytest.mark.parametrize("signum", ["TERM", "INT"])
def test_a_stop_after_the_summary_changes_nothing(tmp_path: Path, signum: str) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker, _ = _start(tmp_path, QUICK_SPEC, "late", url, TUNER_TEST_SIGNAL_AT=f"after-summary:{signum}")
    stdout, stderr = worker.communicate(timeout=300)
    assert worker.returncode == 0, stdout + stderr  # not -15 or -2
    assert stderr == "" and "└" in stdout


def test_a_stop_that_lands_in_a_weakref_callback_is_not_printed_but_other_errors_there_are() -> None:
    script = (
        "import gc, os, signal, weakref\n"
        "from tuner.errors import stop_requested\n"
        "from tuner.exits import stops_as_exceptions\n"
        "stops_as_exceptions()\n"
        "class A: pass\n"
        "def stop(_):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, its handler run inside the callback\n"
        "    sum(range(1000))\n"
        "def bug(_): raise ValueError('a real bug')\n"
        "a, b = A(), A()\n"
        "refs = [weakref.ref(a, stop), weakref.ref(b, bug)]\n"
        "del a, b\n"
        "gc.collect()\n"
        "print('kept' if stop_requested() else 'lost')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kept"  # the stop is kept for the runner's next check
    assert "KeyboardInterrupt" not in done.stderr
    assert "ValueError: a real bug" in done.stderr


def test_a_worker_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path: Path) -> None:
    # As `tuner study s.toml &` from a script: the shell starts background jobs with SIGINT ignored.
    spec = tmp_path / "bg.toml"
    spec.write_text(QUICK_SPEC.format(name="bg"))
    done = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", f"sqlite:///{tmp_path / 'bg.db'}", "--device", "cpu"],
        env=_env(TUNER_TEST_SIGNAL_AT="study-start:INT"), capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "└" in done.stdout


def test_the_app_called_from_python_leaves_the_callers_signal_handlers_alone() -> None:
    script = (
        "import signal, sys\n"
        "sys.argv = ['tuner', '--version']\n"
        "from tuner.cli import app\n"
        "try:\n"
        "    app()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,\n"
        "      sys.unraisablehook is sys.__unraisablehook__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True True True"


# ---- a Ctrl-C caught inside C-evaluated code must not end `python -m tuner.cli` by SIGINT (-2) -------------

_CAUGHT_INSIDE_C = """
import ctypes, sys
from tuner import exits
exits.real_process()
ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt")  # as a Ctrl-C inside any exec() of a string would
{forget}
sys.exit(130)
"""


@pytest.mark.parametrize("forget", [True, False])
def test_a_caught_interrupt_leaves_the_exit_code_as_chosen(tmp_path: Path, forget: bool) -> None:
    # Under `python -m`, CPython ends by SIGINT once a KeyboardInterrupt has left code run through PyRun_String,
    # even when the program caught the stop and chose its exit code: the flaky -2 of the resume-line test.
    (tmp_path / "caught.py").write_text(_CAUGHT_INSIDE_C.format(forget="exits.forget_caught_interrupt()" if forget else ""))
    done = subprocess.run([sys.executable, "-m", "caught"], cwd=tmp_path, env=_env(PYTHONPATH=str(Path(__file__).parents[1])),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == (130 if forget else -signal.SIGINT), done.stderr  # without it, the interpreter's SIGINT
