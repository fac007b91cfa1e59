"""A dashboard reading a SQLite study while `tuner study` writes it: neither side sees "database is locked".

Both run as real processes, as a user would start them; the dashboard listens on 127.0.0.1 only,
and every loop here is bounded in count and in time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("optuna_dashboard")

# Long enough (a couple of hundred SQLite writes, heartbeats aside) that the dashboard reads while the study writes.
BUSY_SPEC = """
name = "watched"
seed = 0
[data]
name = "wine"
[model]
width = 8
[train]
epochs = 4
batch_size = 16
[stages.lr]
trials = 10
lr_min = 1e-3
lr_max = 1.0
[stages.shape]
trials = 4
width = [4, 32]
depth = [1, 2]
"""
DEADLINE_S = 240  # the whole test, however slow the machine; a normal run takes seconds
MAX_POLLS = 5_000
POLL_PAUSE_S = 0.1  # about a browser's pace; a tighter loop would only starve the study of CPU


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _tuner(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TUNER_STORAGE", None)
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], stdout=sink, stderr=subprocess.STDOUT, env=env)


def test_dashboard_reads_a_study_while_it_runs_and_neither_side_is_locked_out(tmp_path: Path) -> None:
    database = tmp_path / "watched.db"
    storage = f"sqlite:///{database}"
    spec = tmp_path / "watched.toml"
    spec.write_text(BUSY_SPEC)
    # The dashboard needs an existing storage: create it (empty) as `tuner study` would.
    import optuna

    from tuner.storage import open_storage

    optuna.get_all_study_names(open_storage(storage))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE_S
    dashboard = _tuner("dashboard", "--storage", storage, "--port", str(port), log=tmp_path / "dashboard.log")
    study = None
    try:
        while _get_or_none(f"{base}/api/meta") != 200:
            assert dashboard.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard did not start in time"
            time.sleep(0.2)

        study = _tuner("study", str(spec), "--storage", storage, "--device", "cpu", log=tmp_path / "study.log")
        statuses: list[int] = []
        bodies_with_errors: list[str] = []
        seen_counts: set[int] = set()
        polls = 0
        while study.poll() is None and polls < MAX_POLLS and time.monotonic() < deadline:
            polls += 1
            status, body = _get(f"{base}/api/studies")
            statuses.append(status)
            if status != 200:
                bodies_with_errors.append(body)
                continue
            n_trials = 0
            for summary in json.loads(body)["study_summaries"]:
                status, detail = _get(f"{base}/api/studies/{summary['study_id']}")
                statuses.append(status)
                if status != 200:
                    bodies_with_errors.append(detail)
                else:
                    n_trials += len(json.loads(detail)["trials"])
            seen_counts.add(n_trials)
            time.sleep(POLL_PAUSE_S)
        assert study.poll() is not None, "the study did not finish in time"
        study_log = (tmp_path / "study.log").read_text()
        assert study.returncode == 0, study_log
    finally:
        for process in (study, dashboard):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    dashboard_log = (tmp_path / "dashboard.log").read_text()
    assert "database is locked" not in study_log
    assert "database is locked" not in dashboard_log + "".join(bodies_with_errors)
    assert bodies_with_errors == [] and set(statuses) == {200}
    # The dashboard really read while the study wrote: it saw the study at several sizes.
    assert len(seen_counts) >= 2, seen_counts
    final = optuna.load_study(study_name="watched/shape", storage=storage)
    assert len(final.trials) == 4


def _get_or_none(url: str) -> int | None:
    try:
        return _get(url)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_a_taken_port_is_one_line_and_exit_2_as_for_the_storage_proxy(tmp_path: Path) -> None:
    import optuna
    from typer.testing import CliRunner

    from tuner.cli import app

    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(study_name="s", storage=url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); choose another port\n"
