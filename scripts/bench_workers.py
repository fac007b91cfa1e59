"""Trials per minute with 1, 2 and 4 workers sharing one study, on SQLite and on PostgreSQL.

Each run starts N ``tuner study`` processes on a fresh storage and times the study from its first
trial's start to its last trial's end (process start-up is left out: it is the same however the
trials are shared). Printed as trials per minute and as a ratio to 1 worker, measured side by side
on this machine; each worker trains with one thread, so on a machine with C cores more than C
workers cannot go faster. PostgreSQL is a throwaway server from tests/pg.py (Debian's
``postgresql`` package); without it only SQLite is measured.

    python scripts/bench_workers.py [--trials 24] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
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

SPEC = """
name = "bench"
seed = 0

[data]
name = "digits"

[model]
width = 16
depth = 1

[train]
epochs = 10
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="budget of each stage (lr and shape)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    spec = work / "bench.toml"
    spec.write_text(SPEC.format(trials=args.trials))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TUNER_", "PG"))}
    env["OMP_NUM_THREADS"] = "1"  # one core per worker: the ratio then says how well workers share a study

    storages: list[tuple[str, object]] = [("sqlite", lambda i: f"sqlite:///{work / f'bench{i}.db'}")]
    server = None
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (apt-get install postgresql): measuring SQLite only")
    else:
        server = PostgresServer(bindir).start()
        os.environ["PGPASSWORD"] = env["PGPASSWORD"] = server.password  # read by psycopg, here and in the workers
        storages.append(("postgresql", lambda i: server.create_database(f"bench{i}")))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before (others' work skews the ratios); "
          f"2 stages x {args.trials} trials (digits MLP, 10 epochs), one thread per worker")
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'seconds':>8} {'trials/min':>10} {'ratio':>6} "
          f"{'wall s':>7} {'train s/trial':>13}")
    try:
        for kind, new_url in storages:
            base = None
            for i, n_workers in enumerate(args.workers):
                n_trials, seconds, wall, train = run_workers(spec, new_url(i), n_workers, env)  # type: ignore[operator]
                per_minute = n_trials / seconds * 60
                base = base or per_minute
                print(f"{kind:<11} {n_workers:>7} {n_trials:>6} {seconds:>8.1f} {per_minute:>10.1f} {per_minute / base:>6.2f} {wall:>7.1f} {train:>13.3f}",
                      flush=True)
    finally:
        if server is not None:
            server.stop()
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
