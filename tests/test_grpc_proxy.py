"""Workers through Optuna's gRPC storage proxy: `tuner storage-proxy` in front of PostgreSQL or a
SQLite file, workers on ``grpc://host:port``.

Real processes: the proxy and the workers are ``tuner`` commands, killed and stopped with real
signals. Without grpcio (``pip install 'tuner[grpc]'``) these tests skip and say so; with ``CI``
set they fail instead, since CI installs the extra (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from tuner.cli import app
from tuner.storage import Heartbeat, fail_orphaned_trials, open_storage, serve_storage

from pg import PostgresServer, _free_port, postgres_server, wait_until  # noqa: F401 -- postgres_server is a fixture
from test_cluster import LR_BUDGET, SHAPE_BUDGET, _assert_budgets_and_single_hand_off, _worker_env

try:
    import grpc  # noqa: F401
except ImportError:
    _missing = "grpcio is not installed: these tests need it; install it with: pip install 'tuner[grpc]'"
    if os.environ.get("CI"):
        pytest.fail(_missing + " (CI is set: these tests must run)", pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKERS = 4

# tests/test_cluster.py's study (its budgets and checks), with trials a few times shorter: what is
# tested is the sharing through the proxy, and CI's time is better spent elsewhere.
CLUSTER_SPEC = f"""
name = "cluster"
seed = 0
[data]
name = "wine"
[model]
width = 8
depth = 1
[train]
epochs = 4
batch_size = 32
[stages.lr]
trials = {LR_BUDGET}
lr_min = 1e-3
lr_max = 0.5
batch_trials = 2
[stages.shape]
trials = {SHAPE_BUDGET}
width = [4, 16]
depth = [1, 2]
"""

# One worker alone, trials of some tenths of a second: long enough to be caught in the middle.
SLOW_SPEC = """
name = "slow"
seed = 0
[data]
name = "wine"
[model]
width = 16
[train]
epochs = 40
batch_size = 8
[stages.lr]
trials = 4
lr_min = 1e-3
lr_max = 0.1
batch_trials = 1
[stages.shape]
trials = 2
width = [8, 16]
depth = [1, 2]
pruner = "none"
"""
SLOW_BUDGET = 6


def _tuner(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", *args], env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Signals back to their defaults, whatever the shell running the tests did with them.
        preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), signal.signal(signal.SIGTERM, signal.SIG_DFL)),
    )


def _finished(storage: optuna.storages.BaseStorage, name: str) -> dict[tuple[str, int], tuple[TrialState, float | None]]:
    names = set(optuna.get_all_study_names(storage))
    return {(stage, t.number): (t.state, t.value) for stage in ("lr", "shape") if f"{name}/{stage}" in names
            for t in optuna.load_study(study_name=f"{name}/{stage}", storage=storage).get_trials(states=FINISHED)}


def _trials(storage: optuna.storages.BaseStorage, name: str) -> list[FrozenTrial]:
    names = set(optuna.get_all_study_names(storage))
    return [t for stage in ("lr", "shape") if f"{name}/{stage}" in names
            for t in optuna.load_study(study_name=f"{name}/{stage}", storage=storage).get_trials()]


def _assert_exact_budgets(storage: optuna.storages.BaseStorage, name: str, budgets: dict[str, int]) -> None:
    for stage, budget in budgets.items():
        trials = optuna.load_study(study_name=f"{name}/{stage}", storage=storage).get_trials()
        assert len([t for t in trials if t.state in FINISHED]) == budget, (stage, [t.state for t in trials])
        assert not [t for t in trials if t.state == TrialState.RUNNING], "a trial was left RUNNING"


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A new, empty database behind the proxy: its URL (no password in it) and the environment that opens it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'proxied.db'}", {}
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"proxied_{os.getpid()}_{int(time.monotonic() * 1000)}"), {"PGPASSWORD": server.password}


def test_four_workers_through_the_proxy_keep_exact_budgets_and_the_proxy_stops_cleanly_on_sigterm(
    database: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, secret_env = database
    port = _free_port()
    proxied = f"grpc://127.0.0.1:{port}"
    (tmp_path / "cluster.toml").write_text(CLUSTER_SPEC)
    # Proxy and workers start together, as in one Kubernetes rollout: the workers wait for the proxy.
    proxy = _tuner("storage-proxy", "--storage", url, "--port", str(port), env=_worker_env(**secret_env))
    workers = [_tuner("study", "cluster.toml", "--storage", proxied, "--device", "cpu", env=_worker_env(), cwd=tmp_path)
               for _ in range(WORKERS)]
    try:
        outputs = [worker.communicate(timeout=240) for worker in workers]
        assert [worker.returncode for worker in workers] == [0] * WORKERS, outputs
        odd = [(i, out[-600:], err) for i, (out, err) in enumerate(outputs) if "study cluster" not in out or err.strip()]
        assert odd == [], odd  # each worker printed its summary, and nothing on stderr

        for key, value in secret_env.items():  # checked in the database itself, not through the proxy
            monkeypatch.setenv(key, value)
        direct = open_storage(url)
        _assert_budgets_and_single_hand_off(direct, WORKERS)
        _assert_exact_budgets(direct, "cluster", {"lr": LR_BUDGET, "shape": SHAPE_BUDGET})
        workers_seen = {t.user_attrs["worker"] for t in _trials(direct, "cluster") if t.state in FINISHED}
        assert len(workers_seen) >= 2  # the work was shared

        # The stored settings are checked through the proxy as on the database: a changed spec is refused.
        (tmp_path / "changed.toml").write_text(CLUSTER_SPEC.replace("width = [4, 16]", "width = [4, 32]"))
        refused = CliRunner().invoke(app, ["study", str(tmp_path / "changed.toml"), "--storage", proxied, "--device", "cpu"])
        assert refused.exit_code == 2 and "was made with other search settings" in refused.output, refused.output

        # The reading commands take the proxy's URL too.
        exported = CliRunner().invoke(app, ["export", "cluster", "--storage", proxied, "--out", str(tmp_path / "out")])
        assert exported.exit_code == 0, exported.output
        rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()[1:]
        assert len([row for row in rows if ",COMPLETE," in row or ",PRUNED," in row]) == LR_BUDGET + SHAPE_BUDGET
        assert _dashboard_trial_count(proxied) == len(rows)

        proxy.send_signal(signal.SIGTERM)
        out, err = proxy.communicate(timeout=30)
    finally:
        for process in (*workers, proxy):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert proxy.returncode == 0, (out, err)
    assert out.splitlines() == [
        f"storage proxy for {url} listening on 127.0.0.1:{port}; workers: --storage "
        f"{proxied} (Ctrl-C or SIGTERM stops it)",
        "storage proxy stopped (SIGTERM)",
    ], (out, err)
    assert "Traceback" not in err, err
    for secret in secret_env.values():
        assert secret not in out + err


def _dashboard_trial_count(storage: str) -> int:
    """The trials optuna-dashboard shows for every study of ``storage``, read through its HTTP API."""
    from tuner.report.dashboard import make_dashboard_server

    server = make_dashboard_server(storage, port=0, read_only=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/studies"
        with urllib.request.urlopen(base, timeout=30) as response:
            summaries = json.loads(response.read())["study_summaries"]
        count = 0
        for summary in summaries:
            with urllib.request.urlopen(f"{base}/{summary['study_id']}", timeout=30) as response:
                count += len(json.loads(response.read())["trials"])
        return count
    finally:
        server.shutdown()
        server.server_close()


def _catch_mid_trial(worker: subprocess.Popen[str], storage: optuna.storages.BaseStorage) -> list[FrozenTrial]:
    """Freeze ``worker`` (SIGSTOP) while a trial of its is RUNNING with its owner marks, and leave it frozen."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()
        running = [t for t in _trials(storage, "slow") if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if running:
            worker.send_signal(signal.SIGSTOP)
            running = [t for t in _trials(storage, "slow") if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            if running:
                return running
            worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    worker.kill()
    raise AssertionError(f"never caught mid-trial: {worker.communicate()}")


def test_a_worker_killed_mid_trial_through_the_proxy_is_taken_over_by_the_rerun_with_nothing_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    proxy, _ = serve_storage(url, "127.0.0.1", 0)
    proxied = f"grpc://127.0.0.1:{proxy.port}"
    (tmp_path / "slow.toml").write_text(SLOW_SPEC)
    env = _worker_env(TUNER_HEARTBEAT_GRACE="3600")  # only the owner's pid can free its trial here
    try:
        victim = _tuner("study", "slow.toml", "--storage", proxied, "--device", "cpu", env=env, cwd=tmp_path)
        storage = open_storage(proxied)
        try:
            in_flight = _catch_mid_trial(victim, storage)
            finished_before = _finished(storage, "slow")
            victim.kill()
            victim.communicate(timeout=30)
        finally:
            if victim.poll() is None:
                victim.kill()
        assert all(storage.get_trial(t._trial_id).state == TrialState.RUNNING for t in in_flight)  # noqa: SLF001

        rerun = _tuner("study", "slow.toml", "--storage", proxied, "--device", "cpu", env=env, cwd=tmp_path)
        out, err = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, (out, err)
        _assert_exact_budgets(storage, "slow", {"lr": 4, "shape": 2})
        for trial in in_flight:
            after = storage.get_trial(trial._trial_id)  # noqa: SLF001
            assert after.state == TrialState.FAIL and "found by pid" in after.user_attrs["error"], after
        kept = _finished(storage, "slow")
        assert {key: kept[key] for key in finished_before} == finished_before  # no finished trial lost or changed
    finally:
        proxy.stop()


def test_a_worker_whose_proxy_goes_away_says_so_in_one_line_exits_1_and_the_rerun_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    proxy, _ = serve_storage(url, "127.0.0.1", 0)
    port = proxy.port
    proxied = f"grpc://127.0.0.1:{port}"
    (tmp_path / "slow.toml").write_text(SLOW_SPEC)
    # A trial the proxy created as it stopped may never have got its owner's marks (the worker lost
    # the proxy before writing them): only its silence frees it, so the grace period is short here.
    # Trials that were training wait for the proxy to come back (2 s here), then fail.
    env = _worker_env(TUNER_HEARTBEAT_INTERVAL="1", TUNER_HEARTBEAT_GRACE="3", TUNER_STORAGE_OUTAGE_WAIT="2")
    worker = _tuner("study", "slow.toml", "--storage", proxied, "--device", "cpu", env=env, cwd=tmp_path)
    try:
        direct = open_storage(url)
        assert wait_until(lambda: len(_finished(direct, "slow")) >= 2, 120, 0.05), worker.communicate()
        proxy.stop(grace_s=0)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 1, (out, err)
    *waits, last = err.strip().splitlines()
    assert last.startswith("error: the storage proxy went away ("), err
    assert last.endswith("finished trials are kept: once it answers again, run the same command to resume"), err
    assert all(line.startswith("warning: the storage proxy went away (") and "waiting up to 2 s" in line
               for line in waits), err
    finished_before = _finished(direct, "slow")
    assert 2 <= len(finished_before) < SLOW_BUDGET

    proxy, _ = serve_storage(url, "127.0.0.1", port)  # the proxy back, where the workers look for it
    try:
        rerun = _tuner("study", "slow.toml", "--storage", proxied, "--device", "cpu", env=env, cwd=tmp_path)
        out, err = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, (out, err)
    finally:
        proxy.stop()
    _assert_exact_budgets(direct, "slow", {"lr": 4, "shape": 2})
    kept = _finished(direct, "slow")
    assert {key: kept[key] for key in finished_before} == finished_before


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ours: Heartbeat
def test_beats_travel_through_the_proxy_both_ways_and_a_silent_trial_elsewhere_is_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker on another machine that died: no pid to look at, only its silence. A trial beating
    # through the proxy and one beating on the database directly (Optuna's heartbeats and the
    # counter) are each seen alive from both sides.
    monkeypatch.setenv("TUNER_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNER_HEARTBEAT_GRACE", "2")
    url = f"sqlite:///{tmp_path / 'beats.db'}"
    proxy, _ = serve_storage(url, "127.0.0.1", 0)
    try:
        through = optuna.create_study(study_name="beats", storage=open_storage(f"grpc://127.0.0.1:{proxy.port}"))
        direct = optuna.load_study(study_name="beats", storage=open_storage(url))
        dead, proxied, local = through.ask(), through.ask(), direct.ask()
        for trial in (dead, proxied, local):  # as if on another machine: no process id to look at
            trial.set_user_attr("worker", "elsewhere:12345")
        with Heartbeat(through, [proxied._trial_id]), Heartbeat(direct, [local._trial_id]):  # noqa: SLF001
            assert fail_orphaned_trials(through) == [] and fail_orphaned_trials(direct) == []  # silence timed from now
            time.sleep(3.5)  # past the grace period, on this process's own clock
            failed = fail_orphaned_trials(through) + fail_orphaned_trials(direct)
        assert failed == [dead.number]
        states = {t.number: t.state for t in through.get_trials()}
        assert states == {dead.number: TrialState.FAIL, proxied.number: TrialState.RUNNING, local.number: TrialState.RUNNING}
        assert "no heartbeat" in through.get_trials()[dead.number].user_attrs["error"]
    finally:
        proxy.stop()


# ---- bad input: one line naming the field and the fix, exit 2, no traceback ---------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_store_through_a_proxy_that_is_redeployed_waits_for_it_and_lands(tmp_path: Path) -> None:
    from tuner.errors import StorageWarning
    from tuner.storage.outages import ride_out_outage

    url = f"sqlite:///{tmp_path / 'back.db'}"
    proxy, _ = serve_storage(url, "127.0.0.1", 0)
    port, again = proxy.port, []
    study = optuna.create_study(study_name="back", storage=open_storage(f"grpc://127.0.0.1:{port}"))
    trial = study.ask()
    proxy.stop(grace_s=0)
    redeployed = threading.Timer(2.0, lambda: again.append(serve_storage(url, "127.0.0.1", port)[0]))
    redeployed.start()
    try:
        with pytest.warns(StorageWarning, match=r"the storage proxy went away \(UNAVAILABLE"):
            ride_out_outage(lambda: study.tell(trial, 0.25), wait_s=60, what="telling trained trials")
    finally:
        redeployed.join()
        for server in again:
            server.stop()
    stored = optuna.load_study(study_name="back", storage=url).trials
    assert [(t.state, t.value) for t in stored] == [(TrialState.COMPLETE, 0.25)]


def test_a_proxy_that_does_not_answer_is_waited_for_once_as_said(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new user's `tuner study` waited 94 s while saying 30: the finished-study shortcut waited, then the
    # runner twice more. The spec's own storage field is named in the line.
    import tuner.storage._grpc as proxy_module

    waits: list[float] = []

    def no_proxy(self: object, timeout: float) -> None:
        waits.append(timeout)
        raise ConnectionError("no answer")

    monkeypatch.setattr(proxy_module.ProxyStorage, "wait_server_ready", no_proxy)
    address = f"grpc://127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", address])
    assert result.exit_code == 2 and waits == [proxy_module.PROXY_WAIT_S], (waits, result.output)
    assert result.output.startswith(f"error: storage '{address}': no storage proxy answered there within 30 s")
    spec = tmp_path / "proxied.toml"
    spec.write_text(f'storage = "{address}"\n' + tiny_spec.read_text())
    result = CliRunner().invoke(app, ["study", str(spec)])
    assert result.exit_code == 2 and len(waits) == 2, (waits, result.output)
    assert result.output.startswith(f"error: {spec}: field 'storage': storage '{address}': no storage proxy"), result.output


def test_a_bad_proxy_url_or_proxy_command_is_one_line_and_exit_2(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuner.storage._grpc as proxy_module

    monkeypatch.setattr(proxy_module, "PROXY_WAIT_S", 0.5)
    monkeypatch.chdir(tmp_path)  # no tuner.db here: a proxy without --storage must not make one
    secret = tmp_path / "secret"
    secret.write_text("hunter2")
    busy = serve_storage(f"sqlite:///{tmp_path / 'busy.db'}", "127.0.0.1", 0)[0]
    try:
        cases = [
            (["study", str(tiny_spec), "--storage", "grpc://127.0.0.1"], "needs a host and a port"),
            (["study", str(tiny_spec), "--storage", "grpc://tuner:hunter2@127.0.0.1:13000"], "takes no user or password"),
            (["study", str(tiny_spec), "--storage", "grpc://127.0.0.1:13000/db"], "only a host and port follow grpc://"),
            (["study", str(tiny_spec), "--storage", "grpc://127.0.0.1:13000", "--storage-password-file", str(secret)],
             "give it to `tuner storage-proxy`"),
            (["export", "tiny", "--storage", f"grpc://127.0.0.1:{_free_port()}", "--out", str(tmp_path / "x")],
             "no storage proxy answered there"),
            (["storage-proxy", "--storage", "grpc://127.0.0.1:13000"], "that is a storage proxy's address"),
            (["storage-proxy", "--port", "0"], "no --storage given, and sqlite:///tuner.db (the default) does not exist here"),
            (["storage-proxy", "--storage", f"journal:///{tmp_path / 'j.log'}"], "does not serve a journal file"),
            (["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--port", str(busy.port)],
             f"--host 127.0.0.1 --port {busy.port}: cannot listen there"),
        ]
        for args, expected in cases:
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, (args, result.output)
            assert result.output.startswith("error: ") and expected in result.output, (args, result.output)
            assert len(result.output.splitlines()) == 1 and "hunter2" not in result.output, result.output
    finally:
        busy.stop()
    assert not (tmp_path / "x").exists() and not (tmp_path / "j.log").exists() and not Path("tuner.db").exists()

    monkeypatch.setitem(sys.modules, "grpc", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["study", str(tiny_spec), "--storage", "grpc://127.0.0.1:13000"])
    assert result.exit_code == 2
    assert result.output == "error: storage 'grpc://127.0.0.1:13000': needs grpcio and protobuf (grpc is not installed): " \
                            "pip install 'tuner[grpc]'\n"
    result = CliRunner().invoke(app, ["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'never.db'}"])
    assert result.exit_code == 2
    assert result.output == "error: tuner storage-proxy: needs grpcio and protobuf (grpc is not installed): pip install 'tuner[grpc]'\n"
    assert not (tmp_path / "never.db").exists()


FORKING = """
import signal, subprocess, sys
import optuna
from tuner.storage import open_storage, serve_storage
proxy, _ = serve_storage(sys.argv[1], port=int(sys.argv[2]))
study = optuna.create_study(study_name="forks", storage=open_storage(f"grpc://127.0.0.1:{sys.argv[2]}"))
busy = True
def calls():  # a channel in use while the children are forked, as in a test run or a worker
    while busy:
        study.get_trials(deepcopy=False)
import threading
threading.Thread(target=calls, daemon=True).start()
failed = []
for _ in range(80):  # subprocess with preexec_fn forks; gRPC's fork handlers must not run in the child
    child = subprocess.run([sys.executable, "-c", "pass"], capture_output=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if child.returncode:
        failed.append((child.returncode, child.stderr[-200:]))
busy = False
proxy.stop()
print(failed)
"""


def test_a_process_that_serves_and_calls_grpc_can_still_start_processes(tmp_path: Path) -> None:
    # Seen in CI: with gRPC's fork support on (its default), a child forked while gRPC's pollers run
    # restarted them and died of SIGABRT ("epoll_wait error: Bad file descriptor") before its exec.
    env = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", FORKING, f"sqlite:///{tmp_path / 'forks.db'}", str(_free_port())],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
