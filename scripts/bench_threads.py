"""The quickstart on a busy machine: tuner's own thread choice against OMP_NUM_THREADS=1, side by side.

Two CPU-bound processes (plain Python loops) keep the cores busy, as other work on a shared machine
would; then ``tuner study studies/quickstart.toml`` runs as a user runs it (no thread setting at
all), and again with ``OMP_NUM_THREADS=1``, alternating, each on a fresh SQLite file. The ratio of
their wall times is what a user pays for not knowing about threads (target: at most 1.3). Also the
same with ``--threads 2`` (torch's default on 2 cores) to show what the choice saves.

Run:  python scripts/bench_threads.py            # quickstart as shipped, 2 rounds (~3 min on 2 cores)
      python scripts/bench_threads.py --quick    # a smaller budget, 1 round
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

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "studies" / "quickstart.toml"
BUSY = "while True: pass"


def _run(spec: Path, folder: Path, tag: str, env_extra: dict[str, str], args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNER_THREADS")}
    env.update(env_extra)
    url = f"sqlite:///{folder / f'{tag}.db'}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuner.cli", "study", str(spec), "--storage", url, "--device", "cpu", *args],
                   env=env, check=True, stdout=subprocess.DEVNULL, cwd=folder)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller budgets, one round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes running beside (default 2)")
    options = parser.parse_args()
    rounds = options.rounds or (1 if options.quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = SPEC
        if options.quick:
            spec = folder / "quick.toml"
            spec.write_text(SPEC.read_text().replace("trials = 30", "trials = 12").replace("trials = 24", "trials = 8"))
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(options.busy)]
        try:
            time.sleep(1.0)
            times: dict[str, list[float]] = {"default": [], "OMP_NUM_THREADS=1": [], "--threads 2": []}
            for round_ in range(rounds):
                times["default"].append(_run(spec, folder, f"default{round_}", {}, []))
                times["OMP_NUM_THREADS=1"].append(_run(spec, folder, f"omp1{round_}", {"OMP_NUM_THREADS": "1"}, []))
                times["--threads 2"].append(_run(spec, folder, f"two{round_}", {}, ["--threads", "2"]))
        finally:
            for process in busy:
                process.kill()
    load = os.getloadavg()[0]
    print(f"quickstart ({'quick budget' if options.quick else 'as shipped'}), {options.busy} busy processes beside, "
          f"{os.cpu_count()} cores, load average {load:.1f}, {rounds} round(s), median wall seconds:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:<20} {value:7.1f} s   ({value / medians['OMP_NUM_THREADS=1']:.2f}x OMP_NUM_THREADS=1)")
    print(f"ratio default / OMP_NUM_THREADS=1: {medians['default'] / medians['OMP_NUM_THREADS=1']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
