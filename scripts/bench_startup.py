"""Start-up: wall seconds of `tuner --help` and of `tuner study` on a finished quickstart (nothing to run).

Each command runs as a user runs it, a new process each time (`python -m tuner.cli ...`), against a
quickstart study this script runs once into a temporary SQLite file. With ``--before PATH`` (a
checkout of another commit, e.g. ``git worktree add /tmp/before <commit>``) the same commands run
from that code too, the two alternating round by round so that a busy machine slows both alike.
Prints the median and range per command and code, and the load average before and after.

Run:  python scripts/bench_startup.py                       # 5 rounds: about 1 min
      python scripts/bench_startup.py --before /tmp/before  # this code against another commit's
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SPEC = HERE / "studies" / "quickstart.toml"


def _run(code: Path, args: list[str], cwd: str) -> float:
    # From a folder of its own: `python -m` puts the working folder first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tuner.cli", *args], env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{code}: tuner {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout of tuner to time beside this one")
    args = parser.parse_args()
    codes = {"this": HERE, **({"before": args.before.resolve()} if args.before else {})}
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'quickstart.db'}"
        study = ["study", str(SPEC), "--storage", storage, "--device", "cpu"]
        print(f"running the quickstart once into {storage} ...", flush=True)
        _run(HERE, study, folder)
        commands = {"tuner --help": ["--help"], "tuner study (finished quickstart)": study}
        times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in commands for k in codes}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            for command, argv in commands.items():
                for key, code in codes.items():
                    times[(command, key)].append(_run(code, argv, folder))
        load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {args.rounds} rounds, {os.cpu_count()} CPUs")
    for (command, key), seconds in times.items():
        print(f"{command:<36} {key:<7} median {statistics.median(seconds):5.2f} s  "
              f"[{min(seconds):.2f}-{max(seconds):.2f}]")


if __name__ == "__main__":
    main()
