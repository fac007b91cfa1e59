"""Trials per minute with 1, 2 and 4 workers sharing one study: SQLite, PostgreSQL, and PostgreSQL through the gRPC proxy.

Each run starts N ``tuner study`` processes on a fresh storage and times the study from its first
trial's start to its last trial's end (process start-up is left out: it is the same however the
trials are shared). Printed as trials per minute and as a ratio to 1 worker, measured side by side
on this machine; each worker trains with one thread, so on a machine with C cores more than C
workers cannot go faster. PostgreSQL is a throwaway server from tests/pg.py (Debian's
``postgresql`` package); without it only SQLite is measured. ``grpc`` is the same PostgreSQL
server behind ``tuner storage-proxy`` (a process of its own on this machine, as it would be on a
cluster's), the workers on ``grpc://127.0.0.1:PORT``; its rows also show the ratio to PostgreSQL
directly with as many workers. The proxy needs ``pip install 'tuner[grpc]'``.

    python scripts/bench_workers.py [--trials 24] [--workers 1 2 4] [--epochs 10] [--storage sqlite postgresql grpc]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL server lives beside the tests

from tuner.storage import open_storage  # noqa: E402

from pg import PostgresServer, find_bindir  # noqa: E402

KINDS = ("sqlite", "postgresql", "grpc")

SPEC = """
name = "bench"
seed = 0

[data]
name = "digits"

[model]
width = 16
depth = 1

[train]
epochs = {epochs}
batch_size = 32

[stages.lr]
trials = {trials}
lr_min = 1e-3
lr_max = 0.5
batched = false   # one trial at a time: what is measured is sharing trials, not batching them

[stages.shape]
trials = {trials}
width = [8, 32]
depth = [1, 2]
"""


def run_workers(spec: Path, storage_url: str, n_workers: int, env: dict[str, str]) -> tuple[int, float, float, float]:
    """Run ``n_workers`` workers to the end.

    Returns finished trials, seconds from the first trial's start to the last one's end, seconds of
    wall clock (start-up included) and the mean training seconds of a trial (it grows when the
    workers fight for cores rather than for the storage).
    """
    command = [sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", storage_url, "--device", "cpu"]
    started = time.perf_counter()
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(n_workers)]
    for worker in workers:
        _, errors = worker.communicate()
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed ({worker.returncode}): {errors.strip()[-2000:]}")
    wall = time.perf_counter() - started
    storage = open_storage(storage_url)
    finished = [
        trial
        for stage in ("lr", "shape")
        for trial in optuna.load_study(study_name=f"bench/{stage}", storage=storage).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    ]
    first = min(t.datetime_start for t in finished)
    last = max(t.datetime_complete for t in finished)
    train = sum(float(t.user_attrs.get("train_seconds", 0.0)) for t in finished) / len(finished)
    return len(finished), (last - first).total_seconds(), wall, train


@contextlib.contextmanager
def proxy_for(database_url: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """``tuner storage-proxy`` in front of ``database_url`` on a free port: yields the workers' ``grpc://`` URL."""
    proxy = subprocess.Popen([sys.executable, "-m", "tuner.cli", "storage-proxy", "--storage", database_url, "--port", "0"],
                             env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proxy.stdout.readline()  # type: ignore[union-attr]
        if "--storage grpc://" not in line:
            raise SystemExit(f"the storage proxy did not start: {line}{proxy.communicate(timeout=30)[1]}")
        yield line.split("--storage ", 1)[1].split()[0]
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="budget of each stage (lr and shape)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial: fewer, and the storage's share of a trial grows")
    parser.add_argument("--storage", nargs="+", choices=KINDS, default=list(KINDS),
                        help="what to measure: sqlite, postgresql (directly), grpc (PostgreSQL through the proxy)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    spec = work / "bench.toml"
    spec.write_text(SPEC.format(trials=args.trials, epochs=args.epochs))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TUNER_", "PG"))}
    env["OMP_NUM_THREADS"] = "1"  # one core per worker: the ratio then says how well workers share a study

    kinds = [kind for kind in KINDS if kind in args.storage]
    server = None
    bindir = find_bindir()
    if bindir is None and kinds != ["sqlite"]:
        print("PostgreSQL is not installed (apt-get install postgresql): measuring SQLite only")
        kinds = ["sqlite"] if "sqlite" in kinds else []
    elif bindir is not None and kinds != ["sqlite"]:
        server = PostgresServer(bindir).start()
        os.environ["PGPASSWORD"] = env["PGPASSWORD"] = server.password  # read by psycopg, here and in the workers and proxy

    def run(kind: str, i: int, n_workers: int) -> tuple[int, float, float, float]:
        if kind == "sqlite":
            return run_workers(spec, f"sqlite:///{work / f'bench{i}.db'}", n_workers, env)
        database = server.create_database(f"{kind}{i}")  # type: ignore[union-attr]
        if kind == "postgresql":
            return run_workers(spec, database, n_workers, env)
        with proxy_for(database, env) as proxied:
            return run_workers(spec, proxied, n_workers, env)

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before (others' work skews the ratios); "
          f"2 stages x {args.trials} trials (digits MLP, {args.epochs} epochs), one thread per worker")
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'seconds':>8} {'trials/min':>10} {'ratio':>6} "
          f"{'wall s':>7} {'train s/trial':>13} {'vs postgresql':>13}")
    # The storages take turns at each number of workers, so that a change in the machine's load
    # between runs falls on all of them alike rather than on one.
    per_minute: dict[tuple[str, int], float] = {}
    try:
        for i, n_workers in enumerate(args.workers):
            for kind in kinds:
                n_trials, seconds, wall, train = run(kind, i, n_workers)
                rate = per_minute[kind, n_workers] = n_trials / seconds * 60
                base = per_minute.get((kind, args.workers[0]), rate)
                direct = per_minute.get(("postgresql", n_workers))
                versus = f"{rate / direct:.2f}" if kind == "grpc" and direct else ""
                print(f"{kind:<11} {n_workers:>7} {n_trials:>6} {seconds:>8.1f} {rate:>10.1f} {rate / base:>6.2f} "
                      f"{wall:>7.1f} {train:>13.3f} {versus:>13}", flush=True)
    finally:
        if server is not None:
            server.stop()
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
